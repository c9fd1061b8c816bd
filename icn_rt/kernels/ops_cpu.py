"""The kernels of proposal matching (:mod:`.interface`), compiled by Numba for the CPU and
parallel over proposals (or maps, or rows): the functions of the NumPy reference
(:mod:`.ops_numpy`), with the same arguments and results.

Integer results (popcounts, and every score term of a binary map) are exact and equal
the reference; real sums over segments add the same numbers in another order, and
:func:`run_sums` takes each run's sum as a difference of float64 row prefix sums, so its
rounding error scales with the row's total rather than the run's sum: they agree with
the reference to rounding of the scores' scale, not digit for digit on tiny sums. Words are handled as ``int64`` holding 32
bits, so no operation depends on Numba's typing of unsigned mixed arithmetic.
"""

from __future__ import annotations

import numpy as np
import numba
from numba import njit, prange, types
from numba.extending import intrinsic

from .interface import WORD, Kernels, rows, words_per_row

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
            v = np.int64(0)
            base = WORD * k
            for j in range(min(WORD, w - base)):
                v |= np.int64(masks[i, y, base + j]) << j
            out[i, y, k] = v


# bytes b0..b7 (each 0 or 1) of a little-endian uint64 times this: bits b0..b7 in the top byte
_GATHER = np.uint64(0x0102040810204080)


@njit(cache=True, parallel=True)
def _pack8(eights, out):
    """Rows of a width divisible by 8, read 8 pixels at a time."""
    n, h, g = eights.shape
    ww = out.shape[2]
    for t in prange(n * h):
        i, y = t // h, t % h
        for k in range(ww):
            v = np.int64(0)
            for b in range(min(4, g - 4 * k)):
                byte = (eights[i, y, 4 * k + b] * _GATHER) >> np.uint64(56)
                v |= np.int64(byte) << (8 * b)
            out[i, y, k] = v


def pack(masks: np.ndarray) -> np.ndarray:
    """``bool [N, H, W]`` -> ``uint32 [N, H, ceil(W/32)]``."""
    out = np.empty((*masks.shape[:2], words_per_row(masks.shape[2])), np.uint32)
    masks = np.ascontiguousarray(masks, dtype=np.bool_)
    if masks.shape[2] % 8 == 0 and masks.size:
        _pack8(masks.view(np.uint64), out)
    else:
        _pack(masks, out)
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
def _spread(row, k, r, nwords, last, fill, grow):
    """Word ``k`` of the row dilated (``grow``) or eroded horizontally by ``r`` pixels."""
    prev, cur, nxt = _word(row, k - 1, nwords, last, fill), _word(row, k, nwords, last, fill), \
        _word(row, k + 1, nwords, last, fill)
    acc = cur
    for d in range(1, r + 1):
        right = ((cur >> d) | (nxt << (WORD - d))) & FULL
        left = ((cur << d) | (prev >> (WORD - d))) & FULL
        acc = (acc | right | left) if grow else (acc & right & left)
    return acc


@njit(cache=True)
def _box(mask):
    """The rows ``[y0, y1)`` and words ``[k0, k1)`` holding set bits (empty: y0 == y1)."""
    h, nwords = mask.shape
    y0, y1, k0, k1 = h, 0, nwords, 0
    for y in range(h):
        for k in range(nwords):
            if mask[y, k] != 0:
                y0 = min(y0, y)
                y1 = y + 1
                k0 = min(k0, k)
                k1 = max(k1, k + 1)
    return y0, max(y1, y0), k0, k1


@njit(cache=True, parallel=True)
def _boxes(words, out):
    for i in prange(words.shape[0]):
        out[i, 0], out[i, 1], out[i, 2], out[i, 3] = _box(words[i])


def boxes(words: np.ndarray) -> np.ndarray:
    """``int64 [N, 4]``: each packed mask's rows ``[y0, y1)`` and words ``[k0, k1)`` that
    hold its set bits (``y0 == y1`` when empty) — the only part the CPU kernels read."""
    out = np.empty((len(words), 4), np.int64)
    _boxes(words, out)
    return out


