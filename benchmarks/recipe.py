"""The recipe, not one model: train everything from scratch on several synthetic sets of one
regime (one set per seed) with the commands a user runs, score each training's rows on its
``val`` split (``benchmarks/accuracy.py``, bootstrap intervals over the images), and report
every row as the mean and spread over the trainings beside each training's interval, the
paired difference to the reference row per training, and the classes with AP 0.

Rows: the paper as written (its own ICN: the paper's labels, no self-feeding, one peak
threshold, T 3; on the first ``--paper-seeds`` trainings) and the same at T 1 (the
suspect that ranks it above the naive PRM), the naive PRM, the classifier's pipeline
leading and ranked without its student (naive PRM + objectness re-ranking, the reference),
the same with the recipe's ICN (re-ranked top-1 labels, T 1; on the first ``--icn-seeds``
trainings), the student of the pipeline, the same with its masks snapped to superpixels and
to the image's proposals (the one it overlaps most), the reference's instances ranked by
their agreement with that student (``instances.student_agreement``, the pipeline leading),
the default pipeline (the student leading, its masks snapped to the proposals, ranked by
the pipeline's agreement: ``instances.lead``), and with ``--student-rounds 2`` a second
student taught by the first (self-training). Each step is
marked done once its commands have succeeded, so a killed run continues where it stopped
(a training from its checkpoint)::

    python benchmarks/recipe.py /tmp/recipe --regime part-only --seed 21 --seed 22 --seed 23 \\
        --out benchmarks/results/recipe_part_only.json

``--split dev`` scores the dev split instead (for choices; val only reports).

The JSON holds every command run, per training and per row the accuracy report's figures,
and the aggregate; the markdown beside it is the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from accuracy import write_report
from machine import machine_info

REGIMES = {"part-only": ["--body-evidence", "0"],
           "voc-like": ["--body-evidence", "0.75"],
           "photo": ["--body-evidence", "0.75", "--background", "photo"]}
REFERENCE = "naive PRM + re-ranking"  # the pipeline leading, without its student's agreement (before: its default)
RANKED = "naive PRM + re-ranking, ranked by its student"  # instances.student_agreement, the pipeline leading
DEFAULT = "default: the student, ranked by the pipeline"  # instances.lead: student (docs/accuracy.md, "Who leads")
REFINED = "student, masks snapped to superpixels"  # student.refine: superpixels (docs/student.md)
ON_PROPOSALS = "student, masks snapped to proposals"  # student.refine: proposals (needs the image's proposals)
ROUND2 = "student, self-trained round 2 (snapped)"  # a student taught by the round-1 student (its snapped masks)
WITH_ICN = "default + the ICN (T 1)"  # the recipe's ICN: re-ranked top-1 labels, IoU matching among its candidates
PAPER_T1 = "the paper as written, at T 1"  # the one suspect that ranks it above the naive PRM (docs/accuracy.md)
HERE = Path(__file__).parent


def plan(work: Path, seed: int, a: argparse.Namespace) -> list[tuple[str, Path, list[list[str]]]]:
    """The steps of one training: (name, the file that marks it done, its commands). A step
    is done once all its commands have succeeded (:func:`run_steps` writes the mark); one
    that was stopped starts over (a training continues from its checkpoint)."""
    root, models = work / f"data-{seed}", work / f"models-{seed}"
    cls, default, icn_model, paper, round2 = (models / n for n in ("classifier", "default", "icn", "paper", "round2"))
    marks = work / "done"
    with_paper, with_icn = seed in a.seed[:a.paper_seeds], seed in a.seed[:a.icn_seeds]

    def icn(model: Path, *how: str) -> list[str]:
        return ["icn-rt", "train", "icn", str(root), "--model", str(model), "--encoder", "small", "--width", "16",
                "--epochs", str(a.icn_epochs), "--lr-step", str(a.icn_lr_step), *how, "--device", "cpu"]

    def fresh(model: Path) -> list[list[str]]:  # a copy of the trained classifier
        return [["rm", "-rf", str(model)], ["cp", "-r", str(cls), str(model)]]

    synth = ["icn-rt", "data", "synth", str(root), "--size", str(a.size), "--classes", str(a.classes),
             "--max-instances", str(a.max_instances), "--train", str(a.train), "--dev", str(a.dev), "--val",
             str(a.val), "--seed", str(seed), *REGIMES[a.regime], *(x for name in a.photo for x in ("--photo", name))]
    steps = [("data", marks / f"{seed}-data", [synth]),
             ("proposals", marks / f"{seed}-proposals",
              [["icn-rt", "proposals", str(root), "--split", s, "--workers", str(a.workers)]
               for s in ("train", "dev", "val")]),
             ("classifier", marks / f"{seed}-classifier",
              [["icn-rt", "train", "classifier", str(root), "--model", str(cls), "--backbone", "small", "--input-size",
                str(a.size), "--sub-pixel", "1", "--lr", "1e-3", "--epochs", str(a.classifier_epochs), "--lr-step",
                str(a.classifier_lr_step), "--val-split", "dev", "--device", "cpu", "--resume"]]),
             ("default", marks / f"{seed}-default", fresh(default))]
    copy_paste = ["--copy-paste", f"{a.copy_paste:g}"] if a.copy_paste else []  # train student --copy-paste
    if a.student_epochs:
        steps.append(("student", marks / f"{seed}-student",
                      [["icn-rt", "train", "student", str(root), "--model", str(default), "--epochs",
                        str(a.student_epochs), *copy_paste, "--device", "cpu", "--quiet", "--resume"]]))
    if a.student_epochs and a.student_rounds == 2:  # self-training: a fresh student learns from the first one's masks
        steps.append(("round2", marks / f"{seed}-round2",
                      [*fresh(round2), ["icn-rt", "train", "student", str(root), "--model", str(round2),
                                        "--from-student", str(default), "--epochs", str(a.student_epochs),
                                        *copy_paste, "--device", "cpu", "--quiet"]]))
    if with_icn:
        steps.append(("icn", marks / f"{seed}-icn", [*fresh(icn_model), icn(icn_model, "--steps", "1", "--rerank", "50",
                                                                            "--k", "1")]))
    if with_paper:
        steps.append(("paper", marks / f"{seed}-paper",
                      [*fresh(paper),
                       ["icn-rt", "train", "calibrate-peaks", str(root), "--model", str(paper), "--no-per-class",
                        "--device", "cpu"],
                       icn(paper, "--steps", "3", "--rerank", "0", "--k", "3", "--self-feed", "0")]))
    rows = []
    if with_paper:
        rows += [f"the paper as written={paper}:T=3,score=auto,rerank=0,confidence=peak_quality",
                 f"{PAPER_T1}={paper}:T=1,score=auto,rerank=0,confidence=peak_quality"]
    rows += [f"naive PRM={default}:score=auto,rerank=0,confidence=peak_quality,agree=0,lead=teacher",
             f"{REFERENCE}={default}:agree=0,lead=teacher"]
    if with_icn:
        rows.append(f"{WITH_ICN}={icn_model}:agree=0,lead=teacher")
    if a.student_epochs:
        rows += [f"student={default}:student=1,refine=none", f"{REFINED}={default}:student=1,refine=superpixels",
                 f"{ON_PROPOSALS}={default}:student=1,refine=proposals", f"{RANKED}={default}:lead=teacher",
                 f"{DEFAULT}={default}"]
        if a.student_rounds == 2:
            rows.append(f"{ROUND2}={round2}:student=1,refine=superpixels")
    report = report_path(work, seed, a)
    steps.append(("accuracy", marks / report.stem,
                  [["python", str(HERE / "accuracy.py"), str(root), "--split", a.split,
                    *(x for r in rows for x in ("--row", r)), "--reference", REFERENCE, "--bootstrap",
                    str(a.bootstrap), "--workers", str(a.workers), "--regime", a.regime, "--out", str(report)]]))
    return steps


def report_path(work: Path, seed: int, a: argparse.Namespace) -> Path:
    """One training's accuracy report (the rows decide its name)."""
    parts = ([str(seed), a.split] + ["student"] * bool(a.student_epochs) + ["round2"] * (
        bool(a.student_epochs) and a.student_rounds == 2) + ["icn"] * (seed in a.seed[:a.icn_seeds]))
    return work / f"accuracy-{'-'.join(parts)}.json"


