"""Can a teacher label be re-picked among the proposals around it? The student's labels
(``MODEL/student-labels/SPLIT.json``, written by ``icn-rt train student``: the pipeline's
instances on the split) against the split's ground truth, as they are and re-picked by
cues that need no masks:

- **class colour**: a colour histogram per class (RGB, 8 bins per channel) from the
  labels of ``--fit-split`` (each weighted by its score) against one of the pixels no
  label covers; each label becomes the proposal, among those with IoU ≥ τ with it, whose
  pixels sum the highest log-likelihood ratio of its class (``bias`` subtracted per pixel),
  where that beats the label's own sum;
- **the classifier, kept**: the model's classifier on the image with everything outside
  each candidate painted the image's mean colour; the candidate of the highest class
  score (minus ``λ`` per percent of the image it covers) replaces the label;
- **the classifier, erased**: the same with the candidate painted over instead; the
  largest drop of the class score (minus ``λ`` per percent) wins;
- **the class map**: the model's classifier on the whole image; its map of the label's
  class, resized to the image (bilinear) and cut at ``α`` × its maximum over the image,
  keeps the connected regions the label overlaps; the label becomes the proposal, among
  those with IoU ≥ τ with it, that fits that region best, where it fits better than the
  label itself (the map says how far the object reaches, the label which object);
- **a student's mask** (``--student``: a student's instances on images it did not learn
  from, e.g. two students cross-fitted on halves of the training split): each label
  becomes the proposal, among those with IoU ≥ τ with it, that fits best the student
  instance of its class overlapping it most.

A last row is the ceiling of re-picking: each label replaced by the proposal (IoU ≥ 0.1
with it) that fits its ground-truth object best. Each label is *right* (mask IoU ≥ 0.5
with an unclaimed object of its class, best score first, as the student's threshold is
chosen), else a *leak*, a *fragment* or *off* against the object of its class it overlaps
most, by the rule of ``label_quality.kinds`` (covers ≥ half of it; ≥ half of the label on
it; neither); precision, recall and F1 are over all labels (no threshold), with 95% bootstrap
intervals over the images and the paired difference to the labels as they are.

    python benchmarks/label_repick.py ROOT MODEL --split dev --fit-split train --out label_repick.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from label_quality import kinds, overlaps
from machine import machine_info

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.results import load_results
from icn_rt.eval.bootstrap import bootstrap, difference, draws, intervals
from icn_rt.eval.instance import mask_iou
from icn_rt.models.store import load_model

BINS = 8


def load_split(root: Path, model: Path, split: str) -> tuple:
    """The split's dataset and, per image, ``(id, image, tagged labels with masks, proposals)``."""
    ds = open_dataset(root, split, load_images=False)
    results = load_results(model / "student-labels" / f"{split}.json", ds.classes)
    items = []
    for iid in ds.ids:
        tags = set(ds.labels(iid).tolist())
        labels = [dict(e, mask=rlelib.decode(e["segmentation"])) for e in results.get(iid, []) if e["class_id"] in tags]
        props = load_proposals(proposal_path(root / "Proposals", iid))
        items.append((iid, read_image(ds.image_path(iid)), labels, props))
    return ds, items


def colour_weights(items: list, classes: int, alpha: float = 1e-4) -> np.ndarray:
    """``float64 [C, BINS³]``: log p(colour | class) − log p(colour | no label)."""
    hc, hb = np.zeros((classes, BINS ** 3)), np.zeros(BINS ** 3)
    for _, image, labels, _ in items:
        q, free = _quantised(image), np.ones(image.shape[:2], bool)
        for e in labels:
            hc[e["class_id"]] += np.bincount(q[e["mask"]], minlength=BINS ** 3) * e["score"]
            free &= ~e["mask"]
        hb += np.bincount(q[free], minlength=BINS ** 3)
    pc, pb = hc / np.maximum(hc.sum(1, keepdims=True), 1e-9), hb / max(hb.sum(), 1e-9)
    return np.log((pc + alpha) / (pb + alpha))


