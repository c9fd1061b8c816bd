"""The student against the pipeline that labelled it (issue 20): accuracy with intervals
on a split, and end-to-end speed on new 500×375 images.

Steps (each skipped when its output is already in ``--work``):

1. round 1: a copy of ``--teacher`` (a pipeline model directory) gets a student,
   ``icn-rt train student`` (the pipeline labels train and dev, the threshold is chosen on
   dev, the student trains, its mask refinement is chosen on dev: ``--refine auto``);
2. round 2 (self-training): the round-1 student labels train and dev, the threshold is
   chosen again on dev, and a second student learns from scratch on its labels;
3. accuracy on ``--split`` (val: reporting only) with ``benchmarks/accuracy.py``'s rows,
   paired against the teacher: the pipeline as configured (the teacher), the paper's
   inference settings on the teacher's networks (T = 3, vanilla matching, no re-ranking,
   Eq. 5's confidence), the student, the self-trained student;
4. speed on ``--photos`` images of the split resized to 500×375 (a VOC photo's size),
   each contestant through the ``icn-rt infer`` job (loader workers as the CLI's default),
   ``--repeats`` jobs each after a warm-up, the median reported (a job starts its loader
   processes: at 16 photos that start was a third of a fast student's time, hence 64):
   the pipeline with selective-search proposals made on the fly, the pipeline with the
   proposals read from disk (made beforehand, their time shown apart), the last round's
   student on PyTorch and on onnxruntime (``icn-rt export --student``), also at the
   :data:`FAST` setting in fp32 and int8 (whose val accuracy are rows of step 3).

Writes ``--out`` (JSON: rows with metrics and intervals, differences, settings, seeds,
the speeds and ratios, the commands, the machine) and a markdown table beside it::

    python benchmarks/student.py DATA --teacher MODEL --work /tmp/student \\
        --out benchmarks/results/student_part_only.json
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import cv2
from accuracy import dataset_record, run, write_report
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.make_proposals import make_proposals
from icn_rt.data.selective_search import SelectiveSearchConfig
from icn_rt.export.onnx_export import Calibration, export_student
from icn_rt.models.student import (STUDENT_GRAPH, STUDENT_RECORD, StudentSettings, build_student,
                                   student_graph_file)
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.predictor import Predictor
from icn_rt.runtime.student import StudentPredictor
from icn_rt.training.student import StudentTrainSettings, ThresholdChoice, input_size_for
from icn_rt.workflows.student import teach_and_train

PHOTO = (500, 375)  # width, height of a typical VOC photo
PAPER = "T=3,score=auto,rerank=0,confidence=peak_quality"


def _fresh_copy(teacher: Path, dst: Path) -> None:
    """The teacher's networks and config, without any student of its own."""
    if dst.exists():
        return
    dst.mkdir(parents=True)
    for name in ("config.json", "classifier.safetensors", "icn.safetensors"):
        if (teacher / name).exists():
            shutil.copy(teacher / name, dst / name)


def _student(args, model: Path, teacher_student: Path | None) -> None:
    """The student of ``model``, trained or continued to ``args.epochs`` (a finished one is
    left as it is: the labelling jobs and the training resume)."""
    settings = StudentTrainSettings(epochs=args.epochs, seed=args.seed, batch_size=args.batch_size, lr=args.lr)
    student = StudentSettings(head=args.head, input_size=input_size_for(args.root, settings.split),
                              refine="superpixels")
    teach_and_train(args.root, model, settings, student, resume=True, log=lambda m: print(m, file=sys.stderr),
                    progress=not args.quiet, teacher_student=teacher_student, refine_on_dev=True)


