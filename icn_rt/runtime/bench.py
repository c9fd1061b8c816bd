"""``icn-rt bench``: the pipeline's speed, stage by stage, beside the baseline.

On the same images in one process (ratios hold on a noisy machine), after a warm-up:

- ``baseline``: the PRM authors' style of pipeline (:mod:`icn_rt.baseline`: one image
  at a time, one autograd backward per peak, a Python loop over proposals with OpenCV),
  with PRM's rules (median peaks, excitation backprop, vanilla matching at the input);
- ``icn-rt, PRM rules``: icn-rt's predictor set to the same rules (eager torch), whose
  instances are checked against the baseline's — the like-for-like speed-up;
- ``icn-rt, model``: the model as configured (its ICN, rebalanced matching) on each
  backend that is present;
- ``student``: the model's student (``icn-rt train student``), when it has one, on
  each backend asked for that it has (torch; onnxruntime once ``icn-rt export --student``
  made its graphs; TensorRT once ``icn-rt build-engine --student`` built its plans), at its
  own input side; it reads no proposals, so its images/s is end to end where the pipeline's
  needs its proposals already made (selective search on the fly: ``benchmarks/student.py``).

Per contestant and batch size: ``warmup`` untimed batches, then passes over the images
until at least ``iterations`` batches (and ``duration`` seconds, when given) are timed —
as trtexec's ``--warmUp``/``--iterations``/``--duration``; the instances are taken from
the first pass. Latency per batch of every stage (decode, proposals, preprocess, PRM
graph, ICN graph, matching, NMS) and of the whole batch: median, and p90 / p99 only from
at least :data:`LEAST_SAMPLES` samples (each with its count ``n``); images/s of the predictor (decode and proposal reading are timed per image apart:
``icn-rt infer`` runs them in parallel loader workers) and the ratio to the baseline.
Writes JSON with the machine and versions, and a PNG plot.
"""

from __future__ import annotations

import resource
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from icn_rt.baseline import BaselineSettings
from icn_rt.baseline import run_baseline as baseline_instances
from icn_rt.baseline.excitation import excitation_backward
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_array
from icn_rt.data.proposals import Proposals, load_proposals, proposal_path
from icn_rt.errors import InputError
from icn_rt.eval.bootstrap import difference, draws, intervals
from icn_rt.eval.coco import as_json
from icn_rt.eval.report import score
from icn_rt.machine import machine_info
from icn_rt.matching import InstanceSettings, MatchingSettings
from icn_rt.models.peaks import PeakSettings, find_peaks
from icn_rt.models.prm import PRMSettings, input_gradients, recorded_forward
from icn_rt.models.store import CLASSIFIER, ICN_WEIGHTS, Model
from icn_rt.progress import Counter
from icn_rt.runtime.engines.onnxruntime import ORT_OPTIMIZATION
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.predictor import Predictor
from icn_rt.runtime.timing import StageTimes

STAGES = ("decode", "proposals", "preprocess", "prm", "icn", "matching", "nms", "student", "masks")
LEAST_SAMPLES = 20
"""No p90/p99 from fewer samples than this (they are None, with ``n`` saying why)."""


@dataclass
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 4, 16)
    backends: tuple[str, ...] = ("torch", "onnxruntime", "tensorrt")
    images: int = 32
    baseline: bool = True
    device: str = "cpu"
    warmup: int = 1
    iterations: int = LEAST_SAMPLES
    duration: float | None = None
    evaluation: EvalSettings | None = None
    cuda_graph: bool = False  # each TensorRT contestant also as CUDA graphs
    profile_layers: bool = False  # TensorRT's per-layer times at the largest batch size
    progress: bool = True  # a bar per contestant (stderr)
    ort_optimization: str = "all"  # onnxruntime's session options (OnnxRuntimeEngine)
    ort_save_optimized: bool = False
    backward_cost: bool = True  # a peak's backward in forward passes (see backward_cost)

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.iterations < 1 or (self.duration is not None and self.duration <= 0):
            raise ValueError("--warmup must be >= 0, --iterations >= 1 and --duration > 0")
        if self.ort_optimization not in ORT_OPTIMIZATION:
            raise ValueError(f"unknown onnxruntime optimisation level {self.ort_optimization!r}; choose one of "
                             f"{', '.join(ORT_OPTIMIZATION)}")