@njit(cache=True)
def _band_box(mask, width, size, y0, y1, k0, k1):
    """Morphological gradient of one packed mask ``[H, WW]`` whose set bits lie in rows
    ``[y0, y1)``, words ``[k0, k1)``, only where it can be set: returns ``(y, k, box)``
    with ``box: int64 [rows, words]`` the band's words from row ``y``, word ``k`` on
    (zero outside it)."""
    h, nwords = mask.shape
    r = size // 2
    last = _last_mask(width)
    if y0 >= y1:
        return 0, 0, np.zeros((0, 0), np.int64)
    lo, hi = max(0, y0 - r), min(h, y1 + r)
    klo, khi = max(0, k0 - 1), min(nwords, k1 + 1)
    dil = np.zeros((y1 - y0, khi - klo), np.int64)
    ero = np.zeros((y1 - y0, khi - klo), np.int64)
    for y in range(y0, y1):
        for k in range(klo, khi):
            dil[y - y0, k - klo] = _spread(mask[y], k, r, nwords, last, 0, True)
            ero[y - y0, k - klo] = _spread(mask[y], k, r, nwords, last, FULL, False)
    box = np.zeros((hi - lo, khi - klo), np.int64)
    for y in range(lo, hi):
        a0, a1 = max(0, y - r), min(h, y + r + 1)  # the window, clipped to the image
        # rows of the window outside [y0, y1) are empty: they erode everything
        whole = a0 >= y0 and a1 <= y1
        for k in range(klo, khi):
            a, b = 0, FULL
            for yy in range(max(a0, y0), min(a1, y1)):
                a |= dil[yy - y0, k - klo]
                b &= ero[yy - y0, k - klo]
            if not whole:
                b = 0
            box[y - lo, k - klo] = a & ~b & (last if k == nwords - 1 else FULL)
    return lo, klo, box


@njit(cache=True, parallel=True)
def _band(words, width, size, out):
    n, h, nwords = words.shape
    for i in prange(n):
        for y in range(h):
            for k in range(nwords):
                out[i, y, k] = 0
        y0, y1, k0, k1 = _box(words[i])
        lo, klo, box = _band_box(words[i], width, size, y0, y1, k0, k1)
        for y in range(box.shape[0]):
            for k in range(box.shape[1]):
                out[i, lo + y, klo + k] = box[y, k]


def band(words: np.ndarray, width: int, size: int) -> np.ndarray:
    """Morphological gradient (``size``² square, odd) of each packed mask, packed."""
    out = np.empty_like(words)
    _band(words, width, size, out)
    return out


@njit(cache=True, parallel=True)
def _background(words, width, out):
    n, h, nwords = words.shape
    last = _last_mask(width)
    for t in prange(n * h):
        i, y = t // h, t % h
        for k in range(nwords):
            out[i, y, k] = ~np.int64(words[i, y, k]) & (last if k == nwords - 1 else FULL)


def background(words: np.ndarray, width: int) -> np.ndarray:
    """B(V) = 1 − V of each packed binary map, packed (see :func:`.ops_numpy.background`)."""
    out = np.empty_like(words)
    _background(words, width, out)
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


@njit(cache=True)
def _endpoints(rows, y0, k0, nwords, width, maps):
    """The runs of set bits of ``rows`` (words of rows ``y0..``, from word ``k0`` of a row
    of ``nwords``; zero before ``k0``) as row-prefix offsets and signs: a run ``[a, b)`` of
    row y adds ``prefix[y, b] - prefix[y, a]``. Offsets index the flat ``[H, W+1, M]``
    prefix at map 0."""
    count = 0
    for i in range(rows.shape[0]):
        carry = 0
        for j in range(rows.shape[1]):
            v = np.int64(rows[i, j])
            if v == 0 and carry == 0:
                continue
            before = ((v << 1) | carry) & FULL
            count += _popc(v & ~before) + _popc(~v & before & FULL)
            carry = v >> (WORD - 1)
        count += carry
    offs = np.empty(count, np.int64)
    signs = np.empty(count, np.float64)
    c = 0
    for i in range(rows.shape[0]):
        row = (y0 + i) * (width + 1)
        carry = 0
        for j in range(rows.shape[1]):
            v = np.int64(rows[i, j])
            if v == 0 and carry == 0:
                continue
            base = WORD * (k0 + j)
            before = ((v << 1) | carry) & FULL
            starts = v & ~before
            ends = ~v & before & FULL
            while starts != 0:
                offs[c] = (row + base + _ctz(starts)) * maps
                signs[c] = -1.0
                c += 1
                starts &= starts - 1
            while ends != 0:
                offs[c] = (row + base + _ctz(ends)) * maps
                signs[c] = 1.0
                c += 1
                ends &= ends - 1
            carry = v >> (WORD - 1)
        if carry:  # the run reaches the first pixel past these words (the row's end when width % 32 == 0)
            offs[c] = (row + min(WORD * (k0 + rows.shape[1]), width)) * maps
            signs[c] = 1.0
            c += 1
    return offs, signs


