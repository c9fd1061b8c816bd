"""Training the student (docs/design.md §7) on the pipeline's masks.

The labels are a COCO results file of the pipeline over the training split (``icn-rt
infer``'s output; :mod:`icn_rt.workflows.student` makes it). An instance is kept when
its class is among the image's tags (the weak labels the training split has), its
confidence is at least ``threshold`` and the share of the image it covers lies within
``[min_area, max_area]``, the three chosen together on dev by :func:`choose_threshold`:
those whose kept instances best match dev's ground truth (F1 at mask IoU 0.5: the labels
should be both right and many). The area matters on photographs, where the pipeline's
wrong instances are mostly the photograph around the objects (docs/student.md). Images
left without a kept instance are not trained on: their objects would be taught as
background.

Each sample: the image resized to the student's side and normalised as the classifier's
input, its kept masks resized (nearest) with boxes around them; horizontal flip at
random; with ``copy_paste`` p, at chance p one kept label of another training image is
pasted onto it first (that label's pixels, at their place; the image's own labels lose
what it covers, and one it covers whole is dropped). SGD with momentum 0.9, weight decay
1e-4, ``lr`` after a linear warm-up of ``warmup`` steps, ×0.1 at 2/3 and 8/9 of the
epochs (torchvision's detection recipe, in epochs), gradients clipped to norm 10 (from
scratch the first steps are wild).

Seeded (augmentation from (seed, epoch, index), order from (seed, epoch), and torch's
generator, which the RPN's and the heads' samplers draw from, reseeded each epoch from
(seed, epoch)), so a resumed run is bit for bit the run that was not interrupted: after
every epoch the model directory gets ``student.safetensors``, the config's ``student``
and ``student_training`` sections, ``student_train_state.pt`` and
``student_train_log.json``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_array
from icn_rt.data.results import load_results
from icn_rt.errors import InputError
from icn_rt.eval.instance import mask_iou
from icn_rt.models.store import STUDENT_WEIGHTS, load_classifier, read_config, save_student, settings_from
from icn_rt.models.student import StudentSettings, build_student
from icn_rt.training import distributed
from icn_rt.training.loop import EpochLog, Run, RunFiles, Schedule, begin

STATE = "student_train_state.pt"
LOG = "student_train_log.json"
FILES = RunFiles(STUDENT_WEIGHTS, STATE, LOG)


@dataclass
class StudentTrainSettings(Schedule):
    """``labels``: the pipeline's results on ``split``; ``threshold``: the confidence a
    label needs, ``min_area`` and ``max_area``: the shares of its image it may cover (all
    three chosen on dev: :func:`choose_threshold`); ``pretrained``: ``imagenet`` or a
    backbone weights file (None: from scratch); ``copy_paste``: the chance a training image
    gets another's label pasted onto it (module docstring)."""

    epochs: int = 16
    batch_size: int = 4
    lr: float = 0.01
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup: int = 100
    clip: float = 10.0
    split: str = "train"
    labels: str = ""
    threshold: float = 0.0
    min_area: float = 0.0
    max_area: float = 1.0
    copy_paste: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("student training needs at least one epoch and a batch of at least one image")
        check_area((self.min_area, self.max_area))
        if not 0 <= self.copy_paste <= 1:
            raise ValueError(f"--copy-paste is a chance in [0, 1], got {self.copy_paste:g}")


@dataclass
class StudentEpochLog(EpochLog):
    losses: dict[str, float]  # the mean of each of Mask R-CNN's losses


@dataclass
class StudentTrainSummary:
    epochs: list[StudentEpochLog] = field(default_factory=list)
    images: int = 0
    instances: int = 0
    dropped_images: int = 0


