"""The student (docs/design.md §7): torchvision's Mask R-CNN, trained on the pipeline's
confident masks (:mod:`icn_rt.training.student`), needing no proposals and no backward.

It lives in the model directory beside the pipeline: ``student.safetensors`` and the
config's ``student`` section (:class:`StudentSettings`). Its input is the classifier's
kind of input at its own side: the image resized to ``input_size`` × ``input_size``
(aspect not kept) and ImageNet-normalised (:func:`~icn_rt.data.preprocess.preprocess_array`),
so loaders, staging and engines treat both alike; torchvision's transform is told the
mean is 0 and the deviation 1 and, the side being fixed, resizes nothing. Anchors scale
with the input: torchvision's sizes (32 … 512 at 800 pixels) × ``input_size`` / 800, so
objects keep the share of the anchors they have on COCO; the region proposal and sampling
counts are cut to what images with a few objects need (:class:`StudentSettings`).

:class:`StudentGraph` is the exported form: ``images [B, 3, S, S]`` -> boxes, labels,
scores and ``box_masks [N, M, M]`` (each detection's mask probabilities over its box, M =
28, as Mask R-CNN predicts them) with ``image [N]`` telling whose they are; the predictor
pastes them at each image's own size (:func:`~icn_rt.runtime.student.paste_at`), as
torchvision pastes them at the size of the image it was given.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

BACKBONES = ("classifier-fpn", "mobilenet-v3-fpn", "resnet50-fpn")
HEADS = ("light", "standard", "tiny")
COCO_SIDE = 800
REFINES = ("none", "superpixels", "proposals")
TTAS = ("none", "flip")


@dataclass
class StudentSettings:
    """``backbone``: :data:`BACKBONES` — ``classifier-fpn``: the model's own classifier
    backbone (``trunk``: its name, :data:`~icn_rt.models.backbones.BACKBONES`) under an FPN,
    started from the classifier's weights, which learnt this data's classes from its tags;
    ``resnet50-fpn`` for accuracy and ``mobilenet-v3-fpn`` for CPUs and Jetson, from
    scratch or ImageNet (``--pretrained``); ``input_size``: the side images are resized to; ``min_score``:
    detections below are dropped (torchvision's ``box_score_thresh``); ``detections``: the
    most per image; ``mask_threshold``: a mask probability at or above it is the object;
    ``nms_iou``: torchvision's per-class box NMS; ``rpn_proposals``: regions kept after the
    RPN's NMS at inference (twice as many in training, and twice that before NMS;
    torchvision's 1000 are for COCO's crowds at 800 pixels); ``roi_samples``: regions per
    image each training step (torchvision: 512); ``frozen``: the backbone started from
    pretrained weights, so its BatchNorm is frozen and its first stages do not train
    (torchvision's way), else everything trains; ``head``: ``standard`` (torchvision's:
    256-channel FPN, box head of 1024 features, mask head of four 256-channel
    convolutions) or ``light`` (a 128-channel FPN on ``classifier-fpn`` — the torchvision
    backbones keep their 256 — a box head of 512 features and two 128-channel mask
    convolutions: on two CPU cores at 128² the FPN, the RPN head and the mask head were
    most of the time, 3.4× and 5× less so) or ``tiny`` (half of light: a 64-channel FPN on
    ``classifier-fpn``, a box head of 256 features, one 64-channel mask convolution: for
    CPUs, where RoIAlign, the box head and the mask head's upsampling cost about half of
    light's time)); ``refine``: ``superpixels`` snaps each pasted mask to the image's
    Felzenszwalb superpixels (``refine_scale``; a superpixel belongs to the mask when at
    least half of it is in it), for edges finer than the 28×28 mask grid; ``proposals``
    replaces each pasted mask by the image's proposal it overlaps most when their IoU is at
    least ``proposal_iou`` (pixel-exact masks where proposals exist: a dataset's, or
    selective search made on the fly); ``none`` keeps the pasted mask. ``contrast_power``:
    an instance's confidence is its detection score × the colour contrast of its final mask
    with a ring around it (:func:`~icn_rt.matching.objectness.mask_contrast`, the
    re-ranking's cue) to this power; 0: the detection score alone. The detector, taught by
    noisy labels, scores fragments and clutter as high as whole objects; the contrast ranks
    whole objects first (chosen on dev in three regimes: docs/student.md).
    ``consensus_power``: with ``refine: proposals``, the confidence is also × the
    consensus of the proposal a mask snapped to (how many of the image's proposals have IoU
    ≥ 0.7 with it, itself among them: :func:`~icn_rt.matching.objectness.consensus`, the
    re-ranking's other cue; 1 for a mask left unsnapped) to this power; 0 (the default):
    off. 0.25 ranked better on dev at IoU 0.75 but lost at IoU 0.5 on a set of unseen
    photographs (docs/student.md), so it is an option, not the default. ``mask_nms``: an
    instance whose final mask has IoU at least this with a more confident one of its class
    is dropped (the box NMS runs before the masks are refined, and detections whose boxes it
    kept apart can snap to one proposal or to one set of superpixels); 0: off. 0.7 (the
    default) ranked higher at IoU 0.5 on the dev splits of five trainings, in every
    refinement (docs/student.md)."""

    backbone: str = "classifier-fpn"
    input_size: int = 256
    min_score: float = 0.05
    detections: int = 100
    mask_threshold: float = 0.5
    nms_iou: float = 0.5
    rpn_proposals: int = 300
    roi_samples: int = 128
    frozen: bool = False
    trunk: str = ""
    head: str = "light"
    refine: str = "none"
    refine_scale: float = 200.0
    proposal_iou: float = 0.3
    contrast_power: float = 0.5
    consensus_power: float = 0.0
    mask_nms: float = 0.7
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTAS:
            raise ValueError(f"unknown student test-time augmentation {self.tta!r}; choose one of {', '.join(TTAS)}")
        if self.refine not in REFINES:
            raise ValueError(f"unknown student mask refinement {self.refine!r}; choose one of {', '.join(REFINES)}")
        if self.refine_scale <= 0:
            raise ValueError(f"refine_scale must be positive, got {self.refine_scale}")
        if not 0 < self.proposal_iou <= 1:
            raise ValueError(f"proposal_iou must be in (0, 1], got {self.proposal_iou}")
        if not 0 <= self.contrast_power <= 8:
            raise ValueError(f"contrast_power must be in [0, 8] (0: the detection score alone), "
                             f"got {self.contrast_power}")
        if not 0 <= self.consensus_power <= 8:
            raise ValueError(f"consensus_power must be in [0, 8] (0: off), got {self.consensus_power}")
        if not 0 <= self.mask_nms <= 1:
            raise ValueError(f"mask_nms must be in [0, 1] (0: off), got {self.mask_nms}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown student backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown student head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.input_size < 32:
            raise ValueError(f"student input size must be at least 32, got {self.input_size}")



def anchor_sizes(input_size: int) -> tuple[int, ...]:
    """torchvision's anchor sizes (32 … 512 at 800 pixels) scaled to ``input_size``."""
    return tuple(max(4, round(s * input_size / COCO_SIDE)) for s in (32, 64, 128, 256, 512))


def build_student(num_classes: int, settings: StudentSettings, pretrained: str | dict | None = None) -> nn.Module:
    """A Mask R-CNN for ``num_classes`` classes (+ background) as ``settings`` say.
    ``pretrained``: the backbone's starting weights — for the torchvision backbones (with
    ``settings.frozen``) ``imagenet`` (torchvision's, downloaded by torchvision on first
    use) or a file (a torchvision ResNet-50 / MobileNetV3-Large state dict, ``.pth`` or
    ``.safetensors``); for ``classifier-fpn`` the classifier backbone's state dict; None:
    random (from scratch, or weights about to be loaded)."""
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet50_Weights
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    from torchvision.ops import misc as misc_nn_ops

    if settings.backbone == "classifier-fpn":
        return _classifier_student(num_classes, settings, pretrained)
    if pretrained and not settings.frozen:
        raise ValueError("a pretrained backbone is frozen in part: build it with StudentSettings(frozen=True)")
    imagenet = pretrained == "imagenet"
    frozen = settings.frozen
    norm = misc_nn_ops.FrozenBatchNorm2d if frozen else nn.BatchNorm2d
    sizes = anchor_sizes(settings.input_size)
    if settings.backbone == "resnet50-fpn":
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=ResNet50_Weights.IMAGENET1K_V1 if imagenet
                                       else None, norm_layer=norm, trainable_layers=3 if frozen else 5)
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
        prefix, head = "", "fc."
    else:
        backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=MobileNet_V3_Large_Weights.
                                      IMAGENET1K_V1 if imagenet else None, fpn=True, norm_layer=norm,
                                      trainable_layers=3 if frozen else 6)
        anchors = AnchorGenerator((sizes,) * 3, ((0.5, 1.0, 2.0),) * 3)
        prefix, head = "features.", "classifier."
    if pretrained and not imagenet:
        _load_backbone(backbone.body, Path(pretrained), prefix, head)
    return _mask_rcnn(backbone, num_classes, settings, anchors)


def _mask_rcnn(backbone: nn.Module, num_classes: int, settings: StudentSettings, anchors) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    ChunkedMaskHeads, ChunkedMaskPredictor = _mask_classes()
    pooler = _pooler_class()

    channels = backbone.out_channels
    # torchvision's standard heads are the ones its MaskRCNN builds when given none (same keys)
    box, mask, convs = {"light": (512, 128, 2), "tiny": (256, 64, 1)}.get(settings.head, (1024, 256, 4))
    heads = {"box_head": TwoMLPHead(channels * 7 * 7, box), "box_predictor": FastRCNNPredictor(box, num_classes + 1),
             "mask_head": ChunkedMaskHeads(channels, [mask] * convs, 1),
             "mask_predictor": ChunkedMaskPredictor(mask, mask, num_classes + 1),
             # torchvision's poolers (levels "0" … "3" of those the backbone has), gathered
             "box_roi_pool": pooler(["0", "1", "2", "3"], 7, 2), "mask_roi_pool": pooler(["0", "1", "2", "3"], 14, 2)}
    side, n = settings.input_size, settings.rpn_proposals
    return MaskRCNN(backbone, None, **heads, min_size=side, max_size=side,
                    image_mean=[0.0] * 3,
                    image_std=[1.0] * 3, rpn_anchor_generator=anchors, rpn_pre_nms_top_n_train=4 * n,
                    rpn_post_nms_top_n_train=2 * n, rpn_pre_nms_top_n_test=2 * n, rpn_post_nms_top_n_test=n,
                    box_batch_size_per_image=settings.roi_samples, box_score_thresh=settings.min_score,
                    box_nms_thresh=settings.nms_iou, box_detections_per_img=settings.detections)


MASK_CHUNK = 16
"""Detections the mask head takes at a time on a CPU at inference: its activations for
a whole batch's detections (tens of MB at 100) fall out of the caches; in chunks of 16 the
light head ran 2.1x faster on 100-160 detections on this project's 2-core CPU (8: the
same, 32: 1.2x). The results are the same to the bit: each detection is computed alone."""


def _chunked(base: type) -> type:
    class Chunked(base):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # not when training, nor on GPUs, nor traced for export (the graph would fix the chunks' count)
            if self.training or torch.jit.is_tracing() or x.device.type != "cpu" or len(x) <= MASK_CHUNK:
                return super().forward(x)
            return torch.cat([super(Chunked, self).forward(part) for part in x.split(MASK_CHUNK)])

    Chunked.__name__ = Chunked.__qualname__ = f"Chunked{base.__name__}"
    Chunked.__doc__ = (f"torchvision's ``{base.__name__}`` (the same weights), on a CPU at inference {MASK_CHUNK} "
                       "detections at a time.")
    return Chunked


@cache
def _pooler_class() -> type:
    """torchvision's ``MultiScaleRoIAlign`` with the levels' results put back in the
    regions' order by one row gather (each region's result is the same to the bit): its
    export form scatters them element by element (``ScatterElements`` over regions ×
    channels × bins, 13 % of onnxruntime's time on the student)."""
    from torchvision.ops import MultiScaleRoIAlign, roi_align
    from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

    class GatheredRoIAlign(MultiScaleRoIAlign):
        def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                    image_shapes: list[tuple[int, int]]) -> torch.Tensor:
            features = _filter_input(x, self.featmap_names)
            if self.scales is None or self.map_levels is None:
                self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                             self.canonical_level)
            rois = _convert_to_roi_format(boxes)
            if len(features) == 1:
                return roi_align(features[0], rois, self.output_size, self.scales[0], self.sampling_ratio)
            levels = self.map_levels(boxes)
            order, parts = [], []
            for level, (feature, scale) in enumerate(zip(features, self.scales)):
                mine = torch.where(levels == level)[0]
                order.append(mine)
                parts.append(roi_align(feature, rois[mine], self.output_size, scale, self.sampling_ratio))
            order = torch.cat(order)
            rank = torch.ones_like(order).cumsum(0) - 1  # arange of a length the export keeps dynamic
            where = torch.zeros_like(order).scatter_(0, order, rank)
            return torch.cat(parts).index_select(0, where)

    return GatheredRoIAlign


