"""The ``tensorrt`` engine: one serialized plan (``icn-rt build-engine``) run by TensorRT's
own runtime on PyTorch-allocated device buffers, enqueued on PyTorch's current CUDA
stream. TensorRT is an optional dependency (:mod:`icn_rt.extras`).

``cuda_graph``: each input shape's execution is captured once into a CUDA graph (TensorRT
enqueued once first, as its documentation asks, then captured on PyTorch's capture
stream) and replayed from fixed input and output buffers: the feeds are copied in, the
outputs copied out. :meth:`TensorRTEngine.profile_layers`: TensorRT's per-layer times
(an ``IProfiler``), as ``trtexec --dumpProfile``."""

from __future__ import annotations

import functools

from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


GRAPHS_KEPT = 8
"""Input shapes whose CUDA graph an engine keeps (the last chunk of a batch has its own)."""


@dataclass
class _Captured:
    """One input shape's CUDA graph and the fixed buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


@functools.lru_cache(maxsize=None)
def _output_allocator_class(trt):
    """The :class:`trt.IOutputAllocator` for the outputs whose shape TensorRT knows only
    once the plan ran: made per run (``cls(device)``), PyTorch buffers of the size it asks
    for, and the shapes it reports. One class per TensorRT module."""

    class OutputAllocator(trt.IOutputAllocator):
        def __init__(self, device: torch.device) -> None:
            trt.IOutputAllocator.__init__(self)
            self.device = device
            self.buffers: dict[str, torch.Tensor] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output_async(self, tensor_name: str, memory, size: int, alignment: int, stream) -> int:
            buffer = self.buffers.get(tensor_name)
            if buffer is None or buffer.numel() < size:
                buffer = torch.empty(max(size, 1), dtype=torch.uint8, device=self.device)  # 256-byte aligned
                self.buffers[tensor_name] = buffer
            return buffer.data_ptr()

        def reallocate_output(self, tensor_name: str, memory, size: int, alignment: int) -> int:
            return self.reallocate_output_async(tensor_name, memory, size, alignment, None)

        def notify_shape(self, tensor_name: str, shape) -> None:
            self.shapes[tensor_name] = tuple(shape)

    return OutputAllocator


def _allocated(allocator, dtypes: dict[str, torch.dtype], device: torch.device) -> dict[str, torch.Tensor]:
    """The outputs an output allocator (:func:`_output_allocator_class`) received, as
    tensors of the shapes TensorRT reported (views of its buffers)."""
    out = {}
    for name, shape in allocator.shapes.items():
        count = int(np.prod(shape))
        if count == 0:
            out[name] = torch.empty(shape, dtype=dtypes[name], device=device)
            continue
        size = count * dtypes[name].itemsize
        out[name] = allocator.buffers[name][:size].view(dtypes[name]).view(shape)
    return out


class TensorRTEngine:
    """One serialized TensorRT plan. Refuses a plan built for another GPU or TensorRT
    version (``record``: the plan's entry in the manifest). ``cuda_graph``: replay each
    input shape's execution as a CUDA graph (see the module)."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, record: dict, device: str | torch.device = "cuda",
                 cuda_graph: bool = False) -> None:
        trt = extras.require("tensorrt")
        self.path, self.device = Path(path), torch.device(device)
        if self.device.type != "cuda":
            raise RuntimeError("TensorRT engines run on a CUDA device; use --device cuda")
        if not self.path.is_file():
            raise InputError(self.path, "plan not found; run `icn-rt build-engine MODEL` first")
        manifest.check_plan(self.path, record, trt.__version__, manifest.current_gpu(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")  # a plan may hold TensorRT's plugins (the student's RoiAlign)
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
        self.cuda_graph = cuda_graph
        self._graphs: dict[tuple, _Captured] = {}
        self._data_dependent = False  # found on the first run: some output's shape depends on the data

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        inputs = {name: feeds[name].to(self.device, self._dtypes[name]).contiguous() for name in self.inputs}
        if self.cuda_graph and not self._data_dependent:
            return self._replay(inputs)
        return self._run(inputs)

    def _run(self, inputs: dict[str, torch.Tensor], context=None) -> dict[str, torch.Tensor]:
        stream = torch.cuda.current_stream(self.device)
        out, allocator = self._bind(inputs, context)
        self._enqueue(stream, context)
        for t in inputs.values():  # the caching allocator must not reuse the inputs before the plan ran
            t.record_stream(stream)
        if allocator is not None:  # enqueue returned once TensorRT knew their shapes
            out.update(_allocated(allocator, self._dtypes, self.device))
            missing = [name for name in self.outputs if name not in out]
            if missing:
                raise RuntimeError(f"{self.path}: TensorRT reported no shape for {', '.join(missing)}")
        return out

    def _bind(self, inputs: dict[str, torch.Tensor], context=None) -> tuple[dict[str, torch.Tensor], object]:
        """Set the input shapes and every tensor's address in ``context`` (default: the
        engine's) -> the new output buffers, and the allocator of the outputs whose shape
        depends on the data (the PRM plan's peaks), or None."""
        context = context or self.context
        for name, t in inputs.items():
            context.set_input_shape(name, tuple(t.shape))
            context.set_tensor_address(name, t.data_ptr())
        out, allocator = {}, None
        for name in self.outputs:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # known only once the plan ran: TensorRT asks the allocator
                allocator = allocator or _output_allocator_class(extras.require("tensorrt"))(self.device)
                context.set_output_allocator(name, allocator)
                self._data_dependent = True
                continue
            t = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
            out[name] = t
            context.set_tensor_address(name, t.data_ptr())
        return out, allocator

    def _enqueue(self, stream: torch.cuda.Stream, context=None) -> None:
        context = context or self.context
        if not context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"{self.path}: TensorRT execution failed")

    def _replay(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The execution for these input shapes as a CUDA graph: captured on first sight
        of the shapes, then replayed from its fixed buffers. A plan with outputs whose
        shape depends on the data runs plainly (a graph would fix their size)."""
        key = tuple(tuple(t.shape) for t in inputs.values())
        captured = self._graphs.get(key)
        if captured is None:
            captured = self._capture({name: t.clone() for name, t in inputs.items()})
            if captured is None:
                return self._run(inputs)
            if len(self._graphs) >= GRAPHS_KEPT:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = captured
        for name, t in inputs.items():
            captured.inputs[name].copy_(t)
        captured.graph.replay()
        return {name: t.clone() for name, t in captured.outputs.items()}

    def _capture(self, inputs: dict[str, torch.Tensor]) -> _Captured | None:
        outputs, allocator = self._bind(inputs)
        if allocator is not None:
            return None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # once outside the capture: TensorRT's deferred work is done there
            self._enqueue(side)
        side.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._enqueue(torch.cuda.current_stream(self.device))
        return _Captured(graph, inputs, outputs)

    def profile_layers(self, runs: int = 20, **feeds: torch.Tensor) -> dict:
        """TensorRT's time per layer over ``runs`` executions on ``feeds`` (after one
        untimed): per layer its median milliseconds and share of the summed medians, in
        execution order; the layer names are the network's when the plan was built with
        detailed profiling verbosity (``icn-rt build-engine`` does), else indices."""
        trt = extras.require("tensorrt")
        times: dict[str, list[float]] = {}

        class LayerTimes(trt.IProfiler):
            def __init__(self) -> None:
                trt.IProfiler.__init__(self)

            def report_layer_time(self, layer_name: str, ms: float) -> None:
                times.setdefault(layer_name, []).append(ms)

        inputs = {name: feeds[name].to(self.device, self._dtypes[name]).contiguous() for name in self.inputs}
        stream = torch.cuda.current_stream(self.device)
        context = self.engine.create_execution_context()  # its own: the engine's runs stay unprofiled
        self._run(inputs, context)
        stream.synchronize()
        context.profiler = LayerTimes()
        for _ in range(runs):
            self._run(inputs, context)  # with a profiler, enqueue reports each layer once it has run
            stream.synchronize()
        del context
        medians = {name: float(np.median(v)) for name, v in times.items()}
        total = sum(medians.values())
        return {"plan": self.path.name, "runs": runs, "input_shapes": {n: list(t.shape) for n, t in inputs.items()},
                "total_ms": total,
                "layers": [{"name": name, "median_ms": ms, "share": ms / total if total else None,
                            "samples": len(times[name])} for name, ms in medians.items()]}
