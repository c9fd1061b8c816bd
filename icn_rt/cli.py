"""The ``icn-rt`` command line. Thin: each command parses, calls one function, prints."""

from __future__ import annotations

import json
import math
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from icn_rt.errors import InputError

app = typer.Typer(help="Instance masks from image-level labels: PRM + ICN, fast.", no_args_is_help=True,
                  rich_markup_mode=None,  # help texts are plain: their "[default: ...]" is text, not markup
                  add_completion=False, pretty_exceptions_enable=False)
data_app = typer.Typer(help="Datasets: the synthetic benchmark, conversion between VOC, COCO and tags layouts.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Training: the classifier (image-level labels), pseudo labels, the ICN.",
                        no_args_is_help=True)
app.add_typer(train_app, name="train")

out = Console()
err = Console(stderr=True)


def _fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


RAY_HELP = ("auto (a cluster running here, or a new local one) | local (a new one) | ADDRESS (host:6379, "
            "ray://host:10001)")
ORT_OPTIMIZATION_HELP = ("onnxruntime's graph optimisation level: disable | basic | extended | all "
                         "(--backend onnxruntime).")
ORT_SAVE_HELP = "onnxruntime writes the graphs it optimised beside them (<graph>.ort-<level>.onnx)."
ROOT_HELP = ("Dataset root in any layout: VOC folders (ImageSets/, JPEGImages/, ...), COCO "
             "(annotations/instances_<split>.json + <split>/ or images/) or a folder of images with "
             "tags.csv / tags.jsonl.")
DEVICE_HELP = "auto (the GPU when one is present, else the CPU) | cpu | cuda | cuda:N."


NPROC_HELP = ("Train on N processes (DDP: gloo on CPUs, NCCL with a GPU each) through torchrun --standalone on "
              "this machine; the global batch stays --batch-size. Several nodes: run torchrun yourself (README).")
SYNC_BN_HELP = "Under several processes, BatchNorm statistics over the global batch (SyncBatchNorm)."


def _launch(nproc: int, batch_size: int) -> None:
    """Rerun this command under ``torchrun`` with ``nproc`` processes on this machine, and
    exit with its status (unless ``nproc`` is 1, or this process is already one of them).
    A global batch that does not split over them is refused here, once, before any starts."""
    import os
    import subprocess

    from icn_rt.training.distributed import Ranks

    if nproc < 1:
        _fail(ValueError(f"--nproc must be at least 1, got {nproc}"))
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    try:
        Ranks(0, nproc).share(batch_size)
    except ValueError as e:
        _fail(e)
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            argv.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "icn_rt.cli", *argv]
    raise typer.Exit(subprocess.call(command))


def _rank_zero() -> bool:
    """Whether this process reports (the only one, or rank 0 under torchrun)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _device(value: str) -> str:
    """``--device auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; others as given."""
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _n(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


@data_app.command("synth")
def data_synth(
    out_dir: Path = typer.Argument(..., help="Root to write the dataset to."),
    size: int = typer.Option(128, help="Image side in pixels."),
    train: int = typer.Option(500, help="Training images."),
    val: int = typer.Option(500, help="Validation images (reporting only)."),
    dev: int = typer.Option(300, help="Development images (every choice of settings is made on these)."),
    classes: int = typer.Option(5, help="Number of classes (1-8)."),
    max_instances: int = typer.Option(4, help="Most objects per image."),
    body_evidence: float = typer.Option(0.0, help="Class evidence on the object's body, 0-1: 0 = part only (the "
                                                  "harsh regime), 1 = body colour, texture and shape follow the "
                                                  "class (VOC-like)."),
    distractor_bodies: bool = typer.Option(True, help="Part-less bodies in the background (distractors)."),
    background: str = typer.Option("plain", help="plain (smooth gradients) | photo (crops of real photographs "
                                                 "with clutter; objects harder to propose)."),
    photos: Optional[list[str]] = typer.Option(None, "--photo", help="With --background photo: a photograph (one of "
                                               "scikit-image's by name, an image file, or a folder of them); "
                                               "repeat for more [default: the development set, README]."),
    seed: int = typer.Option(0, help="Seed: the same seed gives the same dataset."),
    layout: str = typer.Option("voc", help="voc | coco | tags: the layout to write (same images and ids)."),
):
    """Write the synthetic benchmark (objects recognisable by a small part)."""
    from icn_rt.data.synth import SynthConfig, generate

    try:
        config = SynthConfig(size=size, train=train, val=val, dev=dev, classes=classes, max_instances=max_instances,
                             seed=seed, body_evidence=body_evidence, distractor_bodies=distractor_bodies,
                             background=background, photos=tuple(photos or ()))
    except ValueError as e:
        _fail(e)
    if layout not in ("voc", "coco", "tags"):
        _fail(ValueError(f"--layout must be voc, coco or tags, got '{layout}'"))
    try:
        splits = generate(out_dir, config, layout=layout)
    except InputError as e:
        _fail(e)
    out.print(f"wrote {len(splits.get('train', []))} train + {len(splits.get('val', []))} val images and "
              f"{len(splits.get('dev', []))} dev images, {config.classes} classes ({', '.join(config.class_names)}), "
              f"body evidence {config.body_evidence:g}, {config.background} backgrounds, to {out_dir} "
              f"({layout} layout)")


@data_app.command("convert")
def data_convert(
    source: Path = typer.Argument(..., help=ROOT_HELP + " With --to coco-dataset: `icn-rt infer`'s results "
                                               "JSON."),
    out_dir: Path = typer.Argument(..., help="Folder to write (new or empty)."),
    to: str = typer.Option(..., "--to", help="voc | coco | tags: the dataset in another layout; coco-dataset: "
                                             "infer's results as a COCO dataset (annotations = the masks) with "
                                             "their images, for a fully supervised trainer."),
    splits: Optional[list[str]] = typer.Option(None, "--split", help="Split to convert; repeat for more "
                                               "[default: all]. With coco-dataset: the one split to write "
                                               "[default: train]."),
    images: Optional[list[str]] = typer.Option(None, "--images", help="coco-dataset: the images the results are "
                                               "of (files, folders, globs, list files); repeat for more."),
    model_dir: Optional[Path] = typer.Option(None, "--model", help="coco-dataset: the model that made the "
                                             "results (its classes are the categories)."),
    min_score: float = typer.Option(0.0, help="coco-dataset: keep instances scoring at least this."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Convert a dataset between layouts, or pseudo labels into a COCO dataset."""
    from icn_rt.data.convert import TARGETS, convert_dataset, results_to_coco

    try:
        if to == "coco-dataset":
            if not images or model_dir is None:
                raise ValueError("--to coco-dataset needs --images (what the results are of) and --model")
            if splits and len(splits) > 1:
                raise ValueError("--to coco-dataset writes one --split")
            from icn_rt.models.store import read_config
            from icn_rt.runtime.sources import list_images

            classes = tuple(read_config(model_dir)["classes"])
            counts = results_to_coco(source, list_images(images), out_dir, classes, (splits or ["train"])[0], min_score)
            out.print(f"wrote {_n(counts['images'], 'image')} with {_n(counts['annotations'], 'annotation')} "
                      f"to {out_dir}")
            return
        if to not in TARGETS:
            raise ValueError(f"--to must be one of {', '.join(TARGETS)} or coco-dataset, got '{to}'")
        counts = convert_dataset(source, out_dir, to, splits, progress=not quiet)
    except (InputError, ValueError) as e:
        _fail(e)
    out.print(f"wrote {', '.join(f'{split} ({n})' for split, n in counts.items())} to {out_dir} ({to} layout)")


