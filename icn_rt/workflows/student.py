"""``icn-rt train student``: the pipeline labels, the student learns (docs/design.md §7).

1. The pipeline of the model directory runs over the training split and over dev through
   the streaming job of ``icn-rt infer`` (:func:`~icn_rt.runtime.infer.infer`), into
   ``MODEL/student-labels/<split>.json``: resumable, failures recorded, a finished split
   not redone (the job's fingerprint: same weights, settings and proposals). For a
   self-training round the labeller is another model directory's student instead
   (``teacher_student``), and the new student learns from its masks.
2. The labels' confidence threshold and area range are chosen on dev together
   (:func:`~icn_rt.training.student.choose_threshold`), unless given (a threshold given
   alone keeps every area; an area given alone has the threshold chosen for it).
3. The student trains on the training split's kept labels
   (:func:`~icn_rt.training.student.train_student`), into the model directory.
4. With ``refine_on_dev``, how its masks are refined (``student.refine``) is chosen on dev
   too (:func:`choose_refine`): the trained student runs over dev once per mode and the
   proposal-free mode of the highest mAP^r@0.5 is written into the config (snapping to
   proposals is scored too, where the dataset has them, and only reported: a student
   that needs proposals is a choice its user makes).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from icn_rt.data.datasets import open_dataset
from icn_rt.models.student import REFINES, StudentSettings  # the modes, cheapest first
from icn_rt.runtime.infer import InferSettings, PredictorSpec, infer
from icn_rt.runtime.ray_infer import RaySettings
from icn_rt.runtime.result_log import InferSummary
from icn_rt.training import distributed
from icn_rt.training.student import (StudentTrainSettings, StudentTrainSummary, ThresholdChoice, choose_threshold,
                                     train_student)

LABELS = "student-labels"
THRESHOLD_REPORT = "student_threshold.json"
REFINE_REPORT = "student_refine.json"
PROPOSAL_FREE = ("none", "superpixels")
"""The modes ``refine_on_dev`` chooses among (the student stays free of proposals); it
scores every one of :data:`~icn_rt.models.student.REFINES`, cheapest first."""


@dataclass
class StudentRun:
    """What ``icn-rt train student`` did: the labelling jobs' summaries per split, the
    threshold and label area (``choice``: None when given), the training."""

    labelled: dict[str, InferSummary]
    threshold: float
    choice: ThresholdChoice | None
    trained: StudentTrainSummary
    refine: dict | None = None
    """With ``refine_on_dev``: :func:`choose_refine`'s report."""


def label_split(root: str | Path, model_dir: str | Path, split: str, proposals_dir: Path | None, device: str,
                batch_size: int = 8, workers: int = 2, progress: bool = True,
                teacher_student: str | Path | None = None, ray: RaySettings | None = None) -> tuple[Path, InferSummary]:
    """The pipeline's results on ``split`` (or, with ``teacher_student``, that model
    directory's student's) in ``MODEL/student-labels/<split>.json`` (the infer job, resumed
    where an earlier run stopped; on a Ray cluster with ``ray``). The pipeline ranks without
    a student's agreement: a student already in the directory is the one being replaced."""
    root, model_dir = Path(root), Path(model_dir)
    ds = open_dataset(root, split, load_images=False)
    out = model_dir / LABELS / f"{split}.json"
    spec = PredictorSpec(str(teacher_student if teacher_student is not None else model_dir),
                         student=teacher_student is not None, device=device, agreement=False)
    settings = InferSettings(proposals=proposals_dir, batch_size=batch_size, workers=workers, resume=True,
                             progress=progress)
    images = [ds.image_path(i) for i in ds.ids]
    if ray is not None:
        from icn_rt.runtime.ray_infer import infer_ray

        summary = infer_ray(spec, images, out, settings, ray)
    else:
        summary = infer(spec.build(), images, out, settings)
    if summary.interrupted:
        raise KeyboardInterrupt
    return out, summary


