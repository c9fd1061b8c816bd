"""The method-level references the tests hold production code to: proposal matching
(Eq. 5 and PRM's vanilla score), mask NMS and pseudo-label selection, one map at a time.

Plain, slow and exact: every fast path (the kernels on every backend, the segment path,
the matching of :mod:`icn_rt.matching`) is tested against these on the same inputs.
Production code never imports this file. Shapes: maps ``[H, W]``, proposals
``bool [N, H, W]``; the constants' defaults are the settings' own
(:class:`~icn_rt.matching.MatchingSettings`).

Choices where the paper is silent (settings of the caller, documented here):

- Eq. 5 takes ``v`` in [0, 1] (a binary enhanced PRM, or a real-valued map the caller
  min-max normalised); ``B(V) = 1 - V`` and ``E(V)`` is the morphological gradient
  (``band_width`` square) of V — for a binary V, its contour band.
- Proposals outside ``area_limits`` (fractions of the image, PRM's (2e-5, 0.85)) score
  ``-inf`` under both rules.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from icn_rt.matching import InstanceSettings, MatchingSettings

MATCHING = MatchingSettings()
NMS_IOU = InstanceSettings().nms_iou


def contour_band(v: np.ndarray, width: int = MATCHING.band_width) -> np.ndarray:
    """Morphological gradient (dilation minus erosion, ``width``² square) of a map.

    Pixels outside the image do not take part (OpenCV's default), so an object touching
    the border has no band along it. Binary in, binary out; real in, real out.
    """
    if width < 1:
        raise ValueError(f"band width must be >= 1, got {width}")
    src = v.astype(np.uint8) if v.dtype == bool else v
    size = (width, width)
    grad = ndimage.grey_dilation(src, size=size, mode="nearest") - ndimage.grey_erosion(src, size=size, mode="nearest")
    return grad.astype(bool) if v.dtype == bool else grad


def _area_ok(masks: np.ndarray, area_limits: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    area = masks.reshape(len(masks), -1).sum(1)
    image_area = masks.shape[1] * masks.shape[2]
    ok = (area >= area_limits[0] * image_area) & (area < area_limits[1] * image_area)
    return area, ok


def rebalanced_scores(v: np.ndarray, masks: np.ndarray, alpha: float = MATCHING.alpha, beta: float = MATCHING.beta,
                      gamma: float = MATCHING.gamma, band_width: int = MATCHING.band_width,
                      area_limits: tuple[float, float] = MATCHING.area_limits) -> np.ndarray:
    """The paper's Eq. 5 for every proposal -> ``float64 [N]`` (``-inf``: outside the limits).

    S = α·mean_P(V) + β·Σ_P E(V) − γ·Σ_P (1 − V).
    """
    v = v.astype(np.float64)
    band = contour_band(v, band_width)
    flat = masks.reshape(len(masks), -1)
    area, ok = _area_ok(masks, area_limits)
    inside = flat @ v.ravel()
    score = alpha * inside / np.maximum(area, 1) + beta * (flat @ band.ravel()) - gamma * (area - inside)
    return np.where(ok, score, -np.inf)


def iou_scores(v: np.ndarray, masks: np.ndarray, area_limits: tuple[float, float] = MATCHING.area_limits) -> np.ndarray:
    """IoU(V, P) = Σ_P V / (|P| + Σ V − Σ_P V) for every proposal -> ``float64 [N]``
    (``-inf``: outside the limits; 0 when the union is empty)."""
    v = v.astype(np.float64)
    flat = masks.reshape(len(masks), -1)
    area, ok = _area_ok(masks, area_limits)
    inside = flat @ v.ravel()
    union = area + v.sum() - inside
    return np.where(ok, np.where(union > 0, inside / np.where(union > 0, union, 1), 0.0), -np.inf)


def vanilla_scores(prm: np.ndarray, masks: np.ndarray, background: np.ndarray,
                   balance: float = MATCHING.vanilla_balance, penalty: float = MATCHING.vanilla_penalty,
                   band_width: int = MATCHING.band_width,
                   area_limits: tuple[float, float] = MATCHING.area_limits) -> np.ndarray:
    """The PRM reference's score (the ablation "w/o rebalance") -> ``float64 [N]``.

    S = balance·Σ_P R + Σ_{contour(P)} R − penalty·Σ_P B, contour(P) the proposal's own
    morphological gradient.
    """
    r = prm.astype(np.float64).ravel()
    b = background.astype(np.float64).ravel()
    flat = masks.reshape(len(masks), -1)
    bands = np.stack([contour_band(m, band_width) for m in masks]).reshape(len(masks), -1) if len(masks) else flat
    _, ok = _area_ok(masks, area_limits)
    score = balance * (flat @ r) + bands @ r - penalty * (flat @ b)
    return np.where(ok, score, -np.inf)


def best_proposal(scores: np.ndarray, max_proposals: int | None = None) -> int:
    """Index of the top score among the first ``max_proposals`` (ties: the first); -1 if none is finite."""
    s = scores[:max_proposals] if max_proposals else scores
    if len(s) == 0 or not np.isfinite(s).any():
        return -1
    return int(np.argmax(s))


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray]:
    """Greedy class-agnostic NMS. Returns ``(keep, owner)``: ``keep`` indices by descending
    score (ties: input order); ``owner[i]`` the kept instance that suppressed i (itself
    if kept), so callers can merge suppressed PRMs into their owner as PRM does.
    IoU ≥ ``iou_threshold`` suppresses."""
    # written apart from the kernels' NumPy backend (its IoU matrix and greedy pass), so that
    # the kernel tests compare every backend, NumPy's too, with something else
    masks = np.asarray(masks, bool)
    owner = np.full(len(masks), -1, np.int64)
    keep: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if owner[i] >= 0:
            continue
        owner[i] = i
        keep.append(int(i))
        for j in range(len(masks)):
            if owner[j] >= 0:
                continue
            union = np.logical_or(masks[i], masks[j]).sum()
            if union and np.logical_and(masks[i], masks[j]).sum() / union >= iou_threshold:
                owner[j] = i
    return np.array(keep, np.int64), owner


def top_k_not_contained(scores: np.ndarray, masks: np.ndarray, k: int = 3) -> np.ndarray:
    """Pseudo-label selection: walk proposals best first (ties: input order), keep one
    unless it lies entirely inside a kept one, stop at ``k``; ``-inf`` scores are never
    kept. Returns the kept indices in the order taken."""
    kept: list[int] = []
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        if len(kept) == k or not np.isfinite(scores[i]):
            break
        if any(not (masks[i] & ~masks[j]).any() for j in kept):
            continue
        kept.append(int(i))
    return np.array(kept, np.int64)


def consensus(masks: np.ndarray, candidates, consensus_iou: float = 0.7) -> np.ndarray:
    """How many of ``masks`` have IoU ≥ ``consensus_iou`` with each candidate, one pair at a time."""
    out = []
    for c in candidates:
        agree = 0
        for other in masks:
            union = (masks[c] | other).sum()
            agree += union > 0 and (masks[c] & other).sum() / union >= consensus_iou
        out.append(agree)
    return np.array(out, np.float64)


def objectness(image: np.ndarray, masks: np.ndarray, candidates, consensus_iou: float = 0.7, ring: int = 4,
               bins: int = 8) -> np.ndarray:
    """Objectness re-ranking's cue, one candidate at a time, at the image's own size:
    √(number of proposals with IoU ≥ ``consensus_iou``) × (total-variation distance of the
    Lab colour histograms inside the proposal and in the ``ring``-px ring around it)²."""
    import cv2

    lab = cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.int64) // (256 // bins)
    structure = np.ones((2 * ring + 1, 2 * ring + 1), bool)
    out = []
    agreeing = consensus(masks, candidates, consensus_iou)
    for c, agree in zip(candidates, agreeing):
        mask = masks[c]
        around = ndimage.binary_dilation(mask, structure) & ~mask
        if not mask.any() or not around.any():
            out.append(0.0)
            continue
        inside_hist: dict[tuple, float] = {}
        around_hist: dict[tuple, float] = {}
        for region, hist in ((mask, inside_hist), (around, around_hist)):
            for colour in map(tuple, lab[region]):
                hist[colour] = hist.get(colour, 0.0) + 1.0 / region.sum()
        distance = 0.5 * sum(abs(inside_hist.get(key, 0.0) - around_hist.get(key, 0.0))
                             for key in set(inside_hist) | set(around_hist))
        out.append(np.sqrt(agree) * distance ** 2)
    return np.array(out)
