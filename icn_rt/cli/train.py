"""``icn-rt train classifier|calibrate-peaks|pseudo-labels|icn|student``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from icn_rt.cli.common import err, fail, launch, out, pct, plural, rank_zero, renamed, skipped, train_app
from icn_rt.cli.options import (Actors, Backbone, BatchSize, CpusPerActor, Device, Epochs, GpusPerActor, InputSize,
                                LabelArea, LabelK, Labels, Lr, LrStep, ModelOption, Nproc, Pretrained, Proposals, Quiet,
                                Ray, Rerank, Resume, Root, Seed, Split, Supervision, SyncBn, Workers, area_range)
from icn_rt.errors import InputError


@train_app.command("classifier")
def train_classifier_cmd(
    root: Root,
    model_dir: ModelOption = None,
    old_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Deprecated: --model."),
    backbone: Backbone = "resnet50",
    input_size: InputSize = 448,
    sub_pixel: int = typer.Option(8, help="Upsampling of the class maps before peaks are found (1 = off)."),
    epochs: Epochs = 20,
    lr: Lr = 1e-4,
    lr_step: LrStep = 10,
    batch_size: BatchSize = 16,
    split: Split = "train",
    val_split: str = typer.Option("val", help="Split for the classification mAP printed each epoch."),
    pretrained: Pretrained = None,
    seed: Seed = 0,
    workers: Workers = None,
    per_class_peaks: bool = typer.Option(True, help="Calibrate one peak threshold per class at the end "
                                                    "(--no-per-class-peaks: one for all)."),
    resume: Resume = False,
    device: Device = "auto",
    nproc: Nproc = 1,
    sync_bn: SyncBn = False,
    quiet: Quiet = False,
):
    """Train the peak-stimulation classifier into a new model directory (--model); prints
    loss and val classification mAP per epoch. Adam; the learning rate x0.1 every --lr-step
    epochs (the paper: 20 epochs at 1e-4)."""
    from icn_rt.models.classifier import ClassifierSettings
    from icn_rt.training.classifier import TrainSettings, train_classifier

    model_dir = _model(renamed(old_out, "--out", model_dir, "--model"))
    launch(nproc, batch_size)
    try:
        summary = train_classifier(
            root, model_dir,
            TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step, seed=seed, workers=workers or 0,
                          split=split, val_split=val_split, pretrained=pretrained, per_class_peaks=per_class_peaks,
                          sync_bn=sync_bn),
            ClassifierSettings(backbone=backbone, input_size=input_size, sub_pixel=sub_pixel),
            resume=resume, device=device, log=out.print, progress=not quiet)
    except (InputError, ValueError) as e:
        fail(e)
    if not rank_zero():
        return
    if summary.skipped:
        err.print(f"[yellow]skipped {len(summary.skipped)} unreadable images (see {model_dir / 'train_errors.txt'})[/yellow]")
    final = summary.epochs[-1] if summary.epochs else None
    out.print(f"model -> {model_dir}" + (f"  ({val_split} classification mAP {pct(final.val_map)})" if final else "")
              + f"; peak threshold calibrated to {_thresholds(summary.peaks.peak_threshold)}")
    weak = summary.weak_classes()
    if weak:
        err.print(f"[yellow]weak classes ({val_split} classification AP): "
                  + ", ".join(f"{name} {pct(ap)}" for name, ap in weak)
                  + ". Their maps barely respond, so they get few peaks and instances: train longer before "
                    "the learning rate drops (--epochs, --lr-step; docs/training.md).[/yellow]", soft_wrap=True)


def _model(model_dir: Path | None) -> Path:
    """The --model a training command needs."""
    if model_dir is None:
        fail(ValueError("name the model directory: --model MODEL"))
    return model_dir


def _thresholds(value) -> str:
    return ", ".join(f"{v:g}" for v in value) if isinstance(value, list) else f"{value:g}"


@train_app.command("calibrate-peaks")
def calibrate_peaks_cmd(
    root: Root,
    model_dir: ModelOption = None,
    split: Split = "train",
    fraction: float = typer.Option(0.5, help="Threshold = this × the median class-map maximum of labelled images."),
    per_class: bool = typer.Option(True, help="One threshold per class (--no-per-class: one for all, as before)."),
    device: Device = "auto",
):
    """Calibrate a trained model's peak thresholds again (as training does at its end)."""
    from icn_rt.training.classifier import recalibrate_peaks

    model_dir = _model(model_dir)
    try:
        peaks = recalibrate_peaks(root, model_dir, split, fraction, per_class, device=device)
    except (InputError, ValueError) as e:
        fail(e)
    out.print(f"peak threshold of {model_dir} calibrated to {_thresholds(peaks.peak_threshold)}", soft_wrap=True)


