"""The kernels of proposal matching (:mod:`.interface`) in Numba CUDA: the functions of the
NumPy reference (:mod:`.ops_numpy`), with the same arguments and results.

Arrays are PyTorch CUDA tensors, shared with Numba zero-copy (``cuda.as_cuda_array``)
and launched on PyTorch's current stream, so nothing goes back to the host between
stages; results come back as tensors on the same device. Packed words travel as
``torch.int32`` (PyTorch's unsigned 32-bit type has few operations) and are read by the
kernels as ``uint32``. Under ``NUMBA_ENABLE_CUDASIM=1`` (CI, no GPU) the same kernels
run in Numba's simulator on CPU tensors or NumPy arrays.

The kernels use shared memory and ``syncthreads`` only — no warp intrinsics, which the
simulator lacks — and per-thread accumulators of at most :data:`MAX_MAPS` maps (callers
with more maps are served in chunks). Float sums (over runs, segments) add the same
numbers as the CPU in another order: equal to rounding; integer terms are exact.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import config, cuda

from . import arrays
from .arrays import cast, empty, is_tensor, numel
from .interface import WORD, Kernels, rows, words_per_row


def restore_numpy_aliases() -> None:
    """Put back ``np.row_stack`` (NumPy's alias of ``np.vstack``) where NumPy lacks it.

    numba-cuda (0.30.4, the newest) registers an overload of ``np.row_stack``, unguarded,
    when it compiles its first kernel (Numba's CPU compiler guards the same line by NumPy
    version). NumPy 2.5 removed the alias, so without it every CUDA kernel fails to
    compile: seen on the GPU machine (numpy 2.5.2, numba-cuda 0.30.4)."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack


restore_numpy_aliases()

FULL = 0xFFFFFFFF
MAX_MAPS = 64
SIMULATED = bool(config.ENABLE_CUDASIM)
THREADS = 32 if SIMULATED else 128


# --- arrays -----------------------------------------------------------------------------

def _device(x):
    """A Numba view of ``x`` (no copy): a CUDA tensor's memory, or in the simulator the
    array itself."""
    if is_tensor(x):
        if x.is_cuda:
            return cuda.as_cuda_array(x.contiguous())
        if not SIMULATED:
            raise TypeError("the CUDA kernels take CUDA tensors; this one is on the CPU")
        return x.contiguous().numpy()
    if not SIMULATED:
        raise TypeError("the CUDA kernels take CUDA tensors; got a NumPy array")
    return np.ascontiguousarray(x)


def _words(x):
    """Packed words (int32 tensor or uint32 array) as a ``uint32`` Numba view."""
    view = _device(x)
    return view.view(np.uint32) if view.dtype != np.uint32 else view


def _stream():
    """PyTorch's current stream as a Numba stream (ordering with PyTorch's work is ours)."""
    if SIMULATED:
        return 0
    import torch

    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


def _blocks(n: int, threads: int = THREADS) -> int:
    return max(1, math.ceil(n / threads))


# --- device functions -------------------------------------------------------------------

@cuda.jit(device=True, inline=True)
def _popc(v):
    return cuda.popc(v)


@cuda.jit(device=True, inline=True)
def _ctz(v):
    """Trailing zeros of a non-zero word."""
    return cuda.popc((v - 1) & ~v & FULL)


@cuda.jit(device=True, inline=True)
def _last_mask(width):
    rest = width - WORD * ((width + WORD - 1) // WORD - 1)
    return FULL if rest == WORD else (1 << rest) - 1


@cuda.jit(device=True, inline=True)
def _word(words, i, y, k, nwords, last, fill):
    if k < 0 or k >= nwords:
        return fill
    v = np.int64(words[i, y, k])
    if k == nwords - 1:
        v = (v & last) | (fill & ~last & FULL)
    return v


@cuda.jit(device=True, inline=True)
def _shifted(words, i, y, k, d, nwords, last, fill):
    if d == 0:
        return _word(words, i, y, k, nwords, last, fill)
    if d > 0:
        return ((_word(words, i, y, k, nwords, last, fill) >> d)
                | (_word(words, i, y, k + 1, nwords, last, fill) << (WORD - d))) & FULL
    return ((_word(words, i, y, k, nwords, last, fill) << -d)
            | (_word(words, i, y, k - 1, nwords, last, fill) >> (WORD + d))) & FULL


@cuda.jit(device=True, inline=True)
def _band_word(words, i, y, k, width, size):
    """Word ``k`` of row ``y`` of the morphological gradient of mask ``i``."""
    h, nwords = words.shape[1], words.shape[2]
    r = size // 2
    last = _last_mask(width)
    a = np.int64(0)
    b = np.int64(FULL)
    for yy in range(max(0, y - r), min(h, y + r + 1)):
        for d in range(-r, r + 1):
            a |= _shifted(words, i, yy, k, d, nwords, last, 0)
            b &= _shifted(words, i, yy, k, d, nwords, last, FULL)
    return a & ~b & (last if k == nwords - 1 else FULL)


@cuda.jit(device=True, inline=True)
def _block_sum(part, value):
    """The sum of ``value`` over the block's threads, returned to all of them (``part``:
    shared scratch of :data:`THREADS` entries, free again on return)."""
    tid = cuda.threadIdx.x
    part[tid] = value
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step:
            part[tid] += part[tid + step]
        cuda.syncthreads()
        step //= 2
    total = part[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True, inline=True)
def _split3(t, h, w):
    """Flat index ``t`` of an ``[n, h, w]`` array -> ``(i, y, x)``."""
    return t // (h * w), (t // w) % h, t % w


# --- kernels ----------------------------------------------------------------------------

def _pack_kernel(masks, out):
    n, h, w = masks.shape
    nwords = out.shape[2]
    t = cuda.grid(1)
    if t >= n * h * nwords:
        return
    i, y, k = _split3(t, h, nwords)
    v = np.int64(0)
    for j in range(min(WORD, w - WORD * k)):
        if masks[i, y, WORD * k + j]:
            v |= np.int64(1) << j
    out[i, y, k] = v


def _unpack_kernel(words, out):
    n, h, w = out.shape
    t = cuda.grid(1)
    if t >= n * h * w:
        return
    i, y, x = _split3(t, h, w)
    out[i, y, x] = (np.int64(words[i, y, x // WORD]) >> (x % WORD)) & 1


def _band_kernel(words, width, size, out):
    n, h, nwords = words.shape
    t = cuda.grid(1)
    if t >= n * h * nwords:
        return
    i, y, k = _split3(t, h, nwords)
    out[i, y, k] = _band_word(words, i, y, k, width, size)


def _background_kernel(words, width, out):
    n, h, nwords = words.shape
    t = cuda.grid(1)
    if t >= n * h * nwords:
        return
    i, y, k = _split3(t, h, nwords)
    out[i, y, k] = ~np.int64(words[i, y, k]) & (_last_mask(width) if k == nwords - 1 else FULL)


def _boxes_kernel(words, out):
    n, h, nwords = words.shape
    i = cuda.grid(1)
    if i >= n:
        return
    y0, y1, k0, k1 = h, 0, nwords, 0
    for y in range(h):
        for k in range(nwords):
            if words[i, y, k] != 0:
                y0 = min(y0, y)
                y1 = y + 1
                k0 = min(k0, k)
                k1 = max(k1, k + 1)
    out[i, 0] = y0
    out[i, 1] = max(y1, y0)
    out[i, 2] = k0
    out[i, 3] = k1


def _popcounts_kernel(flat, out):
    part = cuda.shared.array(THREADS, np.int64)
    i, tid = cuda.blockIdx.x, cuda.threadIdx.x
    c = 0
    for k in range(tid, flat.shape[1], THREADS):
        c += _popc(np.int64(flat[i, k]))
    total = _block_sum(part, c)
    if tid == 0:
        out[i] = total


def _and_counts_kernel(p, q, out):
    """Block per mask of ``p``; each thread reads its words of the mask once and counts
    against every map of ``q``, then the block adds the threads' counts."""
    acc = cuda.local.array(MAX_MAPS, np.int64)
    part = cuda.shared.array(THREADS, np.int64)
    i, tid = cuda.blockIdx.x, cuda.threadIdx.x
    m = q.shape[0]
    for j in range(m):
        acc[j] = 0
    for k in range(tid, p.shape[1], THREADS):
        v = np.int64(p[i, k])
        if v != 0:
            for j in range(m):
                acc[j] += _popc(v & np.int64(q[j, k]))
    for j in range(m):
        total = _block_sum(part, acc[j])
        if tid == 0:
            out[j, i] = total


def _run_sums_kernel(words, prefix, band_size, out):
    """Block per mask, a thread per row (strided): walk the row's words, add
    ``prefix[end] - prefix[start]`` for every run of set bits (of the mask, or of its
    band computed on the fly), then the block adds the rows."""
    acc = cuda.local.array(MAX_MAPS, np.float64)
    part = cuda.shared.array(THREADS, np.float64)
    i, tid = cuda.blockIdx.x, cuda.threadIdx.x
    h, nwords = words.shape[1], words.shape[2]
    width = prefix.shape[1] - 1
    m = prefix.shape[2]
    for j in range(m):
        acc[j] = 0.0
    for y in range(tid, h, THREADS):
        carry = np.int64(0)
        for k in range(nwords):
            v = _band_word(words, i, y, k, width, band_size) if band_size else np.int64(words[i, y, k])
            if v == 0 and carry == 0:
                continue
            before = ((v << 1) | carry) & FULL
            starts = v & ~before
            ends = ~v & before & FULL
            while starts != 0:
                x = WORD * k + _ctz(starts)
                for j in range(m):
                    acc[j] -= prefix[y, x, j]
                starts &= starts - 1
            while ends != 0:
                x = WORD * k + _ctz(ends)
                for j in range(m):
                    acc[j] += prefix[y, x, j]
                ends &= ends - 1
            carry = v >> (WORD - 1)
        if carry:
            for j in range(m):
                acc[j] += prefix[y, width, j]
    for j in range(m):
        total = _block_sum(part, acc[j])
        if tid == 0:
            out[j, i] = total


def _segment_sums_kernel(labels, maps, out):
    h, w = labels.shape
    t = cuda.grid(1)
    if t >= h * w:
        return
    y, x = t // w, t % w
    s = labels[y, x]
    if s >= 0:
        for j in range(maps.shape[0]):
            cuda.atomic.add(out, (j, s), maps[j, y, x])


def _csr_sums_kernel(indptr, indices, values, out):
    i = cuda.grid(1)
    if i >= indptr.shape[0] - 1:
        return
    for j in range(values.shape[0]):
        acc = 0.0
        for t in range(indptr[i], indptr[i + 1]):
            acc += values[j, indices[t]]
        out[j, i] = acc


def _members_kernel(indptr, indices, out):
    i = cuda.grid(1)
    if i >= out.shape[0]:
        return
    for k in range(out.shape[1]):
        out[i, k] = 0
    for t in range(indptr[i], indptr[i + 1]):
        s = indices[t]
        out[i, s // WORD] = np.int64(out[i, s // WORD]) | (np.int64(1) << (s % WORD))


def _group_sums_kernel(member, group_indptr, group_labels, values, out):
    acc = cuda.local.array(MAX_MAPS, np.float64)
    i = cuda.grid(1)
    if i >= member.shape[0]:
        return
    m = values.shape[0]
    for j in range(m):
        acc[j] = 0.0
    for g in range(group_indptr.shape[0] - 1):
        inside = 0
        for t in range(group_indptr[g], group_indptr[g + 1]):
            s = group_labels[t]
            inside += (np.int64(member[i, s // WORD]) >> (s % WORD)) & 1
        if 0 < inside < group_indptr[g + 1] - group_indptr[g]:
            for j in range(m):
                acc[j] += values[j, g]
    for j in range(m):
        out[j, i] = acc[j]


def _over_kernel(flat, area, threshold, over):
    """Thread per (mask i, 32 masks j): bit j of ``over[i]`` is IoU(i, j) ≥ threshold."""
    n = flat.shape[0]
    t = cuda.grid(1)
    if t >= n * over.shape[1]:
        return
    i, block = t // over.shape[1], t % over.shape[1]
    bits = np.int64(0)
    for b in range(WORD):
        j = block * WORD + b
        if j >= n:
            break
        inter = 0
        for k in range(flat.shape[1]):
            inter += _popc(np.int64(flat[i, k]) & np.int64(flat[j, k]))
        union = area[i] + area[j] - inter
        iou = inter / max(union, 1) if union > 0 else 0.0
        if iou >= threshold:
            bits |= np.int64(1) << b
    over[i, block] = bits


def _greedy_kernel(over, order, owner):
    """One block walks ``order``: an unowned mask is kept and owns every unowned mask
    its row of ``over`` marks, the threads sharing the row."""
    tid = cuda.threadIdx.x
    n = owner.shape[0]
    for t in range(n):
        i = order[t]
        cuda.syncthreads()
        if owner[i] >= 0:
            continue
        cuda.syncthreads()
        for j in range(tid, n, THREADS):
            if j == i:
                owner[j] = i
            elif owner[j] < 0 and (np.int64(over[i, j // WORD]) >> (j % WORD)) & 1:
                owner[j] = i


def _top_k_kernel(flat, order, valid, k, out):
    """Block per row of ``order``: walk it, the threads sharing each containment test."""
    flag = cuda.shared.array(1, np.int32)
    r, tid = cuda.blockIdx.x, cuda.threadIdx.x
    kept = 0
    for t in range(valid[r]):
        if kept == k:
            break
        i = order[r, t]
        inside = False
        for q in range(kept):
            j = out[r, q]
            cuda.syncthreads()
            if tid == 0:
                flag[0] = 0
            cuda.syncthreads()
            for w in range(tid, flat.shape[1], THREADS):
                if np.int64(flat[i, w]) & ~np.int64(flat[j, w]) & FULL:
                    flag[0] = 1
            cuda.syncthreads()
            if flag[0] == 0:
                inside = True
                break
        if not inside:
            cuda.syncthreads()
            if tid == 0:
                out[r, kept] = i
            kept += 1
            cuda.syncthreads()


_SIGNATURES = {
    "pack": (_pack_kernel, "void(uint8[:, :, ::1], uint32[:, :, ::1])"),
    "unpack": (_unpack_kernel, "void(uint32[:, :, ::1], uint8[:, :, ::1])"),
    "band": (_band_kernel, "void(uint32[:, :, ::1], int64, int64, uint32[:, :, ::1])"),
    "background": (_background_kernel, "void(uint32[:, :, ::1], int64, uint32[:, :, ::1])"),
    "boxes": (_boxes_kernel, "void(uint32[:, :, ::1], int64[:, ::1])"),
    "popcounts": (_popcounts_kernel, "void(uint32[:, ::1], int64[::1])"),
    "and_counts": (_and_counts_kernel, "void(uint32[:, ::1], uint32[:, ::1], int64[:, ::1])"),
    "run_sums": (_run_sums_kernel, "void(uint32[:, :, ::1], float64[:, :, ::1], int64, float64[:, ::1])"),
    "segment_sums": (_segment_sums_kernel, "void(int32[:, ::1], float64[:, :, ::1], float64[:, ::1])"),
    "csr_sums": (_csr_sums_kernel, "void(int64[::1], int32[::1], float64[:, ::1], float64[:, ::1])"),
    "members": (_members_kernel, "void(int64[::1], int32[::1], uint32[:, ::1])"),
    "group_sums": (_group_sums_kernel, "void(uint32[:, ::1], int64[::1], int32[::1], float64[:, ::1], "
                                       "float64[:, ::1])"),
    "over": (_over_kernel, "void(uint32[:, ::1], int64[::1], float64, uint32[:, ::1])"),
    "greedy": (_greedy_kernel, "void(uint32[:, ::1], int64[::1], int64[::1])"),
    "top_k": (_top_k_kernel, "void(uint32[:, ::1], int64[:, ::1], int64[::1], int64, int64[:, ::1])"),
}


@functools.cache
def _kernel(name: str):
    """Kernel ``name``, compiled for its signature on first use."""
    func, signature = _SIGNATURES[name]
    return cuda.jit(signature)(func)


def available() -> bool:
    """Whether these kernels can run: a CUDA GPU Numba can use, or the simulator."""
    try:
        return SIMULATED or cuda.is_available()
    except Exception:  # a driver that fails to initialise is "not available"
        return False


# --- the interface ----------------------------------------------------------------------

def _launch(name, blocks, threads, *args):
    _kernel(name)[blocks, threads, _stream()](*args)


def pack(masks):
    """``bool [N, H, W]`` -> packed ``[N, H, ceil(W/32)]`` (int32 tensor / uint32 array)."""
    n, h, w = masks.shape
    out = empty(masks, (n, h, words_per_row(w)), np.uint32)
    _launch("pack", _blocks(numel(out)), THREADS, _device(cast(masks, np.uint8)), _words(out))
    return out


def unpack(words, width: int):
    """Packed ``[N, H, WW]`` -> ``bool [N, H, width]``."""
    out = empty(words, (*words.shape[:2], width), np.uint8)
    _launch("unpack", _blocks(numel(out)), THREADS, _words(words), _device(out))
    return cast(out, np.bool_)


def band(words, width: int, size: int):
    """Morphological gradient (``size``² square, odd) of each packed mask, packed."""
    out = empty(words, tuple(words.shape), np.uint32)
    _launch("band", _blocks(numel(words)), THREADS, _words(words), width, size, _words(out))
    return out


def background(words, width: int):
    """B(V) = 1 − V of each packed binary map, packed."""
    out = empty(words, tuple(words.shape), np.uint32)
    _launch("background", _blocks(numel(words)), THREADS, _words(words), width, _words(out))
    return out


def boxes(words):
    """``int64 [N, 4]``: each packed mask's rows ``[y0, y1)`` and words ``[k0, k1)`` holding
    set bits (empty: ``(H, H, WW, 0)``)."""
    out = empty(words, (len(words), 4), np.int64)
    if len(words):
        _launch("boxes", _blocks(len(words)), THREADS, _words(words), _device(out))
    return out


def popcounts(words):
    out = empty(words, (len(words),), np.int64)
    if len(words):
        _launch("popcounts", len(words), THREADS, _words(rows(words)), _device(out))
    return out


def _map_chunks(m: int):
    return [(s, min(s + MAX_MAPS, m)) for s in range(0, m, MAX_MAPS)]


def and_counts(p, q):
    """``|P_n ∩ Q_m|`` -> ``int64 [M, N]``."""
    out = empty(p, (len(q), len(p)), np.int64)
    if len(p) == 0 or len(q) == 0:
        return out
    fp, fq = rows(p), rows(q)
    for s, e in _map_chunks(len(q)):
        _launch("and_counts", len(p), THREADS, _words(fp), _words(fq[s:e]), _device(out[s:e]))
    return out


def prefix_sums(maps):
    """``float [M, H, W]`` tensor -> ``float64 [H, W+1, M]`` on the maps' device."""
    import torch

    m, h, w = maps.shape
    out = torch.zeros((h, w + 1, m), dtype=torch.float64, device=maps.device)
    torch.cumsum(maps.permute(1, 2, 0).to(torch.float64), dim=1, out=out[:, 1:])
    return out


def run_sums(words, prefix, band_size: int = 0, box=None):
    """Each real map summed over each mask (or its band) -> ``float64 [M, N]``. ``box``
    (the CPU kernels' bounding boxes) is accepted and not needed: threads skip empty words."""
    m = prefix.shape[2]
    out = empty(words, (m, len(words)), np.float64)
    if len(words) == 0 or m == 0:
        return out
    for s, e in _map_chunks(m):
        _launch("run_sums", len(words), THREADS, _words(words), _device(prefix[:, :, s:e]), band_size,
                _device(out[s:e]))
    return out


def segment_sums(labels, maps, count: int):
    out = empty(maps, (len(maps), count), np.float64, fill=0.0)
    if len(maps) and labels.shape[0] * labels.shape[1]:
        _launch("segment_sums", _blocks(labels.shape[0] * labels.shape[1]), THREADS,
                _device(cast(labels, np.int32)), _device(cast(maps, np.float64)), _device(out))
    return out


def csr_sums(indptr, indices, values):
    out = empty(values, (len(values), len(indptr) - 1), np.float64)
    if len(indptr) > 1:
        _launch("csr_sums", _blocks(len(indptr) - 1), THREADS, _device(cast(indptr, np.int64)),
                _device(cast(indices, np.int32)), _device(cast(values, np.float64)), _device(out))
    return out


def members(indptr, indices, count: int):
    out = empty(indptr, (len(indptr) - 1, words_per_row(count)), np.uint32)
    if len(indptr) > 1:
        _launch("members", _blocks(len(indptr) - 1), THREADS, _device(cast(indptr, np.int64)),
                _device(cast(indices, np.int32)), _words(out))
    return out


def group_sums(member, group_indptr, group_labels, values):
    m = len(values)
    out = empty(values, (m, len(member)), np.float64)
    if len(member) == 0 or m == 0:
        return out
    for s, e in _map_chunks(m):
        part = values[s:e]
        _launch("group_sums", _blocks(len(member)), THREADS, _words(member), _device(cast(group_indptr, np.int64)),
                _device(cast(group_labels, np.int32)), _device(cast(part, np.float64)), _device(out[s:e]))
    return out


def nms(words, order, threshold: float):
    """Greedy mask NMS -> ``(keep int64 [n] in order taken, owner int64 [N])``."""
    n = len(words)
    owner = empty(words, (n,), np.int64, fill=-1)
    if n == 0:
        return empty(words, (0,), np.int64), owner
    flat = rows(words)
    area = popcounts(flat)
    over = empty(words, (n, words_per_row(n)), np.uint32)
    _launch("over", _blocks(n * words_per_row(n)), THREADS, _words(flat), _device(area), float(threshold),
            _words(over))
    order = cast(order, np.int64)
    _launch("greedy", 1, THREADS, _words(over), _device(order), _device(owner))
    keep = order[owner[order] == order]
    return keep, owner


def top_k_not_contained(words, order, valid, k: int):
    """See :func:`.ops_numpy.top_k_not_contained` -> ``int64 [K, k]`` (-1 padded)."""
    out = empty(words, (len(order), k), np.int64, fill=-1)
    if len(order):
        _launch("top_k", len(order), THREADS, _words(rows(words)), _device(cast(order, np.int64)),
                _device(cast(valid, np.int64)), k, _device(out))
    return out


class CudaKernels(Kernels):
    """``device``: the CUDA device its tensors live on (in the simulator also the CPU, or
    None for NumPy arrays)."""

    name = "cuda"

    def __init__(self, device=None) -> None:
        self.device = device

    @functools.cached_property
    def host_kernels(self) -> Kernels:
        from . import backend

        return backend("cpu")

    def pack_masks(self, masks: np.ndarray):
        return self.to(self.host_kernels.pack(masks))

    def boundary_groups(self, labels: np.ndarray, size: int):
        return tuple(self.to(a) for a in self.host_kernels.boundary_groups(arrays.host(labels), size))

    def prefix_sums(self, maps):
        """See :func:`prefix_sums`; host arrays (the simulator's) are summed by :attr:`host_kernels`."""
        return prefix_sums(maps) if is_tensor(maps) else self.host_kernels.prefix_sums(maps)

    pack = staticmethod(pack)
    unpack = staticmethod(unpack)
    band = staticmethod(band)
    background = staticmethod(background)
    boxes = staticmethod(boxes)
    popcounts = staticmethod(popcounts)
    and_counts = staticmethod(and_counts)
    run_sums = staticmethod(run_sums)
    segment_sums = staticmethod(segment_sums)
    csr_sums = staticmethod(csr_sums)
    members = staticmethod(members)
    group_sums = staticmethod(group_sums)
    nms = staticmethod(nms)
    top_k_not_contained = staticmethod(top_k_not_contained)
