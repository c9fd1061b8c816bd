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
    first maximum of its ``window``² neighbourhood."""
    if window % 2 != 1:
        raise ValueError(f"peak window must be odd, got {window}")
    h, w = maps.shape[-2:]
    r = window // 2
    padded = F.pad(maps, (r, r, r, r), value=float("-inf"))
    _, idx = F.max_pool2d(padded, window, stride=1, return_indices=True)
    wp = w + 2 * r
    own = (torch.arange(h, device=maps.device)[:, None] + r) * wp + torch.arange(w, device=maps.device)[None, :] + r
    return idx == own


def stimulation_peaks(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Local maxima at or above their map's (lower) median -> ``bool [B, C, H, W]``."""
    median = maps.flatten(2).median(dim=2).values[..., None, None]
    return local_maxima(maps, window) & (maps >= median)


class _PeakStimulation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, maps: torch.Tensor, window: int) -> torch.Tensor:
        peaks = stimulation_peaks(maps, window)
        ctx.save_for_backward(peaks)
        weights = peaks.to(maps.dtype)
        return (maps * weights).sum((2, 3)) / weights.sum((2, 3))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (peaks,) = ctx.saved_tensors
        return peaks.to(grad.dtype) * grad[..., None, None], None


def peak_stimulation(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """``maps: float [B, C, H, W]`` -> class scores ``[B, C]`` (mean at the peaks)."""
    return _PeakStimulation.apply(maps, window)
