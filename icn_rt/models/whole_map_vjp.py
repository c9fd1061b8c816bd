"""Peak backpropagation (docs/design.md §1 step 3) written out by hand, over whole maps: one
recorded forward pass over a batch of images, then one backward pass for all K peaks at
once. The exported PRM graph runs this; the eager path runs the same VJP on each peak's
receptive field (:mod:`.receptive_field_vjp`) where that is smaller.

The backward is a vector-Jacobian product of the class map at each peak with respect
to the input image, built from forward operators only (transposed convolution with the
layer's weights, ReLU masks, max-pool routing, residual sums), so the same code is
traced into the exported PRM graph (:mod:`icn_rt.export.graphs`) with no autograd.
Max-pool routing: the forward keeps the pool's input and output; the backward finds,
per window offset, a mask of the outputs whose maximum sits at that offset (the first
in row-major order on ties, as PyTorch's indices; overlapping windows included),
multiplies the gradient by each mask and scatters the lot with one grouped transposed convolution whose kernels are
one-hot at their offset — no indices, no unpooling. Activations are recorded per image
and spread to the peaks by ``spread`` (eager: ``t[index]`` with ``index[k]`` = the image
of peak k; the graph likewise, from its list of the peaks found), so a batch of B
images and K peaks costs one forward over B and one backward over K.

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

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

RULES = ("gradient", "excitation")
EPS = 1e-10

Spread = Callable[[torch.Tensor], torch.Tensor]
"""Maps a recorded per-image tensor ``[B, ...]`` to its per-peak rows ``[K, ...]``."""


def by_index(index: torch.Tensor) -> Spread:
    """The eager spread: peak k takes the rows of image ``index[k]`` (a batch of one image:
    a broadcast view, no copies)."""
    return lambda t: t.expand(len(index), *t.shape[1:]) if t.shape[0] == 1 else t[index]


def pair(v) -> tuple[int, int]:
    """A layer's kernel, stride, padding or dilation as (height, width)."""
    return (v, v) if isinstance(v, int) else tuple(v)


class Tape:
    """What one recorded forward pass keeps: per module, the tensors its VJP needs,
    at batch level (index 0 = image)."""

    def __init__(self) -> None:
        self.saved: dict[object, object] = {}

    def image(self, b: int) -> Tape:
        """The tape of image ``b`` alone (views, no copies)."""
        one = Tape()
        one.saved = {key: tuple(t[b: b + 1] for t in v) if isinstance(v, tuple) else v[b: b + 1]
                     for key, v in self.saved.items()}
        return one


def bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """An eval-mode BatchNorm's per-channel factor ``float [C]``: weight / sqrt(var + eps)."""
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
        tape.saved[id(module)] = y  # the mask (y > 0) is taken where the backward needs it
        return y
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or pair(module.dilation) != (1, 1):
            raise TypeError("peak backpropagation supports max-pool without ceil_mode or dilation")
        if eager():  # the indices route the eager backward (a scatter, not the graph's masks)
            y, indices = F.max_pool2d(x, module.kernel_size, module.stride, module.padding, return_indices=True)
            tape.saved[(id(module), "indices")] = indices
        else:
            y = module(x)
        tape.saved[id(module)] = (x, y)
        return y
    if isinstance(module, Bottleneck):
        out = x
        for step, child in enumerate(bottleneck_main(module)):
            if child is None:
                out = F.relu(out)
                tape.saved[(id(module), step)] = out
            else:
                out = record(child, out, tape)
        identity = record(module.downsample, x, tape) if module.downsample is not None else x
        y = F.relu(out + identity)
        tape.saved[id(module)] = y
        return y
    raise TypeError(f"peak backpropagation does not support {type(module).__name__}")


def eager() -> bool:
    """False while a graph is traced for export: the eager backward may then take
    shortcuts no exported graph could (max-pool indices, BN folded into the convolution
    weights, ReLU masks and residual sums in place)."""
    return not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export())


def bottleneck_main(block: Bottleneck) -> list[nn.Module | None]:
    """A ResNet bottleneck's main branch as its layers in order (None for each ReLU)."""
    # torchvision reuses one ReLU module three times; None marks a ReLU, whose mask is
    # kept under (block, step).
    return [block.conv1, block.bn1, None, block.conv2, block.bn2, None, block.conv3, block.bn3]


