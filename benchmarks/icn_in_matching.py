"""Where the ICN's map could enter matching once proposals are re-ranked (issue 36: "the
re-ranking decides which object, the map how far it reaches"): each way, side by side on
the same peaks, proposals and objectness, with bootstrap intervals paired against naive
PRM + re-ranking.

Per peak the runner computes once: the naive PRM's vanilla score of every proposal, the
ICN map's IoU score of every proposal (both as the predictor scores them), and the
objectness (:mod:`icn_rt.matching.objectness`) of every proposal either ranks among its
``--candidates`` best. Then each way picks one proposal per peak:

- ``naive PRM + re-ranking``: the most object-like of the naive PRM's N best (the
  reference; equal to the predictor at T 0: checked);
- ``default: re-ranking among the ICN's candidates``: the most object-like of the ICN
  map's N best (the model's config; equal to the predictor: checked);
- ``ICN map alone``: the ICN map's best IoU, no re-ranking;
- ``naive candidates, objectness × ICN IoU^b``: the naive PRM's N best, ranked by both;
- ``extent: the re-ranked pick's neighbours by ICN IoU (τ)``: the reference's pick says
  which object; among the naive PRM's N best overlapping it with IoU ≥ τ, the one that
  best fits the ICN map;
- ``3 most object-like, then ICN IoU``: the naive PRM's N best, the 3 most object-like,
  the one of them that best fits the ICN map;
- ``the reference's pick, confidence × ICN IoU^0.25``: the map only ranks the instances.

Confidence is the peak's value × the objectness of the proposal that decided the object
(the reference's), NMS as the model's. Writes JSON (command, machine, rows with intervals
and paired differences, the consistency checks) and markdown::

    python benchmarks/icn_in_matching.py MODEL ROOT --split dev --out benchmarks/results/icn_in_matching_dev.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accuracy import dataset_record, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.eval.bootstrap import difference, draws, intervals
from icn_rt.eval.instance import InstanceEvaluator, mask_iou
from icn_rt.matching import score_proposals, suppress
from icn_rt.matching.objectness import objectness
from icn_rt.models.store import read_config
from icn_rt.runtime.predictor import Predictor

REFERENCE = "naive PRM + re-ranking"
DEFAULT = "default: re-ranking among the ICN's candidates"
THRESHOLDS = (0.25, 0.5, 0.75)


def best_n(scores: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` best-scored finite proposals of one peak, best first (ties: lower index),
    as :func:`icn_rt.matching.objectness.rerank` takes them."""
    order = np.argsort(-scores, kind="stable")[:n]
    return order[np.isfinite(scores[order])]


def most_object_like(candidates: np.ndarray, value: np.ndarray, size: int) -> int:
    """The predictor's pick after re-ranking: the first index of the highest value among
    ``candidates`` (the others are -inf), -1 when there are none."""
    if len(candidates) == 0:
        return -1
    row = np.full(size, -np.inf)
    row[candidates] = value[candidates]
    return int(np.argmax(row))


