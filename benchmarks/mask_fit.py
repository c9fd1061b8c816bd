"""How well each row outlines the objects it finds: per ground-truth object, the best mask
IoU of a prediction of its class (:func:`icn_rt.eval.diagnosis.object_fit`), summarised
per row as the share of objects found at IoU 0.5 and 0.75, the mean IoU of those found at
0.5, and — paired with a reference row on the objects both find at 0.5 — the difference
of their IoUs, with 95% bootstrap intervals over the images
(:func:`~icn_rt.eval.diagnosis.fit_summary`); beside them mAP^r at IoU 0.5 and 0.75 as
shipped and with oracle ranking (each prediction scored by its best IoU with an object of
its class: what the masks give when the confidence ranks them perfectly). It tells a row
that finds other objects from one that outlines the same objects worse, and both from
one whose confidence ranks its masks badly: why a student scores above its teacher at
IoU 0.5 and below it at 0.75, say.

Rows as ``benchmarks/accuracy.py`` takes them (``NAME=MODEL[:key=value,...]``; the
student: ``student=1``, ``refine=...``); every row gets the split's proposals (read only
where it matches or snaps to them). Writes JSON (per row: the metrics with intervals, the
paired difference; the command, the machine) and markdown::

    python benchmarks/mask_fit.py DATA --split dev --row "teacher=MODEL" \\
        --row "student=MODEL:student=1,refine=superpixels" --reference teacher --out mask_fit.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from accuracy import dataset_record, parse_row, predictor_for, row_arguments, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.eval.bootstrap import draws, intervals
from icn_rt.eval.diagnosis import fit_summary, fits_and_oracle
from icn_rt.eval.instance import InstanceEvaluator

THRESHOLDS = (0.5, 0.75)


def fits(ds, rows: list, proposals: Path) -> tuple[dict, np.ndarray, dict]:
    """Each row's :func:`object_fit` of every object of the split -> ({row: float64 [G]},
    the image index of each object ``int64 [G]``, {row: (evaluator as shipped, with oracle
    ranking)}) of ``ds`` (:func:`~icn_rt.data.datasets.open_dataset`'s)."""
    predictors = {name: predictor_for(model, settings) for name, model, settings in rows}
    out, image_of = {name: [] for name in predictors}, []
    ap = {name: tuple(InstanceEvaluator(len(ds.classes), THRESHOLDS) for _ in range(2)) for name in predictors}
    with torch.no_grad():
        for n, image_id in enumerate(ds.ids):
            image = read_image(ds.image_path(image_id))
            props = load_proposals(proposal_path(proposals, image_id), image.shape[:2])
            gt = ds.ground_truth(image_id)
            gt_masks, gt_cls = gt.instance_masks(), gt.instance_classes()
            image_of += [n] * len(gt_masks)
            for name, predictor in predictors.items():
                (prediction,) = predictor.predict([image], [props], keep_maps=False)
                inst = prediction.instances
                masks = np.stack([i.mask for i in inst]) if inst else np.zeros((0, *image.shape[:2]), bool)
                labels, scores = np.array([i.class_id for i in inst], np.int64), np.array([i.score for i in inst])
                fit, oracle = fits_and_oracle(masks, labels, gt_masks, gt_cls)
                out[name].append(fit)
                ap[name][0].add(masks, labels, scores, gt_masks, gt_cls)
                ap[name][1].add(masks, labels, oracle, gt_masks, gt_cls)
            if (n + 1) % 20 == 0 or n + 1 == len(ds.ids):
                print(f"{n + 1}/{len(ds.ids)} images", file=sys.stderr, flush=True)
    return ({name: np.concatenate(v) if v else np.zeros(0) for name, v in out.items()}, np.array(image_of, np.int64),
            ap)


def run(args) -> dict:
    rows = [parse_row(r) for r in args.row]
    names = [name for name, _, _ in rows]
    reference = args.reference or names[0]
    if reference not in names:
        raise SystemExit(f"--reference {reference!r} is not a row ({', '.join(names)})")
    ds = open_dataset(args.root, args.split, load_images=False)
    per_row, image_of, ap = fits(ds, rows, args.proposals or args.root / "Proposals")
    images = len(ds.ids)
    image_weights = draws(images, args.bootstrap, args.seed)
    weights = [w[image_of] for w in image_weights]
    out = []

    def ranked(name, w=None):
        shipped, oracle = (e.result(w)["map"] for e in ap[name])
        return {**{f"mAP@{t:g}": 100 * shipped[t] for t in THRESHOLDS},
                **{f"mAP@{t:g}, oracle ranking": 100 * oracle[t] for t in THRESHOLDS}}

    for name, model, settings in rows:
        fit, ref = per_row[name], per_row[reference]
        point = {**fit_summary(fit, ref), **ranked(name)}
        reps = [{**fit_summary(fit, ref, w), **ranked(name, iw)} for w, iw in zip(weights, image_weights)]

        def gap(summary):
            return {"IoU, both found − reference": summary["IoU, both found"] - summary["reference IoU, both found"]}

        diff = intervals(gap(point), [gap(r) for r in reps])["IoU, both found − reference"]
        out.append({"name": name, "model": str(model), "settings": settings,
                    "metrics": {k: v.to_json() for k, v in intervals(point, reps).items()},
                    "both_found_minus_reference": {**diff.to_json(), "excludes_zero": diff.excludes_zero()}})
    return {"rows": out, "objects": len(image_of), "images": images, "reference": reference}


def markdown(doc: dict) -> str:
    def cell(m):
        lo, hi = m["interval"]
        if m["estimate"] is None:  # no object counts (JSON's null for NaN)
            return "-"
        return f"{m['estimate']:.1f}" + ("" if lo is None else f" [{lo:.1f}, {hi:.1f}]")

    lines = [f"Mask fit on the `{doc['split']}` split of `{doc['root']}` ({doc['images']} images, {doc['objects']} "
             f"objects; {doc['regime']}): each object's best IoU with a prediction of its class; 95% bootstrap "
             f"intervals over the images ({doc['bootstrap']['samples']} draws, seed {doc['bootstrap']['seed']}). "
             "Command in the JSON beside this file.", "",
             f"| row | objects found at IoU 0.5, % | at IoU 0.75, % | mean IoU of those found | objects both it and "
             f"{doc['reference']} find: its IoU | − the reference's | mAP^r@0.5 | @0.75 | mAP^r@0.5, oracle "
             "ranking | @0.75 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in doc["rows"]:
        m, d = row["metrics"], row["both_found_minus_reference"]
        diff = "(reference)" if row["name"] == doc["reference"] else cell(d) + ("" if d["excludes_zero"] else " ~0")
        lines.append(f"| {row['name']} | {cell(m['found@0.5'])} | {cell(m['found@0.75'])} | {cell(m['IoU, found'])} "
                     f"| {cell(m['IoU, both found'])} | {diff} | {cell(m['mAP@0.5'])} | {cell(m['mAP@0.75'])} "
                     f"| {cell(m['mAP@0.5, oracle ranking'])} | {cell(m['mAP@0.75, oracle ranking'])} |")
    lines += ["", "~0: the difference's interval holds 0 (not a difference the images support).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    row_arguments(ap, "the row the others are paired with [default: the first]")
    ap.add_argument("--regime", default=None, help="a name for the data's regime [default: from ROOT/synth.json]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "mask fit", "command": shlex.join(["python", *sys.argv]), "root": str(args.root),
           "split": args.split, "regime": regime, "bootstrap": {"samples": args.bootstrap, "seed": args.seed},
           "dataset": dataset, **result, "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
