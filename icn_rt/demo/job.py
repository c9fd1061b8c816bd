"""``icn-rt demo``: the whole job on the embedded demo — its model on its sample images
with their proposals -> instances (COCO JSON) and pictures, the proposals' upper bound,
the evaluation table, all under one folder."""

from __future__ import annotations

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


@dataclass
class DemoReport:
    """What the demo did: ``summary`` of the job, the ``model`` it ran (``backbone``, T
    ``steps``), the proposals' ``recall`` (the upper bound of matching), the ``metrics``,
    and where it wrote ``results``, ``pictures`` and ``metrics_file``."""

    summary: InferSummary
    backbone: str
    steps: int
    recall: RecallReport
    metrics: EvalReport
    results: Path
    pictures: Path
    metrics_file: Path


def run_demo(out_dir: Path, device: str = "cpu") -> DemoReport:
    """Run the demo into ``out_dir`` (what an earlier run wrote there is replaced)."""
    if not (assets.MODEL / "config.json").is_file():
        raise InputError(assets.MODEL, "the demo model is missing; rebuild it with scripts/build_demo.py")
    predictor = Predictor.from_dir(assets.MODEL, device)
    results, pictures, metrics_file = out_dir / "results.json", out_dir / "pictures", out_dir / "metrics.json"
    summary = infer(predictor, list_images([assets.IMAGES]), results,
                    InferSettings(proposals=assets.PROPOSALS, save_vis=pictures, batch_size=8, workers=0,
                                  overwrite=True))
    recall = proposal_recall(assets.DATA, assets.PROPOSALS, "val")
    metrics = evaluate(assets.DATA, results, "val")
    write_report(metrics, metrics_file)
    return DemoReport(summary, predictor.model.classifier.settings.backbone, predictor.model.icn_settings.steps,
                      recall, metrics, results, pictures, metrics_file)