def _quantised(image: np.ndarray) -> np.ndarray:
    q = image.astype(np.int64) * BINS // 256
    return (q[..., 0] * BINS + q[..., 1]) * BINS + q[..., 2]


def _near(props, mask: np.ndarray, tau: float) -> np.ndarray:
    """The proposals with IoU ≥ ``tau`` with ``mask``, the closest first."""
    iou = props.iou(mask)
    near = np.flatnonzero(iou >= tau)
    return near[np.argsort(-iou[near], kind="stable")]


def by_colour(items: list, weights: np.ndarray, tau: float, bias: float) -> dict:
    out = {}
    for iid, image, labels, props in items:
        q, new = _quantised(image), []
        for e in labels:
            w = weights[e["class_id"]][q] - bias
            sums = props.segment_sums(np.bincount(props.superpixels.ravel(), w.ravel(), props.num_superpixels))
            near = _near(props, e["mask"], tau)
            best = near[np.argmax(sums[near])] if len(near) else None
            keep = best is None or sums[best] <= w[e["mask"]].sum()
            new.append(e if keep else dict(e, mask=props.mask(best)))
        out[iid] = new
    return out


def classifier_scores(items: list, model_dir: Path, tau: float = 0.1, most: int = 60) -> dict:
    """Per label: its candidates (the label first, then up to ``most`` proposals with IoU ≥
    ``tau``), each one's area share and its class's score kept and erased, and the image's."""
    model = load_model(model_dir, "cpu")
    net, side, out = model.classifier.eval(), model.input_size, {}
    for iid, image, labels, props in items:
        fill = image.reshape(-1, 3).mean(0).astype(np.uint8)
        for j, e in enumerate(labels):
            near = _near(props, e["mask"], tau)
            masks = np.concatenate([e["mask"][None], props.to_masks(near[:most])])
            batch = [np.where(m[..., None], image, fill) for m in masks] + [np.where(m[..., None], fill, image)
                                                                           for m in masks] + [image]
            with torch.no_grad():
                s = torch.cat([net(preprocess_batch(batch[b:b + 64], side))[0][:, e["class_id"]]
                               for b in range(0, len(batch), 64)]).numpy()
            n = len(masks)
            out[iid, j] = {"near": near[:most], "area": masks.reshape(n, -1).mean(1) * 100, "kept": s[:n],
                           "erased": s[n:2 * n], "image": s[-1]}
    return out


def by_classifier(items: list, scores: dict, form: str, lam: float) -> dict:
    out = {}
    for iid, _, labels, props in items:
        new = []
        for j, e in enumerate(labels):
            r = scores[iid, j]
            value = (r["kept"] if form == "kept" else r["image"] - r["erased"]) - lam * r["area"]
            b = int(np.argmax(value))
            new.append(e if b == 0 else dict(e, mask=props.mask(r["near"][b - 1])))
        out[iid] = new
    return out


def class_maps(items: list, model_dir: Path) -> dict:
    """Per image: the classifier's class maps ``float32 [C, H, W]``, resized to the image."""
    model = load_model(model_dir, "cpu")
    net, side, out = model.classifier.eval(), model.input_size, {}
    for iid, image, labels, _ in items:
        if not labels:
            continue
        with torch.no_grad():
            maps = net(preprocess_batch([image], side))[1][0].numpy()
        h, w = image.shape[:2]
        out[iid] = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR) for m in maps])
    return out


def map_region(class_map: np.ndarray, mask: np.ndarray, alpha: float) -> np.ndarray:
    """The connected regions of ``class_map ≥ alpha × its maximum`` that ``mask`` overlaps."""
    hot = (class_map >= alpha * max(float(class_map.max()), 1e-9)).astype(np.uint8)
    _, parts = cv2.connectedComponents(hot, connectivity=8)
    touched = np.unique(parts[mask & (hot > 0)])
    return np.isin(parts, touched[touched > 0])


