"""The two inference graphs as PyTorch modules with static control flow, the exact code
that :mod:`icn_rt.export.onnx_export` traces (docs/design.md §2, §4). Both wrap the loaded
:class:`~icn_rt.models.store.Model` (never the predictor).

- :class:`PRMGraph`: normalised images in; class scores, class maps, the peaks (Eq. 1,
  at most ``slots`` per image, as ``max_peaks``) and the naive PRMs out. The peaks leave
  as one list over the batch (image index, class, y, x, value), and the backward's batch
  is that list: a data-dependent axis (``NonZero`` over the per-image slots), so the
  graph backpropagates the peaks it found, never empty slots. The peak backpropagation
  is :mod:`icn_rt.models.whole_map_vjp`'s explicit VJP: forward operators only, no
  autograd at run time; each peak gathers its image's recorded activations.
- :class:`ICNGraph`: per peak, the normalised image and its PRM in; the T enhancement
  steps unrolled with shared weights (min-max normalisation inside), the enhanced map
  and its binarisation (min-max, ≥ ``binarize``) out.

Both compute exactly what the eager predictor computes (tested): the same peaks in the
same order (the first ``slots`` by value, as ``max_peaks``), the same PRMs and maps.
"""

from __future__ import annotations

import torch
from torch import nn

from icn_rt.models.class_scores import mean_at, stimulation_peaks
from icn_rt.models.icn import minmax
from icn_rt.models.peaks import peak_mask, peak_slots
from icn_rt.models.peaks import Peaks
from icn_rt.models.prm import LOCAL_AREA, local_gradients, normalise_prm, receptive_field, recorded_forward
from icn_rt.models.store import Model
from icn_rt.models.whole_map_vjp import Tape, positive_weight, record, upsample_weights, vjp

PRM_INPUTS = ("images",)
PRM_OUTPUTS = ("scores", "maps", "peak_image", "peak_class", "peak_y", "peak_x", "peak_value", "prms")
PRM_PEAK_OUTPUTS = PRM_OUTPUTS[2:]
"""The PRM graph's outputs whose first axis is the batch's peaks (data-dependent), not its images."""
ICN_INPUTS = ("images", "prms")
ICN_OUTPUTS = ("enhanced", "masks")


