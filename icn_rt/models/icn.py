"""The Instance-aware Cue-propagation Network (docs/design.md §1 step 4, the paper's Fig. 3).

Input: the normalised image and one peak's min-max-normalised PRM, concatenated (4
channels). A VGG-16 encoder gives five stages s1..s5 (s1 at the input's resolution).

- CFM path (coarse to fine): ``f = s5``; for i = 4..1: ``f = E(C(U(f), s_i))``.
- DFM path (fine to coarse): ``g = s1``; for i = 2..5: ``g = E(C(U(s_i), g))``.
- Mapping: ``C(f, g)`` -> two 3×3 conv + ReLU -> 1×1 conv -> one logit per pixel.

E = two 3×3 conv + ReLU (``width`` channels), U = bilinear upsampling to the larger map
(so both paths end at s1's resolution), C = channel concat.

Choices the paper leaves open (settings where they matter):

- The encoder is VGG-16 with batch norm (torchvision's ``vgg16_bn`` layout, so its
  ImageNet weights load; the PRM channel's first-layer weights start at zero), BN folds
  into the convs on export. ``small`` is a CPU variant: two conv-BN-ReLU per stage at
  widths 16-64, with a stride-2 first stage; its logit is upsampled ×2 to the input.
  ``classifier`` is the model's own classifier backbone (``trunk``: small or vgg16),
  started from the weights that learnt the classes from the tags (as the student's
  ``classifier-fpn``), the PRM channel's first-layer weights at zero: ``small``'s four
  stages (widths 32-128, stride 1 first) and a fifth of two fresh 128-channel
  conv-BN-ReLU after a max-pool; ``vgg16``'s are the five above.
- Ablation "w/o CFM&DFM" (``propagation=False``): the mapping head reads ``C(U(s5), s1)``
  — the two points the paths start from, with no propagation between them.
- Ablation "w/o PRM input" (``prm_input=False``): 3 input channels; the map is then
  the same for every peak of an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ENCODERS = ("vgg16", "small", "classifier")
TRUNKS = ("small", "vgg16")  # classifier backbones the ``classifier`` encoder can be
# per encoder (classifier: per trunk): (stage widths, convs per stage, stride of the first stage)
_LAYOUT = {"vgg16": ((64, 128, 256, 512, 512), (2, 2, 3, 3, 3), 1),
           "small": ((16, 32, 48, 64, 64), (2, 2, 2, 2, 2), 2),
           "classifier:small": ((32, 64, 128, 128, 128), (1, 1, 1, 1, 2), 1),
           "classifier:vgg16": ((64, 128, 256, 512, 512), (2, 2, 3, 3, 3), 1)}


@dataclass
class ICNSettings:
    """``encoder``: vgg16 | small | classifier. ``trunk``: the classifier backbone the
    ``classifier`` encoder is (small | vgg16; ``train icn`` sets it from the model).
    ``width``: channels of every E block and the mapping head. ``propagation``: CFM + DFM
    paths (False: the ablation). ``prm_input``: the PRM as a fourth input channel (False:
    the ablation). ``steps``: T, the enhancement iterations at inference (0 = the naive
    PRM). ``chunk``: peaks per ICN call at inference (bounds memory)."""

    encoder: str = "vgg16"
    trunk: str = "small"
    width: int = 64
    propagation: bool = True
    prm_input: bool = True
    steps: int = 3
    chunk: int = 16

    def __post_init__(self) -> None:
        if self.encoder not in ENCODERS:
            raise ValueError(f"unknown ICN encoder {self.encoder!r}; choose one of {', '.join(ENCODERS)}")
        if self.encoder == "classifier" and self.trunk not in TRUNKS:
            raise ValueError(f"the classifier ICN encoder needs a {' or '.join(TRUNKS)} classifier backbone, "
                             f"not {self.trunk!r}")
        if self.steps < 0 or self.chunk < 1 or self.width < 1:
            raise ValueError("ICN settings need steps >= 0, chunk >= 1, width >= 1")


def _convs(cin: int, cout: int, n: int, bn: bool, stride: int = 1) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(n):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1,
                                bias=not bn))
        if bn:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return layers


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class ICN(nn.Module):
    """``forward(image: float [K, 3, S, S] normalised, prm: float [K, 1, S, S] in [0, 1])``
    -> ``logits: float [K, 1, S, S]``."""

    def __init__(self, settings: ICNSettings) -> None:
        super().__init__()
        self.settings = settings
        widths, depths, first_stride = _LAYOUT[layout(settings)]
        cin = 4 if settings.prm_input else 3
        stages = []
        for i, (w, n) in enumerate(zip(widths, depths)):
            head: list[nn.Module] = [nn.MaxPool2d(2)] if i else []
            stages.append(nn.Sequential(*head, *_convs(cin, w, n, bn=True, stride=first_stride if i == 0 else 1)))
            cin = w
        self.stages = nn.ModuleList(stages)
        width = settings.width
        if settings.propagation:
            # CFM: f starts as s5, E_i fuses it with s_i for i = 4..1
            self.cfm = nn.ModuleList(nn.Sequential(*_convs((widths[4] if i == 3 else width) + widths[i], width, 2,
                                                           bn=False)) for i in (3, 2, 1, 0))
            # DFM: g starts as s1, E_i fuses s_i into it for i = 2..5
            self.dfm = nn.ModuleList(nn.Sequential(*_convs(widths[i] + (widths[0] if i == 1 else width), width, 2,
                                                           bn=False)) for i in (1, 2, 3, 4))
            mapping_in = 2 * width
        else:
            mapping_in = widths[4] + widths[0]
        self.mapping = nn.Sequential(*_convs(mapping_in, width, 2, bn=False), nn.Conv2d(width, 1, 1))
        self.first_stride = first_stride

    def forward(self, image: torch.Tensor, prm: torch.Tensor) -> torch.Tensor:
        x = torch.cat([image, prm], 1) if self.settings.prm_input else image
        s = []
        for stage in self.stages:
            x = stage(x)
            s.append(x)
        if self.settings.propagation:
            f = s[4]
            for block, i in zip(self.cfm, (3, 2, 1, 0)):
                f = block(torch.cat([_up(f, s[i]), s[i]], 1))
            g = s[0]
            for block, i in zip(self.dfm, (1, 2, 3, 4)):
                g = block(torch.cat([_up(s[i], g), g], 1))
            fused = torch.cat([f, g], 1)
        else:
            fused = torch.cat([_up(s[4], s[0]), s[0]], 1)
        logits = self.mapping(fused)
        if self.first_stride != 1:
            logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def layout(settings: ICNSettings) -> str:
    """The key of ``settings``' encoder in the stage layouts."""
    return f"classifier:{settings.trunk}" if settings.encoder == "classifier" else settings.encoder