def _photos(root: Path, split: str, count: int, dst: Path) -> list[Path]:
    """The split's first ``count`` images resized to :data:`PHOTO`, in ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(root, split, load_images=False)
    paths = []
    for image_id in ds.ids[:count]:
        path = dst / f"{image_id}.jpg"
        if not path.exists():
            image = cv2.imread(str(ds.image_path(image_id)))
            cv2.imwrite(str(path), cv2.resize(image, PHOTO, interpolation=cv2.INTER_LINEAR))
        paths.append(path)
    return paths


FAST = (10, 100)
"""Detections and RPN regions of the student's faster setting: the fastest on dev whose
mAP^r@0.5 difference to the best (100 / 300) holds 0 in its interval (−0.6 [−1.7, 0.5];
50 regions cost 2.1 [0.5, 3.6] points; benchmarks/results/student_settings_light_part_only_dev.md)."""


def _fast(student: Path) -> StudentPredictor:
    """The student with the :data:`FAST` inference settings (eager: the exported graph
    has its counts fixed)."""
    base = StudentPredictor.from_dir(student)
    settings = replace(base.settings, detections=FAST[0], rpn_proposals=FAST[1])
    network = build_student(len(base.classes), settings)
    network.load_state_dict(base.graph.student.state_dict())
    return StudentPredictor(network, settings, base.classes)


def _fast_graph(student: Path, work: Path, root: Path) -> Path:
    """A copy of the student's model directory (config and weights) with the :data:`FAST`
    settings in its config and the student exported with them (the graph fixes its
    counts), in fp32 and in int8 (calibrated on 64 of ``root``'s training images)."""
    import json

    fast = work / f"fast-{student.name}"
    if not (fast / student_graph_file("int8")).exists():
        fast.mkdir(parents=True, exist_ok=True)
        for item in student.iterdir():
            if item.is_file() and item.suffix in (".json", ".safetensors") and item.name != STUDENT_RECORD:
                shutil.copy(item, fast / item.name)
        config = json.loads((fast / "config.json").read_text())
        config["student"].update(detections=FAST[0], rpn_proposals=FAST[1])
        (fast / "config.json").write_text(json.dumps(config, indent=1) + "\n")
        export_student(fast, precisions=("fp32", "int8"), calibration=Calibration(str(root), "train", 64))
    return fast


def _timed_job(predictor, paths: list[Path], out: Path, proposals: Path | None, workers: int) -> float:
    """Seconds of one ``icn-rt infer`` job over ``paths`` (a fresh results file)."""
    settings = InferSettings(proposals=proposals, workers=workers, overwrite=True, progress=False)
    started = time.perf_counter()
    summary = infer(predictor, paths, out, settings)
    seconds = time.perf_counter() - started
    if summary.failed:
        raise SystemExit(f"{summary.failures()}; no figure")
    return seconds


def speed(args, teacher: Path, student: Path) -> dict:
    """Images/s of each contestant on new 500×375 images, and ratios to the pipeline with
    proposals made on the fly."""
    photos = args.work / "photos"
    paths = _photos(args.root, args.split, args.photos, photos / "JPEGImages")
    (photos / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    (photos / "ImageSets" / "Main" / "photos.txt").write_text("\n".join(p.stem for p in paths) + "\n")
    shutil.copy(args.root / "classes.txt", photos / "classes.txt")
    shutil.copytree(args.root / "Annotations", photos / "Annotations", dirs_exist_ok=True)  # the tags
    shutil.rmtree(photos / "Proposals", ignore_errors=True)  # made again, so that their time is real
    started = time.perf_counter()
    make_proposals(photos, photos / "Proposals", "photos", SelectiveSearchConfig(max_proposals=2000), jobs=args.workers,
                   progress=False)
    proposal_seconds = time.perf_counter() - started
    if not (student / STUDENT_GRAPH).exists():
        export_student(student)
    runs = {}
    contestants = [
        ("pipeline, proposals made on the fly", lambda: Predictor.from_dir(teacher, agreement=False), None),
        ("pipeline, proposals read from disk", lambda: Predictor.from_dir(teacher, agreement=False),
         photos / "Proposals"),
        ("student (torch)", lambda: StudentPredictor.from_dir(student), None),
        ("student (onnxruntime)", lambda: StudentPredictor.from_dir(student, backend="onnxruntime"), None),
        (f"student (torch), {FAST[0]} detections / {FAST[1]} regions", lambda: _fast(student), None),
        (f"student (onnxruntime), {FAST[0]} detections / {FAST[1]} regions",
         lambda: StudentPredictor.from_dir(_fast_graph(student, args.work, args.root), backend="onnxruntime"), None),
        (f"student (onnxruntime int8), {FAST[0]} detections / {FAST[1]} regions",
         lambda: StudentPredictor.from_dir(_fast_graph(student, args.work, args.root), backend="onnxruntime:int8"),
         None),
    ]
    for name, make, proposals in contestants:
        predictor = make()
        _timed_job(predictor, paths[:2], args.work / "speed_warmup.json", proposals, args.workers)  # warm-up
        times = sorted(_timed_job(predictor, paths, args.work / "speed.json", proposals, args.workers)
                       for _ in range(args.repeats))
        seconds = times[len(times) // 2]
        runs[name] = {"seconds": seconds, "repeats_seconds": times, "images_per_second": len(paths) / seconds}
        print(f"{name}: {len(paths) / seconds:.2f} images/s", file=sys.stderr, flush=True)
    base = runs["pipeline, proposals made on the fly"]["images_per_second"]
    for r in runs.values():
        r["x_pipeline_on_the_fly"] = r["images_per_second"] / base
    return {"images": len(paths), "size": list(PHOTO), "workers": args.workers, "repeats": args.repeats,
            "proposals_made_beforehand_seconds_per_image": proposal_seconds / len(paths), "contestants": runs}


def markdown(doc: dict) -> str:
    def cell(m):
        lo, hi = m["interval"]
        return f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

    acc = doc["accuracy"]
    lines = [f"# The student against its teacher ({doc['regime']})", "",
             f"Accuracy on the `{doc['split']}` split of `{doc['root']}` ({acc['images']} images); 95% bootstrap "
             f"intervals over the images ({doc['bootstrap']['samples']} draws, seed {doc['bootstrap']['seed']}); "
             f"differences paired against `{acc['reference']}`. Label thresholds and areas chosen on dev; "
             f"training seed {doc['seed']}, {doc['epochs']} epochs. Commands in the JSON beside this file.", "",
             "| row | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | ABO | mIoU | mAP^r@0.5 − teacher |",
             "|---|---|---|---|---|---|---|"]
    for r in acc["rows"]:
        m = r["metrics"]
        d = r.get("minus_reference", {}).get("mAP@0.5")
        diff = "(reference)" if d is None else f"{cell(d)}{'' if d['excludes_zero'] else ' ~0'}"
        lines.append(f"| {r['name']} | " + " | ".join(cell(m[k]) for k in ("mAP@0.25", "mAP@0.5", "mAP@0.75", "ABO",
                                                                           "mIoU")) + f" | {diff} |")
    lines += ["", "~0: the difference's interval holds 0.", ""]
    if "labels" in doc:
        lines += ["Labels each student learnt from (chosen on dev):", "",
                  "| round | labeller | threshold | area (share of the image) | dev precision | dev recall |",
                  "|---|---|---|---|---|---|"]
        for r in doc["labels"]:
            lo, hi = r.get("area", (0.0, 1.0))
            lines.append(f"| {r['round']} | {r['labeller']} | {r['threshold']:.3g} | [{lo:g}, {hi:g}] | "
                         f"{r['precision']:.2f} | {r['recall']:.2f} |")
        lines.append("")
    if "speed" in doc:
        s = doc["speed"]
        made = s["proposals_made_beforehand_seconds_per_image"]
        lines += [f"End to end on {s['images']} new {s['size'][0]}×{s['size'][1]} images (the `icn-rt infer` job, "
                  f"{s['workers']} loader workers, median of {s.get('repeats', 1)} jobs after a warm-up; "
                  + (f"selective search made beforehand took {made:.2f} s/image" if made is not None
                     else s.get("proposals_note", "")) + "):",
                  "",
                  "| contestant | images/s | jobs' range | × pipeline (proposals on the fly) |", "|---|---|---|---|"]
        if "student" in s:
            lines[-2:-2] = [f"The students timed: the {s['student']}'s.", ""]
        for name, r in s["contestants"].items():
            spread = r.get("repeats_seconds", [r["seconds"]])
            lines.append(f"| {name} | {r['images_per_second']:.2f} | {s['images'] / spread[-1]:.2f}–"
                         f"{s['images'] / spread[0]:.2f} | {r['x_pipeline_on_the_fly']:.1f}× |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path, help="VOC-layout root with Proposals/ for train, dev and the split")
    ap.add_argument("--teacher", type=Path, required=True, help="the pipeline's model directory (not modified)")
    ap.add_argument("--work", type=Path, required=True, help="students, labels and photos (kept between runs)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="light", help="the students' heads (light | tiny | standard)")
    ap.add_argument("--rounds", type=int, default=2, choices=(1, 2))
    ap.add_argument("--photos", type=int, default=64, help="new 500×375 images timed (0: no speed section)")
    ap.add_argument("--repeats", type=int, default=3, help="timed jobs per contestant (the median is reported)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--regime", default=None)
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    import json

    round1, round2 = args.work / "round1", args.work / "round2"
    _fresh_copy(args.teacher, round1)
    _student(args, round1, None)
    # the teacher as it labels: leading, unranked by any student (a student in its directory would lead it)
    rows = [f"teacher (the pipeline)={args.teacher}:agree=0,lead=teacher", f"the paper's inference settings "
            f"(teacher's networks)={args.teacher}:{PAPER},agree=0,lead=teacher", f"student={round1}:student=1"]
    labels = [{"round": 1, "labeller": "the pipeline", **_threshold(round1)}]
    last, who = round1, "student"
    if args.rounds == 2:
        _fresh_copy(args.teacher, round2)
        _student(args, round2, round1)
        rows.append(f"student, self-trained round 2={round2}:student=1")
        labels.append({"round": 2, "labeller": "the round-1 student", **_threshold(round2)})
        last, who = round2, "round-2 student"
    fast = _fast_graph(last, args.work, args.root)  # the last round's student is the one timed
    rows += [f"{who}, {FAST[0]} detections / {FAST[1]} regions (onnxruntime)={fast}:student=1,backend=onnxruntime",
             f"{who}, {FAST[0]} detections / {FAST[1]} regions (onnxruntime int8)={fast}:student=1,"
             "backend=onnxruntime:int8"]
    accuracy = run(SimpleNamespace(root=args.root, split=args.split, row=rows, reference="teacher (the pipeline)",
                                   proposals=None, bootstrap=args.bootstrap, seed=0, level=0.95, workers=args.workers))
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "student", "command": shlex.join(["python", *sys.argv]), "root": str(args.root),
           "split": args.split, "regime": regime, "dataset": dataset, "seed": args.seed, "epochs": args.epochs,
           "bootstrap": {"samples": args.bootstrap, "seed": 0, "level": 0.95, "unit": "image"},
           "labels": labels, "accuracy": accuracy,
           "students": {name: json.loads((d / "config.json").read_text()).get("student")
                        for name, d in (("round1", round1), ("round2", round2)) if (d / "config.json").exists()}}
    if args.photos:
        doc["speed"] = speed(args, args.teacher, last)
        doc["speed"]["student"] = who
    doc["machine"] = machine_info()
    write_report(args.out, doc, markdown(doc))


def _threshold(model: Path) -> dict:
    import json

    choice = json.loads((model / "student_threshold.json").read_text())
    area = tuple(choice.get("area", (0.0, 1.0)))  # a choice from before the label area: every area
    candidates = [{"area": [0.0, 1.0], **c} for c in choice["candidates"]]
    best = ThresholdChoice(choice["threshold"], candidates, area).best
    return {"threshold": choice["threshold"], "area": list(area), "precision": best["precision"],
            "recall": best["recall"]}


if __name__ == "__main__":
    main()
