"""Peak Response Maps (docs/design.md §1 step 3, Eq. 2): one recorded forward pass over the
images, their peaks (step 2), one batched backward for all of them — the naive maps.

PRM of a peak = the gradient of the class map at the peak w.r.t. the input image,
summed over colour channels, clamped at 0 and divided by its sum (all zeros stays all
zeros). It has the network input's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icn_rt.models.class_scores import peak_stimulation
from icn_rt.models.classifier import PeakClassifier
from icn_rt.models.peaks import Peaks, PeakSettings, find_peaks
from icn_rt.models.receptive_field_vjp import Window, input_window, local_vjp, seed_window
from icn_rt.models.whole_map_vjp import RULES, Tape, by_index, record, upsample_weights, vjp


@dataclass
class PRMSettings:
    """``rule``: ``gradient`` (the paper) or ``excitation`` (the PRM reference's conv
    backward); see :mod:`icn_rt.models.whole_map_vjp`."""

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
    channels_last: bool = False


@torch.no_grad()
def recorded_forward(model: PeakClassifier, x: torch.Tensor, channels_last: bool | None = None) -> Recorded:
    """``x: float [B, 3, S, S]`` (normalised) -> :class:`Recorded`. ``model`` must be in
    eval mode. ``channels_last`` (None: on the CPU): the activations in that layout, where
    oneDNN's convolutions and max-pools run about twice as fast (the same sums in another
    order)."""
    tape = Tape()
    channels_last = channels_last if channels_last is not None else x.device.type == "cpu"
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    features = record(model.backbone, x, tape)
    low = record(model.classifier, features, tape)
    maps = model.upsample(low).contiguous()
    if model.settings.stimulation:
        scores = peak_stimulation(maps, model.settings.window)
    else:
        scores = maps.mean((2, 3))
    return Recorded(scores, maps, tape, tuple(low.shape[-2:]), tuple(x.shape[-2:]), channels_last)


PEAK_CHUNK = 8
"""The whole-map backward runs image by image, at most this many peaks at a time: each
image's activations are then broadcast to its peaks, never copied per peak, and the
gradients alive stay bounded (at 448² a ResNet-50 layer's gradient is 13 MB per peak)."""


def _image_chunks(image: torch.Tensor, chunk: int) -> list[tuple[int, torch.Tensor]]:
    """``(image b, indices of at most chunk of its peaks)`` over the peaks, in order."""
    out = []
    for b in image.unique().tolist():
        idx = (image == b).nonzero(as_tuple=True)[0]
        out += [(b, idx[s: s + chunk]) for s in range(0, len(idx), chunk)]
    return out


LOCAL_AREA = 0.5
"""The local VJP (:mod:`icn_rt.models.receptive_field_vjp`) runs when the receptive field
window at the input covers at most this share of the image."""


@torch.no_grad()
def input_gradients(model: PeakClassifier, rec: Recorded, peaks: Peaks, rule: str,
                    local: bool | None = None) -> torch.Tensor:
    """Gradient of each peak's class-map value w.r.t. the input -> ``float [K, 3, S, S]``.
    ``local``: backpropagate on each peak's receptive field only (the same gradients,
    fewer operations when the field is small beside the image); None: when its window
    covers at most :data:`LOCAL_AREA` of the input."""
    h, w = rec.low_size
    k, c = len(peaks), rec.maps.shape[1]
    dev, dtype = rec.maps.device, rec.maps.dtype
    if k == 0:
        return torch.zeros(0, 3, *rec.input_size, device=dev, dtype=dtype)
    rows, cols, seed = _seed(model, rec, peaks)
    if local is None:
        field = _input_window(model, rec, seed).size
        local = field[0] * field[1] <= LOCAL_AREA * rec.input_size[0] * rec.input_size[1]
    if not local:
        out = torch.empty(k, 3, *rec.input_size, device=dev, dtype=dtype)
        for b, idx in _image_chunks(peaks.image, PEAK_CHUNK):
            n = len(idx)
            g = torch.zeros(n, c, h, w, device=dev, dtype=dtype)
            g[torch.arange(n, device=dev), peaks.cls[idx]] = rows[peaks.y[idx]][:, :, None] * cols[peaks.x[idx]][:, None, :]
            if rec.channels_last:  # in the activations' layout: no conversion at every masking
                g = g.contiguous(memory_format=torch.channels_last)
            tape, spread = rec.tape.image(b), by_index(torch.zeros(n, dtype=torch.long, device=dev))
            g = vjp(model.classifier, g, spread, tape, rule)
            out[idx] = vjp(model.backbone, g, spread, tape, rule)
        return out
    return local_gradients(model, rec.tape, peaks, rows, cols, c, rule)


def local_gradients(model: PeakClassifier, tape: Tape, peaks: Peaks, rows: torch.Tensor, cols: torch.Tensor,
                    classes: int, rule: str) -> torch.Tensor:
    """:func:`input_gradients` on each peak's receptive field (``peaks.value`` unused;
    ``rows``, ``cols``: the class maps' upsampling weights): forward operators, gathers
    and products only, so the exported PRM graph runs it too."""
    seed = _seed_window(rows, cols, peaks)
    (r0, c0), (sh, sw) = (seed.rows.t0, seed.cols.t0), seed.size
    dev = rows.device
    span_r = rows[peaks.y[:, None], r0[:, None] + torch.arange(sh, device=dev)]  # [K, sh]
    span_c = cols[peaks.x[:, None], c0[:, None] + torch.arange(sw, device=dev)]
    one_c = (peaks.cls[:, None] == torch.arange(classes, device=dev)).to(rows.dtype)
    g = one_c[:, :, None, None] * span_r[:, None, :, None] * span_c[:, None, None, :]  # [K, C, sh, sw]
    g, win = local_vjp(model.classifier, g, seed, tape, rule)
    g, win = local_vjp(model.backbone, g, win, tape, rule)
    return win.paste(g)


def receptive_field(model: PeakClassifier, rec: Recorded, peaks: Peaks) -> tuple[int, int]:
    """The size of the input window where a peak's gradient can be non-zero (the local
    VJP's window at the input: the receptive field of the class-map cells a peak's value
    is interpolated from)."""
    return _input_window(model, rec, _seed(model, rec, peaks)[2]).size


def _seed(model: PeakClassifier, rec: Recorded, peaks: Peaks) -> tuple[torch.Tensor, torch.Tensor, Window]:
    """The class-map upsampling weights ``rows [H, h]``, ``cols [W, w]`` (factor 1: the
    identity) and the peaks' windows of the cells they weigh."""
    (h, w), f = rec.low_size, model.settings.sub_pixel
    rows = upsample_weights(h, f, rec.maps.device, rec.maps.dtype)
    cols = upsample_weights(w, f, rec.maps.device, rec.maps.dtype)
    return rows, cols, _seed_window(rows, cols, peaks)


def _input_window(model: PeakClassifier, rec: Recorded, seed: Window) -> Window:
    return input_window(model.backbone, input_window(model.classifier, seed, rec.tape), rec.tape)


def _seed_window(rows: torch.Tensor, cols: torch.Tensor, peaks: Peaks) -> Window:
    """The class-map cells each peak's value is interpolated from (the non-zero weights
    of ``rows [H, h]`` and ``cols [W, w]``) as windows of one size."""
    axes = []
    for weights, at in ((rows, peaks.y), (cols, peaks.x)):
        nonzero = (weights != 0).to(torch.int8)
        first = nonzero.argmax(1)
        last = weights.shape[1] - 1 - nonzero.flip(1).argmax(1)
        size = int((last - first + 1).max())
        axes.append((first[at].clamp(max=weights.shape[1] - size), size, weights.shape[1]))
    (r0, sh, h), (c0, sw, w) = axes
    return seed_window(peaks.image, r0, c0, (sh, sw), (h, w))


def normalise_prm(grad: torch.Tensor) -> torch.Tensor:
    """``[K, 3, S, S]`` input gradients -> PRMs ``float [K, S, S]``, each summing to 1
    (or all zero)."""
    prm = grad.sum(1).clamp(min=0)
    total = prm.flatten(1).sum(1)
    return prm / torch.where(total > 0, total, torch.ones_like(total))[:, None, None]


def peak_response_maps(model: PeakClassifier, rec: Recorded, peaks: Peaks, settings: PRMSettings,
                       local: bool | None = None) -> torch.Tensor:
    """PRMs of ``peaks`` -> ``float [K, S, S]``, each summing to 1 (or all zero); ``local``:
    see :func:`input_gradients`."""
    return normalise_prm(input_gradients(model, rec, peaks, settings.rule, local))


@dataclass
class NaiveMaps:
    """The PRM stage of a batch: ``x: float [B, 3, S, S]`` (the network input), ``maps:
    float [B, C, h, w]`` (class maps), ``scores: float [B, C]``, ``peaks``, ``prms: float
    [K, S, S]``."""

    x: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    peaks: Peaks
    prms: torch.Tensor


def naive_maps(model: PeakClassifier, x: torch.Tensor, peaks: PeakSettings, prm: PRMSettings) -> NaiveMaps:
    """One recorded forward over ``x: float [B, 3, S, S]`` (normalised), its peaks and one
    batched backward for all of them -> :class:`NaiveMaps`. Under :func:`torch.autocast`
    the networks run at its type, but peaks and thresholds are found on fp32 maps and every
    output is fp32."""
    rec = recorded_forward(model, x)
    maps, scores = rec.maps.detach().float(), rec.scores.detach().float()
    found = find_peaks(maps, scores, peaks, model.settings.sub_pixel)
    return NaiveMaps(x, maps, scores, found, peak_response_maps(model, rec, found, prm).float())