def ways(candidates: int) -> dict:
    """Each way: (peak record, k) -> (proposal or -1, confidence)."""

    def re_ranked(scores: str):
        """The most object-like of the best candidates by ``scores`` (naive or icn)."""
        def way(p, k):
            b = most_object_like(best_n(p[scores][k], candidates), p["obj"], p["size"])
            return b, p["value"][k] * (p["obj"][b] if b >= 0 else 0.0)
        return way

    reference = re_ranked("naive")

    def alone(p, k):
        s = p["icn"][k]
        if not np.isfinite(s).any():
            return -1, 0.0
        b = int(np.argmax(s))
        return b, p["value"][k] * s[b]

    def product(power):
        def way(p, k):
            c = best_n(p["naive"][k], candidates)
            if len(c) == 0:
                return -1, 0.0
            both = p["obj"][c] * np.maximum(p["icn"][k][c], 0) ** power
            b = int(c[np.argmax(both)])
            return b, p["value"][k] * p["obj"][b]
        return way

    def extent(tau):
        def way(p, k):
            c = best_n(p["naive"][k], candidates)
            which = most_object_like(c, p["obj"], p["size"])
            if which < 0:
                return -1, 0.0
            near = c[p["overlap"][which, c] >= tau]
            b = int(near[np.argmax(p["icn"][k][near])]) if np.isfinite(p["icn"][k][near]).any() else which
            return b, p["value"][k] * p["obj"][which]
        return way

    def object_like_then_map(p, k):
        c = best_n(p["naive"][k], candidates)
        if len(c) == 0:
            return -1, 0.0
        top = c[np.argsort(-p["obj"][c], kind="stable")[:3]]
        return int(top[np.argmax(p["icn"][k][top])]), p["value"][k] * p["obj"][top[0]]

    def fit_as_confidence(p, k):
        b, conf = reference(p, k)
        fit = p["icn"][k][b] if b >= 0 and np.isfinite(p["icn"][k][b]) else 0.0
        return b, conf * max(fit, 0.0) ** 0.25

    return {REFERENCE: reference, DEFAULT: re_ranked("icn"), "ICN map alone (IoU matching)": alone,
            "naive candidates, objectness × ICN IoU^0.25": product(0.25),
            "naive candidates, objectness × ICN IoU": product(1.0),
            "extent: the re-ranked pick's neighbours by ICN IoU (τ 0.5)": extent(0.5),
            "extent: the re-ranked pick's neighbours by ICN IoU (τ 0.7)": extent(0.7),
            "3 most object-like, then ICN IoU": object_like_then_map,
            "the reference's pick, confidence × ICN IoU^0.25": fit_as_confidence}


def peak_records(predictor: Predictor, image: np.ndarray, props, candidates: int) -> dict | None:
    """One image's per-peak scores (see the module's docstring); None without peaks."""
    model = predictor.model
    naive = predictor.naive_maps([image])
    if len(naive.peaks.cls) == 0:
        return None
    enhanced = predictor.enhance(naive).cpu().numpy()
    cls = naive.peaks.cls.cpu().numpy()
    class_maps = naive.maps[0].cpu().numpy()[cls]
    base = replace(model.matching, rerank=0)
    naive_scores = score_proposals(naive.prms.cpu().numpy(), class_maps, props, replace(base, score="vanilla")).scores
    icn_scores = score_proposals(enhanced, class_maps, props, replace(base, score="iou"), enhanced=True).scores
    known = np.unique(np.concatenate([best_n(s, candidates) for s in (*naive_scores, *icn_scores)]))
    obj = np.zeros(len(props))
    obj[known] = objectness(image, props, known)
    masks = props.to_masks()
    return {"cls": cls, "value": naive.peaks.value.cpu().numpy().astype(np.float64), "naive": naive_scores,
            "icn": icn_scores, "obj": obj, "size": len(props), "masks": masks, "overlap": mask_iou(masks, masks)}