@train_app.command("pseudo-labels")
def train_pseudo_labels_cmd(
    root: Root,
    model_dir: ModelOption = None,
    supervision: Supervision = "proposals",
    split: Split = "train",
    k: LabelK = 3,
    rerank: Rerank = None,
    labels: Labels = None,
    old_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help="Deprecated: --labels."),
    proposals_dir: Proposals = None,
    batch_size: BatchSize = 8,
    device: Device = "auto",
    ray: Ray = None,
    actors: Actors = 1,
    gpus_per_actor: GpusPerActor = 0.0,
    cpus_per_actor: CpusPerActor = 1.0,
    quiet: Quiet = False,
):
    """Label every labelled-class peak of a split for ICN training (reruns resume)."""
    from icn_rt.training.pseudo_labels import LabelSettings, label_model

    model_dir = _model(model_dir)
    labels = renamed(old_out, "--out", labels, "--labels")
    try:
        settings = LabelSettings(supervision=supervision, split=split, k=k, batch_size=batch_size, rerank=rerank)
        if ray is not None:
            from icn_rt.runtime.ray_infer import RaySettings
            from icn_rt.workflows.labels import label_on_ray

            _, summary = label_on_ray(root, model_dir, settings,
                                      RaySettings(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus=0.0),
                                      labels, proposals_dir, progress=not quiet, log=out.print)
        else:
            _, summary = label_model(root, model_dir, settings, labels, proposals_dir, device, progress=not quiet,
                                     log=out.print)
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    skipped(summary)


@train_app.command("icn")
def train_icn_cmd(
    root: Root,
    model_dir: ModelOption = None,
    encoder: str = typer.Option("vgg16", help="vgg16 | small | classifier (the classifier's backbone and weights)."),
    width: int = typer.Option(64, help="Channels of the propagation blocks and mapping head."),
    propagation: bool = typer.Option(True, help="CFM + DFM paths (--no-propagation: the ablation)."),
    prm_input: bool = typer.Option(True, help="PRM as a fourth input channel (--no-prm-input: the ablation)."),
    steps: int = typer.Option(3, help="Enhancement steps T at inference."),
    supervision: Supervision = "proposals",
    split: Split = "train",
    labels: Labels = None,
    k: LabelK = 3,
    rerank: Rerank = None,
    proposals_dir: Proposals = None,
    epochs: Epochs = 120,
    lr: Lr = 1e-3,
    lr_step: LrStep = 20,
    batch_size: BatchSize = 8,
    crop: float = typer.Option(0.75, help="Smallest random crop side, as a fraction of the input."),
    self_feed: float = typer.Option(0.5, help="Share of samples whose PRM input is the ICN's own output on it, as "
                                    "steps 2..T see it at inference (not in the paper; 0: off, as the paper)."),
    pretrained: Pretrained = None,
    seed: Seed = 0,
    workers: Workers = None,
    resume: Resume = False,
    device: Device = "auto",
    nproc: Nproc = 1,
    sync_bn: SyncBn = False,
    ray: Ray = None,
    actors: Actors = 1,
    gpus_per_actor: GpusPerActor = 0.0,
    cpus_per_actor: CpusPerActor = 1.0,
    quiet: Quiet = False,
):
    """Train the ICN of a model with a trained classifier on pseudo labels (made first when
    missing; with --ray, on the cluster, before training starts); writes icn.safetensors
    into the model. Adam; the learning rate halves every --lr-step epochs; --batch-size
    counts peaks (the paper: 120 epochs at 1e-3). Labels: the pseudo labels' options are
    `train pseudo-labels`'s; the --pretrained start is a vgg16_bn's, for the vgg16 encoder."""
    from icn_rt.models.icn import ICNSettings
    from icn_rt.training.icn import ICNTrainSettings, label_and_train
    from icn_rt.training.pseudo_labels import LabelSettings

    model_dir = _model(model_dir)
    if ray is not None:
        from icn_rt.runtime.ray_infer import RaySettings
        from icn_rt.workflows.labels import labels_first_on_ray

        try:
            cluster = RaySettings(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus=0.0)
            wanted = LabelSettings(supervision=supervision, split=split, k=k, rerank=rerank)
            labels_first_on_ray(root, model_dir, wanted, cluster, labels, proposals_dir, log=out.print)
        except (InputError, ValueError, RuntimeError) as e:
            fail(e)
    launch(nproc, batch_size)
    try:
        icn_settings = ICNSettings(encoder=encoder, width=width, propagation=propagation, prm_input=prm_input,
                                   steps=steps)
        settings = ICNTrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, lr_step=lr_step, crop=crop, seed=seed,
                                    workers=workers or 0, pretrained=pretrained, self_feed=self_feed, sync_bn=sync_bn)
        labelled, summary = label_and_train(root, model_dir, settings, icn_settings,
                                            LabelSettings(supervision=supervision, split=split, k=k, rerank=rerank),
                                            labels, proposals_dir, resume, device, log=out.print, progress=not quiet)
    except (InputError, ValueError) as e:
        fail(e)
    if not rank_zero():
        return
    skipped(labelled)
    final = summary.epochs[-1] if summary.epochs else None
    out.print(f"ICN -> {model_dir} ({summary.samples} peaks" + (f", final loss {final.loss:.4f})" if final else ")"))