def minmax(v: torch.Tensor) -> torch.Tensor:
    """Each map of ``v: float [K, H, W]`` rescaled to [0, 1]; a flat map becomes zeros."""
    flat = v.flatten(1)
    lo = flat.amin(1)[:, None, None]
    span = (flat.amax(1)[:, None, None] - lo)
    return torch.where(span > 0, (v - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(v))


@torch.no_grad()
def enhance(icn: ICN, images: torch.Tensor, image_of: torch.Tensor, prms: torch.Tensor, steps: int,
            chunk: int = 16) -> torch.Tensor:
    """Iterative enhancement (docs/design.md §1 step 6): ``V_0`` = the naive PRM,
    ``V_{t+1} = sigmoid(ICN(I, minmax(V_t)))`` for ``steps`` steps.

    ``images: float [B, 3, S, S]`` (normalised), ``image_of: int [K]`` (each peak's image),
    ``prms: float [K, S, S]``. Returns ``float [K, S, S]``: probabilities in [0, 1] (or the
    PRMs themselves when ``steps`` is 0). Peaks go through the ICN ``chunk`` at a time.
    """
    v = prms
    for _ in range(steps):
        out = []
        for start in range(0, len(v), chunk):
            sl = slice(start, start + chunk)
            out.append(torch.sigmoid(icn(images[image_of[sl]], minmax(v[sl])[:, None]))[:, 0])
        v = torch.cat(out) if out else v
    return v


def load_pretrained_encoder(icn: ICN, source: str) -> None:
    """ImageNet weights for a ``vgg16`` encoder from torchvision's ``vgg16_bn`` (``source``:
    ``"imagenet"`` to download, or a state-dict file). The first conv's PRM channel
    starts at zero, so the pretrained encoder first sees the image as ImageNet did."""
    from icn_rt.errors import InputError
    from icn_rt.models.backbones import pretrained_state

    if icn.settings.encoder != "vgg16":
        raise ValueError(f"the {icn.settings.encoder} ICN encoder has no pretrained weights"
                         + ("; it starts from the model's classifier" if icn.settings.encoder == "classifier" else ""))
    state = pretrained_state("vgg16", source)
    flat = [m for stage in icn.stages for m in stage]
    _copy_encoder(flat, state, lambda key, why: InputError(source, f"not vgg16_bn weights: features.{key} {why}"))


def load_classifier_encoder(icn: ICN, backbone: dict[str, torch.Tensor]) -> None:
    """A ``classifier`` encoder started from the classifier backbone's state dict
    (``backbone``, keys ``"{module index}.{name}"`` as :func:`~icn_rt.models.backbones.build_backbone`
    numbers them): its modules are the encoder's first ones, in order; the PRM channel's
    first-layer weights start at zero and what the backbone lacks (``small``'s fifth
    stage) stays as initialised."""
    if icn.settings.encoder != "classifier":
        raise ValueError(f"the {icn.settings.encoder} ICN encoder is not the classifier's backbone")
    count = 1 + max(int(key.split(".")[0]) for key in backbone)
    flat = [m for stage in icn.stages for m in stage][:count]
    _copy_encoder(flat, backbone, lambda key, why: ValueError(
        f"not a {icn.settings.trunk} classifier backbone: {key} {why}"))


def _copy_encoder(modules: list[nn.Module], state: dict[str, torch.Tensor], error) -> None:
    """``state["{i}.{name}"]`` into ``modules[i]``'s ``name`` for every module and name; a
    first conv of 4 input channels gets a zero PRM channel. ``error(key, why)``: the
    exception for a missing or misshapen entry."""
    for i, module in enumerate(modules):
        for name, target in module.state_dict().items():
            key = f"{i}.{name}"
            if key not in state:
                raise error(key, "missing")
            value = state[key]
            if i == 0 and name == "weight" and target.shape[1] == value.shape[1] + 1:
                value = torch.cat([value, torch.zeros_like(value[:, :1])], 1)
            if value.shape != target.shape:
                raise error(key, f"has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            target.copy_(value)