@njit(cache=True, parallel=True)
def _run_sums(words, prefix, band_size, box, out):
    n, h, nwords = words.shape
    width = prefix.shape[1] - 1
    m = prefix.shape[2]
    flat = prefix.reshape(-1)
    for i in prange(n):
        y0, y1, k0, k1 = box[i, 0], box[i, 1], box[i, 2], box[i, 3]
        if band_size:
            lo, klo, band = _band_box(words[i], width, band_size, y0, y1, k0, k1)
            offs, signs = _endpoints(band, lo, klo, nwords, width, m)
        else:
            offs, signs = _endpoints(words[i, y0:y1, k0:k1], y0, k0, nwords, width, m)
        for j in range(m):
            acc = 0.0
            for e in range(len(offs)):
                acc += signs[e] * flat[offs[e] + j]
            out[j, i] = acc


@njit(cache=True, parallel=True)
def _prefix_sums(maps, out):
    m, h, w = maps.shape
    for y in prange(h):
        for j in range(m):
            acc = 0.0
            out[y, 0, j] = 0.0
            for x in range(w):
                acc += maps[j, y, x]
                out[y, x + 1, j] = acc


def prefix_sums(maps: np.ndarray) -> np.ndarray:
    """``float [M, H, W]`` -> ``float64 [H, W+1, M]`` (see :func:`.ops_numpy.prefix_sums`)."""
    m, h, w = maps.shape
    out = np.empty((h, w + 1, m))
    _prefix_sums(np.ascontiguousarray(maps, np.float64), out)
    return out


