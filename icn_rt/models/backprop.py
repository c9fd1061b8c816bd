"""Peak backpropagation (DESIGN.md §1 step 3) written out by hand: one recorded forward
pass over a batch of images, then one backward pass for all K peaks at once.

The backward is a vector-Jacobian product of the class map at each peak with respect
to the input image, built from forward operators only (transposed convolution, masks,
max-pool routing by window offsets, residual sums), so the same code can later be
traced into an ONNX graph with no autograd. Activations are recorded per image and
gathered per peak (``index[k]`` = the image of peak k), so a batch of B images and K
peaks costs one forward over B and one backward over K.

Rules, a setting:

- ``gradient``: the plain VJP (the paper's Eq. 2).
- ``excitation``: the PRM reference's modified Conv2d backward, at every convolution
  (stem, bottlenecks, downsample, classifier): with x the conv input, m = min(x) over the
  whole image's tensor (per image here, so a peak's PRM does not depend on which images
  share its batch), W⁺ = ReLU(W), Z = conv(x − m, W⁺) without bias,
  Ĝ = G / (|Z| + 1e-10) where Z ≥ 1e-10 else 0, and the gradient passed down is
  (x − m) ⊙ convᵀ(Ĝ, W⁺). BN (eval), ReLU, max-pool and residual adds stay plain.

Only the module types of :mod:`icn_rt.models.backbones` are supported; BN must be in
eval mode (the recorded forward uses running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

RULES = ("gradient", "excitation")
EPS = 1e-10


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class Tape:
    """What one recorded forward pass keeps: per module, the tensors its VJP needs,
    at batch level (index 0 = image)."""

    def __init__(self) -> None:
        self.saved: dict[object, object] = {}


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    return scale


def record(module: nn.Module, x: torch.Tensor, tape: Tape) -> torch.Tensor:
    """Run ``module`` on ``x`` (no autograd) keeping what :func:`vjp` needs in ``tape``."""
    if isinstance(module, nn.Sequential):
        for child in module:
            x = record(child, x, tape)
        return x
    if isinstance(module, nn.Conv2d):
        tape.saved[id(module)] = x
        return module(x)
    if isinstance(module, nn.BatchNorm2d):
        if module.training:
            raise RuntimeError("peak backpropagation needs BatchNorm in eval mode")
        return module(x)
    if isinstance(module, nn.ReLU):
        y = F.relu(x)
        tape.saved[id(module)] = y > 0
        return y
    if isinstance(module, nn.MaxPool2d):
        return _record_pool(module, x, tape)
    if isinstance(module, Bottleneck):
        out = x
        for step, child in enumerate(_bottleneck_main(module)):
            if child is None:
                tape.saved[(id(module), step)] = out > 0
                out = F.relu(out)
            else:
                out = record(child, out, tape)
        identity = record(module.downsample, x, tape) if module.downsample is not None else x
        y = F.relu(out + identity)
        tape.saved[id(module)] = y > 0
        return y
    raise TypeError(f"peak backpropagation does not support {type(module).__name__}")


def _bottleneck_main(block: Bottleneck) -> list[nn.Module | None]:
    # torchvision reuses one ReLU module three times; None marks a ReLU, whose mask is
    # kept under (block, step).
    return [block.conv1, block.bn1, None, block.conv2, block.bn2, None, block.conv3, block.bn3]


def _record_pool(pool: nn.MaxPool2d, x: torch.Tensor, tape: Tape) -> torch.Tensor:
    """Max-pool, recording for every output which window offset holds its maximum
    (the first in row-major order on ties, as PyTorch's indices)."""
    if pool.ceil_mode or _pair(pool.dilation) != (1, 1):
        raise TypeError("peak backpropagation supports max-pool without ceil_mode or dilation")
    y = pool(x)
    (kh, kw), (sh, sw), (ph, pw) = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    xp = F.pad(x, (pw, pw, ph, ph), value=float("-inf"))
    oh, ow = y.shape[-2:]
    winner = torch.full(y.shape, -1, dtype=torch.int8, device=x.device)
    for dy in range(kh):
        for dx in range(kw):
            cand = xp[:, :, dy: dy + sh * (oh - 1) + 1: sh, dx: dx + sw * (ow - 1) + 1: sw]
            winner[(winner < 0) & (cand == y)] = dy * kw + dx
    tape.saved[id(pool)] = (winner, x.shape[-2:])
    return y


def vjp(module: nn.Module, g: torch.Tensor, index: torch.Tensor, tape: Tape, rule: str) -> torch.Tensor:
    """``g: [K, C_out, h, w]`` -> gradient at the module's input ``[K, C_in, H, W]`` for
    peaks whose images are ``index: int64 [K]``."""
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            g = vjp(child, g, index, tape, rule)
        return g
    if isinstance(module, nn.Conv2d):
        return _conv_vjp(module, tape.saved[id(module)], g, index, rule)
    if isinstance(module, nn.BatchNorm2d):
        return g * _bn_scale(module)[None, :, None, None]
    if isinstance(module, nn.ReLU):
        return g * tape.saved[id(module)][index]
    if isinstance(module, nn.MaxPool2d):
        return _pool_vjp(module, tape.saved[id(module)], g, index)
    if isinstance(module, Bottleneck):
        g = g * tape.saved[id(module)][index]
        g_main = g
        for step, child in reversed(list(enumerate(_bottleneck_main(module)))):
            if child is None:
                g_main = g_main * tape.saved[(id(module), step)][index]
            else:
                g_main = vjp(child, g_main, index, tape, rule)
        g_identity = vjp(module.downsample, g, index, tape, rule) if module.downsample is not None else g
        return g_main + g_identity
    raise TypeError(f"peak backpropagation does not support {type(module).__name__}")


def _conv_transpose(conv: nn.Conv2d, g: torch.Tensor, weight: torch.Tensor, in_size) -> torch.Tensor:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    (dh, dw) = conv.dilation
    oh, ow = g.shape[-2:]
    out_pad = (in_size[0] - ((oh - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
               in_size[1] - ((ow - 1) * sw - 2 * pw + dw * (kw - 1) + 1))
    return F.conv_transpose2d(g, weight, None, conv.stride, conv.padding, out_pad, conv.groups, conv.dilation)


def _conv_vjp(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, index: torch.Tensor, rule: str) -> torch.Tensor:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TypeError("peak backpropagation supports zero-padded convolutions with numeric padding")
    if rule == "gradient":
        return _conv_transpose(conv, g, conv.weight, x.shape[-2:])
    if rule == "excitation":
        shifted = x - x.amin(dim=(1, 2, 3), keepdim=True)
        positive = F.relu(conv.weight)
        z = F.conv2d(shifted, positive, None, conv.stride, conv.padding, conv.dilation, conv.groups)[index]
        g_hat = torch.where(z >= EPS, g / (z.abs() + EPS), torch.zeros_like(g))
        return shifted[index] * _conv_transpose(conv, g_hat, positive, x.shape[-2:])
    raise ValueError(f"unknown backprop rule {rule!r}; choose one of {', '.join(RULES)}")


def _pool_vjp(pool: nn.MaxPool2d, saved, g: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    winner, (h, w) = saved
    winner = winner[index]
    (kh, kw), (sh, sw), (ph, pw) = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
    k, c, oh, ow = g.shape
    grad = g.new_zeros(k, c, h + 2 * ph, w + 2 * pw)
    for dy in range(kh):
        for dx in range(kw):
            grad[:, :, dy: dy + sh * (oh - 1) + 1: sh, dx: dx + sw * (ow - 1) + 1: sw] += g * (winner == dy * kw + dx)
    return grad[:, :, ph: ph + h, pw: pw + w]


def upsample_weights(size: int, factor: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[size * factor, size]``: row i = the weights bilinear (align_corners) upsampling
    by ``factor`` gives output i over the ``size`` inputs."""
    eye = torch.eye(size, dtype=dtype, device=device)[None]
    return F.interpolate(eye, size=size * factor, mode="linear", align_corners=True)[0].T
