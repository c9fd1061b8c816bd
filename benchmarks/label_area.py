"""What the label area chosen on dev keeps and drops. For each training given, the
student's training labels (``MODEL/student-labels/SPLIT.json``, written by ``icn-rt train
student``: the pipeline's instances of a tagged class whose score passes the threshold the
model's config records) split by the area range ``train student`` chose on dev
(``student_training.min_area/max_area``): the labels it kept and those it dropped, each set
against the split's ground truth by the rule of ``label_repick.py`` (right: mask IoU ≥ 0.5
with an unclaimed object of its class; else a leak, a fragment or off the object of its
class it overlaps most), with 95% bootstrap intervals over the images. It reads the
training split's ground truth, so it is a diagnosis, not a recipe.

    python benchmarks/label_area.py --training "photo 41=ROOT,MODEL" [--training ...] --out label_area.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from label_repick import metrics, per_image
from machine import machine_info

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import open_dataset
from icn_rt.data.results import load_results
from icn_rt.eval.bootstrap import bootstrap
from icn_rt.models.store import read_config
from icn_rt.training.student import kept_labels

KEYS = ("precision", "recall", "leak", "fragment", "off")


def split_by_area(root: Path, model: Path, split: str) -> tuple:
    """The split's dataset, the config's ``student_training`` and the labels (tagged class,
    score at the threshold) inside and outside its area range, per image, with masks."""
    ds = open_dataset(root, split, load_images=False)
    config = read_config(model)["student_training"]
    results = load_results(model / "student-labels" / f"{split}.json", ds.classes)
    tags = {iid: set(ds.labels(iid).tolist()) for iid in ds.ids}
    passing = kept_labels(results, tags, config["threshold"])
    inside = kept_labels(results, tags, config["threshold"], (config["min_area"], config["max_area"]))
    kept, dropped = {}, {}
    for iid, entries in passing.items():
        within = {id(e) for e in inside.get(iid, [])}
        for e in entries:
            side = kept if id(e) in within else dropped
            side.setdefault(iid, []).append(dict(e, mask=rlelib.decode(e["segmentation"]).astype(bool)))
    return ds, config, kept, dropped


def measure(root: Path, model: Path, split: str, draws: int) -> dict:
    """One training's kept and dropped labels: counts and metrics with intervals."""
    ds, config, kept, dropped = split_by_area(root, model, split)
    rows = {}
    for name, labelled in (("kept", kept), ("dropped", dropped)):
        m = bootstrap(metrics(per_image(ds, labelled)), len(ds.ids), draws)
        rows[name] = {"labels": sum(map(len, labelled.values())), **{k: m[k].to_json() for k in KEYS}}
    return {"root": str(root), "model": str(model), "images": len(ds.ids), "threshold": config["threshold"],
            "area": [config["min_area"], config["max_area"]], "rows": rows}


def markdown(report: dict) -> str:
    def cell(m: dict) -> str:
        lo, hi = m["interval"]
        return f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

    lines = ["| training | area kept | labels kept | their precision | labels dropped | their precision | "
             "dropped: leak % | fragment % | off % |", "|---|---|---|---|---|---|---|---|---|"]
    for name, t in report["trainings"].items():
        kept, dropped = t["rows"]["kept"], t["rows"]["dropped"]
        lines.append(f"| {name} | [{t['area'][0]:g}, {t['area'][1]:g}] | {kept['labels']} | {cell(kept['precision'])} "
                     f"| {dropped['labels']} | {cell(dropped['precision'])} | "
                     + " | ".join(cell(dropped[k]) for k in ("leak", "fragment", "off")) + " |")
    return "\n".join(lines) + (
        f"\n\nThe students' training labels ({report['split']}; a tagged class, the score at the threshold chosen on "
        f"dev) inside and outside the area range chosen on dev, against the split's ground truth; 95% bootstrap "
        f"intervals over the images ({report['bootstrap']} draws).\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--training", action="append", required=True, help="NAME=ROOT,MODEL (repeatable)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    trainings = {}
    for text in a.training:
        name, _, paths = text.partition("=")
        root, _, model = paths.partition(",")
        if not (name and root and model):
            raise SystemExit(f"--training {text!r}: expected NAME=ROOT,MODEL")
        trainings[name] = measure(Path(root), Path(model), a.split, a.bootstrap)
        print(name, {k: v["labels"] for k, v in trainings[name]["rows"].items()}, flush=True)
    report = {"benchmark": "label_area", "command": shlex.join(["python", *sys.argv]), "split": a.split,
              "bootstrap": a.bootstrap, "trainings": trainings, "machine": machine_info()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
