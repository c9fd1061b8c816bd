"""Proposal scores (docs/design.md §1 step 7): every peak's map against every proposal.

The numbers of the plain references (``tests/reference.py``, tested), computed for all
K maps of an image at once by a kernel backend (:func:`icn_rt.kernels.ops`): packed masks
scored by popcounts (binary maps) or run sums (real maps); segment proposals by segment
sums and a CSR gather, never made into masks. Maps are NumPy arrays for the CPU
kernels, or tensors on the GPU for the CUDA kernels.

Choices (settings, saved in the model's config):

- ``score``: ``rebalanced`` (the paper's Eq. 5 as printed), ``vanilla`` (the PRM
  reference, the "w/o rebalance" ablation), ``iou``, ``auto`` (the paper's choice:
  rebalanced for an ICN-enhanced map, vanilla for the naive PRM) or ``auto-iou`` (ours:
  iou for an enhanced map, vanilla for the naive PRM). Eq. 5 sums its
  background penalty in pixels, so it assumes V covers the object; against a naive PRM,
  which covers only the most discriminative part, it picks fragments inside that part (on
  the synthetic val split with the small backbone: mAP^r@0.5 0.0 rebalanced vs 6.4
  vanilla), and on an oversized V fragments inside V. ``iou`` is IoU(V, P) = Σ_P V /
  (|P| + Σ V − Σ_P V) — our recall-aware reading of the ambiguous Eq. 5 (its precision
  term α·mean_P(V) and its leak penalty γ·Σ_P (1 − V) balanced by how much of V the
  proposal leaves out), not the equation as printed.
- ``at``: ``image`` — the PRM is resized bilinearly to the image and matched against the
  proposals as they are; ``input`` — the proposals are resized (nearest, OpenCV) to the
  PRM's size, as the PRM reference does. Masks are always returned at the image's size.
- ``binarize``: for the rebalanced score the map is min-max normalised and, unless None,
  thresholded at this value (the paper binarises its enhanced map; the naive PRM is
  binarised the same way until the ICN lands). The vanilla score takes the PRM as is.
- ``max_proposals``: only the first N proposals are scanned (PRM: 100; 0 = all).
- ``rerank``: 0 (the paper) picks the best-scored proposal; N > 0 re-ranks each peak's N
  best-scored proposals by their objectness (:mod:`icn_rt.matching.objectness`, needs the
  image) and picks the most object-like — our addition for maps that cover a part.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import cv2
import numpy as np

from icn_rt.data.proposals import Proposals
from icn_rt.kernels import Kernels, ops
from icn_rt.kernels import arrays as xp
from icn_rt.matching.objectness import rerank

SCORES = ("auto", "auto-iou", "rebalanced", "vanilla", "iou")
PLACES = ("image", "input")


@dataclass
class MatchingSettings:
    score: str = "auto"
    at: str = "image"
    binarize: float | None = 0.5
    alpha: float = 0.95
    beta: float = 0.1
    gamma: float = 0.8
    band_width: int = 5
    area_limits: tuple[float, float] = (2e-5, 0.85)
    vanilla_balance: float = 0.8
    vanilla_penalty: float = 1e-5
    background_factor: float = 0.95
    max_proposals: int = 0
    rerank: int = 0

    def resolved(self, enhanced: bool) -> MatchingSettings:
        """These settings with ``auto``/``auto-iou`` made concrete for an enhanced (ICN) or naive map."""
        if not self.score.startswith("auto"):
            return self
        if not enhanced:
            return replace(self, score="vanilla")
        return replace(self, score="rebalanced" if self.score == "auto" else "iou")

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"unknown matching score {self.score!r}; choose one of {', '.join(SCORES)}")
        if self.at not in PLACES:
            raise ValueError(f"unknown matching place {self.at!r}; choose one of {', '.join(PLACES)}")
        if self.band_width % 2 == 0 or not 1 <= self.band_width < 64:
            raise ValueError(f"band width must be odd and below 64 (the kernels' square), got {self.band_width}")
        if self.rerank < 0:
            raise ValueError(f"rerank must be >= 0 (0 = off), got {self.rerank}")


def matching_map(prm: np.ndarray, settings: MatchingSettings) -> np.ndarray:
    """The map a proposal is scored against: ``float [H, W]`` -> float64 (vanilla: the
    PRM; rebalanced and iou: min-max normalised, binarised unless ``binarize`` is None)."""
    prm = prm.astype(np.float64)
    if settings.score == "vanilla":
        return prm
    lo, hi = prm.min(), prm.max()
    v = (prm - lo) / (hi - lo) if hi > lo else np.zeros_like(prm)
    return (v >= settings.binarize).astype(np.float64) if settings.binarize is not None else v


def resize_proposals(props: Proposals, shape: tuple[int, int]) -> Proposals:
    """Proposals resized (nearest, OpenCV) to ``shape`` (H, W), in their own form: a
    nearest resize of each mask equals the mask, in the resized superpixel map, of the same
    superpixels (every pixel copies one source pixel), so segments stay segments."""
    if tuple(props.shape) == tuple(shape):
        return props
    if props.is_segments:
        labels = cv2.resize(props.superpixels, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        return Proposals.from_segments(labels, (props.indptr, props.indices), props.scores)
    masks = props.to_masks()
    out = np.stack([cv2.resize(m.view(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
                    for m in masks]) if len(masks) else np.zeros((0, *shape), np.uint8)
    return Proposals.from_masks(out.astype(bool), props.scores)


def _area_ok(area, shape: tuple[int, int], limits: tuple[float, float]):
    total = shape[0] * shape[1]
    return (area >= limits[0] * total) & (area < limits[1] * total)


class Prepared:
    """One image's proposals in the form ``kernels`` read, made once and reused for all
    its maps: packed words (mask form) or the superpixel map and CSR on the kernels'
    device (segment form), areas, bounding boxes (mask form) and, for the vanilla contour
    on segments, the boundary groups."""

    def __init__(self, props: Proposals | None, kernels: Kernels):
        self.props, self.k = props, kernels
        self._groups = None
        if props is None:
            return
        self.shape, self.segments = tuple(props.shape), props.is_segments
        if props.is_segments:
            self.labels = kernels.to(props.superpixels.astype(np.int32))
            self.indptr, self.indices = kernels.to(props.indptr), kernels.to(props.indices)
            self.count = props.num_superpixels
            self.area = kernels.to(props.areas().astype(np.int64))
        else:
            self._use_words(kernels.pack_masks(props.masks))

    @classmethod
    def from_words(cls, words, shape: tuple[int, int], kernels: Kernels) -> Prepared:
        """Mask proposals already packed (``[N, H, ceil(W/32)]``, on the kernels' device)."""
        prepared = cls(None, kernels)
        prepared.shape, prepared.segments = tuple(shape), False
        prepared._use_words(words)
        return prepared

    def _use_words(self, words) -> None:
        """Packed mask proposals, their areas and bounding boxes."""
        self.words = words
        self.area = self.k.popcounts(words)
        self.box = self.k.boxes(words)

    def sums(self, maps):
        """Each map ``[M, H, W]`` (at the proposals' size) summed over each proposal -> ``[M, N]``."""
        if self.segments:
            return self.k.csr_sums(self.indptr, self.indices, self.k.segment_sums(self.labels, maps, self.count))
        return self.k.run_sums(self.words, self.k.prefix_sums(maps), 0, self.box)

    def counts(self, binary):
        """Binary maps ``[M, H, W]`` -> ``int64 [M, N]`` pixels of each map in each proposal."""
        if self.segments:
            return self.sums(binary)
        return self.k.and_counts(self.words, self.k.pack(binary))

    def sums_and_contours(self, maps, width: int):
        """Each map summed over each proposal and over its own contour band -> two ``[M, N]``."""
        if not self.segments:
            prefix = self.k.prefix_sums(maps)
            return (self.k.run_sums(self.words, prefix, 0, self.box),
                    self.k.run_sums(self.words, prefix, width, self.box))
        return self.sums(maps), self._contour_sums(maps, width)

    def _contour_sums(self, maps, width: int):
        if self._groups is None or self._groups[0] != width:
            group, gptr, glabels = self.k.boundary_groups(self.props.superpixels, width)
            member = self.k.members(self.indptr, self.indices, self.count)
            self._groups = (width, group, gptr, glabels, member, len(gptr) - 1)
        _, group, gptr, glabels, member, count = self._groups
        return self.k.group_sums(member, gptr, glabels, self.k.segment_sums(group, maps, count))


def _binary(v) -> bool:
    return bool(((v == 0) | (v == 1)).all())


def _band_of(v, width: int, prepared: Prepared, binary: bool):
    """E(V) of each map ``[K, H, W]``, dense: the packed band kernel for a ``binary`` V
    (exact), else the grey morphological gradient."""
    k = prepared.k
    if binary:
        return xp.float64(k.unpack(k.band(k.pack(v > 0.5), v.shape[2], width), v.shape[2]))
    return xp.grey_gradient(v, width)


def rebalanced(v, props: Proposals | Prepared, settings: MatchingSettings, kernels: Kernels | None = None):
    """Eq. 5 of ``v: float [K, H, W]`` in [0, 1] against every proposal -> ``float64 [K, N]``
    (``-inf`` outside the area limits). A binary ``v`` is scored by popcounts, exactly.
    ``kernels``: the backend (default: the CPU kernels)."""
    return _rebalanced_terms(v, _prepared(props, kernels), settings)[0]


def _prepared(props, kernels: Kernels | None) -> Prepared:
    return props if isinstance(props, Prepared) else Prepared(props, kernels or ops())


def _rebalanced_terms(v, prepared: Prepared, settings: MatchingSettings):
    """``(scores, inside)``: Eq. 5 and Σ_P V, both ``[K, N]``."""
    k = prepared.k
    binary = _binary(v)
    if binary and not prepared.segments:
        words = k.pack(v > 0.5)
        both = k.and_counts(prepared.words, xp.concat([words, k.band(words, v.shape[2], settings.band_width)]))
    else:
        both = prepared.sums(xp.concat([v, _band_of(v, settings.band_width, prepared, binary)]))
    inside, edge = both[:len(v)], both[len(v):]
    area = prepared.area
    inside, edge = xp.float64(inside), xp.float64(edge)
    area_f = xp.float64(area)
    score = (settings.alpha * inside / xp.clip_min(area_f, 1) + settings.beta * edge
             - settings.gamma * (area_f[None] - inside))
    return _limit(score, area, prepared.shape, settings), inside


def _limit(score, area, shape, settings: MatchingSettings):
    """``-inf`` for the proposals outside the area limits."""
    return xp.where(_area_ok(area, shape, settings.area_limits)[None], score, -np.inf)


def _iou_terms(v, prepared: Prepared, settings: MatchingSettings):
    """``(scores, inside)``: IoU(V, P) and Σ_P V, both ``[K, N]``; a binary ``v`` (mask
    proposals) by popcounts, exactly."""
    k = prepared.k
    if _binary(v) and not prepared.segments:
        inside = k.and_counts(prepared.words, k.pack(v > 0.5))
    else:
        inside = prepared.sums(v)
    inside, area = xp.float64(inside), xp.float64(prepared.area)
    union = area[None] + v.reshape(len(v), -1).sum(1)[:, None] - inside
    score = inside / xp.where(union > 0, union, 1.0)
    return _limit(score, prepared.area, prepared.shape, settings), inside


def iou(v, props: Proposals | Prepared, settings: MatchingSettings, kernels: Kernels | None = None):
    """IoU of each map ``v: float [K, H, W]`` in [0, 1] with every proposal -> ``float64
    [K, N]`` (``-inf`` outside the area limits); soft for a real-valued ``v``."""
    return _iou_terms(v, _prepared(props, kernels), settings)[0]


def vanilla(prm, props: Proposals | Prepared, backgrounds, settings: MatchingSettings,
            kernels: Kernels | None = None):
    """The PRM reference's score of ``prm: float [K, H, W]`` with ``backgrounds: bool [K, H, W]``
    -> ``float64 [K, N]`` (``-inf`` outside the area limits). ``kernels``: as :func:`rebalanced`."""
    return _vanilla_terms(prm, _prepared(props, kernels), backgrounds, settings)[0]


def _vanilla_terms(prm, prepared: Prepared, backgrounds, settings: MatchingSettings):
    inside, edge = (xp.float64(x) for x in prepared.sums_and_contours(prm, settings.band_width))
    bg = xp.float64(prepared.counts(backgrounds))
    score = settings.vanilla_balance * inside + edge - settings.vanilla_penalty * bg
    return _limit(score, prepared.area, prepared.shape, settings), inside


def background_map(class_map: np.ndarray, shape: tuple[int, int], factor: float = 0.95) -> np.ndarray:
    """PRM's background for the vanilla score: the class map min-max scaled to 0-255
    (bytescaled), resized bicubically to ``shape`` (H, W) as 8-bit, then ``< factor ×``
    its mean -> ``bool [H, W]``."""
    from PIL import Image

    cmin, cmax = float(class_map.min()), float(class_map.max())
    scale = 255.0 / (cmax - cmin) if cmax > cmin else 1.0
    byte = ((class_map - cmin) * scale).clip(0, 255) + 0.5
    resized = np.asarray(Image.fromarray(byte.astype(np.uint8)).resize((shape[1], shape[0]), Image.BICUBIC))
    return resized < factor * resized.mean()


class Scored(NamedTuple):
    """One image's matching: ``scores float64 [K, N]`` (``-inf``: outside the area
    limits), ``props`` (the proposals as scored: after ``max_proposals`` and, for
    ``at="input"``, resized), ``maps float64 [K, H, W]`` (the matching maps at their
    size), ``inside float64 [K, N]`` (each map summed over each proposal), ``area [N]``.
    Arrays of the kernels' kind: NumPy, or tensors on the GPU for the CUDA kernels."""

    scores: Any
    props: Proposals
    maps: Any
    inside: Any
    area: Any


def _matching_maps(maps, settings: MatchingSettings):
    """:func:`matching_map` of every map ``[K, H, W]`` at once, NumPy or torch."""
    if settings.score == "vanilla":
        return xp.float64(maps)
    maps = xp.float64(maps)
    lo, hi = xp.row_min_max(maps.reshape(len(maps), -1))
    span = (hi - lo)[:, None, None]
    v = (maps - lo[:, None, None]) / xp.where(span > 0, span, 1.0)
    v = xp.where(span > 0, v, 0.0 * v)
    return xp.float64(v >= settings.binarize) if settings.binarize is not None else v


def score_proposals(prms, class_maps, props: Proposals, settings: MatchingSettings, enhanced: bool = False,
                    kernels: Kernels | None = None, image: np.ndarray | None = None) -> Scored:
    """Every peak's map against every proposal of one image.

    ``prms: float [K, h, w]`` (at the network input's size; on the kernels' device),
    ``class_maps: float [K, h', w']`` (each peak's class map, for the vanilla
    background), ``props``: the image's proposals (at the image's size); ``enhanced``:
    whether the maps are ICN-enhanced (resolves ``score="auto"``/``"auto-iou"``);
    ``kernels``: the backend (:func:`icn_rt.kernels.ops`; default: the CPU kernels); ``image``: uint8 RGB
    ``[H, W, 3]``, needed when ``settings.rerank`` is on (the scores are then the
    re-ranked ones: objectness for each peak's ``rerank`` best proposals, ``-inf`` for the
    rest).
    """
    kernels = kernels or ops()
    settings = settings.resolved(enhanced)
    if settings.rerank and image is None:
        raise ValueError("matching with rerank > 0 needs the image (objectness reads its colours)")
    if settings.max_proposals:
        props = props.select(np.arange(min(settings.max_proposals, len(props))))
    k = len(prms)
    if settings.at == "input":
        shape = tuple(prms.shape[1:])
        props = resize_proposals(props, shape)
        maps = xp.float64(prms)
    else:
        shape = props.shape
        maps = xp.resize_bilinear(prms, shape) if k else np.zeros((0, *shape))
    v = _matching_maps(maps, settings) if k else maps
    if k == 0 or len(props) == 0:
        empty = np.full((k, len(props)), -np.inf)
        return Scored(empty, props, v, np.zeros((k, len(props))), props.areas())
    prepared = Prepared(props, kernels)
    if settings.score == "vanilla":
        backgrounds = np.stack([background_map(c, shape, settings.background_factor) for c in xp.host(class_maps)])
        scores, inside = _vanilla_terms(v, prepared, kernels.to(backgrounds), settings)
    elif settings.score == "iou":
        scores, inside = _iou_terms(v, prepared, settings)
    else:
        scores, inside = _rebalanced_terms(v, prepared, settings)
    if settings.rerank:
        scores = kernels.to(rerank(xp.host(scores), image, props, settings.rerank))
    return Scored(scores, props, v, inside, prepared.area)


def match(prms, class_maps, props: Proposals, settings: MatchingSettings, enhanced: bool = False,
          kernels: Kernels | None = None,
          image: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best proposal for each of K peaks of one image (arguments as :func:`score_proposals`).

    Returns ``(best int64 [K] (-1: none in limits; ties: the first), score float64 [K],
    quality float64 [K])`` on the host; ``score`` is the one that picked the proposal (with
    ``rerank``: its objectness); ``quality`` is the soft IoU Σ_P V / (|P| + Σ V −
    Σ_P V) of the map with its proposal. On the GPU the pick is made there: only K
    numbers come back.
    """
    scored = score_proposals(prms, class_maps, props, settings, enhanced, kernels, image)
    k = len(prms)
    if k == 0 or scored.scores.shape[1] == 0:
        return np.full(k, -1, np.int64), np.full(k, -np.inf), np.zeros(k)
    scores, inside, area = scored.scores, scored.inside, xp.float64(scored.area)
    total = scored.maps.reshape(k, -1).sum(1)
    found, rows = xp.finite_rows(scores), xp.arange(k, scores)
    pick = scores.argmax(1)
    top, hit = scores[rows, pick], inside[rows, pick]
    union = area[pick] + total - hit
    found, pick, top, hit, union = (xp.host(x) for x in (found, pick, top, hit, union))
    best = np.where(found, pick, -1).astype(np.int64)
    quality = np.where(found & (union > 0), hit / np.where(union > 0, union, 1), 0.0)
    return best, np.where(found, top, -np.inf), quality
