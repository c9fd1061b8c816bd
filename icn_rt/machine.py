"""What a benchmark ran on: machine, Python and package versions, GPU if any."""

from __future__ import annotations

import os
import platform
from importlib import metadata


def machine_info() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "packages": {},
        "gpu": None,
    }
    for pkg in ("icn-rt", "numpy", "scipy", "opencv-python-headless", "scikit-image", "torch", "onnx", "onnxruntime",
                "onnxruntime-gpu", "tensorrt", "numba", "numba-cuda", "ray"):
        try:
            info["packages"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            info["packages"][pkg] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
