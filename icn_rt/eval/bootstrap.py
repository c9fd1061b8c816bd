"""Bootstrap intervals of the evaluation metrics, and paired comparisons of two results.

The percentile bootstrap over images: each of ``samples`` replicates draws the split's
images with replacement (seeded, :func:`draws`) and evaluates every metric on that draw —
image i counted as many times as it was drawn
(:meth:`~icn_rt.eval.instance.InstanceEvaluator.result`'s weights). The interval is the
``(1 − level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates (:func:`intervals`).
A paired comparison uses the same draws for both results and takes the quantiles of the
difference (:func:`difference` of each replicate), so the noise the two share (which
images are hard) cancels; a difference whose interval excludes 0 is one the images
support at that level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Metrics = Callable[[np.ndarray | None], dict[str, float]]
"""Image weights (None: each image once) -> ``{metric: value}``."""


@dataclass
class Interval:
    """A metric's value on the images as they are (``estimate``) and its bootstrap interval."""

    estimate: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def to_json(self) -> dict:
        return {"estimate": _clean(self.estimate), "interval": [_clean(self.low), _clean(self.high)]}


def _clean(v: float) -> float | None:
    return None if not np.isfinite(v) else float(v)


def draws(images: int, samples: int, seed: int) -> np.ndarray:
    """``int64 [samples, images]``: how many times each image is drawn in each replicate."""
    rng = np.random.default_rng(seed)
    return np.stack([np.bincount(rng.integers(0, images, images), minlength=images) for _ in range(samples)]) \
        if images else np.zeros((samples, 0), np.int64)


def intervals(point: dict[str, float], replicates: list[dict[str, float]], level: float = 0.95) -> dict[str, Interval]:
    """Each metric's ``point`` estimate with the ``level`` percentile interval of its
    ``replicates``; replicates where it is undefined (NaN: no ground truth drawn) are left out."""
    out = {}
    for name, estimate in point.items():
        v = np.array([r[name] for r in replicates], np.float64)
        v = v[np.isfinite(v)]
        low, high = np.quantile(v, [(1 - level) / 2, (1 + level) / 2]) if len(v) else (np.nan, np.nan)
        out[name] = Interval(estimate, float(low), float(high))
    return out


def difference(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``a − b``, metric by metric."""
    return {k: a[k] - b[k] for k in a}


def bootstrap(metrics: Metrics, images: int, samples: int = 1000, seed: int = 0,
              level: float = 0.95) -> dict[str, Interval]:
    """Each metric's estimate and percentile interval over ``samples`` image draws."""
    return intervals(metrics(None), [metrics(w) for w in draws(images, samples, seed)], level)
