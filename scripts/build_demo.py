"""Rebuild the embedded demo (``icn_rt/demo/``) by the recipe (docs/training.md,
``benchmarks/recipe.py``): a small model trained by icn-rt's own commands on the synthetic
benchmark, and a few validation images with their annotations and proposals. Every step is
an ``icn-rt`` command; the inference settings are those a new model is written with
(per-class peak thresholds, objectness re-ranking, IoU matching, peak × objectness
confidence), all chosen on the synthetic dev split (docs/accuracy.md)::

    python scripts/build_demo.py --work /tmp/demo-build      # ~1 h on 2 CPU cores

- the classifier: the recipe's schedule (120 epochs, the rate ×0.1 after 80);
- the ICN: the recipe's (re-ranked top-1 labels, 20 epochs), stored with T = 0 enhancement
  steps, so the demo's pipeline is the recipe's default, naive PRM + re-ranking (the ICN
  costs accuracy on our data, README); ``--icn-steps 1`` runs it, and export, engines and
  benchmarks have an ICN to build;
- the proposal-free student of that pipeline (``icn-rt train student``, 16 epochs like the
  recipe's, with the tiny head: a CPU-sized network that keeps the package a few MB).

``--student-only`` trains just a student for the shipped model (its dataset regenerated
from the config's ``demo`` section). Steps already done in ``--work`` (dataset, proposals,
classifier, ICN) are reused, so an interrupted build continues. The package data it writes
is a few MB.
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
CLASSIFIER_EPOCHS, ICN_EPOCHS, STUDENT_EPOCHS = 120, 20, 16  # the recipe's
STUDENT = ("--head", "tiny", "--epochs", str(STUDENT_EPOCHS))  # a small head: the package stays a few MB
STEPS = "0"  # ICN enhancement steps T at inference: the recipe leaves the ICN out (docs/accuracy.md)
SAMPLE_DIRS = {"JPEGImages": ".jpg", "Annotations": ".xml", "SegmentationClass": ".png",
               "SegmentationObject": ".png", "Proposals": ".mat"}


def icn_rt(*args: str) -> None:
    cmd = [sys.executable, "-m", "icn_rt.cli", *args]
    print("+ icn-rt " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def finished(model: Path, log: str, epochs: int) -> bool:
    """Whether a training's epoch log holds all its epochs (its weights are saved after each
    one, so their file alone does not say)."""
    path = model / log
    return path.exists() and len(json.loads(path.read_text())) >= epochs


def train(work: Path) -> Path:
    synth, model = work / "synth", work / "model"
    if not (synth / "synth.json").exists():
        icn_rt("data", "synth", str(synth))
    for split in ("val", "train", "dev"):  # the student's label threshold is chosen on dev
        icn_rt("proposals", str(synth), "--split", split)  # skips images already done
    if not finished(model, "train_log.json", CLASSIFIER_EPOCHS):
        icn_rt("train", "classifier", str(synth), "--model", str(model), "--backbone", "small", "--input-size", "128",
               "--sub-pixel", "1", "--lr", "1e-3", "--epochs", str(CLASSIFIER_EPOCHS), "--lr-step", "80",
               "--val-split", "dev", "--resume")
    if not finished(model, "icn_train_log.json", ICN_EPOCHS):
        icn_rt("train", "icn", str(synth), "--model", str(model), "--encoder", "small", "--width", "16",
               "--epochs", str(ICN_EPOCHS), "--lr-step", "5", "--rerank", "50", "--k", "1", "--steps", STEPS,
               "--resume")
    train_student(synth, model)
    return model


def train_student(synth: Path, model: Path) -> None:
    if not finished(model, "student_train_log.json", STUDENT_EPOCHS):
        icn_rt("train", "student", str(synth), "--model", str(model), *STUDENT, "--resume")


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
