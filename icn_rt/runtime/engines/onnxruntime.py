"""The ``onnxruntime`` engine: one exported ``.onnx`` graph in an onnxruntime session;
execution providers TensorRT > CUDA > CPU, whichever this onnxruntime build has and the
device allows. On CUDA the inputs and outputs are bound to PyTorch's device buffers (IO
binding, no host copies)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icn_rt.errors import InputError

_ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(int32)": torch.int32,
              "tensor(int64)": torch.int64, "tensor(bool)": torch.bool}


def onnxruntime_providers(device: torch.device, cache: Path | None = None, fp16: bool = False) -> list:
    """Execution providers for ``device``, fastest first, among those this onnxruntime has.
    TensorRT's provider keeps its engines and timing cache in ``cache`` (so a new session
    does not rebuild them) and builds fp16 kernels for an fp16 graph (``fp16``)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen: list = []
    if device.type == "cuda":
        options = {"device_id": device.index or 0}
        if "TensorrtExecutionProvider" in available:
            provider = dict(options)
            if cache is not None:
                provider.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache),
                           trt_timing_cache_enable=True, trt_timing_cache_path=str(cache))
            if fp16:
                provider["trt_fp16_enable"] = True
            chosen.append(("TensorrtExecutionProvider", provider))
        if "CUDAExecutionProvider" in available:
            chosen.append(("CUDAExecutionProvider", options))
        if not chosen:
            raise RuntimeError("onnxruntime has no CUDA execution provider here; install onnxruntime-gpu or use "
                               "--device cpu")
    return chosen + ["CPUExecutionProvider"]


def onnxruntime_has_gpu() -> bool:
    import onnxruntime as ort

    return bool({"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers()))


ORT_OPTIMIZATION = ("disable", "basic", "extended", "all")
"""onnxruntime's graph optimisation levels (``ORT_DISABLE_ALL`` ... ``ORT_ENABLE_ALL``)."""


class OnnxRuntimeEngine:
    """One ``.onnx`` graph in an onnxruntime session (``fp16``: the graph is an fp16 variant,
    which TensorRT's provider then builds with fp16 kernels). ``optimization``: the
    session's graph optimisation level (:data:`ORT_OPTIMIZATION`, default ``all``);
    ``save_optimized``: onnxruntime writes the graph it optimised beside the original
    (``prm.ort-all.onnx``; :attr:`optimized_path`) — to read what it runs, or to load later
    with ``optimization="disable"`` and skip the optimisation at start-up. ``basic`` and
    ``extended`` keep to portable operators; ``all`` adds layout changes for this CPU.
    ``log_severity``: onnxruntime's (2: warnings; 3: errors only)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", threads: int = 0,
                 fp16: bool = False, optimization: str = "all", save_optimized: bool = False,
                 log_severity: int = 2) -> None:
        import onnxruntime as ort

        if optimization not in ORT_OPTIMIZATION:
            raise ValueError(f"unknown onnxruntime optimisation level {optimization!r}; choose one of "
                             f"{', '.join(ORT_OPTIMIZATION)}")
        self.path, self.device = Path(path), torch.device(device)
        if not self.path.is_file():
            raise InputError(self.path, "graph not found; run `icn-rt export MODEL` first")
        options = ort.SessionOptions()
        options.log_severity_level = log_severity
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimization]
        if threads:
            options.intra_op_num_threads = threads
        # no spinning after each run: the predictor interleaves two sessions with PyTorch and
        # Numba work in one process, and idle threads that spin take the cores from the next
        # (2 cores, demo model, batch 8: both graphs 209 -> 171 ms)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        cache = self.path.parent / "onnxruntime-trt-cache"  # TensorRT provider: engines kept across sessions
        providers = onnxruntime_providers(self.device, cache, fp16)
        if providers[0][0] == "TensorrtExecutionProvider":
            cache.mkdir(exist_ok=True)
        self.optimized_path = None
        if save_optimized:
            if providers[0][0] == "TensorrtExecutionProvider":
                raise ValueError("onnxruntime cannot save a graph that its TensorRT provider compiled; save the "
                                 "optimised graph on the CPU or CUDA provider")
            self.optimized_path = self.path.with_name(f"{self.path.stem}.ort-{optimization}.onnx")
            options.optimized_model_filepath = str(self.optimized_path)
        self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.providers = tuple(self.session.get_providers())
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.outputs = tuple(o.name for o in self.session.get_outputs())
        batch = self.session.get_inputs()[0].shape[0]
        # outputs of the inputs' batch by fixed sizes get PyTorch buffers; onnxruntime
        # allocates the others (the PRM graph's peaks: data-dependent; sizes the graph's
        # shape inference left symbolic)
        self._output_meta = [(o.name, _fixed_rest(o.shape, batch), _ORT_TYPES[o.type])
                             for o in self.session.get_outputs()]

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
            if rest is None:
                binding.bind_output(name, "cuda", index)
                continue
            t = torch.empty((batch, *rest), dtype=dtype, device=self.device)
            out[name] = t
            binding.bind_output(name, "cuda", index, _numpy_type(dtype), tuple(t.shape), t.data_ptr())
        torch.cuda.current_stream(self.device).synchronize()  # inputs written before ORT reads them
        self.session.run_with_iobinding(binding)
        for (name, rest, dtype), value in zip(self._output_meta, binding.get_outputs()):
            if rest is None:  # onnxruntime's buffer, copied into PyTorch's before it is freed
                out[name] = torch.as_tensor(_CudaArray(value, dtype), device=self.device).clone()
        return out


def _fixed_rest(shape: list, batch) -> tuple[int, ...] | None:
    """An output's sizes after its first axis when that axis is the inputs' batch and the
    rest are numbers; None otherwise."""
    rest = shape[1:]
    return tuple(rest) if shape[0] == batch and all(isinstance(d, int) for d in rest) else None


class _CudaArray:
    """An onnxruntime output on the GPU as ``__cuda_array_interface__`` (a view for PyTorch)."""

    def __init__(self, value, dtype: torch.dtype) -> None:
        shape = tuple(value.shape())
        typestr = np.dtype(_numpy_type(dtype)).str
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "version": 3,
                                         "data": (value.data_ptr() if np.prod(shape) else 0, False)}


def _numpy_type(dtype: torch.dtype):
    return {torch.float32: np.float32, torch.float16: np.float16, torch.int32: np.int32, torch.int64: np.int64,
            torch.bool: np.bool_}[dtype]
