"""``icn-rt build-engine MODEL``: TensorRT plans from the exported graphs (DESIGN.md §4).

Written against TensorRT's documented Python API (8.6 and 10.x): ``OnnxParser``, one
optimisation profile over the batch axis (min / opt / max), a workspace limit, FP16 and
INT8 flags, INT8 entropy calibration (``IInt8EntropyCalibrator2``) on images of a VOC
directory with a calibration cache, a timing cache reused across builds, DLA with GPU
fallback for Jetson, and a progress monitor where TensorRT has one (10.x). Each plan is
recorded in the model's ``manifest.json`` with the GPU, its compute capability, the
TensorRT version and the settings; the runtime's TensorRT engine refuses a plan whose
GPU or TensorRT version differs (:func:`icn_rt.models.manifest.check_plan`).

TensorRT cannot be installed on this project's build machines; the tests that build and
run plans skip there, with the reason.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from icn_rt import extras
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.errors import InputError
from icn_rt.models import manifest as manifests
from icn_rt.models.store import load_model
from icn_rt.progress import say

PRECISIONS = ("fp32", "fp16", "int8")


def is_jetson() -> bool:
    """A Jetson board (shared CPU/GPU memory): aarch64 with L4T's release file."""
    return platform.machine() == "aarch64" and Path("/etc/nv_tegra_release").exists()


@dataclass
class BuildSettings:
    """``batch``: (min, opt, max) of the PRM graph's image batch; ``icn_batch``: the same
    for the ICN graph's peak batch (default: 1, the ICN chunk, 4 × the chunk).
    ``workspace_mib``: TensorRT's scratch memory limit (default 4096, or 1024 on Jetson,
    whose GPU shares the board's memory). ``dla_core``: build for that DLA core with GPU
    fallback (Jetson Xavier/Orin). ``calibration``: VOC root whose ``calibration_split``
    images calibrate INT8 (``calibration_images`` of them, ``calibration_batch`` a batch)."""

    precision: str = "fp16"
    batch: tuple[int, int, int] = (1, 8, 16)
    icn_batch: tuple[int, int, int] | None = None
    workspace_mib: int | None = None
    dla_core: int | None = None
    calibration: str | None = None
    calibration_split: str = "train"
    calibration_images: int = 256
    calibration_batch: int = 8
    timing_cache: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not (1 <= self.batch[0] <= self.batch[1] <= self.batch[2]):
            raise ValueError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {self.batch}")
        if self.precision == "int8" and not self.calibration:
            raise ValueError("INT8 needs calibration images: give --calibration VOCROOT")


def _calibration_feeds(directory: Path, settings: BuildSettings, graph: str, device: torch.device) -> list[dict]:
    """Batches of the graph's inputs on ``device`` from the calibration images: the PRM
    graph takes the images; the ICN graph takes each peak's image and naive PRM (made by
    the model in PyTorch)."""
    from icn_rt.data.images import read_image
    from icn_rt.data.voc import VOCDataset

    model = load_model(directory, device)
    ds = VOCDataset(settings.calibration, settings.calibration_split, load_images=False)
    ids = ds.ids[: settings.calibration_images]
    feeds = []
    for start in range(0, len(ids), settings.calibration_batch):
        images = [read_image(ds.image_path(i)) for i in ids[start: start + settings.calibration_batch]]
        naive = model.naive_maps(preprocess_batch(images, model.input_size).to(device))
        if graph == "prm":
            feeds.append({"images": naive.x.contiguous()})
        elif len(naive.peaks):
            feeds.append({"images": naive.x[naive.peaks.image].contiguous(), "prms": naive.prms.contiguous()})
    return feeds


def build_engines(directory: str | Path, settings: BuildSettings, device: str | torch.device = "cuda") -> dict:
    """Build a plan for every graph of the model's manifest; returns the updated manifest."""
    trt = extras.require("tensorrt", then="run `icn-rt build-engine` again")
    directory, device = Path(directory), torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise RuntimeError("building TensorRT plans needs a CUDA GPU")
    manifest = manifests.read(directory)
    workspace = settings.workspace_mib or (1024 if is_jetson() else 4096)
    cache_path = Path(settings.timing_cache) if settings.timing_cache else directory / "timing.cache"
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    plans = {}
    for graph, record in manifest["graphs"].items():
        onnx_path = directory / record["file"]
        batch = settings.batch if graph == "prm" else (settings.icn_batch or _icn_batch(manifest))
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise InputError(onnx_path, f"TensorRT's ONNX parser failed: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            rest = tuple(tensor.shape)[1:]
            profile.set_shape(tensor.name, (batch[0], *rest), (batch[1], *rest), (batch[2], *rest))
        config.add_optimization_profile(profile)
        if settings.precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
        calibrator = None
        if settings.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            calibrator = _calibrator(trt, _calibration_feeds(directory, settings, graph, device),
                                     directory / f"{graph}.int8.calibration")
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        if settings.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = settings.dla_core
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        timing = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
        config.set_timing_cache(timing, False)
        monitor = _monitor(trt, graph)
        if monitor is not None:
            config.progress_monitor = monitor
        say(f"building the {graph} plan ({settings.precision}, batch {batch[0]}/{batch[1]}/{batch[2]}, workspace "
            f"{workspace} MiB{'' if settings.dla_core is None else f', DLA core {settings.dla_core}'})")
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT could not build a plan from {onnx_path} (see its log above)")
        plan_path = directory / f"{graph}.{settings.precision}.plan"
        plan_path.write_bytes(bytes(plan))
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
        plans[graph] = {"file": plan_path.name, "sha256": manifests.file_sha256(plan_path),
                        "onnx_sha256": record["sha256"], "precision": settings.precision, "batch": list(batch),
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


def _calibrator(trt, feeds: list[dict], cache: Path):
    """An entropy calibrator over ``feeds`` (device tensors), with a cache file."""
    if not feeds and not cache.is_file():
        raise RuntimeError("no calibration batches (no peaks found in the calibration images?)")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.next = 0

        def get_batch_size(self) -> int:
            return int(next(iter(feeds[0].values())).shape[0]) if feeds else 1

        def get_batch(self, names):
            if self.next >= len(feeds):
                return None
            batch = feeds[self.next]
            self.next += 1
            torch.cuda.synchronize()
            return [int(batch[name].data_ptr()) for name in names]

        def read_calibration_cache(self):
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data) -> None:
            cache.write_bytes(bytes(data))

    return Calibrator()


def _monitor(trt, graph: str):
    """One line per top-level build phase (TensorRT 10's IProgressMonitor), else None."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

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
