"""The predictor: a batch of images (+ their proposals) in, instances out (docs/design.md §1
steps 2, 3, 7, 8). The one place that knows image sizes. It wraps a loaded
:class:`~icn_rt.models.store.Model` and runs its networks eagerly or as exported graphs
on an engine backend.

images -> preprocess -> recorded forward -> peaks -> PRMs (one batched backward) ->
ICN enhancement (T steps, when the model has an ICN and ``icn.steps`` > 0) -> best
proposal per peak -> mask NMS -> instances (-> ranked again by their agreement with the
model's student, where it has one and ``instances.student_agreement`` > 0; or, with
``instances.lead`` ``student``, the student's instances ranked by their agreement with these).

Confidence, NMS and the student's agreement: :mod:`icn_rt.matching.instances`; a
suppressed instance's PRM is added into the one that suppressed it, as in PRM.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from icn_rt import kernels
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.data.proposals import Proposals
from icn_rt.eval.diagnosis import same_class_iou
from icn_rt.matching import confidence, match, suppress
from icn_rt.models.peaks import Peaks
from icn_rt.models.prm import NaiveMaps
from icn_rt.models.store import STUDENT_WEIGHTS, Model, load_model, weights_digest
from icn_rt.runtime.engines import (
    TORCH_PRECISIONS,
    GraphEngines,
    pick_backend,
    split_backend,
)
from icn_rt.runtime.engines.graphs import CUDA_GRAPH_BACKENDS, torch_autocast
from icn_rt.runtime.engines.onnxruntime import ORT_OPTIMIZATION
from icn_rt.runtime.timing import StageTimes

if TYPE_CHECKING:
    from icn_rt.runtime.student import StudentPredictor


@dataclass
class Instance:
    """One instance: ``class_id`` (0-based), ``score`` (the confidence), ``mask: bool [H, W]``
    at the image's size, ``proposal`` (index into the image's proposals), ``peak`` (y, x)
    in image pixels, ``value`` (class map at the peak), ``match`` (matching score),
    ``prm: float [S, S]`` (its PRM plus those it suppressed), ``enhanced: float [S, S]``
    (its ICN-enhanced map, in [0, 1]; None without the ICN). Both None when the maps are
    not kept (:meth:`Predictor.predict`'s ``keep_maps``)."""

    class_id: int
    score: float
    mask: np.ndarray
    proposal: int
    peak: tuple[float, float]
    value: float
    match: float
    prm: np.ndarray | None
    enhanced: np.ndarray | None = None


@dataclass
class Prediction:
    """One image's result: ``instances`` by descending score, ``class_scores: float [C]``;
    ``voters``: where the student led, the pipeline's own instances that ranked its (for
    pictures: they carry the PRMs)."""

    instances: list[Instance]
    class_scores: np.ndarray
    voters: list[Instance] | None = None


@dataclass
class Staged:
    """A batch's network input on its way to the device (:meth:`Predictor.stage`): ``x:
    float [B, 3, S, S]`` there, ``ready``: the CUDA event its copy records (None: already there)."""

    x: torch.Tensor
    ready: torch.cuda.Event | None = None


@dataclass
class _Peaks:
    """A batch's peaks where the matching reads them: ``image, cls, y, x: int64 [K]``,
    ``value: float64 [K]``, ``class_maps: float [B, C, h, w]`` on the host; ``matched``: the
    maps to match (the ICN's when ``enhanced``), where the kernels read them; ``prms``,
    ``enhanced_maps``: the naive and the ICN's maps on the host for the instances (None: not kept)."""

    image: np.ndarray
    cls: np.ndarray
    y: np.ndarray
    x: np.ndarray
    value: np.ndarray
    class_maps: np.ndarray
    matched: object
    enhanced: bool
    prms: np.ndarray | None
    enhanced_maps: np.ndarray | None


class Staging:
    """What the jobs (``infer``, ``serve``, ``bench``, the Ray job) ask of a predictor, the
    pipeline's :class:`Predictor` and the student's alike, so that none of them tells the
    two apart: ``classes``, ``device``, ``input_size``, ``backend``; whether the loaders
    make proposals for it (``needs_proposals``); :meth:`stage` and ``predict`` (a batch of
    images in, a :class:`Prediction` each out); :meth:`fingerprint` (what decides its
    results, for resuming a job); :meth:`pictures` (what ``--save-vis`` draws). Here also:
    getting a batch's network input onto the device."""

    device: torch.device
    input_size: int
    classes: tuple[str, ...]
    needs_proposals: bool = True
    _copy_stream: torch.cuda.Stream | None = None

    def fingerprint(self, proposals: Path | None) -> dict:
        """What decides an image's results: the weights, every setting and the proposals'
        source (the backend does not: every backend gives the same instances)."""
        raise NotImplementedError

    def pictures(self, image: np.ndarray, prediction: Prediction) -> dict[str, np.ndarray]:
        """``{suffix: RGB picture}`` of one image's prediction, written as ``<id>_<suffix>.png``."""
        raise NotImplementedError

    def network_input(self, images: list[np.ndarray], inputs: list[np.ndarray] | Staged | None = None) -> torch.Tensor:
        """The batch on the device, ``float [B, 3, S, S]``: ``inputs`` (already preprocessed
        by loader workers: :func:`~icn_rt.data.preprocess.preprocess_array`; or staged by
        :meth:`stage`) or ``images`` preprocessed here. On a GPU the batch goes through
        pinned memory, copied without blocking the host."""
        if isinstance(inputs, Staged):
            return self._arrived(inputs)
        if inputs is None:
            x = preprocess_batch(images, self.input_size)
        else:
            x = torch.from_numpy(np.stack(inputs))
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def stage(self, inputs: list[np.ndarray]) -> Staged:
        """Start a batch's network inputs on their way to the device and return at once.
        On a GPU the copy runs from pinned memory on a copy stream of its own, so staging
        the next batch before :meth:`predict` on this one overlaps that copy with this
        batch's compute; :meth:`predict` given the :class:`Staged` batch waits on the GPU
        (not the host) for its copy. Elsewhere it is the batch as a tensor."""
        x = torch.from_numpy(np.stack(inputs))
        if self.device.type != "cuda":
            return Staged(x.to(self.device))
        if self._copy_stream is None:
            self._copy_stream = torch.cuda.Stream(self.device)
        host = x.pin_memory()  # the caching host allocator keeps it until the copy is done
        with torch.cuda.stream(self._copy_stream):
            on_device = host.to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._copy_stream)
        return Staged(on_device, ready)

    def _arrived(self, staged: Staged) -> torch.Tensor:
        """The staged input, with the computing stream told to wait for its copy and the
        allocator told that this stream uses it (so its memory is not reused early)."""
        if staged.ready is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(staged.ready)
            staged.x.record_stream(stream)
        return staged.x


