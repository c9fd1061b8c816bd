"""Which cue would rank or outline the student's masks better? The student's detections on
a split, made once, then scored offline in every way below against the split's ground
truth (mAP^r at IoU 0.5 and 0.75, each paired with the student as shipped, 95% bootstrap
intervals over the images):

- **as shipped**: each detection's 28×28 mask pasted at the image's size and replaced by
  the proposal it overlaps most (``refine: proposals``, at least ``proposal_iou``),
  scored by detection × contrast^``contrast_power``, then the mask NMS: the model's own
  ``student`` settings, so this row is ``accuracy.py``'s ``student=1,refine=proposals``;
- **snapping rules** (which of the proposals overlapping the pasted mask replaces it):
  none (the pasted mask), the mask cut at 0.3 or 0.7 instead of 0.5, the overlap ×
  the proposal's consensus (:func:`~icn_rt.matching.objectness.consensus`) to 0.25;
  and the **oracle snap**: among the same candidates (the 20 overlapping it most), the one
  that best fits an object of its class — what a perfect choice of extent would give;
- **ranking cues** (the shipped masks, score × a cue): the mask head's certainty (mean
  probability of the cells it calls the object), how little of the mask lies on its
  box's border (a box cut short of its object is filled to the edge), and the
  classifier's score of the detection's class with only the mask kept, with the mask
  erased (the score it loses), or on a crop around it; and the best a **linear mix** of
  all of them does: a logistic regression fitted on the truth of every image but
  one (the instances right at IoU 0.5) and scoring that one, for each image in turn.

Besides, the best-scored instances as shipped sorted by kind: right (IoU ≥ 0.5 with an
object of its class), a leak (covers at least half of one), a fragment (at least half of
it on one), off its class's objects. Uses the split's ground truth to score, and, in the
oracle and the mix, to choose: a diagnosis, not a setting::

    python benchmarks/student_cues.py DATA MODEL --split dev \\
        --out benchmarks/results/student_cues_photo_dev_41.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
from accuracy import dataset_record, write_report
from label_quality import kinds, overlaps
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.eval.bootstrap import difference, draws, intervals
from icn_rt.eval.instance import InstanceEvaluator, mask_iou
from icn_rt.matching.objectness import consensus, mask_contrast
from icn_rt.models.store import load_model
from icn_rt.runtime.student import StudentPredictor, mask_nms, paste_at

THRESHOLDS = (0.5, 0.75)
CANDIDATES = 20
SNAPS = ("shipped", "pasted", "cut at 0.3", "cut at 0.7", "consensus^0.25", "oracle")
CUES = ("certainty", "off the border", "classifier, kept", "classifier, lost when erased", "classifier, crop")
KINDS = ("right", "leak", "fragment", "off")


def certainty(soft: np.ndarray) -> float:
    """Mean probability of the cells of a box mask ``float [M, M]`` at or above 0.5 (0: none)."""
    on = soft >= 0.5
    return float(soft[on].mean()) if on.any() else 0.0


def off_border(soft: np.ndarray) -> float:
    """1 − the mean probability of the outermost cells of a box mask ``float [M, M]``."""
    return 1.0 - float(np.concatenate([soft[0], soft[-1], soft[1:-1, 0], soft[1:-1, -1]]).mean())


def snapped(det: dict, rule: str, truth: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The mask ``rule`` (:data:`SNAPS`) gives detection ``det`` (:func:`detections`'),
    ``truth``: the image's ``(masks bool [G, H, W], classes int [G])`` for the oracle."""
    cands = det["candidates"]
    if rule == "pasted" or len(cands) == 0:
        return det["mask"]
    if rule == "shipped":
        return cands[0]
    if rule.startswith("cut at"):
        cut = det["cut 0.3" if rule.endswith("0.3") else "cut 0.7"]
        return cands[int(np.argmax(mask_iou(cands, cut[None])[:, 0]))] if cut.any() else cands[0]
    if rule == "consensus^0.25":
        return cands[int(np.argmax(det["overlap"] * det["consensus"] ** 0.25))]
    gt, gt_cls = truth
    mine = gt[gt_cls == det["class_id"]]
    if len(mine) == 0:
        return cands[0]
    return cands[int(np.argmax(mask_iou(cands, mine).max(1)))]