AREA_LOWS = (0.0, 0.005, 0.01, 0.02, 0.05)
AREA_HIGHS = (0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
"""The label areas (shares of the image, bounds included) :func:`choose_threshold` tries,
every low with every high."""


def check_area(area: tuple[float, float]) -> tuple[float, float]:
    """``area`` as floats, or a ValueError naming the problem."""
    lo, hi = (float(v) for v in area)
    if not 0 <= lo <= hi <= 1:
        raise ValueError(f"a label area range needs 0 <= low <= high <= 1 (shares of the image), got {lo:g}, {hi:g}")
    return lo, hi


def area_share(entry: dict) -> float:
    """The share of its image a results entry's mask covers."""
    return float(rlelib.decode(entry["segmentation"]).mean())


def kept_labels(results: dict[str, list[dict]], tags: dict[str, np.ndarray], threshold: float,
                area: tuple[float, float] = (0.0, 1.0)) -> dict[str, list[dict]]:
    """The instances of ``results`` (:func:`~icn_rt.data.results.load_results`) whose class
    is among their image's ``tags``, whose score is at least ``threshold`` and whose mask
    covers a share of the image within ``area`` (bounds included), per image; images
    without one are left out."""
    lo, hi = check_area(area)
    whole = (lo, hi) == (0.0, 1.0)
    kept = {}
    for image_id, image_tags in tags.items():
        entries = [e for e in results.get(image_id, []) if e["score"] >= threshold and e["class_id"] in image_tags
                   and (whole or lo <= area_share(e) <= hi)]
        if entries:
            kept[image_id] = entries
    return kept


@dataclass
class ThresholdChoice:
    """The confidence threshold and label area chosen on dev and why: at each candidate
    (threshold, area range), the kept instances' precision and recall of dev's ground truth
    (mask IoU ≥ 0.5) and F1."""

    threshold: float
    candidates: list[dict]
    area: tuple[float, float] = (0.0, 1.0)

    @property
    def best(self) -> dict:
        """The candidate chosen."""
        return next(c for c in self.candidates if c["threshold"] == self.threshold and tuple(c["area"]) == self.area)

    def to_json(self) -> dict:
        return {"threshold": self.threshold, "area": list(self.area),
                "criterion": "F1 at mask IoU 0.5 of the kept labels on dev; ties: the widest area, then the lowest "
                             "threshold", "candidates": self.candidates}


def choose_threshold(root: str | Path, results_path: str | Path, split: str = "dev", candidates: int = 20,
                     areas: list[tuple[float, float]] | None = None) -> ThresholdChoice:
    """The confidence threshold and label area range whose kept instances (tags, score and
    area, as :func:`kept_labels`) best match ``split``'s ground truth: the highest F1 at
    mask IoU 0.5 among 0 and the score quantiles (``candidates`` of them) and ``areas``
    (None: every :data:`AREA_LOWS` with every :data:`AREA_HIGHS`); ties go to the widest
    range, then to the lower threshold."""
    ds = open_dataset(root, split, load_images=False)
    results = load_results(results_path, ds.classes)
    scores, hits, shares, positives = _dev_hits(ds, results)
    grid = [0.0]
    if len(scores):
        grid = sorted({0.0, *np.quantile(scores, np.linspace(0, 1, candidates + 1)[1:-1]).tolist()})
    ranges = ([check_area(a) for a in areas] if areas is not None
              else [(lo, hi) for lo in AREA_LOWS for hi in AREA_HIGHS])
    table = []
    for lo, hi in ranges:
        inside = (shares >= lo) & (shares <= hi)
        for t in grid:
            kept = inside & (scores >= t)
            tp = int(hits[kept].sum())
            precision = tp / max(int(kept.sum()), 1)
            recall = tp / max(positives, 1)
            f1 = 2 * precision * recall / max(precision + recall, 1e-12)
            table.append({"threshold": float(t), "area": [lo, hi], "kept": int(kept.sum()), "precision": precision,
                          "recall": recall, "f1": f1})
    best = max(table, key=lambda row: (row["f1"], row["area"][1] - row["area"][0], -row["area"][0],
                                       -row["threshold"]))
    return ThresholdChoice(best["threshold"], table, tuple(best["area"]))


def _dev_hits(ds, results: dict[str, list[dict]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Each tagged instance's score, whether it matches a ground truth (one-to-one, best
    score first, IoU ≥ 0.5, same class; once, over all of them: a threshold only cuts,
    and an area range that drops a match leaves at most a rare duplicate of it unclaimed)
    and the share of the image it covers; and the count of ground truths."""
    scores, hits, shares, positives = [], [], [], 0
    for image_id in ds.ids:
        gt = ds.ground_truth(image_id)
        tags = set(gt.labels.tolist())
        entries = sorted((e for e in results.get(image_id, []) if e["class_id"] in tags), key=lambda e: -e["score"])
        positives += sum(not inst.difficult for inst in gt.instances)
        if not entries:
            continue
        masks = rlelib.decode_many([e["segmentation"] for e in entries], gt.size)
        gt_masks = gt.instance_masks()
        iou = mask_iou(masks, gt_masks)
        taken = np.zeros(len(gt_masks), bool)
        for i, e in enumerate(entries):
            ok = [g for g in range(len(gt_masks)) if not taken[g] and gt.instances[g].class_id == e["class_id"]
                  and iou[i, g] >= 0.5]
            best = max(ok, key=lambda g: iou[i, g]) if ok else None
            if best is not None:
                taken[best] = True
            scores.append(e["score"])
            hits.append(best is not None)
            shares.append(float(masks[i].mean()))
    return np.array(scores, np.float64), np.array(hits, bool), np.array(shares, np.float64), positives


class PseudoMasks(Dataset):
    """(image ``float32 [3, S, S]``, target) per training image with kept labels; target:
    ``boxes [N, 4]`` (x1, y1, x2, y2 at S), ``labels [N]`` (1-based: 0 is background),
    ``masks uint8 [N, S, S]``. ``settings`` None: no augmentation."""

    def __init__(self, root: str | Path, settings: StudentTrainSettings, size: int, augment: bool = True) -> None:
        ds = open_dataset(root, settings.split, load_images=False)
        results = load_results(settings.labels, ds.classes)
        self.tags = {image_id: set(ds.labels(image_id).tolist()) for image_id in ds.ids}
        self.labels = kept_labels(results, self.tags, settings.threshold, (settings.min_area, settings.max_area))
        self.ids = [image_id for image_id in ds.ids if image_id in self.labels]
        if not self.ids:
            raise InputError(Path(settings.labels), f"no instance passes the threshold {settings.threshold:g} with "
                                                    f"an area within [{settings.min_area:g}, {settings.max_area:g}] "
                                                    f"on any tagged class of {settings.split}: nothing to train on")
        self.dataset, self.size, self.settings, self.augment = ds, size, settings, augment
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def instances(self) -> int:
        return sum(len(self.labels[i]) for i in self.ids)

    def __getitem__(self, i: int):
        image_id = self.ids[i]
        image = read_image(self.dataset.image_path(image_id))
        entries = self.labels[image_id]
        masks = rlelib.decode_many([e["segmentation"] for e in entries], image.shape[:2]).astype(bool)
        classes = np.array([e["class_id"] + 1 for e in entries], np.int64)
        if self.augment and self.settings.copy_paste > 0 and len(self.ids) > 1:  # at 0 no generator is built
            paste = np.random.default_rng((self.settings.seed, self.epoch, i, 1))
            if paste.random() < self.settings.copy_paste:
                image, masks, classes = self.pasted(i, paste, image, masks, classes)
        s = self.size
        masks = np.stack([cv2.resize(m.astype(np.uint8), (s, s), interpolation=cv2.INTER_NEAREST) for m in masks])
        x = preprocess_array(image, s)
        flip = np.random.default_rng((self.settings.seed, self.epoch, i)).random() < 0.5
        if self.augment and self.settings.flip and flip:
            x, masks = np.ascontiguousarray(x[:, :, ::-1]), np.ascontiguousarray(masks[:, :, ::-1])
        present = masks.reshape(len(masks), -1).any(1)  # a sliver may vanish at the student's side
        masks, classes = masks[present], classes[present]
        return torch.from_numpy(x), {"boxes": torch.from_numpy(boxes_of(masks)), "labels": torch.from_numpy(classes),
                                     "masks": torch.from_numpy(masks)}

    def pasted(self, i: int, rng: np.random.Generator, image: np.ndarray, masks: np.ndarray, classes: np.ndarray):
        """Image ``i`` with one label (drawn by ``rng``) of another training image of its size
        pasted onto it, its labels less what the paste covers, the pasted one last."""
        j = int(rng.integers(len(self.ids) - 1))
        other = self.ids[j + (j >= i)]
        entry = self.labels[other][int(rng.integers(len(self.labels[other])))]
        source = read_image(self.dataset.image_path(other))
        if source.shape != image.shape:
            return image, masks, classes
        pasted = rlelib.decode(entry["segmentation"]).astype(bool)
        image = np.where(pasted[..., None], source, image)
        masks = masks & ~pasted
        left = masks.reshape(len(masks), -1).any(1)
        return (image, np.concatenate([masks[left], pasted[None]]),
                np.concatenate([classes[left], [entry["class_id"] + 1]]))


def boxes_of(masks: np.ndarray) -> np.ndarray:
    """``masks [N, H, W]`` (none empty) -> ``float32 [N, 4]`` x1, y1, x2, y2 around each (pixel edges)."""
    out = np.zeros((len(masks), 4), np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        out[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return out


def _collate(batch):
    return [x for x, _ in batch], [t for _, t in batch]


def input_size_for(root: str | Path, split: str = "train") -> int:
    """The student's side for a dataset: its images' median shorter side, rounded up to a
    multiple of 32 (FPN's coarsest stride): 128 for the synthetic sets, 384 for VOC —
    not torchvision's 800 pixels, which would blow 128-pixel images up 6×."""
    from icn_rt.data.images import image_size

    ds = open_dataset(root, split, load_images=False)
    sides = [min(size) for size in (image_size(ds.image_path(i)) for i in ds.ids) if size is not None]
    if not sides:
        raise InputError(ds.split_file, "no readable image sizes to set the student's input size from")
    return int(-(-np.median(sides) // 32) * 32)


def learning_rate(settings: StudentTrainSettings, epoch: int, step: int) -> float:
    """``lr`` at global ``step`` of ``epoch``: linear warm-up from lr/1000 over ``warmup``
    steps, ×0.1 from 2/3 of the epochs and again from 8/9."""
    decay = 0.1 ** sum(epoch >= math.ceil(settings.epochs * f) for f in (2 / 3, 8 / 9))
    warm = min(1.0, (step + 1) / settings.warmup) if settings.warmup > 0 else 1.0
    return settings.lr * decay * (0.001 + 0.999 * warm)


def train_student(root: str | Path, model_dir: str | Path, settings: StudentTrainSettings,
                  student_settings: StudentSettings, resume: bool = False, device: str = "cpu",
                  log: Callable[[str], None] = print, progress: bool = True) -> StudentTrainSummary:
    """Train the student of ``model_dir`` on the labels in ``settings.labels`` (images from
    ``root``); see the module's docstring. Under ``torchrun``, each process is a rank of
    DDP (:mod:`~icn_rt.training.distributed`); rank 0 logs and writes."""
    root, model_dir = Path(root), Path(model_dir)
    ranks, device, log, progress, resuming = begin(model_dir, FILES, resume, device, log, progress)
    config = read_config(model_dir)
    if resuming:
        student_settings = settings_from(config, "student", StudentSettings, model_dir)
        settings = replace(settings_from(config, "student_training", StudentTrainSettings, model_dir),
                           epochs=settings.epochs)
    torch.manual_seed(settings.seed)
    start = None if resuming else settings.pretrained
    if student_settings.backbone == "classifier-fpn":
        if settings.pretrained:
            raise ValueError("a classifier-fpn student starts from the model's classifier; --pretrained is for the "
                             "torchvision backbones")
        student_settings = replace(student_settings, trunk=config["classifier"]["backbone"])
        start = None if resuming else load_classifier(model_dir)[0].backbone.state_dict()
    else:
        student_settings = replace(student_settings, frozen=bool(settings.pretrained))
    student = build_student(len(config["classes"]), student_settings, start)
    student.to(device)
    params = [p for p in student.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    run = Run(model_dir, FILES, student, optimiser, ranks, device,
              save=lambda: save_student(model_dir, student, student_settings, {"student_training": settings}))
    if resuming:
        run.resume(StudentEpochLog, log, f"the student of {model_dir}")
    data = PseudoMasks(root, settings, student_settings.input_size)
    summary = StudentTrainSummary(images=len(data), instances=data.instances,
                                  dropped_images=len(data.tags) - len(data))
    steps_per_epoch = -(-len(data) // settings.batch_size)

    def step(trainer, batch, epoch: int, b: int):
        x, targets = batch
        x = [t.to(device) for t in x]
        targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
        return trainer(x, targets), len(x)

    def report(epoch):
        entry = StudentEpochLog(epoch.number, epoch.loss, epoch.lr, epoch.seconds, losses=epoch.parts)
        return entry, (f"student epoch {entry.epoch}/{settings.epochs}  loss {entry.loss:.4f}  lr {entry.lr:.0e}  "
                       f"({entry.seconds:.0f} s)")

    run.fit(data, step, settings, lr=lambda epoch, b: learning_rate(settings, epoch, epoch * steps_per_epoch + b),
            title="student epoch", collate=_collate, unused=True, clip=settings.clip, progress=progress, report=report,
            log=log)
    summary.epochs = run.entries
    distributed.leave(ranks)
    return summary
