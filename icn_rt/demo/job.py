"""``icn-rt demo``: the whole job on the embedded demo — its model on its sample images
with their proposals -> instances (COCO JSON) and pictures, the proposals' upper bound,
the evaluation table; and its student on the same images, beside it — all under one folder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from icn_rt import demo as assets
from icn_rt.errors import InputError
from icn_rt.eval.proposal_recall import RecallReport, proposal_recall
from icn_rt.eval.report import EvalReport, evaluate, write_report
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.predictor import Predictor
from icn_rt.runtime.result_log import InferSummary
from icn_rt.runtime.sources import list_images
from icn_rt.runtime.student import StudentPredictor


@dataclass
class DemoRun:
    """One model's run over the demo images: the job's ``summary``, its ``metrics``, its
    ``images_per_second`` (the job's wall time, model loaded), and where it wrote
    ``results``, ``pictures`` and ``metrics_file``."""

    summary: InferSummary
    metrics: EvalReport
    images_per_second: float
    results: Path
    pictures: Path
    metrics_file: Path


@dataclass
class DemoReport:
    """What the demo did: the ``pipeline``'s run and the ``student``'s (None when the model
    has none), the ``model`` (``backbone``, T ``steps``, whether its student ``leads`` the
    pipeline: ``instances.lead``), the proposals' ``recall`` (the upper bound of matching)."""

    pipeline: DemoRun
    student: DemoRun | None
    backbone: str
    steps: int
    recall: RecallReport
    leads: bool = False


def run_demo(out_dir: Path, device: str = "cpu") -> DemoReport:
    """Run the demo into ``out_dir`` (what an earlier run wrote there is replaced): the
    pipeline into it, the student into ``out_dir/student``."""
    if not (assets.MODEL / "config.json").is_file():
        raise InputError(assets.MODEL, "the demo model is missing; rebuild it with scripts/build_demo.py")
    predictor = Predictor.from_dir(assets.MODEL, device)
    pipeline = _run(predictor, out_dir, InferSettings(proposals=assets.PROPOSALS, batch_size=8, workers=0,
                                                      overwrite=True))
    student = None
    if (assets.MODEL / "student.safetensors").is_file():
        student = _run(StudentPredictor.from_dir(assets.MODEL, device), out_dir / "student",
                       InferSettings(batch_size=8, workers=0, overwrite=True))
    recall = proposal_recall(assets.DATA, assets.PROPOSALS, "val")
    leads = predictor.student is not None and predictor.model.instances.lead == "student"
    return DemoReport(pipeline, student, predictor.model.classifier.settings.backbone,
                      predictor.model.icn_settings.steps, recall, leads)


def _run(predictor, out_dir: Path, settings: InferSettings) -> DemoRun:
    results, pictures, metrics_file = out_dir / "results.json", out_dir / "pictures", out_dir / "metrics.json"
    settings.save_vis = pictures
    images = list_images([assets.IMAGES])
    started = time.perf_counter()
    summary = infer(predictor, images, results, settings)
    seconds = time.perf_counter() - started
    metrics = evaluate(assets.DATA, results, "val")
    write_report(metrics, metrics_file)
    return DemoRun(summary, metrics, len(images) / seconds, results, pictures, metrics_file)
