"""Peak stimulation (PRM, Zhou et al. 2018): the class score is the mean of the class
map at its peaks, and the gradient goes to the peaks only.

Peaks are local maxima in a ``window``² neighbourhood (the map padded with −inf, so a
border pixel can be a peak; on a plateau only the first position in row-major order
wins, as max-pool's indices give) whose value is at least the map's
median (the lower median for an even count). As in the PRM reference, the backward pass
sends the full incoming gradient to every peak, not divided by the number of peaks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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


def stimulation_peaks(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Local maxima at or above their map's (lower) median -> ``bool [B, C, H, W]``."""
    median = lower_median(maps.flatten(2))[..., None, None]
    return local_maxima(maps, window) & (maps >= median)


class _PeakStimulation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maps: torch.Tensor, window: int) -> torch.Tensor:
        peaks = stimulation_peaks(maps, window)
        ctx.save_for_backward(peaks)
        return mean_at(maps, peaks)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (peaks,) = ctx.saved_tensors
        return peaks.to(grad.dtype) * grad[..., None, None], None


def mean_at(maps: torch.Tensor, peaks: torch.Tensor) -> torch.Tensor:
    """Mean of each map at its ``peaks`` (every map has at least one: its maximum)."""
    weights = peaks.to(maps.dtype)
    return (maps * weights).sum((2, 3)) / weights.sum((2, 3))


def peak_stimulation(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """``maps: float [B, C, H, W]`` -> class scores ``[B, C]`` (mean at the peaks)."""
    return _PeakStimulation.apply(maps, window)