@cache
def _mask_classes() -> tuple[type, type]:
    """torchvision's mask head and predictor, chunked (:data:`MASK_CHUNK`)."""
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    return _chunked(MaskRCNNHeads), _chunked(MaskRCNNPredictor)


def _classifier_student(num_classes: int, settings: StudentSettings, trunk_weights: dict | None) -> nn.Module:
    """Mask R-CNN on the classifier's backbone: an FPN over the outputs of its last two
    stages (each stage ends where the next downsamples, and at the end; as torchvision's
    MobileNet FPN, whose finer levels cost more than they gave here), plus torchvision's
    max-pooled level; all of it trains. ``trunk_weights``: the classifier backbone's state
    dict to start from (None: random, or weights about to be loaded)."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN

    from icn_rt.models.backbones import build_backbone

    if not settings.trunk:
        raise ValueError("a classifier-fpn student names its classifier's backbone (StudentSettings.trunk)")
    trunk = build_backbone(settings.trunk)
    if trunk_weights is not None:
        trunk.load_state_dict(trunk_weights)
    ends = _stage_ends(trunk)[-2:]
    channels = [_channels_after(trunk, i) for i in ends]
    width = {"light": 128, "tiny": 64}.get(settings.head, 256)
    backbone = BackboneWithFPN(trunk, {str(i): str(k) for k, i in enumerate(ends)}, channels, width)
    sizes = anchor_sizes(settings.input_size)
    return _mask_rcnn(backbone, num_classes, settings, AnchorGenerator((sizes,) * (len(ends) + 1),
                                                                       ((0.5, 1.0, 2.0),) * (len(ends) + 1)))


def _stage_ends(trunk: nn.Sequential) -> list[int]:
    """Indices of the modules that end a stage: the one before each downsampling (a
    max-pool, or a module with a strided convolution: a ResNet layer) and the last."""
    ends = []
    for i, module in enumerate(trunk):
        downsamples = isinstance(module, nn.MaxPool2d) or any(
            isinstance(m, nn.Conv2d) and m.stride[0] > 1 for m in module.modules())
        if downsamples and i > 0:
            ends.append(i - 1)
    ends.append(len(trunk) - 1)
    return sorted(set(ends))


def _channels_after(trunk: nn.Sequential, index: int) -> int:
    return [m for m in trunk[: index + 1].modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _load_backbone(body: nn.Module, file: Path, prefix: str, head: str) -> None:
    """A torchvision classification network's weights file into the detection backbone's
    ``body`` (keys without ``prefix``; the ``head`` keys are left out)."""
    from icn_rt.errors import InputError

    if not file.is_file():
        raise InputError(file, "backbone weights file not found (--pretrained: 'imagenet' or a weights file)")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(head)}
        missing, unexpected = body.load_state_dict(state, strict=False)
    except Exception as e:  # noqa: BLE001 - a bad file, named in one line
        raise InputError(file, f"cannot load backbone weights ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if missing or unexpected:
        raise InputError(file, f"not the backbone's weights ({len(missing)} keys missing, {len(unexpected)} "
                               "unexpected)")


class StudentGraph(nn.Module):
    """The student as one forward graph for export and for the graph engines: ``images
    [B, 3, S, S]`` (preprocessed) -> ``boxes [N, 4]`` (x1, y1, x2, y2 at S), ``labels
    [N]`` (0-based classes), ``scores [N]``, ``box_masks [N, M, M]`` (probabilities over
    each box, not yet pasted) and ``image [N]`` (which image of the batch), images in
    order, each by descending score. torchvision's Mask R-CNN without its last step
    (pasting each mask into an S × S canvas): the predictor pastes at the image's own
    size, where a detection costs its box's area (in the exported graph the paste was a
    loop over detections: 18 % of onnxruntime's time)."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        net = self.student
        batch, _ = net.transform(list(images.unbind(0)))
        features = net.backbone(batch.tensors)
        proposals, _ = net.rpn(batch, features)
        found, _ = net.roi_heads(features, proposals, batch.image_sizes)
        boxes = torch.cat([f["boxes"] for f in found])
        labels = torch.cat([f["labels"] for f in found]) - 1
        scores = torch.cat([f["scores"] for f in found])
        masks = torch.cat([f["masks"][:, 0] for f in found])
        image = torch.cat([torch.full_like(f["labels"], b) for b, f in enumerate(found)])
        return boxes, labels, scores, masks, image