def run_steps(steps, log: list[dict]) -> None:
    """Each step not yet done, its commands in order; a failing command stops the run."""
    for name, done, commands in steps:
        if done.exists():
            continue
        started = time.perf_counter()
        for command in commands:
            print("$", shlex.join(command), flush=True)
            subprocess.run(command, check=True)
        log.append({"step": name, "seconds": round(time.perf_counter() - started, 1),
                    "commands": [shlex.join(c) for c in commands]})
        done.parent.mkdir(parents=True, exist_ok=True)
        done.touch()


def aggregate(reports: dict[int, dict]) -> dict:
    """Per row: each training's figures, and the mean and spread (sample sd) over them."""
    rows: dict[str, dict] = {}
    for seed, report in reports.items():
        for row in report["rows"]:
            entry = rows.setdefault(row["name"], {"trainings": {}})
            m = row["metrics"]
            entry["trainings"][str(seed)] = {
                "mAP@0.5": m["mAP@0.5"], "mAP@0.75": m["mAP@0.75"],
                "minus_reference": row.get("minus_reference", {}).get("mAP@0.5"),
                "classes_with_ap_0": sorted(c for c, ap in row["ap_per_class_0.5"].items() if ap <= 0),
                "images_per_second": row.get("images_per_second")}
    for entry in rows.values():
        for key in ("mAP@0.5", "mAP@0.75"):
            values = np.array([t[key]["estimate"] for t in entry["trainings"].values()])
            entry[key] = {"mean": round(float(values.mean()), 2),
                          "sd": round(float(values.std(ddof=1)), 2) if len(values) > 1 else None, "n": len(values)}
        diffs = [t["minus_reference"] for t in entry["trainings"].values() if t["minus_reference"]]
        if diffs:
            entry["minus_reference"] = {"mean": round(float(np.mean([d["estimate"] for d in diffs])), 2),
                                        "above_0": sum(d["interval"][0] > 0 for d in diffs),
                                        "below_0": sum(d["interval"][1] < 0 for d in diffs), "n": len(diffs)}
    return rows


