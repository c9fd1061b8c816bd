"""Where masks are lost, stage by stage: the measurements of the per-stage diagnosis
(``benchmarks/diagnose.py`` runs a model through them), on plain arrays, so that each is
tested on cases with known answers.

- classification: image AP per class (:func:`classification_ap`);
- peaks: which ground-truth instance each peak lands on (:func:`peak_owners`), giving
  instance recall, duplicate peaks and off-instance peaks (:class:`PeakCensus`);
- maps (pseudo labels, the PRM and each ICN step): IoU with the peak's instance and area
  (:func:`pair_overlap`);
- matching: the ground-truth IoU of the chosen proposal, of the proposal that best fits
  the map, and of the best proposal of all (:func:`best_match`);
- ranking: AP with the shipped choices, with oracle ranking, with oracle matching
  (:func:`average_precision`);
- mask fit: each object's best IoU with a prediction of its class (:func:`object_fit`),
  summarised as objects found and how well the found ones fit, also on the objects a
  reference finds too (:func:`fit_summary`): it tells a row that finds other objects from
  one that outlines the same objects worse.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from icn_rt.eval.instance import InstanceEvaluator, mask_iou, voc_ap


def classification_ap(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``scores: float [N, C]`` of ``N`` images, ``targets: {0, 1} [N, C]`` their labels ->
    ``float64 [C]``: VOC AP of ranking the images by each class's score (NaN: a class no
    image has)."""
    out = np.full(targets.shape[1], np.nan)
    for c in range(targets.shape[1]):
        if targets[:, c].sum() == 0:
            continue
        order = np.argsort(-scores[:, c], kind="stable")
        hits = targets[order, c]
        tp = np.cumsum(hits)
        out[c] = voc_ap(tp / np.arange(1, len(hits) + 1), tp / hits.sum())
    return out


