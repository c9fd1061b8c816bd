"""A model's exported graphs on one engine backend — the PRM graph and, when the model
enhances, the ICN graph — checked against the model (the same weights and settings as
at export: :func:`icn_rt.models.manifest.check_graphs`), and the choice of backend."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from icn_rt.errors import InputError
from icn_rt.models import manifest
from icn_rt.models.store import Model
from icn_rt.runtime.engines import Engine
from icn_rt.runtime.engines.onnxruntime import OnnxRuntimeEngine, onnxruntime_has_gpu
from icn_rt.runtime.engines.tensorrt import TensorRTEngine, tensorrt_available

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = manifest.PRECISIONS
CUDA_GRAPH_BACKENDS = ("CUDA graphs replay TensorRT plans only (--backend tensorrt): eager PyTorch's backward "
                       "changes shape with the number of peaks, and onnxruntime's would need fixed input and "
                       "output buffers")
TORCH_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Eager PyTorch's precisions: the networks under :func:`torch.autocast` at that type."""


def torch_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Eager networks on ``device`` at ``precision`` (one of :data:`TORCH_PRECISIONS`;
    nothing at fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=TORCH_PRECISIONS[precision])


def split_backend(spec: str) -> tuple[str, str | None]:
    """``onnxruntime:int8`` -> (``onnxruntime``, ``int8``); ``torch`` -> (``torch``, None).
    On a graph backend the precision names the exported graph variant (``icn-rt export
    --precision``) or, on TensorRT, the precision the plans must have been built at; on
    ``torch`` (``torch:bf16``, ``torch:fp16``) the type the networks run at under autocast."""
    backend, _, precision = spec.partition(":")
    if not precision:
        return backend, None
    if backend == "torch":
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} in {spec!r}; torch runs at "
                             f"{', '.join(TORCH_PRECISIONS)}")
    elif backend not in ("onnxruntime", "tensorrt"):
        raise ValueError(f"a precision goes with torch or the graph backends (onnxruntime:{precision}, "
                         f"tensorrt:{precision}), not {backend!r}")
    elif precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} in {spec!r}; choose one of {', '.join(PRECISIONS)}")
    return backend, precision


def pick_backend(backend: str, device: torch.device, directory) -> str:
    """``auto`` -> the fastest backend present for ``device``: TensorRT plans when they
    exist and TensorRT imports, else onnxruntime with a GPU provider, else torch on a GPU;
    on a CPU, torch (measured faster than onnxruntime-CPU on the padded graphs:
    ``benchmarks/results/engines_cpu.json``)."""
    if backend != "auto":
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend
    if device.type == "cuda":
        if tensorrt_available() and manifest.has_plans(directory):
            return "tensorrt"
        if manifest.has_graph(directory) and onnxruntime_has_gpu():
            return "onnxruntime"
    return "torch"


class GraphEngines:
    """The PRM engine and (when ``model`` enhances) the ICN engine of a loaded model on
    ``backend`` (``onnxruntime`` or ``tensorrt``), refused when the graphs or plans do not
    fit the model. ``precision``: onnxruntime runs that variant of the graphs (default
    fp32); TensorRT's plans must have been built at it (default: whatever they were).
    ``cuda_graph``: TensorRT replays each input shape's execution as a CUDA graph.
    ``ort_optimization``, ``ort_save_optimized``: onnxruntime's session options
    (:class:`~icn_rt.runtime.engines.onnxruntime.OnnxRuntimeEngine`)."""

    def __init__(self, model: Model, backend: str, device: str | torch.device, precision: str | None = None,
                 cuda_graph: bool = False, ort_optimization: str = "all", ort_save_optimized: bool = False) -> None:
        if cuda_graph and backend != "tensorrt":
            raise ValueError(CUDA_GRAPH_BACKENDS)
        self.directory, self.device = model.directory, torch.device(device)
        self.cuda_graph = cuda_graph
        record = manifest.read(self.directory)
        manifest.check_graphs(model, record)
        self.slots = int(record["slots"])
        self.precision = precision or (record.get("plans", {}).get("prm", {}).get("precision", "fp32")
                                       if backend == "tensorrt" else "fp32")
        self.backend = backend
        self.engines: dict[str, Engine] = {}
        for name in (["prm", "icn"] if model.enhances else ["prm"]):
            if backend == "onnxruntime":
                graph = record["graphs"][name]
                if precision not in (None, "fp32"):
                    graph = graph.get("precisions", {}).get(precision)
                    if graph is None:
                        raise InputError(manifest.path(self.directory), f"no {precision} {name} graph; run "
                                         f"`icn-rt export MODEL --precision {precision}` first")
                self.engines[name] = OnnxRuntimeEngine(self.directory / graph["file"], self.device,
                                                       fp16=precision == "fp16", optimization=ort_optimization,
                                                       save_optimized=ort_save_optimized)
            elif backend == "tensorrt":
                plan = manifest.plan_record(self.directory, record, name)
                if precision is not None and plan.get("precision") != precision:
                    raise InputError(manifest.path(self.directory), f"the {name} plan is {plan.get('precision')}, "
                                     f"not {precision}; run `icn-rt build-engine MODEL --precision {precision}`")
                self.engines[name] = TensorRTEngine(self.directory / plan["file"], plan, self.device, cuda_graph)
            else:
                raise ValueError(f"graph engines run on onnxruntime or tensorrt, not {backend!r}")

    @property
    def prm(self) -> Engine:
        return self.engines["prm"]

    @property
    def icn(self) -> Engine | None:
        return self.engines.get("icn")
