"""Semantic segmentation mIoU, and merging instances into a semantic label map."""

from __future__ import annotations

import numpy as np

VOID = 255


def merge_instances(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Union of instance masks per class -> ``uint8 [H, W]`` (0 background, 1 + class).

    Where instances of different classes overlap, the higher-scoring one wins.
    """
    out = np.zeros(shape, np.uint8)
    for k in np.argsort(np.asarray(scores), kind="stable"):
        out[masks[k]] = int(labels[k]) + 1
    return out


class SemanticEvaluator:
    """Confusion matrix over background + ``num_classes``; void (255) pixels ignored. Each
    image's matrix is kept, so :meth:`result` can weigh the images (a bootstrap sample)."""

    def __init__(self, num_classes: int):
        self.n = num_classes + 1
        self.per_image: list[np.ndarray] = []

    @property
    def confusion(self) -> np.ndarray:
        """``int64 [C+1, C+1]`` over all images: rows ground truth, columns prediction."""
        return np.sum(self.per_image, 0) if self.per_image else np.zeros((self.n, self.n), np.int64)

    def add(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """``pred``, ``gt``: ``uint8 [H, W]`` label maps (0 background, 1..C classes)."""
        valid = gt != VOID
        idx = gt[valid].astype(np.int64) * self.n + pred[valid].astype(np.int64)
        self.per_image.append(np.bincount(idx, minlength=self.n * self.n).reshape(self.n, self.n))

    def result(self, weights: np.ndarray | None = None) -> dict:
        """``{"iou": float [C+1] (nan: absent from both), "miou": float}``. ``weights: int
        [images]``: how many times each image counts (None: once each)."""
        confusion = self.confusion if weights is None else \
            np.tensordot(np.asarray(weights, np.int64), np.asarray(self.per_image), 1)
        tp = np.diag(confusion).astype(np.float64)
        union = confusion.sum(0) + confusion.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
        return {"iou": iou, "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")}
