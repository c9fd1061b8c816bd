"""Fully convolutional backbones for the classifier.

Each is an ``nn.Sequential`` built only from Conv2d, BatchNorm2d, ReLU, MaxPool2d and
torchvision's ResNet ``Bottleneck`` — the module types the explicit peak backpropagation
(:mod:`icn_rt.models.whole_map_vjp`) knows, which keeps the gradient subgraph exportable.

- ``resnet50``: torchvision ResNet-50 without avgpool/fc (the PRM reference), stride 32,
  2048 channels.
- ``vgg16``: torchvision VGG-16 (with BN) ``features`` without the last max-pool, stride
  16, 512 channels — the common fully convolutional cut, keeping twice the resolution.
- ``small``: four 3×3 conv-BN-ReLU stages with three 2×2 max-pools, stride 8, 128
  channels; about 0.3 M parameters, trains on two CPU cores.

ImageNet weights are never fetched implicitly: :func:`load_pretrained` takes either a
file the user has (a torchvision state dict as ``.pth``/``.pt`` or ``.safetensors``) or
the word ``imagenet``, which asks torchvision to download its weights (real users; never
the tests).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from icn_rt.errors import InputError

BACKBONES = ("resnet50", "vgg16", "small")
CHANNELS = {"resnet50": 2048, "vgg16": 512, "small": 128}


def build_backbone(name: str) -> nn.Sequential:
    """A freshly initialised backbone ``name`` (one of :data:`BACKBONES`)."""
    if name == "resnet50":
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    if name == "vgg16":
        from torchvision.models import vgg16_bn

        return nn.Sequential(*list(vgg16_bn(weights=None).features)[:-1])
    if name == "small":
        layers: list[nn.Module] = []
        widths = (3, 32, 64, 128, 128)
        for i in range(4):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(widths[i + 1]),
                       nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def _torchvision_state(name: str) -> dict[str, torch.Tensor]:
    from torchvision.models import ResNet50_Weights, VGG16_BN_Weights

    weights = {"resnet50": ResNet50_Weights.IMAGENET1K_V1, "vgg16": VGG16_BN_Weights.IMAGENET1K_V1}[name]
    return weights.get_state_dict(progress=True)


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputError(path, "pretrained weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a bad file
        raise InputError(path, f"cannot read weights ({type(e).__name__}: {e})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(path, "not a state dict")
    return state


def _rename(name: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's parameter names -> this module's ``nn.Sequential`` indices."""
    out = {}
    if name == "resnet50":
        prefix = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head in prefix:
                out[f"{prefix[head]}.{rest}"] = value
    else:
        for key, value in state.items():
            if key.startswith("features."):
                out[key[len("features."):]] = value
    return out


def pretrained_state(name: str, source: str | Path) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights of backbone ``name`` (``resnet50`` or ``vgg16``, i.e.
    ``vgg16_bn``) under this module's ``nn.Sequential`` names. ``source``: ``"imagenet"``
    (torchvision downloads, or reuses its cache) or a path to a torchvision state dict."""
    return _rename(name, _torchvision_state(name) if str(source) == "imagenet" else _read_state(Path(source)))


def load_pretrained(backbone: nn.Sequential, name: str, source: str | Path) -> None:
    """Load ImageNet weights into ``backbone`` (built by :func:`build_backbone`).

    ``source``: ``"imagenet"`` (torchvision downloads, or reuses its cache) or a path to
    a torchvision state dict. Raises :class:`InputError` naming the file if it does not
    fit the backbone.
    """
    if name == "small":
        raise ValueError("the small backbone has no pretrained weights")
    renamed = pretrained_state(name, source)
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in renamed]
    if missing:
        raise InputError(source, f"not {name} weights: {len(missing)} tensors missing (first: {missing[0]})")
    for key, value in expected.items():
        if renamed[key].shape != value.shape:
            raise InputError(source, f"{key} has shape {tuple(renamed[key].shape)}, expected {tuple(value.shape)}")
    backbone.load_state_dict({k: renamed[k] for k in expected})
