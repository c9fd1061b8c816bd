"""The student's predictor (DESIGN.md §7): a batch of images in, instances out, with no
proposals and no backward — one forward of Mask R-CNN (:mod:`icn_rt.models.student`),
eager or as the exported graph on onnxruntime (``icn-rt export MODEL --student``).

It answers to the streaming job (:func:`~icn_rt.runtime.infer.infer`) as the pipeline's
:class:`~icn_rt.runtime.predictor.Predictor` does: same staging, same
:class:`~icn_rt.runtime.predictor.Prediction` and
:class:`~icn_rt.runtime.predictor.Instance` (``proposal`` -1, ``peak`` the box's centre,
``value`` and ``match`` the detection score, no maps). Each mask is the student's
probability map at its input side, resized (bilinear) to the image and cut at
``mask_threshold``; masks left empty at the image's size are dropped.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from icn_rt.errors import InputError
from icn_rt.models.store import load_student, weights_digest
from icn_rt.models.student import STUDENT_GRAPH, StudentGraph, StudentSettings
from icn_rt.runtime.predictor import Instance, Prediction, Staged, Staging
from icn_rt.runtime.timing import StageTimes

STUDENT_BACKENDS = ("torch", "onnxruntime")


class StudentPredictor(Staging):
    """Runs the student ``network`` (``settings``, ``classes``) on ``device``; ``engine``:
    the exported graph on an engine backend instead (called as ``engine(images=x)``)."""

    needs_proposals = False

    def __init__(self, network: torch.nn.Module, settings: StudentSettings, classes: tuple[str, ...],
                 device: str | torch.device = "cpu", engine=None, directory: Path | None = None) -> None:
        self.device = torch.device(device)
        self.graph = StudentGraph(network.eval().to(self.device))
        self.settings, self.classes, self.engine, self.directory = settings, tuple(classes), engine, directory
        self._copy_stream = None

    @property
    def input_size(self) -> int:
        return self.settings.input_size

    @property
    def backend(self) -> str:
        return "torch" if self.engine is None else self.engine.backend

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu", backend: str = "torch",
                 ort_optimization: str = "all", ort_save_optimized: bool = False) -> StudentPredictor:
        """The student of a model directory (``icn-rt train student``) on ``backend``:
        ``torch`` (eager) or ``onnxruntime`` (``student.onnx``: ``icn-rt export MODEL
        --student``)."""
        directory = Path(directory)
        network, settings, classes = load_student(directory, device)
        engine = None
        if backend == "onnxruntime":
            from icn_rt.runtime.engines.onnxruntime import OnnxRuntimeEngine

            graph = directory / STUDENT_GRAPH
            if not graph.is_file():
                raise InputError(graph, "no student graph; run `icn-rt export MODEL --student` first")
            # log errors only: the traced mask-pasting loop's output shapes vary, which onnxruntime notes every run
            engine = OnnxRuntimeEngine(graph, device, optimization=ort_optimization, save_optimized=ort_save_optimized,
                                       log_severity=3)
        elif backend != "torch":
            raise ValueError(f"the student runs on {' or '.join(STUDENT_BACKENDS)}, not {backend!r}")
        return cls(network, settings, classes, device, engine, directory)

    def fingerprint(self) -> dict:
        """What decides an image's results: the weights and settings (not the backend)."""
        from dataclasses import asdict

        return {"weights": weights_digest(self.graph), "settings": {"classes": list(self.classes), "student":
                asdict(self.settings)}, "proposals": "none (student)"}

    def outputs(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The student graph's outputs on ``x [B, 3, S, S]`` (eager, or the engine's graph,
        which takes one image at a time)."""
        if self.engine is None:
            with torch.inference_mode():
                return dict(zip(("boxes", "labels", "scores", "masks", "image"), self.graph(x)))
        parts = [self.engine(images=x[b: b + 1]) for b in range(len(x))]
        out = {k: torch.cat([p[k].to(self.device) for p in parts]) for k in ("boxes", "labels", "scores", "masks")}
        out["image"] = torch.cat([torch.full((len(p["labels"]),), b, dtype=torch.int64, device=self.device)
                                  for b, p in enumerate(parts)])
        return out

    def predict(self, images: list[np.ndarray], proposals: list | None = None,
                inputs: list[np.ndarray] | Staged | None = None, keep_maps: bool = True,
                timer: StageTimes | None = None) -> list[Prediction]:
        """``images``: uint8 RGB ``[H, W, 3]`` each; ``proposals``: ignored (the student
        needs none); ``inputs``: as :meth:`~icn_rt.runtime.predictor.Predictor.predict`'s;
        ``keep_maps``: nothing to keep; ``timer``: charged with ``preprocess``, ``student``
        and ``masks``."""
        if not images:
            return []
        with _stage(timer, "preprocess"):
            x = self.network_input(images, inputs)
        with _stage(timer, "student"):
            out = self.outputs(x)
        with _stage(timer, "masks"):
            return [self._prediction(image, out, b) for b, image in enumerate(images)]

    def _prediction(self, image: np.ndarray, out: dict[str, torch.Tensor], b: int) -> Prediction:
        h, w = image.shape[:2]
        mine = out["image"] == b
        scores = out["scores"][mine].float()
        boxes = out["boxes"][mine].float()
        masks = masks_at(out["masks"][mine].float(), (h, w), self.settings.mask_threshold)
        labels, boxes, scores = out["labels"][mine].cpu().numpy(), boxes.cpu().numpy(), scores.cpu().numpy()
        s = self.input_size
        instances = []
        for k in np.argsort(-scores, kind="stable"):
            if not masks[k].any():
                continue
            x1, y1, x2, y2 = boxes[k]
            centre = ((y1 + y2) / 2 * h / s, (x1 + x2) / 2 * w / s)
            instances.append(Instance(int(labels[k]), float(scores[k]), masks[k], -1, centre, float(scores[k]),
                                      float(scores[k]), None))
        class_scores = np.zeros(len(self.classes), np.float32)
        for inst in instances:
            class_scores[inst.class_id] = max(class_scores[inst.class_id], inst.score)
        return Prediction(instances, class_scores)


def masks_at(probs: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """``probs [N, S, S]`` (mask probabilities at the input side, zero away from each
    detection, as torchvision pastes them) -> ``bool [N, H, W]``: bilinearly resized to
    ``size`` (as ``F.interpolate(..., align_corners=False)``) and cut at ``threshold``
    (> 0), each only over the window of the image its nonzero cells can reach, not the
    whole image: a detection costs its own area."""
    n, s = probs.shape[0], probs.shape[-1]
    h, w = size
    out = np.zeros((n, h, w), bool)
    if n == 0:
        return out
    sy, sx = h / s, w / s
    rows, cols = (probs.amax(2) > 0).cpu().numpy(), (probs.amax(1) > 0).cpu().numpy()
    for k in range(n):
        ry, rx = np.flatnonzero(rows[k]), np.flatnonzero(cols[k])
        if len(ry) == 0:
            continue
        # output pixel i reads source cells around (i + 0.5) / scale - 0.5: it is zero
        # unless that lies within a cell of the nonzero ones
        r0, r1 = max(0, int(np.floor((ry[0] - 0.5) * sy - 0.5))), min(h, int(np.ceil((ry[-1] + 1.5) * sy - 0.5)) + 1)
        c0, c1 = max(0, int(np.floor((rx[0] - 0.5) * sx - 0.5))), min(w, int(np.ceil((rx[-1] + 1.5) * sx - 0.5)) + 1)
        # source coordinates of the window's pixel centres, as interpolate computes them
        ys = ((torch.arange(r0, r1, dtype=torch.float32) + 0.5) / sy - 0.5).clamp(min=0)
        xs = ((torch.arange(c0, c1, dtype=torch.float32) + 0.5) / sx - 0.5).clamp(min=0)
        grid = torch.stack(torch.meshgrid((2 * ys + 1) / s - 1, (2 * xs + 1) / s - 1, indexing="ij")[::-1], -1)
        window = F.grid_sample(probs[k][None, None], grid[None].to(probs.device), mode="bilinear",
                               padding_mode="border", align_corners=False)[0, 0]
        out[k, r0:r1, c0:c1] = (window >= threshold).cpu().numpy()
    return out


def _stage(timer: StageTimes | None, name: str):
    return timer(name) if timer is not None else nullcontext()
