"""Engines behind one small interface (DESIGN.md §4): named tensors in, named tensors out,
on the engine's device.

- ``torch``: the graph modules of :mod:`icn_rt.export.graphs` in eager PyTorch (the
  reference the others are tested against);
- ``onnxruntime``: the exported ``.onnx`` files; execution providers TensorRT > CUDA >
  CPU, whichever this onnxruntime build has and the device allows; on CUDA the inputs
  and outputs are bound to PyTorch's device buffers (IO binding, no host copies);
- ``tensorrt``: plans built by ``icn-rt build-engine`` (:mod:`icn_rt.export.tensorrt`),
  run by TensorRT's own runtime on PyTorch-allocated device buffers, enqueued on
  PyTorch's current CUDA stream.

Every output's first axis is the batch and its other axes are fixed at export, so output
buffers are allocated before the run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from icn_rt.errors import InputError, read_json

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")

_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int32)": torch.int32,
              "tensor(int64)": torch.int64, "tensor(bool)": torch.bool}


class Engine(Protocol):
    backend: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]: ...


class TorchEngine:
    """A graph module run eagerly under ``no_grad``."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...],
                 device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.inputs, self.outputs, self.device = inputs, outputs, torch.device(device)

    @torch.no_grad()
    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.module(*(feeds[name].to(self.device) for name in self.inputs))
        return dict(zip(self.outputs, result))


