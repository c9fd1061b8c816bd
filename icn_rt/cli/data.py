"""``icn-rt data synth|convert``, ``icn-rt proposals``, ``icn-rt eval``: datasets in, scores out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from icn_rt.cli.common import (app, data_app, err, eval_table, fail, intervals_table, out, pct, plural, recall_table,
                               renamed)
from icn_rt.cli.options import ROOT_HELP, Json, ModelOption, Out, Quiet, Root, Seed, Split, Workers
from icn_rt.errors import InputError


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
                                               "repeat for more [default: the development set, docs/data.md]."),
    seed: Seed = 0,
    layout: str = typer.Option("voc", help="voc | coco | tags: the layout to write (same images and ids)."),
):
    """Write the synthetic benchmark (objects recognisable by a small part)."""
    from icn_rt.data.synth import SynthConfig, generate

    try:
        config = SynthConfig(size=size, train=train, val=val, dev=dev, classes=classes, max_instances=max_instances,
                             seed=seed, body_evidence=body_evidence, distractor_bodies=distractor_bodies,
                             background=background, photos=tuple(photos or ()))
    except ValueError as e:
        fail(e)
    if layout not in ("voc", "coco", "tags"):
        fail(ValueError(f"--layout must be voc, coco or tags, got '{layout}'"))
    try:
        splits = generate(out_dir, config, layout=layout)
    except InputError as e:
        fail(e)
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
    model_dir: ModelOption = None,
    min_score: float = typer.Option(0.0, help="coco-dataset: keep instances scoring at least this."),
    quiet: Quiet = False,
):
    """Convert a dataset between layouts, or pseudo labels into a COCO dataset (--to
    coco-dataset: --model is the model that made the results; its classes are the
    categories)."""
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
            out.print(f"wrote {plural(counts['images'], 'image')} with {plural(counts['annotations'], 'annotation')} "
                      f"to {out_dir}")
            return
        if to not in TARGETS:
            raise ValueError(f"--to must be one of {', '.join(TARGETS)} or coco-dataset, got '{to}'")
        counts = convert_dataset(source, out_dir, to, splits, progress=not quiet)
    except (InputError, ValueError) as e:
        fail(e)
    out.print(f"wrote {', '.join(f'{split} ({n})' for split, n in counts.items())} to {out_dir} ({to} layout)")


@app.command("proposals")
def proposals(
    root: Root,
    split: Split = "val",
    out_dir: Out = None,
    workers: Workers = None,
    old_jobs: Optional[int] = typer.Option(None, "--jobs", hidden=True, help="Deprecated: --workers."),
    max_proposals: int = typer.Option(2000, help="Most proposals kept per image."),
    mat_version: str = typer.Option("5", help="MATLAB file version to write: 5 or 7.3."),
    recall_only: bool = typer.Option(False, "--recall-only", help="Only report the recall of the proposals in --out (e.g. MCG's)."),
    oracle: Optional[Path] = typer.Option(None, help="Write the best proposal per GT instance as a results JSON (the upper bound for `icn-rt eval`)."),
    json_out: Json = None,
):
    """Generate selective-search proposals (MCG .mat layout; --workers processes, default one
    per core) and report their recall."""
    from icn_rt.data.datasets import detect_layout
    from icn_rt.data.make_proposals import make_proposals
    from icn_rt.data.results import write_results
    from icn_rt.data.selective_search import SelectiveSearchConfig
    from icn_rt.eval.proposal_recall import proposal_recall

    workers = renamed(old_jobs, "--jobs", workers, "--workers")
    if mat_version not in ("5", "7.3"):
        fail(ValueError(f"--mat-version must be 5 or 7.3, got {mat_version}"))
    out_dir = out_dir or root / "Proposals"
    try:
        if not recall_only:
            summary = make_proposals(root, out_dir, split, SelectiveSearchConfig(max_proposals=max_proposals),
                                     None if workers is None else max(workers, 1), mat_version)
            out.print(f"proposals: {summary.written} written, {summary.skipped} already there, "
                      f"{len(summary.failed)} failed -> {out_dir}")
            for image_id, reason in summary.failed:
                err.print(f"[yellow]failed:[/yellow] {reason}", highlight=False)
        if detect_layout(root) == "tags" and not (recall_only or oracle or json_out):
            err.print("a tags layout has no masks: no recall report", highlight=False)
            return
        report = proposal_recall(root, out_dir, split)
    except InputError as e:
        fail(e)
    out.print(recall_table(report, f"proposal upper bound ({split})"))
    for reason in report.missing:
        err.print(f"[yellow]no usable proposals (counted as IoU 0):[/yellow] {reason}", highlight=False, soft_wrap=True)
    if oracle:
        write_results(oracle, report.oracle)
        out.print(f"oracle results -> {oracle}")
    if json_out:
        json_out.write_text(json.dumps(report.to_json(), indent=2) + "\n")
    if not recall_only and summary.failed:
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    root: Root,
    results: Path = typer.Argument(..., help="COCO-style instance results JSON (RLE masks)."),
    split: Split = "val",
    json_out: Json = None,
    count_difficult: bool = typer.Option(False, help="Count 'difficult' objects as positives (chainercv's behaviour)."),
    bootstrap: int = typer.Option(0, help="Bootstrap draws of the images for 95% intervals (e.g. 1000; 0: none)."),
    seed: Seed = 0,
    against: Optional[Path] = typer.Option(None, help="Another results JSON on the same images: paired comparison "
                                                      "(needs --bootstrap)."),
):
    """Score instance results against ROOT's masks (VOC or COCO layout): mAP^r at IoU
    0.25/0.5/0.75, ABO, semantic mIoU, and COCO's segm AP/AP50/AP75/APs/APm/APl
    (pycocotools); with --bootstrap, the first five's 95% intervals; with --against, the
    interval of each difference."""
    from icn_rt.eval.report import evaluate as run_eval
    from icn_rt.eval.report import write_report

    try:
        report = run_eval(root, results, split, count_difficult, samples=bootstrap, seed=seed, against=against)
    except (InputError, ValueError) as e:
        fail(e)
    out.print(eval_table(report))
    out.print("COCO segm (pycocotools): " + "  ".join(f"{k} {pct(v / 100)}" for k, v in report.coco.items()),
              soft_wrap=True)
    if report.intervals is not None:
        out.print(intervals_table(report))
    if report.ignored_images:
        err.print(f"[yellow]ignored results for {len(report.ignored_images)} images outside split '{split}'[/yellow]")
    if json_out:
        write_report(report, json_out)
        out.print(f"metrics -> {json_out}")
