"""The classifier's class scores (docs/design.md §1 step 1) by peak stimulation (PRM, Zhou et
al. 2018): the class score is the mean of the class map at its peaks, and the gradient
goes to the peaks only. (Which peaks become instances at inference is :mod:`.peaks`.)

Stimulation peaks are local maxima in a ``window``² neighbourhood (:func:`~.peaks.local_maxima`:
the map padded with −inf, so a border pixel can be a peak; on a plateau only the first
position in row-major order wins, as max-pool's indices give) whose value is at least the
map's median (the lower median for an even count). As in the PRM reference, the backward
pass sends the full incoming gradient to every peak, not divided by the number of peaks.
"""

from __future__ import annotations

import torch

from icn_rt.models.peaks import local_maxima, lower_median


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
