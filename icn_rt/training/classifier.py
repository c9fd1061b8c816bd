"""Training the peak-stimulation classifier on image-level labels (docs/design.md §1 step 1).

Multi-label soft-margin loss; Adam, lr 1e-4, ×0.1 after epoch 10, 20 epochs (the
paper's schedule, all settings). Augmentation: horizontal flip and a random shift of up
to ``shift`` × the input size (edge-padded) — no scale crops and no colour jitter,
which could cut an object out of an image still labelled with it or change what a
class looks like.

Seeded: the model's initialisation, the sample order and every augmentation follow
from ``seed`` (augmentations from (seed, epoch, index), so the number of loader workers
does not change them). Resumable: after every epoch the model directory gets the
weights, ``config.json`` and ``train_state.pt`` (optimiser, epoch); ``resume=True``
continues from there with the stored settings (only ``epochs`` may be raised). A corrupt
or missing training image is skipped, named in ``train_errors.txt``, and the run goes on.

After training, the inference thresholds are calibrated on the training images (no
augmentation) and stored in the config's ``peaks`` section: ``class_threshold`` stays 0
(a score of 0 is probability 0.5 under the soft-margin loss), and ``peak_threshold`` is,
for each class, ``peak_fraction`` × the median over the training images labelled with it
of its class map's highest value — so a peak must be a sizeable fraction of what a
present object of its class typically produces, in this model's own units (PRM
hard-codes 30 in its units). ``per_class_peaks`` off gives one threshold, the median over
all (image, labelled class) pairs, as before (on the synthetic dev split that left the
weakest-responding class without peaks: docs/accuracy.md); a class with no labelled
training image takes that one too. ``icn-rt train calibrate-peaks`` recalibrates a
trained model. Every
other inference section is then written with its defaults, so the config spells out
every setting inference will use, ready to edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from icn_rt.data.datasets import Dataset as LabelledSplit, open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess
from icn_rt.errors import InputError
from icn_rt.eval.diagnosis import classification_ap
from icn_rt.models.backbones import load_pretrained
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.peaks import PeakSettings
from icn_rt.models.store import (CLASSIFIER, complete_config, load_classifier, read_config, save_classifier,
                                 settings_from, write_config)
from icn_rt.training import distributed, loop
from icn_rt.training.loop import Run, RunFiles, begin

STATE = "train_state.pt"
FILES = RunFiles(CLASSIFIER, STATE, "train_log.json")
ERRORS = "train_errors.txt"
WEAK_AP = 0.8  # a class whose val classification AP ends below this is reported as weak


@dataclass
class TrainSettings(loop.Schedule):
    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-4
    lr_step: int = 10  # the learning rate x lr_factor every lr_step epochs
    lr_factor: float = 0.1
    shift: float = 0.0625  # random translation, as a fraction of the input side
    split: str = "train"
    val_split: str = "val"
    peak_fraction: float = 0.5
    per_class_peaks: bool = True


@dataclass
class EpochLog(loop.EpochLog):
    val_map: float  # the val split's classification mAP


@dataclass
class TrainSummary:
    epochs: list[EpochLog] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    peaks: PeakSettings | None = None
    classes: tuple[str, ...] = ()
    class_ap: list[float] = field(default_factory=list)  # the last epoch's val classification AP per class

    def weak_classes(self, below: float = WEAK_AP) -> list[tuple[str, float]]:
        """``(class, AP)`` of the classes whose last val classification AP is under ``below``:
        their maps barely respond, so they get few peaks and few instances."""
        return [(c, ap) for c, ap in zip(self.classes, self.class_ap) if np.isfinite(ap) and ap < below]


class _LabelledImages(Dataset):
    """(image tensor, multi-hot target) pairs; for an unreadable image, its error message."""

    def __init__(self, paths: list[Path], targets: np.ndarray, size: int, settings: TrainSettings | None) -> None:
        self.paths, self.targets, self.size, self.settings = paths, targets, size, settings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            x = preprocess(read_image(self.paths[i]), self.size)
        except InputError as e:
            return str(e)
        if self.settings is not None:
            x = self._augment(x, np.random.default_rng((self.settings.seed, self.epoch, i)))
        return x, torch.from_numpy(self.targets[i])

    def _augment(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        if self.settings.flip and rng.random() < 0.5:
            x = x.flip(-1)
        pad = int(round(self.settings.shift * self.size))
        if pad:
            dy, dx = rng.integers(0, 2 * pad + 1, size=2)
            x = F.pad(x[None], (pad, pad, pad, pad), mode="replicate")[0, :, dy:dy + self.size, dx:dx + self.size]
        return x


def _collate(batch):
    good = [b for b in batch if not isinstance(b, str)]
    bad = [b for b in batch if isinstance(b, str)]
    if not good:
        return None, None, bad
    return torch.stack([b[0] for b in good]), torch.stack([b[1] for b in good]), bad


def _split(root: Path, split: str) -> tuple[LabelledSplit, list[Path], np.ndarray]:
    ds = open_dataset(root, split, load_images=False)
    targets = np.zeros((len(ds), len(ds.classes)), np.float32)
    for i, image_id in enumerate(ds.ids):
        targets[i, ds.labels(image_id)] = 1
    return ds, [ds.image_path(i) for i in ds.ids], targets


def classification_map(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes with positives of VOC AP of ranking images by score
    (:func:`~icn_rt.eval.diagnosis.classification_ap`)."""
    return mean_ap(classification_ap(scores, targets))