def by_class_map(items: list, maps: dict, tau: float, alpha: float) -> dict:
    out = {}
    for iid, _, labels, props in items:
        new = []
        for e in labels:
            region = map_region(maps[iid][e["class_id"]], e["mask"], alpha)
            near = _near(props, e["mask"], tau)
            if not region.any() or not len(near):
                new.append(e)
                continue
            fit = props.iou(region)[near]
            best = int(np.argmax(fit))
            own = mask_iou(e["mask"][None], region[None])[0, 0]
            new.append(e if own >= fit[best] else dict(e, mask=props.mask(near[best])))
        out[iid] = new
    return out


def by_student(items: list, results: dict, tau: float, min_score: float = 0.5) -> dict:
    """Each label replaced by the proposal (IoU ≥ ``tau`` with it) that fits best the mask
    of the student instance of its class (score ≥ ``min_score``) overlapping it most, where
    one overlaps it; ``results``: a student's (:func:`load_results`) on images it did not
    learn from."""
    out = {}
    for iid, _, labels, props in items:
        own = [e for e in results.get(iid, []) if e["score"] >= min_score]
        masks = rlelib.decode_many([e["segmentation"] for e in own], props.shape) if own else None
        new = []
        for e in labels:
            same = [k for k, o in enumerate(own) if o["class_id"] == e["class_id"]]
            near = _near(props, e["mask"], tau)
            overlap = mask_iou(e["mask"][None], masks[same])[0] if same else np.zeros(0)
            if not len(near) or not len(overlap) or overlap.max() == 0:
                new.append(e)
                continue
            guide = masks[same[int(np.argmax(overlap))]]
            new.append(dict(e, mask=props.mask(near[int(np.argmax(props.iou(guide)[near]))])))
        out[iid] = new
    return out


def ceiling(ds, items: list) -> dict:
    out = {}
    for iid, _, labels, props in items:
        gt = ds.ground_truth(iid)
        new = []
        for e in labels:
            same = [inst.mask for inst in gt.instances if inst.class_id == e["class_id"]]
            near = _near(props, e["mask"], 0.1)
            if not same or not len(near):
                new.append(e)
                continue
            target = same[int(np.argmax(mask_iou(e["mask"][None], np.stack(same))[0]))]
            best = near[int(np.argmax(props.iou(target)[near]))]
            new.append(dict(e, mask=props.mask(best)))
        out[iid] = new
    return out


def per_image(ds, labelled: dict) -> list[np.ndarray]:
    """Per image ``[objects, right, leak, fragment, off]`` counts."""
    rows = []
    for iid in ds.ids:
        gt = ds.ground_truth(iid)
        gm = gt.instance_masks()
        gl = np.array([inst.class_id for inst in gt.instances])
        labels = sorted(labelled.get(iid, []), key=lambda e: -e["score"])
        count = np.zeros(5)
        count[0] = len(gm)
        taken = np.zeros(len(gm), bool)
        for e in labels:
            iou = mask_iou(e["mask"][None], gm)[0] if len(gm) else np.zeros(0)
            ok = np.flatnonzero(~taken & (gl == e["class_id"]) & (iou >= 0.5))
            if len(ok):
                taken[ok[np.argmax(iou[ok])]] = True
                count[1] += 1
                continue
            same = np.flatnonzero(gl == e["class_id"])
            g = gm[same[np.argmax(iou[same])]] if len(same) else np.zeros_like(e["mask"])
            fit = overlaps(e["mask"], g)
            count[1 + int(kinds(np.array([[0.0, *fit[1:], 0.0]]))[0])] += 1  # not right: 2 leak, 3 fragment, 4 off
        rows.append(count)
    return rows


