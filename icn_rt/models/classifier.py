"""The weakly supervised classifier: backbone + 1×1 conv -> class response maps, and
peak stimulation -> class scores (docs/design.md §1 step 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from icn_rt.models.backbones import CHANNELS, build_backbone
from icn_rt.models.class_scores import peak_stimulation


@dataclass
class ClassifierSettings:
    """``backbone``: resnet50 | vgg16 | small. ``input_size``: square side the image is
    resized to (PRM: 448). ``sub_pixel``: bilinear (align_corners) upsampling factor of
    the class maps before peaks are found (PRM trains with 8; 1 = off). ``window``: peak
    neighbourhood. ``stimulation``: class score from peak stimulation (else global
    average pooling)."""

    backbone: str = "resnet50"
    input_size: int = 448
    sub_pixel: int = 8
    window: int = 3
    stimulation: bool = True


class PeakClassifier(nn.Module):
    """``forward(x: float [B, 3, S, S], normalised)`` -> ``(scores [B, C], maps [B, C, h, w])``;
    ``maps`` are the class response maps after sub-pixel upsampling."""

    def __init__(self, num_classes: int, settings: ClassifierSettings) -> None:
        super().__init__()
        self.settings = settings
        self.backbone = build_backbone(settings.backbone)
        self.classifier = nn.Conv2d(CHANNELS[settings.backbone], num_classes, 1)

    def upsample(self, maps: torch.Tensor) -> torch.Tensor:
        if self.settings.sub_pixel == 1:
            return maps
        return F.interpolate(maps, scale_factor=self.settings.sub_pixel, mode="bilinear", align_corners=True)

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.classifier(self.backbone(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.class_maps(x)
        if self.settings.stimulation:
            scores = peak_stimulation(maps, self.settings.window)
        else:
            scores = maps.mean((2, 3))
        return scores, maps