class Runner(Protocol):
    """Where a :class:`Predictor` runs the model's networks (as Polygraphy's runners: one
    per backend, the predictor talks to nothing else): ``name`` (``torch:bf16``,
    ``onnxruntime:int8``, ``tensorrt+cuda-graph``), ``graphs`` (the exported graphs' engines,
    None in eager PyTorch), the PRM stage (the batch's input in, its class maps, peaks and
    PRMs out) and the ICN's T steps."""

    name: str
    graphs: GraphEngines | None

    def naive_maps(self, x: torch.Tensor) -> NaiveMaps: ...

    def enhance(self, naive: NaiveMaps) -> torch.Tensor: ...


class EagerRunner:
    """The model's networks in eager PyTorch, under :func:`torch.autocast` at ``precision``
    (``bf16`` or ``fp16``; peaks, thresholds and matching stay fp32; ``fp32``: no autocast)."""

    graphs = None

    def __init__(self, model: Model, device: torch.device, precision: str = "fp32") -> None:
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"unknown torch precision {precision!r}; choose one of {', '.join(TORCH_PRECISIONS)}")
        self.model, self.device, self.precision = model, device, precision
        self.name = "torch" + ("" if precision == "fp32" else f":{precision}")

    def naive_maps(self, x: torch.Tensor) -> NaiveMaps:
        with torch_autocast(self.device, self.precision):
            return self.model.naive_maps(x)

    def enhance(self, naive: NaiveMaps) -> torch.Tensor:
        with torch_autocast(self.device, self.precision):
            return self.model.enhance(naive).float()


