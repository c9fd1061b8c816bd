"""The arrays that the kernels and proposal matching compute on: NumPy arrays on the host,
PyTorch tensors on a GPU (and in Numba's CUDA simulator either kind). This module is the
one place that tells them apart; every other module calls these and holds whichever kind
it was given. PyTorch and the image libraries are imported on first use."""

from __future__ import annotations

import numpy as np

_TORCH_DTYPES = {np.dtype(np.uint32): "int32", np.dtype(np.int64): "int64", np.dtype(np.float64): "float64",
                 np.dtype(np.bool_): "bool", np.dtype(np.uint8): "uint8", np.dtype(np.int32): "int32"}


def is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def _torch():
    import torch

    return torch


def to(a: np.ndarray, device):
    """Host array ``a`` on ``device``: itself for None (the host), else a tensor there
    (``uint32`` words travel as ``int32``)."""
    if device is None:
        return a
    a = np.ascontiguousarray(a)
    return _torch().from_numpy(a.view(np.int32) if a.dtype == np.uint32 else a).to(device)


def host(x) -> np.ndarray:
    """``x`` as a host NumPy array (no copy when it already is one)."""
    return x.cpu().numpy() if is_tensor(x) else np.asarray(x)


def empty(like, shape: tuple, dtype, fill=None):
    """A new array of ``shape`` where ``like`` lives: a tensor on its device for a tensor,
    NumPy otherwise (``uint32`` as ``int32`` in a tensor); filled with ``fill`` unless None."""
    dtype = np.dtype(dtype)
    if is_tensor(like):
        torch = _torch()
        kind = getattr(torch, _TORCH_DTYPES[dtype])
        if fill is None:
            return torch.empty(shape, dtype=kind, device=like.device)
        return torch.full(shape, fill, dtype=kind, device=like.device)
    return np.empty(shape, dtype) if fill is None else np.full(shape, fill, dtype)


def cast(x, dtype):
    """``x`` as ``dtype`` where it lives (itself when it already is)."""
    dtype = np.dtype(dtype)
    if is_tensor(x):
        want = getattr(_torch(), _TORCH_DTYPES[dtype])
        return x if x.dtype == want else x.to(want)
    return np.asarray(x, dtype)


def numel(x) -> int:
    return x.numel() if is_tensor(x) else x.size


def float64(x):
    return x.double() if is_tensor(x) else x.astype(np.float64)


def concat(parts: list):
    """``parts`` joined along the first axis."""
    return _torch().cat(parts) if is_tensor(parts[0]) else np.concatenate(parts)


def clip_min(x, low):
    return x.clamp(min=low) if is_tensor(x) else np.maximum(x, low)


def where(cond, a, b):
    """``a`` where ``cond``, else ``b`` (an array like ``a`` or a number)."""
    if is_tensor(cond):
        torch = _torch()
        return torch.where(cond, a, torch.as_tensor(b, dtype=torch.float64, device=cond.device))
    return np.where(cond, a, b)


def row_min_max(flat):
    """``[K, n]`` -> each row's ``(min [K], max [K])``."""
    if is_tensor(flat):
        return flat.min(1).values, flat.max(1).values
    return flat.min(1), flat.max(1)


def finite_rows(x):
    """``[K, n]`` -> ``bool [K]``: whether the row has a finite entry."""
    return _torch().isfinite(x).any(1) if is_tensor(x) else np.isfinite(x).any(1)


def arange(n: int, like):
    """``0 .. n-1`` where ``like`` lives."""
    return _torch().arange(n, device=like.device) if is_tensor(like) else np.arange(n)


def resize_bilinear(maps, shape: tuple[int, int]):
    """``[K, h, w]`` -> ``[K, H, W]`` bilinear (half-pixel centres): OpenCV on the host,
    PyTorch (in float64) on a tensor's device."""
    if is_tensor(maps):
        import torch.nn.functional as F

        return F.interpolate(maps[:, None].double(), size=tuple(shape), mode="bilinear", align_corners=False)[:, 0]
    import cv2

    return np.stack([cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR) for m in maps])


def grey_gradient(maps, width: int):
    """The grey morphological gradient (dilation minus erosion, ``width``² square; pixels
    outside the image take no part) of each real map ``[K, H, W]``."""
    if is_tensor(maps):
        import torch.nn.functional as F

        r = width // 2
        grow = F.max_pool2d(maps[:, None], width, 1, r)[:, 0]
        shrink = -F.max_pool2d(-maps[:, None], width, 1, r)[:, 0]
        return grow - shrink
    from scipy import ndimage

    size = (width, width)
    return np.stack([ndimage.grey_dilation(m, size=size, mode="nearest") - ndimage.grey_erosion(m, size=size,
                                                                                                 mode="nearest")
                     for m in maps])
