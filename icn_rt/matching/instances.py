"""From matched peaks to instances (docs/design.md §1 step 8): each instance's confidence, and
mask NMS on the kernels.

Confidence (PRM returns none; ``InstanceSettings.confidence``):

- ``peak_quality`` (default): the peak's class-map value times the soft IoU of the
  matching map with the chosen proposal — strong evidence that the proposal explains;
- ``peak``: the peak's class-map value;
- ``match``: the matching score (PRM's own ordering for NMS; not comparable across
  images or object sizes);
- ``peak_match``: the peak's class-map value times the matching score; with objectness
  re-ranking (``MatchingSettings.rerank``) that score is the proposal's objectness, so
  strong class evidence on an object-like proposal ranks first (our addition).

NMS: instances in order of confidence (ties: peak order), greedy, class-agnostic, mask
IoU ≥ ``nms_iou`` suppresses (PRM: 0.3); the caller adds a suppressed instance's PRM into
the one that suppressed it, as PRM does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icn_rt.kernels import Kernels

CONFIDENCES = ("peak_quality", "peak", "match", "peak_match")


@dataclass
class InstanceSettings:
    nms_iou: float = 0.3
    confidence: str = "peak_quality"

    def __post_init__(self) -> None:
        if self.confidence not in CONFIDENCES:
            raise ValueError(f"unknown confidence {self.confidence!r}; choose one of {', '.join(CONFIDENCES)}")


def confidence(settings: InstanceSettings, value: np.ndarray, match: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """Each peak's confidence from its class-map ``value``, its ``match`` score and the
    ``quality`` of its match (:func:`~icn_rt.matching.scores.match`), all ``float64 [K]``."""
    return {"peak_quality": value * quality, "peak": value, "match": match,
            "peak_match": value * match}[settings.confidence]


def suppress(masks: np.ndarray, confidence: np.ndarray, threshold: float,
             kernels: Kernels) -> tuple[np.ndarray, np.ndarray]:
    """Greedy mask NMS of ``masks: bool [N, H, W]`` by descending ``confidence`` (ties:
    input order) on ``kernels`` -> ``(keep, owner)`` on the host (see
    :meth:`~icn_rt.kernels.interface.Kernels.nms`)."""
    order = np.argsort(-confidence, kind="stable")
    keep, owner = kernels.nms(kernels.pack(kernels.to(masks)), kernels.to(order), threshold)
    return kernels.host(keep), kernels.host(owner)
