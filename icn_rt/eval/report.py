"""``icn-rt eval``: score a results file against a VOC-layout split."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icn_rt.data import rle as rlelib
from icn_rt.data.results import load_results
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.eval.instance import InstanceEvaluator
from icn_rt.eval.semantic import SemanticEvaluator, merge_instances

THRESHOLDS = (0.25, 0.5, 0.75)


@dataclass
class EvalReport:
    classes: tuple[str, ...]
    images: int
    instances: int
    predictions: int
    map: dict[float, float]
    ap: dict[float, list[float]]
    abo: float
    miou: float
    iou: list[float]
    ignored_images: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "images": self.images, "gt_instances": self.instances, "predictions": self.predictions,
            "mAP": {f"{t:g}": clean(v * 100) for t, v in self.map.items()},
            "AP_per_class": {f"{t:g}": {c: clean(a * 100) for c, a in zip(self.classes, v)} for t, v in self.ap.items()},
            "ABO": clean(self.abo * 100), "mIoU": clean(self.miou * 100),
            "IoU_per_class": {c: clean(v * 100) for c, v in zip(("background",) + self.classes, self.iou)},
            "ignored_result_images": self.ignored_images,
        }


def evaluate(voc_root: str | Path, results_path: str | Path, split: str = "val", count_difficult: bool = False,
             progress: bool = True) -> EvalReport:
    """mAP^r at IoU 0.25/0.5/0.75, ABO and semantic mIoU of ``results_path`` on ``split``."""
    dataset = VOCDataset(voc_root, split, load_images=False)
    results = load_results(results_path, dataset.classes)
    ids = set(dataset.ids)
    ignored = sorted(set(results) - ids)
    inst = InstanceEvaluator(len(dataset.classes), THRESHOLDS, count_difficult)
    sem = SemanticEvaluator(len(dataset.classes))
    n_inst = n_pred = 0
    items = dataset.ids
    if progress:
        from icn_rt.progress import track

        items = track(items, "evaluating", unit="img")
    for image_id in items:
        sample = dataset.ground_truth(image_id)
        shape = sample.semantic.shape
        preds = results.get(image_id, [])
        for k, p in enumerate(preds):
            problem = rlelib.check(p["segmentation"], shape)
            if problem:
                raise InputError(results_path, f"result {k} of image {image_id}: {problem}")
        pm = rlelib.decode_many([p["segmentation"] for p in preds], shape)
        pl = np.array([p["class_id"] for p in preds], np.int64)
        ps = np.array([p["score"] for p in preds], np.float64)
        gm = np.stack([i.mask for i in sample.instances]) if sample.instances else np.zeros((0, *shape), bool)
        gl = np.array([i.class_id for i in sample.instances], np.int64)
        gd = np.array([i.difficult for i in sample.instances], bool)
        inst.add(pm, pl, ps, gm, gl, gd)
        sem.add(merge_instances(pm, pl, ps, shape), sample.semantic)
        n_inst += len(gl)
        n_pred += len(pl)
    r_inst, r_sem = inst.result(), sem.result()
    return EvalReport(dataset.classes, len(dataset), n_inst, n_pred, r_inst["map"],
                      {t: v.tolist() for t, v in r_inst["ap"].items()}, r_inst["abo"], r_sem["miou"],
                      r_sem["iou"].tolist(), ignored)


def write_report(report: EvalReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