def _recall_table(report, title: str) -> Table:
    table = Table(title=title)
    for col in ("images", "GT instances", "proposals / image", "ABO", *[f"recall@{t:g}" for t in report.recall]):
        table.add_column(col, justify="right")
    table.add_row(str(report.images), str(report.instances), f"{report.mean_proposals:.0f}", _pct(report.abo),
                  *[_pct(v) for v in report.recall.values()])
    return table


@app.command("proposals")
def proposals(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    split: str = typer.Option("val", help="Split to make proposals for."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Proposal folder [default: ROOT/Proposals]."),
    jobs: int = typer.Option(0, help="Worker processes (0: one per core)."),
    max_proposals: int = typer.Option(2000, help="Most proposals kept per image."),
    mat_version: str = typer.Option("5", help="MATLAB file version to write: 5 or 7.3."),
    recall_only: bool = typer.Option(False, "--recall-only", help="Only report the recall of the proposals in --out (e.g. MCG's)."),
    oracle: Optional[Path] = typer.Option(None, help="Write the best proposal per GT instance as a results JSON (the upper bound for `icn-rt eval`)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the recall report as JSON."),
):
    """Generate selective-search proposals (MCG .mat layout) and report their recall."""
    from icn_rt.data.datasets import detect_layout
    from icn_rt.data.make_proposals import make_proposals
    from icn_rt.data.results import write_results
    from icn_rt.data.selective_search import SelectiveSearchConfig
    from icn_rt.eval.proposal_recall import proposal_recall

    if mat_version not in ("5", "7.3"):
        _fail(ValueError(f"--mat-version must be 5 or 7.3, got {mat_version}"))
    out_dir = out_dir or root / "Proposals"
    try:
        if not recall_only:
            summary = make_proposals(root, out_dir, split, SelectiveSearchConfig(max_proposals=max_proposals),
                                     jobs or None, mat_version)
            out.print(f"proposals: {summary.written} written, {summary.skipped} already there, "
                      f"{len(summary.failed)} failed -> {out_dir}")
            for image_id, reason in summary.failed:
                err.print(f"[yellow]failed:[/yellow] {reason}", highlight=False)
        if detect_layout(root) == "tags" and not (recall_only or oracle or json_out):
            err.print("a tags layout has no masks: no recall report", highlight=False)
            return
        report = proposal_recall(root, out_dir, split)
    except InputError as e:
        _fail(e)
    out.print(_recall_table(report, f"proposal upper bound ({split})"))
    for reason in report.missing:
        err.print(f"[yellow]no usable proposals (counted as IoU 0):[/yellow] {reason}", highlight=False, soft_wrap=True)
    if oracle:
        write_results(oracle, report.oracle)
        out.print(f"oracle results -> {oracle}")
    if json_out:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not recall_only and summary.failed:
        raise typer.Exit(1)


def _eval_table(report) -> Table:
    table = Table(title=f"evaluation: {report.images} images, {report.instances} GT instances, "
                        f"{report.predictions} predictions")
    for col in ("", *[f"mAP^r@{t:g}" for t in report.map], "ABO", "mIoU"):
        table.add_column(col, justify="right")
    table.add_row("all", *[_pct(v) for v in report.map.values()], _pct(report.abo), _pct(report.miou))
    table.add_row("background", *["" for _ in report.map], "", _pct(report.iou[0]))
    for c, name in enumerate(report.classes):
        table.add_row(name, *[_pct(v[c]) for v in report.ap.values()], "", _pct(report.iou[c + 1]))
    return table


def _interval(d: dict) -> str:
    """``7.6 [4.5, 10.7]`` from an interval's JSON (percent already)."""
    lo, hi = d["interval"]
    f = (lambda v: "-" if v is None else f"{v:.1f}")
    return f"{f(d['estimate'])} [{f(lo)}, {f(hi)}]"


def _intervals_table(report) -> Table:
    """The metrics with their bootstrap intervals (and, with --against, the other results'
    and the paired difference)."""
    doc = report.to_json()["bootstrap"]
    table = Table(title=f"{100 * doc['level']:g}% bootstrap intervals ({doc['samples']} draws of the images, "
                        f"seed {doc['seed']})")
    columns = {"these results": doc["intervals"]}
    if report.against is not None:
        columns |= {"--against": report.against["metrics"], "difference": report.against["difference"]}
        table.caption = "~0: the interval of the difference holds 0 (no difference the images support)"
    table.add_column("")
    for name in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for metric in doc["intervals"]:
        cells = [_interval(c[metric]) for c in columns.values()]
        if report.against is not None and not columns["difference"][metric]["excludes_zero"]:
            cells[-1] += " ~0"
        table.add_row(metric.replace("mAP@", "mAP^r@"), *cells)
    return table


@app.command("eval")
def evaluate(
    root: Path = typer.Argument(..., help=ROOT_HELP + " With masks (VOC or COCO): the ground truth."),
    results: Path = typer.Argument(..., help="COCO-style instance results JSON (RLE masks)."),
    split: str = typer.Option("val", help="Split to evaluate on."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    count_difficult: bool = typer.Option(False, help="Count 'difficult' objects as positives (chainercv's behaviour)."),
    bootstrap: int = typer.Option(0, help="Bootstrap draws of the images for 95% intervals (e.g. 1000; 0: none)."),
    seed: int = typer.Option(0, help="Seed of the bootstrap draws."),
    against: Optional[Path] = typer.Option(None, help="Another results JSON on the same images: paired comparison "
                                                      "(needs --bootstrap)."),
):
    """Score instance results: mAP^r at IoU 0.25/0.5/0.75, ABO, semantic mIoU, and COCO's segm
    AP/AP50/AP75/APs/APm/APl (pycocotools); with --bootstrap, the first five's 95% intervals;
    with --against, the interval of each difference."""
    from icn_rt.eval.report import evaluate as run_eval
    from icn_rt.eval.report import write_report

    try:
        report = run_eval(root, results, split, count_difficult, samples=bootstrap, seed=seed, against=against)
    except (InputError, ValueError) as e:
        _fail(e)
    out.print(_eval_table(report))
    out.print("COCO segm (pycocotools): " + "  ".join(f"{k} {_pct(v / 100)}" for k, v in report.coco.items()),
              soft_wrap=True)
    if report.intervals is not None:
        out.print(_intervals_table(report))
    if report.ignored_images:
        err.print(f"[yellow]ignored results for {len(report.ignored_images)} images outside split '{split}'[/yellow]")
    if json_out:
        write_report(report, json_out)
        out.print(f"metrics -> {json_out}")


@train_app.command("classifier")
def train_classifier_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    model_dir: Path = typer.Option(..., "--out", help="Model directory to write (config.json + weights)."),
    backbone: str = typer.Option("resnet50", help="resnet50 | vgg16 | small."),
    input_size: int = typer.Option(448, help="Square input side the images are resized to."),
    sub_pixel: int = typer.Option(8, help="Upsampling of the class maps before peaks are found (1 = off)."),
    epochs: int = typer.Option(20, help="Epochs (paper: 20)."),
    lr: float = typer.Option(1e-4, help="Adam learning rate (paper: 1e-4)."),
    lr_step: int = typer.Option(10, help="Multiply the learning rate by 0.1 every this many epochs."),
    batch_size: int = typer.Option(16, help="Images per step."),
    split: str = typer.Option("train", help="Training split."),
    val_split: str = typer.Option("val", help="Split for the classification mAP printed each epoch."),
    pretrained: Optional[str] = typer.Option(None, help="'imagenet' (torchvision download) or a weights file."),
    seed: int = typer.Option(0, help="Seed for initialisation, order and augmentation."),
    workers: int = typer.Option(0, help="Image loading worker processes."),
    per_class_peaks: bool = typer.Option(True, help="Calibrate one peak threshold per class at the end "
                                                    "(--no-per-class-peaks: one for all)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run in --out."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    nproc: int = typer.Option(1, help=NPROC_HELP),
    sync_bn: bool = typer.Option(False, help=SYNC_BN_HELP),
):
    """Train the peak-stimulation classifier; prints loss and val classification mAP per epoch."""
    from icn_rt.models.classifier import ClassifierSettings
    from icn_rt.training.classifier import TrainSettings, train_classifier

    _launch(nproc, batch_size)
    try:
        summary = train_classifier(
            root, model_dir,
            TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step, seed=seed, workers=workers,
                          split=split, val_split=val_split, pretrained=pretrained, per_class_peaks=per_class_peaks,
                          sync_bn=sync_bn),
            ClassifierSettings(backbone=backbone, input_size=input_size, sub_pixel=sub_pixel),
            resume=resume, device=device, log=out.print)
    except (InputError, ValueError) as e:
        _fail(e)
    if not _rank_zero():
        return
    if summary.skipped:
        err.print(f"[yellow]skipped {len(summary.skipped)} unreadable images (see {model_dir / 'train_errors.txt'})[/yellow]")
    final = summary.epochs[-1] if summary.epochs else None
    out.print(f"model -> {model_dir}" + (f"  ({val_split} classification mAP {_pct(final.val_map)})" if final else "")
              + f"; peak threshold calibrated to {_thresholds(summary.peaks.peak_threshold)}")
    weak = summary.weak_classes()
    if weak:
        err.print(f"[yellow]weak classes ({val_split} classification AP): "
                  + ", ".join(f"{name} {_pct(ap)}" for name, ap in weak)
                  + ". Their maps barely respond, so they get few peaks and instances: train longer before "
                    "the learning rate drops (--epochs, --lr-step; README, Training).[/yellow]", soft_wrap=True)


def _thresholds(value) -> str:
    return ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


@train_app.command("calibrate-peaks")
def calibrate_peaks_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="Model directory with a trained classifier."),
    split: str = typer.Option("train", help="Split to calibrate on."),
    fraction: float = typer.Option(0.5, help="Threshold = this × the median class-map maximum of labelled images."),
    per_class: bool = typer.Option(True, help="One threshold per class (--no-per-class: one for all, as before)."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
):
    """Calibrate a trained model's peak thresholds again (as training does at its end)."""
    from icn_rt.training.classifier import recalibrate_peaks

    try:
        peaks = recalibrate_peaks(root, model_dir, split, fraction, per_class, device=device)
    except (InputError, ValueError) as e:
        _fail(e)
    out.print(f"peak threshold of {model_dir} calibrated to {_thresholds(peaks.peak_threshold)}", soft_wrap=True)


