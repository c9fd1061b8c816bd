"""Can the ICN learn from its labels? Each label source trains a fresh ICN side by side on
the same training peaks, and every one is scored on the same held-out peaks against their
instances' true masks (issue 36: why the ICN adds nothing once proposals are re-ranked).

The training peaks of a split are those stored by ``icn-rt train pseudo-labels``; a label
source is a label directory of the same peaks (same images, same peak order). ``--truth``
names the directory made with ``--supervision saliency`` (each peak's ground-truth
instance): it scores every source, and trained on as a source of its own it is the
oracle — what the ICN reaches from perfect labels. A source may keep only its most
object-like training peaks (``:top=F``: the fraction F with the highest objectness of
the kept proposal, :mod:`icn_rt.matching.objectness`); held-out peaks are never filtered.

Per source, every ``--every`` steps: the held-out peaks' binary cross entropy against the
source's own labels beside that of the best constant prediction (the training labels'
foreground share: a network that learned nothing about the image scores about that), and
the IoU with the true mask of the ICN's map binarised as matching binarises it (min-max ≥
0.5); once: the IoU of the source's own labels with the true masks (the labels' quality).
Training is the ICN trainer's (its model, loss, Adam, augmentation) with self-feeding
off, at a constant learning rate. ``--prm-blur σ`` widens the PRM the ICN is given (a
Gaussian of σ px, rescaled to a maximum of 1): does the ICN learn when its cue is not a
dot? (Binarised, the naive PRM covers well under 1 % of the image.) Writes JSON (command,
machine, curves) and markdown::

    python benchmarks/icn_learnability.py ROOT --truth MODEL/labels-saliency-train \\
        --source "paper top-3=MODEL/labels-proposals-train" \\
        --source "GT masks (oracle)=MODEL/labels-saliency-train" \\
        --out benchmarks/results/icn_learnability_part_only.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accuracy import dataset_record, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.eval.diagnosis import pair_overlap
from icn_rt.matching.objectness import objectness
from icn_rt.models.icn import ICN, ICNSettings, load_classifier_encoder, minmax
from icn_rt.models.store import load_classifier
from icn_rt.training.icn import ICNTrainSettings, PeakSamples


def parse_source(text: str) -> tuple[str, Path, float]:
    """``NAME=DIR[:top=F]`` -> (name, label directory, the share of training peaks kept)."""
    name, _, rest = text.partition("=")
    where, _, option = rest.partition(":top=")
    top = float(option) if option else 1.0
    if not name or not where or not 0 < top <= 1:
        raise SystemExit(f"--source {text!r}: expected NAME=DIR[:top=F] with 0 < F <= 1")
    return name, Path(where), top


def peak_objectness(root: Path, proposals: Path, labels: Path, split: str) -> np.ndarray:
    """The objectness of each stored peak's kept proposal (its first), in the order of
    :class:`PeakSamples`; -inf for a peak that kept none."""
    ds = open_dataset(root, split, load_images=False)
    out = []
    for path in sorted(labels.glob("*.npz")):
        with np.load(path) as z:
            kept = z["kept"][:, 0] if len(z["kept"]) else np.zeros(0, np.int64)
        if len(kept) == 0:
            continue
        image = read_image(ds.image_path(path.stem))
        props = load_proposals(proposal_path(proposals, path.stem), image.shape[:2])
        value = np.full(len(kept), -np.inf)
        ok = kept >= 0
        value[ok] = objectness(image, props, kept[ok])
        out.append(value)
    return np.concatenate(out) if out else np.zeros(0)


def stack(samples: PeakSamples, idx, blur: float = 0.0) -> tuple[torch.Tensor, ...]:
    """(images, PRMs, labels) of the peaks ``idx``; PRMs blurred by :func:`blurred`."""
    x, prm, label = (torch.stack(v) for v in zip(*[samples[int(i)] for i in idx]))
    return x, blurred(prm, blur), label


def blurred(prm: torch.Tensor, sigma: float) -> torch.Tensor:
    """``prm [N, 1, S, S]`` convolved with a Gaussian of ``sigma`` px (3σ each side, zero
    padding) and rescaled to a maximum of 1 (the PRM-extent experiment; 0: as it is)."""
    if sigma <= 0:
        return prm
    r = int(np.ceil(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=prm.dtype) ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    out = F.conv2d(F.conv2d(prm, g.view(1, 1, 1, -1), padding=(0, r)), g.view(1, 1, -1, 1), padding=(r, 0))
    peak = out.flatten(1).amax(1).clamp_min(1e-12)
    return out / peak[:, None, None, None]


def new_icn(args) -> ICN:
    """A fresh ICN of ``args``' encoder; ``classifier``: ``args.classifier``'s backbone and weights."""
    if args.encoder != "classifier":
        return ICN(ICNSettings(encoder=args.encoder, width=args.width, steps=1))
    if args.classifier is None:
        raise SystemExit("--encoder classifier starts from a model's classifier: pass --classifier MODEL")
    classifier = load_classifier(args.classifier)[0]
    icn = ICN(ICNSettings(encoder="classifier", trunk=classifier.settings.backbone, width=args.width, steps=1))
    load_classifier_encoder(icn, classifier.backbone.state_dict())
    return icn


def train_source(root: Path, labels: Path, train: np.ndarray, held: tuple[torch.Tensor, ...],
                 truth: np.ndarray, args) -> dict:
    """One fresh ICN trained on ``labels`` at the ``train`` peaks; its curve on ``held``."""
    torch.manual_seed(args.seed)
    augment = ICNTrainSettings(self_feed=0.0, seed=args.seed) if args.augment else None
    samples = PeakSamples(root, labels, args.input_size, augment)
    hx, hp, hl = held
    icn = new_icn(args)
    opt = torch.optim.Adam(icn.parameters(), lr=args.lr)
    prior = float(np.mean([samples[int(i)][2].mean().item() for i in train]))
    p = min(max(prior, 1e-6), 1 - 1e-6)
    prior_bce = float(F.binary_cross_entropy(torch.full_like(hl, p), hl).item())
    label_iou = float(pair_overlap((hl > 0.5).numpy(), truth)[0].mean())
    rng = np.random.default_rng(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(args.steps + 1):
        if step % args.every == 0 or step == args.steps:
            icn.eval()
            with torch.no_grad():
                logits = torch.cat([icn(hx[s: s + 32], hp[s: s + 32]) for s in range(0, len(hx), 32)])
            icn.train()
            binary = minmax(torch.sigmoid(logits)[:, 0])[:, None] >= 0.5
            curve.append({"step": step, "held_out_bce": float(F.binary_cross_entropy_with_logits(logits, hl).item()),
                          "map_iou_with_truth": float(pair_overlap(binary.numpy(), truth)[0].mean()),
                          "seconds": time.perf_counter() - start})
            print(f"  step {step}: held-out BCE {curve[-1]['held_out_bce']:.3f} (constant {prior_bce:.3f}), "
                  f"map IoU with the true masks {100 * curve[-1]['map_iou_with_truth']:.1f}", file=sys.stderr,
                  flush=True)
        if step == args.steps:
            break
        samples.epoch = step
        x, prm, label = stack(samples, rng.choice(train, args.batch_size, replace=False), args.prm_blur)
        loss = F.binary_cross_entropy_with_logits(icn(x, prm), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"training_peaks": len(train), "label_share": prior, "constant_bce": prior_bce,
            "label_iou_with_truth": label_iou, "curve": curve}


def run(args) -> dict:
    sources = [parse_source(s) for s in args.source]
    truth_samples = PeakSamples(args.root, args.truth, args.input_size, None)
    n = len(truth_samples)
    order = np.random.default_rng(args.seed).permutation(n)
    held_idx, pool = np.sort(order[: args.held_out]), order[args.held_out:]
    truth = (stack(truth_samples, held_idx)[2] > 0.5).numpy()
    proposals = args.proposals or args.root / "Proposals"
    out = {}
    for name, labels, top in sources:
        samples = PeakSamples(args.root, labels, args.input_size, None)
        if len(samples) != n:
            raise SystemExit(f"{labels}: {len(samples)} peaks, but {args.truth} has {n}: not the same peaks")
        train = pool
        if top < 1:
            value = peak_objectness(args.root, proposals, labels, args.split)[pool]
            train = pool[np.argsort(-value, kind="stable")[: max(args.batch_size, round(top * len(pool)))]]
        print(f"{name}: {len(train)} training peaks", file=sys.stderr, flush=True)
        held = stack(samples, held_idx, args.prm_blur)
        result = train_source(args.root, labels, np.sort(train), held, truth, args)
        out[name] = {"labels": str(labels), "top": top, **result}
    return {"sources": out, "held_out_peaks": len(held_idx), "peaks": n}


def markdown(doc: dict) -> str:
    lines = [f"ICN learnability on `{doc['root']}` ({doc['regime']}): one fresh ICN per label source "
             f"({doc['settings']['encoder']}, width {doc['settings']['width']}, Adam lr {doc['settings']['lr']:g}, "
             f"batch {doc['settings']['batch_size']}, {doc['settings']['steps']} steps"
             + (f", PRM input blurred by σ {doc['settings']['prm_blur']:g} px" if doc["settings"]["prm_blur"] else "")
             + "), scored on the same "
             f"{doc['held_out_peaks']} held-out peaks of {doc['peaks']}. Seed {doc['settings']['seed']}. "
             "Command in the JSON beside this file.", "",
             "| label source | training peaks | labels' IoU with the true masks | held-out BCE (best constant) "
             "| ICN map's IoU with the true masks, by step |", "|---|---|---|---|---|"]
    for name, s in doc["sources"].items():
        last = s["curve"][-1]
        by_step = ", ".join(f"{c['step']}: {100 * c['map_iou_with_truth']:.1f}" for c in s["curve"])
        lines.append(f"| {name} | {s['training_peaks']} | {100 * s['label_iou_with_truth']:.1f} | "
                     f"{last['held_out_bce']:.3f} ({s['constant_bce']:.3f}) | {by_step} |")
    lines += ["", "Held-out BCE is against each source's own labels; at or above the best constant, the ICN has "
              "learned nothing from the image that holds beyond its training peaks.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="VOC-layout root")
    ap.add_argument("--truth", type=Path, required=True, help="labels made with --supervision saliency")
    ap.add_argument("--source", action="append", required=True, help="NAME=DIR[:top=F] (repeat)")
    ap.add_argument("--split", default="train", help="the split the labels are of")
    ap.add_argument("--proposals", type=Path, default=None, help="[default: ROOT/Proposals]")
    ap.add_argument("--held-out", type=int, default=120, help="peaks held out for scoring")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--encoder", default="small", help="small | vgg16 | classifier (needs --classifier)")
    ap.add_argument("--classifier", type=Path, default=None, help="the model whose classifier the encoder starts from")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--input-size", type=int, default=160)
    ap.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                    help="the trainer's flip and crop")
    ap.add_argument("--prm-blur", type=float, default=0.0,
                    help="blur the PRM input by a Gaussian of this sigma in px (the PRM-extent experiment; 0: off)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--regime", default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    regime, dataset = dataset_record(args.root, args.regime)
    settings = {k: getattr(args, k) for k in ("steps", "every", "lr", "batch_size", "encoder", "width",
                                              "input_size", "augment", "seed", "held_out", "prm_blur")}
    settings["classifier"] = args.classifier and str(args.classifier)
    doc = {"benchmark": "icn_learnability", "command": shlex.join(["python", *sys.argv]), "root": str(args.root),
           "regime": regime, "settings": settings, **result, "dataset": dataset, "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
