"""``icn-rt build-engine MODEL``: TensorRT plans from the exported graphs (docs/design.md §4).

The precision lives in the graph (:mod:`icn_rt.export.precision`): ``--precision fp16``
builds ``prm.fp16.onnx`` and ``icn.fp16.onnx``, ``int8`` the Q/DQ graphs, both made by
``icn-rt export --precision``. Every network is built **strongly typed** — the only kind
TensorRT 11 builds, and available throughout 10.x — so no precision builder flag is set
and TensorRT runs each layer in the type the graph gives it. The one exception is DLA on
TensorRT 10 (Jetson Orin on JetPack 6), whose builds are weakly typed and need the FP16
or INT8 builder flag: that path exists only there, behind a version branch.

``--student`` (:func:`build_student_engine`) builds the student's graph instead: one
image a run, so no profile; its RoiAlign imports as TensorRT's ROIAlign plugin (the plugin
library is registered before parsing, and again by the runtime before deserializing).

Also: one optimisation profile over the batch axis (min / opt / max), a workspace limit,
a timing cache reused across builds, DLA with GPU fallback, and a progress monitor. Each
plan is recorded in the model's ``manifest.json`` with the GPU, its compute capability,
the TensorRT version, the graph's hash and the settings; the runtime's TensorRT engine
refuses a plan whose GPU or TensorRT version differs
(:func:`icn_rt.models.manifest.check_plan`).

Supported: TensorRT 10.0 to 11.x. Every TensorRT name used here exists in each supported
version or sits behind a version branch: ``tests/test_tensorrt_api.py`` checks that
against the names of each version's Python module (``tests/data/tensorrt_api/``). TensorRT
cannot be installed on this project's build machines; the tests that build and run plans
skip there, with the reason.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from icn_rt import extras
from icn_rt.errors import InputError
from icn_rt.export.onnx_export import PRECISIONS
from icn_rt.models import manifest as manifests
from icn_rt.progress import say


def is_jetson() -> bool:
    """A Jetson board (shared CPU/GPU memory): aarch64 with L4T's release file."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


SUPPORTED = (10, 11)
"""TensorRT major versions this module is written for (the ``gpu`` extra pins the same)."""


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


@dataclass
class BuildSettings:
    """``precision``: which exported graphs to build (``icn-rt export --precision``).
    ``batch``: (min, opt, max) of the PRM graph's image batch; ``icn_batch``: the same for
    the ICN graph's peak batch (default: 1, the ICN chunk, 4 × the chunk).
    ``workspace_mib``: TensorRT's scratch memory limit (default 4096, or 1024 on Jetson,
    whose GPU shares the board's memory). ``dla_core``: build for that DLA core with GPU
    fallback (Jetson Orin)."""

    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 8, 16)
    icn_batch: tuple[int, int, int] | None = None
    workspace_mib: int | None = None
    dla_core: int | None = None
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not (1 <= self.batch[0] <= self.batch[1] <= self.batch[2]):
            raise ValueError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {self.batch}")


def graph_file(directory: Path, manifest: dict, graph: str, precision: str) -> tuple[Path, str]:
    """The exported ``graph`` at ``precision`` (path, sha256); an :class:`InputError` saying
    how to make it when it was not exported."""
    record = manifest["graphs"][graph]
    if precision != "fp32":
        record = record.get("precisions", {}).get(precision)
        if record is None:
            raise InputError(manifests.path(directory), f"no {precision} {graph} graph; run `icn-rt export MODEL "
                                                        f"--precision {precision}` first")
    return directory / record["file"], record["sha256"]


def build_engines(directory: str | Path, settings: BuildSettings, device: str | torch.device = "cuda") -> dict:
    """Build a plan for every graph of the model's manifest; returns the updated manifest."""
    trt, device = _tensorrt(device)
    directory = Path(directory)
    manifest = manifests.read(directory)
    files = {graph: graph_file(directory, manifest, graph, settings.precision) for graph in manifest["graphs"]}
    maker = _Builder(trt, directory, settings)
    plans = {}
    for graph, (onnx_path, onnx_sha256) in files.items():
        batch = settings.batch if graph == "prm" else (settings.icn_batch or _icn_batch(manifest))
        plan_path = directory / f"{graph}.{settings.precision}.plan"
        plans[graph] = maker.build(graph, onnx_path, onnx_sha256, plan_path, batch, device)
    manifest["plans"] = plans
    manifests.write(directory, manifest)
    return manifest


