"""The student's predictor (docs/design.md §7): a batch of images in, instances out, with no
proposals and no backward — one forward of Mask R-CNN (:mod:`icn_rt.models.student`),
eager, as the exported graph on onnxruntime (``icn-rt export MODEL --student``, fp32, fp16
or int8), or as a TensorRT plan (``icn-rt build-engine MODEL --student``), whose outputs'
sizes (the detections) TensorRT learns as it runs.

It answers to the streaming job (:func:`~icn_rt.runtime.infer.infer`) as the pipeline's
:class:`~icn_rt.runtime.predictor.Predictor` does: same staging, same
:class:`~icn_rt.runtime.predictor.Prediction` and
:class:`~icn_rt.runtime.predictor.Instance` (``proposal`` -1, ``peak`` the box's centre,
``value`` the detection score, ``match`` its mask's colour contrast, ``score`` the
detection score × that contrast to ``contrast_power`` — with ``refine: proposals`` also ×
the taken proposal's consensus to ``consensus_power`` — no maps). Each mask is the student's
probabilities over its box (M × M), pasted at the image's own size as torchvision pastes
them (:func:`paste_at`) and cut at ``mask_threshold``; with ``refine: superpixels`` each
is then snapped to the image's superpixels (:func:`snap_to_superpixels`), with ``refine:
proposals`` replaced by the image's proposal it overlaps most (:func:`snap_to_proposals`;
the predictor then needs proposals, as the pipeline does, and ``proposal`` names the one
taken); masks left empty are dropped. With ``tta: flip`` the network also runs on the
batch mirrored left to right and the two passes' detections are fused first
(:func:`fuse_flipped`).
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icn_rt.errors import InputError
from icn_rt.matching.objectness import consensus, mask_contrast
from icn_rt.models.store import load_student, weights_digest
from icn_rt.models.student import (STUDENT_OUTPUTS, StudentGraph, StudentSettings, export_hint, read_student_record,
                                   student_graph_file, student_graph_record, student_plan_file)
from icn_rt.runtime.engines.graphs import torch_autocast
from icn_rt.runtime.predictor import Instance, Prediction, Staged, Staging
from icn_rt.runtime.timing import StageTimes

SHOWN = 0.5
"""The least score of a detection drawn in ``--save-vis`` overlays (the student keeps
detections from 0.05, which mAP ranks; a picture of them all is unreadable)."""


def shown(instances: list[Instance]) -> list[Instance]:
    """The student's instances a picture draws: those scoring at least :data:`SHOWN`."""
    return [i for i in instances if i.score >= SHOWN]

STUDENT_BACKENDS = ("torch", "torch:fp16", "torch:bf16", "onnxruntime", "onnxruntime:fp16", "onnxruntime:int8",
                    "tensorrt", "tensorrt:fp16", "tensorrt:int8")


