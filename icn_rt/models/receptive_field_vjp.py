"""Peak backpropagation on each peak's receptive field: the eager path's fast VJP (the
whole-map one is :mod:`.whole_map_vjp`).

A peak's gradient is zero outside the receptive field of its class-map cells. For a
backbone whose field is small beside the input (the ``small`` backbone at 128²: a
38×38 field), the full VJP of :mod:`icn_rt.models.whole_map_vjp` spends nine tenths of every
transposed convolution on zeros. Here each peak carries a window, the part of each map
where its gradient can be non-zero, and every layer's VJP runs on the windows only:

- a convolution or max-pool with kernel extent e = d·(k − 1) + 1, stride s, padding p
  maps an output window (top t, size n) to the input window (s·t − p, (n − 1)·s + e):
  the transposed convolution without padding gives exactly that window;
- residual blocks add their branches on the smallest window holding both.

Windows may overhang the map: recorded activations read there as zero (ReLU masks,
max-pool winners, the excitation rule's shifted inputs), and gradients that land there
(the padding's) are dropped, as the full VJP drops them. The sums are the full VJP's,
over the positions that can be non-zero: the same gradients up to float rounding.

A window's top is affine in the peak's first class-map row (``a·t0 + b``, with ``a`` and
``b`` Python integers), so no layer waits for the device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from icn_rt.models.whole_map_vjp import (EPS, Tape, bn_scale, bottleneck_main, eager, first_hits, pair,
                                         positive_weight, route)


@dataclass(frozen=True)
class Axis:
    """One axis of the peaks' windows: top = ``a · t0 + b`` (``t0: long [K]``), ``size``
    long, in a map of ``extent``."""

    t0: torch.Tensor
    a: int
    b: int
    size: int
    extent: int

    def top(self) -> torch.Tensor:
        return self.t0 * self.a + self.b

    def through(self, kernel: int, stride: int, padding: int, dilation: int, extent: int) -> Axis:
        """The window at the input of a layer whose output this window is."""
        return Axis(self.t0, self.a * stride, self.b * stride - padding,
                    (self.size - 1) * stride + dilation * (kernel - 1) + 1, extent)

    def positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(index [K, size], inside [K, size])``: the map index of each window position
        (clamped into the map) and whether it lies in the map."""
        idx = self.top()[:, None] + torch.arange(self.size, device=self.t0.device)
        inside = (idx >= 0) & (idx < self.extent)
        return idx.clamp(0, self.extent - 1), inside