def teach_and_train(root: str | Path, model_dir: str | Path, settings: StudentTrainSettings,
                    student: StudentSettings | None, threshold: float | None = None, dev_split: str = "dev",
                    proposals_dir: str | Path | None = None, resume: bool = False, device: str = "cpu",
                    log: Callable[[str], None] = print, progress: bool = True,
                    teacher_student: str | Path | None = None, ray: RaySettings | None = None,
                    refine_on_dev: bool = False, area: tuple[float, float] | None = None) -> StudentRun:
    """See the module's docstring. ``student`` None: the settings' defaults with the input
    side set for the data (:func:`~icn_rt.training.student.input_size_for`); ``area``:
    the shares of the image a label may cover (None: chosen on dev with the threshold, or
    all of them when the threshold is given);
    ``teacher_student``: label with that model directory's student (self-training);
    ``ray``: label on a Ray cluster; ``refine_on_dev``: choose ``student.refine`` on
    ``dev_split`` after training (:func:`choose_refine`)."""
    from icn_rt.training.student import input_size_for

    root, model_dir = Path(root), Path(model_dir)
    proposals = Path(proposals_dir) if proposals_dir is not None else root / "Proposals"
    labelled = {}
    choice = None
    ranks, device = distributed.join(device)
    if not ranks.main:  # under torchrun: rank 0 labels and chooses, the others then read what it wrote
        ranks.barrier()
        labels = model_dir / LABELS / f"{settings.split}.json"
        if threshold is None:
            chosen = json.loads((model_dir / THRESHOLD_REPORT).read_text())
            threshold, area = chosen["threshold"], tuple(chosen.get("area", (0.0, 1.0)))
        lo, hi = area or (0.0, 1.0)
        trained = train_student(root, model_dir, replace(settings, labels=str(labels), threshold=threshold,
                                                         min_area=lo, max_area=hi),
                                student or StudentSettings(input_size=input_size_for(root, settings.split)),
                                resume=resume, device=device, log=log, progress=False)
        return StudentRun(labelled, threshold, choice, trained)
    labels, labelled[settings.split] = label_split(root, model_dir, settings.split, proposals, device,
                                                   progress=progress, teacher_student=teacher_student, ray=ray)
    log(f"labels of {settings.split}: {labelled[settings.split].instances} instances -> {labels}")
    if threshold is None:
        dev_labels, labelled[dev_split] = label_split(root, model_dir, dev_split, proposals, device, progress=progress,
                                                      teacher_student=teacher_student, ray=ray)
        choice = choose_threshold(root, dev_labels, dev_split, areas=None if area is None else [area])
        threshold, area = choice.threshold, choice.area
        (model_dir / THRESHOLD_REPORT).write_text(json.dumps(choice.to_json(), indent=1))
        log(f"label threshold {threshold:.3g} and area [{area[0]:g}, {area[1]:g}] of the image chosen on {dev_split} "
            f"(precision {choice.best['precision']:.2f}, recall {choice.best['recall']:.2f} at mask IoU 0.5)")
    ranks.barrier()
    if student is None:
        student = StudentSettings(input_size=input_size_for(root, settings.split))
    lo, hi = area or (0.0, 1.0)
    trained = train_student(root, model_dir, replace(settings, labels=str(labels), threshold=threshold, min_area=lo,
                                                     max_area=hi), student,
                            resume=resume, device=device, log=log, progress=progress)
    refined = None
    if refine_on_dev:
        refined = choose_refine(root, model_dir, dev_split, proposals, device, progress)
        log(f"mask refinement {refined['refine']!r} chosen on {dev_split} (mAP^r@0.5 "
            + ", ".join(f"{m} {v:.1f}" for m, v in refined["mAP@0.5"].items()) + ")"
            + ("; snapped to proposals scores higher: `--refine proposals` (infer then needs proposals)"
               if refined["best"] == "proposals" else ""))
    return StudentRun(labelled, threshold, choice, trained, refined)


def refine_mode(root: str | Path, refine: str, dev_split: str = "dev",
                log: Callable[[str], None] = print) -> tuple[str, bool]:
    """``train student --refine``: the mode the student is saved with and whether
    :func:`choose_refine` then chooses it on ``dev_split``. ``auto``: chosen where that split
    exists, else superpixels (said through ``log``); a mode of
    :data:`~icn_rt.models.student.REFINES`: that mode."""
    from icn_rt.data.datasets import dataset_splits

    if refine not in ("auto", *REFINES):
        raise ValueError(f"--refine: choose auto, {', '.join(REFINES)}; not {refine!r}")
    if refine != "auto":
        return refine, False
    if dev_split in dataset_splits(root):
        return "superpixels", True
    log(f"{root} has no {dev_split} split to choose the masks' refinement on: superpixels")
    return "superpixels", False


def best_refine(scores: dict[str, float], among: tuple[str, ...] = REFINES) -> str:
    """The mode of ``among`` with the highest score; of equal ones the cheaper (earlier in
    :data:`REFINES`)."""
    return max((m for m in scores if m in among), key=lambda m: (scores[m], -REFINES.index(m)))


def choose_refine(root: str | Path, model_dir: str | Path, split: str = "dev", proposals_dir: Path | None = None,
                  device: str = "cpu", progress: bool = True) -> dict:
    """Runs the model directory's student over ``split`` once per :data:`REFINES` mode
    (``proposals`` only where ``proposals_dir`` exists: the dataset's proposals, as the
    pipeline reads them; skipped, with the reason, where an image's are missing), scores
    each (mAP^r@0.5 against the split's ground truth), writes the best
    :data:`PROPOSAL_FREE` mode into the config (``student.refine``; ties to the cheaper
    mode) and the report (every mode's score, the one chosen, the best of all) to
    ``MODEL/student_refine.json``; returns the report."""
    from icn_rt.eval.report import score
    from icn_rt.models.store import read_config, write_config
    from icn_rt.runtime.student import StudentPredictor

    root, model_dir = Path(root), Path(model_dir)
    ds = open_dataset(root, split, load_images=False)
    images = [ds.image_path(i) for i in ds.ids]
    predictor = StudentPredictor.from_dir(model_dir, device)
    base = predictor.settings
    modes = [m for m in REFINES if m != "proposals" or (proposals_dir is not None and Path(proposals_dir).is_dir())]
    scores, skipped = {}, {m: "no proposals folder" for m in REFINES if m not in modes}
    for mode in modes:
        predictor.settings = replace(base, refine=mode)
        out = model_dir / LABELS / f"{split}.refine-{mode}.json"
        done = infer(predictor, images, out, InferSettings(proposals=Path(proposals_dir) if mode == "proposals"
                                                           else None, overwrite=True, progress=progress))
        if done.failed and mode == "proposals":  # images without proposals: scored, they would count as empty
            skipped[mode] = done.failures()
            continue
        scores[mode] = score(root, out, split, progress=False).metrics()["mAP@0.5"]
    chosen = best_refine(scores, PROPOSAL_FREE)
    config = read_config(model_dir)
    config["student"]["refine"] = chosen
    write_config(model_dir, config)
    report = {"refine": chosen, "best": best_refine(scores), "split": split,
              "criterion": "mAP^r@0.5 of the student's masks on the split; chosen among " + ", ".join(PROPOSAL_FREE),
              "mAP@0.5": scores, "skipped": skipped}
    (model_dir / REFINE_REPORT).write_text(json.dumps(report, indent=1))
    return report
