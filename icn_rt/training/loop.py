"""The training loop the classifier, the ICN and the student share.

A trainer supplies its model, optimiser, data and one step (a batch in, its losses out);
:class:`Run` does the rest, the same way for all three:

- **resume**: the weights, the optimiser and the epoch from the model directory's
  checkpoint, and the epoch log so far (:meth:`Run.resume`);
- **the schedule**: the learning rate of every step from ``lr(epoch, batch)``;
- **order and seeds**: each epoch's order from ``(seed, epoch)`` through
  :class:`~icn_rt.training.distributed.RankSampler`, torch's generator reseeded from
  ``(seed, epoch)`` (so a resumed run draws what the uninterrupted one drew), the
  dataset told its epoch (augmentations follow from (seed, epoch, index));
- **DDP**: the model wrapped over the ranks, each rank given its share of the global
  batch, the epoch's loss totalled over the ranks, buffers and weights checked equal;
- **progress** (a bar per epoch) and the epoch log line, on rank 0;
- **checkpoints** after every epoch, on rank 0: the weights (the trainer's ``save``),
  then the optimiser and epoch (written to a temporary file and renamed), then the log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset

from icn_rt.training import distributed


@dataclass
class Schedule:
    """What every trainer's settings hold; each trainer's settings subclass it with its own
    defaults and fields. ``pretrained``: where the network's backbone starts (``imagenet``
    or a weights file; None: from scratch); ``workers``: data-loading processes."""

    epochs: int = 1
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    flip: bool = True
    seed: int = 0
    workers: int = 0
    pretrained: str | None = None
    sync_bn: bool = False


@dataclass
class EpochLog:
    """One entry of a training's epoch log: the epoch, its mean loss, the learning rate and
    the seconds it took. A trainer adds what it measures besides (the classifier its val
    mAP, the student its loss parts) in a subclass."""

    epoch: int
    loss: float
    lr: float
    seconds: float


@dataclass(frozen=True)
class RunFiles:
    """Where a trainer keeps its run in the model directory: ``weights`` (written by the
    trainer's ``save``), ``state`` (optimiser and epoch) and ``log`` (the epoch log)."""

    weights: str
    state: str
    log: str


@dataclass
class Epoch:
    """What one epoch measured, over all ranks: its 1-based ``number``, the mean of each
    loss part per sample (``parts``; ``loss`` their sum), the last step's ``lr``, its
    ``seconds``, and ``agreed`` (under DDP, the ranks' weight check for the log line)."""

    number: int
    loss: float
    parts: dict[str, float]
    lr: float
    seconds: float
    agreed: str = ""


class Process(NamedTuple):
    """This process's part in a run (:func:`begin`); unpacks as ``ranks, device, log,
    progress, resuming``."""

    ranks: distributed.Ranks
    device: str
    log: Callable[[str], None]
    progress: bool
    resuming: bool


def begin(model_dir: str | Path, files: RunFiles, resume: bool, device: str, log: Callable[[str], None],
          progress: bool) -> Process:
    """Join the ranks (under ``torchrun``; alone, rank 0 of 1 on ``device``); a rank other
    than 0 logs nothing and shows no progress; ``resuming``: ``resume`` asked and the
    model directory holds this run's checkpoint."""
    ranks, device = distributed.join(device)
    if not ranks.main:
        log, progress = distributed.silent, False
    return Process(ranks, device, log, progress, resume and (Path(model_dir) / files.state).exists())


Step = Callable[[torch.nn.Module, Any, int, int], "tuple[dict[str, torch.Tensor], int] | None"]
"""``step(model, batch, epoch, index) -> ({name: loss}, samples)`` with ``model`` the one
to run (under DDP, the wrapped model), or None to take no step (every rank must then
return None for that batch)."""


class Run:
    """One trainer's run into ``model_dir``: ``model`` (its weights are what ``save``
    writes), ``optimiser`` over its parameters, ``device``, and the DDP ranks
    (:func:`~icn_rt.training.distributed.join`). ``entries`` is the epoch log so far."""

    def __init__(self, model_dir: Path, files: RunFiles, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                 ranks: distributed.Ranks, device: str, save: Callable[[], None]) -> None:
        self.model_dir, self.files, self.model, self.optimiser = Path(model_dir), files, model, optimiser
        self.ranks, self.device, self.save = ranks, device, save
        self.start_epoch = 0
        self.entries: list[Any] = []

    def resume(self, entry: type, log: Callable[[str], None], what: str) -> None:
        """Continue from the checkpoint: weights, optimiser, epoch and the log (as ``entry``
        dataclasses)."""
        from safetensors.torch import load_file

        self.model.load_state_dict(load_file(str(self.model_dir / self.files.weights)))
        state = torch.load(self.model_dir / self.files.state, map_location=self.device, weights_only=True)
        self.optimiser.load_state_dict(state["optimiser"])
        self.start_epoch = int(state["epoch"])
        self.entries = [entry(**e) for e in json.loads((self.model_dir / self.files.log).read_text())]
        log(f"resuming {what} after epoch {self.start_epoch}")

    def checkpoint(self, epoch: int) -> None:
        """Weights, then optimiser and ``epoch`` (atomically), then the log."""
        self.save()
        tmp = self.model_dir / (self.files.state + ".tmp")
        torch.save({"optimiser": self.optimiser.state_dict(), "epoch": epoch}, tmp)
        tmp.replace(self.model_dir / self.files.state)
        (self.model_dir / self.files.log).write_text(json.dumps([asdict(e) for e in self.entries], indent=1))

    def fit(self, data: Dataset, step: Step, schedule: Schedule, *, lr: Callable[[int, int], float], title: str,
            collate: Callable | None = None, unused: bool = False, clip: float = 0.0, progress: bool = True,
            report: Callable[[Epoch], tuple[Any, str] | None] = lambda e: None,
            log: Callable[[str], None] = print) -> None:
        """Train from :attr:`start_epoch` to ``schedule.epochs`` (its batch size, seed,
        workers and sync_bn; ``lr(epoch, batch)`` sets the learning rate). After each epoch every rank calls
        ``report(epoch)`` (collectives may go in it); rank 0's answer, ``(log entry, log
        line)``, is logged, appended to :attr:`entries` and checkpointed (None: the epoch
        is neither logged nor checkpointed)."""
        ranks, epochs, seed = self.ranks, schedule.epochs, schedule.seed
        trainer = distributed.wrap(self.model, ranks, schedule.sync_bn, unused=unused)
        share = ranks.share(schedule.batch_size)
        params = [p for group in self.optimiser.param_groups for p in group["params"]]
        for epoch in range(self.start_epoch, epochs):
            data.epoch = epoch
            torch.manual_seed(seed * 1000 + epoch)
            order = distributed.RankSampler(len(data), seed * 1000 + epoch, ranks)
            loader = DataLoader(data, share, sampler=order, num_workers=schedule.workers, collate_fn=collate)
            trainer.train()
            started, totals, seen = time.perf_counter(), {}, 0
            rate = lr(epoch, 0)
            for b, batch in enumerate(_progress(loader, f"{title} {epoch + 1}/{epochs}", progress and ranks.main)):
                rate = lr(epoch, b)
                for group in self.optimiser.param_groups:
                    group["lr"] = rate
                taken = step(trainer, batch, epoch, b)
                if taken is None:
                    continue
                losses, count = taken
                loss = sum(losses.values())
                self.optimiser.zero_grad()
                loss.backward()
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip)
                self.optimiser.step()
                for k, v in losses.items():
                    totals[k] = totals.get(k, 0.0) + float(v.detach()) * count
                seen += count
            names = sorted(totals)
            *sums, seen = distributed.total([totals[k] for k in names] + [seen], ranks)
            distributed.same_buffers(self.model, ranks)
            digest = distributed.agree(self.model, ranks)
            parts = {k: v / max(seen, 1) for k, v in zip(names, sums)}
            result = Epoch(epoch + 1, sum(parts.values()), parts, rate, time.perf_counter() - started,
                           distributed.agreed(ranks, digest))
            reported = report(result)
            if not ranks.main or reported is None:
                continue
            entry, line = reported
            self.entries.append(entry)
            log(line + result.agreed)
            self.checkpoint(epoch + 1)


def _progress(loader: Iterable, description: str, show: bool) -> Iterable:
    if not show:
        return loader
    from icn_rt.progress import track

    return track(loader, description, total=len(loader), unit="batch")