def run(args) -> dict:
    loaded = Predictor.from_dir(args.model).model
    if not loaded.enhances:
        raise SystemExit(f"{args.model}: no ICN (train one with `icn-rt train icn`)")
    # the two ways the predictor runs, whatever the model's config says: re-ranking of
    # --candidates proposals, IoU matching of the ICN's map, confidence = value × objectness
    model = loaded.replace(matching=replace(loaded.matching, score="auto-iou", rerank=args.candidates),
                           instances=replace(loaded.instances, confidence="peak_match"))
    predictor, naive_predictor = Predictor(model), Predictor(model.replace(icn_steps=0))
    ds = open_dataset(args.root, args.split, load_images=False)
    ids = ds.ids[: args.images] if args.images else ds.ids
    proposals = args.proposals or args.root / "Proposals"
    table = ways(args.candidates)
    evaluators = {name: InstanceEvaluator(len(model.classes), THRESHOLDS) for name in table}
    checks = {REFERENCE: True, DEFAULT: True}
    with torch.no_grad():
        for n, image_id in enumerate(ids):
            image = read_image(ds.image_path(image_id))
            props = load_proposals(proposal_path(proposals, image_id), image.shape[:2])
            gt = ds.ground_truth(image_id)
            gt_masks, gt_cls = gt.instance_masks(), gt.instance_classes()
            p = peak_records(predictor, image, props, args.candidates)
            for name, way in table.items():
                if p is None:
                    kept = (np.zeros((0, *image.shape[:2]), bool), np.zeros(0, np.int64), np.zeros(0))
                else:
                    picks = [way(p, k) for k in range(len(p["cls"]))]
                    best = np.array([b for b, _ in picks], np.int64)
                    conf = np.array([c for _, c in picks], np.float64)
                    found = np.flatnonzero(best >= 0)
                    masks = p["masks"][best[found]]
                    keep = suppress(masks, conf[found], model.instances.nms_iou, predictor.kernels)[0] \
                        if len(found) else np.zeros(0, np.int64)
                    kept = (masks[keep], p["cls"][found][keep], conf[found][keep])
                evaluators[name].add(*kept, gt_masks, gt_cls)
                if name in checks:
                    shipped = (naive_predictor if name == REFERENCE else predictor).predict([image], [props],
                                                                                           keep_maps=False)[0]
                    theirs = [(i.class_id, round(i.score, 9)) for i in shipped.instances]
                    checks[name] &= theirs == [(int(c), round(float(s), 9)) for c, s in zip(kept[1], kept[2])]
            if (n + 1) % 20 == 0 or n + 1 == len(ids):
                print(f"{n + 1}/{len(ids)} images", file=sys.stderr, flush=True)
    weights = draws(len(ids), args.bootstrap, args.seed)

    def metrics(name, w=None):
        return {f"mAP@{t:g}": 100 * v for t, v in evaluators[name].result(w)["map"].items()}

    reps = {name: [metrics(name, w) for w in weights] for name in table}
    rows = []
    for name in table:
        row = {"name": name, "metrics": {k: v.to_json() for k, v in intervals(metrics(name), reps[name]).items()}}
        if name != REFERENCE:
            diff = intervals(difference(metrics(name), metrics(REFERENCE)),
                             [difference(a, b) for a, b in zip(reps[name], reps[REFERENCE])])
            row["minus_reference"] = {k: {**v.to_json(), "excludes_zero": v.excludes_zero()} for k, v in diff.items()}
        rows.append(row)
    return {"rows": rows, "images": len(ids), "equal_to_the_predictor": checks}


def markdown(doc: dict) -> str:
    lines = [f"The ICN's map in matching, on the `{doc['split']}` split of `{doc['root']}` ({doc['images']} images; "
             f"{doc['regime']}), model `{doc['model']}`; {doc['candidates']} candidates per peak; 95% bootstrap "
             f"intervals over the images ({doc['bootstrap']} draws, seed {doc['seed']}). Command in the JSON "
             "beside this file.", "",
             "| way | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | mAP^r@0.5 − naive PRM + re-ranking |",
             "|---|---|---|---|---|"]

    def cell(m):
        lo, hi = m["interval"]
        return f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

    for row in doc["rows"]:
        m = row["metrics"]
        d = row.get("minus_reference", {}).get("mAP@0.5")
        diff = "(reference)" if d is None else cell(d) + ("" if d["excludes_zero"] else " ~0")
        lines.append(f"| {row['name']} | {cell(m['mAP@0.25'])} | {cell(m['mAP@0.5'])} | {cell(m['mAP@0.75'])} "
                     f"| {diff} |")
    checks = ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in doc["equal_to_the_predictor"].items())
    lines += ["", f"Equal to the predictor's instances: {checks}. ~0: the interval holds 0.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="a model directory with an ICN")
    ap.add_argument("root", type=Path, help="VOC-layout root with Proposals/ for the split")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--proposals", type=Path, default=None, help="[default: ROOT/Proposals]")
    ap.add_argument("--images", type=int, default=0, help="the first N images of the split (0: all)")
    ap.add_argument("--candidates", type=int, default=50, help="proposals re-ranked per peak")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--regime", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "icn_in_matching", "command": shlex.join(["python", *sys.argv]), "model": str(args.model),
           "root": str(args.root), "split": args.split, "regime": regime, "candidates": args.candidates,
           "bootstrap": args.bootstrap, "seed": args.seed, **result, "dataset": dataset,
           "model_config": read_config(args.model), "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