STUDENT_GRAPH = "student.onnx"
STUDENT_RECORD = "student.onnx.json"
STUDENT_INPUTS = ("images",)
STUDENT_OUTPUTS = ("boxes", "labels", "scores", "box_masks", "image")


def student_graph_file(precision: str = "fp32") -> str:
    """``student.onnx``, or ``student.<precision>.onnx`` for a lower-precision variant
    (``int8``: onnxruntime's form on CPUs, unsigned activations; ``int8.s8``: TensorRT's,
    signed symmetric activations)."""
    return STUDENT_GRAPH if precision == "fp32" else STUDENT_GRAPH.replace(".onnx", f".{precision}.onnx")


def student_plan_file(precision: str = "fp32") -> str:
    """The student's TensorRT plan at ``precision`` (``icn-rt build-engine MODEL --student``)."""
    return f"student.{precision}.plan"


def student_graph_record(record: dict, precision: str, tensorrt: bool = False) -> dict | None:
    """The entry of ``student.onnx.json`` (``record``) for the graph at ``precision``: fp32
    the record itself, fp16 and int8 their variants; ``tensorrt``: the graph TensorRT builds
    (for int8 the signed symmetric form, ``student.int8.s8.onnx``, which its explicit
    quantization requires). None when that graph was not exported."""
    if precision == "fp32":
        return record
    variant = record.get("precisions", {}).get(precision)
    if variant is not None and tensorrt and precision == "int8":
        return variant.get("tensorrt")
    return variant


def read_student_record(directory: Path, precision: str, then: str = " first") -> dict:
    """``student.onnx.json`` of a model directory; an :class:`~icn_rt.errors.InputError`
    naming the export command for ``precision`` (and ``then``, what follows it) when the
    student was never exported."""
    import json

    from icn_rt.errors import InputError

    path = Path(directory) / STUDENT_RECORD
    if not path.is_file():
        raise InputError(path, f"no student graph; run {export_hint(precision)}{then}")
    return json.loads(path.read_text())


def export_hint(precision: str) -> str:
    """The command that exports the student graph at ``precision``."""
    return "`icn-rt export MODEL --student" + {"fp32": "", "fp16": " --precision fp16"}.get(
        precision, f" --precision {precision} --calibration VOCROOT") + "`"
