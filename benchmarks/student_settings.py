"""The student's inference settings, chosen on dev: for each (``detections``,
``rpn_proposals``[, ``mask_threshold``]) setting, the student of ``MODEL`` through the ``icn-rt infer`` job on the
split, mAP^r 0.25/0.5/0.75, ABO and mIoU with 95% bootstrap intervals (paired against the
first setting) and images/s. Writes JSON and a markdown table::

    python benchmarks/student_settings.py DATA MODEL --split dev \\
        --setting 100,300 --setting 20,100 --setting 20,50 --setting 20,100,0.4 \\
        --out benchmarks/results/student_settings_part_only_dev.json
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from accuracy import write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.eval.bootstrap import difference, draws, intervals
from icn_rt.eval.report import score
from icn_rt.models.student import build_student
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.student import StudentPredictor

METRICS = ("mAP@0.25", "mAP@0.5", "mAP@0.75", "ABO", "mIoU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("model", type=Path)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--setting", action="append", required=True,
                    help="DETECTIONS,RPN_PROPOSALS[,MASK_THRESHOLD] (repeat; the threshold: the model's if left out)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    base = StudentPredictor.from_dir(args.model)
    state = base.graph.student.state_dict()
    ds = open_dataset(args.root, args.split, load_images=False)
    images = [ds.image_path(i) for i in ds.ids]
    weights = draws(len(images), args.bootstrap, 0)
    rows, scored = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k, text in enumerate(args.setting):
            values = text.split(",")
            detections, rpn = int(values[0]), int(values[1])
            cut = float(values[2]) if len(values) > 2 else base.settings.mask_threshold
            settings = replace(base.settings, detections=detections, rpn_proposals=rpn, mask_threshold=cut)
            network = build_student(len(base.classes), settings)
            network.load_state_dict(state)
            predictor = StudentPredictor(network, settings, base.classes)
            results = Path(tmp) / f"{k}.json"
            started = time.perf_counter()
            summary = infer(predictor, images, results, InferSettings(workers=args.workers, progress=False))
            seconds = time.perf_counter() - started
            if summary.failed:  # scored, a failed image would count as one without instances
                raise SystemExit(f"{text}: {summary.failures()}; no figure")
            scored.append(score(args.root, results, args.split, progress=False))
            rows.append({"detections": detections, "rpn_proposals": rpn, "mask_threshold": cut,
                         "images_per_second": len(images) / seconds})
            print(f"{text}: {scored[-1].metrics()['mAP@0.5']:.1f} mAP^r@0.5, {len(images) / seconds:.1f} images/s",
                  file=sys.stderr, flush=True)
    replicates = [[s.metrics(w) for w in weights] for s in scored]
    for row, s, reps in zip(rows, scored, replicates):
        row["metrics"] = {k: v.to_json() for k, v in intervals(s.metrics(), reps, 0.95).items()}
        diff = intervals(difference(s.metrics(), scored[0].metrics()),
                         [difference(a, b) for a, b in zip(reps, replicates[0])], 0.95)
        row["minus_first"] = {k: {**v.to_json(), "excludes_zero": v.excludes_zero()} for k, v in diff.items()}
    doc = {"benchmark": "student inference settings", "command": shlex.join(["python", *sys.argv]),
           "root": str(args.root), "model": str(args.model), "split": args.split, "images": len(images),
           "bootstrap": {"samples": args.bootstrap, "seed": 0, "level": 0.95, "unit": "image"},
           "student": base.settings.__dict__, "rows": rows, "machine": machine_info()}
    lines = [f"Student inference settings on `{args.split}` of `{args.root}` ({len(images)} images; model "
             f"`{args.model}`); 95% bootstrap intervals (1000 draws, seed 0); differences paired against the first "
             "row; images/s through the `icn-rt infer` job on this machine.", "",
             "| detections | rpn_proposals | mask threshold | " + " | ".join(METRICS) + " | mAP^r@0.5 − first | "
             "images/s |", "|---|---|---|" + "---|" * len(METRICS) + "---|---|"]

    def cell(m):
        return f"{m['estimate']:.1f} [{m['interval'][0]:.1f}, {m['interval'][1]:.1f}]"

    for r in rows:
        d = r["minus_first"]["mAP@0.5"]
        metrics = " | ".join(cell(r["metrics"][m]) for m in METRICS)
        lines.append(f"| {r['detections']} | {r['rpn_proposals']} | {r['mask_threshold']:g} | {metrics} | {cell(d)}"
                     f"{'' if d['excludes_zero'] else ' ~0'} | {r['images_per_second']:.1f} |")
    write_report(args.out, doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