def metrics(rows: list[np.ndarray]):
    table = np.stack(rows)

    def at(weights: np.ndarray | None) -> dict[str, float]:
        w = np.ones(len(table)) if weights is None else weights
        objects, right, leak, fragment, off = (w[:, None] * table).sum(0)
        labels = right + leak + fragment + off
        p, r = 100 * right / max(labels, 1), 100 * right / max(objects, 1)
        return {"precision": p, "recall": r, "F1": 2 * p * r / max(p + r, 1e-9), "leak": 100 * leak / max(labels, 1),
                "fragment": 100 * fragment / max(labels, 1), "off": 100 * off / max(labels, 1)}
    return at


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--fit-split", default="train", help="whose labels the colour model is fitted on")
    ap.add_argument("--student", action="append", default=[], type=Path,
                    help="a student's results on the split's images (unseen by it), repeatable: their union")
    ap.add_argument("--notes", default="", help="how the inputs were made, kept in the JSON")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    ds, items = load_split(a.root, a.model, a.split)
    weights = colour_weights(load_split(a.root, a.model, a.fit_split)[1], len(ds.classes))
    scores = classifier_scores(items, a.model)
    sets = {"the labels as they are (the pipeline's instances)": {i: e for i, _, e, _ in items}}
    for tau in (0.1, 0.5):
        sets[f"class colour, τ {tau}, bias 0"] = by_colour(items, weights, tau, 0.0)
    sets["class colour, τ 0.5, bias 0.5"] = by_colour(items, weights, 0.5, 0.5)
    for form, lam in (("kept", 0.0), ("kept", 0.4), ("erased", 0.1), ("erased", 0.2)):
        sets[f"the classifier, {form}, λ {lam}"] = by_classifier(items, scores, form, lam)
    maps = class_maps(items, a.model)
    for tau in (0.1, 0.3):
        for alpha in (0.2, 0.35, 0.5):
            sets[f"the class map, τ {tau}, α {alpha}"] = by_class_map(items, maps, tau, alpha)
    if a.student:
        results = {}
        for path in a.student:
            for iid, entries in load_results(path, ds.classes).items():
                results.setdefault(iid, []).extend(entries)
        for tau in (0.1, 0.3):
            sets[f"the student's mask (an unseen image's), τ {tau}"] = by_student(items, results, tau)
    sets["ceiling: the proposal near each label that fits its object best"] = ceiling(ds, items)
    measured = {name: metrics(per_image(ds, labelled)) for name, labelled in sets.items()}
    base = next(iter(measured.values()))
    picks = draws(len(ds.ids), a.bootstrap, 0)
    report = {"benchmark": "label_repick", "command": shlex.join(["python", *sys.argv]), "root": str(a.root),
              "model": str(a.model), "split": a.split, "fit_split": a.fit_split, "images": len(ds.ids),
              "labels": sum(len(e) for _, _, e, _ in items), "bootstrap": a.bootstrap, "notes": a.notes, "rows": {}}
    for name, m in measured.items():
        row = {k: v.to_json() for k, v in bootstrap(m, len(ds.ids), a.bootstrap).items()}
        if m is not base:
            paired = intervals(difference(m(None), base(None)), [difference(m(w), base(w)) for w in picks])
            f1 = paired["F1"]
            row["F1 − the labels as they are"] = dict(f1.to_json(), excludes_zero=f1.excludes_zero())
        report["rows"][name] = row
        print(name, {k: round(v["estimate"], 1) for k, v in row.items()}, flush=True)
    report["machine"] = machine_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=1) + "\n")
    a.out.with_suffix(".md").write_text(markdown(report))


def markdown(report: dict) -> str:
    def cell(m: dict) -> str:
        lo, hi = m["interval"]
        return f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]" + ("" if m.get("excludes_zero", True) else " ~0")

    keys = ("precision", "recall", "F1", "F1 − the labels as they are", "leak", "fragment", "off")
    lines = ["| labels of " + report["split"] + " | " + " | ".join(k + (" %" if k in keys[4:] else "") for k in keys)
             + " |", "|---|" + "---|" * len(keys)]
    for name, row in report["rows"].items():
        lines.append(f"| {name} | " + " | ".join(cell(row[k]) if k in row else "(reference)" for k in keys) + " |")
    return "\n".join(lines) + (f"\n\n{report['split']}, {report['images']} images, {report['labels']} labels "
                               f"(`{report['root']}`, model `{report['model']}`); the colour model fitted on "
                               f"{report['fit_split']}'s labels; 95% bootstrap intervals over the images "
                               f"({report['bootstrap']} draws); ~0: the difference's interval holds 0.\n")


if __name__ == "__main__":
    main()