def build_student_engine(directory: str | Path, settings: BuildSettings, device: str | torch.device = "cuda") -> dict:
    """The student's plan at ``settings.precision`` (``student.<precision>.plan``) from its
    exported graph (``icn-rt export MODEL --student``; int8 from the signed symmetric form
    ``student.int8.s8.onnx``), recorded under ``plans`` in ``student.onnx.json``; returns
    that record. The graph takes one image a run at the student's side, so the plan has no
    batch profile; the detections' count, the outputs' first axis, is known to TensorRT
    only as it runs (the runtime's output allocator takes it)."""
    import json

    from icn_rt.models.student import (STUDENT_RECORD, export_hint, read_student_record, student_graph_record,
                                       student_plan_file)

    trt, device = _tensorrt(device)
    directory = Path(directory)
    record_path = directory / STUDENT_RECORD
    record = read_student_record(directory, settings.precision)
    graph = student_graph_record(record, settings.precision, tensorrt=True)
    if graph is None:
        raise InputError(record_path, f"no {settings.precision} student graph for TensorRT; run "
                                      f"{export_hint(settings.precision)} first")
    maker = _Builder(trt, directory, settings)
    plan_path = directory / student_plan_file(settings.precision)
    plan = maker.build("student", directory / graph["file"], graph["sha256"], plan_path, (1, 1, 1), device)
    record.setdefault("plans", {})[settings.precision] = plan
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _tensorrt(device: str | torch.device):
    """TensorRT's module, once checked usable here, and the device to build for."""
    trt = extras.require("tensorrt", then="run `icn-rt build-engine` again")
    device = torch.device(device)
    if tensorrt_major(trt) not in SUPPORTED:
        raise RuntimeError(f"TensorRT {trt.__version__} is not supported; install TensorRT 10 or 11 "
                           "(`pip install 'icn-rt[gpu]'`)")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("building TensorRT plans needs a CUDA GPU")
    return trt, device


class _Builder:
    """One TensorRT builder with the settings every plan of a build shares: the workspace,
    the timing cache (read before each plan, written after), typing and DLA."""

    def __init__(self, trt, directory: Path, settings: BuildSettings) -> None:
        self.trt, self.settings = trt, settings
        self.workspace = settings.workspace_mib or (1024 if is_jetson() else 4096)
        self.cache_path = Path(settings.timing_cache) if settings.timing_cache else directory / "timing.cache"
        self.logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self.logger, "")  # the student's RoiAlign imports as TensorRT's ROIAlign plugin
        self.builder = trt.Builder(self.logger)

    def build(self, name: str, onnx_path: Path, onnx_sha256: str, plan_path: Path, batch: tuple[int, int, int],
              device: torch.device) -> dict:
        """Parse ``onnx_path``, build, write ``plan_path`` -> the plan's record. ``batch``:
        (min, opt, max) of the inputs' first axis where the graph leaves it dynamic."""
        trt, settings, builder = self.trt, self.settings, self.builder
        weakly_typed = settings.dla_core is not None and tensorrt_major(trt) < 11
        if weakly_typed:  # DLA on TensorRT 10: weakly typed, the precision as builder flags
            network = builder.create_network(0)
        else:
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InputError(onnx_path, f"TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names in `bench --profile-layers`
        dynamic = [network.get_input(i) for i in range(network.num_inputs) if tuple(network.get_input(i).shape)[0] < 0]
        if dynamic:
            profile = builder.create_optimization_profile()
            for tensor in dynamic:
                rest = tuple(tensor.shape)[1:]
                profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
            config.add_optimization_profile(profile)
        if settings.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = settings.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
            if weakly_typed:
                config.set_flag(trt.BuilderFlag.FP16)
                if settings.precision == "int8":
                    config.set_flag(trt.BuilderFlag.INT8)
        cache_path = self.cache_path
        timing = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        config.progress_monitor = _monitor(trt, name)
        say(f"building the {name} plan ({settings.precision}, {'weakly' if weakly_typed else 'strongly'} typed"
            + (f", batch {batch[0]}/{batch[1]}/{batch[2]}" if dynamic else "")
            + f", workspace {self.workspace} MiB"
            + ("" if settings.dla_core is None else f", DLA core {settings.dla_core}") + ")")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT could not build a plan from {onnx_path} (see its log above)")
        plan_path.write_bytes(bytes(plan))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        say(f"wrote {plan_path} ({plan_path.stat().st_size / 2**20:.1f} MiB)")
        return {"file": plan_path.name, "sha256": manifests.file_sha256(plan_path),
                "onnx_file": onnx_path.name, "onnx_sha256": onnx_sha256, "precision": settings.precision,
                "strongly_typed": not weakly_typed, "batch": list(batch) if dynamic else None,
                "workspace_mib": self.workspace, "dla_core": settings.dla_core, "tensorrt": trt.__version__,
                "gpu": manifests.current_gpu(device), "jetson": is_jetson(), "timing_cache": str(cache_path),
                "settings": {k: v for k, v in asdict(settings).items() if k != "timing_cache"}}


def _icn_batch(manifest: dict) -> tuple[int, int, int]:
    chunk = int(manifest["settings"]["icn"]["chunk"])
    return (1, chunk, 4 * chunk)


def _monitor(trt, graph: str):
    """One line per top-level build phase (TensorRT's ``IProgressMonitor``)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            if parent_phase is None:
                say(f"  {graph}: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step) -> bool:
            return True

        def phase_finish(self, phase_name) -> None:
            pass

    return Monitor()
