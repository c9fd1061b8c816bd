"""Proposal upper bound on the synthetic benchmark's val split.

Generates the default synthetic dataset (unless --root names one), runs `icn-rt
proposals` on its val split, and writes ABO / recall@0.5 / recall@0.7, proposals per
image and seconds per image as JSON::

    python benchmarks/proposal_recall.py --out benchmarks/results/proposal_recall_synth_val.json

``--root`` measures an existing root instead (its synth.json, if any, goes into the report).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from accuracy import dataset_record
from machine import machine_info

from icn_rt.data.make_proposals import make_proposals
from icn_rt.data.selective_search import SelectiveSearchConfig
from icn_rt.data.synth import SynthConfig, generate
from icn_rt.eval.proposal_recall import proposal_recall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="existing VOC-layout root (default: generate the default synthetic set)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--jobs", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        synth = None
        if root is None:
            root, synth = Path(tmp) / "synth", SynthConfig()
            generate(root, synth)
        config = SelectiveSearchConfig()
        props = Path(tmp) / "proposals"
        start = time.perf_counter()
        summary = make_proposals(root, props, args.split, config, args.jobs or None)
        seconds = time.perf_counter() - start
        report = proposal_recall(root, props, args.split)
    result = {
        "benchmark": "proposal_recall",
        "dataset": {"root": str(args.root) if args.root else "synthetic (defaults)", "split": args.split,
                    "synth_config": asdict(synth) if synth else dataset_record(args.root, None)[1]},
        "command": shlex.join([sys.executable, *sys.argv]),
        "selective_search": asdict(config),
        "jobs": args.jobs or None,
        "seconds_per_image_wall": seconds / max(1, summary.written),
        "failed": summary.failed,
        **report.to_json(),
        "machine": machine_info(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("ABO", "recall", "mean_proposals", "seconds_per_image_wall")}, indent=2))


if __name__ == "__main__":
    main()
