"""Segment proposals by selective search (Uijlings et al. 2013), in the MCG layout.

Diversification as in the paper: Felzenszwalb-Huttenlocher superpixels of the image in
several colour spaces and at several scales, each grouped hierarchically (repeatedly
merge the most similar adjacent pair) under several similarity sets — colour (C),
texture (T), size (S), fill (F). Every initial and every merged region is a proposal.

To write all of them as one MCG file, the superpixel maps of every strategy are
overlaid: the output superpixels are the common refinement (pixels that share a label in
every map), so each proposal is exactly a union of output superpixels. Proposals are
deduplicated on that set and ranked as selective search ranks them: a region's value is
its position from the top of its hierarchy times a uniform random number (seeded), lower
first; its score is ``1 / (1 + value)``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import cv2
import numpy as np

from icn_rt.data.proposals import Proposals

COLOUR_BINS = 25
TEXTURE_BINS = 10
ORIENTATIONS = 8


@dataclass(frozen=True)
class SelectiveSearchConfig:
    """Strategies and limits. ``similarities``: strings over C, T, S, F.

    ``min_superpixel``: the smallest Felzenszwalb component as a fraction of the image
    area (10 px at 128², 110 px at 500×375), so the superpixel count, and with it the
    run time, does not grow with the resolution.
    """

    colour_spaces: tuple[str, ...] = ("hsv", "lab")
    scales: tuple[float, ...] = (50.0, 100.0, 200.0)
    sigma: float = 0.8
    min_superpixel: float = 6e-4
    similarities: tuple[str, ...] = ("CTSF", "TSF")
    min_area: int = 16
    max_proposals: int = 2000
    seed: int = 0

    def __post_init__(self):
        for cs in self.colour_spaces:
            if cs not in _COLOUR_SPACES:
                raise ValueError(f"unknown colour space '{cs}' (choose from {', '.join(_COLOUR_SPACES)})")
        for sim in self.similarities:
            if not sim or set(sim) - set("CTSF"):
                raise ValueError(f"similarity '{sim}' must be letters of C, T, S, F")


def _to_hsv(rgb: np.ndarray) -> np.ndarray:
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    return hsv / np.array([180.0, 255.0, 255.0], np.float32)


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return (lab + np.array([0.0, 128.0, 128.0], np.float32)) / np.array([100.0, 255.0, 255.0], np.float32)


_COLOUR_SPACES = {
    "rgb": lambda rgb: rgb.astype(np.float32) / 255.0,
    "hsv": _to_hsv,
    "lab": _to_lab,
}


def selective_search(image: np.ndarray, config: SelectiveSearchConfig = SelectiveSearchConfig()) -> Proposals:
    """``image: uint8 [H, W, 3]`` RGB -> segment :class:`Proposals`, best first."""
    from skimage.segmentation import felzenszwalb

    h, w = image.shape[:2]
    rng = np.random.default_rng(config.seed)
    min_size = max(4, round(config.min_superpixel * h * w))
    segmentations: list[np.ndarray] = []
    hierarchies: list[tuple[int, np.ndarray, np.ndarray]] = []  # (segmentation index, incidence, value)
    for cs in config.colour_spaces:
        img = np.clip(_COLOUR_SPACES[cs](image), 0.0, 1.0)
        texture = _texture_bins(img)
        colour = np.minimum((img * COLOUR_BINS).astype(np.int64), COLOUR_BINS - 1)
        for scale in config.scales:
            seg = felzenszwalb(img, scale=scale, sigma=config.sigma, min_size=min_size, channel_axis=-1)
            seg = np.unique(seg, return_inverse=True)[1].reshape(h, w).astype(np.int32)
            features = _region_features(seg, colour, texture)
            pairs = _adjacent_pairs(seg)
            for sim in config.similarities:
                incidence = _group(features, pairs, sim, h * w)
                n = len(incidence)
                value = (n - np.arange(n)) * rng.random(n)
                hierarchies.append((len(segmentations), incidence, value))
            segmentations.append(seg)

    refined, parents = _refine(segmentations)
    n_refined = int(refined.max()) + 1
    rows, values = [], []
    for seg_index, incidence, value in hierarchies:
        rows.append(np.packbits(incidence[:, parents[seg_index]], axis=1))
        values.append(value)
    packed = np.concatenate(rows)
    value = np.concatenate(values)
    # Deduplicate on the refined superpixel set; a duplicate keeps its best (lowest) value.
    order = np.argsort(value, kind="stable")
    _, first = np.unique(packed[order], axis=0, return_index=True)
    keep = order[np.sort(first)]
    keep = keep[np.argsort(value[keep], kind="stable")]
    members = np.unpackbits(packed[keep], axis=1, count=n_refined).astype(bool)
    areas = members @ np.bincount(refined.ravel(), minlength=n_refined)
    ok = areas >= config.min_area
    keep, members = keep[ok][: config.max_proposals], members[ok][: config.max_proposals]
    groups = [np.flatnonzero(m).astype(np.int32) for m in members]
    return Proposals.from_segments(refined, groups, 1.0 / (1.0 + value[keep]))


def _texture_bins(img: np.ndarray) -> np.ndarray:
    """``int64 [H, W, 3 * ORIENTATIONS]``: per channel and orientation, the bin of the
    Gaussian-derivative response (σ = 1, rectified, scaled by its image maximum)."""
    h, w, c = img.shape
    out = np.empty((h, w, c * ORIENTATIONS), np.int64)
    angles = np.arange(ORIENTATIONS) * 2 * np.pi / ORIENTATIONS
    for ch in range(c):
        smooth = cv2.GaussianBlur(img[:, :, ch], (0, 0), 1.0)
        gx = cv2.Sobel(smooth, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(smooth, cv2.CV_32F, 0, 1, ksize=3)
        for o, a in enumerate(angles):
            resp = np.maximum(gx * np.cos(a) + gy * np.sin(a), 0)
            peak = resp.max()
            scaled = resp / peak if peak > 0 else resp
            out[:, :, ch * ORIENTATIONS + o] = np.minimum((scaled * TEXTURE_BINS).astype(np.int64), TEXTURE_BINS - 1)
    return out


@dataclass
class _Features:
    size: np.ndarray  # [n]
    colour: np.ndarray  # [n, 3 * COLOUR_BINS], L1-normalised
    texture: np.ndarray  # [n, channels * ORIENTATIONS * TEXTURE_BINS], L1-normalised
    bbox: np.ndarray  # [n, 4] ymin, xmin, ymax, xmax (inclusive)


def _histograms(seg: np.ndarray, bins: np.ndarray, nbins: int, n: int) -> np.ndarray:
    flat = seg.ravel()
    hist = np.zeros((n, bins.shape[2] * nbins), np.float64)
    for k in range(bins.shape[2]):
        idx = flat * nbins + bins[:, :, k].ravel()
        hist[:, k * nbins:(k + 1) * nbins] = np.bincount(idx, minlength=n * nbins).reshape(n, nbins)
    return hist / hist.sum(1, keepdims=True)


def _region_features(seg: np.ndarray, colour: np.ndarray, texture: np.ndarray) -> _Features:
    n = int(seg.max()) + 1
    size = np.bincount(seg.ravel(), minlength=n).astype(np.float64)
    ys, xs = np.indices(seg.shape)
    bbox = np.empty((n, 4), np.int64)
    for k, (arr, fn) in enumerate(((ys, np.minimum), (xs, np.minimum), (ys, np.maximum), (xs, np.maximum))):
        init = np.iinfo(np.int64).max if fn is np.minimum else -1
        acc = np.full(n, init, np.int64)
        fn.at(acc, seg.ravel(), arr.ravel())
        bbox[:, k] = acc
    return _Features(size, _histograms(seg, colour, COLOUR_BINS, n), _histograms(seg, texture, TEXTURE_BINS, n), bbox)


def _adjacent_pairs(seg: np.ndarray) -> np.ndarray:
    """``int64 [P, 2]`` unique pairs (i < j) of 4-adjacent superpixels."""
    a = np.concatenate([seg[:, :-1].ravel(), seg[:-1, :].ravel()])
    b = np.concatenate([seg[:, 1:].ravel(), seg[1:, :].ravel()])
    diff = a != b
    pairs = np.stack([np.minimum(a[diff], b[diff]), np.maximum(a[diff], b[diff])], 1).astype(np.int64)
    return np.unique(pairs, axis=0)


def _similarity(f: _Features, i: int, js: np.ndarray, measures: str, image_size: int) -> np.ndarray:
    s = np.zeros(len(js))
    if "C" in measures:
        s += np.minimum(f.colour[i], f.colour[js]).sum(1)
    if "T" in measures:
        s += np.minimum(f.texture[i], f.texture[js]).sum(1)
    if "S" in measures:
        s += 1.0 - (f.size[i] + f.size[js]) / image_size
    if "F" in measures:
        lo = np.minimum(f.bbox[i, :2], f.bbox[js, :2])
        hi = np.maximum(f.bbox[i, 2:], f.bbox[js, 2:])
        box = np.prod(hi - lo + 1, axis=1)
        s += 1.0 - (box - f.size[i] - f.size[js]) / image_size
    return s


def _group(base: _Features, pairs: np.ndarray, measures: str, image_size: int) -> np.ndarray:
    """Hierarchical grouping: ``bool [R, n]``, row r = base superpixels of region r
    (the n initial regions first, then one row per merge, the last the top)."""
    n = len(base.size)
    cap = 2 * n - 1
    f = _Features(np.zeros(cap), np.zeros((cap, base.colour.shape[1])), np.zeros((cap, base.texture.shape[1])),
                  np.zeros((cap, 4), np.int64))
    f.size[:n], f.colour[:n], f.texture[:n], f.bbox[:n] = base.size, base.colour, base.texture, base.bbox
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for i, j in pairs:
        neighbours[i].add(int(j))
        neighbours[j].add(int(i))
    heap: list[tuple[float, int, int]] = []
    for i in range(n):
        js = np.array(sorted(j for j in neighbours[i] if j > i), np.int64)
        if len(js):
            for j, s in zip(js, _similarity(f, i, js, measures, image_size)):
                heap.append((-s, i, int(j)))
    heapq.heapify(heap)
    alive = np.zeros(cap, bool)
    alive[:n] = True
    children: list[tuple[int, int]] = []
    t = n
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        si, sj = f.size[i], f.size[j]
        f.size[t] = si + sj
        f.colour[t] = (si * f.colour[i] + sj * f.colour[j]) / (si + sj)
        f.texture[t] = (si * f.texture[i] + sj * f.texture[j]) / (si + sj)
        f.bbox[t, :2] = np.minimum(f.bbox[i, :2], f.bbox[j, :2])
        f.bbox[t, 2:] = np.maximum(f.bbox[i, 2:], f.bbox[j, 2:])
        alive[i] = alive[j] = False
        alive[t] = True
        nb = (neighbours[i] | neighbours[j]) - {i, j}
        for k in nb:
            neighbours[k] -= {i, j}
            neighbours[k].add(t)
        neighbours.append(nb)
        if nb:
            ks = np.array(sorted(nb), np.int64)
            for k, s in zip(ks, _similarity(f, t, ks, measures, image_size)):
                heapq.heappush(heap, (-s, t, int(k)))
        children.append((i, j))
        t += 1
    incidence = np.zeros((t, n), bool)
    incidence[np.arange(n), np.arange(n)] = True
    for r, (i, j) in enumerate(children, start=n):
        incidence[r] = incidence[i] | incidence[j]
    return incidence


def _refine(segmentations: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Common refinement of label maps: ``(refined int32 [H, W], parents)`` where
    ``parents[s][r]`` is the label in map s of refined superpixel r."""
    combined = np.zeros(segmentations[0].size, np.int64)
    for seg in segmentations:
        combined = combined * (int(seg.max()) + 1) + seg.ravel()
        combined = np.unique(combined, return_inverse=True)[1].ravel().astype(np.int64)
    refined = combined.reshape(segmentations[0].shape).astype(np.int32)
    n = int(refined.max()) + 1
    parents = []
    for seg in segmentations:
        parent = np.zeros(n, np.int64)
        parent[refined.ravel()] = seg.ravel()
        parents.append(parent)
    return refined, parents
