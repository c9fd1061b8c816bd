"""How far do better labels take the student? Students of one model trained the same way
on three label sets of the same images, then scored side by side by ``accuracy.py``:

- ``teacher``: the pipeline's instances (``MODEL/student-labels/SPLIT.json``, written by
  ``icn-rt train student``), as the recipe trains its student;
- ``ceiling``: each of those labels replaced by the proposal near it (IoU ≥ 0.1) that fits
  its object best (:func:`label_repick.ceiling`): what a perfect re-picking among the
  proposals around the teacher's labels would give;
- ``truth``: the ground-truth instances: the student's own ceiling.

Each student trains from ``MODEL`` (a copy without its student) by
:func:`~icn_rt.training.student.train_student` for ``--epochs`` on its set's training
labels, at the confidence threshold chosen on its set's dev labels, with its masks as
pasted (``refine none``; the rows snap them to proposals). Uses ground truth of the
training split, so it is a diagnosis, not a recipe::

    python benchmarks/student_label_sets.py ROOT MODEL --work DIR --epochs 16 \\
        --out benchmarks/results/student_labels_photo_dev_41.json
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from label_repick import ceiling, load_split

from icn_rt.data.datasets import open_dataset
from icn_rt.data.results import result_entry, write_results
from icn_rt.models.student import StudentSettings
from icn_rt.training.student import StudentTrainSettings, choose_threshold, input_size_for, train_student

SETS = {"teacher": "the teacher's labels", "ceiling": "the ceiling of re-picking", "truth": "the ground truth"}


def write_sets(root: Path, model: Path, work: Path, splits: tuple[str, ...] = ("train", "dev")) -> dict[str, Path]:
    """Each set's ``SPLIT.json`` (results format) under ``work/labels-NAME``; the teacher's
    are the model's own."""
    out = {"teacher": model / "student-labels"}
    for name in ("ceiling", "truth"):
        out[name] = work / f"labels-{name}"
        out[name].mkdir(parents=True, exist_ok=True)
    for split in splits:
        ds = open_dataset(root, split, load_images=False)
        truth = [result_entry(i, inst.class_id, 1.0, inst.mask, ds.classes)
                 for i in ds.ids for inst in ds.ground_truth(i).instances if not inst.difficult]
        write_results(out["truth"] / f"{split}.json", truth)
        ds, items = load_split(root, model, split)
        picked = [result_entry(i, e["class_id"], e["score"], e["mask"], ds.classes)
                  for i, labels in ceiling(ds, items).items() for e in labels]
        write_results(out["ceiling"] / f"{split}.json", picked)
    return out


def train(root: Path, model: Path, labels: Path, into: Path, epochs: int) -> None:
    """A student of ``model`` in ``into`` on ``labels/train.json`` (threshold chosen on dev)."""
    if (into / "student.safetensors").exists():
        return
    threshold = choose_threshold(root, labels / "dev.json", "dev", areas=[(0.0, 1.0)]).threshold  # every area: as made
    shutil.rmtree(into, ignore_errors=True)
    shutil.copytree(model, into, ignore=shutil.ignore_patterns("student-labels", "student*"))
    settings = StudentTrainSettings(epochs=epochs, labels=str(labels / "train.json"), threshold=threshold)
    student = StudentSettings(input_size=input_size_for(root, "train"), refine="none")
    train_student(root, into, settings, student, device="cpu", progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path)
    ap.add_argument("model", type=Path, help="a model directory whose student-labels/{train,dev}.json exist")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=16)
    ap.add_argument("--regime", help="the regime's name in the table (default: from ROOT/synth.json)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    sets = write_sets(a.root, a.model, a.work)
    for name, labels in sets.items():
        train(a.root, a.model, labels, a.work / f"student-{name}", a.epochs)
    rows = [f"student on {SETS[n]}={a.work / f'student-{n}'}:student=1,refine=proposals" for n in SETS]
    rows += [f"default, {SETS[n]}={a.work / f'student-{n}'}" for n in SETS]
    command = [sys.executable, str(Path(__file__).with_name("accuracy.py")), str(a.root), "--split", "dev",
               *[x for r in rows for x in ("--row", r)], "--reference", f"student on {SETS['teacher']}",
               "--bootstrap", "1000", "--workers", "2", "--out", str(a.out)]
    command += ["--regime", a.regime] if a.regime else []
    subprocess.run(command, check=True)


if __name__ == "__main__":
    main()