def run_sums(words: np.ndarray, prefix: np.ndarray, band_size: int = 0,
             box: np.ndarray | None = None) -> np.ndarray:
    """Each real map summed over each mask (or, ``band_size`` > 0, its band) -> ``float64 [M, N]``.
    ``box``: the masks' :func:`boxes`, when the caller keeps them."""
    out = np.empty((prefix.shape[2], len(words)))
    _run_sums(words, prefix, band_size, boxes(words) if box is None else box, out)
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
def _group_sums(member, seg_indptr, seg_groups, group_size, values, chunks, out):
    """Per set: walk its segments' groups (``seg_*``: the groups of each segment, CSR),
    counting how many of each group's segments the set holds; a group met (count > 0)
    but not contained (count < size) adds its values. Work ~ the groups the set touches:
    the counts are reset group by group, never cleared whole."""
    m = values.shape[0]
    n = member.shape[0]
    n_groups = len(group_size)
    for c in prange(chunks):
        held = np.zeros(n_groups, np.int32)
        touched = np.empty(n_groups, np.int64)
        acc = np.empty(m, np.float64)
        for i in range(c * n // chunks, (c + 1) * n // chunks):
            n_touched = 0
            for w in range(member.shape[1]):
                bits = np.int64(member[i, w])
                while bits:
                    s = w * WORD + _ctz(bits)
                    bits &= bits - 1
                    for t in range(seg_indptr[s], seg_indptr[s + 1]):
                        g = seg_groups[t]
                        if held[g] == 0:
                            touched[n_touched] = g
                            n_touched += 1
                        held[g] += 1
            acc[:] = 0.0
            for q in range(n_touched):
                g = touched[q]
                if held[g] < group_size[g]:
                    for j in range(m):
                        acc[j] += values[j, g]
                held[g] = 0
            for j in range(m):
                out[j, i] = acc[j]


def group_sums(member: np.ndarray, group_indptr: np.ndarray, group_labels: np.ndarray,
               values: np.ndarray) -> np.ndarray:
    """``values: float [M, G]`` summed over the groups each set meets but does not contain
    -> ``[M, N]``. Groups whose values are all zero are left out of the walk (a PRM is zero
    outside its peak's receptive field and wherever its gradient is negative)."""
    out = np.empty((len(values), len(member)))
    values = np.ascontiguousarray(values, np.float64)
    sizes = np.diff(group_indptr)
    group_of = np.repeat(np.arange(len(sizes)), sizes)
    live = (values != 0).any(0)[group_of]
    group_labels, group_of = group_labels[live], group_of[live]
    by_segment = np.argsort(group_labels, kind="stable")
    seg_indptr = np.zeros(member.shape[1] * WORD + 1, np.int64)
    np.cumsum(np.bincount(group_labels, minlength=len(seg_indptr) - 1), out=seg_indptr[1:])
    chunks = max(1, min(len(member), 8 * numba.get_num_threads()))
    _group_sums(member, seg_indptr, group_of[by_segment].astype(np.int64), sizes.astype(np.int64), values, chunks,
                out)
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
def _window_sets(labels, size, sets, counts, hashes):
    """Per pixel: the sorted distinct labels of its window into ``sets`` (padded with -1;
    rows of one-label windows are left unwritten), their number, and their FNV-1a hash."""
    h, w = labels.shape
    r = size // 2
    for y in prange(h):
        y0, y1 = max(0, y - r), min(h, y + r + 1)
        for x in range(w):
            x0, x1 = max(0, x - r), min(w, x + r + 1)
            first = labels[y, x]
            uniform = True
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    if labels[yy, xx] != first:
                        uniform = False
            p = y * w + x
            if uniform:
                counts[p] = 1
                continue
            row = sets[p]
            u = 0
            for yy in range(y0, y1):
                for xx in range(x0, x1):
                    v = labels[yy, xx]
                    at = u
                    for t in range(u):
                        if row[t] >= v:
                            at = t
                            break
                    if at < u and row[at] == v:
                        continue
                    for t in range(u, at, -1):
                        row[t] = row[t - 1]
                    row[at] = v
                    u += 1
            hsh = np.uint64(14695981039346656037)
            for t in range(u):
                hsh = (hsh ^ np.uint64(row[t] & 0xFFFFFFFF)) * np.uint64(1099511628211)
            for t in range(u, row.shape[0]):
                row[t] = -1
            counts[p] = u
            hashes[p] = hsh


@njit(cache=True)
def _same_sets(sets, pixels, first, inverse):
    """Whether every pixel's set equals that of the first pixel with its hash."""
    for t in range(len(pixels)):
        a, b = sets[pixels[t]], sets[pixels[first[inverse[t]]]]
        for q in range(a.shape[0]):
            if a[q] != b[q]:
                return False
    return True


def _unique_sets(sets: np.ndarray, hashes: np.ndarray, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``sets[pixels]`` in order of first occurrence, and each
    pixel's row number, by sorting the rows' 64-bit hashes instead of the rows; any hash
    collision is caught and falls back to NumPy's row comparison."""
    _, first, inverse = np.unique(hashes[pixels], return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    if not _same_sets(sets, pixels, first, inverse):
        _, first, inverse = np.unique(sets[pixels], axis=0, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
    order = np.argsort(first)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    return sets[pixels[first[order]]], rank[inverse]


def boundary_groups(labels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """See :func:`.ops_numpy.boundary_groups`: ``(group int32 [H, W], indptr, labels)``."""
    h, w = labels.shape
    sets = np.empty((h * w, size * size), np.int32)
    counts = np.empty(h * w, np.int64)
    hashes = np.empty(h * w, np.uint64)
    _window_sets(np.ascontiguousarray(labels, np.int32), size, sets, counts, hashes)
    edge = np.flatnonzero(counts > 1)
    group = np.full(h * w, -1, np.int32)
    if len(edge) == 0:
        return group.reshape(h, w), np.zeros(1, np.int64), np.zeros(0, np.int32)
    unique, inverse = _unique_sets(sets, hashes, edge)
    group[edge] = inverse
    lengths = (unique >= 0).sum(1)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return group.reshape(h, w), indptr, unique[unique >= 0].astype(np.int32)


class CpuKernels(Kernels):
    name = "cpu"
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