@train_app.command("student")
def train_student_cmd(
    root: Root,
    model_dir: ModelOption = None,
    backbone: Backbone = "classifier-fpn",
    head: str = typer.Option("light", help="light (512-feature box head, two 128-channel mask convolutions) | "
                                           "tiny (256 features, one 64-channel convolution: for CPUs) | "
                                           "standard (torchvision's)."),
    input_size: InputSize = 0,
    refine: str = typer.Option("auto", help="auto: none or superpixels, the better on --dev-split after training "
                                            "(proposals scored beside them) | superpixels: masks snapped to the "
                                            "image's superpixels | proposals: to the proposal each overlaps most "
                                            "(infer then needs proposals) | none (docs/student.md)."),
    threshold: Optional[float] = typer.Option(None, help="Confidence a pipeline instance needs to become a label "
                                                         "[default: chosen on --dev-split, best F1 at mask IoU 0.5]."),
    label_area: LabelArea = None,
    split: Split = "train",
    dev_split: str = typer.Option("dev", help="Split the threshold and the label area are chosen on."),
    proposals_dir: Proposals = None,
    from_student: Optional[Path] = typer.Option(None, help="Self-training: that model directory's student labels "
                                                           "the splits instead of the pipeline."),
    epochs: Epochs = 16,
    batch_size: BatchSize = 4,
    lr: Lr = 0.01,
    copy_paste: float = typer.Option(0.0, help="Chance a training image gets another's label pasted onto it "
                                               "(off by default: docs/student.md)."),
    pretrained: Pretrained = None,
    seed: Seed = 0,
    workers: Workers = None,
    resume: Resume = False,
    device: Device = "auto",
    ray: Ray = None,
    actors: Actors = 1,
    gpus_per_actor: GpusPerActor = 0.0,
    cpus_per_actor: CpusPerActor = 1.0,
    nproc: Nproc = 1,
    sync_bn: SyncBn = False,
    quiet: Quiet = False,
):
    """Distil a model's pipeline into a proposal-free student (torchvision Mask R-CNN): the
    pipeline labels the split (resumable infer job; with --ray on the cluster; under
    --nproc, rank 0 labels first), confident tagged instances are kept, the student trains
    on them; writes student.safetensors into the model. SGD with warm-up; the learning rate
    x0.1 at 2/3 and 8/9 of the epochs; --pretrained starts a mobilenet-v3-fpn or
    resnet50-fpn backbone."""
    from icn_rt.models.student import StudentSettings
    from icn_rt.training.student import StudentTrainSettings, input_size_for
    from icn_rt.workflows.student import refine_mode, teach_and_train

    model_dir = _model(model_dir)
    launch(nproc, batch_size)
    try:
        settings = StudentTrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, workers=workers or 0,
                                        split=split, pretrained=pretrained, sync_bn=sync_bn, copy_paste=copy_paste)
        refine, on_dev = refine_mode(root, refine, dev_split, log=err.print)
        student = StudentSettings(backbone=backbone, head=head, input_size=input_size or input_size_for(root, split),
                                  refine=refine)
        cluster = None
        if ray is not None:
            from icn_rt.runtime.ray_infer import RaySettings

            cluster = RaySettings(ray, actors, gpus_per_actor, cpus_per_actor)
        run = teach_and_train(root, model_dir, settings, student, threshold, dev_split, proposals_dir, resume, device,
                              log=out.print, progress=not quiet, teacher_student=from_student, ray=cluster,
                              refine_on_dev=on_dev, area=area_range(label_area))
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    if not rank_zero():
        return
    for split_name, summary in run.labelled.items():
        if summary.failed:
            err.print(f"[yellow]{plural(len(summary.failed), 'image')} of {split_name} failed in the pipeline (reasons in "
                      f"{model_dir}/student-labels/{split_name}.json.errors.txt)[/yellow]", highlight=False)
    final = run.trained.epochs[-1] if run.trained.epochs else None
    out.print(f"student -> {model_dir} ({run.trained.images} images, {run.trained.instances} labels at confidence "
              f">= {run.threshold:.3g}; {run.trained.dropped_images} images without one left out"
              + (f"; final loss {final.loss:.4f})" if final else ")"), soft_wrap=True)
