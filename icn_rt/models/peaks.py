"""Peaks at inference (docs/design.md §1 step 2): which class-map maxima become instances.

Two rules, a setting:

- ``eq1`` (the paper's Eq. 1): P = max(M − G(M) − mean(M), 0) with G a Gaussian filter;
  peaks are the local maxima of M where P > 0. ``sigma`` is in cells of the backbone's
  output (so it means the same with or without sub-pixel upsampling); the filter is
  truncated at 3σ and the map is edge-padded — the paper says neither.
- ``median`` (the PRM reference): local maxima at or above the map's lower median.

Either way a class is considered only if its score is ≥ ``class_threshold`` and a peak is
kept only if its map value is > ``peak_threshold`` (PRM: 0 and a hard-coded 30 — its maps'
units; ours are calibrated on the training data and stored in the model's config, one
value, or one per class: a class the network learned with a weaker response, such as the
synthetic benchmark's triangle, then still gets peaks). At
most ``max_peaks`` per image, the highest values kept. Peaks are listed in raster order
(image, class, y, x), as ``nonzero`` gives them. The local maxima and the lower median are
the training-time class scores' too (:mod:`.class_scores`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

RULES = ("eq1", "median")


def local_maxima(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """``maps: float [B, C, H, W]`` -> ``bool [B, C, H, W]``, True where a pixel is the
    first maximum of its ``window``² neighbourhood: no neighbour is larger and none
    before it in row-major order is equal. (Max-pool with indices gives the same; this
    form needs no indices, so it exports to TensorRT.)"""
    if window % 2 != 1:
        raise ValueError(f"peak window must be odd, got {window}")
    h, w = maps.shape[-2:]
    r = window // 2
    padded = F.pad(maps, (r, r, r, r), value=float("-inf"))
    keep = F.max_pool2d(padded, window, stride=1) == maps
    for dy in range(r + 1):
        for dx in range(window if dy < r else r):
            keep = keep & (padded[..., dy: dy + h, dx: dx + w] < maps)
    return keep


def lower_median(flat: torch.Tensor) -> torch.Tensor:
    """Lower median over the last axis of ``flat`` (the ⌈n/2⌉-th smallest value), by
    top-k, which exports."""
    k = (flat.shape[-1] + 1) // 2
    return torch.topk(flat, k, dim=-1, largest=False).values.amax(-1)


@dataclass
class PeakSettings:
    rule: str = "eq1"
    sigma: float = 1.0
    window: int = 3
    class_threshold: float = 0.0
    peak_threshold: float | list[float] = 0.0  # one for every class, or one per class
    max_peaks: int = 32


def peak_thresholds(settings: PeakSettings, maps: torch.Tensor) -> torch.Tensor | float:
    """``peak_threshold`` in the form ``maps [B, C, H, W]`` compare with: a float, or a
    ``[1, C, 1, 1]`` tensor of per-class thresholds (its length must be C)."""
    if not isinstance(settings.peak_threshold, (list, tuple)):
        return settings.peak_threshold
    if len(settings.peak_threshold) != maps.shape[1]:
        raise ValueError(f"peak_threshold has {len(settings.peak_threshold)} values for {maps.shape[1]} classes")
    return torch.tensor(settings.peak_threshold, dtype=maps.dtype, device=maps.device)[None, :, None, None]


@dataclass
class Peaks:
    """K peaks of a batch: ``image, cls, y, x: int64 [K]`` (y, x on the class map the
    peaks were found on) and ``value: float [K]`` (the class map there)."""

    image: torch.Tensor
    cls: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor
    value: torch.Tensor

    def __len__(self) -> int:
        return len(self.image)

    def select(self, keep: torch.Tensor) -> Peaks:
        return Peaks(self.image[keep], self.cls[keep], self.y[keep], self.x[keep], self.value[keep])


def gaussian_kernel(sigma: float) -> np.ndarray:
    """1-D Gaussian of σ ``sigma`` pixels, truncated at 3σ (at least radius 1), summing to 1."""
    radius = max(1, math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return k / k.sum()


def _edge_pad(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    # replicate padding from slices (exports as Slice/Expand/Concat, which TensorRT imports
    # on every version, unlike Pad's edge mode)
    first = x.narrow(dim, 0, 1)
    last = x.narrow(dim, x.shape[dim] - 1, 1)
    shape = list(x.shape)
    shape[dim] = r
    return torch.cat([first.expand(shape), x, last.expand(shape)], dim)


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of ``maps: float [B, C, H, W]``, σ in pixels, truncated at 3σ,
    edge padding."""
    if sigma <= 0:
        return maps
    k = torch.as_tensor(gaussian_kernel(sigma), dtype=maps.dtype, device=maps.device)
    radius = (len(k) - 1) // 2
    b, c, h, w = maps.shape
    flat = maps.reshape(-1, 1, h, w)
    flat = F.conv2d(_edge_pad(flat, radius, 3), k.view(1, 1, 1, -1))
    flat = F.conv2d(_edge_pad(flat, radius, 2), k.view(1, 1, -1, 1))
    return flat.reshape(maps.shape)


