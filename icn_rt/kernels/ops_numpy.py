"""The kernels of proposal matching (:mod:`.interface`) in plain NumPy: slow and exact,
the reference each fast backend (:mod:`.ops_cpu`, :mod:`.ops_cuda`) is tested against,
function for function."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .interface import WORD, Kernels, rows, words_per_row


def pack(masks: np.ndarray) -> np.ndarray:
    """``bool [N, H, W]`` -> ``uint32 [N, H, ceil(W/32)]``."""
    n, h, w = masks.shape
    packed = np.packbits(masks, axis=-1, bitorder="little")
    out = np.zeros((n, h, words_per_row(w) * 4), np.uint8)
    out[..., :packed.shape[-1]] = packed
    return out.view("<u4").astype(np.uint32)


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    """``uint32 [N, H, WW]`` -> ``bool [N, H, width]``."""
    as_bytes = np.ascontiguousarray(words.astype("<u4")).view(np.uint8)
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :width].astype(bool)


def band(words: np.ndarray, width: int, size: int) -> np.ndarray:
    """The morphological gradient (``size``² square, odd; pixels outside the image take
    no part) of each packed mask of image width ``width``, packed."""
    masks = unpack(words, width)
    footprint = (1, size, size)
    grad = ndimage.binary_dilation(masks, np.ones(footprint, bool)) & ~ndimage.binary_erosion(
        masks, np.ones(footprint, bool), border_value=1)
    return pack(grad)


def background(words: np.ndarray, width: int) -> np.ndarray:
    """B(V) = 1 − V of each packed binary map of image width ``width``, packed (padding
    stays 0). Eq. 5's background term Σ_P B(V) is ``|P ∩ B(V)| = |P| − |P ∩ V|``."""
    return pack(~unpack(words, width))


def boxes(words: np.ndarray) -> np.ndarray:
    """``int64 [N, 4]``: each mask's rows ``[y0, y1)`` and words ``[k0, k1)`` holding set
    bits; an empty mask gives ``(H, H, WW, 0)``."""
    n, h, nwords = words.shape
    out = np.tile(np.array([h, h, nwords, 0], np.int64), (n, 1))
    for i in range(n):
        ys, ks = np.nonzero(words[i])
        if len(ys):
            out[i] = ys.min(), ys.max() + 1, ks.min(), ks.max() + 1
    return out


def popcounts(words: np.ndarray) -> np.ndarray:
    """``uint32 [N, ...]`` -> ``int64 [N]`` set bits of each mask."""
    return np.unpackbits(rows(words).view(np.uint8), axis=1).sum(1, dtype=np.int64)