def detections(student: StudentPredictor, image: np.ndarray, props) -> list[dict]:
    """The student's detections on ``image``, each with its box mask, the mask pasted at
    0.5 (and at 0.3 and 0.7) and the proposals overlapping it at least ``proposal_iou``,
    most first (at most :data:`CANDIDATES`), with their overlap and consensus. One pass:
    a model set to ``tta: flip`` is measured without it."""
    h, w = image.shape[:2]
    s = student.input_size
    with torch.no_grad():
        out = student.outputs(student.network_input([image]))
    boxes = out["boxes"].float().cpu() * torch.tensor([w / s, h / s, w / s, h / s])
    soft = out["box_masks"].float().cpu()
    pasted = {t: paste_at(soft, boxes, (h, w), t) for t in (0.3, student.settings.mask_threshold, 0.7)}
    found = []
    for k in range(len(boxes)):
        mask = pasted[student.settings.mask_threshold][k]
        if not mask.any():
            continue
        iou = props.iou(mask) if len(props) else np.zeros(0)
        near = np.flatnonzero(iou >= student.settings.proposal_iou)
        near = near[np.argsort(-iou[near], kind="stable")][:CANDIDATES]
        found.append({"class_id": int(out["labels"][k]), "detection": float(out["scores"][k]),
                      "soft": soft[k].numpy(), "mask": mask, "cut 0.3": pasted[0.3][k], "cut 0.7": pasted[0.7][k],
                      "candidates": props.to_masks(near) if len(near) else np.zeros((0, h, w), bool),
                      "overlap": iou[near], "consensus": consensus(props, near) if len(near) else np.zeros(0)})
    return found


def shipped_order(image: np.ndarray, masks: np.ndarray, classes: np.ndarray, detection: np.ndarray,
                  settings) -> tuple[list[int], np.ndarray]:
    """The instances the student keeps and their scores, as its predictor ranks them:
    detection × contrast^``contrast_power``, best first, then the mask NMS."""
    score = detection * mask_contrast(image, masks) ** settings.contrast_power if len(masks) else np.zeros(0)
    order = [k for k in np.argsort(-score, kind="stable") if masks[k].any()]
    if settings.mask_nms:
        order = mask_nms(masks, classes, order, settings.mask_nms)
    return order, score


