"""The predictor: a batch of images (+ their proposals) in, instances out (DESIGN.md §1
steps 2, 3, 7, 8). The one place that knows image sizes.

images -> preprocess -> recorded forward -> peaks -> PRMs (one batched backward) ->
ICN enhancement (T steps, when the model has an ICN and ``icn.steps`` > 0) -> best
proposal per peak -> mask NMS -> instances.

Confidence and NMS: :mod:`icn_rt.matching.instances`; a suppressed instance's PRM is
added into the one that suppressed it, as in PRM.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from icn_rt.data.preprocess import preprocess
from icn_rt.data.proposals import Proposals
from icn_rt import kernels
from icn_rt.models.classifier import PeakClassifier
from icn_rt.models.icn import ICN, ICNSettings, enhance
from icn_rt.models.peaks import Peaks, PeakSettings, find_peaks
from icn_rt.models.prm import PRMSettings, peak_response_maps, recorded_forward
from icn_rt.models.store import load_classifier, load_icn, settings_from
from icn_rt.runtime.engines import GraphEngines, pick_backend
from icn_rt.matching import InstanceSettings, MatchingSettings, confidence, match, suppress
from icn_rt.runtime.stages import StageTimes

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
    """One image's result: ``instances`` by descending score, ``class_scores: float [C]``."""

    instances: list[Instance]
    class_scores: np.ndarray


@dataclass
class Staged:
    """A batch's network input on its way to the device (:meth:`Predictor.stage`): ``x:
    float [B, 3, S, S]`` there, ``ready``: the CUDA event its copy records (None: already there)."""

    x: torch.Tensor
    ready: torch.cuda.Event | None = None


@dataclass
class NaiveMaps:
    """The PRM stage of a batch: ``x: float [B, 3, S, S]`` (the network input), ``maps:
    float [B, C, h, w]`` (class maps), ``scores: float [B, C]``, ``peaks``, ``prms: float [K, S, S]``."""

    x: torch.Tensor
    maps: torch.Tensor
    scores: torch.Tensor
    peaks: Peaks
    prms: torch.Tensor