def label_choices(work: Path, seeds: list[int]) -> dict[str, dict]:
    """Each training's label threshold and area as ``train student`` chose them on dev (its
    ``student_threshold.json``), where it chose them."""
    out = {}
    for seed in seeds:
        f = work / f"models-{seed}" / "default" / "student_threshold.json"
        if f.exists():
            chosen = json.loads(f.read_text())
            out[str(seed)] = {"threshold": chosen["threshold"], "area": chosen.get("area", [0.0, 1.0])}
    return out


def label_areas(doc: dict) -> str:
    """The label area each training's student was taught with, as chosen on dev (``""``:
    none recorded, a run from before ``train student`` chose them)."""
    return "; ".join(f"[{c['area'][0]:g}, {c['area'][1]:g}]" for c in doc.get("student_labels", {}).values())


def caption(doc: dict) -> str:
    schedule = f"; {doc['classifier']}" if "classifier" in doc else ""
    schedule += f"; the students with copy-paste {doc['copy_paste']:g}" if doc.get("copy_paste") else ""
    areas = label_areas(doc)
    n, seeds = len(doc["seeds"]), ", ".join(map(str, doc["seeds"]))
    return (f"The recipe trained from scratch on {n} set{'s' * (n != 1)} of the {doc['regime']} regime "
            f"(seed{'s' * (n != 1)} {seeds}; {doc['set']}{schedule}); {doc.get('split', 'val')}; mean ± sd over "
            "the trainings, then each training's estimate [95% bootstrap interval over the images]; the reference is "
            f"{doc['reference']}" + (f"; the students' label areas (shares of the image) chosen on dev: {areas}"
                                     if areas else "") + ".")


def spread(s: dict) -> str:
    """One row's aggregate (:func:`aggregate`): mean ± sd (n)."""
    return f"{s['mean']:.1f}" + (f" ± {s['sd']:.1f}" if s["sd"] is not None else "") + f" (n {s['n']})"


