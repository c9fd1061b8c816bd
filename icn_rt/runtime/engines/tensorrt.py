"""The ``tensorrt`` engine: one serialized plan (``icn-rt build-engine``) run by TensorRT's
own runtime on PyTorch-allocated device buffers, enqueued on PyTorch's current CUDA
stream. TensorRT is an optional dependency (:mod:`icn_rt.extras`)."""

from __future__ import annotations

from pathlib import Path

import torch

from icn_rt import extras
from icn_rt.errors import InputError
from icn_rt.models import manifest


def tensorrt_available() -> bool:
    return extras.installed("tensorrt")


def _trt_to_torch(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool,
             trt.int8: torch.int8, trt.int64: torch.int64}
    return table[dtype]


class TensorRTEngine:
    """One serialized TensorRT plan. Refuses a plan built for another GPU or TensorRT
    version (``record``: the plan's entry in the manifest)."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, record: dict, device: str | torch.device = "cuda") -> None:
        trt = extras.require("tensorrt")
        self.path, self.device = Path(path), torch.device(device)
        if self.device.type != "cuda":
            raise RuntimeError("TensorRT engines run on a CUDA device; use --device cuda")
        if not self.path.is_file():
            raise InputError(self.path, "plan not found; run `icn-rt build-engine MODEL` first")
        manifest.check_plan(self.path, record, trt.__version__, manifest.current_gpu(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if record.get("dla_core") is not None:
            self.runtime.DLA_core = record["dla_core"]
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise InputError(self.path, "TensorRT could not deserialize this plan")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = tuple(n for n in names if is_input[n])
        self.outputs = tuple(n for n in names if not is_input[n])
        self._dtypes = {n: _trt_to_torch(trt, self.engine.get_tensor_dtype(n)) for n in names}

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        stream = torch.cuda.current_stream(self.device)
        kept = []
        for name in self.inputs:
            t = feeds[name].to(self.device, self._dtypes[name]).contiguous()
            kept.append(t)
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        out = {}
        for name in self.outputs:
            t = torch.empty(tuple(self.context.get_tensor_shape(name)), dtype=self._dtypes[name], device=self.device)
            out[name] = t
            self.context.set_tensor_address(name, t.data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")
        for t in kept:  # the caching allocator must not reuse the inputs before the plan ran
            t.record_stream(stream)
        return out
