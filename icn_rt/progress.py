"""Progress display for long work (dataset generation, proposals, training, inference)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar with count, rate-friendly columns and ETA (stderr)."""
    from rich.console import Console

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=transient,
    )


class Counter:
    """A progress bar advanced by counts (e.g. a batch of images at a time), showing count,
    ``unit``/s and ETA; nothing at all when ``show`` is False. :meth:`close` ends it."""

    def __init__(self, description: str, total: int | None, unit: str = "it", show: bool = True) -> None:
        import time

        self._clock = time.perf_counter
        self._start = self._clock()
        self._done = 0
        self._unit = unit
        self._bar = progress_bar() if show else None
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, rate="")

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._bar is not None and n:
            elapsed = self._clock() - self._start
            rate = f"{self._done / elapsed:.1f} {self._unit}/s" if elapsed > 0 else ""
            self._bar.update(self._task, advance=n, rate=rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def track(items: Iterable[T], description: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Iterate ``items`` with a progress bar showing count, ``unit``/s and ETA."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    counter = Counter(description, total, unit)
    try:
        for item in items:
            yield item
            counter.advance()
    finally:
        counter.close()


def say(message: str) -> None:
    """One line of progress for a step without a count (stderr, so stdout stays data)."""
    import sys

    print(message, file=sys.stderr, flush=True)