def first_hits(xp: torch.Tensor, y: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Per window offset, which outputs ``y`` of a max-pool over ``xp`` (padded with -inf)
    take their maximum there, the first in row-major order on ties (as PyTorch's
    indices): ``bool [..., C, kh·kw, oh, ow]``."""
    (kh, kw), (sh, sw) = pair(kernel), pair(stride)
    oh, ow = y.shape[-2:]
    taken = None
    winners = []
    for dy in range(kh):
        for dx in range(kw):
            hit = xp[..., dy: dy + sh * (oh - 1) + 1: sh, dx: dx + sw * (ow - 1) + 1: sw] == y
            if taken is None:
                taken = hit
            else:
                hit = hit & ~taken
                taken = taken | hit
            winners.append(hit)
    return torch.stack(winners, -3)


def vjp(module: nn.Module, g: torch.Tensor, spread: Spread, tape: Tape, rule: str) -> torch.Tensor:
    """``g: [K, C_out, h, w]`` -> gradient at the module's input ``[K, C_in, H, W]`` for
    peaks whose recorded activations ``spread`` gives (see :func:`by_index`)."""
    if isinstance(module, nn.Sequential):
        return _chain_vjp(list(module), g, spread, tape, rule)
    if isinstance(module, nn.Conv2d):
        return _conv_vjp(module, tape.saved[id(module)], g, spread, rule)
    if isinstance(module, nn.BatchNorm2d):
        return g * bn_scale(module)[None, :, None, None]
    if isinstance(module, nn.ReLU):
        return _relu_vjp(g, tape.saved[id(module)], spread)
    if isinstance(module, nn.MaxPool2d):
        indices = tape.saved.get((id(module), "indices"))
        if indices is not None:
            return _unpool(g, spread(indices), tape.saved[id(module)][0].shape[-2:])
        return _pool_vjp(module, tape.saved[id(module)], g, spread)
    if isinstance(module, Bottleneck):
        g = _relu_vjp(g, tape.saved[id(module)], spread)
        g_main = _chain_vjp(bottleneck_main(module), g, spread, tape, rule, lambda step: (id(module), step))
        g_identity = vjp(module.downsample, g, spread, tape, rule) if module.downsample is not None else g
        return g_main.add_(g_identity) if eager() else g_main + g_identity
    raise TypeError(f"peak backpropagation does not support {type(module).__name__}")


def _folds(rule: str) -> bool:
    """Whether BN's scale is folded into the transposed convolution's weights: the
    gradient rule, eagerly (the exported graphs keep the layers as they are)."""
    return rule == "gradient" and eager()


def _chain_vjp(children: list[nn.Module | None], g: torch.Tensor, spread: Spread, tape: Tape, rule: str,
               relu_key: Callable[[int], object] | None = None) -> torch.Tensor:
    """The VJP of modules run in sequence; where :func:`_folds`, a convolution followed by
    BN takes BN's scale into its weights (one multiply fewer per layer). ``None`` children
    are ReLUs whose outputs the tape keeps under ``relu_key(position)`` (a bottleneck's
    main branch: :func:`bottleneck_main`)."""
    i = len(children) - 1
    while i >= 0:
        child = children[i]
        before = children[i - 1] if i > 0 else None
        if isinstance(child, nn.BatchNorm2d) and isinstance(before, nn.Conv2d) and _folds(rule):
            g = _conv_vjp(before, tape.saved[id(before)], g, spread, rule, child)
            i -= 2
            continue
        g = _relu_vjp(g, tape.saved[relu_key(i)], spread) if child is None else vjp(child, g, spread, tape, rule)
        i -= 1
    return g


def _relu_vjp(g: torch.Tensor, y: torch.Tensor, spread: Spread) -> torch.Tensor:
    """``g`` where the ReLU's output ``y`` (recorded) is positive, else 0. Eagerly in
    place: every VJP here owns the gradient it is given (a fresh tensor no one else
    reads), and a fresh tensor of a layer's size costs more to allocate than to fill; in
    a traced graph a multiply by the mask as float (the graphs' form since they were
    first exported)."""
    if eager():  # autograd's own ReLU backward, written into g
        return torch.ops.aten.threshold_backward.grad_input(g, spread(y), 0, grad_input=g)
    return g * spread(y > 0).to(g.dtype)


def _unpool(g: torch.Tensor, indices: torch.Tensor, in_size) -> torch.Tensor:
    """Max-pool backward from the forward's indices ``[K, C, oh, ow]`` (flat over the
    input's ``h·w``): every output's gradient added at its maximum's place, in the
    layout ``g`` has (channels-last stays channels-last, with no copy)."""
    (k, c), (h, w) = g.shape[:2], in_size
    if g.is_contiguous(memory_format=torch.channels_last) and not g.is_contiguous():
        src = g.permute(0, 2, 3, 1).reshape(k, -1, c)
        out = g.new_zeros(k, h * w, c).scatter_add_(1, indices.permute(0, 2, 3, 1).reshape(k, -1, c), src)
        return out.view(k, h, w, c).permute(0, 3, 1, 2)
    out = g.new_zeros(k, c, h * w).scatter_add_(2, indices.reshape(k, c, -1), g.reshape(k, c, -1))
    return out.view(k, c, h, w)


def _conv_transpose(conv: nn.Conv2d, g: torch.Tensor, weight: torch.Tensor, in_size) -> torch.Tensor:
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    (dh, dw) = conv.dilation
    oh, ow = g.shape[-2:]
    out_pad = (in_size[0] - ((oh - 1) * sh - 2 * ph + dh * (kh - 1) + 1),
               in_size[1] - ((ow - 1) * sw - 2 * pw + dw * (kw - 1) + 1))
    return F.conv_transpose2d(g, weight, None, conv.stride, conv.padding, out_pad, conv.groups, conv.dilation)


def positive_weight(conv: nn.Conv2d) -> torch.Tensor:
    """ReLU(W) of the excitation rule, kept on the module until the weights change: a
    tensor made outside a trace, so the exported graph holds it as its own initializer
    (TensorRT wants convolution weights as initializers). :class:`~icn_rt.export.graphs.PRMGraph`
    makes them before tracing."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.device)
    cached = conv.__dict__.get("_positive_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, F.relu(w.detach()).clone())
        conv.__dict__["_positive_weight"] = cached
    return cached[1]


def scaled_weight(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The convolution's weights times the scale of the BN after it, per output channel:
    the two layers' VJP in one transposed convolution. Kept on the module until either
    changes."""
    w = conv.weight
    key = (w.data_ptr(), w._version, w.device, w.dtype, id(bn), bn.running_var._version,
           None if bn.weight is None else bn.weight._version)
    cached = conv.__dict__.get("_scaled_weight")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, w.detach() * bn_scale(bn).to(w.dtype)[:, None, None, None])
        conv.__dict__["_scaled_weight"] = cached
    return cached[1]


def _conv_vjp(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, spread: Spread, rule: str,
              bn: nn.BatchNorm2d | None = None) -> torch.Tensor:
    """The convolution's VJP; ``bn``: the BN after it, whose scale the gradient rule folds
    into the weights."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TypeError("peak backpropagation supports zero-padded convolutions with numeric padding")
    if rule == "gradient":
        return _conv_transpose(conv, g, conv.weight if bn is None else scaled_weight(conv, bn), x.shape[-2:])
    if rule == "excitation":
        shifted = x - x.amin(dim=(1, 2, 3), keepdim=True)
        positive = positive_weight(conv)
        z = F.conv2d(shifted, positive, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        if eager():  # the same values, with |Z| + eps and the mask made once per image
            g_hat = (g / spread(z.abs().add_(EPS))).mul_(spread((z >= EPS).to(g.dtype)))
            return _conv_transpose(conv, g_hat, positive, x.shape[-2:]).mul_(spread(shifted))
        z = spread(z)
        g_hat = torch.where(z >= EPS, g / (z.abs() + EPS), torch.zeros_like(g))
        return spread(shifted) * _conv_transpose(conv, g_hat, positive, x.shape[-2:])
    raise ValueError(f"unknown backprop rule {rule!r}; choose one of {', '.join(RULES)}")


def _pool_vjp(pool: nn.MaxPool2d, saved, g: torch.Tensor, spread: Spread) -> torch.Tensor:
    """Route ``g`` to the window offsets holding each maximum: one grouped transposed
    convolution whose kernel for offset d is one-hot at d."""
    (kh, kw), (sh, sw), (ph, pw) = pair(pool.kernel_size), pair(pool.stride), pair(pool.padding)
    oh, ow = g.shape[-2:]
    x, y = saved
    h, w = x.shape[-2:]
    xp = F.pad(x, (pw, pw, ph, ph), value=float("-inf")) if ph or pw else x
    winners = spread(first_hits(xp, y, (kh, kw), (sh, sw)))
    out_pad = (h - ((oh - 1) * sh - 2 * ph + kh), w - ((ow - 1) * sw - 2 * pw + kw))
    return route(g, winners, (kh, kw), (sh, sw), (ph, pw), out_pad)


def route(g: torch.Tensor, winners: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
          padding: tuple[int, int] = (0, 0), output_padding: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """``g [K, C, oh, ow]`` sent to the window offsets ``winners [K, C, kh·kw, oh, ow]``
    (:func:`first_hits`) mark: one grouped transposed convolution whose kernel for offset
    d is one-hot at d."""
    (kh, kw), (k, c, oh, ow) = kernel, g.shape
    routed = (g[:, :, None] * winners.to(g.dtype)).reshape(k, c * kh * kw, oh, ow)
    # built in NumPy so that a traced graph holds it as a constant initializer
    one_hot = np.eye(kh * kw, dtype=np.float32).reshape(kh * kw, 1, kh, kw)
    weight = torch.as_tensor(np.tile(one_hot, (c, 1, 1, 1)), dtype=g.dtype, device=g.device)
    return F.conv_transpose2d(routed, weight, None, stride, padding, output_padding, c)


def upsample_weights(size: int, factor: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[size * factor, size]``: row i = the weights bilinear (align_corners) upsampling
    by ``factor`` gives output i over the ``size`` inputs."""
    eye = torch.eye(size, dtype=dtype, device=device)[None]
    return F.interpolate(eye, size=size * factor, mode="linear", align_corners=True)[0].T
