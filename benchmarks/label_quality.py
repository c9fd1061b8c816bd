"""How good are the ICN's training labels? Each stored label (``train pseudo-labels``,
one per peak) against the ground-truth instance its PRM points at (the instance of the
peak's class holding the most PRM mass, the rule of ``--supervision saliency``): IoU,
the share with IoU ≥ 0.5, how the others miss — a *fragment* (at least half of the label
on the instance, covering less than half of it) or a *leak* (covering at least half of
the instance, reaching so far past it that the IoU stays under 0.5) — and the label's
area, with 95% bootstrap intervals over the images, for several label sets of the same
peaks side by side.

``--student RESULTS`` adds a label set made from a student's masks (``icn-rt infer MODEL
TRAIN_IMAGES --student``): each peak's label becomes the student instance of its class
(score ≥ ``--min-score``) holding the most of its PRM; peaks without one keep the first
set's label. The set is written to ``--student-labels DIR`` (ready for ``train icn
--labels DIR``).

    python benchmarks/label_quality.py ROOT --labels "re-ranked top 1=MODEL/labels-proposals-train" \\
        --student stud_train.json --student-labels student-labels --out label_quality.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
from machine import machine_info

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import open_dataset
from icn_rt.data.results import load_results
from icn_rt.training.pseudo_labels import saliency_label


def student_labels(labels: Path, results: dict[str, list[dict]], out: Path, min_score: float) -> dict:
    """Write ``labels`` with each peak's label replaced by the student instance of its class
    (score ≥ ``min_score``) holding the most of its PRM, where there is one; the counts."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(labels / "settings.json", out / "settings.json")
    peaks = replaced = 0
    for f in sorted(labels.glob("*.npz")):
        with np.load(f) as z:
            stored = dict(z)
        side = stored["label"].shape[-1]
        entries = [e for e in results.get(f.stem, []) if e["score"] >= min_score]
        masks = [cv2.resize(m.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST) > 0
                 for m in rlelib.decode_many([e["segmentation"] for e in entries], (side, side))] if entries else []
        for k, cls in enumerate(stored["cls"]):
            peaks += 1
            prm = stored["prm"][k].astype(np.float64)
            mass = [(prm[m].sum(), i) for i, (e, m) in enumerate(zip(entries, masks)) if e["class_id"] == cls]
            if mass:  # the most PRM mass, the first on a tie: the rule of saliency_label
                stored["label"][k] = masks[max(mass, key=lambda t: t[0])[1]]
                replaced += 1
        np.savez_compressed(out / f.name, **stored)
    return {"peaks": peaks, "replaced": replaced, "min_score": min_score}