@dataclass
class EvalSettings:
    """``bench --eval``: every backend's accuracy on a split of a VOC-layout ``root``
    (proposals from ``proposals``, default ``root/Proposals``), mAP^r@0.5 with a
    ``level`` bootstrap interval over the images (``samples`` draws, ``seed``), and its
    difference to eager torch fp32 on the same draws."""

    root: Path
    split: str = "val"
    proposals: Path | None = None
    samples: int = 1000
    seed: int = 0
    level: float = 0.95


@dataclass
class Item:
    image_id: str
    image: np.ndarray
    proposals: Proposals
    x: np.ndarray


@dataclass
class Run:
    """One contestant at one batch size."""

    name: str
    backend: str
    batch_size: int
    seconds: list[float] = field(default_factory=list)  # per batch
    stages: dict[str, list[float]] = field(default_factory=dict)  # per batch
    instances: list[list[tuple[int, int]]] = field(default_factory=list)  # (class, proposal) per image
    scores: list[list[float]] = field(default_factory=list)
    gpu_memory: int | None = None
    images_timed: int = 0

    def to_json(self, baseline_rate: float | None) -> dict:
        rate = self.images_timed / sum(self.seconds)
        return {"contestant": self.name, "backend": self.backend, "batch_size": self.batch_size,
                "images_per_s": rate, "speedup_vs_baseline": rate / baseline_rate if baseline_rate else None,
                "latency_s": {"total": percentiles(self.seconds), **{k: percentiles(v) for k, v in self.stages.items()}},
                "stage_shares": {k: sum(v) / sum(self.seconds) for k, v in self.stages.items()},
                "images_timed": self.images_timed, "gpu_peak_bytes": self.gpu_memory}


def percentiles(values: list[float], least: int = LEAST_SAMPLES) -> dict:
    """Median, and p90 / p99 when there are at least ``least`` samples (else None)."""
    v = np.asarray(values, np.float64)
    enough = len(v) >= least
    return {"median": float(np.median(v)), "p90": float(np.percentile(v, 90)) if enough else None,
            "p99": float(np.percentile(v, 99)) if enough else None, "n": len(v)}


def load_items(paths: list[Path], proposals_dir: Path, input_size: int, count: int) -> tuple[list[Item], dict]:
    """Decode every image and read its proposals once, timing both per image; ``count``
    items cycling through them."""
    items, times = [], {"decode": [], "proposals": []}
    for path in paths:
        start = time.perf_counter()
        image = read_image(path)
        mid = time.perf_counter()
        props = load_proposals(proposal_path(proposals_dir, path.stem), expected_shape=image.shape[:2])
        times["decode"].append(mid - start)
        times["proposals"].append(time.perf_counter() - mid)
        items.append(Item(path.stem, image, props, preprocess_array(image, input_size)))
    if not items:
        raise InputError(proposals_dir, "no images to benchmark")
    return [items[i % len(items)] for i in range(count)], times


