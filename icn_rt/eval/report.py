"""``icn-rt eval``: score a results file against a VOC-layout split, with bootstrap
intervals and a paired comparison against another results file when asked."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import open_dataset
from icn_rt.data.results import load_results
from icn_rt.errors import InputError
from icn_rt.eval.bootstrap import Interval, difference, draws, intervals
from icn_rt.eval.coco import CocoAccumulator, as_json
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
    coco: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, Interval] | None = None
    bootstrap: dict | None = None
    against: dict | None = None

    def to_json(self) -> dict:
        def clean(v):
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "images": self.images, "gt_instances": self.instances, "predictions": self.predictions,
            "mAP": {f"{t:g}": clean(v * 100) for t, v in self.map.items()},
            "AP_per_class": {f"{t:g}": {c: clean(a * 100) for c, a in zip(self.classes, v)} for t, v in self.ap.items()},
            "ABO": clean(self.abo * 100), "mIoU": clean(self.miou * 100),
            "COCO": as_json(self.coco),
            "IoU_per_class": {c: clean(v * 100) for c, v in zip(("background",) + self.classes, self.iou)},
            "ignored_result_images": self.ignored_images,
            **({"bootstrap": {**self.bootstrap, "intervals": {k: v.to_json() for k, v in self.intervals.items()}}}
               if self.intervals is not None else {}),
            **({"against": self.against} if self.against is not None else {}),
        }


@dataclass
class Evaluation:
    """A results file scored against a split, image by image: what the metrics of any
    draw of the images (:meth:`metrics`) and the report are computed from."""

    classes: tuple[str, ...]
    instances: int
    predictions: int
    ignored: list[str]
    inst: InstanceEvaluator
    sem: SemanticEvaluator
    coco: CocoAccumulator

    @property
    def images(self) -> int:
        return self.inst.num_images

    def metrics(self, weights: np.ndarray | None = None) -> dict[str, float]:
        """mAP^r@0.25/0.5/0.75, ABO and mIoU in percent, image i counted ``weights[i]`` times
        (None: once)."""
        r_inst, r_sem = self.inst.result(weights), self.sem.result(weights)
        return {**{f"mAP@{t:g}": 100 * r_inst["map"][t] for t in THRESHOLDS}, "ABO": 100 * r_inst["abo"],
                "mIoU": 100 * r_sem["miou"]}

    def report(self) -> EvalReport:
        r_inst, r_sem = self.inst.result(), self.sem.result()
        return EvalReport(self.classes, self.images, self.instances, self.predictions, r_inst["map"],
                          {t: v.tolist() for t, v in r_inst["ap"].items()}, r_inst["abo"], r_sem["miou"],
                          r_sem["iou"].tolist(), self.ignored, self.coco.result())


def score(voc_root: str | Path, results_path: str | Path, split: str = "val", count_difficult: bool = False,
          progress: bool = True) -> Evaluation:
    """Score ``results_path`` on every image of ``split`` (see :class:`Evaluation`)."""
    dataset = open_dataset(voc_root, split, load_images=False)
    results = load_results(results_path, dataset.classes)
    ids = set(dataset.ids)
    ignored = sorted(set(results) - ids)
    inst = InstanceEvaluator(len(dataset.classes), THRESHOLDS, count_difficult)
    sem = SemanticEvaluator(len(dataset.classes))
    coco = CocoAccumulator(len(dataset.classes), count_difficult)
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
        gm, gl = sample.instance_masks(), sample.instance_classes()
        gd = np.array([i.difficult for i in sample.instances], bool)
        inst.add(pm, pl, ps, gm, gl, gd)
        sem.add(merge_instances(pm, pl, ps, shape), sample.semantic)
        coco.add(shape, rlelib.encode_many(gm), gl, gd, [p["segmentation"] for p in preds], pl, ps)
        n_inst += len(gl)
        n_pred += len(pl)
    return Evaluation(dataset.classes, n_inst, n_pred, ignored, inst, sem, coco)


def evaluate(voc_root: str | Path, results_path: str | Path, split: str = "val", count_difficult: bool = False,
             progress: bool = True, samples: int = 0, seed: int = 0, level: float = 0.95,
             against: str | Path | None = None) -> EvalReport:
    """mAP^r at IoU 0.25/0.5/0.75, ABO, semantic mIoU and COCO's segm AP, AP50, AP75,
    APs/m/l (:mod:`~icn_rt.eval.coco`; no intervals) of ``results_path`` on ``split``.
    ``samples`` > 0: with percentile bootstrap intervals at ``level`` over that many image
    draws (``seed``); ``against``: another results file on the same images, compared paired
    (its estimates and the interval of each difference, this minus that)."""
    scored = score(voc_root, results_path, split, count_difficult, progress)
    report = scored.report()
    if samples <= 0:
        if against is not None:
            raise ValueError("a paired comparison (--against) needs bootstrap samples (--bootstrap N)")
        return report
    other = score(voc_root, against, split, count_difficult, progress) if against is not None else None
    weights = draws(scored.images, samples, seed)
    if progress:
        from icn_rt.progress import track

        weights = track(weights, "bootstrap", unit="draw")
    mine, theirs = [], []
    for w in weights:
        mine.append(scored.metrics(w))
        if other is not None:
            theirs.append(other.metrics(w))
    report.intervals = intervals(scored.metrics(), mine, level)
    report.bootstrap = {"samples": samples, "seed": seed, "level": level, "unit": "image"}
    if other is not None:
        diff = intervals(difference(scored.metrics(), other.metrics()),
                         [difference(a, b) for a, b in zip(mine, theirs)], level)
        report.against = {"results": str(against),
                          "metrics": {k: v.to_json() for k, v in intervals(other.metrics(), theirs, level).items()},
                          "difference": {k: {**v.to_json(), "excludes_zero": v.excludes_zero()}
                                         for k, v in diff.items()}}
    return report


def write_report(report: EvalReport, path: str | Path) -> None:
    Path(path).write_text(json.dumps(report.to_json(), indent=2) + "\n")
