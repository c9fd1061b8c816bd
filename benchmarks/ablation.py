"""The paper's ablations (Tables 1, 3, 4) on a VOC-layout split: naive PRM (w/o ICN), w/o
CFM&DFM, w/o PRM input, w/o rebalance (PRM's vanilla matching on the enhanced map), the
full model, and T = 1..4 enhancement steps — each as mAP^r 0.25/0.5/0.75, ABO, mIoU —
plus the quality of the pseudo labels the ICNs were trained on. Optionally the full ICN
trained as the paper does, without self-feeding, at T = 1..4, and for both full ICNs what
the enhancement loop does to the maps step by step (area and IoU with the ground truth of
V_t > 0.5). Writes JSON and a markdown table. The models come from (one classifier, its
pseudo labels made once, ICNs on them)::

    icn-rt data synth synth
    icn-rt proposals synth --split val
    icn-rt proposals synth --split train
    icn-rt train classifier synth --model model --backbone small --input-size 128 --sub-pixel 1 --lr 1e-3
    icn-rt train pseudo-labels synth --model model
    for m in full noprop noprm paper sal; do cp -r model model_$m; done
    icn-rt train icn synth --model model_full --encoder small --width 16 --epochs 20 --lr-step 5
    icn-rt train icn synth --model model_noprop --encoder small --width 16 --epochs 20 --lr-step 5 --no-propagation
    icn-rt train icn synth --model model_noprm --encoder small --width 16 --epochs 20 --lr-step 5 --no-prm-input
    icn-rt train icn synth --model model_paper --encoder small --width 16 --epochs 20 --lr-step 5 --self-feed 0
    icn-rt train icn synth --model model_sal --encoder small --width 16 --epochs 20 --lr-step 5 --supervision saliency
    python benchmarks/ablation.py --root synth --full model_full --no-propagation model_noprop \\
        --no-prm-input model_noprm --paper-training model_paper --saliency model_sal \\
        --picture val_000003 --out benchmarks/results/ablation_synth_val.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image, write_image
from icn_rt.eval.report import evaluate
from icn_rt.models.store import read_config
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.predictor import Predictor

_RECIPE = __doc__.split("::")[1].replace("\\\n", "")
COMMANDS = [" ".join(line.split()) for line in _RECIPE.splitlines() if line.strip()]


def _variants(args) -> list[tuple[str, str, Path, dict]]:
    """(table, name, model dir, predictor overrides) in the order of the paper's tables."""
    full = args.full
    vanilla = replace(Predictor.from_dir(full, icn_steps=0).model.matching, score="vanilla")
    rows = [("ablation", "w/o ICN (naive PRM)", full, {"icn_steps": 0}),
            ("ablation", "w/o CFM&DFM", args.no_propagation, {}),
            ("ablation", "w/o PRM input", args.no_prm_input, {}),
            ("ablation", "w/o rebalance (vanilla matching)", full, {"matching": vanilla}),
            ("ablation", "full", full, {})]
    rows += [("steps", f"T = {t}", full, {"icn_steps": t}) for t in args.steps]
    if args.paper_training:
        rows += [("steps, trained without self-feeding (the paper)", f"T = {t}", args.paper_training,
                  {"icn_steps": t}) for t in args.steps]
    if args.saliency:
        rows.append(("supervision", "full, trained on GT instance masks (saliency variant)", args.saliency, {}))
    return rows