def peak_candidates(maps: torch.Tensor, settings: PeakSettings, sub_pixel: int = 1) -> torch.Tensor:
    """``maps: float [B, C, H, W]`` -> ``bool [B, C, H, W]`` local maxima passing the rule
    (before thresholds)."""
    maxima = local_maxima(maps, settings.window)
    if settings.rule == "median":
        median = lower_median(maps.flatten(2))[..., None, None]
        return maxima & (maps >= median)
    if settings.rule == "eq1":
        response = maps - gaussian_blur(maps, settings.sigma * sub_pixel) - maps.mean((2, 3), keepdim=True)
        return maxima & (response > 0)
    raise ValueError(f"unknown peak rule {settings.rule!r}; choose one of {', '.join(RULES)}")


def peak_mask(maps: torch.Tensor, scores: torch.Tensor, settings: PeakSettings, sub_pixel: int = 1) -> torch.Tensor:
    """``bool [B, C, H, W]``: the peaks of the classes whose ``scores: [B, C]`` pass, before
    the ``max_peaks`` cut."""
    keep = peak_candidates(maps, settings, sub_pixel)
    keep = keep & (scores >= settings.class_threshold)[..., None, None]
    return keep & (maps > peak_thresholds(settings, maps))


def find_peaks(maps: torch.Tensor, scores: torch.Tensor, settings: PeakSettings, sub_pixel: int = 1) -> Peaks:
    """Peaks of the classes whose ``scores: [B, C]`` pass, from ``maps: [B, C, H, W]``."""
    keep = peak_mask(maps, scores, settings, sub_pixel)
    image, cls, y, x = keep.nonzero(as_tuple=True)
    value = maps[image, cls, y, x]
    peaks = Peaks(image, cls, y, x, value)
    if settings.max_peaks and len(peaks):
        chosen = []
        for b in image.unique():
            idx = (image == b).nonzero(as_tuple=True)[0]
            if len(idx) > settings.max_peaks:
                top = torch.sort(value[idx], descending=True, stable=True).indices[: settings.max_peaks]
                idx = idx[top.sort().values]
            chosen.append(idx)
        peaks = peaks.select(torch.cat(chosen))
    return peaks


def peak_slots(maps: torch.Tensor, keep: torch.Tensor, slots: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`find_peaks` in fixed slots, with no data-dependent shapes (the exported PRM
    graph): per image the ``slots`` highest peaks of ``keep`` in raster order, then empty
    slots. Returns ``index: int32 [B, slots]`` (flat over C·H·W; empty slots 0),
    ``value: float [B, slots]`` (empty 0) and ``valid: bool [B, slots]``.

    Needs C·H·W ≥ ``slots`` and C·H·W < 2²⁴ (raster keys are sorted as float32). Equal
    peak values compete by raster order, as in :func:`find_peaks`, where the runtime's
    top-k keeps ties in index order (ONNX's TopK does)."""
    b = maps.shape[0]
    n = maps[0].numel()
    flat_keep = keep.reshape(b, n)
    scored = torch.where(flat_keep, maps.reshape(b, n), torch.full_like(maps.reshape(b, n), float("-inf")))
    value, index = torch.topk(scored, slots, dim=1)
    valid = value > float("-inf")
    # back to raster order: sort the chosen flat indices, empty slots last
    key = torch.where(valid, index.to(torch.float32), n + torch.arange(slots, device=maps.device, dtype=torch.float32))
    _, order = torch.topk(key, slots, dim=1, largest=False)
    index = torch.gather(index, 1, order)
    valid = torch.gather(valid.to(torch.int32), 1, order) > 0
    value = torch.where(valid, torch.gather(value, 1, order), torch.zeros_like(value))
    index = torch.where(valid, index, torch.zeros_like(index)).to(torch.int32)
    return index, value, valid
