"""Wall time per pipeline stage, for ``icn-rt bench`` (and anyone profiling a run)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimes:
    """Seconds per named stage, summed over calls until :meth:`take`. On a CUDA device the
    stream is synchronised at each stage boundary, so GPU work is charged to the stage
    that launched it (this costs the overlap between stages: time with it, not without)."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = torch.device(device).type == "cuda"

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self._sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self._sync:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The sums so far (then starts again from zero)."""
        out = dict(self.seconds)
        self.seconds.clear()
        return out
