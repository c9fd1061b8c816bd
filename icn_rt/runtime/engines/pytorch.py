"""The ``torch`` engine: a graph module (:mod:`icn_rt.export.graphs`) run eagerly, the
reference the exported graphs are tested against."""

from __future__ import annotations

import torch


class TorchEngine:
    """A graph module run eagerly under ``no_grad``."""

    backend = "torch"

    def __init__(self, module: torch.nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...],
                 device: str | torch.device = "cpu") -> None:
        self.module = module.eval().to(device)
        self.inputs, self.outputs, self.device = inputs, outputs, torch.device(device)

    @torch.no_grad()
    def __call__(self, **feeds: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.module(*(feeds[name].to(self.device) for name in self.inputs))
        return dict(zip(self.outputs, result))
