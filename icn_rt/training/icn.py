"""Training the ICN on stored labels (docs/design.md §1 step 5).

Each sample is one (image, peak): input = the normalised image + the peak's min-max
PRM, target = its label (:mod:`icn_rt.training.pseudo_labels`), loss = pixel-wise binary
cross entropy. Adam, lr 1e-3, ×0.5 every 20 epochs, 120 epochs (the paper's schedule,
all settings). Augmentation: horizontal flip and a random square crop of side
``crop``..1 × S at a random place, resized back to S (bilinear for image and PRM,
nearest for the label).

Self-feeding (``self_feed``, default 0.5, not in the paper; 0 turns it off): at
inference the ICN runs T times, from step 2 on its own output, min-max normalised — a
blob, not a peaky PRM — which without it the ICN never sees in training, and the maps
then grow with every step (benchmarks/results/ablation_synth_val.md). With
``self_feed`` = p, each sample's PRM input is, with probability p, replaced by that: the
ICN's current output on it (one step, no gradient), min-max normalised; the target stays
the label. An ICN without PRM input (the ablation) has nothing to feed; runs stored
before the setting existed resume without it.

Seeded like the classifier's training (augmentations from (seed, epoch, index));
resumable: after every epoch the model directory gets ``icn.safetensors``, the config's
``icn`` and ``icn_training`` sections, ``icn_train_state.pt`` and ``icn_train_log.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess
from icn_rt.errors import InputError
from icn_rt.models.icn import ICN, ICNSettings, load_classifier_encoder, load_pretrained_encoder, minmax
from icn_rt.models.store import ICN_WEIGHTS, load_classifier, read_config, save_icn, settings_from
from icn_rt.training import distributed
from icn_rt.training.loop import EpochLog, Run, RunFiles, Schedule, begin
from icn_rt.training.pseudo_labels import LabelSettings, LabelSummary, label_model

STATE = "icn_train_state.pt"
LOG = "icn_train_log.json"
FILES = RunFiles(ICN_WEIGHTS, STATE, LOG)


@dataclass
class ICNTrainSettings(Schedule):
    epochs: int = 120
    batch_size: int = 8
    lr: float = 1e-3
    lr_step: int = 20  # the learning rate x lr_factor every lr_step epochs
    lr_factor: float = 0.5
    crop: float = 0.75
    labels: str = ""
    self_feed: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.self_feed <= 1.0:
            raise ValueError(f"self_feed must be in [0, 1], got {self.self_feed}")


@dataclass
class ICNTrainSummary:
    epochs: list[EpochLog] = field(default_factory=list)
    samples: int = 0


class PeakSamples(Dataset):
    """(image ``[3, S, S]``, PRM ``[1, S, S]`` in [0, 1], label ``[1, S, S]``) per stored
    peak; ``settings`` None: no augmentation."""

    def __init__(self, root: Path, labels: Path, size: int, settings: ICNTrainSettings | None) -> None:
        files = sorted(labels.glob("*.npz"))
        if not files:
            raise InputError(labels, "no label files (make them with `icn-rt train pseudo-labels`)")
        ds = open_dataset(root, json.loads((labels / "settings.json").read_text())["settings"]["split"],
                        load_images=False)
        self.items: list[tuple[Path, Path, int]] = []
        for f in files:
            with np.load(f) as z:
                count = len(z["cls"])
            self.items += [(f, ds.image_path(f.stem), k) for k in range(count)]
        self.size, self.settings = size, settings
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        label_file, image_path, k = self.items[i]
        with np.load(label_file) as z:
            prm = torch.from_numpy(z["prm"][k].astype(np.float32) / 255)[None]
            label = torch.from_numpy(z["label"][k].astype(np.float32))[None]
        x = preprocess(read_image(image_path), self.size)
        if self.settings is not None:
            x, prm, label = self._augment(x, prm, label, np.random.default_rng((self.settings.seed, self.epoch, i)))
        return x, prm, label

    def _augment(self, x, prm, label, rng: np.random.Generator):
        if self.settings.flip and rng.random() < 0.5:
            x, prm, label = x.flip(-1), prm.flip(-1), label.flip(-1)
        side = int(round(rng.uniform(self.settings.crop, 1.0) * self.size))
        if side < self.size:
            y0, x0 = rng.integers(0, self.size - side + 1, size=2)
            crop = (slice(None), slice(y0, y0 + side), slice(x0, x0 + side))
            size = (self.size, self.size)
            x = F.interpolate(x[crop][None], size, mode="bilinear", align_corners=False)[0]
            prm = F.interpolate(prm[crop][None], size, mode="bilinear", align_corners=False)[0]
            label = F.interpolate(label[crop][None], size, mode="nearest")[0]
        return x, prm, label


def self_fed(icn: ICN, x: torch.Tensor, prm: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``prm [N, 1, S, S]`` with the ``chosen`` rows replaced by the ICN's output on them,
    as the T-step loop feeds it back: min-max normalised probabilities, no gradient."""
    if not chosen.any():
        return prm
    with torch.no_grad():
        fed = minmax(torch.sigmoid(icn(x[chosen], prm[chosen]))[:, 0])[:, None]
    prm = prm.clone()
    prm[chosen] = fed
    return prm