class PRMGraph(nn.Module):
    """``forward(images: float [B, 3, S, S])`` -> :data:`PRM_OUTPUTS`: ``scores [B, C]``,
    ``maps [B, C, H, W]``, then per peak of the batch (K of them, image by image, each
    image's in raster order as the eager path lists them): ``peak_image, peak_class,
    peak_y, peak_x: int32 [K]`` (y, x on ``maps``), ``peak_value: float [K]``, ``prms:
    float [K, S, S]`` (each sums to 1, or is all zero). At most ``slots`` peaks per image
    (the highest). The model's classifier, with its peak and PRM settings."""

    def __init__(self, model: Model, slots: int) -> None:
        super().__init__()
        if slots < 1:
            raise ValueError("the PRM graph needs at least one peak slot per image")
        net = model.classifier.eval()
        self.model = net  # (the attribute names the exported nodes: /model/backbone/...)
        self.peaks, self.rule, self.slots = model.peaks, model.prm.rule, slots
        size = net.settings.input_size
        with torch.no_grad():
            rec = recorded_forward(net, torch.zeros(1, 3, size, size), channels_last=False)
        c, h, w = rec.maps.shape[1], *rec.low_size
        f = net.settings.sub_pixel
        # windows when the receptive field is small beside the input, as the eager path decides
        one = Peaks(*(torch.zeros(1, dtype=torch.long) for _ in range(4)), torch.zeros(1))
        field = receptive_field(net, rec, one)
        self.local = field[0] * field[1] <= LOCAL_AREA * size * size
        self.num_classes, self.low_size, self.map_size = c, (h, w), (h * f, w * f)
        if c * h * f * w * f < slots or c * h * f * w * f >= 2 ** 24:
            raise ValueError(f"the PRM graph needs slots <= C·H·W < 2^24 (C·H·W = {c * h * f * w * f})")
        self.register_buffer("rows", upsample_weights(h, f), persistent=False)  # [H, h]
        self.register_buffer("cols", upsample_weights(w, f), persistent=False)  # [W, w]
        self.eval()  # the exporter restores the wrapper's mode, recursively
        if self.rule == "excitation":
            for module in net.modules():
                if isinstance(module, nn.Conv2d):
                    positive_weight(module)  # ReLU(W) made now, outside the trace: initializers

    def forward(self, images: torch.Tensor):
        model, n = self.model, self.slots
        tape = Tape()
        low = record(model.classifier, record(model.backbone, images, tape), tape)
        maps = model.upsample(low)
        if model.settings.stimulation:
            scores = mean_at(maps, stimulation_peaks(maps, model.settings.window))
        else:
            scores = maps.mean((2, 3))
        keep = peak_mask(maps, scores, self.peaks, model.settings.sub_pixel)
        index, value, valid = peak_slots(maps, keep, n)
        # the peaks found, as one list: the backward's batch is theirs (data-dependent)
        found = torch.nonzero(valid.reshape(-1))[:, 0]
        image = torch.div(found, n, rounding_mode="trunc")
        index, value = index.reshape(-1)[found], value.reshape(-1)[found]
        big_h, big_w = self.map_size
        cls = torch.div(index, big_h * big_w, rounding_mode="trunc")
        rest = index - cls * (big_h * big_w)
        y = torch.div(rest, big_w, rounding_mode="trunc")
        x = rest - y * big_w
        if self.local:  # on each peak's receptive field: its windows' sizes are the model's
            found = Peaks(image, cls.long(), y.long(), x.long(), value)
            g = local_gradients(model, tape, found, self.rows, self.cols, self.num_classes, self.rule)
            return scores, maps, image.to(torch.int32), cls, y, x, value, normalise_prm(g)
        # the seed: d maps[c, y, x] / d low, the bilinear weights of (y, x) over the low map
        dtype = maps.dtype
        one_c = (cls[:, None] == torch.arange(self.num_classes, dtype=torch.int32, device=maps.device)).to(dtype)
        one_y = (y[:, None] == torch.arange(big_h, dtype=torch.int32, device=maps.device)).to(dtype)
        one_x = (x[:, None] == torch.arange(big_w, dtype=torch.int32, device=maps.device)).to(dtype)
        rows = torch.matmul(one_y, self.rows)  # [K, h]
        cols = torch.matmul(one_x, self.cols)  # [K, w]
        g = one_c[:, :, None, None] * rows[:, None, :, None] * cols[:, None, None, :]  # [K, C, h, w]

        def spread(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, image)

        g = vjp(model.classifier, g, spread, tape, self.rule)
        g = vjp(model.backbone, g, spread, tape, self.rule)
        return scores, maps, image.to(torch.int32), cls, y, x, value, normalise_prm(g)


class ICNGraph(nn.Module):
    """``forward(images: float [N, 3, S, S], prms: float [N, S, S])`` -> ``enhanced: float
    [N, S, S]`` (``V_T`` in [0, 1]) and ``masks: bool [N, S, S]`` (min-max normalised
    ``V_T`` ≥ ``binarize``: the model's matching setting, 0.5 when it has none). Row i of
    ``images`` is the image of peak i. The model's ICN, T = its ``icn_settings.steps``."""

    def __init__(self, model: Model) -> None:
        super().__init__()
        steps = model.icn_settings.steps
        if model.icn is None or steps < 1:
            raise ValueError("the ICN graph needs an ICN and T >= 1 steps (T = 0 is the naive PRM: no ICN graph)")
        binarize = model.matching.binarize
        self.icn, self.steps, self.binarize = model.icn, steps, 0.5 if binarize is None else binarize
        self.eval()

    def forward(self, images: torch.Tensor, prms: torch.Tensor):
        v = prms
        for _ in range(self.steps):
            v = torch.sigmoid(self.icn(images, minmax(v)[:, None]))[:, 0]
        return v, minmax(v) >= self.binarize
