"""What every command group shares: the typer apps, the consoles, the failure line, the
torchrun relaunch, and the tables two commands print (the options: :mod:`.options`)."""

from __future__ import annotations

import math
import sys

import typer
from rich.console import Console
from rich.table import Table

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


def fail(e: Exception) -> None:
    err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def launch(nproc: int, batch_size: int) -> None:
    """Rerun this command under ``torchrun`` with ``nproc`` processes on this machine, and
    exit with its status (unless ``nproc`` is 1, or this process is already one of them).
    A global batch that does not split over them is refused here, once, before any starts."""
    import os
    import subprocess

    from icn_rt.training.distributed import Ranks

    if nproc < 1:
        fail(ValueError(f"--nproc must be at least 1, got {nproc}"))
    if nproc == 1 or "WORLD_SIZE" in os.environ:
        return
    try:
        Ranks(0, nproc).share(batch_size)
    except ValueError as e:
        fail(e)
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


def renamed(old_value, old: str, value, new: str):
    """The value of a renamed option: the old name's when it was given (with a warning that it
    goes in the next release), else the new one's."""
    if old_value is None:
        return value
    err.print(f"[yellow]warning:[/yellow] {old} is deprecated here and goes in the next release: use {new}",
              highlight=False)
    return old_value


DEPRECATED_OUT = "Deprecated: --json."


def rank_zero() -> bool:
    """Whether this process reports (the only one, or rank 0 under torchrun)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def skipped(summary) -> None:
    """The first few images a label run could not use."""
    for image_id, reason in summary.failed[:5]:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)


def auto_device(value: str) -> str:
    """``--device auto`` -> ``cuda`` when PyTorch sees a GPU, else ``cpu``; others as given."""
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def plural(count: int, noun: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def recall_table(report, title: str) -> Table:
    table = Table(title=title)
    for col in ("images", "GT instances", "proposals / image", "ABO", *[f"recall@{t:g}" for t in report.recall]):
        table.add_column(col, justify="right")
    table.add_row(str(report.images), str(report.instances), f"{report.mean_proposals:.0f}", pct(report.abo),
                  *[pct(v) for v in report.recall.values()])
    return table


def eval_table(report) -> Table:
    table = Table(title=f"evaluation: {report.images} images, {report.instances} GT instances, "
                        f"{report.predictions} predictions")
    for col in ("", *[f"mAP^r@{t:g}" for t in report.map], "ABO", "mIoU"):
        table.add_column(col, justify="right")
    table.add_row("all", *[pct(v) for v in report.map.values()], pct(report.abo), pct(report.miou))
    table.add_row("background", *["" for _ in report.map], "", pct(report.iou[0]))
    for c, name in enumerate(report.classes):
        table.add_row(name, *[pct(v[c]) for v in report.ap.values()], "", pct(report.iou[c + 1]))
    return table


def interval_text(d: dict) -> str:
    """``7.6 [4.5, 10.7]`` from an interval's JSON (percent already)."""
    lo, hi = d["interval"]
    f = (lambda v: "-" if v is None else f"{v:.1f}")
    return f"{f(d['estimate'])} [{f(lo)}, {f(hi)}]"


def intervals_table(report) -> Table:
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
        cells = [interval_text(c[metric]) for c in columns.values()]
        if report.against is not None and not columns["difference"][metric]["excludes_zero"]:
            cells[-1] += " ~0"
        table.add_row(metric.replace("mAP@", "mAP^r@"), *cells)
    return table
