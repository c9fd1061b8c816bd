"""Classifiers side by side on a split: per class, the classification AP and the share of
the images holding the class whose class score passes the model's class threshold (what
decides whether that class gets any peak, hence any instance), with the calibrated peak
thresholds. Made to show why classes collapse under a schedule that stops too early::

    python benchmarks/classifier_recipe.py ROOT --split dev --model "paper schedule=m_paper" \\
        --model "recipe=m_recipe" --out benchmarks/results/classifier_recipe_part_only_dev.json

Writes JSON (the command, the dataset's synth.json, the machine) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from accuracy import dataset_record, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess
from icn_rt.eval.diagnosis import classification_ap
from icn_rt.models.store import load_classifier


@torch.no_grad()
def measure(model_dir: Path, root: Path, split: str) -> dict:
    model, config = load_classifier(model_dir, "cpu")
    model.eval()
    ds = open_dataset(root, split, load_images=False)
    targets = np.zeros((len(ds), len(ds.classes)), bool)
    scores = np.zeros(targets.shape, np.float32)
    for i, image_id in enumerate(ds.ids):
        targets[i, ds.labels(image_id)] = True
        x = preprocess(read_image(ds.image_path(image_id)), model.settings.input_size)[None]
        scores[i] = model(x)[0][0].numpy()
    threshold = config["peaks"]["class_threshold"]
    passed = [float(((scores[:, c] > threshold) & targets[:, c]).sum() / max(targets[:, c].sum(), 1))
              for c in range(len(ds.classes))]
    ap = classification_ap(scores, targets.astype(np.float32))
    training = config.get("training", {})
    return {"model": str(model_dir), "training": {k: training.get(k) for k in ("epochs", "lr", "lr_step", "seed")},
            "classification_mAP": float(100 * np.nanmean(ap)),
            "per_class": {c: {"AP": float(100 * a), "score_passes": 100 * p, "peak_threshold": t}
                          for c, a, p, t in zip(ds.classes, ap, passed, config["peaks"]["peak_threshold"])}}


def markdown(doc: dict) -> str:
    classes = list(doc["rows"][0]["per_class"])
    lines = [f"Classifiers on the `{doc['split']}` split of `{doc['root']}` ({doc['regime']}). Per class: "
             "classification AP / share of the images holding the class whose score passes the class threshold "
             "(no peak, no instance otherwise) / calibrated peak threshold.", "",
             "| classifier | epochs, lr, ×0.1 every | mAP | " + " | ".join(classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for r in doc["rows"]:
        t = r["training"]
        cells = [f"{v['AP']:.1f} / {v['score_passes']:.0f}% / {v['peak_threshold']:.2f}"
                 for v in r["per_class"].values()]
        lines.append(f"| {r['name']} | {t['epochs']}, {t['lr']:g}, {t['lr_step']} | {r['classification_mAP']:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", action="append", required=True, help="NAME=MODEL_DIR (repeat)")
    ap.add_argument("--regime", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    rows = []
    for spec in args.model:
        name, _, model = spec.partition("=")
        rows.append({"name": name, **measure(Path(model), args.root, args.split)})
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "classifier_recipe", "command": shlex.join([sys.executable, *sys.argv]),
           "root": str(args.root), "split": args.split, "regime": regime, "dataset": dataset, "rows": rows,
           "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
