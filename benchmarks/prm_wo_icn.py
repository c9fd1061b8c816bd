"""Quality of the method without the ICN (naive PRM -> matching -> NMS) on a VOC-layout
split, as a JSON record: the metrics, the model's settings and training log, the
machine. Run after the README's training and inference commands::

    icn-rt data synth synth
    icn-rt proposals synth --split val
    icn-rt train classifier synth --model model --backbone small --input-size 128 --sub-pixel 1 --lr 1e-3
    icn-rt infer model synth/JPEGImages/val_*.jpg --proposals synth/Proposals --out results.json --save-vis vis
    python benchmarks/prm_wo_icn.py --root synth --model model --results results.json \\
        --out benchmarks/results/prm_wo_icn_synth_val.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from machine import machine_info

from icn_rt.eval.report import evaluate
from icn_rt.models.store import read_config

_RECIPE = __doc__.split("::")[1].replace("\\\n", "")
COMMANDS = [" ".join(line.split()) for line in _RECIPE.splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--results", type=Path, required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    report = evaluate(args.root, args.results, args.split, progress=False).to_json()
    log = args.model / "train_log.json"
    record = {
        "what": "naive PRM (w/o ICN): peaks -> PRM -> proposal matching -> mask NMS",
        "split": args.split,
        "commands": COMMANDS,
        "metrics": report,
        "model_config": read_config(args.model),
        "training_log": json.loads(log.read_text()) if log.exists() else None,
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    m = report["mAP"]
    print(f"mAP^r {m['0.25']:.1f} / {m['0.5']:.1f} / {m['0.75']:.1f}  ABO {report['ABO']:.1f}  "
          f"mIoU {report['mIoU']:.1f} -> {args.out}")


if __name__ == "__main__":
    main()
