"""Peaks at inference (DESIGN.md §1 step 2): which class-map maxima become instances.

Two rules, a setting:

- ``eq1`` (the paper's Eq. 1): P = max(M − G(M) − mean(M), 0) with G a Gaussian filter;
  peaks are the local maxima of M where P > 0. ``sigma`` is in cells of the backbone's
  output (so it means the same with or without sub-pixel upsampling); the filter is
  truncated at 3σ and the map is edge-padded — the paper says neither.
- ``median`` (the PRM reference): local maxima at or above the map's lower median.

Either way a class is considered only if its score is ≥ ``class_threshold`` and a peak is
kept only if its map value is > ``peak_threshold`` (PRM: 0 and a hard-coded 30 — its maps'
units; ours are calibrated on the training data and stored in the model's config). At
most ``max_peaks`` per image, the highest values kept. Peaks are listed in raster order
(image, class, y, x), as ``nonzero`` gives them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from icn_rt.models.peak_stimulation import local_maxima

RULES = ("eq1", "median")


@dataclass
class PeakSettings:
    rule: str = "eq1"
    sigma: float = 1.0
    window: int = 3
    class_threshold: float = 0.0
    peak_threshold: float = 0.0
    max_peaks: int = 32


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


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian of ``maps: float [B, C, H, W]``, σ in pixels, truncated at 3σ,
    edge padding."""
    if sigma <= 0:
        return maps
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    b, c, h, w = maps.shape
    flat = maps.reshape(b * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return flat.reshape(b, c, h, w)


def peak_candidates(maps: torch.Tensor, settings: PeakSettings, sub_pixel: int = 1) -> torch.Tensor:
    """``maps: float [B, C, H, W]`` -> ``bool [B, C, H, W]`` local maxima passing the rule
    (before thresholds)."""
    maxima = local_maxima(maps, settings.window)
    if settings.rule == "median":
        median = maps.flatten(2).median(dim=2).values[..., None, None]
        return maxima & (maps >= median)
    if settings.rule == "eq1":
        response = maps - gaussian_blur(maps, settings.sigma * sub_pixel) - maps.mean((2, 3), keepdim=True)
        return maxima & (response > 0)
    raise ValueError(f"unknown peak rule {settings.rule!r}; choose one of {', '.join(RULES)}")


def find_peaks(maps: torch.Tensor, scores: torch.Tensor, settings: PeakSettings, sub_pixel: int = 1) -> Peaks:
    """Peaks of the classes whose ``scores: [B, C]`` pass, from ``maps: [B, C, H, W]``."""
    keep = peak_candidates(maps, settings, sub_pixel)
    keep &= (scores >= settings.class_threshold)[..., None, None]
    keep &= maps > settings.peak_threshold
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
