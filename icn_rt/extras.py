"""Optional dependencies: the modules of ``pip install 'icn-rt[gpu]'`` that the base install
lacks. Each is imported where it is used; whether it is here, and the one sentence that
says how to get it when it is not, are here (a missing extra is that sentence, not a
traceback)."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

HOW_TO_INSTALL = {
    "tensorrt": "TensorRT is not installed: `pip install tensorrt` (x86-64 Linux/Windows with a CUDA GPU) or, on "
                "Jetson, the JetPack TensorRT",
    "ray": "Ray is not installed: `pip install 'icn-rt[distributed]'` (Ray Data, for --ray)",
    "fastapi": "Ray Serve is not installed: `pip install 'icn-rt[serve]'` (for icn-rt serve)",
}
"""Module -> what to do when it is missing."""


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, then: str = "") -> ModuleType:
    """``module`` imported, or a RuntimeError saying how to install it (and ``then``, what to
    run next)."""
    if not installed(module):
        raise RuntimeError(HOW_TO_INSTALL[module] + (f"; then {then}" if then else ""))
    return importlib.import_module(module)
