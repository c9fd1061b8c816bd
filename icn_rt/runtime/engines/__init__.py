"""Engines behind one small interface (docs/design.md §4): named tensors in, named tensors out,
on the engine's device. One module per backend:

- :mod:`.pytorch`: the graph modules of :mod:`icn_rt.export.graphs` in eager PyTorch (the
  reference the others are tested against);
- :mod:`.onnxruntime`: the exported ``.onnx`` files; execution providers TensorRT > CUDA >
  CPU, whichever this onnxruntime build has and the device allows; on CUDA the inputs
  and outputs are bound to PyTorch's device buffers (IO binding, no host copies);
- :mod:`.tensorrt`: plans built by ``icn-rt build-engine``, run by TensorRT's own runtime
  on PyTorch-allocated device buffers, enqueued on PyTorch's current CUDA stream;

and :mod:`.graphs`: a model's PRM and ICN engines on one backend, checked against the
model, and the choice of backend (``auto``).

Every output's first axis is the batch and its other axes are fixed at export, so output
buffers are allocated before the run.
"""

from __future__ import annotations

from typing import Protocol

import torch


class Engine(Protocol):
    backend: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]: ...


# the public face (after Engine, which the modules below use)
from icn_rt.runtime.engines.graphs import (  # noqa: E402
    BACKENDS, PRECISIONS, TORCH_PRECISIONS, GraphEngines, pick_backend, split_backend)
from icn_rt.runtime.engines.onnxruntime import OnnxRuntimeEngine, onnxruntime_has_gpu  # noqa: E402
from icn_rt.runtime.engines.pytorch import TorchEngine  # noqa: E402
from icn_rt.runtime.engines.tensorrt import TensorRTEngine, tensorrt_available  # noqa: E402

__all__ = ["BACKENDS", "PRECISIONS", "TORCH_PRECISIONS", "Engine", "GraphEngines", "OnnxRuntimeEngine",
           "TensorRTEngine", "TorchEngine", "onnxruntime_has_gpu", "pick_backend", "split_backend",
           "tensorrt_available"]