def onnxruntime_providers(device: torch.device) -> list:
    """Execution providers for ``device``, fastest first, among those this onnxruntime has."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen: list = []
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if "TensorrtExecutionProvider" in available:
            chosen.append(("TensorrtExecutionProvider", options))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", options))
        if not chosen:
            raise RuntimeError("onnxruntime has no CUDA execution provider here; install onnxruntime-gpu or use "
                               "--device cpu")
    return chosen + ["CPUExecutionProvider"]


class OnnxRuntimeEngine:
    """One ``.onnx`` graph in an onnxruntime session."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int = 0) -> None:
        import onnxruntime as ort

        self.path, self.device = Path(path), torch.device(device)
        if not self.path.is_file():
            raise InputError(self.path, "graph not found; run `icn-rt export MODEL` first")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=onnxruntime_providers(self.device))
        self.providers = tuple(self.session.get_providers())
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        self._output_meta = [(o.name, o.shape[1:], _ORT_TYPES[o.type]) for o in self.session.get_outputs()]

    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            arrays = {name: np.ascontiguousarray(feeds[name].detach().cpu().numpy()) for name in self.inputs}
            return {name: torch.from_numpy(a) for name, a in zip(self.outputs, self.session.run(None, arrays))}
        return self._run_bound(feeds)

    def _run_bound(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """IO binding on PyTorch's device buffers: no copies through the host."""
        binding = self.session.io_binding()
        index = self.device.index or 0
        kept = []
        for name in self.inputs:
            t = feeds[name].to(self.device).contiguous()
            kept.append(t)
            binding.bind_input(name, "cuda", index, _numpy_type(t.dtype), tuple(t.shape), t.data_ptr())
        batch = kept[0].shape[0]
        out = {}
        for name, rest, dtype in self._output_meta:
            t = torch.empty((batch, *rest), dtype=dtype, device=self.device)
            out[name] = t
            binding.bind_output(name, "cuda", index, _numpy_type(dtype), tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written before ORT reads them
        self.session.run_with_iobinding(binding)
        return out


def _numpy_type(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64,
            torch.bool: np.bool_}[dtype]


def tensorrt_available() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


def onnxruntime_has_gpu() -> bool:
    import onnxruntime as ort

    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


def read_manifest(directory: str | Path) -> dict:
    """The model's export manifest (``icn-rt export`` writes it)."""
    return read_json(Path(directory) / "manifest.json", "no exported graphs; run `icn-rt export MODEL` first")


def pick_backend(backend: str, device: torch.device, directory: str | Path) -> str:
    """``auto`` -> the fastest backend present for ``device``: TensorRT plans when they
    exist and TensorRT imports, else onnxruntime with a GPU provider, else torch on a GPU;
    on a CPU, torch (measured faster than onnxruntime-CPU on the padded graphs:
    ``benchmarks/results/engines_cpu.json``)."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend
    if device.type == "cuda":
        manifest = Path(directory) / "manifest.json"
        if tensorrt_available() and manifest.is_file() and json.loads(manifest.read_text()).get("plans"):
            return "tensorrt"
        if (Path(directory) / "prm.onnx").is_file() and onnxruntime_has_gpu():
            return "onnxruntime"
    return "torch"


def _trt_to_torch(trt, dtype) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool,
             trt.int8: torch.int8}
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    return table[dtype]


def current_gpu(device: torch.device) -> dict:
    """The GPU a plan is built for or run on: name and compute capability."""
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}


class TensorRTEngine:
    """One serialized TensorRT plan. Refuses a plan built for another GPU or TensorRT
    version (``record``: the plan's entry in ``manifest.json``)."""

    backend = "tensorrt"

    def __init__(self, path: str | Path, record: dict, device: str | torch.device = "cuda") -> None:
        if not tensorrt_available():
            raise RuntimeError("TensorRT is not installed: pip install tensorrt (on Jetson it comes with JetPack)")
        import tensorrt as trt

        self.path, self.device = Path(path), torch.device(device)
        if self.device.type != "cuda":
            raise RuntimeError("TensorRT engines run on a CUDA device; use --device cuda")
        if not self.path.is_file():
            raise InputError(self.path, "plan not found; run `icn-rt build-engine MODEL` first")
        gpu = current_gpu(self.device)
        if record.get("tensorrt") != trt.__version__:
            raise InputError(self.path, f"built with TensorRT {record.get('tensorrt')}, this is {trt.__version__}; "
                                        "rebuild with `icn-rt build-engine`")
        if record.get("gpu", {}).get("compute_capability") != gpu["compute_capability"] or \
                record.get("gpu", {}).get("name") != gpu["name"]:
            raise InputError(self.path, f"built for {record.get('gpu')}, this GPU is {gpu}; rebuild with "
                                        "`icn-rt build-engine`")
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


class GraphEngines:
    """The model's PRM engine and (when it enhances) ICN engine on one backend, checked
    against what the predictor would compute: the same weights and settings as at export."""

    def __init__(self, directory: str | Path, backend: str, device: str | torch.device, settings: dict,
                 enhances: bool) -> None:
        self.directory, self.device = Path(directory), torch.device(device)
        manifest = read_manifest(self.directory)
        path = self.directory / "manifest.json"
        for name, digest in manifest.get("weights", {}).items():
            if file_sha256(self.directory / name) != digest:
                raise InputError(path, f"the graphs were exported from another {name}; run `icn-rt export` again")
        exported = manifest["settings"]
        for section in ("peaks", "prm"):
            if exported[section] != settings[section]:
                raise InputError(path, f"the graphs were exported with other {section} settings; run `icn-rt export` "
                                       "again")
        self.slots = int(manifest["slots"])
        self.backend = backend
        graphs = manifest["graphs"]
        if enhances:
            steps = settings["icn"]["steps"]
            if "icn" not in graphs or graphs["icn"]["steps"] != steps:
                have = graphs["icn"]["steps"] if "icn" in graphs else "no ICN graph"
                raise InputError(path, f"the ICN graph has T = {have}, the predictor wants T = {steps}; run "
                                       "`icn-rt export` again")
        wanted = ["prm", "icn"] if enhances else ["prm"]
        self.engines: dict[str, Engine] = {}
        for name in wanted:
            if backend == "onnxruntime":
                self.engines[name] = OnnxRuntimeEngine(self.directory / graphs[name]["file"], self.device)
            elif backend == "tensorrt":
                plans = manifest.get("plans", {})
                if name not in plans:
                    raise InputError(path, f"no TensorRT plan for the {name} graph; run `icn-rt build-engine` first")
                if plans[name]["onnx_sha256"] != graphs[name]["sha256"]:
                    raise InputError(path, f"the {name} plan was built from an older export; run `icn-rt "
                                           "build-engine` again")
                self.engines[name] = TensorRTEngine(self.directory / plans[name]["file"], plans[name], self.device)
            else:
                raise ValueError(f"graph engines run on onnxruntime or tensorrt, not {backend!r}")

    @property
    def prm(self) -> Engine:
        return self.engines["prm"]

    @property
    def icn(self) -> Engine | None:
        return self.engines.get("icn")


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
