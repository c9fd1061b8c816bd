"""The PRM reference's modified convolution backward, as a patch on ordinary autograd.

Written from the rule (docs/design.md §1 step 3), not from the PRM code: during the backward
pass of every Conv2d, with x the conv input, m = min(x) over the whole tensor,
W⁺ = ReLU(W), Z = conv(x − m, W⁺) (no bias), Ĝ = G / (|Z| + 1e-10) where Z ≥ 1e-10
else 0, the gradient passed to x is (x − m) ⊙ convᵀ(Ĝ, W⁺). Everything else (BN, ReLU,
max-pool, residual adds) keeps its autograd backward. The baseline runs one image at a
time, so "the whole tensor" is one image.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_input


class _ExcitationConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, groups)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        shifted = x - x.min()
        positive = weight.clamp(min=0)
        z = F.conv2d(shifted, positive, None, stride, padding, dilation, groups)
        g_hat = torch.where(z >= 1e-10, grad / (z.abs() + 1e-10), torch.zeros_like(grad))
        g_x = conv2d_input(x.shape, positive, g_hat, stride, padding, dilation, groups)
        return shifted * g_x, None, None, None, None, None, None


@contextmanager
def excitation_backward(model: nn.Module):
    """Within the block, every Conv2d of ``model`` back-propagates with the excitation rule."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]

    def patched(conv: nn.Conv2d):
        return lambda x: _ExcitationConv.apply(x, conv.weight, conv.bias, conv.stride, conv.padding,
                                               conv.dilation, conv.groups)

    for conv in convs:
        conv.forward = patched(conv)
    try:
        yield model
    finally:
        for conv in convs:
            del conv.forward