class Predictor:
    """``icn``: the ICN (None: naive PRMs only) and ``icn_settings`` (its ``steps`` T; 0
    also means naive PRMs). ``graphs``: run the networks as exported graphs on an engine
    backend instead of eager PyTorch (:meth:`from_dir` opens them). Eager on the CPU, the
    first prediction puts the networks' weights channels-last (oneDNN runs them about
    1.7× faster so)."""

    def __init__(self, model: PeakClassifier, classes: tuple[str, ...], peaks: PeakSettings | None = None,
                 prm: PRMSettings | None = None, matching: MatchingSettings | None = None,
                 instances: InstanceSettings | None = None, device: str | torch.device = "cpu",
                 icn: ICN | None = None, icn_settings: ICNSettings | None = None,
                 graphs: GraphEngines | None = None) -> None:
        self.model = model.eval().to(device)
        self.icn = icn.eval().to(device) if icn is not None else None
        self.icn_settings = icn_settings or (icn.settings if icn is not None else ICNSettings())
        self.classes = tuple(classes)
        self.peaks = peaks or PeakSettings()
        self.prm = prm or PRMSettings()
        self.matching = matching or MatchingSettings()
        self.instances = instances or InstanceSettings()
        self.device = torch.device(device)
        self.kernels = kernels.ops(self.device)
        self.graphs = graphs
        self.stages: StageTimes | None = None  # set one to time the stages of each call
        self._layout_set = False
        self._copy_stream: torch.cuda.Stream | None = None

    def _stage(self, name: str) -> AbstractContextManager:
        return self.stages(name) if self.stages is not None else nullcontext()

    @property
    def backend(self) -> str:
        """Where the networks run: ``torch`` (eager) or the graph engines' backend."""
        return self.graphs.backend if self.graphs is not None else "torch"

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device = "cpu", backend: str = "torch",
                 **overrides) -> Predictor:
        """Load a model directory (with its ICN when it has one); its config gives every
        setting unless ``overrides`` (``peaks=``, ``prm=``, ``matching=``, ``instances=``,
        ``icn_steps=``) replace a section or T. ``backend``: ``torch`` (eager), ``onnxruntime``
        or ``tensorrt`` (the exported graphs: ``icn-rt export``, ``icn-rt build-engine``) or
        ``auto`` (:func:`~icn_rt.runtime.engines.pick_backend`)."""
        model, config = load_classifier(directory, device)
        sections = {"peaks": PeakSettings, "prm": PRMSettings, "matching": MatchingSettings,
                    "instances": InstanceSettings}
        kwargs = {name: overrides.get(name) or settings_from(config, name, kind, directory)
                  for name, kind in sections.items()}
        icn = load_icn(directory, config, device)
        icn_settings = icn.settings if icn is not None else ICNSettings(steps=0)
        if overrides.get("icn_steps") is not None:
            icn_settings = replace(icn_settings, steps=overrides["icn_steps"])
        predictor = cls(model, tuple(config["classes"]), device=device, icn=icn, icn_settings=icn_settings, **kwargs)
        backend = pick_backend(backend, predictor.device, directory)
        if backend != "torch":
            settings = {"peaks": asdict(predictor.peaks), "prm": asdict(predictor.prm),
                        "icn": asdict(predictor.icn_settings)}
            predictor.graphs = GraphEngines(directory, backend, predictor.device, settings, predictor.enhances)
        return predictor

    @property
    def input_size(self) -> int:
        return self.model.settings.input_size

    @property
    def enhances(self) -> bool:
        """Whether PRMs go through the ICN."""
        return self.icn is not None and self.icn_settings.steps > 0

    def network_input(self, images: list[np.ndarray], inputs: list[np.ndarray] | Staged | None = None) -> torch.Tensor:
        """The batch on the device, ``float [B, 3, S, S]``: ``inputs`` (already preprocessed
        by loader workers: :func:`~icn_rt.data.preprocess.preprocess_array`; or staged by
        :meth:`stage`) or ``images`` preprocessed here. On a GPU the batch goes through
        pinned memory, copied without blocking the host."""
        if isinstance(inputs, Staged):
            return self._arrived(inputs)
        if inputs is None:
            x = torch.stack([preprocess(im, self.input_size) for im in images])
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

    def naive_maps(self, images: list[np.ndarray], inputs: list[np.ndarray] | Staged | None = None) -> NaiveMaps:
        """Preprocess, one recorded forward, peaks, one batched backward (or the PRM graph).
        ``images``: uint8 RGB; ``inputs``: see :meth:`network_input`."""
        with self._stage("preprocess"):
            x = self.network_input(images, inputs)
        with self._stage("prm"):
            if self.graphs is not None:
                return self._graph_maps(x)
            self._eager_layout()
            rec = recorded_forward(self.model, x)
            peaks = find_peaks(rec.maps, rec.scores, self.peaks, self.model.settings.sub_pixel)
            prms = peak_response_maps(self.model, rec, peaks, self.prm)
            return NaiveMaps(x, rec.maps.detach(), rec.scores.detach(), peaks, prms)

    def _eager_layout(self) -> None:
        if not self._layout_set and self.device.type == "cpu":
            for net in (self.model, self.icn):
                if net is not None:
                    net.to(memory_format=torch.channels_last)
        self._layout_set = True

    def _graph_maps(self, x: torch.Tensor) -> NaiveMaps:
        """The PRM graph's fixed slots -> the valid peaks in order, as the eager path lists them."""
        out = self.graphs.prm(images=x)
        valid = out["peak_valid"].to(self.device)
        image, _ = valid.nonzero(as_tuple=True)
        peaks = Peaks(image, out["peak_class"].to(self.device)[valid].long(), out["peak_y"].to(self.device)[valid].long(),
                      out["peak_x"].to(self.device)[valid].long(), out["peak_value"].to(self.device)[valid])
        return NaiveMaps(x, out["maps"].to(self.device), out["scores"].to(self.device), peaks,
                         out["prms"].to(self.device)[valid])

    def enhance(self, naive: NaiveMaps) -> torch.Tensor:
        """The ICN's T steps on every peak's PRM, ``chunk`` peaks at a time -> ``float [K, S, S]``."""
        steps, chunk = self.icn_settings.steps, self.icn_settings.chunk
        if self.graphs is None or self.graphs.icn is None:
            self._eager_layout()
            return enhance(self.icn, naive.x, naive.peaks.image, naive.prms, steps, chunk)
        image_of = naive.peaks.image
        out = [self.graphs.icn(images=naive.x[image_of[s: s + chunk]], prms=naive.prms[s: s + chunk])["enhanced"]
               for s in range(0, len(image_of), chunk)]
        return torch.cat(out).to(self.device) if out else naive.prms

    def predict(self, images: list[np.ndarray], proposals: list[Proposals],
                inputs: list[np.ndarray] | Staged | None = None, keep_maps: bool = True) -> list[Prediction]:
        """``images``: uint8 RGB ``[H, W, 3]`` each; ``proposals``: one per image, at its size;
        ``inputs``: their network inputs when a loader made them, or those staged on the
        device (:meth:`network_input`, :meth:`stage`). ``keep_maps``: give each instance its
        PRM and enhanced map (for pictures); off, with the CUDA kernels no map leaves the
        GPU: only instances do."""
        if not images:
            return []
        naive = self.naive_maps(images, inputs)
        peaks = naive.peaks
        with self._stage("icn"):
            enhanced_maps = self.enhance(naive) if self.enhances else None
        matched = naive.prms if enhanced_maps is None else enhanced_maps
        # the CUDA kernels match on the device, from the maps where they are; the maps come
        # to the host for the CPU kernels, and for the instances when they keep maps
        on_host = keep_maps or self.kernels.device is None
        prms = naive.prms.cpu().numpy() if on_host else None
        enhanced = enhanced_maps.cpu().numpy() if enhanced_maps is not None and on_host else None
        if self.kernels.device is None:
            matched = prms if enhanced is None else enhanced
        maps = naive.maps.cpu().numpy()
        scores = naive.scores.cpu().numpy()
        image_of, cls, ys, xs, values = (t.cpu().numpy() for t in (peaks.image, peaks.cls, peaks.y, peaks.x,
                                                                      peaks.value))
        out = []
        for b, (image, props) in enumerate(zip(images, proposals)):
            idx = np.flatnonzero(image_of == b)
            found = self._instances(image.shape[:2], props, idx, cls[idx], ys[idx], xs[idx],
                                    values[idx].astype(np.float64), prms if keep_maps else None,
                                    enhanced if keep_maps else None, matched, enhanced_maps is not None, maps[b])
            out.append(Prediction(found, scores[b]))
        return out

    def _instances(self, shape, props: Proposals, idx: np.ndarray, cls: np.ndarray, ys: np.ndarray, xs: np.ndarray,
                   values: np.ndarray, prms: np.ndarray | None, enhanced: np.ndarray | None, matched,
                   enhances: bool, maps: np.ndarray) -> list[Instance]:
        """Instances of one image from its peaks ``idx`` (into ``prms`` and ``enhanced`` (the
        naive and the ICN's maps on the host, for the instances; None: not kept) and
        ``matched`` (the maps to match, where the kernels read them; the ICN's when
        ``enhances``)) and their class, position and value; ``maps``: the image's class maps."""
        with self._stage("matching"):
            best, match_scores, quality = match(matched[idx], maps[cls], props, self.matching,
                                                enhanced=enhances, kernels=self.kernels)
        found = np.flatnonzero(best >= 0)
        if len(found) == 0:
            return []
        score = confidence(self.instances, values, match_scores, quality)
        with self._stage("nms"):
            masks = props.to_masks(best[found])
            keep, owner = suppress(masks, score[found], self.instances.nms_iou, self.kernels)
        h, w = shape
        mh, mw = maps.shape[-2:]
        result = []
        for j in keep:
            i = found[j]
            merged = prms[idx[found[owner == j]]].sum(0) if prms is not None else None
            result.append(Instance(int(cls[i]), float(score[i]), masks[j], int(best[i]),
                                   ((ys[i] + 0.5) * h / mh, (xs[i] + 0.5) * w / mw), float(values[i]),
                                   float(match_scores[i]), merged,
                                   enhanced[idx[i]] if enhanced is not None else None))
        return result