class GraphRunner:
    """The model's exported graphs on an engine backend (:class:`GraphEngines`: onnxruntime
    or TensorRT, at the graphs' precision)."""

    def __init__(self, model: Model, graphs: GraphEngines) -> None:
        self.model, self.graphs = model, graphs
        self.name = (graphs.backend + ("" if graphs.precision == "fp32" else f":{graphs.precision}")
                     + ("+cuda-graph" if graphs.cuda_graph else ""))

    def naive_maps(self, x: torch.Tensor) -> NaiveMaps:
        """The PRM graph's outputs as the eager path's: its peaks are the batch's, image by
        image, in raster order."""
        out = {name: t.to(x.device) for name, t in self.graphs.prm(images=x).items()}
        peaks = Peaks(out["peak_image"].long(), out["peak_class"].long(), out["peak_y"].long(),
                      out["peak_x"].long(), out["peak_value"].float())
        return NaiveMaps(x, out["maps"], out["scores"], peaks, out["prms"])

    def enhance(self, naive: NaiveMaps) -> torch.Tensor:
        """The ICN graph, ``chunk`` peaks at a time (a model exported without one: eager)."""
        if self.graphs.icn is None:
            return self.model.enhance(naive).float()
        image_of, chunk = naive.peaks.image, self.model.icn_settings.chunk
        out = [self.graphs.icn(images=naive.x[image_of[s: s + chunk]], prms=naive.prms[s: s + chunk])["enhanced"]
               for s in range(0, len(image_of), chunk)]
        return torch.cat(out).to(naive.x.device) if out else naive.prms