def _skipped(summary) -> None:
    """The first few images a label run could not use."""
    for image_id, reason in summary.failed[:5]:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)


@train_app.command("pseudo-labels")
def train_pseudo_labels_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="Model directory with a trained classifier."),
    supervision: str = typer.Option("proposals", help="proposals (pseudo labels) | saliency (GT instance masks)."),
    split: str = typer.Option("train", help="Split to label."),
    k: int = typer.Option(3, help="Proposals kept per peak (best first, none inside a kept one)."),
    rerank: Optional[int] = typer.Option(None, help="Re-rank each peak's N best proposals by objectness (0: off, "
                                                    "the paper) [default: the model's matching.rerank]."),
    labels: Optional[Path] = typer.Option(None, "--out", help="Label directory [default: MODEL/labels-SUPERVISION-SPLIT]."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Proposal folder [default: ROOT/Proposals]."),
    batch_size: int = typer.Option(8, help="Images per batch."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    ray: Optional[str] = typer.Option(None, help="Label on a Ray cluster (as `infer --ray`): " + RAY_HELP + "."),
    actors: int = typer.Option(1, help="--ray: labellers at once, each loading the model once."),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs per labeller (0: on CPUs)."),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs per labeller."),
):
    """Label every labelled-class peak of a split for ICN training (reruns resume)."""
    from icn_rt.training.pseudo_labels import LabelSettings, label_model

    try:
        settings = LabelSettings(supervision=supervision, split=split, k=k, batch_size=batch_size, rerank=rerank)
        if ray is not None:
            from icn_rt.runtime.ray_infer import RaySettings
            from icn_rt.workflows.labels import label_on_ray

            _, summary = label_on_ray(root, model_dir, settings,
                                      RaySettings(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus=0.0),
                                      labels, proposals_dir, log=out.print)
        else:
            _, summary = label_model(root, model_dir, settings, labels, proposals_dir, device, log=out.print)
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    _skipped(summary)