def mean_ap(aps: np.ndarray) -> float:
    """Mean of the finite entries of per-class APs (NaN when there are none)."""
    return float(np.mean(aps[np.isfinite(aps)])) if np.isfinite(aps).any() else float("nan")


@torch.no_grad()
def _predict(model: PeakClassifier, data: _LabelledImages, batch_size: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Scores ``[N, C]`` and per-class map maxima ``[N, C]`` of readable images (NaN rows otherwise)."""
    model.eval()
    scores = np.full(data.targets.shape, np.nan, np.float32)
    maxima = np.full(data.targets.shape, np.nan, np.float32)
    for start in range(0, len(data), batch_size):
        items = [(i, data[i]) for i in range(start, min(start + batch_size, len(data)))]
        items = [(i, it) for i, it in items if not isinstance(it, str)]
        if not items:
            continue
        s, maps = model(torch.stack([it[0] for _, it in items]).to(device))
        rows = [i for i, _ in items]
        scores[rows] = s.cpu().numpy()
        maxima[rows] = maps.flatten(2).amax(2).cpu().numpy()
    return scores, maxima


def calibrate_peaks(maxima: np.ndarray, targets: np.ndarray, fraction: float, per_class: bool = True) -> PeakSettings:
    """Default peak settings from the training images' map maxima ``[N, C]`` and targets
    (see the module doc)."""
    positive = (targets > 0) & np.isfinite(maxima)
    present = maxima[positive]
    threshold = round(float(fraction * np.median(present)) if len(present) else 0.0, 6)
    if not per_class:
        return PeakSettings(peak_threshold=threshold)
    return PeakSettings(peak_threshold=[round(float(fraction * np.median(maxima[positive[:, c], c])), 6)
                                        if positive[:, c].any() else threshold for c in range(maxima.shape[1])])


def recalibrate_peaks(root: str | Path, model_dir: str | Path, split: str = "train", fraction: float = 0.5,
                      per_class: bool = True, batch_size: int = 16, device: str = "cpu") -> PeakSettings:
    """``icn-rt train calibrate-peaks``: calibrate a trained model's peak thresholds again on
    ``split`` of ``root`` (as training does at its end) and write them into its config."""
    model, config = load_classifier(model_dir, device)
    ds, paths, targets = _split(Path(root), split)
    if list(ds.classes) != list(config["classes"]):
        raise InputError(Path(root), f"its classes {list(ds.classes)} are not the model's {config['classes']}")
    _, maxima = _predict(model, _LabelledImages(paths, targets, model.settings.input_size, None), batch_size, device)
    peaks = calibrate_peaks(maxima, targets, fraction, per_class)
    previous = config.get("peaks", {})
    write_config(model_dir, {**config, "peaks": {**previous, "peak_threshold": peaks.peak_threshold}})
    return peaks


def train_classifier(root: str | Path, out: str | Path, settings: TrainSettings, model_settings: ClassifierSettings,
                     resume: bool = False, device: str = "cpu",
                     log: Callable[[str], None] = print, progress: bool = True) -> TrainSummary:
    """Train on ``root``'s ``settings.split`` and write the model directory ``out``. Under
    ``torchrun``, each process is a rank of DDP (:mod:`~icn_rt.training.distributed`):
    the global batch is ``batch_size``; rank 0 logs, validates, calibrates and writes."""
    root, out = Path(root), Path(out)
    ranks, device, log, progress, resuming = begin(out, FILES, resume, device, log, progress)
    train_ds, train_paths, train_targets = _split(root, settings.split)
    _, val_paths, val_targets = _split(root, settings.val_split)
    classes = tuple(train_ds.classes)
    torch.manual_seed(settings.seed)
    if resuming:
        config = read_config(out)
        model_settings = settings_from(config, "classifier", ClassifierSettings, out)
        settings = replace(settings_from(config, "training", TrainSettings, out), epochs=settings.epochs)
    model = PeakClassifier(len(classes), model_settings).to(device)
    if settings.pretrained and not resuming:
        load_pretrained(model.backbone, model_settings.backbone, settings.pretrained)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    summary = TrainSummary(classes=classes)
    run = Run(out, FILES, model, optimiser, ranks, device,
              save=lambda: save_classifier(out, model, classes, {"training": settings}))
    if resuming:
        run.resume(EpochLog, log, out)
    train = _LabelledImages(train_paths, train_targets, model_settings.input_size, settings)
    val = _LabelledImages(val_paths, val_targets, model_settings.input_size, None)
    skipped: set[str] = set()

    def step(trainer, batch, epoch: int, b: int):
        x, y, bad = batch
        skipped.update(bad)
        if distributed.anyone(x is None, ranks):  # a step one rank cannot take, no rank takes
            return None
        scores, _ = trainer(x.to(device))
        return {"loss": F.multilabel_soft_margin_loss(scores, y.to(device))}, len(x)

    def report(epoch):
        nonlocal skipped
        skipped = distributed.union(skipped, ranks)
        if not ranks.main:
            return None
        if skipped:
            out.mkdir(parents=True, exist_ok=True)
            (out / ERRORS).write_text("".join(f"{s}\n" for s in sorted(skipped)))
        val_scores, _ = _predict(model, val, settings.batch_size, device)
        ok = np.isfinite(val_scores).all(1)
        aps = classification_ap(val_scores[ok], val_targets[ok])
        summary.class_ap = [float(ap) for ap in aps]
        entry = EpochLog(epoch.number, epoch.loss, epoch.lr, epoch.seconds, val_map=mean_ap(aps))
        return entry, (f"epoch {entry.epoch}/{settings.epochs}  loss {entry.loss:.4f}  lr {entry.lr:.0e}  "
                       f"val mAP {100 * entry.val_map:.1f}  ({entry.seconds:.0f} s)")

    run.fit(train, step, settings, lr=lambda epoch, b: settings.lr * settings.lr_factor ** (epoch // settings.lr_step),
            title="epoch", collate=_collate, progress=progress, report=report, log=log)
    summary.epochs, summary.skipped = run.entries, sorted(skipped)
    if not ranks.main:
        distributed.leave(ranks)
        return summary
    _, maxima = _predict(model, _LabelledImages(train_paths, train_targets, model_settings.input_size, None),
                         settings.batch_size, device)
    summary.peaks = calibrate_peaks(maxima, train_targets, settings.peak_fraction, settings.per_class_peaks)
    save_classifier(out, model, classes, {"training": settings, "peaks": summary.peaks})
    complete_config(out)
    distributed.leave(ranks)
    return summary