@dataclass(frozen=True)
class Window:
    """Every peak's window in one map: rows, columns and the image of each peak."""

    rows: Axis
    cols: Axis
    image: torch.Tensor

    def through(self, kernel, stride, padding, dilation, extent) -> Window:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (pair(v) for v in (kernel, stride, padding, dilation))
        return Window(self.rows.through(kh, sh, ph, dh, extent[0]), self.cols.through(kw, sw, pw, dw, extent[1]),
                      self.image)

    @property
    def size(self) -> tuple[int, int]:
        return self.rows.size, self.cols.size

    def inside(self) -> torch.Tensor:
        """``bool [K, 1, h, w]``: window positions that lie in the map."""
        (_, r), (_, c) = self.rows.positions(), self.cols.positions()
        return (r[:, :, None] & c[:, None, :])[:, None]

    def crop(self, t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``t [B, ..., H, W]`` (recorded per image) -> ``[K, ..., h, w]``: each peak's
        window of its image, ``fill`` (zero, False) where the window overhangs the map."""
        (r, r_in), (c, c_in) = self.rows.positions(), self.cols.positions()
        # rows and columns beside the batch axis: three adjacent indices (one gather when traced)
        n = t.dim()  # (explicit permutations: the exporter writes movedim's negative axes as they are)
        out = t.permute(0, n - 2, n - 1, *range(1, n - 2))[self.image[:, None, None], r[:, :, None], c[:, None, :]]
        out = out.permute(0, *range(3, n), 1, 2)  # [K, ..., h, w]
        inside = (r_in[:, :, None] & c_in[:, None, :]).reshape(-1, *([1] * (out.dim() - 3)), *self.size)
        if fill != 0:
            return torch.where(inside, out, torch.tensor(fill, dtype=out.dtype, device=out.device))
        return out & inside if out.dtype == torch.bool else out * inside.to(out.dtype)

    def paste(self, g: torch.Tensor) -> torch.Tensor:
        """``g [K, C, h, w]`` -> the full maps ``[K, C, H, W]`` (zero outside the windows)."""
        (r, r_in), (c, c_in) = self.rows.positions(), self.cols.positions()
        if not eager():  # traced: one-hot placements, full = Rᵀ g C (one term per pixel: exact)
            dev = g.device
            one_r = ((r[:, :, None] == torch.arange(self.rows.extent, device=dev)) & r_in[:, :, None]).to(g.dtype)
            one_c = ((c[:, :, None] == torch.arange(self.cols.extent, device=dev)) & c_in[:, :, None]).to(g.dtype)
            return torch.matmul(torch.matmul(one_r.transpose(1, 2)[:, None], g), one_c[:, None])
        full = g.new_zeros(len(g), g.shape[1], self.rows.extent, self.cols.extent)
        k, i, j = (r_in[:, :, None] & c_in[:, None, :]).nonzero(as_tuple=True)
        full[k, :, r[k, i], c[k, j]] = g[k, :, i, j]
        return full


def seed_window(image: torch.Tensor, t0_rows: torch.Tensor, t0_cols: torch.Tensor, size: tuple[int, int],
                extent: tuple[int, int]) -> Window:
    """Windows of ``size`` with tops ``t0`` in a map of ``extent`` (the class maps)."""
    return Window(Axis(t0_rows, 1, 0, size[0], extent[0]), Axis(t0_cols, 1, 0, size[1], extent[1]), image)


def input_window(module: nn.Module, win: Window, tape: Tape) -> Window:
    """The window at ``module``'s input for gradients on ``win`` at its output (no tensors
    touched: decides whether the local VJP pays)."""
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            win = input_window(child, win, tape)
        return win
    if isinstance(module, nn.Conv2d):
        return win.through(module.kernel_size, module.stride, module.padding, module.dilation,
                           tape.saved[id(module)].shape[-2:])
    if isinstance(module, nn.MaxPool2d):
        return win.through(module.kernel_size, module.stride, module.padding, 1, tape.saved[id(module)][0].shape[-2:])
    if isinstance(module, Bottleneck):
        main = win
        for child in reversed(bottleneck_main(module)):
            if child is not None:
                main = input_window(child, main, tape)
        identity = input_window(module.downsample, win, tape) if module.downsample is not None else win
        return _union(main, identity)
    return win


def _union_axis(a: Axis, b: Axis) -> Axis:
    if a.a != b.a:
        raise TypeError("residual branches of different strides")
    top = min(a.b, b.b)
    return replace(a, b=top, size=max(a.b + a.size, b.b + b.size) - top)


def _union(a: Window, b: Window) -> Window:
    return Window(_union_axis(a.rows, b.rows), _union_axis(a.cols, b.cols), a.image)


def _widen(g: torch.Tensor, win: Window, to: Window) -> torch.Tensor:
    """``g`` on ``win`` -> on ``to``, a window holding it (zeros around)."""
    top, left = win.rows.b - to.rows.b, win.cols.b - to.cols.b
    return F.pad(g, (left, to.cols.size - win.cols.size - left, top, to.rows.size - win.rows.size - top))


def local_vjp(module: nn.Module, g: torch.Tensor, win: Window, tape: Tape, rule: str) -> tuple[torch.Tensor, Window]:
    """``g: [K, C_out, h, w]`` on ``win`` -> the gradient at the module's input on its
    window (see the module's docstring); ``rule`` as :func:`icn_rt.models.whole_map_vjp.vjp`."""
    if isinstance(module, nn.Sequential):
        for child in reversed(module):
            g, win = local_vjp(child, g, win, tape, rule)
        return g, win
    if isinstance(module, nn.Conv2d):
        return _conv(module, tape.saved[id(module)], g, win, rule)
    if isinstance(module, nn.BatchNorm2d):
        return g * bn_scale(module)[None, :, None, None], win
    if isinstance(module, nn.ReLU):
        return g * (win.crop(tape.saved[id(module)]) > 0).to(g.dtype), win
    if isinstance(module, nn.MaxPool2d):
        return _pool(module, tape.saved[id(module)], g, win)
    if isinstance(module, Bottleneck):
        g = g * (win.crop(tape.saved[id(module)]) > 0).to(g.dtype)
        g_main, main = g, win
        for step, child in reversed(list(enumerate(bottleneck_main(module)))):
            if child is None:
                g_main = g_main * (main.crop(tape.saved[(id(module), step)]) > 0).to(g.dtype)
            else:
                g_main, main = local_vjp(child, g_main, main, tape, rule)
        g_id, identity = local_vjp(module.downsample, g, win, tape, rule) if module.downsample is not None \
            else (g, win)
        both = _union(main, identity)
        return _widen(g_main, main, both) + _widen(g_id, identity, both), both
    raise TypeError(f"peak backpropagation does not support {type(module).__name__}")


def _conv(conv: nn.Conv2d, x: torch.Tensor, g: torch.Tensor, win: Window, rule: str) -> tuple[torch.Tensor, Window]:
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise TypeError("peak backpropagation supports zero-padded convolutions with numeric padding")
    into = win.through(conv.kernel_size, conv.stride, conv.padding, conv.dilation, x.shape[-2:])
    if rule == "gradient":
        g_in = F.conv_transpose2d(g, conv.weight, None, conv.stride, 0, 0, conv.groups, conv.dilation)
        return g_in * into.inside().to(g.dtype), into
    if rule == "excitation":
        # Z on the output window from the input window, zero where it overhangs: the
        # full convolution's values there, its zero padding included
        low = x.amin(dim=(1, 2, 3))[into.image][:, None, None, None]
        shifted = (into.crop(x) - low) * into.inside().to(x.dtype)
        positive = positive_weight(conv)
        z = F.conv2d(shifted, positive, None, conv.stride, 0, conv.dilation, conv.groups)
        g_hat = torch.where(z >= EPS, g / (z.abs() + EPS), torch.zeros_like(g))
        return shifted * F.conv_transpose2d(g_hat, positive, None, conv.stride, 0, 0, conv.groups, conv.dilation), \
            into
    raise ValueError(f"unknown backprop rule {rule!r}")


def _pool(pool: nn.MaxPool2d, saved, g: torch.Tensor, win: Window) -> tuple[torch.Tensor, Window]:
    """Max-pool routing on the windows (:func:`icn_rt.models.whole_map_vjp.route`): the
    winners found on the windows, the input's overhang (the padding) at -inf."""
    x, y = saved
    into = win.through(pool.kernel_size, pool.stride, pool.padding, 1, x.shape[-2:])
    winners = first_hits(into.crop(x, float("-inf")), win.crop(y), pool.kernel_size, pool.stride)
    return route(g, winners, pair(pool.kernel_size), pair(pool.stride)), into