@train_app.command("icn")
def train_icn_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="Model directory with a trained classifier; the ICN is added."),
    encoder: str = typer.Option("vgg16", help="vgg16 | small."),
    width: int = typer.Option(64, help="Channels of the propagation blocks and mapping head."),
    propagation: bool = typer.Option(True, help="CFM + DFM paths (--no-propagation: the ablation)."),
    prm_input: bool = typer.Option(True, help="PRM as a fourth input channel (--no-prm-input: the ablation)."),
    steps: int = typer.Option(3, help="Enhancement steps T at inference."),
    supervision: str = typer.Option("proposals", help="proposals (pseudo labels) | saliency (GT instance masks)."),
    split: str = typer.Option("train", help="Split whose labels train the ICN."),
    labels: Optional[Path] = typer.Option(None, help="Label directory [default: MODEL/labels-SUPERVISION-SPLIT]; made when missing."),
    k: int = typer.Option(3, help="Proposals per pseudo label when they are made (see `train pseudo-labels`)."),
    rerank: Optional[int] = typer.Option(None, help="Objectness re-ranking of the pseudo labels' candidates when "
                                                    "they are made (see `train pseudo-labels`)."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Proposal folder [default: ROOT/Proposals]."),
    epochs: int = typer.Option(120, help="Epochs (paper: 120)."),
    lr: float = typer.Option(1e-3, help="Adam learning rate (paper: 1e-3)."),
    lr_step: int = typer.Option(20, help="Halve the learning rate every this many epochs."),
    batch_size: int = typer.Option(8, help="Peaks per step."),
    crop: float = typer.Option(0.75, help="Smallest random crop side, as a fraction of the input."),
    self_feed: float = typer.Option(0.5, help="Share of samples whose PRM input is the ICN's own output on it, as "
                                    "steps 2..T see it at inference (not in the paper; 0: off, as the paper)."),
    pretrained: Optional[str] = typer.Option(None, help="vgg16 encoder: 'imagenet' (torchvision download) or a vgg16_bn weights file."),
    seed: int = typer.Option(0, help="Seed for initialisation, order and augmentation."),
    workers: int = typer.Option(0, help="Loading worker processes."),
    resume: bool = typer.Option(False, help="Continue an interrupted ICN run in --model."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    nproc: int = typer.Option(1, help=NPROC_HELP),
    sync_bn: bool = typer.Option(False, help=SYNC_BN_HELP),
    ray: Optional[str] = typer.Option(None, help="Make the missing labels on a Ray cluster first (as `train "
                                                 "pseudo-labels --ray`): " + RAY_HELP + "."),
    actors: int = typer.Option(1, help="--ray: labellers at once."),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs per labeller (0: on CPUs)."),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs per labeller."),
):
    """Train the ICN on pseudo labels (made first when missing); writes icn.safetensors into the model."""
    import os

    from icn_rt.models.icn import ICNSettings
    from icn_rt.training.icn import ICNTrainSettings, label_and_train
    from icn_rt.training.pseudo_labels import LabelSettings

    if ray is not None and "WORLD_SIZE" not in os.environ:  # before torchrun starts the ranks, which then find them
        from icn_rt.runtime.ray_infer import RaySettings
        from icn_rt.workflows.labels import label_on_ray

        try:
            label_on_ray(root, model_dir, LabelSettings(supervision=supervision, split=split, k=k, rerank=rerank),
                         RaySettings(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus=0.0), labels,
                         proposals_dir, log=out.print)
        except (InputError, ValueError, RuntimeError) as e:
            _fail(e)
    _launch(nproc, batch_size)
    try:
        icn_settings = ICNSettings(encoder=encoder, width=width, propagation=propagation, prm_input=prm_input,
                                   steps=steps)
        settings = ICNTrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step, crop=crop, seed=seed,
                                    workers=workers, pretrained=pretrained, self_feed=self_feed, sync_bn=sync_bn)
        labelled, summary = label_and_train(root, model_dir, settings, icn_settings,
                                            LabelSettings(supervision=supervision, split=split, k=k, rerank=rerank),
                                            labels,
                                            proposals_dir, resume, device, log=out.print)
    except (InputError, ValueError) as e:
        _fail(e)
    if not _rank_zero():
        return
    _skipped(labelled)
    final = summary.epochs[-1] if summary.epochs else None
    out.print(f"ICN -> {model_dir} ({summary.samples} peaks" + (f", final loss {final.loss:.4f})" if final else ")"))