def peak_owners(cls: np.ndarray, yx: np.ndarray, value: np.ndarray, gt_masks: np.ndarray,
                gt_cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which ground-truth instance each of K peaks lands on: ``cls: int [K]``, ``yx: int
    [K, 2]`` (pixel of the image), ``value: float [K]``; ``gt_masks: bool [G, H, W]``,
    ``gt_cls: int [G]``. Returns ``(owner int [K]`` (the instance of the peak's class under
    its pixel, -1: none — an off-instance peak), ``duplicate bool [K]`` (a higher peak,
    ties: the first, already landed on that instance))."""
    owner = np.full(len(cls), -1, np.int64)
    for k, (c, (y, x)) in enumerate(zip(cls, yx)):
        hits = np.flatnonzero((gt_cls == c) & gt_masks[:, y, x]) if len(gt_cls) else []
        if len(hits):
            owner[k] = hits[0]
    duplicate = np.zeros(len(cls), bool)
    taken: set[int] = set()
    for k in np.argsort(-np.asarray(value, np.float64), kind="stable"):
        if owner[k] >= 0:
            duplicate[k] = owner[k] in taken
            taken.add(int(owner[k]))
    return owner, duplicate


@dataclass
class PeakCensus:
    """Peaks against the ground truth, over images (:meth:`add` one at a time)."""

    instances: int = 0
    found: int = 0
    peaks: int = 0
    off_instance: int = 0
    duplicates: int = 0

    def add(self, owner: np.ndarray, duplicate: np.ndarray, gt_count: int) -> None:
        """One image's :func:`peak_owners` and its number of ground-truth instances."""
        self.instances += gt_count
        self.found += len(set(owner[owner >= 0].tolist()))
        self.peaks += len(owner)
        self.off_instance += int((owner < 0).sum())
        self.duplicates += int(duplicate.sum())

    def to_json(self) -> dict:
        return {"instances": self.instances, "found": self.found, "recall": _share(self.found, self.instances),
                "peaks": self.peaks, "off_instance": self.off_instance,
                "off_instance_share": _share(self.off_instance, self.peaks), "duplicates": self.duplicates,
                "duplicate_share": _share(self.duplicates, self.peaks)}


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def pair_overlap(masks: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``masks``, ``truth``: ``bool [K, H, W]``, pair by pair -> ``(IoU float64 [K]`` (0 when
    both are empty), ``area float64 [K]``: each mask's share of the image)."""
    pixels = int(np.prod(masks.shape[1:]))
    flat, gt = masks.reshape(len(masks), pixels), truth.reshape(len(truth), pixels)
    inter = (flat & gt).sum(1)
    union = (flat | gt).sum(1)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return iou, flat.mean(1) if pixels else np.zeros(len(masks))


def best_match(targets: np.ndarray, proposals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each target ``bool [K, H, W]``, the proposal (of ``bool [N, H, W]``) with the
    highest IoU with it -> ``(index int64 [K]`` (-1: no proposals; ties: the first),
    ``IoU float64 [K])``."""
    if len(proposals) == 0:
        return np.full(len(targets), -1, np.int64), np.zeros(len(targets))
    iou = mask_iou(proposals, targets)  # [N, K]
    best = iou.argmax(0)
    return best.astype(np.int64), iou[best, np.arange(len(targets))] if len(targets) else np.zeros(0)


def average_precision(images: list[tuple], num_classes: int, thresholds=(0.25, 0.5, 0.75)) -> dict[str, float]:
    """mAP^r (percent) of ``images``: each ``(masks bool [P, H, W], labels int [P], scores
    float [P], gt_masks bool [G, H, W], gt_labels int [G])``."""
    return {f"mAP@{t:g}": 100 * v for t, v in _evaluated(images, num_classes, thresholds)["map"].items()}


def class_average_precision(images: list[tuple], num_classes: int, threshold: float = 0.5) -> list[float | None]:
    """Each class's AP (percent) at mask IoU ``threshold`` of ``images`` (as
    :func:`average_precision` takes them); None: a class without ground truth."""
    ap = _evaluated(images, num_classes, (threshold,))["ap"][threshold]
    return [None if not np.isfinite(a) else float(100 * a) for a in ap]


def same_class_iou(masks: np.ndarray, labels: np.ndarray, gt_masks: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """Mask IoU of each prediction (``masks bool [P, H, W]``, ``labels int [P]``) with each
    ground-truth object, 0 where their classes differ -> ``float64 [P, G]``."""
    if len(masks) == 0 or len(gt_masks) == 0:
        return np.zeros((len(masks), len(gt_masks)))
    return np.where(np.asarray(labels)[:, None] == np.asarray(gt_labels)[None], mask_iou(masks, gt_masks), 0.0)


def fits_and_oracle(masks: np.ndarray, labels: np.ndarray, gt_masks: np.ndarray,
                    gt_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`object_fit` and :func:`oracle_confidence` of one image from one IoU matrix ->
    ``(float64 [G], float64 [P])``."""
    iou = same_class_iou(masks, labels, gt_masks, gt_labels)
    return (iou.max(0) if len(masks) else np.zeros(len(gt_masks)),
            iou.max(1) if len(gt_masks) else np.zeros(len(masks)))


def object_fit(masks: np.ndarray, labels: np.ndarray, gt_masks: np.ndarray, gt_labels: np.ndarray) -> np.ndarray:
    """Each ground-truth object's best mask IoU with a prediction of its own class
    (``masks bool [P, H, W]``, ``labels int [P]``) -> ``float64 [G]`` (0: none of its class)."""
    return fits_and_oracle(masks, labels, gt_masks, gt_labels)[0]


def oracle_confidence(masks: np.ndarray, labels: np.ndarray, gt_masks: np.ndarray,
                      gt_labels: np.ndarray) -> np.ndarray:
    """Oracle ranking's confidence: each prediction's best mask IoU with a ground-truth
    object of its class (0: none) -> ``float64 [P]``."""
    return fits_and_oracle(masks, labels, gt_masks, gt_labels)[1]


def fit_summary(fit: np.ndarray, reference: np.ndarray, weight: np.ndarray | None = None) -> dict[str, float]:
    """Percentages over the ground-truth objects, each counted ``weight`` times (default 1;
    a bootstrap draw's count of its image): ``found@0.5``, ``found@0.75`` (objects whose
    :func:`object_fit` reaches it), ``IoU, found`` (mean fit of those found at 0.5), and on
    the objects both this row and ``reference`` (the reference row's fits of the same
    objects) find at 0.5, ``IoU, both found`` and ``reference IoU, both found``; NaN where
    no object counts."""
    w = np.ones(len(fit)) if weight is None else np.asarray(weight, np.float64)

    def mean(values, where):
        total = (w * where).sum()
        return float(100 * (w * where * values).sum() / total) if total > 0 else float("nan")

    ones, found, both = np.ones(len(fit)), fit >= 0.5, (fit >= 0.5) & (reference >= 0.5)
    return {"found@0.5": mean(found, ones > 0), "found@0.75": mean(fit >= 0.75, ones > 0),
            "IoU, found": mean(fit, found), "IoU, both found": mean(fit, both),
            "reference IoU, both found": mean(reference, both)}


def _evaluated(images: list[tuple], num_classes: int, thresholds) -> dict:
    ev = InstanceEvaluator(num_classes, thresholds)
    for masks, labels, scores, gt_masks, gt_labels in images:
        ev.add(masks, labels, scores, gt_masks, gt_labels)
    return ev.result()