def icn_loss(icn: ICN, x: torch.Tensor, prm: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean pixel-wise binary cross entropy of the ICN's logits against ``label``."""
    return F.binary_cross_entropy_with_logits(icn(x, prm), label)


def train_icn(root: str | Path, model_dir: str | Path, settings: ICNTrainSettings, icn_settings: ICNSettings,
              resume: bool = False, device: str = "cpu", log: Callable[[str], None] = print,
              progress: bool = True) -> ICNTrainSummary:
    """Train the ICN of ``model_dir`` on the labels in ``settings.labels`` (images from
    ``root``). Under ``torchrun``, each process is a rank of DDP
    (:mod:`~icn_rt.training.distributed`); rank 0 logs and writes."""
    root, model_dir = Path(root), Path(model_dir)
    ranks, device, log, progress, resuming = begin(model_dir, FILES, resume, device, log, progress)
    config = read_config(model_dir)
    if resuming:
        icn_settings = settings_from(config, "icn", ICNSettings, model_dir)
        stored = {"self_feed": 0.0, **config.get("icn_training", {})}  # runs from before self-feeding
        settings = replace(settings_from({"icn_training": stored}, "icn_training", ICNTrainSettings, model_dir),
                           epochs=settings.epochs)
    elif icn_settings.encoder == "classifier":  # the model's classifier backbone, from its weights
        icn_settings = replace(icn_settings, trunk=config["classifier"]["backbone"])
    torch.manual_seed(settings.seed)
    icn = ICN(icn_settings).to(device)
    if settings.pretrained and not resuming:
        load_pretrained_encoder(icn, settings.pretrained)  # vgg16 only: it refuses the others
    elif icn_settings.encoder == "classifier" and not resuming:
        load_classifier_encoder(icn, load_classifier(model_dir)[0].backbone.state_dict())
    optimiser = torch.optim.Adam(icn.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    run = Run(model_dir, FILES, icn, optimiser, ranks, device,
              save=lambda: save_icn(model_dir, icn, {"icn_training": settings}))
    if resuming:
        run.resume(EpochLog, log, f"the ICN of {model_dir}")
    data = PeakSamples(root, Path(settings.labels), config["classifier"]["input_size"], settings)
    padded = -(-len(data) // ranks.world) * ranks.world  # the samplers' orders together

    def step(trainer, batch, epoch: int, b: int):
        x, prm, label = (t.to(device) for t in batch)
        if settings.self_feed > 0 and icn.settings.prm_input:
            # drawn for the global batch, this rank's positions of it taken
            draws = np.random.default_rng((settings.seed, epoch, b, 1)).random(
                min(settings.batch_size, padded - b * settings.batch_size))
            pick = draws[ranks.rank:: ranks.world][:len(x)] < settings.self_feed
            prm = self_fed(icn, x, prm, torch.from_numpy(pick).to(device))
        return {"loss": icn_loss(trainer, x, prm, label)}, len(x)

    def report(epoch):
        entry = EpochLog(epoch.number, epoch.loss, epoch.lr, epoch.seconds)
        return entry, (f"ICN epoch {entry.epoch}/{settings.epochs}  loss {entry.loss:.4f}  lr {entry.lr:.0e}  "
                       f"({entry.seconds:.0f} s)")

    run.fit(data, step, settings, lr=lambda epoch, b: settings.lr * settings.lr_factor ** (epoch // settings.lr_step),
            title="ICN epoch", progress=progress, report=report, log=log)
    distributed.leave(ranks)
    return ICNTrainSummary(run.entries, len(data))


def label_and_train(root: str | Path, model_dir: str | Path, settings: ICNTrainSettings, icn_settings: ICNSettings,
                    labels: LabelSettings, label_dir: str | Path | None = None,
                    proposals_dir: str | Path | None = None, resume: bool = False, device: str = "cpu",
                    log: Callable[[str], None] = print,
                    progress: bool = True) -> tuple[LabelSummary, ICNTrainSummary]:
    """``icn-rt train icn``: the labels of ``labels.split`` (made first where missing, in
    ``label_dir``: see :func:`~icn_rt.training.pseudo_labels.label_model`), then the ICN
    trained on them into the model directory, with progress bars unless ``progress`` is
    off. Under ``torchrun`` rank 0 makes the labels while the others wait, then they all
    train."""
    ranks, device = distributed.join(device)
    if not ranks.main:  # rank 0's labels, read back once made
        ranks.barrier()
    label_dir, made = label_model(root, model_dir, labels, label_dir, proposals_dir, device,
                                  progress=ranks.main and progress, log=log if ranks.main else distributed.silent)
    if ranks.main:
        ranks.barrier()
    trained = train_icn(root, model_dir, replace(settings, labels=str(label_dir)), icn_settings, resume=resume,
                        device=device, log=log, progress=progress)
    return made, trained
