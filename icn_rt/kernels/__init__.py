"""Proposal matching kernels: a NumPy reference (:mod:`.ops_numpy`), Numba CPU
(:mod:`.ops_cpu`) and Numba CUDA (:mod:`.ops_cuda`), with the same functions; and the
method-level references (:mod:`.reference`)."""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = ("numpy", "cpu", "cuda")


def ops(backend: str) -> ModuleType:
    """The kernel module of ``backend`` (imported on first use: Numba compiles lazily)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"icn_rt.kernels.ops_{backend}")
