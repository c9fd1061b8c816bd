"""The kernels of proposal matching: one interface (:class:`~.interface.Kernels`) and three
backends that implement all of it — NumPy (:mod:`.ops_numpy`, the reference), Numba CPU
(:mod:`.ops_cpu`) and Numba CUDA (:mod:`.ops_cuda`). Callers hold the backend that
:func:`ops` picks for their device; tests and benchmarks name one with :func:`backend`.
Nothing here imports the rest of icn-rt."""

from __future__ import annotations

import importlib

from .interface import Kernels

BACKENDS = ("numpy", "cpu", "cuda")
_CLASSES = {"numpy": "NumpyKernels", "cpu": "CpuKernels", "cuda": "CudaKernels"}


def backend(name: str, device=None) -> Kernels:
    """The backend ``name`` (imported on first use: Numba compiles lazily); ``device``: where
    the CUDA backend's tensors live (None: NumPy arrays, in the simulator)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown kernel backend {name!r}; choose one of {', '.join(BACKENDS)}")
    cls = getattr(importlib.import_module(f"icn_rt.kernels.ops_{name}"), _CLASSES[name])
    return cls(device) if name == "cuda" else cls()


def ops(device=None) -> Kernels:
    """The kernels for maps on ``device`` (a torch device, or None for host arrays): the
    CUDA kernels on the device's tensors for a CUDA device when Numba can use the GPU,
    else the Numba CPU kernels on host arrays."""
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        from . import ops_cuda

        if ops_cuda.available() and not ops_cuda.SIMULATED:
            return ops_cuda.CudaKernels(device)
    return backend("cpu")