def run_predictor(predictor, name: str, items: list[Item], batch_size: int, warmup: int = 1,
                  iterations: int = 1, duration: float | None = None, progress: bool = False) -> Run:
    """The items through ``predictor`` in batches: ``warmup`` batches untimed, then passes
    until at least ``iterations`` batches and ``duration`` seconds are timed (the
    instances: the first pass's); as ``icn-rt infer`` without pictures (and as the
    baseline), no per-instance maps. ``progress``: a bar over the images (its total
    unknown when ``duration`` decides)."""
    run = Run(name, predictor.backend, batch_size)
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    passes = -(-iterations // len(batches))
    bar = Counter(f"{name}, {predictor.backend}, batch {batch_size}", None if duration else passes * len(items),
                  "img", show=progress)
    cuda = predictor.device.type == "cuda"
    for k in range(warmup):
        batch = batches[k % len(batches)]
        predictor.predict([b.image for b in batch], [b.proposals for b in batch], [b.x for b in batch],
                          keep_maps=False)
    if cuda:
        torch.cuda.synchronize(predictor.device)
        torch.cuda.reset_peak_memory_stats(predictor.device)
    timer = StageTimes(predictor.device)
    first, began = True, time.perf_counter()
    while first or len(run.seconds) < iterations or (duration and time.perf_counter() - began < duration):
        for batch in batches:
            start = time.perf_counter()
            found = predictor.predict([b.image for b in batch], [b.proposals for b in batch], [b.x for b in batch],
                                      keep_maps=False, timer=timer)
            if cuda:
                torch.cuda.synchronize(predictor.device)
            run.seconds.append(time.perf_counter() - start)
            run.images_timed += len(batch)
            bar.advance(len(batch))
            for stage, seconds in timer.take().items():
                run.stages.setdefault(stage, []).append(seconds)
            if first:
                run.instances += [[(i.class_id, i.proposal) for i in p.instances] for p in found]
                run.scores += [[i.score for i in p.instances] for p in found]
        first = False
    bar.close()
    if cuda:
        run.gpu_memory = int(torch.cuda.max_memory_allocated(predictor.device))
    return run


def prm_rules(predictor):
    """The predictor's classifier set to PRM's rules — the baseline's, so both find the same
    instances (no ICN)."""
    m = predictor.model
    rules = Model(m.classifier, m.classes,
                  PeakSettings(rule="median", class_threshold=m.peaks.class_threshold,
                               peak_threshold=m.peaks.peak_threshold, max_peaks=0),
                  PRMSettings("excitation"),
                  MatchingSettings(score="vanilla", at="input", max_proposals=m.matching.max_proposals,
                                   area_limits=m.matching.area_limits),
                  InstanceSettings(nms_iou=m.instances.nms_iou, confidence="match"))
    return Predictor(rules, predictor.device)


def run_baseline(predictor, items: list[Item], progress: bool = False) -> Run:
    """The baseline on every item, one at a time (after one warm-up image); ``progress``:
    a bar over the images."""
    m = predictor.model
    most = max(len(item.proposals) for item in items)
    settings = BaselineSettings(
        input_size=m.input_size, class_threshold=m.peaks.class_threshold, peak_threshold=m.peaks.peak_threshold,
        max_proposals=m.matching.max_proposals or most, area_limits=tuple(m.matching.area_limits),
        nms_iou=m.instances.nms_iou)
    model = m.classifier
    baseline_instances(model, items[0].image, items[0].proposals, settings)
    run = Run("baseline", "torch", 1)
    bar = Counter("baseline", len(items), "img", show=progress)
    for item in items:
        start = time.perf_counter()
        found = baseline_instances(model, item.image, item.proposals, settings)
        run.seconds.append(time.perf_counter() - start)
        run.images_timed += 1
        run.instances.append([(i.class_id, i.proposal) for i in found])
        run.scores.append([i.score for i in found])
        bar.advance()
    bar.close()
    return run


def peak_counts(items: list[Item], settings_of: dict[str, Model]) -> dict[str, float]:
    """Peaks per image (over the distinct images) under each named settings (one eager
    forward per image)."""
    model = next(iter(settings_of.values()))
    model.eager_layout()
    distinct = list({item.image_id: item for item in items}.values())
    counts = {name: [] for name in settings_of}
    for item in distinct:
        x = torch.as_tensor(item.x)[None].to(model.device)
        rec = recorded_forward(model.classifier.eval(), x)
        for name, settings in settings_of.items():
            counts[name].append(len(find_peaks(rec.maps.float(), rec.scores.float(), settings.peaks,
                                               model.classifier.settings.sub_pixel)))
    return {name: float(np.mean(c)) for name, c in counts.items()}


def backward_cost(model: Model, item: Item, rules: dict[str, Model], repeats: int = 3) -> dict:
    """What a peak's backward costs, in seconds and in forward passes of one image: on
    ``item``, one recorded forward, then for each named settings in ``rules`` its peaks'
    batched backward (eager; the local VJP where it pays) beside a per-peak autograd loop
    on the same peaks (for the excitation rule, through the baseline's patched
    convolutions). Medians of ``repeats`` interleaved runs."""
    classifier = model.classifier.eval()
    model.eager_layout()
    x = torch.as_tensor(item.x)[None].to(model.device)

    def timed(f) -> float:
        start = time.perf_counter()
        f()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return time.perf_counter() - start

    rec = recorded_forward(classifier, x)
    forward = [timed(lambda: recorded_forward(classifier, x)) for _ in range(repeats)]
    out = {"image": item.image_id, "forward_s": float(np.median(forward)), "rules": {}}
    for name, settings in rules.items():
        peaks = find_peaks(rec.maps.float(), rec.scores.float(), settings.peaks, classifier.settings.sub_pixel)
        if len(peaks) == 0:
            out["rules"][name] = {"rule": settings.prm.rule, "peaks": 0}
            continue
        xr = x.clone().requires_grad_(True)
        patch = excitation_backward(classifier) if settings.prm.rule == "excitation" else nullcontext()
        with patch, torch.enable_grad():
            maps = classifier.class_maps(xr.contiguous(memory_format=torch.channels_last)
                                         if rec.channels_last else xr)

            def loop():
                for k in range(len(peaks)):
                    torch.autograd.grad(maps[0, peaks.cls[k], peaks.y[k], peaks.x[k]], xr, retain_graph=True)

            batched, autograd = [], []
            for _ in range(repeats):
                batched.append(timed(lambda: input_gradients(classifier, rec, peaks, settings.prm.rule)))
                autograd.append(timed(loop))
        per_peak = float(np.median(batched)) / len(peaks)
        loop_per_peak = float(np.median(autograd)) / len(peaks)
        out["rules"][name] = {"rule": settings.prm.rule, "peaks": len(peaks), "per_peak_s": per_peak,
                              "forwards_per_peak": per_peak / out["forward_s"],
                              "autograd_loop_per_peak_s": loop_per_peak,
                              "autograd_loop_forwards_per_peak": loop_per_peak / out["forward_s"]}
    return out


def same_instances(a: Run, b: Run) -> bool:
    """The same (class, proposal) per image in the same order, scores to float32 rounding."""
    return a.instances == b.instances and all(np.allclose(x, y, rtol=1e-4, atol=0) for x, y in zip(a.scores, b.scores))


def bench(model_dir: Path, paths: list[Path], proposals_dir: Path, settings: BenchSettings, log=print) -> dict:
    """Run every contestant; returns the report (see the module's docstring)."""
    model = Predictor.from_dir(model_dir, settings.device)
    items, load_times = load_items(paths, proposals_dir, model.input_size, settings.images)
    runs: list[Run] = []
    skipped: dict[str, str] = {}
    base = None
    settings_of = {"model": model.model}
    if settings.baseline:
        log("baseline (one image at a time)")
        base = run_baseline(model, items, settings.progress)
        rules = prm_rules(model)
        settings_of["PRM rules"] = rules.model
        for b in settings.batch_sizes:
            log(f"icn-rt, PRM rules, torch, batch {b}")
            runs.append(run_predictor(rules, "icn-rt, PRM rules", items, b, settings.warmup, settings.iterations,
                                      settings.duration, settings.progress))
    predictors = {"torch": model}
    runs += contestant_runs(model_dir, False, items, settings, skipped, log, predictors)
    runs += contestant_runs(model_dir, True, items, settings, skipped, log)
    base_rate = base.images_timed / sum(base.seconds) if base else None
    rows = ([{**base.to_json(base_rate), "same_instances_as_baseline": True}] if base else [])
    for run in runs:
        row = run.to_json(base_rate)
        row["same_instances_as_baseline"] = same_instances(run, base) if base and run.name.endswith("PRM rules") \
            else None
        rows.append(row)
    like = [r for r in rows if r["contestant"] == "icn-rt, PRM rules"]
    return {
        "benchmark": "icn-rt bench",
        "machine": machine_info(),
        "model": str(model_dir),
        "device": settings.device,
        "images": len(items),
        "onnxruntime_session": {"optimization": settings.ort_optimization,
                                "save_optimized": settings.ort_save_optimized},
        "warmup_batches": settings.warmup, "least_timed_batches": settings.iterations,
        "least_seconds": settings.duration, "least_samples_for_percentiles": LEAST_SAMPLES,
        "distinct_images": len(paths),
        "input_size": model.input_size,
        "image_sizes": sorted({tuple(i.image.shape[:2]) for i in items}),
        "proposals_per_image": float(np.mean([len(i.proposals) for i in items])),
        "baseline_instances_per_image": float(np.mean([len(x) for x in base.instances])) if base else None,
        "peaks_per_image": peak_counts(items, settings_of),
        "backward": backward_cost(model.model, items[0], settings_of) if settings.backward_cost else None,
        "per_image_load_s": {k: percentiles(v) for k, v in load_times.items()},
        "rows": rows,
        "best_like_for_like_speedup": max((r["speedup_vs_baseline"] for r in like), default=None),
        "skipped": skipped,
        "tensorrt_layers": tensorrt_layers(predictors, items, max(settings.batch_sizes), settings.iterations, log)
        if settings.profile_layers else None,
        "accuracy": accuracy(predictors, settings.evaluation, log, settings.progress) if settings.evaluation else None,
        "peak_host_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def contestant_runs(model_dir: Path, student: bool, items: list[Item], settings: BenchSettings,
                    skipped: dict[str, str], log=print, predictors: dict | None = None) -> list[Run]:
    """The model's pipeline (``icn-rt, model``) or its student on each of ``settings.backends``
    (and, with ``cuda_graph``, the pipeline's TensorRT ones replaying CUDA graphs) at every
    batch size, on the same images (the student's at its own input side). A backend that
    cannot run (no graph, no plan, not installed, not one the student runs on) is skipped
    with the reason; a model without a student has no student rows. ``predictors`` collects
    the pipeline's, by backend, for ``--eval`` and the layer profile."""
    from icn_rt.models.store import STUDENT_WEIGHTS
    from icn_rt.runtime.infer import PredictorSpec
    from icn_rt.runtime.student import STUDENT_BACKENDS

    if student and not (Path(model_dir) / STUDENT_WEIGHTS).is_file():
        return []
    label = "student" if student else "icn-rt, model"
    specs = [(backend, False) for backend in settings.backends]
    if settings.cuda_graph and not student:
        specs += [(backend, True) for backend in settings.backends if backend.partition(":")[0] == "tensorrt"]
    runs, mine = [], items
    for backend, graphed in specs:
        name = f"{label}, {backend}{'+cuda-graph' if graphed else ''}"
        if student and backend not in STUDENT_BACKENDS:
            skipped[name] = f"the student runs on {', '.join(STUDENT_BACKENDS)}"
            continue
        try:
            reused = predictors.get(backend) if predictors is not None and not graphed else None
            predictor = reused or PredictorSpec(
                str(model_dir), student, backend, settings.device, cuda_graph=graphed,
                ort_optimization=settings.ort_optimization, ort_save_optimized=settings.ort_save_optimized).build()
        except (InputError, ValueError, RuntimeError, ImportError) as e:
            skipped[name] = str(e)
            continue
        if predictors is not None:
            predictors[predictor.backend] = predictor
        if predictor.input_size != items[0].x.shape[-1] and mine is items:
            mine = [Item(i.image_id, i.image, i.proposals, preprocess_array(i.image, predictor.input_size))
                    for i in items]
        for b in settings.batch_sizes:
            log(f"{label}, {predictor.backend}, batch {b}")
            runs.append(run_predictor(predictor, label, mine, b, settings.warmup, settings.iterations,
                                      settings.duration, settings.progress))
    return runs


def tensorrt_layers(predictors: dict[str, Predictor], items: list[Item], batch_size: int, runs: int,
                    log=print) -> dict:
    """Per TensorRT contestant (not its CUDA-graph twin: a graph replays what the plain
    plan runs), each plan's per-layer times on a batch of ``batch_size`` items
    (:meth:`~icn_rt.runtime.engines.tensorrt.TensorRTEngine.profile_layers`); the ICN
    plan on that batch's first peaks (one chunk)."""
    out = {}
    batch = [items[i % len(items)] for i in range(batch_size)]
    for name, predictor in predictors.items():
        graphs = predictor.graphs
        if graphs is None or graphs.backend != "tensorrt" or graphs.cuda_graph:
            continue
        log(f"per-layer profile: {name}, batch {batch_size}")
        x = predictor.network_input([b.image for b in batch], [b.x for b in batch])
        plans = {"prm": graphs.prm.profile_layers(runs, images=x)}
        if graphs.icn is not None:
            naive = predictor.naive_maps([b.image for b in batch], [b.x for b in batch])
            chunk = predictor.model.icn_settings.chunk
            if len(naive.peaks.image):
                plans["icn"] = graphs.icn.profile_layers(runs, images=naive.x[naive.peaks.image[:chunk]],
                                                         prms=naive.prms[:chunk])
        out[name] = plans
    return out


def model_bytes(predictor: Predictor) -> int:
    """The size of what the backend loads: the weight files for eager torch (whatever its
    autocast precision), the graph files or plans for the graph engines."""
    if predictor.graphs is not None:
        return sum(engine.path.stat().st_size for engine in predictor.graphs.engines.values())
    directory = predictor.model.directory
    return sum((directory / name).stat().st_size for name in (CLASSIFIER, ICN_WEIGHTS)
               if name != ICN_WEIGHTS or predictor.enhances)


def accuracy(predictors: dict[str, Predictor], settings: EvalSettings, log=print, progress: bool = False) -> dict:
    """Each backend's mAP^r@0.5 on the split (see :class:`EvalSettings`), eager torch fp32
    first: the reference of every difference."""
    from icn_rt.data.datasets import open_dataset

    dataset = open_dataset(settings.root, settings.split, load_images=False)
    images = [dataset.image_path(i) for i in dataset.ids]
    if not images:
        raise InputError(settings.root, f"split {settings.split!r} has no images to evaluate")
    weights = draws(len(images), settings.samples, settings.seed)
    proposals = settings.proposals or settings.root / "Proposals"
    scored = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, predictor in predictors.items():
            log(f"accuracy: {name} on {len(images)} {settings.split} images")
            results = Path(tmp) / f"{len(scored)}.json"
            infer(predictor, images, results, InferSettings(proposals=proposals, progress=progress))
            scored[name] = score(settings.root, results, settings.split, progress=False)
    ref = scored["torch"]
    ref_reps = [ref.metrics(w)["mAP@0.5"] for w in weights]
    rows = []
    for name, evaluation in scored.items():
        point = evaluation.metrics()["mAP@0.5"]
        reps = [evaluation.metrics(w)["mAP@0.5"] for w in weights] if name != "torch" else ref_reps
        row = {"backend": name, "model_bytes": model_bytes(predictors[name]),
               "mAP@0.5": intervals({"m": point}, [{"m": r} for r in reps], settings.level)["m"].to_json(),
               "minus_torch_fp32": None, "COCO": as_json(evaluation.coco.result())}
        if name != "torch":
            diff = intervals(difference({"m": point}, {"m": ref.metrics()["mAP@0.5"]}),
                             [{"m": a - b} for a, b in zip(reps, ref_reps)], settings.level)["m"]
            row["minus_torch_fp32"] = {**diff.to_json(), "excludes_zero": diff.excludes_zero()}
        rows.append(row)
    return {"root": str(settings.root), "split": settings.split, "proposals": str(proposals), "images": len(images),
            "bootstrap": {"samples": settings.samples, "seed": settings.seed, "level": settings.level,
                          "unit": "image"},
            "rows": rows}


def write_report(report: dict, path: Path) -> dict:
    """``report`` as JSON at ``path``, as a table beside it (``.md``) and plotted (``.png``)."""
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(report))
    plot(report, path.with_suffix(".png"))
    return report