def and_counts(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p: uint32 [N, ...]``, ``q: uint32 [M, ...]`` -> ``int64 [M, N]``: ``|P_n ∩ Q_m|``."""
    bp = np.unpackbits(rows(p).view(np.uint8), axis=1).astype(np.int64)
    bq = np.unpackbits(rows(q).view(np.uint8), axis=1).astype(np.int64)
    return bq @ bp.T


def prefix_sums(maps: np.ndarray) -> np.ndarray:
    """``float [M, H, W]`` -> ``float64 [H, W+1, M]``: exclusive running sums along rows,
    the maps last (a run's M sums are adjacent), what :func:`run_sums` reads."""
    m, h, w = maps.shape
    out = np.zeros((h, w + 1, m))
    np.cumsum(maps.transpose(1, 2, 0), axis=1, dtype=np.float64, out=out[:, 1:])
    return out


def run_sums(words: np.ndarray, prefix: np.ndarray, band_size: int = 0, box=None) -> np.ndarray:
    """Each real map summed over each mask -> ``float64 [M, N]``.

    ``words: uint32 [N, H, WW]``, ``prefix``: the maps' :func:`prefix_sums`. With
    ``band_size`` > 0 the sum is over each mask's own :func:`band` instead. ``box``
    (the CPU kernels' bounding boxes) is accepted and not needed.
    """
    width = prefix.shape[1] - 1
    if band_size:
        words = band(words, width, band_size)
    masks = unpack(words, width).reshape(len(words), -1).astype(np.float64)
    maps = np.diff(prefix, axis=1).reshape(-1, prefix.shape[2])
    return maps.T @ masks.T


def segment_sums(labels: np.ndarray, maps: np.ndarray, count: int) -> np.ndarray:
    """``labels: int32 [H, W]`` (< 0: no segment), ``maps: float [M, H, W]`` ->
    ``float64 [M, count]``: each map summed over each segment."""
    keep = labels.ravel() >= 0
    ids = labels.ravel()[keep]
    return np.stack([np.bincount(ids, weights=m.ravel()[keep], minlength=count)[:count] for m in maps]) \
        if len(maps) else np.zeros((0, count))


def csr_sums(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values: float [M, S]`` summed over each row of the CSR ``(indptr, indices)``
    -> ``float64 [M, N]``."""
    n = len(indptr) - 1
    out = np.zeros((len(values), n))
    for i in range(n):
        out[:, i] = values[:, indices[indptr[i]:indptr[i + 1]]].sum(1)
    return out


def members(indptr: np.ndarray, indices: np.ndarray, count: int) -> np.ndarray:
    """CSR rows as bit sets: ``uint32 [N, ceil(count/32)]``, bit ``s`` set iff ``s`` is in row n."""
    dense = np.zeros((len(indptr) - 1, 1, count), bool)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    dense[rows, 0, indices] = True
    return pack(dense)[:, 0]


def group_sums(member: np.ndarray, group_indptr: np.ndarray, group_labels: np.ndarray,
               values: np.ndarray) -> np.ndarray:
    """``values: float [M, G]`` summed, for each set of ``member`` (``uint32 [N, SW]``),
    over the groups (CSR of segment ids) that the set meets but does not contain
    -> ``float64 [M, N]``."""
    count = member.shape[1] * WORD
    dense = unpack(member[:, None], count)[:, 0]
    out = np.zeros((len(values), len(member)))
    for g in range(len(group_indptr) - 1):
        ids = group_labels[group_indptr[g]:group_indptr[g + 1]]
        inside = dense[:, ids].sum(1)
        cut = (inside > 0) & (inside < len(ids))
        out[:, cut] += values[:, g:g + 1]
    return out


def mask_iou_matrix(masks: np.ndarray) -> np.ndarray:
    """``bool [N, H, W]`` -> ``float64 [N, N]`` pairwise IoU (0 for two empty masks)."""
    flat = masks.reshape(len(masks), -1).astype(np.float64)
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def greedy_suppression(over: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk ``order``: an unowned mask is kept and owns every unowned mask its row of
    ``over: bool [N, N]`` (IoU at or over the threshold) marks -> ``(keep, owner)``."""
    owner = np.full(len(over), -1, np.int64)
    keep = []
    for i in order:
        if owner[i] >= 0:
            continue
        owner[i] = i
        keep.append(i)
        owner[(owner < 0) & over[i]] = i
    return np.array(keep, np.int64), owner


def nms(words: np.ndarray, order: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy mask NMS over packed masks ``uint32 [N, ...]`` taken in ``order``.

    Returns ``(keep int64 [n] in order taken, owner int64 [N])``: ``owner[i]`` is the kept
    mask that suppressed i (itself if kept). IoU ≥ ``threshold`` suppresses; two empty
    masks have IoU 0.
    """
    flat = rows(words)
    masks = unpack(flat[:, None], flat.shape[1] * WORD)  # padding bits are 0: no effect on IoU
    return greedy_suppression(mask_iou_matrix(masks) >= threshold, np.asarray(order))


def top_k_not_contained(words: np.ndarray, order: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """For each row of ``order: int64 [K, N]`` (proposals best first, the first
    ``valid[r]`` eligible): walk it, keep a mask unless it lies inside one already kept,
    stop at ``k`` -> ``int64 [K, k]``, padded with -1."""
    flat = rows(words)
    out = np.full((len(order), k), -1, np.int64)
    for r in range(len(order)):
        kept = 0
        for i in order[r, :valid[r]]:
            if kept == k:
                break
            if any(not (flat[i] & ~flat[out[r, j]]).any() for j in range(kept)):
                continue
            out[r, kept] = i
            kept += 1
    return out


def boundary_groups(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels whose ``size``² window (clipped to the image) holds more than one
    segment, grouped by that set of segments.

    A union of segments P has such a pixel in its morphological gradient iff P meets
    the set and does not contain it, and no other pixel ever; so a proposal's contour
    sum is a sum over groups (:func:`group_sums`). Returns ``(group int32 [H, W]`` (-1:
    interior pixel), ``indptr int64 [G+1]``, ``labels int32 [nnz]``); each set sorted, the
    groups in order of their first pixel (row by row).
    """
    h, w = labels.shape
    r = size // 2
    pixel_sets = {}
    for y in range(h):
        for x in range(w):
            window = labels[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1]
            ids = tuple(np.unique(window).tolist())
            if len(ids) > 1:
                pixel_sets[y, x] = ids
    number: dict[tuple, int] = {}
    for ids in pixel_sets.values():  # row by row
        number.setdefault(ids, len(number))
    groups = list(number)
    group = np.full((h, w), -1, np.int32)
    for (y, x), ids in pixel_sets.items():
        group[y, x] = number[ids]
    indptr = np.concatenate([[0], np.cumsum([len(g) for g in groups], dtype=np.int64)]).astype(np.int64)
    flat = np.array([i for g in groups for i in g], np.int32)
    return group, indptr, flat


class NumpyKernels(Kernels):
    name = "numpy"
    pack = staticmethod(pack)
    pack_masks = staticmethod(pack)
    unpack = staticmethod(unpack)
    band = staticmethod(band)
    background = staticmethod(background)
    boxes = staticmethod(boxes)
    popcounts = staticmethod(popcounts)
    and_counts = staticmethod(and_counts)
    prefix_sums = staticmethod(prefix_sums)
    run_sums = staticmethod(run_sums)
    segment_sums = staticmethod(segment_sums)
    csr_sums = staticmethod(csr_sums)
    members = staticmethod(members)
    boundary_groups = staticmethod(boundary_groups)
    group_sums = staticmethod(group_sums)
    nms = staticmethod(nms)
    top_k_not_contained = staticmethod(top_k_not_contained)