class StudentPredictor(Staging):
    """Runs the student ``network`` (``settings``, ``classes``) on ``device``; ``engine``:
    the exported graph on an engine backend instead (called as ``engine(images=x)``)."""

    @property
    def needs_proposals(self) -> bool:
        """Only to snap masks to them (``refine: proposals``)."""
        return self.settings.refine == "proposals"

    def __init__(self, network: torch.nn.Module, settings: StudentSettings, classes: tuple[str, ...],
                 device: str | torch.device = "cpu", engine=None, directory: Path | None = None) -> None:
        self.device = torch.device(device)
        self.graph = StudentGraph(network.eval().to(self.device))
        self.settings, self.classes, self.engine, self.directory = settings, tuple(classes), engine, directory
        self._copy_stream = None

    @property
    def input_size(self) -> int:
        return self.settings.input_size

    precision = "fp32"
    """The exported graph's precision (``onnxruntime:int8`` runs ``student.int8.onnx``), or
    eager PyTorch's under autocast (``torch:fp16``, ``torch:bf16``)."""

    @property
    def backend(self) -> str:
        name = "torch" if self.engine is None else self.engine.backend
        return name + ("" if self.precision == "fp32" else f":{self.precision}")

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu", backend: str = "torch",
                 ort_optimization: str = "all", ort_save_optimized: bool = False) -> StudentPredictor:
        """The student of a model directory (``icn-rt train student``) on ``backend``:
        ``torch[:fp16|:bf16]`` (eager, under autocast at that type);
        ``onnxruntime[:fp16|:int8]`` (``student.onnx`` and its variants:
        ``icn-rt export MODEL --student [--precision ...]``); ``tensorrt[:fp16|:int8]`` (the
        plans of ``icn-rt build-engine MODEL --student``)."""
        if backend not in STUDENT_BACKENDS:
            raise ValueError(f"the student runs on {' or '.join(STUDENT_BACKENDS)}, not {backend!r}")
        directory = Path(directory)
        network, settings, classes = load_student(directory, device)
        engine = None
        backend, _, precision = backend.partition(":")
        precision = precision or "fp32"
        if backend == "onnxruntime":
            from icn_rt.runtime.engines.onnxruntime import OnnxRuntimeEngine

            graph = directory / student_graph_file(precision)
            if not graph.is_file():
                raise InputError(graph, f"no student graph; run {export_hint(precision)} first")
            engine = OnnxRuntimeEngine(graph, device, fp16=precision == "fp16", optimization=ort_optimization,
                                       save_optimized=ort_save_optimized)
            if "box_masks" not in engine.outputs:
                raise InputError(graph, "an older student graph (it pastes the masks itself); export it again: "
                                        "`icn-rt export MODEL --student`")
        elif backend == "tensorrt":
            engine = _tensorrt_student(directory, precision, device)
        predictor = cls(network, settings, classes, device, engine, directory)
        predictor.precision = precision
        return predictor

    def fingerprint(self, proposals: Path | None = None) -> dict:
        """What decides an image's results: the weights and settings (not the backend), and
        the proposals' source when masks are snapped to them."""
        from dataclasses import asdict

        source = "none (student)"
        if self.needs_proposals:
            source = str(Path(proposals).resolve()) if proposals is not None else "selective search"
        return {"weights": weights_digest(self.graph), "settings": {"classes": list(self.classes), "student":
                asdict(self.settings)}, "proposals": source}

    def pictures(self, image: np.ndarray, prediction: Prediction) -> dict[str, np.ndarray]:
        """The detections scoring at least :data:`SHOWN` over the image (the results keep
        every detection); the student has no maps to draw."""
        from icn_rt.runtime.visualize import overlay

        return {"overlay": overlay(image, shown(prediction.instances), self.classes)}

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student graph's outputs on ``x [B, 3, S, S]`` (eager, or the engine's graph,
        which takes one image at a time)."""
        if self.engine is None:
            with torch.inference_mode(), torch_autocast(self.device, self.precision):
                return dict(zip(STUDENT_OUTPUTS, self.graph(x)))
        parts = [self.engine(images=x[b: b + 1]) for b in range(len(x))]
        out = {k: torch.cat([p[k].to(self.device) for p in parts]) for k in ("boxes", "labels", "scores", "box_masks")}
        out["image"] = torch.cat([torch.full((len(p["labels"]),), b, dtype=torch.int64, device=self.device)
                                  for b, p in enumerate(parts)])
        return out

    def predict(self, images: list[np.ndarray], proposals: list | None = None,
                inputs: list[np.ndarray] | Staged | None = None, keep_maps: bool = True,
                timer: StageTimes | None = None) -> list[Prediction]:
        """``images``: uint8 RGB ``[H, W, 3]`` each; ``proposals``: each image's
        (:class:`~icn_rt.data.proposals.Proposals`), read only with ``refine: proposals``;
        ``inputs``: as :meth:`~icn_rt.runtime.predictor.Predictor.predict`'s;
        ``keep_maps``: nothing to keep; ``timer``: charged with ``preprocess``, ``student``
        and ``masks``."""
        if not images:
            return []
        if self.needs_proposals and (proposals is None or len(proposals) != len(images)):
            raise ValueError("the student's masks snap to proposals (student.refine: proposals): pass each image's")
        with _stage(timer, "preprocess"):
            x = self.network_input(images, inputs)
        with _stage(timer, "student"):
            out = self.outputs(x)
            if self.settings.tta == "flip":
                out = fuse_flipped(out, self.outputs(x.flip(-1)), self.input_size, self.settings.nms_iou,
                                   self.settings.detections)
        with _stage(timer, "masks"):
            return [self._prediction(image, out, b, proposals[b] if self.needs_proposals else None)
                    for b, image in enumerate(images)]

    def _prediction(self, image: np.ndarray, out: dict[str, torch.Tensor], b: int, props=None) -> Prediction:
        h, w = image.shape[:2]
        mine = out["image"] == b
        scores = out["scores"][mine].float()
        s = self.input_size
        boxes = out["boxes"][mine].float() * torch.tensor([w / s, h / s, w / s, h / s], device=scores.device)
        masks = paste_at(out["box_masks"][mine].float(), boxes, (h, w), self.settings.mask_threshold)
        if self.settings.refine == "superpixels" and len(masks):
            masks = snap_to_superpixels(image, masks, self.settings.refine_scale)
        taken = np.full(len(masks), -1, np.int64)
        if props is not None and len(masks):
            masks, taken = snap_to_proposals(masks, props, self.settings.proposal_iou)
        labels, boxes, detected = out["labels"][mine].cpu().numpy(), boxes.cpu().numpy(), scores.cpu().numpy()
        contrast = np.ones(len(masks))
        if self.settings.contrast_power and len(masks):
            contrast = mask_contrast(image, masks)
        scores = detected * contrast ** self.settings.contrast_power
        if props is not None and self.settings.consensus_power and (taken >= 0).any():
            agreeing = np.ones(len(masks))
            agreeing[taken >= 0] = consensus(props, taken[taken >= 0])
            scores = scores * agreeing ** self.settings.consensus_power
        instances = []
        order = [k for k in np.argsort(-scores, kind="stable") if masks[k].any()]
        if self.settings.mask_nms:
            order = mask_nms(masks, labels, order, self.settings.mask_nms)
        for k in order:
            x1, y1, x2, y2 = boxes[k]
            centre = ((y1 + y2) / 2, (x1 + x2) / 2)
            instances.append(Instance(int(labels[k]), float(scores[k]), masks[k], int(taken[k]), centre,
                                      float(detected[k]), float(contrast[k]), None))
        class_scores = np.zeros(len(self.classes), np.float32)
        for inst in instances:
            class_scores[inst.class_id] = max(class_scores[inst.class_id], inst.score)
        return Prediction(instances, class_scores)


def fuse_flipped(out: dict[str, torch.Tensor], mirrored: dict[str, torch.Tensor], side: int, least_iou: float,
                 most: int) -> dict[str, torch.Tensor]:
    """The student's outputs on a batch (``out``) and on the batch mirrored left to right
    (``mirrored``; boxes in the ``side``-pixel input) as one set of outputs: the mirrored
    pass's boxes and box masks flipped back, then per image the pairs of
    :func:`flip_pairs` each made one detection (boxes, box masks and scores averaged); a
    detection left alone keeps half its score (the other pass gave it none). At most
    ``most`` per image, best score first."""
    boxes = mirrored["boxes"].float().clone()
    boxes[:, 0], boxes[:, 2] = side - mirrored["boxes"][:, 2], side - mirrored["boxes"][:, 0]
    passes = (out, dict(mirrored, boxes=boxes, box_masks=mirrored["box_masks"].flip(-1)))
    fused = {k: [] for k in STUDENT_OUTPUTS}
    for b in torch.cat([o["image"] for o in passes]).unique().tolist():
        mine = [torch.nonzero(o["image"] == b).flatten() for o in passes]
        pairs = flip_pairs(*(o["boxes"][m].float() for o, m in zip(passes, mine)),
                           *(o["labels"][m] for o, m in zip(passes, mine)), passes[0]["scores"][mine[0]], least_iou)
        chosen = []
        for pair in pairs:
            got = [(o, m[k]) for o, m, k in zip(passes, mine, pair) if k >= 0]
            chosen.append({"boxes": sum(o["boxes"][k].float() for o, k in got) / len(got),
                           "box_masks": sum(o["box_masks"][k].float() for o, k in got) / len(got),
                           "scores": sum(o["scores"][k].float() for o, k in got) / 2,
                           "labels": got[0][0]["labels"][got[0][1]],
                           "image": torch.tensor(b, device=out["image"].device)})
        chosen.sort(key=lambda d: -float(d["scores"]))
        for d in chosen[:most]:
            for k in STUDENT_OUTPUTS:
                fused[k].append(d[k])
    if not fused["scores"]:
        return {k: out[k][:0].float() if k in ("boxes", "scores", "box_masks") else out[k][:0] for k in fused}
    return {k: torch.stack(v) for k, v in fused.items()}


def flip_pairs(boxes: torch.Tensor, other_boxes: torch.Tensor, labels: torch.Tensor, other_labels: torch.Tensor,
               scores: torch.Tensor, least_iou: float) -> list[tuple[int, int]]:
    """One image's detections of two passes as pairs of indices ``(i, j)`` (-1: none):
    best score (``scores``, the first pass's) first, each detection of the first pass
    pairs with the unpaired one of the second of its class whose box overlaps it most, at
    IoU at least ``least_iou``; the second pass's detections left unpaired come last."""
    from torchvision.ops import box_iou

    iou = box_iou(boxes, other_boxes)
    iou[(labels[:, None] != other_labels[None]) | (iou < least_iou)] = -1.0
    free, pairs = torch.ones(len(other_boxes), dtype=torch.bool, device=iou.device), []
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        row = torch.where(free, iou[i], torch.full_like(iou[i], -1.0))
        j = int(row.argmax()) if len(row) and row.max() >= 0 else -1
        pairs.append((i, j))
        if j >= 0:
            free[j] = False
    return pairs + [(-1, j) for j in torch.nonzero(free).flatten().tolist()]


def mask_nms(masks: np.ndarray, labels: np.ndarray, order: list[int], least_iou: float) -> list[int]:
    """Per-class greedy mask NMS on the CPU kernels
    (:func:`~icn_rt.matching.instances.suppress`): ``order`` (indices into ``masks bool
    [N, H, W]``, most confident first) less each one whose mask has IoU at least
    ``least_iou`` with a kept one of its class (``labels int [N]``)."""
    from icn_rt.kernels import backend
    from icn_rt.matching.instances import suppress

    kernels, kept = backend("cpu"), set()
    for c in np.unique(labels[order]):
        mine = [k for k in order if labels[k] == c]
        keep, _ = suppress(masks[mine], -np.arange(len(mine), dtype=np.float64), least_iou, kernels)
        kept.update(mine[i] for i in keep)
    return [k for k in order if k in kept]


def snap_to_superpixels(image: np.ndarray, masks: np.ndarray, scale: float) -> np.ndarray:
    """``masks bool [N, H, W]`` snapped to ``image``'s Felzenszwalb superpixels (skimage;
    ``scale``, sigma 0.5, at least 10 pixels each): a superpixel is in a mask when at least
    half of it is; a mask that no superpixel half-fills stays as it was."""
    from skimage.segmentation import felzenszwalb

    segments = felzenszwalb(image, scale=scale, sigma=0.5, min_size=10).ravel()
    count = int(segments.max()) + 1
    sizes = np.bincount(segments, minlength=count)
    out = np.empty_like(masks)
    for k, mask in enumerate(masks):
        cover = np.bincount(segments, weights=mask.ravel(), minlength=count)
        snapped = (2 * cover >= sizes)[segments].reshape(mask.shape)
        out[k] = snapped if snapped.any() else mask
    return out


def snap_to_proposals(masks: np.ndarray, props, least_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """``masks bool [N, H, W]`` each replaced by the proposal (of ``props``, at the masks'
    size) with the highest IoU with it (ties: the first) when that IoU is at least
    ``least_iou``; the others stay as they were -> ``(masks, proposal int64 [N], -1: kept)``.
    Exact, by segment sums in the segment form (no proposal is made into a mask but the
    ones taken)."""
    if tuple(props.shape) != tuple(masks.shape[1:]):
        raise ValueError(f"proposals of a {props.shape[0]}×{props.shape[1]} image for masks of "
                         f"{masks.shape[1]}×{masks.shape[2]}")
    out, taken = masks.copy(), np.full(len(masks), -1, np.int64)
    if len(props) == 0:
        return out, taken
    for k, mask in enumerate(masks):
        iou = props.iou(mask)
        best = int(np.argmax(iou))
        if iou[best] >= least_iou:
            out[k], taken[k] = props.mask(best), best
    return out, taken


def paste_at(box_masks: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """``box_masks [N, M, M]`` (probabilities over each box) and ``boxes [N, 4]`` (x1, y1,
    x2, y2 in the image's pixels) -> ``bool [N, H, W]`` for an image of ``size``: each mask
    pasted as torchvision's ``paste_masks_in_image`` pastes it (padded by one cell, its box
    grown to match and cut to whole pixels, resized bilinearly onto the box) and cut at
    ``threshold``, but written over its box only, not a whole canvas per detection."""
    n = box_masks.shape[0]
    h, w = size
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    m = box_masks.shape[-1]
    padded = F.pad(box_masks, (1, 1, 1, 1))
    scale = (m + 2) / m
    half = (boxes[:, 2:] - boxes[:, :2]) * 0.5 * scale
    centre = (boxes[:, 2:] + boxes[:, :2]) * 0.5
    grown = torch.cat([centre - half, centre + half], 1).to(torch.int64).tolist()
    for k, (x0, y0, x1, y1) in enumerate(grown):
        bw, bh = max(x1 - x0 + 1, 1), max(y1 - y0 + 1, 1)
        c0, c1, r0, r1 = max(x0, 0), min(x1 + 1, w), max(y0, 0), min(y1 + 1, h)
        if c1 <= c0 or r1 <= r0:
            continue
        resized = F.interpolate(padded[k][None, None], size=(bh, bw), mode="bilinear", align_corners=False)[0, 0]
        out[k, r0:r1, c0:c1] = (resized[r0 - y0: r1 - y0, c0 - x0: c1 - x0] >= threshold).cpu().numpy()
    return out


def _tensorrt_student(directory: Path, precision: str, device):
    """The student's TensorRT plan at ``precision`` (``icn-rt build-engine MODEL --student``),
    refused when it was built from another graph than the one exported now, or for another
    GPU or TensorRT version."""
    from icn_rt.runtime.engines.tensorrt import TensorRTEngine

    record = read_student_record(directory, precision,
                                 then=f", then `icn-rt build-engine MODEL --student --precision {precision}`")
    plan = record.get("plans", {}).get(precision)
    plan_path = directory / student_plan_file(precision)
    if plan is None:
        raise InputError(plan_path, f"no student plan; run `icn-rt build-engine MODEL --student --precision "
                                    f"{precision}` first")
    graph = student_graph_record(record, precision, tensorrt=True)
    if graph is None or graph["sha256"] != plan.get("onnx_sha256"):
        raise InputError(plan_path, "built from another student graph than the one exported now; run "
                                    f"`icn-rt build-engine MODEL --student --precision {precision}` again")
    return TensorRTEngine(plan_path, plan, device)


def _stage(timer: StageTimes | None, name: str):
    return timer(name) if timer is not None else nullcontext()