@train_app.command("student")
def train_student_cmd(
    root: Path = typer.Argument(..., help=ROOT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="Model directory whose pipeline labels the training split; "
                                                        "the student is added to it."),
    backbone: str = typer.Option("classifier-fpn", help="classifier-fpn (the model's classifier backbone under an FPN, "
                                                        "from its weights) | mobilenet-v3-fpn (CPUs, Jetson) | "
                                                        "resnet50-fpn."),
    head: str = typer.Option("light", help="light (512-feature box head, two 128-channel mask convolutions) | "
                                           "tiny (256 features, one 64-channel convolution: for CPUs) | "
                                           "standard (torchvision's)."),
    input_size: int = typer.Option(0, help="Side the student sees images at [default 0: the training images' median "
                                           "shorter side, rounded up to 32]."),
    threshold: Optional[float] = typer.Option(None, help="Confidence a pipeline instance needs to become a label "
                                                         "[default: chosen on --dev-split, best F1 at mask IoU 0.5]."),
    split: str = typer.Option("train", help="Split the pipeline labels and the student learns."),
    dev_split: str = typer.Option("dev", help="Split the threshold is chosen on."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Proposal folder for the pipeline "
                                                 "[default: ROOT/Proposals]."),
    from_student: Optional[Path] = typer.Option(None, help="Self-training: that model directory's student labels "
                                                           "the splits instead of the pipeline."),
    epochs: int = typer.Option(24, help="Epochs."),
    batch_size: int = typer.Option(4, help="Images per step."),
    lr: float = typer.Option(0.01, help="SGD learning rate (after warm-up; x0.1 at 2/3 and 8/9 of the epochs)."),
    pretrained: Optional[str] = typer.Option(None, help="mobilenet-v3-fpn / resnet50-fpn start: 'imagenet' "
                                                        "(torchvision download) or a weights file [default: from "
                                                        "scratch]."),
    seed: int = typer.Option(0, help="Seed for initialisation, order, augmentation and sampling."),
    workers: int = typer.Option(0, help="Loading worker processes."),
    resume: bool = typer.Option(False, help="Continue an interrupted student run in --model."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    ray: Optional[str] = typer.Option(None, help="Label on a Ray cluster (as `infer --ray`): " + RAY_HELP + "."),
    actors: int = typer.Option(1, help="--ray: predictors labelling at once."),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs per predictor (0: on CPUs)."),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs per predictor."),
    nproc: int = typer.Option(1, help=NPROC_HELP + " Rank 0 labels first."),
    sync_bn: bool = typer.Option(False, help=SYNC_BN_HELP),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Distil the pipeline into a proposal-free student (torchvision Mask R-CNN): the pipeline
    labels the split (resumable infer job), confident tagged instances are kept, the student
    trains on them; writes student.safetensors into the model."""
    from icn_rt.models.student import StudentSettings
    from icn_rt.training.student import StudentTrainSettings, input_size_for
    from icn_rt.workflows.student import teach_and_train

    _launch(nproc, batch_size)
    try:
        settings = StudentTrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, workers=workers,
                                        split=split, pretrained=pretrained, sync_bn=sync_bn)
        student = StudentSettings(backbone=backbone, head=head, input_size=input_size or input_size_for(root, split))
        cluster = None
        if ray is not None:
            from icn_rt.runtime.ray_infer import RaySettings

            cluster = RaySettings(ray, actors, gpus_per_actor, cpus_per_actor)
        run = teach_and_train(root, model_dir, settings, student, threshold, dev_split, proposals_dir, resume, device,
                              log=out.print, progress=not quiet, teacher_student=from_student, ray=cluster)
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    if not _rank_zero():
        return
    for split_name, summary in run.labelled.items():
        if summary.failed:
            err.print(f"[yellow]{_n(len(summary.failed), 'image')} of {split_name} failed in the pipeline (reasons in "
                      f"{model_dir}/student-labels/{split_name}.json.errors.txt)[/yellow]", highlight=False)
    final = run.trained.epochs[-1] if run.trained.epochs else None
    out.print(f"student -> {model_dir} ({run.trained.images} images, {run.trained.instances} labels at confidence "
              f">= {run.threshold:.3g}; {run.trained.dropped_images} images without one left out"
              + (f"; final loss {final.loss:.4f})" if final else ")"), soft_wrap=True)


@app.command("infer")
def infer_cmd(
    model_dir: Path = typer.Argument(..., help="Model directory (from `icn-rt train classifier`)."),
    images: list[str] = typer.Argument(..., help="Image files, directories, glob patterns ('imgs/**/*.jpg') or "
                                                 "list files (.txt, a path a line)."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Directory of <image id>.mat (MCG) / "
                                                 ".json (RLE) proposals [default: selective search on the fly, slow]."),
    results: Path = typer.Option(Path("results.json"), "--out", help="COCO-style results JSON to write."),
    backend: str = typer.Option("torch", help="torch (eager) | onnxruntime | tensorrt (the exported graphs: "
                                              "`icn-rt export`, `icn-rt build-engine`) | auto (the fastest present); "
                                              "a graph backend may name a precision: onnxruntime:int8; torch "
                                              "runs under autocast at torch:fp16 or torch:bf16."),
    save_vis: Optional[Path] = typer.Option(None, help="Write <id>_overlay.png and <id>_prm.png here."),
    batch_size: int = typer.Option(8, help="Images per batch."),
    workers: Optional[int] = typer.Option(None, help="Loader workers: decode, proposals, preprocessing "
                                                     "[default: up to 4, one per core; 0 = none]."),
    resume: bool = typer.Option(False, help="Continue an interrupted run: skip images with results in "
                                            "OUT.parts/, retry those that failed."),
    overwrite: bool = typer.Option(False, help="Discard an unfinished run's results in OUT.parts/ and start over."),
    max_pixels: float = typer.Option(64, help="Refuse images larger than this many megapixels."),
    icn_steps: Optional[int] = typer.Option(None, help="ICN enhancement steps T [default: the model's; 0 = naive PRMs]."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    overlap: Optional[bool] = typer.Option(None, help="Copy the next batch to the device while this one computes "
                                                      "[default: on a GPU]."),
    cuda_graph: bool = typer.Option(False, help="TensorRT replays its plans as CUDA graphs (--backend tensorrt)."),
    ort_optimization: str = typer.Option("all", help=ORT_OPTIMIZATION_HELP),
    ort_save_optimized: bool = typer.Option(False, help=ORT_SAVE_HELP),
    student: bool = typer.Option(False, help="Run the model's student (`icn-rt train student`): no proposals, no "
                                             "backward; --backend torch | onnxruntime[:fp16|:int8] (`icn-rt export "
                                             "--student`) | tensorrt[:fp16|:int8] (`icn-rt build-engine --student`)."),
    ray: Optional[str] = typer.Option(None, help="Run on a Ray cluster (pip install 'icn-rt[distributed]'): "
                                                 + RAY_HELP + "."),
    actors: int = typer.Option(1, help="--ray: predictors in the pool, each loading the model once."),
    gpus_per_actor: float = typer.Option(0.0, help="--ray: GPUs per predictor (0: on CPUs)."),
    cpus_per_actor: float = typer.Option(1.0, help="--ray: CPUs per predictor (its torch threads)."),
    loader_cpus: float = typer.Option(1.0, help="--ray: CPUs per loading task (decode, proposals, preprocessing)."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Instances for images tagged with nothing: peaks -> PRMs -> ICN -> proposal matching -> NMS.
    Streams, records bad inputs and goes on (exit 1 if any failed), resumes (exit 130 when
    interrupted: rerun with --resume)."""
    import os
    import signal

    from icn_rt.runtime.infer import InferSettings, PredictorSpec, infer
    from icn_rt.runtime.sources import list_images

    if batch_size < 1:
        _fail(ValueError(f"--batch-size must be at least 1, got {batch_size}"))
    try:
        if student and proposals_dir is not None:
            raise ValueError("--student needs no --proposals")
        spec = PredictorSpec(str(model_dir), student, backend, device, icn_steps, cuda_graph, ort_optimization,
                             ort_save_optimized)
        if ray is not None:
            from icn_rt.runtime.ray_infer import RaySettings

            cluster = RaySettings(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus)
        predictor = spec.build() if ray is None else None  # under Ray, each actor makes its own
        paths = list_images(images)
        if not paths:
            raise ValueError("no images given (directories are searched for .jpg/.png files)")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    if backend == "auto" and predictor is not None:
        err.print(f"backend: {predictor.backend} (auto)", highlight=False)
    if proposals_dir is None and not student:
        err.print("no --proposals: making selective-search proposals on the fly (slow; `icn-rt proposals` "
                  "makes them once)", highlight=False)
    settings = InferSettings(proposals=proposals_dir, save_vis=save_vis, batch_size=batch_size,
                             workers=min(4, os.cpu_count() or 1) if workers is None else workers, resume=resume,
                             overwrite=overwrite, max_pixels=int(max_pixels * 1e6), progress=not quiet,
                             overlap=overlap)
    # a kill (SIGTERM) stops like Ctrl-C: what is written stays, --resume continues
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if ray is None:
            summary = infer(predictor, paths, results, settings)
        else:
            from icn_rt.runtime.ray_infer import infer_ray

            try:
                summary = infer_ray(spec, paths, results, settings, cluster)
            except (ValueError, RuntimeError) as e:  # the cluster: too small, Ray missing or unreachable
                _fail(e)
    except InputError as e:
        _fail(e)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary.interrupted:
        err.print(f"interrupted: results of {_n(summary.images, 'image')} are kept in {results}.parts; rerun with "
                  "--resume to finish", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    out.print(f"{_n(summary.images, 'image')}, {_n(summary.instances, 'instance')} ({summary.empty} without any) "
              f"-> {results}" + (f" ({summary.skipped} done by an earlier run)" if summary.skipped else "")
              + (f"; pictures -> {save_vis}" if save_vis else ""), soft_wrap=True)
    if summary.failed:
        err.print(f"[yellow]{_n(len(summary.failed), 'image')} failed (reasons in {results}.errors.txt); first: "
                  f"{summary.failed[0][1]}[/yellow]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("bench")
def bench_cmd(
    model_dir: Path = typer.Argument(..., help="Model directory (graphs and plans beside it are benchmarked too)."),
    images: Optional[list[str]] = typer.Argument(None, help="Images (files, directories, globs, list files) "
                                                            "[default: the demo's]."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Their proposals [default: the demo's]."),
    count: int = typer.Option(32, "--images", help="Images per measurement (cycling through those given)."),
    batch_sizes: str = typer.Option("1,4,16", help="Batch sizes, comma separated."),
    backends: str = typer.Option("torch,onnxruntime,tensorrt", help="Backends to measure, each with an optional "
                                 "precision (torch:bf16, onnxruntime:int8, ...); absent ones are reported as "
                                 "skipped, with why."),
    baseline: bool = typer.Option(True, help="Run the baseline pipeline (icn_rt.baseline) too."),
    warmup: int = typer.Option(1, help="Untimed batches before each measurement."),
    iterations: int = typer.Option(20, help="Least timed batches per contestant and batch size (passes over the "
                                            "images repeat; p90/p99 need 20 samples)."),
    duration: Optional[float] = typer.Option(None, help="Least seconds timed per contestant and batch size."),
    json_out: Path = typer.Option(Path("bench.json"), "--out", help="Report JSON; the plot goes beside it (.png)."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
    eval_root: Optional[Path] = typer.Option(None, "--eval", help="Dataset root with masks (VOC or COCO layout): "
                                             "add each backend's model size and mAP^r@0.5 on a split, with its "
                                             "difference to torch fp32."),
    eval_split: str = typer.Option("val", help="The split --eval scores."),
    eval_proposals: Optional[Path] = typer.Option(None, help="Proposals of --eval's images [default: ROOT/Proposals]."),
    cuda_graph: bool = typer.Option(False, help="Also run each TensorRT contestant replaying CUDA graphs."),
    profile_layers: bool = typer.Option(False, help="TensorRT's per-layer times of each plan at the largest batch "
                                                    "size, into the report (as trtexec --dumpProfile)."),
    ort_optimization: str = typer.Option("all", help=ORT_OPTIMIZATION_HELP),
    ort_save_optimized: bool = typer.Option(False, help=ORT_SAVE_HELP),
):
    """Per-stage latency (median/p90/p99), images/s vs batch size per backend, and the
    speed-up over the baseline pipeline on the same images with the same instances;
    with --eval, each backend's size and accuracy."""
    import json as jsonlib

    from icn_rt import demo
    from icn_rt.runtime.bench import BenchSettings, EvalSettings, backward_lines, bench, markdown, plot
    from icn_rt.runtime.sources import list_images

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        _fail(ValueError(f"--batch-sizes must be positive integers separated by commas, got {batch_sizes!r}"))
    try:
        paths = list_images(images or [demo.IMAGES])
        settings = BenchSettings(batch_sizes=sizes, backends=tuple(b.strip() for b in backends.split(",")),
                                 images=count, baseline=baseline, device=device, warmup=warmup,
                                 iterations=iterations, duration=duration,
                                 evaluation=EvalSettings(eval_root, eval_split, eval_proposals) if eval_root else None,
                                 cuda_graph=cuda_graph, profile_layers=profile_layers,
                                 ort_optimization=ort_optimization, ort_save_optimized=ort_save_optimized)
        report = bench(model_dir, paths, proposals_dir or demo.PROPOSALS, settings,
                       log=lambda m: err.print(m, highlight=False))
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    report = {"command": shlex.join(["icn-rt", *sys.argv[1:]]), **report}
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(jsonlib.dumps(report, indent=2) + "\n")
    json_out.with_suffix(".md").write_text(markdown(report))
    plot(report, json_out.with_suffix(".png"))
    table = Table(title=f"{report['images']} images ({report['image_sizes'][0][0]}x{report['image_sizes'][0][1]}"
                        f"{'…' if len(report['image_sizes']) > 1 else ''}), input {report['input_size']}², "
                        f"{report['device']}",
                  caption="same: the baseline's instances; ms/batch: median, then p90, p99 (from n timed batches; "
                          "none from fewer than 20)", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for column in ("contestant", "backend", "batch", "img/s", "×base", "same", "ms/batch", "p90", "p99", "n"):
        if column == "contestant":  # wraps at words; the backend stays whole (onnxruntime:int8)
            table.add_column(column, min_width=9)
        elif column == "backend":
            table.add_column(column, no_wrap=True, min_width=max(len(r["backend"]) for r in report["rows"]))
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in report["rows"]:
        total = row["latency_s"]["total"]
        same = {True: "yes", False: "NO", None: "-"}[row["same_instances_as_baseline"]]
        ratio = row["speedup_vs_baseline"]
        table.add_row(row["contestant"], row["backend"], str(row["batch_size"]), f"{row['images_per_s']:.1f}",
                      f"{ratio:.1f}" if ratio else "-", same, f"{1e3 * total['median']:.1f}",
                      *("-" if total[q] is None else f"{1e3 * total[q]:.1f}" for q in ("p90", "p99")),
                      str(total["n"]))
    out.print(table)
    for line in backward_lines(report):
        out.print(line, highlight=False)
    if report["accuracy"]:
        out.print(_accuracy_table(report["accuracy"]))
    for name, reason in report["skipped"].items():
        err.print(f"[yellow]skipped {name}:[/yellow] {reason}", highlight=False, soft_wrap=True)
    out.print(f"report -> {json_out} (and .md); plot -> {json_out.with_suffix('.png')}", soft_wrap=True)


def _accuracy_table(acc: dict) -> Table:
    """``bench --eval``'s table: per backend, size, mAP^r@0.5 and the difference to torch fp32."""
    def cell(m):
        lo, hi = m["interval"]
        return "-" if m["estimate"] is None else f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

    table = Table(title=f"accuracy on {acc['split']} of {acc['root']} ({acc['images']} images)",
                  caption=f"{100 * acc['bootstrap']['level']:g}% bootstrap intervals over the images "
                          f"({acc['bootstrap']['samples']} draws); ~0: the difference's interval holds 0")
    table.add_column("backend", overflow="fold")
    for column in ("MB", "mAP^r@0.5", "− torch fp32"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in acc["rows"]:
        d = row["minus_torch_fp32"]
        diff = "(reference)" if d is None else cell(d) + ("" if d["excludes_zero"] else " ~0")
        table.add_row(row["backend"], f"{row['model_bytes'] / 1e6:.2f}", cell(row["mAP@0.5"]), diff)
    return table


@app.command("export")
def export_cmd(
    model_dir: Path = typer.Argument(..., help="Model directory."),
    slots: Optional[int] = typer.Option(None, help="The most peaks per image the PRM graph keeps (the highest) "
                                                  "[default: the model's peaks.max_peaks]."),
    precision: str = typer.Option("fp32", help="Comma-separated: fp32 (always written) | fp16 (the networks' "
                                               "convolutions in fp16, the rest fp32) | int8 (Q/DQ, calibrated)."),
    calibration: Optional[Path] = typer.Option(None, help="Dataset root (any layout) whose images calibrate int8."),
    calibration_split: str = typer.Option("train", help="Split of the calibration images."),
    calibration_images: int = typer.Option(64, help="How many calibration images."),
    calibration_method: str = typer.Option("minmax", help="minmax | entropy | percentile."),
    verify: bool = typer.Option(True, help="Run each graph once in onnxruntime and record its difference from "
                                           "PyTorch in the manifest."),
    simplify: bool = typer.Option(True, help="Simplify the fp32 graphs with onnxslim (kept only when onnxruntime "
                                             "gives the same outputs; node counts in the manifest)."),
    student: bool = typer.Option(False, help="Export the student instead (student.onnx, one image per run, "
                                             "record in student.onnx.json; --precision fp16 adds "
                                             "student.fp16.onnx, int8 student.int8.onnx for onnxruntime on CPUs "
                                             "and student.int8.s8.onnx for TensorRT)."),
):
    """ONNX graphs beside the model: prm.onnx (classifier, peaks, peak backprop, PRMs) and
    icn.onnx (T enhancement steps), checked, with manifest.json; --precision adds their
    fp16 / int8 variants (prm.fp16.onnx, ...), which build-engine builds strongly typed."""
    from icn_rt.export.onnx_export import Calibration, export_model

    precisions = tuple(dict.fromkeys(["fp32", *(p.strip() for p in precision.split(",") if p.strip())]))
    try:
        calibrate = None
        if calibration is not None:
            calibrate = Calibration(str(calibration), calibration_split, calibration_images, method=calibration_method)
    except ValueError as e:
        _fail(e)
    if student:
        from icn_rt.export.onnx_export import export_student

        try:
            record = export_student(model_dir, verify=verify, precisions=precisions, calibration=calibrate)
        except (InputError, ValueError) as e:
            _fail(e)
        check = record.get("verification", {})
        out.print(f"student -> {model_dir / record['file']} ({record['bytes'] / 2**20:.1f} MiB, "
                  f"{sum(record['operators'].values())} nodes; TensorRT-unsupported operators: "
                  f"{', '.join(record['tensorrt_unsupported']) or 'none'}"
                  + (f"; onnxruntime vs torch: {check['onnxruntime_detections']}/{check['detections']} detections, "
                     f"boxes {check.get('max_difference_boxes', float('nan')):.1e} px, masks "
                     f"{check.get('max_difference_box_masks', float('nan')):.1e}" if check else "") + ")", soft_wrap=True)
        for name, variant in record.get("precisions", {}).items():
            for form in (variant, variant.get("tensorrt")):
                if form is None:
                    continue
                check = form.get("verification", {})
                out.print(f"{name} student -> {model_dir / form['file']} ({form['bytes'] / 2**20:.1f} MiB, "
                          f"{form['nodes_lowered']} layers in {name}"
                          + (f", {form['activations'].split(' (')[0]} activations" if "activations" in form else "")
                          + (f"; onnxruntime vs torch fp32: {check['onnxruntime_detections']}/{check['detections']} "
                             "detections" if check else "") + ")", soft_wrap=True)
        return
    try:
        manifest = export_model(model_dir, slots=slots, verify=verify, precisions=precisions, calibration=calibrate,
                                simplify=simplify)
    except (InputError, ValueError) as e:
        _fail(e)
    table = Table(title=f"exported {model_dir}", caption="nodes: after onnxslim (as exported)")
    for column in ("graph", "file", "MiB", "nodes", "operators", "max |ONNX − torch|"):
        table.add_column(column)
    for name, g in manifest["graphs"].items():
        for record in (g, *g.get("precisions", {}).values()):
            diff = record.get("max_difference", {})
            nodes = str(sum(record["operators"].values()))
            slim = record.get("simplified")
            if slim:
                nodes += f" ({slim['nodes_before']})" if "kept_exported" not in slim else " (not simplified)"
            table.add_row(name, record["file"], f"{record['bytes'] / 2**20:.1f}", nodes, str(len(record["operators"])),
                          ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) or "-")
    out.print(table)
    for name, g in manifest["graphs"].items():
        if g.get("simplified") and "kept_exported" in g["simplified"]:
            err.print(f"[yellow]{name}: kept as exported:[/yellow] {g['simplified']['kept_exported']}", highlight=False)


@app.command("compare")
def compare_cmd(
    model_dir: Path = typer.Argument(..., help="Model directory (with exported graphs / plans for the graph "
                                               "backends)."),
    images: list[str] = typer.Argument(..., help="Image files, directories, glob patterns or list files."),
    contestants: list[str] = typer.Option(..., "--with", help="A backend to run, repeatable; the first is the "
                                                              "reference: torch | onnxruntime[:fp16|:int8] | "
                                                              "tensorrt[:fp16|:int8]."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="Proposals (<id>.mat / .json) for the "
                                                 "same-instance agreement [default: not compared]."),
    report_out: Path = typer.Option(Path("compare.json"), "--out", help="JSON report."),
    atol: Optional[float] = typer.Option(None, help="Absolute tolerance [default: by precision]."),
    rtol: Optional[float] = typer.Option(None, help="Relative tolerance [default: by precision]."),
    min_peak_agreement: Optional[float] = typer.Option(None, help="Least peak agreement (IoU of the peak sets)."),
    min_instance_agreement: Optional[float] = typer.Option(None, help="Least same-instance agreement."),
    student: bool = typer.Option(False, help="Compare the model's student (--with torch --with onnxruntime): "
                                             "detections, scores, boxes, masks."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
):
    """Run the same images through several backends and precisions and compare each with
    the first, as Polygraphy does: per output the largest absolute and relative error
    against stated tolerances, peak agreement, same-instance agreement (class, chosen
    proposal). Exit 1 on a mismatch."""
    from icn_rt.runtime.compare import compare, compare_student
    from icn_rt.runtime.sources import list_images

    override = {"atol": atol, "rtol": rtol, "peaks": min_peak_agreement, "instances": min_instance_agreement}
    try:
        paths = list_images(images)
        if not paths:
            raise ValueError("no images given (directories are searched for .jpg/.png files)")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
        if student:
            report = compare_student(model_dir, paths, contestants, device, override)
        else:
            report = compare(model_dir, paths, contestants, device, proposals_dir, override)
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    report_out.write_text(json.dumps(report, indent=2) + "\n")
    if student:
        _student_compare_table(report, paths, report_out)
        return
    table = Table(title=f"against {report['reference']} on {_n(len(paths), 'image')}",
                  caption="largest absolute error per output; peak and same-instance agreement; ✗: over tolerance")
    table.add_column("contestant", no_wrap=True, min_width=max(map(len, report["contestants"])))
    for column in ("scores", "maps", "prms", "enhanced", "peaks", "instances", ""):
        table.add_column(column)
    for name, c in report["contestants"].items():
        cells = [f"{o['max_abs']:.0e}" + ("" if o["ok"] else " ✗") for o in c["outputs"].values()]
        inst = c.get("instances")
        table.add_row(name, *cells, f"{c['peaks']['agreement']:.2f}" + ("" if c["peaks"]["ok"] else " ✗"),
                      "-" if inst is None else f"{inst['agreement']:.2f}" + ("" if inst["ok"] else " ✗"),
                      "ok" if c["ok"] else "✗")
    _compare_verdict(table, report, report_out)


def _compare_verdict(table: Table, report: dict, report_out: Path) -> None:
    """Print a comparison's table and report path; exit 1 on a mismatch."""
    out.print(table)
    out.print(f"report -> {report_out}", soft_wrap=True)
    if not report["ok"]:
        err.print("[red]mismatch:[/red] " + ", ".join(n for n, c in report["contestants"].items() if not c["ok"])
                  + " (tolerances and errors in the report)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _student_compare_table(report: dict, paths: list, report_out: Path) -> None:
    table = Table(title=f"student against {report['reference']} on {_n(len(paths), 'image')}",
                  caption="largest absolute error per output (images whose detections agree); ✗: over tolerance")
    table.add_column("contestant", no_wrap=True, min_width=max(map(len, report["contestants"])))
    for column in ("scores", "boxes", "masks", "detections", ""):
        table.add_column(column)
    for name, c in report["contestants"].items():
        cells = [f"{o['max_abs']:.0e}" + ("" if o["ok"] else " ✗") for o in c["outputs"].values()]
        inst = c["instances"]
        table.add_row(name, *cells, f"{inst['agreement']:.2f}" + ("" if inst["ok"] else " ✗"),
                      "ok" if c["ok"] else "✗")
    _compare_verdict(table, report, report_out)


@app.command("build-engine")
def build_engine_cmd(
    model_dir: Path = typer.Argument(..., help="Model directory with exported graphs (`icn-rt export`)."),
    precision: str = typer.Option("fp16", help="fp32 | fp16 | int8: which exported graphs to build (`icn-rt "
                                               "export --precision`); the plan runs each layer in the graph's type."),
    min_batch: int = typer.Option(1, help="Smallest image batch of the PRM plan's profile."),
    opt_batch: int = typer.Option(8, help="Image batch the PRM plan is tuned for."),
    max_batch: int = typer.Option(16, help="Largest image batch of the PRM plan's profile."),
    workspace: Optional[int] = typer.Option(None, help="Workspace limit in MiB [default: 4096; 1024 on Jetson]."),
    dla_core: Optional[int] = typer.Option(None, help="Build for this DLA core, GPU fallback on (Jetson)."),
    timing_cache: Optional[Path] = typer.Option(None, help="Timing cache file [default: MODEL/timing.cache]."),
    device: str = typer.Option("cuda", help="The GPU to build for (cuda | cuda:N)."),
    student: bool = typer.Option(False, help="Build the student's plan instead (student.PRECISION.plan from "
                                             "`icn-rt export MODEL --student --precision ...`; one image a run, "
                                             "recorded in student.onnx.json); run it with `icn-rt infer MODEL "
                                             "--student --backend tensorrt[:PRECISION]`."),
):
    """TensorRT plans from the exported graphs, recorded in manifest.json with the GPU and
    TensorRT version they are valid for."""
    from icn_rt.export.build_engine import BuildSettings, build_engines, build_student_engine

    try:
        settings = BuildSettings(precision=precision, batch=(min_batch, opt_batch, max_batch),
                                 workspace_mib=workspace, dla_core=dla_core,
                                 timing_cache=str(timing_cache) if timing_cache else None)
        if student:
            plans = {"student": build_student_engine(model_dir, settings, device)["plans"][precision]}
        else:
            plans = build_engines(model_dir, settings, device)["plans"]
    except (InputError, ValueError, RuntimeError) as e:
        _fail(e)
    for name, plan in plans.items():
        out.print(f"{name}: {plan['file']} ({plan['precision']}, TensorRT {plan['tensorrt']}, {plan['gpu']['name']})")


@app.command("demo")
def demo(
    out_dir: Path = typer.Option(Path("icn-rt-demo"), "--out", help="Where to write everything."),
    device: str = typer.Option("auto", help=DEVICE_HELP, callback=_device),
):
    """The whole job on the embedded demo: a small model trained by icn-rt on the synthetic
    benchmark, run on sample images with their proposals -> instances, evaluation, pictures."""
    from icn_rt import demo as assets
    from icn_rt.demo.job import run_demo

    try:
        report = run_demo(out_dir, device)
    except InputError as e:
        _fail(e)
    summary = report.summary
    out.print(f"{_n(summary.images, 'image')} -> {_n(summary.instances, 'instance')} "
              f"(model: {report.backbone} classifier + ICN, T = {report.steps})")
    out.print(_recall_table(report.recall, "proposal upper bound (the best proposal per object)"))
    out.print(_eval_table(report.metrics))
    out.print(f"instances (COCO JSON, RLE masks): {report.results}\n"
              f"overlays and PRM heatmaps: {report.pictures}/<id>_overlay.png, <id>_prm.png\n"
              f"metrics: {report.metrics_file}\n"
              f"the model and the images with their annotations and proposals: {assets.DEMO}", soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
