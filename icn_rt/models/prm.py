"""Peak Response Maps (DESIGN.md §1 step 3, Eq. 2): one recorded forward pass over the
images, one batched backward for all their peaks.

PRM of a peak = the gradient of the class map at the peak w.r.t. the input image,
summed over colour channels, clamped at 0 and divided by its sum (all zeros stays all
zeros). It has the network input's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icn_rt.models.backprop import RULES, Tape, by_index, record, upsample_weights, vjp
from icn_rt.models.classifier import PeakClassifier
from icn_rt.models.peak_stimulation import peak_stimulation
from icn_rt.models.peaks import Peaks


@dataclass
class PRMSettings:
    """``rule``: ``gradient`` (the paper) or ``excitation`` (the PRM reference's conv
    backward); see :mod:`icn_rt.models.backprop`."""

    rule: str = "gradient"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ValueError(f"unknown backprop rule {self.rule!r}; choose one of {', '.join(RULES)}")


@dataclass
class Recorded:
    """A recorded forward pass: ``scores [B, C]``, ``maps [B, C, H, W]`` (after sub-pixel
    upsampling), and what the backward needs."""

    scores: torch.Tensor
    maps: torch.Tensor
    tape: Tape
    low_size: tuple[int, int]
    input_size: tuple[int, int]


@torch.no_grad()
def recorded_forward(model: PeakClassifier, x: torch.Tensor) -> Recorded:
    """``x: float [B, 3, S, S]`` (normalised) -> :class:`Recorded`. ``model`` must be in eval mode."""
    tape = Tape()
    features = record(model.backbone, x, tape)
    low = record(model.classifier, features, tape)
    maps = model.upsample(low)
    if model.settings.stimulation:
        scores = peak_stimulation(maps, model.settings.window)
    else:
        scores = maps.mean((2, 3))
    return Recorded(scores, maps, tape, tuple(low.shape[-2:]), tuple(x.shape[-2:]))


@torch.no_grad()
def input_gradients(model: PeakClassifier, rec: Recorded, peaks: Peaks, rule: str) -> torch.Tensor:
    """Gradient of each peak's class-map value w.r.t. the input -> ``float [K, 3, S, S]``."""
    h, w = rec.low_size
    k, c = len(peaks), rec.maps.shape[1]
    dev, dtype = rec.maps.device, rec.maps.dtype
    if k == 0:
        return torch.zeros(0, 3, *rec.input_size, device=dev, dtype=dtype)
    f = model.settings.sub_pixel
    rows = upsample_weights(h, f, dev, dtype)[peaks.y]  # factor 1: the identity
    cols = upsample_weights(w, f, dev, dtype)[peaks.x]
    g = torch.zeros(k, c, h, w, device=dev, dtype=dtype)
    g[torch.arange(k, device=dev), peaks.cls] = rows[:, :, None] * cols[:, None, :]
    spread = by_index(peaks.image)
    g = vjp(model.classifier, g, spread, rec.tape, rule)
    return vjp(model.backbone, g, spread, rec.tape, rule)


def normalise_prm(grad: torch.Tensor) -> torch.Tensor:
    """``[K, 3, S, S]`` input gradients -> PRMs ``float [K, S, S]``, each summing to 1
    (or all zero)."""
    prm = grad.sum(1).clamp(min=0)
    total = prm.flatten(1).sum(1)
    return prm / torch.where(total > 0, total, torch.ones_like(total))[:, None, None]


def peak_response_maps(model: PeakClassifier, rec: Recorded, peaks: Peaks, settings: PRMSettings) -> torch.Tensor:
    """PRMs of ``peaks`` -> ``float [K, S, S]``, each summing to 1 (or all zero)."""
    return normalise_prm(input_gradients(model, rec, peaks, settings.rule))
