"""Per-stage diagnosis: where a model's masks are lost, one row per stage (issue 19).

Runs the model over a split (dev: diagnoses are for making choices) the way the predictor
does, keeping what each stage hands to the next, and measures each against the ground
truth (:mod:`icn_rt.eval.diagnosis`):

1. classification: image AP per class;
2. peaks: ground-truth instances with a peak of their class on them (recall), duplicate
   peaks (a second peak on an instance) and off-instance peaks;
3. pseudo labels (the top-k union the ICN is trained on, made here from the naive PRMs):
   IoU with the peak's instance and area;
4. maps, step by step (t = 0: the naive PRM; t = 1..T: the ICN's), binarised as matching
   binarises them (min-max ≥ 0.5): IoU with the peak's instance and area;
5. matching: the ground-truth IoU of the proposal matching chose, of the proposal that
   best fits the final map (a perfect matcher of that map) and of the best proposal of all
   (the proposals' upper bound);
6. ranking: mAP^r with the shipped choices and confidence (equal to the predictor's
   results: checked), with oracle ranking (confidence = the mask's IoU with the best
   ground truth of its class), with oracle matching (each peak takes the best proposal for
   its instance) and with both.

Per-peak measurements (3-5) are over the peaks that land on an instance of their class.
A second table splits peaks, matching and the shipped AP by class, to find where a class
that collapses is lost (its peaks' values, how many land on its objects). Writes JSON
(with the machine, the model's config and the command) and markdown tables::

    python benchmarks/diagnose.py MODEL ROOT --split dev --out benchmarks/results/diagnose_part_only.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from accuracy import dataset_record, parse_settings, predictor_for, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.eval.diagnosis import (PeakCensus, average_precision, best_match, class_average_precision,
                                   classification_ap, oracle_confidence, pair_overlap, peak_owners)
from icn_rt.matching import confidence, match, score_proposals, suppress
from icn_rt.models.icn import enhance, minmax
from icn_rt.models.store import read_config
from icn_rt.runtime.predictor import Predictor
from icn_rt.training.pseudo_labels import proposal_labels

VARIANTS = ("shipped", "oracle ranking", "oracle matching", "oracle matching + ranking")


class Tally:
    """Means of per-peak measurements by name."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, values) -> None:
        self.values.setdefault(name, []).extend(np.asarray(values, np.float64).tolist())

    def mean(self, name: str) -> float | None:
        v = self.values.get(name, [])
        return float(np.mean(v)) if v else None


class ClassTally:
    """Per class: ground-truth instances, those with a peak of their class, peaks, peaks off
    every instance of their class, peak values on and off, the GT IoU of the proposal
    picked for an on-instance peak and of the best proposal of each instance."""

    KEYS = ("on_values", "off_values", "chosen_iou", "best_iou")

    def __init__(self) -> None:
        self.classes: dict[int, dict] = {}

    def entry(self, c) -> dict:
        return self.classes.setdefault(int(c), {"instances": 0, "found": 0, "peaks": 0, "off": 0,
                                                **{k: [] for k in self.KEYS}})

    def add_peaks(self, cls, owner, value, gt_cls) -> None:
        found = set(owner[owner >= 0].tolist())
        for g, c in enumerate(gt_cls):
            e = self.entry(c)
            e["instances"] += 1
            e["found"] += int(g in found)
        for c, o, v in zip(cls, owner, value):
            e = self.entry(c)
            e["peaks"] += 1
            e["off"] += int(o < 0)
            e["on_values" if o >= 0 else "off_values"].append(float(v))

    def add(self, key: str, cls, values) -> None:
        for c, v in zip(cls, values):
            self.entry(c)[key].append(float(v))

    def to_json(self, names, ap: dict) -> dict:
        """Per class name: the counts, the means of the lists, the shipped AP at IoU 0.5."""
        out = {}
        for c, name in enumerate(names):
            e = self.entry(c)
            out[name] = {"instances": e["instances"], "found": e["found"], "peaks": e["peaks"], "off": e["off"],
                         **{k: float(np.mean(e[k])) if e[k] else None for k in self.KEYS},
                         "ap@0.5": ap.get(name)}
        return out


