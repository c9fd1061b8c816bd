"""Proposal matching (DESIGN.md §1 step 7): every peak's map against every proposal.

The same numbers as :mod:`icn_rt.kernels.reference` (tested), computed for all K maps of
an image at once: by segment sums when the proposals are segments (exact, no dense
masks), by matrix products over chunks of dense masks otherwise. The Numba kernels of
the kernels issue replace these.

Choices (settings, saved in the model's config):

- ``score``: ``rebalanced`` (the paper's Eq. 5), ``vanilla`` (the PRM reference, the
  "w/o rebalance" ablation) or ``auto``: rebalanced for an ICN-enhanced map, vanilla for
  the naive PRM. Eq. 5 sums its background penalty in pixels, so it assumes V covers the
  object; against a naive PRM, which covers only the most discriminative part, it picks
  fragments inside that part (on the synthetic val split with the small backbone:
  mAP^r@0.5 0.0 rebalanced vs 6.4 vanilla).
- ``at``: ``image`` — the PRM is resized bilinearly to the image and matched against the
  proposals as they are; ``input`` — the proposals are resized (nearest, OpenCV) to the
  PRM's size, as the PRM reference does. Masks are always returned at the image's size.
- ``binarize``: for the rebalanced score the map is min-max normalised and, unless None,
  thresholded at this value (the paper binarises its enhanced map; the naive PRM is
  binarised the same way until the ICN lands). The vanilla score takes the PRM as is.
- ``max_proposals``: only the first N proposals are scanned (PRM: 100; 0 = all).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from icn_rt.data.proposals import Proposals
from icn_rt.kernels.reference import background_map, contour_band

SCORES = ("auto", "rebalanced", "vanilla")
PLACES = ("image", "input")
_CHUNK = 256


@dataclass
class MatchingSettings:
    score: str = "auto"
    at: str = "image"
    binarize: float | None = 0.5
    alpha: float = 0.95
    beta: float = 0.1
    gamma: float = 0.8
    band_width: int = 5
    area_limits: tuple[float, float] = (2e-5, 0.85)
    vanilla_balance: float = 0.8
    vanilla_penalty: float = 1e-5
    background_factor: float = 0.95
    max_proposals: int = 0

    def resolved(self, enhanced: bool) -> MatchingSettings:
        """These settings with ``auto`` made concrete for an enhanced (ICN) or naive map."""
        if self.score != "auto":
            return self
        return replace(self, score="rebalanced" if enhanced else "vanilla")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown matching score {self.score!r}; choose one of {', '.join(SCORES)}")
        if self.at not in PLACES:
            raise ValueError(f"unknown matching place {self.at!r}; choose one of {', '.join(PLACES)}")


def matching_map(prm: np.ndarray, settings: MatchingSettings) -> np.ndarray:
    """The map a proposal is scored against: ``float [H, W]`` -> float64 (vanilla: the
    PRM; rebalanced: min-max normalised, binarised unless ``binarize`` is None)."""
    prm = prm.astype(np.float64)
    if settings.score == "vanilla":
        return prm
    lo, hi = prm.min(), prm.max()
    v = (prm - lo) / (hi - lo) if hi > lo else np.zeros_like(prm)
    return (v >= settings.binarize).astype(np.float64) if settings.binarize is not None else v


def resize_masks(props: Proposals, shape: tuple[int, int]) -> Proposals:
    """Proposals resized (nearest, OpenCV) to ``shape`` (H, W), as dense masks."""
    masks = props.to_masks()
    if tuple(props.shape) == tuple(shape):
        return Proposals.from_masks(masks, props.scores)
    out = np.stack([cv2.resize(m.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
                    for m in masks]) if len(masks) else np.zeros((0, *shape), np.uint8)
    return Proposals.from_masks(out.astype(bool), props.scores)


def _area_ok(area: np.ndarray, shape: tuple[int, int], limits: tuple[float, float]) -> np.ndarray:
    total = shape[0] * shape[1]
    return (area >= limits[0] * total) & (area < limits[1] * total)


def _sums(props: Proposals, maps: np.ndarray) -> np.ndarray:
    """``maps: [M, H, W]`` -> ``float64 [M, N]``: each map summed over each proposal."""
    n = len(props)
    out = np.zeros((len(maps), n))
    if props.is_segments:
        sp = props.superpixels.ravel()
        for i, m in enumerate(maps):
            out[i] = props.segment_sums(np.bincount(sp, weights=m.ravel(), minlength=props.num_superpixels))
        return out
    flat = maps.reshape(len(maps), -1).astype(np.float64).T
    for start in range(0, n, _CHUNK):
        chunk = props.masks[start:start + _CHUNK].reshape(-1, flat.shape[0]).astype(np.float64)
        out[:, start:start + _CHUNK] = (chunk @ flat).T
    return out


def rebalanced(v: np.ndarray, props: Proposals, settings: MatchingSettings) -> np.ndarray:
    """Eq. 5 of ``v: float [K, H, W]`` in [0, 1] against every proposal -> ``float64 [K, N]``
    (``-inf`` outside the area limits)."""
    bands = np.stack([contour_band(m, settings.band_width) for m in v]) if len(v) else v
    inside, band = np.split(_sums(props, np.concatenate([v, bands])), 2)
    area = props.areas().astype(np.float64)
    score = (settings.alpha * inside / np.maximum(area, 1) + settings.beta * band
             - settings.gamma * (area[None] - inside))
    return np.where(_area_ok(area, props.shape, settings.area_limits)[None], score, -np.inf)


def vanilla(prm: np.ndarray, props: Proposals, backgrounds: np.ndarray, settings: MatchingSettings) -> np.ndarray:
    """The PRM reference's score of ``prm: float [K, H, W]`` with ``backgrounds: bool [K, H, W]``
    -> ``float64 [K, N]`` (``-inf`` outside the area limits)."""
    masks = props.to_masks()
    contours = Proposals.from_masks(np.stack([contour_band(m, settings.band_width) for m in masks])
                                    if len(masks) else masks, props.scores)
    dense = Proposals.from_masks(masks, props.scores)
    inside = _sums(dense, prm)
    score = (settings.vanilla_balance * inside + _sums(contours, prm)
             - settings.vanilla_penalty * _sums(dense, backgrounds.astype(np.float64)))
    area = dense.areas()
    return np.where(_area_ok(area, props.shape, settings.area_limits)[None], score, -np.inf)


def score_proposals(prms: np.ndarray, class_maps: np.ndarray, props: Proposals, settings: MatchingSettings,
                    enhanced: bool = False) -> tuple[np.ndarray, Proposals, np.ndarray]:
    """Every peak's map against every proposal of one image.

    ``prms: float [K, h, w]`` (at the network input's size), ``class_maps: float [K, h', w']``
    (each peak's class map, for the vanilla background), ``props``: the image's proposals
    (at the image's size); ``enhanced``: whether the maps are ICN-enhanced (resolves
    ``score="auto"``). Returns ``(scores float64 [K, N], the proposals as scored (after
    ``max_proposals`` and, for ``at="input"``, resized), the matching maps float64 [K, H, W]
    at their size)``; ``-inf`` marks proposals outside the area limits.
    """
    settings = settings.resolved(enhanced)
    if settings.max_proposals:
        props = props.select(np.arange(min(settings.max_proposals, len(props))))
    k = len(prms)
    if settings.at == "input":
        shape = prms.shape[1:]
        props = resize_masks(props, shape)
        maps = prms.astype(np.float64)
    else:
        shape = props.shape
        maps = np.stack([cv2.resize(p, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for p in prms]) \
            if k else np.zeros((0, *shape))
    v = np.stack([matching_map(m, settings) for m in maps]) if k else np.zeros((0, *shape))
    if k == 0 or len(props) == 0:
        return np.full((k, len(props)), -np.inf), props, v
    if settings.score == "vanilla":
        backgrounds = np.stack([background_map(c, shape, settings.background_factor) for c in class_maps])
        return vanilla(v, props, backgrounds, settings), props, v
    return rebalanced(v, props, settings), props, v


def match(prms: np.ndarray, class_maps: np.ndarray, props: Proposals, settings: MatchingSettings,
          enhanced: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best proposal for each of K peaks of one image (arguments as :func:`score_proposals`).

    Returns ``(best int64 [K] (-1: none in limits), score float64 [K], quality float64 [K])``;
    ``quality`` is the soft IoU Σ_P V / (|P| + Σ V − Σ_P V) of the map with its proposal.
    """
    scores, props, v = score_proposals(prms, class_maps, props, settings, enhanced)
    k = len(prms)
    if scores.shape[1] == 0:
        return np.full(k, -1, np.int64), np.full(k, -np.inf), np.zeros(k)
    best = np.where(np.isfinite(scores).any(1), np.argmax(scores, 1), -1)
    top = np.full(k, -np.inf)
    quality = np.zeros(k)
    for i in np.flatnonzero(best >= 0):
        top[i] = scores[i, best[i]]
        mask = props.mask(best[i])
        inside = v[i][mask].sum()
        union = mask.sum() + v[i].sum() - inside
        quality[i] = inside / union if union > 0 else 0.0
    return best.astype(np.int64), top, quality