def table(doc: dict) -> str:
    """The rows: mean ± sd (n) at IoU 0.5 and 0.75, each training's interval, its paired
    difference to the reference, its classes with AP 0."""
    def each(entry, key):
        return "; ".join(f"{t[key]['estimate']:.1f} [{t[key]['interval'][0]:.1f}, {t[key]['interval'][1]:.1f}]"
                         for t in entry["trainings"].values())

    lines = ["| row | mAP^r@0.5 | per training | mAP^r@0.75 | − reference, per training | classes with AP 0 |",
             "|---|---|---|---|---|---|"]
    for name, entry in doc["rows"].items():
        diff = "(reference)" if name == doc["reference"] else "; ".join(
            f"{t['minus_reference']['estimate']:+.1f} [{t['minus_reference']['interval'][0]:.1f}, "
            f"{t['minus_reference']['interval'][1]:.1f}]" for t in entry["trainings"].values() if t["minus_reference"])
        zero = "; ".join(", ".join(t["classes_with_ap_0"]) or "none" for t in entry["trainings"].values())
        lines.append(f"| {name} | {spread(entry['mAP@0.5'])} | {each(entry, 'mAP@0.5')} | {spread(entry['mAP@0.75'])} "
                     f"| {diff} | {zero} |")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    return caption(doc) + " Commands in the JSON beside this file.\n\n" + table(doc) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path, help="folder for the sets, the models and the per-training reports")
    ap.add_argument("--regime", choices=sorted(REGIMES), required=True)
    ap.add_argument("--seed", type=int, action="append", required=True, help="one set and training per seed")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--classes", type=int, default=6)
    ap.add_argument("--max-instances", type=int, default=3)
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--dev", type=int, default=100)
    ap.add_argument("--val", type=int, default=150)
    ap.add_argument("--photo", action="append", default=[],
                    help="photo regime: the photographs (icn-rt data synth --photo; repeatable) [its default: those "
                         "development used]")
    ap.add_argument("--classifier-epochs", type=int, default=120)
    ap.add_argument("--classifier-lr-step", type=int, default=80)
    ap.add_argument("--icn-epochs", type=int, default=20)
    ap.add_argument("--icn-lr-step", type=int, default=5)
    ap.add_argument("--student-epochs", type=int, default=16, help="0: no student")
    ap.add_argument("--student-rounds", type=int, default=1, choices=(1, 2),
                    help="2: also a self-trained student (the first student labels the split)")
    ap.add_argument("--copy-paste", type=float, default=0.0,
                    help="the students' copy-paste chance (icn-rt train student --copy-paste) [0: none]")
    ap.add_argument("--paper-seeds", type=int, default=1, help="trainings that also get the paper's own ICN")
    ap.add_argument("--icn-seeds", type=int, default=None, help="trainings that also get the recipe's ICN [all]")
    ap.add_argument("--split", default="val", help="the split scored (dev for choices; val reports)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    a.icn_seeds = len(a.seed) if a.icn_seeds is None else a.icn_seeds
    a.work.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    reports = {}
    commands = {}
    for seed in a.seed:
        steps = plan(a.work, seed, a)
        run_steps(steps, log)
        commands[str(seed)] = [shlex.join(c) for _, _, cs in steps for c in cs]
        reports[seed] = json.loads(report_path(a.work, seed, a).read_text())
    doc = {"benchmark": "recipe", "command": shlex.join(["python", *sys.argv]), "regime": a.regime, "split": a.split,
           "seeds": a.seed,
           "set": f"{a.size} px, {a.classes} classes, at most {a.max_instances} objects, {a.train} train / {a.dev} dev "
                  f"/ {a.val} val" + (f", photographs {', '.join(a.photo)}" if a.photo else ""),
           "classifier": f"classifier {a.classifier_epochs} epochs, the rate ×0.1 after {a.classifier_lr_step}",
           "copy_paste": a.copy_paste, "reference": REFERENCE, "commands": commands,
           "steps_run": log, "rows": aggregate(reports), "student_labels": label_choices(a.work, a.seed),
           "machine": machine_info()}
    write_report(a.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
