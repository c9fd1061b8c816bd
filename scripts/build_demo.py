"""Rebuild the embedded demo (``icn_rt/demo/``): a small model trained by icn-rt's own
commands on the synthetic benchmark, and a few validation images with their annotations
and proposals. Every step is an ``icn-rt`` command; the inference settings are those a new
model is written with (per-class peak thresholds, objectness re-ranking, IoU matching,
peak × objectness confidence), T = 1 enhancement step, all chosen on the synthetic dev
split (docs/accuracy.md). The ICN learns the paper's pseudo labels (the top-3 union by
PRM's score, ``--rerank 0``)::

    python scripts/build_demo.py --work /tmp/demo-build      # ~40 min on 2 CPU cores

The model ships with its proposal-free student (``icn-rt train student``, the tiny head:
a CPU-sized network), which ``icn-rt demo`` runs beside the pipeline. ``--student-only``
trains just that student for the shipped model (its dataset regenerated from the config's
``demo`` section), ~20 min on 2 CPU cores.

The shipped model's networks predate this recipe: its classifier was trained with the
paper's schedule (20 epochs, the rate ×0.1 after 10; the recipe now keeps lr 1e-3 for 40 of
60 epochs, docs/training.md) and before per-class peak thresholds existed, then
recalibrated with ``icn-rt train calibrate-peaks`` (what training now does at its end), so
its ICN learned labels of the single-threshold peaks; a rebuild follows the recipe.

Steps already done in ``--work`` (dataset, proposals, classifier, ICN) are reused, so an
interrupted build continues. The package data it writes is a few MB.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "icn_rt" / "demo"
MODEL_FILES = ("config.json", "classifier.safetensors", "icn.safetensors", "student.safetensors")
STUDENT = ("--head", "tiny", "--epochs", "12")  # a small student: the package stays a few MB
STEPS = "1"  # ICN enhancement steps T at inference, chosen on the dev split (docs/accuracy.md)
SAMPLE_DIRS = {"JPEGImages": ".jpg", "Annotations": ".xml", "SegmentationClass": ".png",
               "SegmentationObject": ".png", "Proposals": ".mat"}


def icn_rt(*args: str) -> None:
    cmd = [sys.executable, "-m", "icn_rt.cli", *args]
    print("+ icn-rt " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def train(work: Path) -> Path:
    synth, model = work / "synth", work / "model"
    if not (synth / "synth.json").exists():
        icn_rt("data", "synth", str(synth))
    for split in ("val", "train"):
        icn_rt("proposals", str(synth), "--split", split)  # skips images already done
    if not (model / "classifier.safetensors").exists():
        icn_rt("train", "classifier", str(synth), "--model", str(model), "--backbone", "small", "--input-size", "128",
               "--sub-pixel", "1", "--lr", "1e-3", "--epochs", "60", "--lr-step", "40", "--val-split", "dev")
    if not (model / "icn.safetensors").exists():
        icn_rt("train", "icn", str(synth), "--model", str(model), "--encoder", "small", "--width", "16",
               "--epochs", "20", "--lr-step", "5", "--rerank", "0", "--steps", STEPS)
    train_student(synth, model)
    return model


def train_student(synth: Path, model: Path) -> None:
    if not (model / "student.safetensors").exists():
        icn_rt("proposals", str(synth), "--split", "dev")  # the student's label threshold is chosen on dev
        icn_rt("train", "student", str(synth), "--model", str(model), *STUDENT)


def student_only(work: Path) -> None:
    """A student for the shipped model: its dataset regenerated, its networks kept."""
    from icn_rt.data.synth import SynthConfig, generate

    synth, model = work / "synth", work / "model"
    if not (model / "config.json").exists():
        model.mkdir(parents=True)
        for name in MODEL_FILES[:3]:
            shutil.copy2(DEMO / "model" / name, model / name)
    if not (synth / "synth.json").exists():
        config = json.loads((model / "config.json").read_text())["demo"]["dataset"]
        generate(synth, SynthConfig(**config))
    for split in ("train", "dev"):
        icn_rt("proposals", str(synth), "--split", split)
    train_student(synth, model)


def package(work: Path, images: int, data: bool = True) -> None:
    """The model (and, with ``data``, the sample images) into the package."""
    from icn_rt.data.voc import VOCDataset, read_classes, write_splits

    for name in MODEL_FILES:
        if not (work / "model" / name).exists():
            raise SystemExit(f"{work / 'model' / name} is missing: the build did not finish")

    synth, model = work / "synth", work / "model"
    if DEMO.joinpath("model").exists():
        shutil.rmtree(DEMO / "model")
    if data and DEMO.joinpath("data").exists():
        shutil.rmtree(DEMO / "data")
    (DEMO / "model").mkdir(parents=True)
    for name in MODEL_FILES:
        shutil.copy2(model / name, DEMO / "model" / name)
    config = json.loads((DEMO / "model" / "config.json").read_text())
    config["demo"] = {"built_by": "scripts/build_demo.py", "dataset": json.loads((synth / "synth.json").read_text())}
    (DEMO / "model" / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    ids = (synth / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[:images]
    if data:
        for folder, suffix in SAMPLE_DIRS.items():
            (DEMO / "data" / folder).mkdir(parents=True)
            for image_id in ids:
                shutil.copy2(synth / folder / f"{image_id}{suffix}", DEMO / "data" / folder / f"{image_id}{suffix}")
        shutil.copy2(synth / "classes.txt", DEMO / "data" / "classes.txt")
        val = VOCDataset(synth, "val", load_images=False)
        write_splits(DEMO / "data", {"val": ids}, read_classes(synth), {i: set(val.labels(i).tolist()) for i in ids})
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    print(f"demo -> {DEMO} ({len(ids)} images, {size / 2**20:.1f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("demo-build"), help="Scratch folder (dataset, full model).")
    parser.add_argument("--images", type=int, default=8, help="Validation images shipped with the demo.")
    parser.add_argument("--student-only", action="store_true", help="Train only a student for the shipped model.")
    args = parser.parse_args()
    if args.student_only:
        student_only(args.work)
    else:
        train(args.work)
    package(args.work, args.images, data=not args.student_only)


if __name__ == "__main__":
    main()