class Predictor(Staging):
    """Runs ``model`` on ``device``, its networks on a :class:`Runner`: the exported
    ``graphs`` on an engine backend (:meth:`from_dir` opens them), else eager PyTorch at
    ``precision`` (:class:`EagerRunner`). ``student``: the model's student, which leads (its
    instances ranked by the pipeline's, ``instances.lead``) or ranks the pipeline's
    (``instances.student_agreement``; :func:`agreeing_student`); None: the pipeline alone."""

    def __init__(self, model: Model, device: str | torch.device = "cpu", graphs: GraphEngines | None = None,
                 precision: str = "fp32", student: StudentPredictor | None = None) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.student = student
        self.kernels = kernels.ops(self.device)
        self.runner: Runner = (GraphRunner(self.model, graphs) if graphs is not None
                               else EagerRunner(self.model, self.device, precision))
        self._copy_stream: torch.cuda.Stream | None = None

    @property
    def backend(self) -> str:
        """Where the networks run: the runner's name (``torch``, ``onnxruntime:int8``, ...)."""
        return self.runner.name

    @property
    def graphs(self) -> GraphEngines | None:
        """The exported graphs' engines the networks run on (None: eager PyTorch)."""
        return self.runner.graphs

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.classes

    @property
    def input_size(self) -> int:
        return self.model.input_size

    @property
    def enhances(self) -> bool:
        """Whether PRMs go through the ICN."""
        return self.model.enhances

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu", backend: str = "torch",
                 cuda_graph: bool = False, ort_optimization: str = "all", ort_save_optimized: bool = False,
                 agreement: bool = True, **overrides) -> Predictor:
        """Load a model directory (:func:`~icn_rt.models.store.load_model`); its config gives
        every setting unless ``overrides`` (``peaks=``, ``prm=``, ``matching=``,
        ``instances=``, ``icn_steps=``) replace a section or T; its student, where it has one,
        leads or ranks the instances (:func:`agreeing_student`; ``agreement`` False: neither,
        whatever the config says, as when the pipeline labels its student's data). ``backend``: ``torch``
        (eager), ``onnxruntime`` or ``tensorrt`` (the exported graphs: ``icn-rt export``,
        ``icn-rt build-engine``) or ``auto`` (:func:`~icn_rt.runtime.engines.pick_backend`);
        a graph backend may name a precision, ``onnxruntime:int8`` (``icn-rt export
        --precision``), and so may torch (``torch:bf16``: autocast). ``cuda_graph``: TensorRT
        replays its plans as CUDA graphs (:class:`~icn_rt.runtime.engines.GraphEngines`);
        ``ort_optimization``, ``ort_save_optimized``: onnxruntime's session options."""
        if ort_optimization not in ORT_OPTIMIZATION:
            raise ValueError(f"unknown onnxruntime optimisation level {ort_optimization!r}; choose one of "
                             f"{', '.join(ORT_OPTIMIZATION)}")
        backend, precision = split_backend(backend)
        predictor = cls(load_model(directory, device).replace(**overrides), device)
        backend = pick_backend(backend, predictor.device, directory)
        if backend == "torch":
            if cuda_graph:
                raise ValueError(CUDA_GRAPH_BACKENDS)
            predictor.runner = EagerRunner(predictor.model, predictor.device, precision or "fp32")
        else:
            predictor.runner = GraphRunner(predictor.model, GraphEngines(
                predictor.model, backend, predictor.device, precision, cuda_graph, ort_optimization, ort_save_optimized))
        if agreement:
            predictor.student = agreeing_student(predictor.model, predictor.device)
        return predictor

    def fingerprint(self, proposals: Path | None) -> dict:
        model = self.model
        settings = {"classes": list(model.classes), "peaks": asdict(model.peaks), "prm": asdict(model.prm),
                    "matching": asdict(model.matching), "instances": asdict(model.instances),
                    "icn": asdict(model.icn_settings) if model.enhances else None}
        if self.student is not None:
            student = self.student.fingerprint()
            settings["student"] = {"weights": student["weights"], **student["settings"]}
        else:  # no student: its agreement is off and the pipeline leads, whatever the settings
            settings["instances"].update(student_agreement=0.0, lead="teacher")
        return {"weights": weights_digest(model.classifier, model.icn), "settings": json.loads(json.dumps(settings)),
                "proposals": str(proposals.resolve()) if proposals is not None else "selective search"}

    def pictures(self, image: np.ndarray, prediction: Prediction) -> dict[str, np.ndarray]:
        """The instances over the image, and each one's PRM (with the ICN, its enhanced map
        too); where the student led, its instances scoring at least the student's
        :data:`~icn_rt.runtime.student.SHOWN` (the results keep every one) and the PRMs of the
        pipeline's instances that ranked them."""
        from icn_rt.runtime.student import shown
        from icn_rt.runtime.visualize import overlay, prm_strip

        led = prediction.voters is not None
        drawn = shown(prediction.instances) if led else prediction.instances
        mapped = prediction.voters if led else prediction.instances
        return {"overlay": overlay(image, drawn, self.classes),
                "prm": prm_strip(image, [i for i in mapped if i.prm is not None])}

    def naive_maps(self, images: list[np.ndarray], inputs: list[np.ndarray] | Staged | None = None,
                   timer: StageTimes | None = None) -> NaiveMaps:
        """Preprocess, one recorded forward, peaks, one batched backward (or the PRM graph).
        ``images``: uint8 RGB; ``inputs``: see :meth:`network_input`; ``timer``: charged
        with the ``preprocess`` and ``prm`` stages."""
        with _stage(timer, "preprocess"):
            x = self.network_input(images, inputs)
        with _stage(timer, "prm"):
            return self.runner.naive_maps(x)

    def enhance(self, naive: NaiveMaps) -> torch.Tensor:
        """The ICN's T steps on every peak's PRM, ``chunk`` peaks at a time -> ``float [K, S, S]``."""
        return self.runner.enhance(naive)

    def predict(self, images: list[np.ndarray], proposals: list[Proposals],
                inputs: list[np.ndarray] | Staged | None = None, keep_maps: bool = True,
                timer: StageTimes | None = None) -> list[Prediction]:
        """``images``: uint8 RGB ``[H, W, 3]`` each; ``proposals``: one per image, at its size;
        ``inputs``: their network inputs when a loader made them, or those staged on the
        device (:meth:`network_input`, :meth:`stage`). ``keep_maps``: give each instance its
        PRM and enhanced map (for pictures); off, with the CUDA kernels no map leaves the
        GPU: only instances do. ``timer``: charged with the time of each stage."""
        if not images:
            return []
        naive = self.naive_maps(images, inputs, timer)
        with _stage(timer, "icn"):
            enhanced = self.enhance(naive) if self.model.enhances else None
        return self.instances(images, proposals, naive, enhanced, keep_maps, timer)

    def instances(self, images: list[np.ndarray], proposals: list[Proposals], naive: NaiveMaps,
                  enhanced: torch.Tensor | None, keep_maps: bool = True,
                  timer: StageTimes | None = None) -> list[Prediction]:
        """:meth:`predict` from the batch's maps already made (:meth:`naive_maps`,
        :meth:`enhance`): matching, confidence and NMS per image, then the student's agreement."""
        peaks = self._where_matched(naive, enhanced, keep_maps)
        scores = naive.scores.cpu().numpy()
        found = [Prediction(self._instances(b, image, props, peaks, timer), scores[b])
                 for b, (image, props) in enumerate(zip(images, proposals))]
        if self.student is None:
            return found
        with _stage(timer, "student"):
            theirs = self.student.predict(images, proposals if self.student.needs_proposals else None)
        return [self._agreed(p, s) for p, s in zip(found, theirs)]

    def _agreed(self, prediction: Prediction, student: Prediction) -> Prediction:
        """``prediction``'s instances, each confidence × (1 + λ × its agreement with the
        student's instances), ranked again (ties: the order they had); with ``instances.lead``
        ``student``, the student's instances ranked by their agreement with the pipeline's."""
        settings = self.model.instances
        if settings.lead == "student":
            return Prediction(ranked_by(student.instances, prediction.instances, settings.teacher_agreement,
                                        weighted=False), prediction.class_scores, prediction.instances)
        return Prediction(ranked_by(prediction.instances, student.instances, settings.student_agreement),
                          prediction.class_scores)

    def _where_matched(self, naive: NaiveMaps, enhanced: torch.Tensor | None, keep_maps: bool) -> _Peaks:
        """The batch's peaks and maps where matching and the instances read them: the CUDA
        kernels match on the device, from the maps where they are; the maps come to the
        host for the CPU kernels, and for the instances when they keep maps."""
        on_host = keep_maps or self.kernels.device is None
        prms = naive.prms.cpu().numpy() if on_host else None
        enhanced_maps = enhanced.cpu().numpy() if enhanced is not None and on_host else None
        matched = naive.prms if enhanced is None else enhanced
        if self.kernels.device is None:
            matched = prms if enhanced_maps is None else enhanced_maps
        p = naive.peaks
        image, cls, y, x, value = (t.cpu().numpy() for t in (p.image, p.cls, p.y, p.x, p.value))
        return _Peaks(image, cls, y, x, value.astype(np.float64), naive.maps.cpu().numpy(), matched,
                      enhanced is not None, prms if keep_maps else None, enhanced_maps if keep_maps else None)

    def _instances(self, b: int, image: np.ndarray, props: Proposals, peaks: _Peaks,
                   timer: StageTimes | None) -> list[Instance]:
        """Instances of image ``b`` of the batch from its peaks."""
        idx = np.flatnonzero(peaks.image == b)
        maps = peaks.class_maps[b]
        cls, values = peaks.cls[idx], peaks.value[idx]
        settings = self.model.instances
        with _stage(timer, "matching"):
            best, match_scores, quality = match(peaks.matched[idx], maps[cls], props, self.model.matching,
                                                enhanced=peaks.enhanced, kernels=self.kernels, image=image)
        found = np.flatnonzero(best >= 0)
        if len(found) == 0:
            return []
        score = confidence(settings, values, match_scores, quality)
        with _stage(timer, "nms"):
            masks = props.to_masks(best[found])
            keep, owner = suppress(masks, score[found], settings.nms_iou, self.kernels)
        h, w = image.shape[:2]
        mh, mw = maps.shape[-2:]
        result = []
        for j in keep:
            i = found[j]
            merged = peaks.prms[idx[found[owner == j]]].sum(0) if peaks.prms is not None else None
            result.append(Instance(int(cls[i]), float(score[i]), masks[j], int(best[i]),
                                   ((peaks.y[idx[i]] + 0.5) * h / mh, (peaks.x[idx[i]] + 0.5) * w / mw),
                                   float(values[i]), float(match_scores[i]), merged,
                                   peaks.enhanced_maps[idx[i]] if peaks.enhanced_maps is not None else None))
        return result