def label_ious(root: Path, split: str, labels: Path) -> dict[str, list[tuple[float, ...]]]:
    """Per image, each label's (IoU with the instance its PRM points at, area share, share
    of the label on the instance, share of the instance under the label)."""
    ds = open_dataset(root, split, load_images=False)
    per_image = {}
    for f in sorted(labels.glob("*.npz")):
        truth = ds.ground_truth(f.stem)
        with np.load(f) as z:
            rows = []
            for k in range(len(z["cls"])):
                label = z["label"][k]
                h, w = truth.instances[0].mask.shape if truth.instances else label.shape
                prm = cv2.resize(z["prm"][k].astype(np.float32), (w, h))
                mask = cv2.resize(label.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
                gt = saliency_label(prm, truth.instances, int(z["cls"][k]))
                fit = overlaps(mask, gt) if gt is not None else (0.0, 0.0, 0.0)
                rows.append((*fit, float(mask.mean())))
        per_image[f.stem] = rows
    return per_image


def overlaps(mask: np.ndarray, gt: np.ndarray) -> tuple[float, float, float]:
    """``(IoU, share of mask on gt, share of gt under mask)`` of two boolean masks."""
    inter = float((mask & gt).sum())
    return inter / max(float((mask | gt).sum()), 1), inter / max(float(mask.sum()), 1), inter / max(float(gt.sum()), 1)


def kinds(rows: np.ndarray) -> np.ndarray:
    """Each label's kind from ``rows [N, 4]`` (:func:`label_ious`' columns): 0 right (IoU ≥
    0.5), 1 a leak (covers at least half of the instance), 2 a fragment (at least half of
    it on the instance), 3 off the instance."""
    iou, on, under = rows[:, 0], rows[:, 1], rows[:, 2]
    return np.select([iou >= 0.5, under >= 0.5, on >= 0.5], [0, 1, 2], 3)


def summary(per_image: dict[str, list[tuple[float, ...]]], draws: int, seed: int) -> dict:
    """Means over the labels, with 95% bootstrap intervals over the images."""
    ids = sorted(per_image)
    rng = np.random.default_rng(seed)

    def stats(chosen) -> np.ndarray:
        rows = np.array([r for i in chosen for r in per_image[i]], np.float64).reshape(-1, 4)
        kind = kinds(rows)
        return np.array([rows[:, 0].mean(), (kind == 0).mean(), (kind == 2).mean(), (kind == 1).mean(),
                         rows[:, 3].mean()]) * 100

    point = stats(ids)
    boot = np.array([stats([ids[j] for j in rng.integers(0, len(ids), len(ids))]) for _ in range(draws)])
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    names = ("IoU", "IoU >= 0.5", "fragment", "leak", "area")
    return {"labels": sum(map(len, per_image.values())),
            **{n: {"estimate": round(float(point[k]), 2), "interval": [round(float(lo[k]), 2), round(float(hi[k]), 2)]}
               for k, n in enumerate(names)}}


def markdown(report: dict) -> str:
    lines = [f"ICN training labels of `{report['root']}` ({report['split']}) against the ground-truth instance each "
             f"peak's PRM points at; 95% bootstrap intervals over the images ({report['bootstrap']} draws, seed "
             f"{report['seed']}). Command in the JSON beside this file.", "",
             "| labels | peaks | IoU | IoU ≥ 0.5 | fragment % | leak % | area % of the image |",
             "|---|---|---|---|---|---|---|"]
    for name, row in report["rows"].items():
        cell = [f"{row[k]['estimate']:.1f} [{row[k]['interval'][0]:.1f}, {row[k]['interval'][1]:.1f}]"
                for k in ("IoU", "IoU >= 0.5", "fragment", "leak", "area")]
        lines.append(f"| {name} | {row['labels']} | " + " | ".join(cell) + " |")
    if report.get("student"):
        s = report["student"]
        lines += ["", f"Student labels: {s['replaced']} of {s['peaks']} peaks had a student instance of their class "
                      f"scoring at least {s['min_score']:g}; the others keep the first set's label."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--labels", action="append", required=True, help="NAME=DIR, repeatable; the first is the base")
    ap.add_argument("--student", type=Path, help="a student's results on the split's images")
    ap.add_argument("--student-labels", type=Path, help="where the student's label set is written")
    ap.add_argument("--min-score", type=float, default=0.5)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    sets = dict(item.split("=", 1) for item in a.labels)
    report = {"benchmark": "label_quality", "command": shlex.join(["python", *sys.argv]), "root": str(a.root),
              "split": a.split, "bootstrap": a.bootstrap, "seed": a.seed, "rows": {}}
    if a.student is not None:
        if a.student_labels is None:
            ap.error("--student needs --student-labels DIR")
        classes = open_dataset(a.root, a.split, load_images=False).classes
        report["student"] = student_labels(Path(next(iter(sets.values()))), load_results(a.student, classes),
                                           a.student_labels, a.min_score)
        sets[f"student masks (score >= {a.min_score:g})"] = str(a.student_labels)
    for name, directory in sets.items():
        report["rows"][name] = summary(label_ious(a.root, a.split, Path(directory)), a.bootstrap, a.seed)
        print(name, report["rows"][name]["IoU"], flush=True)
    report["machine"] = machine_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