def label_quality(root: Path, labels: Path) -> dict:
    """Pseudo labels against the ground truth: per stored peak, the IoU of its label with
    the best-overlapping GT instance of its class (at the label's size)."""
    import cv2

    ds = open_dataset(root, json.loads((labels / "settings.json").read_text())["settings"]["split"], load_images=False)
    ious, areas = [], []
    for f in sorted(labels.glob("*.npz")):
        z = np.load(f)
        gt = ds.ground_truth(f.stem).instances
        for label, c in zip(z["label"], z["cls"]):
            best = 0.0
            for inst in gt:
                if inst.class_id != c:
                    continue
                m = cv2.resize(inst.mask.view(np.uint8), label.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
                union = (m | label).sum()
                best = max(best, (m & label).sum() / union if union else 0.0)
            ious.append(best)
            areas.append(label.mean())
    ious = np.array(ious)
    return {"peaks": len(ious), "mean_iou_with_gt": float(ious.mean()) if len(ious) else None,
            "fraction_iou_ge_0.5": float((ious >= 0.5).mean()) if len(ious) else None,
            "mean_label_area_fraction": float(np.mean(areas)) if areas else None}


def step_maps(root: Path, split: str, model: Path, steps: int) -> list[dict]:
    """What the enhancement loop does to the maps: per step t = 0..``steps``, over every
    peak of the split, the mean area (fraction of the S × S input) of V_t > 0.5 and its
    mean IoU with the best ground-truth instance of the peak's class (t = 0: the naive
    PRM, min-max normalised)."""
    import cv2
    import torch

    from icn_rt.models.icn import enhance, minmax

    predictor = Predictor.from_dir(model)
    size = predictor.input_size
    ds = open_dataset(root, split, load_images=False)
    areas, ious = [[] for _ in range(steps + 1)], [[] for _ in range(steps + 1)]
    for image_id in ds.ids:
        naive = predictor.naive_maps([read_image(ds.image_path(image_id))])
        gt = [(i.class_id, cv2.resize(i.mask.view(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST) > 0)
              for i in ds.ground_truth(image_id).instances]
        v = naive.prms
        with torch.no_grad():
            for t in range(steps + 1):
                if t:
                    v = enhance(predictor.model.icn, naive.x, naive.peaks.image, v, 1,
                                predictor.model.icn_settings.chunk)
                masks = (minmax(v) if t == 0 else v).numpy() > 0.5
                for mask, c in zip(masks, naive.peaks.cls.tolist()):
                    areas[t].append(mask.mean())
                    ious[t].append(max([(m & mask).sum() / max((m | mask).sum(), 1) for k, m in gt if k == c],
                                       default=0.0))
    return [{"step": t, "peaks": len(areas[t]), "mean_area_fraction": float(np.mean(areas[t])),
             "mean_iou_with_gt": float(np.mean(ious[t]))} for t in range(steps + 1)]


def _markdown(rows: list[dict], quality: dict, split: str, maps: dict) -> str:
    lines = [f"Ablations on the synthetic `{split}` split (CPU; commands and settings in the JSON beside this file).",
             "", "| table | variant | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | ABO | mIoU |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(f"| {r['table']} | {r['variant']} | {m['mAP']['0.25']:.1f} | {m['mAP']['0.5']:.1f} | "
                     f"{m['mAP']['0.75']:.1f} | {m['ABO']:.1f} | {m['mIoU']:.1f} |")
    lines += ["", f"Pseudo labels ({quality['peaks']} training peaks): mean IoU with the best GT instance of the "
              f"peak's class {100 * quality['mean_iou_with_gt']:.1f}, IoU ≥ 0.5 for "
              f"{100 * quality['fraction_iou_ge_0.5']:.1f} %, mean label area "
              f"{100 * quality['mean_label_area_fraction']:.1f} % of the image.", ""]
    if maps:
        lines += ["The enhancement loop step by step (every peak of the split; V_0 = the min-max naive PRM; "
                  "area in % of the input, IoU with the best GT instance of the peak's class):", "",
                  "| ICN | " + " | ".join(f"V_{s['step']} area / IoU" for s in next(iter(maps.values()))) + " |",
                  "|---|" + "---|" * len(next(iter(maps.values())))]
        for name, per_step in maps.items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * s['mean_area_fraction']:.1f} / "
                                                       f"{100 * s['mean_iou_with_gt']:.1f}" for s in per_step) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--full", type=Path, required=True, help="model with the full ICN")
    ap.add_argument("--no-propagation", type=Path, required=True, help="model whose ICN has no CFM/DFM")
    ap.add_argument("--no-prm-input", type=Path, required=True, help="model whose ICN has no PRM input")
    ap.add_argument("--paper-training", type=Path, default=None,
                    help="optional: model whose full ICN was trained without self-feeding (--self-feed 0)")
    ap.add_argument("--saliency", type=Path, default=None,
                    help="optional: model whose full ICN was trained with --supervision saliency")
    ap.add_argument("--split", default="val")
    ap.add_argument("--steps", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--proposals", type=Path, default=None)
    ap.add_argument("--picture", default=None, help="image id to draw (overlay + PRM/enhanced strip) per variant")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    proposals = args.proposals or args.root / "Proposals"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(args.root, args.split, load_images=False)
    images = [ds.image_path(i) for i in ds.ids]
    rows = []
    done: dict[tuple, dict] = {}  # the same run under two names (full = T 3) is run once
    with tempfile.TemporaryDirectory() as tmp:
        for table, name, model, overrides in _variants(args):
            predictor = Predictor.from_dir(model, **overrides)
            steps = predictor.model.icn_settings.steps if predictor.enhances else 0
            key = (str(model), steps, repr(predictor.model.matching))
            if key not in done:
                results = Path(tmp) / "results.json"
                vis = Path(tmp) / "vis" if args.picture else None
                summary = infer(predictor, images, results, InferSettings(proposals=proposals, save_vis=vis,
                                                                          progress=False))
                if summary.failed:  # scored, a failed image would count as one without instances
                    raise SystemExit(f"{name}: {summary.failures()}; no figure")
                done[key] = {"icn_steps": steps,
                             "matching": predictor.model.matching.resolved(predictor.enhances).score,
                             "instances": summary.instances, "images_without_instances": summary.empty,
                             "metrics": evaluate(args.root, results, args.split, progress=False).to_json()}
            rows.append({"table": table, "variant": name, "model": str(model), **done[key]})
            report = done[key]["metrics"]
            m = report["mAP"]
            print(f"{name:34s} mAP^r {m['0.25']:.1f} / {m['0.5']:.1f} / {m['0.75']:.1f}  ABO {report['ABO']:.1f}  "
                  f"mIoU {report['mIoU']:.1f}", flush=True)
            if args.picture and name in ("w/o ICN (naive PRM)", "full"):
                slug = name.split(" (")[0].replace("/", "").replace("&", "").replace(" ", "_").lower()
                for kind in ("overlay", "prm"):
                    source = vis / f"{args.picture}_{kind}.png"
                    target = args.out.parent / f"ablation_{args.picture}_{slug}_{kind}.png"
                    write_image(target, read_image(source))
    models = [k for k in ("full", "no_propagation", "no_prm_input", "paper_training", "saliency") if getattr(args, k)]
    maps = {"full": step_maps(args.root, args.split, args.full, max(args.steps))}
    if args.paper_training:
        maps["full, trained without self-feeding"] = step_maps(args.root, args.split, args.paper_training,
                                                               max(args.steps))
    label_dir = next(args.full.glob("labels-*"), None)
    quality = label_quality(args.root, label_dir) if label_dir else {}
    record = {"what": "the paper's ablations (Tables 1, 3, 4) on a VOC-layout split", "split": args.split,
              "commands": COMMANDS, "rows": rows, "pseudo_labels": quality, "enhanced_maps": maps,
              "models": {k: read_config(getattr(args, k)) for k in models},
              "icn_training_logs": {k: json.loads((getattr(args, k) / "icn_train_log.json").read_text())
                                    for k in models},
              "machine": machine_info()}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(rows, quality, args.split, maps))
    print(f"-> {args.out} and {args.out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