def _binary_at(maps: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    """Maps ``[K, S, S]`` -> ``bool [K, H, W]``: resized bilinearly, min-max normalised, ≥ 0.5."""
    if len(maps) == 0:
        return np.zeros((0, *shape), bool)
    up = torch.nn.functional.interpolate(maps[:, None].double(), size=shape, mode="bilinear",
                                         align_corners=False)[:, 0]
    return (minmax(up) >= 0.5).cpu().numpy()


def _to_shape(masks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if masks.shape[1:] == tuple(shape):
        return masks
    return np.stack([cv2.resize(m.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
                     for m in masks]) if len(masks) else np.zeros((0, *shape), bool)


def _instances(masks, labels, scores, threshold, kernels):
    """NMS as the predictor does it -> (masks, labels, scores) kept, by descending score."""
    if len(masks) == 0:
        return masks, labels, scores
    keep, _ = suppress(masks, scores, threshold, kernels)
    return masks[keep], labels[keep], scores[keep]


def diagnose_image(predictor: Predictor, image, props, gt, naive, b: int, steps: list[torch.Tensor],
                   census: PeakCensus, tally: Tally, variants: dict[str, list], k: int,
                   classes: ClassTally) -> list[tuple]:
    """One image's measurements; returns the shipped instances as (class, score)."""
    model = predictor.model
    shape = image.shape[:2]
    idx = (naive.peaks.image == b).nonzero(as_tuple=True)[0]
    cls = naive.peaks.cls[idx].cpu().numpy()
    mh, mw = naive.maps.shape[-2:]
    yx = np.stack([np.clip(((naive.peaks.y[idx].cpu().numpy() + 0.5) * shape[0] / mh).astype(int), 0, shape[0] - 1),
                   np.clip(((naive.peaks.x[idx].cpu().numpy() + 0.5) * shape[1] / mw).astype(int), 0, shape[1] - 1)],
                  1).reshape(-1, 2)
    value = naive.peaks.value[idx].cpu().numpy().astype(np.float64)
    gt_masks, gt_cls = gt.instance_masks(), gt.instance_classes()
    owner, duplicate = peak_owners(cls, yx, value, gt_masks, gt_cls)
    census.add(owner, duplicate, len(gt_cls))
    classes.add_peaks(cls, owner, value, gt_cls)
    on = owner >= 0
    truth = gt_masks[owner[on]]
    class_maps = naive.maps[b].cpu().numpy()
    # pseudo labels, from the naive PRMs with the model's matching, as training makes them
    if len(idx):
        scores, scored = score_proposals(naive.prms[idx].cpu().numpy(), class_maps[cls], props, model.matching,
                                         image=image)[:2]
        labels, _ = proposal_labels(scores, scored, k)
        iou, area = pair_overlap(_to_shape(labels, shape)[on], truth)
        tally.add("label_iou", iou)
        tally.add("label_area", area)
    # the maps of every step
    for t, v in enumerate(steps):
        binary = _binary_at(v[idx], shape)
        iou, area = pair_overlap(binary[on], truth)
        tally.add(f"map_iou_{t}", iou)
        tally.add(f"map_area_{t}", area)
    # matching, as the predictor does it
    matched = steps[-1][idx].cpu().numpy()
    best, match_score, quality = match(matched, class_maps[cls], props, model.matching, enhanced=len(steps) > 1,
                                       kernels=predictor.kernels, image=image)
    found = best >= 0
    dense = props.to_masks()
    chosen = dense[np.where(found, best, 0)] & found[:, None, None]
    chosen_iou = pair_overlap(chosen[on], truth)[0]
    tally.add("chosen_iou", chosen_iou)
    classes.add("chosen_iou", cls[on], chosen_iou)
    fit, _ = best_match(_binary_at(steps[-1][idx], shape), dense)
    tally.add("fit_iou", pair_overlap(dense[fit[on]], truth)[0] if len(dense) else np.zeros(on.sum()))
    oracle, oracle_iou = best_match(gt_masks, dense)
    tally.add("best_iou", oracle_iou)
    classes.add("best_iou", gt_cls, oracle_iou)
    # ranking and the oracles
    shipped_conf = confidence(model.instances, value, match_score, quality)
    oracle_pick = np.where(on, oracle[np.maximum(owner, 0)] if len(oracle) else best, best)
    for name in VARIANTS:
        pick = oracle_pick if "matching" in name else best
        keep = np.flatnonzero(pick >= 0)
        masks = dense[pick[keep]] if len(keep) else np.zeros((0, *shape), bool)
        conf = oracle_confidence(masks, cls[keep], gt_masks, gt_cls) if "ranking" in name else shipped_conf[keep]
        kept = _instances(masks, cls[keep], conf, model.instances.nms_iou, predictor.kernels)
        variants[name].append((*kept, gt_masks, gt_cls))
    _, labels, scores = variants["shipped"][-1][:3]
    return [(int(c), float(s)) for c, s in zip(labels, scores)]


def run(args) -> dict:
    predictor = predictor_for(args.model, parse_settings(args.settings))
    model = predictor.model
    ds = open_dataset(args.root, args.split, load_images=False)
    ids = ds.ids[: args.images] if args.images else ds.ids
    proposals = args.proposals or args.root / "Proposals"
    census, tally, classes = PeakCensus(), Tally(), ClassTally()
    variants: dict[str, list] = {name: [] for name in VARIANTS}
    scores, targets = [], []
    consistent = True
    for start in range(0, len(ids), args.batch_size):
        batch = ids[start: start + args.batch_size]
        images = [read_image(ds.image_path(i)) for i in batch]
        props = [load_proposals(proposal_path(proposals, i), image.shape[:2]) for i, image in zip(batch, images)]
        naive = predictor.naive_maps(images)
        steps = [naive.prms]
        with torch.no_grad():
            for _ in range(model.icn_settings.steps if model.enhances else 0):
                steps.append(enhance(model.icn, naive.x, naive.peaks.image, steps[-1], 1, model.icn_settings.chunk))
        predicted = predictor.predict(images, props, keep_maps=False)
        for b, image_id in enumerate(batch):
            gt = ds.ground_truth(image_id)
            scores.append(naive.scores[b].cpu().numpy())
            targets.append(np.isin(np.arange(len(model.classes)), ds.labels(image_id)).astype(np.float64))
            ours = diagnose_image(predictor, images[b], props[b], gt, naive, b, steps, census, tally, variants,
                                  args.k, classes)
            theirs = [(i.class_id, i.score) for i in predicted[b].instances]
            consistent &= ours == theirs
        print(f"{min(start + args.batch_size, len(ids))}/{len(ids)} images", file=sys.stderr, flush=True)
    class_ap = classification_ap(np.array(scores), np.array(targets))
    aps = {name: average_precision(v, len(model.classes)) for name, v in variants.items()}
    steps_run = model.icn_settings.steps if model.enhances else 0
    shipped = class_average_precision(variants["shipped"], len(model.classes))
    return {"classes": list(model.classes), "class_ap": class_ap, "census": census.to_json(), "tally": tally,
            "steps": steps_run, "aps": aps, "images": len(ids), "consistent_with_predictor": bool(consistent),
            "per_class": classes.to_json(model.classes, dict(zip(model.classes, shipped)))}


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{100 * v:.1f}"


def rows_of(result: dict) -> list[dict]:
    """One row per stage: the stage, what is measured, the value (percent) and what it costs."""
    t, c, aps = result["tally"], result["census"], result["aps"]
    ap = result["class_ap"]
    rows = [{"stage": "classification", "measure": "image AP, mean over classes (per class: "
             + ", ".join(f"{n} {_pct(a)}" for n, a in zip(result["classes"], ap)) + ")",
             "value": float(np.nanmean(ap)) if np.isfinite(ap).any() else None},
            {"stage": "peaks", "measure": f"GT instances with a peak of their class ({c['found']} of "
             f"{c['instances']}); peaks off every instance of their class {_pct(c['off_instance_share'])} %, "
             f"duplicates {_pct(c['duplicate_share'])} % (of {c['peaks']})", "value": c["recall"]},
            {"stage": "pseudo labels (top-k union)", "measure": f"IoU with the peak's instance (area "
             f"{_pct(t.mean('label_area'))} % of the image)", "value": t.mean("label_iou")}]
    for step in range(result["steps"] + 1):
        name = "map V_0 (naive PRM)" if step == 0 else f"map V_{step} (ICN)"
        rows.append({"stage": name, "measure": f"binarised, IoU with the peak's instance (area "
                     f"{_pct(t.mean(f'map_area_{step}'))} % of the image)", "value": t.mean(f"map_iou_{step}")})
    rows += [{"stage": "proposals (upper bound)", "measure": "best proposal's IoU with each GT instance",
              "value": t.mean("best_iou")},
             {"stage": "matching, a perfect matcher of the final map", "measure": "GT IoU of the proposal that "
              "best fits the map", "value": t.mean("fit_iou")},
             {"stage": "matching (shipped score)", "measure": "GT IoU of the chosen proposal",
              "value": t.mean("chosen_iou")}]
    for name in VARIANTS:
        m = aps[name]
        rows.append({"stage": f"instances: {name}", "measure": f"mAP^r@0.5 (0.25 / 0.75: {m['mAP@0.25']:.1f} / "
                     f"{m['mAP@0.75']:.1f})", "value": m["mAP@0.5"] / 100})
    return rows


def markdown(doc: dict) -> str:
    lines = [f"Per-stage diagnosis of `{doc['model']}` on the `{doc['split']}` split of `{doc['root']}` "
             f"({doc['images']} images; {doc['regime']}). Per-peak rows: peaks on an instance of their class. "
             f"Command and settings in the JSON beside this file.", "",
             "| stage | measure | % |", "|---|---|---|"]
    lines += [f"| {r['stage']} | {r['measure']} | {_pct(r['value'])} |" for r in doc["rows"]]
    same = "yes" if doc["consistent_with_predictor"] else "NO"
    lines += ["", f"The shipped instances equal the predictor's: {same}.", ""]
    if doc.get("per_class"):
        lines += [class_table(doc["per_class"], doc.get("class_ap", {})), ""]
    return "\n".join(lines)


def class_table(per_class: dict, class_ap: dict) -> str:
    """Per class: classification AP, instances with a peak of their class, peaks off every
    instance, mean peak value on / off, GT IoU of the pick and of the best proposal, AP."""
    def num(v, scale=1.0):
        return "-" if v is None else f"{scale * v:.1f}"

    lines = ["| class | classification AP | instances with a peak | peaks off every instance | peak value on / off "
             "| GT IoU of the pick | best proposal's IoU | mAP^r@0.5 |", "|---|---|---|---|---|---|---|---|"]
    for name, e in per_class.items():
        lines.append(f"| {name} | {num(class_ap.get(name), 100)} | {e['found']} of {e['instances']} | {e['off']} of "
                     f"{e['peaks']} | {num(e['on_values'])} / {num(e['off_values'])} | {num(e['chosen_iou'], 100)} | "
                     f"{num(e['best_iou'], 100)} | {num(e['ap@0.5'])} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("root", type=Path, help="VOC-layout root with Proposals/ for the split")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--proposals", type=Path, default=None, help="[default: ROOT/Proposals]")
    ap.add_argument("--images", type=int, default=0, help="the first N images of the split (0: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--k", type=int, default=3, help="proposals per pseudo label (training's k)")
    ap.add_argument("--settings", default="", help="over the model's config: T=,score=,binarize=,confidence=,nms= "
                                                   "(as benchmarks/accuracy.py's rows)")
    ap.add_argument("--regime", default=None, help="a name for the data's regime [default: from ROOT/synth.json]")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "diagnose", "command": shlex.join(["python", *sys.argv]), "model": str(args.model),
           "settings": parse_settings(args.settings),
           "root": str(args.root), "split": args.split, "regime": regime, "images": result["images"],
           "rows": rows_of(result), "census": result["census"], "per_class": result["per_class"],
           "class_ap": dict(zip(result["classes"], [None if not np.isfinite(a) else float(a)
                                                     for a in result["class_ap"]])),
           "ap": result["aps"], "consistent_with_predictor": result["consistent_with_predictor"],
           "dataset": dataset, "model_config": read_config(args.model), "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
