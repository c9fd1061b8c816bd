"""The kernels of :mod:`.ops_numpy`, compiled by Numba for the CPU and parallel over
proposals (or maps, or rows): same functions, same arguments, same results.

Integer results (popcounts, and every score term of a binary map) are exact and equal
the reference; real sums (:func:`run_sums`, sums over segments) add the same numbers in
another order, so they agree to rounding. Words are handled as ``int64`` holding 32
bits, so no operation depends on Numba's typing of unsigned mixed arithmetic.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from .ops_numpy import WORD, rows, words_per_row

FULL = 0xFFFFFFFF


@intrinsic
def _popc(typingctx, x):
    """LLVM's ``ctpop``: one POPCNT instruction on x86-64."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return x(x), codegen


@intrinsic
def _ctz(typingctx, x):
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, True))

    return x(x), codegen


@njit(cache=True)
def _last_mask(width):
    rest = width - WORD * ((width + WORD - 1) // WORD - 1)
    return FULL if rest == WORD else (1 << rest) - 1


@njit(cache=True, parallel=True)
def _pack(masks, out):
    n, h, w = masks.shape
    ww = out.shape[2]
    for t in prange(n * h):
        i, y = t // h, t % h
        for k in range(ww):
            v = 0
            for j in range(min(WORD, w - WORD * k)):
                if masks[i, y, WORD * k + j]:
                    v |= 1 << j
            out[i, y, k] = v


def pack(masks: np.ndarray) -> np.ndarray:
    """``bool [N, H, W]`` -> ``uint32 [N, H, ceil(W/32)]``."""
    out = np.empty((*masks.shape[:2], words_per_row(masks.shape[2])), np.uint32)
    _pack(np.ascontiguousarray(masks, dtype=np.bool_), out)
    return out


@njit(cache=True, parallel=True)
def _unpack(words, out):
    n, h, w = out.shape
    for t in prange(n * h):
        i, y = t // h, t % h
        for x in range(w):
            out[i, y, x] = (np.int64(words[i, y, x // WORD]) >> (x % WORD)) & 1


def unpack(words: np.ndarray, width: int) -> np.ndarray:
    """``uint32 [N, H, WW]`` -> ``bool [N, H, width]``."""
    out = np.empty((*words.shape[:2], width), np.bool_)
    _unpack(words, out)
    return out


@njit(cache=True, inline="always")
def _word(row, k, nwords, last, fill):
    """Word ``k`` of a packed row as int64; outside the row (and in its padding) ``fill``."""
    if k < 0 or k >= nwords:
        return fill
    v = np.int64(row[k])
    if k == nwords - 1:
        v = (v & last) | (fill & ~last & FULL)
    return v


@njit(cache=True, inline="always")
def _shifted(row, k, d, nwords, last, fill):
    """Word ``k`` of the row moved so that bit ``j`` holds pixel ``32k + j + d``."""
    if d == 0:
        return _word(row, k, nwords, last, fill)
    if d > 0:
        return ((_word(row, k, nwords, last, fill) >> d) | (_word(row, k + 1, nwords, last, fill) << (WORD - d))) & FULL
    return ((_word(row, k, nwords, last, fill) << -d) | (_word(row, k - 1, nwords, last, fill) >> (WORD + d))) & FULL


@njit(cache=True)
def _band_into(mask, width, size, dil, ero, out):
    """Morphological gradient of one packed mask ``[H, WW]`` into ``out`` (``dil``/``ero``:
    scratch rows of the same shape). Returns the rows ``(y0, y1)`` that can be non-zero."""
    h, nwords = mask.shape
    r = size // 2
    last = _last_mask(width)
    y0, y1 = h, 0
    for y in range(h):
        for k in range(nwords):
            if mask[y, k] != 0:
                y0 = min(y0, y)
                y1 = y + 1
                break
    if y0 >= y1:
        return 0, 0
    lo, hi = max(0, y0 - r), min(h, y1 + r)
    for y in range(lo, hi):
        for k in range(nwords):
            a, b = 0, FULL
            for d in range(-r, r + 1):
                a |= _shifted(mask[y], k, d, nwords, last, 0)
                b &= _shifted(mask[y], k, d, nwords, last, FULL)
            dil[y, k] = a
            ero[y, k] = b
    for y in range(lo, hi):
        for k in range(nwords):
            a, b = 0, FULL
            for yy in range(max(0, y - r), min(h, y + r + 1)):
                a |= dil[yy, k] if lo <= yy < hi else 0
                b &= ero[yy, k] if lo <= yy < hi else 0
            out[y, k] = a & ~b & (last if k == nwords - 1 else FULL)
    return lo, hi


@njit(cache=True, parallel=True)
def _band(words, width, size, out):
    n, h, nwords = words.shape
    for i in prange(n):
        dil = np.empty((h, nwords), np.int64)
        ero = np.empty((h, nwords), np.int64)
        band = np.zeros((h, nwords), np.int64)
        _band_into(words[i], width, size, dil, ero, band)
        for y in range(h):
            for k in range(nwords):
                out[i, y, k] = band[y, k]


def band(words: np.ndarray, width: int, size: int) -> np.ndarray:
    """Morphological gradient (``size``² square, odd) of each packed mask, packed."""
    out = np.empty_like(words)
    _band(words, width, size, out)
    return out


@njit(cache=True, parallel=True)
def _popcounts(flat, out):
    for i in prange(flat.shape[0]):
        c = 0
        for k in range(flat.shape[1]):
            c += _popc(np.int64(flat[i, k]))
        out[i] = c


def popcounts(words: np.ndarray) -> np.ndarray:
    """``uint32 [N, ...]`` -> ``int64 [N]``."""
    out = np.empty(len(words), np.int64)
    _popcounts(rows(words), out)
    return out


@njit(cache=True, parallel=True)
def _and_counts(p, qt, out):
    m = qt.shape[1]
    for i in prange(p.shape[0]):
        acc = np.zeros(m, np.int64)
        for k in range(p.shape[1]):
            v = np.int64(p[i, k])
            if v == 0:
                continue
            for j in range(m):
                acc[j] += _popc(v & np.int64(qt[k, j]))
        for j in range(m):
            out[j, i] = acc[j]


def and_counts(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``p: uint32 [N, ...]``, ``q: uint32 [M, ...]`` -> ``int64 [M, N]``: ``|P_n ∩ Q_m|``."""
    out = np.empty((len(q), len(p)), np.int64)
    _and_counts(rows(p), np.ascontiguousarray(rows(q).T), out)
    return out


@njit(cache=True, inline="always")
def _add_runs(v, carry, base, y, prefix, acc):
    """Add the runs of set bits of word ``v`` (pixels ``base``..) of row ``y``: each
    run contributes ``prefix[end] - prefix[start]``. ``carry``: the previous pixel's bit."""
    before = ((v << 1) | carry) & FULL
    starts = v & ~before
    ends = ~v & before & FULL
    m = prefix.shape[2]
    while starts != 0:
        x = base + _ctz(starts)
        for j in range(m):
            acc[j] -= prefix[y, x, j]
        starts &= starts - 1
    while ends != 0:
        x = base + _ctz(ends)
        for j in range(m):
            acc[j] += prefix[y, x, j]
        ends &= ends - 1
    return v >> (WORD - 1)


@njit(cache=True)
def _row_runs(rows, lo, hi, prefix, acc):
    width = prefix.shape[1] - 1
    for y in range(lo, hi):
        carry = 0
        for k in range(rows.shape[1]):
            v = np.int64(rows[y, k])
            if v == 0 and carry == 0:
                continue
            carry = _add_runs(v, carry, WORD * k, y, prefix, acc)
        if carry:  # a run reaching the last pixel of a row whose width is a multiple of 32
            for j in range(prefix.shape[2]):
                acc[j] += prefix[y, width, j]


@njit(cache=True, parallel=True)
def _run_sums(words, prefix, band_size, out):
    n, h, nwords = words.shape
    width = prefix.shape[1] - 1
    m = prefix.shape[2]
    for i in prange(n):
        acc = np.zeros(m, np.float64)
        if band_size:
            dil = np.empty((h, nwords), np.int64)
            ero = np.empty((h, nwords), np.int64)
            rows = np.zeros((h, nwords), np.int64)
            lo, hi = _band_into(words[i], width, band_size, dil, ero, rows)
            _row_runs(rows, lo, hi, prefix, acc)
        else:
            _row_runs(words[i], 0, h, prefix, acc)
        for j in range(m):
            out[j, i] = acc[j]


def prefix_sums(maps: np.ndarray) -> np.ndarray:
    """``float [M, H, W]`` -> ``float64 [H, W+1, M]`` (see :func:`.ops_numpy.prefix_sums`)."""
    m, h, w = maps.shape
    out = np.zeros((h, w + 1, m))
    np.cumsum(maps.transpose(1, 2, 0), axis=1, dtype=np.float64, out=out[:, 1:])
    return out


def run_sums(words: np.ndarray, prefix: np.ndarray, band_size: int = 0) -> np.ndarray:
    """Each real map summed over each mask (or, ``band_size`` > 0, its band) -> ``float64 [M, N]``."""
    out = np.empty((prefix.shape[2], len(words)))
    _run_sums(words, prefix, band_size, out)
    return out


@njit(cache=True, parallel=True)
def _segment_sums(labels, maps, out):
    h, w = labels.shape
    for j in prange(maps.shape[0]):
        for y in range(h):
            for x in range(w):
                s = labels[y, x]
                if s >= 0:
                    out[j, s] += maps[j, y, x]


def segment_sums(labels: np.ndarray, maps: np.ndarray, count: int) -> np.ndarray:
    """``labels: int32 [H, W]`` (< 0: none), ``maps: float [M, H, W]`` -> ``float64 [M, count]``."""
    out = np.zeros((len(maps), count))
    _segment_sums(labels, maps, out)
    return out


@njit(cache=True, parallel=True)
def _csr_sums(indptr, indices, values, out):
    for i in prange(len(indptr) - 1):
        for j in range(values.shape[0]):
            acc = 0.0
            for t in range(indptr[i], indptr[i + 1]):
                acc += values[j, indices[t]]
            out[j, i] = acc


def csr_sums(indptr: np.ndarray, indices: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values: float [M, S]`` summed over each CSR row -> ``float64 [M, N]``."""
    out = np.empty((len(values), len(indptr) - 1))
    _csr_sums(indptr, indices, np.ascontiguousarray(values, np.float64), out)
    return out


@njit(cache=True, parallel=True)
def _members(indptr, indices, out):
    for i in prange(len(indptr) - 1):
        for k in range(out.shape[1]):
            out[i, k] = 0
        for t in range(indptr[i], indptr[i + 1]):
            s = indices[t]
            out[i, s // WORD] |= np.uint32(1 << (s % WORD))


def members(indptr: np.ndarray, indices: np.ndarray, count: int) -> np.ndarray:
    """CSR rows as bit sets ``uint32 [N, ceil(count/32)]``."""
    out = np.empty((len(indptr) - 1, words_per_row(count)), np.uint32)
    _members(indptr, indices, out)
    return out


@njit(cache=True, parallel=True)
def _group_sums(member, group_indptr, group_labels, values, out):
    m = values.shape[0]
    for i in prange(member.shape[0]):
        acc = np.zeros(m, np.float64)
        for g in range(len(group_indptr) - 1):
            inside = 0
            for t in range(group_indptr[g], group_indptr[g + 1]):
                s = group_labels[t]
                inside += (np.int64(member[i, s // WORD]) >> (s % WORD)) & 1
            if 0 < inside < group_indptr[g + 1] - group_indptr[g]:
                for j in range(m):
                    acc[j] += values[j, g]
        for j in range(m):
            out[j, i] = acc[j]


def group_sums(member: np.ndarray, group_indptr: np.ndarray, group_labels: np.ndarray,
               values: np.ndarray) -> np.ndarray:
    """``values: float [M, G]`` summed over the groups each set meets but does not contain -> ``[M, N]``."""
    out = np.empty((len(values), len(member)))
    _group_sums(member, group_indptr, group_labels, np.ascontiguousarray(values, np.float64), out)
    return out


@njit(cache=True, parallel=True)
def _over(flat, area, threshold, over):
    n = flat.shape[0]
    for i in prange(n):
        for j in range(n):
            inter = 0
            for k in range(flat.shape[1]):
                inter += _popc(np.int64(flat[i, k]) & np.int64(flat[j, k]))
            union = area[i] + area[j] - inter
            iou = inter / max(union, 1) if union > 0 else 0.0
            over[i, j] = iou >= threshold


@njit(cache=True)
def _greedy(over, order, owner):
    keep = np.empty(len(order), np.int64)
    kept = 0
    for i in order:
        if owner[i] >= 0:
            continue
        owner[i] = i
        keep[kept] = i
        kept += 1
        for j in range(len(owner)):
            if owner[j] < 0 and over[i, j]:
                owner[j] = i
    return keep[:kept]


def nms(words: np.ndarray, order: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Greedy mask NMS (see :func:`.ops_numpy.nms`) -> ``(keep, owner)``."""
    flat = rows(words)
    over = np.empty((len(flat), len(flat)), np.bool_)
    _over(flat, popcounts(flat), float(threshold), over)
    owner = np.full(len(flat), -1, np.int64)
    return _greedy(over, np.asarray(order, np.int64), owner), owner


@njit(cache=True, parallel=True)
def _top_k(flat, order, valid, k, out):
    for r in prange(order.shape[0]):
        kept = 0
        for t in range(valid[r]):
            if kept == k:
                break
            i = order[r, t]
            inside = False
            for q in range(kept):
                j = out[r, q]
                inside = True
                for w in range(flat.shape[1]):
                    if np.int64(flat[i, w]) & ~np.int64(flat[j, w]) & FULL:
                        inside = False
                        break
                if inside:
                    break
            if not inside:
                out[r, kept] = i
                kept += 1


def top_k_not_contained(words: np.ndarray, order: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """See :func:`.ops_numpy.top_k_not_contained` -> ``int64 [K, k]`` (-1 padded)."""
    out = np.full((len(order), k), -1, np.int64)
    _top_k(rows(words), np.asarray(order, np.int64), np.asarray(valid, np.int64), k, out)
    return out


@njit(cache=True, parallel=True)
def _window_sets(labels, size, sets, counts):
    h, w = labels.shape
    r = size // 2
    for y in prange(h):
        buf = np.empty(size * size, np.int32)
        for x in range(w):
            c = 0
            for yy in range(max(0, y - r), min(h, y + r + 1)):
                for xx in range(max(0, x - r), min(w, x + r + 1)):
                    buf[c] = labels[yy, xx]
                    c += 1
            part = np.sort(buf[:c])
            u = 0
            for t in range(c):
                if t == 0 or part[t] != part[t - 1]:
                    sets[y * w + x, u] = part[t]
                    u += 1
            counts[y * w + x] = u


def boundary_groups(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """See :func:`.ops_numpy.boundary_groups`: ``(group int32 [H, W], indptr, labels)``."""
    h, w = labels.shape
    sets = np.full((h * w, size * size), -1, np.int32)
    counts = np.empty(h * w, np.int64)
    _window_sets(np.ascontiguousarray(labels, np.int32), size, sets, counts)
    edge = np.flatnonzero(counts > 1)
    group = np.full(h * w, -1, np.int32)
    if len(edge) == 0:
        return group.reshape(h, w), np.zeros(1, np.int64), np.zeros(0, np.int32)
    unique, inverse = np.unique(sets[edge], axis=0, return_inverse=True)
    group[edge] = inverse.ravel()
    lengths = (unique >= 0).sum(1)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return group.reshape(h, w), indptr, unique[unique >= 0].astype(np.int32)
