"""``icn-rt build-engine MODEL``: TensorRT plans from the exported graphs (DESIGN.md §4).

The precision lives in the graph (:mod:`icn_rt.export.precision`): ``--precision fp16``
builds ``prm.fp16.onnx`` and ``icn.fp16.onnx``, ``int8`` the Q/DQ graphs, both made by
``icn-rt export --precision``. Every network is built **strongly typed** — the only kind
TensorRT 11 builds, and available throughout 10.x — so no precision builder flag is set
and TensorRT runs each layer in the type the graph gives it. The one exception is DLA on
TensorRT 10 (Jetson Orin on JetPack 6), whose builds are weakly typed and need the FP16
or INT8 builder flag: that path exists only there, behind a version branch.

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
    trt = extras.require("tensorrt", then="run `icn-rt build-engine` again")
    directory, device = Path(directory), torch.device(device)
    if tensorrt_major(trt) not in SUPPORTED:
        raise RuntimeError(f"TensorRT {trt.__version__} is not supported; install TensorRT 10 or 11 "
                           "(`pip install 'icn-rt[gpu]'`)")
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("building TensorRT plans needs a CUDA GPU")
    manifest = manifests.read(directory)
    files = {graph: graph_file(directory, manifest, graph, settings.precision) for graph in manifest["graphs"]}
    workspace = settings.workspace_mib or (1024 if is_jetson() else 4096)
    cache_path = Path(settings.timing_cache) if settings.timing_cache else directory / "timing.cache"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    weakly_typed = settings.dla_core is not None and tensorrt_major(trt) < 11
    plans = {}
    for graph, (onnx_path, onnx_sha256) in files.items():
        batch = settings.batch if graph == "prm" else (settings.icn_batch or _icn_batch(manifest))
        if weakly_typed:  # DLA on TensorRT 10: weakly typed, the precision as builder flags
            network = builder.create_network(0)
        else:
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InputError(onnx_path, f"TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names in `bench --profile-layers`
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
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
        timing = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        config.progress_monitor = _monitor(trt, graph)
        say(f"building the {graph} plan ({settings.precision}, {'weakly' if weakly_typed else 'strongly'} typed, "
            f"batch {batch[0]}/{batch[1]}/{batch[2]}, workspace {workspace} MiB"
            f"{'' if settings.dla_core is None else f', DLA core {settings.dla_core}'})")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT could not build a plan from {onnx_path} (see its log above)")
        plan_path = directory / f"{graph}.{settings.precision}.plan"
        plan_path.write_bytes(bytes(plan))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        plans[graph] = {"file": plan_path.name, "sha256": manifests.file_sha256(plan_path),
                        "onnx_file": onnx_path.name, "onnx_sha256": onnx_sha256, "precision": settings.precision,
                        "strongly_typed": not weakly_typed, "batch": list(batch),
                        "workspace_mib": workspace, "dla_core": settings.dla_core, "tensorrt": trt.__version__,
                        "gpu": manifests.current_gpu(device), "jetson": is_jetson(), "timing_cache": str(cache_path),
                        "settings": {k: v for k, v in asdict(settings).items() if k != "timing_cache"}}
        say(f"wrote {plan_path} ({plan_path.stat().st_size / 2**20:.1f} MiB)")
    manifest["plans"] = plans
    manifests.write(directory, manifest)
    return manifest


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