def _stage(timer: StageTimes | None, name: str) -> AbstractContextManager:
    return timer(name) if timer is not None else nullcontext()


def agreeing_student(model: Model, device: str | torch.device = "cpu") -> StudentPredictor | None:
    """The student of ``model``'s directory on ``device`` (eager PyTorch) where the directory
    has one and the instances need it (``student_agreement`` > 0, or the student leads: then
    its masks snap to the pipeline's proposals unless ``lead_refine`` is ``own``); else None."""
    directory = model.directory
    if not model.instances.needs_student or directory is None:
        return None
    if not (Path(directory) / STUDENT_WEIGHTS).is_file():
        return None
    from icn_rt.runtime.student import StudentPredictor

    student = StudentPredictor.from_dir(directory, device)
    if model.instances.lead == "student" and model.instances.lead_refine == "proposals":
        student.settings = replace(student.settings, refine="proposals")  # the pipeline has each image's
    return student


def agreement(masks: np.ndarray, classes: np.ndarray, student_masks: np.ndarray, student_classes: np.ndarray,
              student_scores: np.ndarray) -> np.ndarray:
    """Each instance's agreement with the student: for ``masks: bool [N, H, W]`` of
    ``classes: int [N]``, the highest IoU × score over the student's instances of the same
    class (``student_masks: bool [M, H, W]``, ``student_classes: int [M]``,
    ``student_scores: float [M]``); 0 where it has none -> ``float64 [N]``."""
    if len(masks) == 0 or len(student_masks) == 0:
        return np.zeros(len(masks))
    iou = same_class_iou(masks, classes, student_masks, student_classes)
    return (iou * np.asarray(student_scores, np.float64)[None]).max(1)


def ranked_by(mine: list[Instance], theirs: list[Instance], weight: float, weighted: bool = True) -> list[Instance]:
    """``mine``, each confidence × (1 + ``weight`` × its :func:`agreement` with ``theirs``
    (``weighted`` False: their scores taken as 1, for confidences of another scale), ranked
    again (ties: the order they had)."""
    if not mine:
        return []

    def stack(instances):
        return np.stack([i.mask for i in instances]) if instances else np.zeros((0, *mine[0].mask.shape), bool)

    scores = np.array([i.score if weighted else 1.0 for i in theirs])
    agree = agreement(stack(mine), np.array([i.class_id for i in mine]), stack(theirs),
                      np.array([i.class_id for i in theirs], np.int64), scores)
    scored = [replace(i, score=i.score * (1.0 + weight * float(a))) for i, a in zip(mine, agree)]
    return [scored[k] for k in np.argsort([-i.score for i in scored], kind="stable")]