def classifier_cues(net, side: int, image: np.ndarray, masks: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """``float [N, 3]``: the classifier's score of each mask's class with only the mask kept
    (the rest the image's mean colour), the score it loses when the mask is erased, and its
    score on a crop around the mask's box (a tenth of its side around it)."""
    if len(masks) == 0:
        return np.zeros((0, 3))
    fill = image.reshape(-1, 3).mean(0).astype(np.uint8)
    crops = []
    for m in masks:
        ys, xs = np.nonzero(m)
        pad = int(0.1 * max(np.ptp(ys), np.ptp(xs))) + 2
        crops.append(image[max(ys.min() - pad, 0): ys.max() + pad + 1, max(xs.min() - pad, 0): xs.max() + pad + 1])
    batch = [np.where(m[..., None], image, fill) for m in masks] + [np.where(m[..., None], fill, image)
                                                                   for m in masks] + crops + [image]
    with torch.no_grad():
        s = net(preprocess_batch(batch, side))[0].numpy()
    n, rows = len(masks), np.arange(len(masks))
    return np.stack([s[rows, classes], s[-1, classes] - s[n + rows, classes], s[2 * n + rows, classes]], 1)


def instance_rows(ds, model: Path, proposals: Path) -> list[dict]:
    """Per image: the truth, and per snapping rule the kept instances (masks, classes,
    scores as shipped); the shipped ones also get every cue (``float [N, len(CUES)]``)."""
    student = StudentPredictor.from_dir(model)
    classifier = load_model(model, "cpu")
    net, side = classifier.classifier.eval(), classifier.input_size
    out = []
    for n, image_id in enumerate(ds.ids):
        image = read_image(ds.image_path(image_id))
        props = load_proposals(proposal_path(proposals, image_id), image.shape[:2])
        gt = ds.ground_truth(image_id)
        truth = (gt.instance_masks(), gt.instance_classes())
        found = detections(student, image, props)
        classes = np.array([d["class_id"] for d in found], np.int64)
        detection = np.array([d["detection"] for d in found])
        record = {"truth": truth, "snaps": {}}
        for rule in SNAPS:
            masks = np.stack([snapped(d, rule, truth) for d in found]) if found else \
                np.zeros((0, *image.shape[:2]), bool)
            order, score = shipped_order(image, masks, classes, detection, student.settings)
            record["snaps"][rule] = (masks[order], classes[order], score[order])
            if rule == "shipped":
                soft = [found[k]["soft"] for k in order]
                record["cues"] = np.concatenate([
                    np.array([[certainty(m), off_border(m)] for m in soft]).reshape(-1, 2),
                    classifier_cues(net, side, image, masks[order], classes[order])], 1)
        out.append(record)
        if (n + 1) % 20 == 0 or n + 1 == len(ds.ids):
            print(f"{n + 1}/{len(ds.ids)} images", file=sys.stderr, flush=True)
    return out


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def cue_scores(score: np.ndarray, cues: np.ndarray) -> dict[str, np.ndarray]:
    """The shipped scores × each cue: the mask head's certainty and the border as they are
    (in [0, 1]), the classifier's three as sigmoid(0.3 × score) (the scale: the middle of
    0.1, 0.3 and 1, which ranked alike on the first photo training's dev split)."""
    return {CUES[0]: score * cues[:, 0], CUES[1]: score * cues[:, 1],
            **{CUES[k]: score * sigmoid(0.3 * cues[:, k]) for k in (2, 3, 4)}}


def kinds_against(masks: np.ndarray, classes: np.ndarray, truth: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Each instance's kind (:data:`KINDS`' index) against the objects of its class."""
    gt, gt_cls = truth
    rows = []
    for m, c in zip(masks, classes):
        mine = [overlaps(m, g) for g in gt[gt_cls == c]]
        rows.append(max(mine, key=lambda r: r[0]) + (0.0,) if mine else (0.0, 0.0, 0.0, 0.0))
    return kinds(np.array(rows, np.float64).reshape(-1, 4))


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """Weights (bias last) of an L2-regularised logistic regression, by L-BFGS."""
    xt = torch.tensor(np.c_[x, np.ones(len(x))], dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w, yt, reduction="sum") \
            + 0.5 * l2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def cross_fitted(records: list[dict]) -> list[np.ndarray]:
    """Per image, its shipped instances scored by a logistic mix of log(score) and the cues
    fitted on every other image (which of their instances are right, IoU ≥ 0.5): left out
    one image at a time, so every image's scores come from nearly the same fit and rank
    against each other as one model's would."""
    feats = [np.c_[np.log(np.maximum(r["snaps"]["shipped"][2], 1e-9)), r["cues"]] for r in records]
    labels = [(kinds_against(*r["snaps"]["shipped"][:2], r["truth"]) == 0).astype(np.float64) for r in records]
    every = np.concatenate(feats)
    mean, sd = every.mean(0), every.std(0) + 1e-9
    out = []
    for i in range(len(records)):
        others = [j for j in range(len(records)) if j != i]
        w = fit_logistic((np.concatenate([feats[j] for j in others]) - mean) / sd,
                         np.concatenate([labels[j] for j in others]))
        out.append(sigmoid(np.c_[(feats[i] - mean) / sd, np.ones(len(feats[i]))] @ w))
    return out


def rows_of(records: list[dict]) -> dict[str, list[tuple]]:
    """Each row's instances per image: ``(masks, classes, scores)``."""
    rows = {("snap", rule): [r["snaps"][rule] for r in records] for rule in SNAPS}
    shipped = rows["snap", "shipped"]
    scored = [cue_scores(s, r["cues"]) for (_, _, s), r in zip(shipped, records)]
    for cue in CUES:
        rows["cue", cue] = [(m, c, by_cue[cue]) for (m, c, _), by_cue in zip(shipped, scored)]
    mix = cross_fitted(records)
    rows["cue", "a linear mix of all, fitted on the other images"] = [(m, c, s) for (m, c, _), s in zip(shipped, mix)]
    return rows


def evaluators(rows: dict, records: list[dict], classes: int) -> dict:
    """Each row's :class:`InstanceEvaluator` over the split, against each image's truth."""
    out = {}
    for key, per_image in rows.items():
        ev = InstanceEvaluator(classes, THRESHOLDS)
        for (masks, cls, score), r in zip(per_image, records):
            ev.add(masks, cls, score, *r["truth"])
        out[key] = ev
    return out


def kinds_of_best(records: list[dict], most: tuple[int, ...]) -> dict:
    """How many of the ``n`` best-scored shipped instances of the split are of each kind."""
    scored = [(s, k) for r in records
              for s, k in zip(r["snaps"]["shipped"][2], kinds_against(*r["snaps"]["shipped"][:2], r["truth"]))]
    scored.sort(key=lambda t: -t[0])
    return {str(n): {name: int(sum(1 for _, k in scored[:n] if k == j)) for j, name in enumerate(KINDS)}
            for n in most}


def run(args) -> dict:
    ds = open_dataset(args.root, args.split, load_images=False)
    records = instance_rows(ds, args.model, args.proposals or args.root / "Proposals")
    evs = evaluators(rows_of(records), records, len(ds.classes))
    weights = draws(len(ds.ids), args.bootstrap, args.seed)
    reference = evs["snap", "shipped"]

    def m(ev, w=None):
        return {f"mAP@{t:g}": 100 * ev.result(w)["map"][t] for t in THRESHOLDS}

    ref_point, ref_reps = m(reference), [m(reference, w) for w in weights]
    out = []
    for (kind, name), ev in evs.items():
        point, reps = m(ev), [m(ev, w) for w in weights]
        diff = intervals(difference(point, ref_point), [difference(a, b) for a, b in zip(reps, ref_reps)])
        out.append({"kind": kind, "name": name, "metrics": {k: v.to_json() for k, v in intervals(point, reps).items()},
                    "minus_reference": {k: {**v.to_json(), "excludes_zero": v.excludes_zero()}
                                        for k, v in diff.items()}})
    regime, synth = dataset_record(args.root, None)
    return {"rows": out, "best_scored": kinds_of_best(records, (50, 100, 200)), "images": len(ds.ids),
            "objects": int(sum(len(r["truth"][1]) for r in records)), "regime": regime, "synth": synth}


def markdown(doc: dict) -> str:
    def cell(v, diff=None):
        text = f"{v['estimate']:.1f} [{v['interval'][0]:.1f}, {v['interval'][1]:.1f}]"
        if diff is not None:
            d = f"{diff['estimate']:+.1f} [{diff['interval'][0]:.1f}, {diff['interval'][1]:.1f}]"
            text += f"; {d}" + ("" if diff["excludes_zero"] else " ~0")
        return text

    lines = [f"The student's masks on `{doc['split']}` of `{doc['root']}` ({doc['images']} images, {doc['objects']} "
             f"objects; {doc['regime']}): mAP^r, then the paired difference to the student as shipped; 95% bootstrap "
             "intervals over the images. Command in the JSON beside this file.", "",
             "| way | row | mAP^r@0.5 | mAP^r@0.75 |", "|---|---|---|---|"]
    for r in doc["rows"]:
        first = r["kind"] == "snap" and r["name"] == "shipped"
        cells = [cell(r["metrics"][k], None if first else r["minus_reference"][k]) for k in ("mAP@0.5", "mAP@0.75")]
        lines.append(f"| {r['kind']} | {r['name']} | " + " | ".join(cells) + " |")
    lines += ["", "The best-scored instances as shipped, by kind:", "", "| best | " + " | ".join(KINDS) + " |",
              "|---|" + "---|" * len(KINDS)]
    for n, counts in doc["best_scored"].items():
        lines.append(f"| {n} | " + " | ".join(str(counts[k]) for k in KINDS) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--proposals", type=Path, default=None)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    doc = {**run(args), "root": str(args.root), "split": args.split, "model": str(args.model),
           "command": shlex.join(["python", *sys.argv]), "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
