"""Instance segmentation mAP^r by the VOC protocol, and ABO.

The protocol is chainercv's ``eval_instance_segmentation_voc`` (used by IRN and BESTIE):
per image and class, predictions sorted by score each take the ground truth with the
highest mask IoU; at IoU >= t the prediction is a true positive if that ground truth is
not taken yet, else a false positive (it does not fall back to the next best ground
truth). Per class, AP is the area under the interpolated precision-recall curve (VOC
2010+), mAP the mean over classes with ground truth. ``difficult`` ground truth follows
the VOC convention: not counted as positives, and a prediction that takes one is
neither a true nor a false positive (chainercv loads no difficult flags; pass
``count_difficult=True`` to reproduce it on VOC exactly). Score ties keep input order.

ABO (average best overlap): mean over ground-truth instances of the best IoU with any
prediction, whatever its class.

Every image's share is kept apart, so :meth:`InstanceEvaluator.result` can weigh the
images (a bootstrap sample: image i taken ``weights[i]`` times), giving exactly what
evaluating the images that many times would give (ties in score between copies and
other images aside).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a: bool [P, H, W]``, ``b: bool [G, H, W]`` -> ``float64 [P, G]`` IoU (0 where both empty)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    fa = a.reshape(len(a), -1).astype(np.float32)
    fb = b.reshape(len(b), -1).astype(np.float32)
    inter = (fa @ fb.T).astype(np.float64)
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the interpolated PR curve (VOC 2010+)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


class InstanceEvaluator:
    """Accumulates images; :meth:`result` gives AP per class and mAP per IoU threshold."""

    def __init__(self, num_classes: int, iou_thresholds=(0.25, 0.5, 0.75), count_difficult: bool = False):
        self.num_classes = num_classes
        self.thresholds = tuple(iou_thresholds)
        self.count_difficult = count_difficult
        self.positives: list[np.ndarray] = []  # per image: int64 [C] non-difficult ground truth
        self.scores: dict[int, list[np.ndarray]] = defaultdict(list)
        self.images: dict[int, list[np.ndarray]] = defaultdict(list)  # the image of each prediction
        self.matches: dict[tuple[float, int], list[np.ndarray]] = defaultdict(list)
        self.best_overlaps: list[np.ndarray] = []
        self.overlap_images: list[np.ndarray] = []

    @property
    def num_images(self) -> int:
        return len(self.positives)

    def add(self, pred_masks, pred_labels, pred_scores, gt_masks, gt_labels, gt_difficult=None) -> None:
        """One image. ``pred_masks: bool [P, H, W]``, ``pred_labels: int [P]`` (0-based),
        ``pred_scores: float [P]``; ``gt_masks: bool [G, H, W]``, ``gt_labels: int [G]``."""
        pred_labels = np.asarray(pred_labels, np.int64)
        pred_scores = np.asarray(pred_scores, np.float64)
        gt_labels = np.asarray(gt_labels, np.int64)
        difficult = np.zeros(len(gt_labels), bool) if gt_difficult is None else np.asarray(gt_difficult, bool)
        if self.count_difficult:
            difficult = np.zeros_like(difficult)
        iou = mask_iou(pred_masks, gt_masks)
        image = self.num_images
        self.positives.append(np.bincount(gt_labels[~difficult], minlength=self.num_classes).astype(np.int64))
        if len(gt_labels):
            self.best_overlaps.append(iou.max(0) if len(pred_labels) else np.zeros(len(gt_labels)))
            self.overlap_images.append(np.full(len(gt_labels), image))
        for c in np.union1d(pred_labels, gt_labels):
            p = np.flatnonzero(pred_labels == c)
            p = p[np.argsort(-pred_scores[p], kind="stable")]
            g = np.flatnonzero(gt_labels == c)
            if len(p) == 0:
                continue
            self.scores[c].append(pred_scores[p])
            self.images[c].append(np.full(len(p), image))
            sub = iou[np.ix_(p, g)]
            for t in self.thresholds:
                self.matches[(t, c)].append(_match(sub, difficult[g], t))

    @property
    def n_pos(self) -> np.ndarray:
        """``int64 [C]``: non-difficult ground truth per class over all images."""
        return np.sum(self.positives, 0) if self.positives else np.zeros(self.num_classes, np.int64)

    def result(self, weights: np.ndarray | None = None) -> dict:
        """``{"ap": {t: float [C] (nan: class without ground truth)}, "map": {t: float},
        "abo": float}``. ``weights: int [images]``: how many times each image counts
        (None: once each)."""
        w = np.ones(self.num_images, np.int64) if weights is None else np.asarray(weights, np.int64)
        n_pos = w @ np.asarray(self.positives).reshape(-1, self.num_classes) if self.positives else self.n_pos
        ap = {}
        for t in self.thresholds:
            per_class = np.full(self.num_classes, np.nan)
            for c in range(self.num_classes):
                if n_pos[c] == 0:
                    continue
                if not self.scores[c]:
                    per_class[c] = 0.0
                    continue
                score = np.concatenate(self.scores[c])
                order = np.argsort(-score, kind="stable")
                match = np.concatenate(self.matches[(t, c)])[order]
                count = w[np.concatenate(self.images[c])[order]]
                tp = np.cumsum(count * (match == 1))
                fp = np.cumsum(count * (match == 0))
                with np.errstate(invalid="ignore"):
                    precision = tp / (tp + fp)
                recall = tp / n_pos[c]
                # Difficult-only prefixes give 0/0: they hold no operating point.
                valid = (tp + fp) > 0
                per_class[c] = voc_ap(precision[valid], recall[valid])
            ap[t] = per_class
        with np.errstate(invalid="ignore"):
            maps = {t: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for t, v in ap.items()}
        return {"ap": ap, "map": maps, "abo": self._abo(w)}

    def _abo(self, w: np.ndarray) -> float:
        if not self.best_overlaps:
            return float("nan")
        count = w[np.concatenate(self.overlap_images)]
        return float((count * np.concatenate(self.best_overlaps)).sum() / count.sum()) if count.sum() else float("nan")


def _match(iou: np.ndarray, difficult: np.ndarray, threshold: float) -> np.ndarray:
    """Per prediction (rows, sorted by score): 1 true positive, 0 false, -1 ignored."""
    out = np.zeros(len(iou), np.int8)
    if iou.shape[1] == 0:
        return out
    taken = np.zeros(iou.shape[1], bool)
    best = iou.argmax(1)
    for k, g in enumerate(best):
        if iou[k, g] < threshold:
            continue
        if difficult[g]:
            out[k] = -1
        elif not taken[g]:
            out[k] = 1
        taken[g] = True
    return out