def markdown(report: dict) -> str:
    """The report as markdown tables: speed per contestant and batch size; with ``--eval``,
    size and accuracy per backend."""
    def ms(v):
        return "-" if v is None else f"{1e3 * v:.1f}"

    lines = [f"`{report.get('command', 'icn-rt bench')}`", "",
             f"{report['images']} images ({report['distinct_images']} distinct), input {report['input_size']}², "
             f"{report['device']} ({report['machine']['cpu_count']} CPU cores; the machine and versions in the "
             f"JSON). "
             f"ms/batch: median, p90, p99 over n timed batches (p90/p99 only from {LEAST_SAMPLES} or more).", "",
             "| contestant | backend | batch | images/s | × baseline | same instances | ms/batch | p90 | p99 | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        t = r["latency_s"]["total"]
        same = {True: "yes", False: "NO", None: "-"}[r["same_instances_as_baseline"]]
        ratio = r["speedup_vs_baseline"]
        lines.append(f"| {r['contestant']} | {r['backend']} | {r['batch_size']} | {r['images_per_s']:.2f} | "
                     f"{'-' if ratio is None else f'{ratio:.2f}'} | {same} | {ms(t['median'])} | {ms(t['p90'])} | "
                     f"{ms(t['p99'])} | {t['n']} |")
    lines += ["", *backward_lines(report)]
    acc = report.get("accuracy")
    if acc:
        def cell(m):
            lo, hi = m["interval"]
            return "-" if m["estimate"] is None else f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

        b = acc["bootstrap"]
        lines += ["", f"Accuracy on the `{acc['split']}` split of `{acc['root']}` ({acc['images']} images); "
                      f"{100 * b['level']:g}% bootstrap intervals over the images ({b['samples']} draws, seed "
                      f"{b['seed']}); the difference is paired (same draws). ~0: its interval holds 0.", "",
                  "| backend | size (MB) | mAP^r@0.5 | − torch fp32 | COCO AP | COCO AP50 |",
                  "|---|---|---|---|---|---|"]
        for r in acc["rows"]:
            d = r["minus_torch_fp32"]
            diff = "(reference)" if d is None else cell(d) + ("" if d["excludes_zero"] else " ~0")
            coco = [r.get("COCO", {}).get(k) for k in ("AP", "AP50")]
            lines.append(f"| {r['backend']} | {r['model_bytes'] / 1e6:.2f} | {cell(r['mAP@0.5'])} | {diff} | "
                         + " | ".join("-" if v is None else f"{v:.1f}" for v in coco) + " |")
    if report["skipped"]:
        lines += ["", *(f"- skipped {k}: {v}" for k, v in report["skipped"].items())]
    return "\n".join(lines) + "\n"


def backward_lines(report: dict) -> list[str]:
    """Peaks per image and a peak's backward against one forward pass, in words."""
    out = []
    if report.get("peaks_per_image"):
        out.append("Peaks per image: " + ", ".join(f"{k} {v:.1f}" for k, v in report["peaks_per_image"].items()) + ".")
    cost = report.get("backward")
    if cost:
        for name, r in cost["rules"].items():
            if not r["peaks"]:
                out.append(f"Backward ({name}, {r['rule']} rule): no peaks on {cost['image']}.")
                continue
            out.append(f"Backward per peak ({name}, {r['rule']} rule, {r['peaks']} peaks of {cost['image']}, "
                       f"one forward {1e3 * cost['forward_s']:.0f} ms): batched {1e3 * r['per_peak_s']:.0f} ms = "
                       f"{r['forwards_per_peak']:.2f} forwards; per-peak autograd loop "
                       f"{1e3 * r['autograd_loop_per_peak_s']:.0f} ms = {r['autograd_loop_forwards_per_peak']:.2f}.")
    return out


def plot(report: dict, path: Path) -> None:
    """Throughput vs batch size per contestant (the baseline as a line) and, per
    contestant at its best batch size, the shares of the stages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    groups: dict[str, list[dict]] = {}
    for row in report["rows"]:
        groups.setdefault(f"{row['contestant']} ({row['backend']})", []).append(row)
    best = {}
    for label, rows in groups.items():
        if rows[0]["contestant"] == "baseline":
            left.axhline(rows[0]["images_per_s"], color="black", linestyle="--", label="baseline")
            continue
        left.plot([r["batch_size"] for r in rows], [r["images_per_s"] for r in rows], marker="o", label=label)
        best[label] = max(rows, key=lambda r: r["images_per_s"])
    left.set_xscale("log", base=2)
    left.set_xlabel("batch size (images)")
    left.set_ylabel("images / s")
    left.set_title(f"{report['images']} images, {report['device']}, input {report['input_size']}²")
    left.grid(True, alpha=0.3)
    left.legend(fontsize=8)
    stages = [s for s in STAGES if any(s in r["stage_shares"] for r in best.values())]
    bottom = np.zeros(len(best))
    for stage in stages:
        shares = np.array([r["stage_shares"].get(stage, 0.0) for r in best.values()])
        right.barh(range(len(best)), shares, left=bottom, label=stage)
        bottom += shares
    right.set_yticks(range(len(best)), [f"{k}\nbatch {r['batch_size']}" for k, r in best.items()], fontsize=8)
    right.set_xlabel("share of the time")
    right.set_xlim(0, 1)
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=len(stages))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
