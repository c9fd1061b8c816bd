"""Training on several processes (``torchrun``, or ``icn-rt train ... --nproc N`` which
launches it): one process per GPU (NCCL) or per group of CPU cores (gloo), DDP.

A trainer asks :func:`join` which rank it is. Under ``torchrun`` (``WORLD_SIZE`` > 1 in
the environment) that joins the process group; otherwise it is rank 0 of 1 and nothing
changes. Each step's *global* batch is the single-process batch: ``batch_size`` is
split evenly over the ranks, and :class:`RankSampler` gives rank ``r`` the samples at
positions ``r, r + W, r + 2W, ...`` of the very order a single process would draw, so
the ranks' shares of step ``i`` together are the single-process batch ``i``. With
SyncBatchNorm (``sync_bn``) and a loss that is a mean over the batch, DDP's averaged
gradients are the single-process gradients (up to float rounding); augmentations follow
from (seed, epoch, sample index), whichever rank draws them. Progress, validation and
checkpoints are rank 0's; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

TIMEOUT = datetime.timedelta(hours=6)
"""How long a rank waits for the others (rank 0 may label a whole split while they wait)."""


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` of ``world``, and ``local`` (its GPU on the node)."""

    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def main(self) -> bool:
        """Whether this process logs, validates and writes checkpoints."""
        return self.rank == 0

    @property
    def spread(self) -> bool:
        return self.world > 1

    def share(self, batch_size: int) -> int:
        """This rank's part of a global batch of ``batch_size``."""
        if batch_size % self.world:
            raise ValueError(f"the batch size {batch_size} does not split evenly over {self.world} processes; "
                             f"make it a multiple of {self.world}")
        return batch_size // self.world

    def barrier(self) -> None:
        if self.spread:
            dist.barrier()


def silent(message: str) -> None:
    """The log of a rank other than 0: nothing."""


def join(device: str) -> tuple[Ranks, str]:
    """This process's ranks and the device it trains on. Under ``torchrun`` the process
    group is joined once (gloo on the CPU, NCCL on GPUs, where each rank takes the GPU of
    its local rank); alone, ``Ranks()`` and ``device`` unchanged."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks(), device
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(ranks.local)
        device = f"cuda:{ranks.local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return ranks, device


def leave(ranks: Ranks) -> None:
    """The end of a trainer: every rank waits for the others, then the process group is
    closed (a rank that exits while another still talks to it aborts)."""
    if ranks.spread and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ranks: Ranks, sync_bn: bool = False, unused: bool = False) -> torch.nn.Module:
    """``model`` as DDP over the ranks (its BatchNorms made global first with ``sync_bn``:
    torch's SyncBatchNorm on GPUs, :class:`GlobalBatchNorm` elsewhere; they keep their
    parameters, so an optimiser made before still holds them; ``unused``: some trainable
    parameters may get no gradient in a step); alone, ``model`` itself."""
    if not ranks.spread:
        return model
    device = next(model.parameters()).device
    if sync_bn and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # children replaced in place
    elif sync_bn:  # torch's SyncBatchNorm is for GPUs only
        model = GlobalBatchNorm.convert(model)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                     else None, find_unused_parameters=unused)


class _SumOverRanks(torch.autograd.Function):
    """A tensor summed over the ranks, differentiably: the gradient of each rank's part is
    the sum over the ranks of the gradients of the total."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch, on any device
    and process group backend (gloo included): each rank's per-channel sums go through a
    differentiable all-reduce (mean first, then the squared deviations from it, as one
    pass over the whole batch would), so forward and backward are the single-process
    BatchNorm's on the union of the ranks' samples. Evaluation, and a process alone, use
    plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spread = self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not spread:
            return super().forward(x)
        all_reduce = _SumOverRanks.apply
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
        mean = all_reduce(x.sum(dims)) / count
        var = all_reduce(((x - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp(min=1))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @classmethod
    def convert(cls, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` with every BatchNorm (1d/2d/3d) replaced by this class, in place below
        the top, keeping the parameters and buffers themselves."""
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, cls):
            new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
            if module.affine:
                new.weight, new.bias = module.weight, module.bias
            if module.track_running_stats:
                new.running_mean, new.running_var = module.running_mean, module.running_var
                new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
        for name, child in module.named_children():
            converted = cls.convert(child)
            if converted is not child:
                setattr(module, name, converted)
        return module


def same_buffers(model: torch.nn.Module, ranks: Ranks) -> None:
    """Rank 0's buffers (BatchNorm statistics) to every rank, so that after an epoch every
    rank holds rank 0's model exactly (without SyncBatchNorm each rank's statistics saw
    only its own samples)."""
    if ranks.spread:
        for buffer in model.buffers():
            dist.broadcast(buffer.data, 0)


def agree(model: torch.nn.Module, ranks: Ranks) -> str:
    """The digest of ``model``'s parameters and buffers, checked equal on every rank (a
    RuntimeError naming the ranks that differ otherwise); '' alone. Trainers call it after
    every epoch: DDP keeps the ranks' models identical, and this proves it."""
    if not ranks.spread:
        return ""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(list(model.state_dict().items())):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digests: list = [None] * ranks.world
    dist.all_gather_object(digests, h.hexdigest())
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"ranks {differ} hold other weights than rank 0 after the epoch")
    return digests[0]


def agreed(ranks: Ranks, digest: str) -> str:
    """What an epoch's log line adds under several processes."""
    return f"  [{ranks.world} ranks, identical weights {digest[:12]}]" if ranks.spread else ""


def anyone(flag: bool, ranks: Ranks) -> bool:
    """Whether ``flag`` holds on any rank (alone: ``flag``). A step whose share is all
    unreadable images on one rank is skipped by every rank, so none waits forever in an
    all-reduce the others never join (the other ranks' images of that step go unused)."""
    if not ranks.spread:
        return flag
    t = torch.tensor([float(flag)])
    dist.all_reduce(t)
    return bool(t.item() > 0)


def total(values: list[float], ranks: Ranks) -> list[float]:
    """``values`` summed over the ranks (loss sums and counts for the epoch's log)."""
    if not ranks.spread:
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def union(items: set[str], ranks: Ranks) -> set[str]:
    """``items`` of every rank (the images each could not read)."""
    if not ranks.spread:
        return items
    gathered: list = [None] * ranks.world
    dist.all_gather_object(gathered, sorted(items))
    return {item for part in gathered for item in part}


class RankSampler(Sampler[int]):
    """This rank's samples of one epoch: the order a single process draws from
    ``DataLoader(shuffle=True, generator=torch.Generator().manual_seed(seed))`` (the
    loader takes one number from the generator, then the sampler its permutation), the
    rank's positions ``r, r + W, ...`` of it. A world that does not divide the samples
    repeats the first ones, so that every rank takes as many steps."""

    def __init__(self, count: int, seed: int, ranks: Ranks) -> None:
        self.count, self.seed, self.ranks = count, seed, ranks

    def order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed)
        torch.empty((), dtype=torch.int64).random_(generator=g)  # the DataLoader's base seed
        return torch.randperm(self.count, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        order = self.order()
        padded = order + order[: (-len(order)) % self.ranks.world]
        return iter(padded[self.ranks.rank:: self.ranks.world])

    def __len__(self) -> int:
        return -(-self.count // self.ranks.world)
