"""The baseline pipeline: what running the PRM authors' code on a folder looks like.

Written from the algorithm (docs/design.md §1 steps 1-3, 7, 8 as the PRM reference applies
them), never copied. Per image, one at a time:

1. resize to ``input_size``² (PRM: 448) and run the classifier with autograd on;
2. peaks: for each class whose stimulation score is ≥ ``class_threshold``, the 3×3 local
   maxima of its (sub-pixel upsampled) map at or above the map's median, with a value
   > ``peak_threshold``;
3. per peak, one autograd backward of the one-hot at the peak, through convolutions
   patched with the excitation rule; PRM = input gradient summed over channels,
   clamped at 0, divided by its sum;
4. per peak, a Python loop over the first ``max_proposals`` proposals: resize the mask
   to the PRM's size (nearest), skip it outside the area limits, take its 5×5
   morphological gradient with OpenCV, score 0.8·Σ_P R + Σ_contour R − 1e-5·Σ_P B with B
   the bytescaled, bicubic-resized class map below 0.95 × its mean; keep the best;
5. greedy mask NMS at IoU ≥ 0.3 in order of matching score.

Preprocessing (resize + normalise) is icn-rt's own, so both pipelines see the same
tensor; everything after it is independent of icn-rt's predictor.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from icn_rt.baseline.excitation import excitation_backward
from icn_rt.data.preprocess import preprocess
from icn_rt.data.proposals import Proposals
from icn_rt.matching import background_map
from icn_rt.models.class_scores import peak_stimulation
from icn_rt.models.classifier import PeakClassifier


@dataclass
class BaselineSettings:
    input_size: int = 448
    class_threshold: float = 0.0
    peak_threshold: float | list[float] = 0.0  # one for every class, or one per class
    max_proposals: int = 100
    contour_width: int = 5
    area_limits: tuple[float, float] = (2e-5, 0.85)
    balance: float = 0.8
    penalty: float = 1e-5
    background_factor: float = 0.95
    nms_iou: float = 0.3


@dataclass
class BaselineInstance:
    class_id: int
    score: float
    proposal: int
    mask: np.ndarray


def _median_peaks(crm: torch.Tensor, window: int) -> list[tuple[int, int]]:
    """Local maxima of the ``window``² neighbourhood at or above the map's median, row by row."""
    h, w = crm.shape
    r = window // 2
    padded = F.pad(crm[None, None], (r, r, r, r), value=float("-inf"))
    _, idx = F.max_pool2d(padded, window, stride=1, return_indices=True)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    is_max = idx[0, 0] == (ys + r) * (w + 2 * r) + xs + r
    return [tuple(p) for p in (is_max & (crm >= crm.flatten().median())).nonzero().tolist()]


def _best_proposal(prm: np.ndarray, background: np.ndarray, props: Proposals, s: BaselineSettings):
    size = prm.shape
    total = size[0] * size[1]
    kernel = np.ones((s.contour_width, s.contour_width), np.uint8)
    best, best_score = -1, -np.inf
    for i in range(min(len(props), s.max_proposals)):
        mask = cv2.resize(props.mask(i).astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        area = int(mask.sum())
        if area < s.area_limits[0] * total or area >= s.area_limits[1] * total:
            continue
        contour = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, kernel)
        score = (s.balance * float((prm * mask).sum()) + float((prm * contour).sum())
                 - s.penalty * float((background * mask).sum()))
        if score > best_score:
            best, best_score = i, score
    return best, best_score


def _nms(candidates: list[BaselineInstance], iou: float) -> list[BaselineInstance]:
    order = sorted(candidates, key=lambda c: -c.score)
    kept: list[BaselineInstance] = []
    for cand in order:
        suppressed = False
        for k in kept:
            inter = np.logical_and(cand.mask, k.mask).sum()
            union = np.logical_or(cand.mask, k.mask).sum()
            if union > 0 and inter / union >= iou:
                suppressed = True
                break
        if not suppressed:
            kept.append(cand)
    return kept


def _threshold(value, c: int) -> float:
    """Class ``c``'s peak threshold: one for all classes, or one per class."""
    return value[c] if isinstance(value, (list, tuple)) else value


def run_baseline(model: PeakClassifier, image: np.ndarray, props: Proposals,
                 settings: BaselineSettings) -> list[BaselineInstance]:
    """Instances of one image (``uint8 [H, W, 3]``, proposals at its size), by descending
    score. The networks run on the model's device; peaks and matching on the host."""
    model.eval()
    device = next(model.parameters()).device
    x = preprocess(image, settings.input_size)[None].to(device).requires_grad_(True)
    with excitation_backward(model):
        maps = model.class_maps(x)
        scores = peak_stimulation(maps, model.settings.window)
        candidates = []
        for c in range(maps.shape[1]):
            if scores[0, c].item() < settings.class_threshold:
                continue
            crm = maps[0, c].detach().cpu()
            background = None
            for y, xx in _median_peaks(crm, model.settings.window):
                if crm[y, xx].item() <= _threshold(settings.peak_threshold, c):
                    continue
                grad, = torch.autograd.grad(maps[0, c, y, xx], x, retain_graph=True)
                prm = grad[0].sum(0).clamp(min=0)
                total = prm.sum()
                prm = (prm / total if total > 0 else prm).cpu().numpy()
                if background is None:
                    background = background_map(crm.numpy(), prm.shape, settings.background_factor)
                best, score = _best_proposal(prm, background, props, settings)
                if best >= 0:
                    candidates.append(BaselineInstance(c, score, best, props.mask(best)))
    return _nms(candidates, settings.nms_iou)
