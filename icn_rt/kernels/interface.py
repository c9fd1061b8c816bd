"""The kernel interface of proposal matching, declared once (docs/design.md §3).

Every backend implements all of it, with the same arguments and the same results:
:mod:`.ops_numpy` (plain NumPy, the reference the others are tested against),
:mod:`.ops_cpu` (Numba, parallel on the CPU) and :mod:`.ops_cuda` (Numba CUDA on
PyTorch's GPU tensors). Callers hold the backend object that :func:`icn_rt.kernels.ops`
picks for their device and never name one.

Bit-packed masks: ``uint32 [N, H, WW]``, ``WW = ceil(W / 32)``; bit ``j`` of word ``k`` of
a row is pixel ``x = 32 k + j``; padding bits past ``W`` are 0. Rows are packed
separately, so the 2-D neighbourhood of a word is its neighbours in the array. (On a GPU
the words travel as ``torch.int32``: PyTorch's unsigned 32-bit type has few operations.)

Binary maps are packed the same way, and every term of a score is a popcount of an AND
(:meth:`Kernels.and_counts`); real-valued maps are summed over a proposal's runs of set
pixels from row prefix sums (:meth:`Kernels.run_sums`). Segment proposals never become
masks: :meth:`Kernels.segment_sums` reduces a map over superpixels in one pass over the
pixels and :meth:`Kernels.csr_sums` gathers each proposal's superpixels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from . import arrays

WORD = 32


def words_per_row(width: int) -> int:
    return (width + WORD - 1) // WORD


def rows(x):
    """``[N, ...]`` -> ``[N, prod(...)]`` (also for N = 0), for arrays and tensors."""
    return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))


class Kernels(ABC):
    """One backend. ``device``: where its arrays live — a torch device for the CUDA
    kernels, None for NumPy arrays on the host. Arrays in and out are that kind
    (:mod:`.arrays` tells them apart)."""

    name: str
    device = None

    def to(self, a: np.ndarray):
        """A host array as this backend's array, on its device."""
        return arrays.to(a, self.device)

    @staticmethod
    def host(x) -> np.ndarray:
        """This backend's array as a host NumPy array."""
        return arrays.host(x)

    @property
    def host_kernels(self) -> Kernels:
        """The backend that does this one's work on the host: packing host masks
        (:meth:`pack_masks`), finding boundary groups (:meth:`boundary_groups`), and, for
        a device backend handed host arrays, the running sums. A host backend is its own;
        the CUDA backend's is the Numba CPU backend."""
        return self

    # --- packing ------------------------------------------------------------------------

    @abstractmethod
    def pack(self, masks):
        """``bool [N, H, W]`` -> packed ``[N, H, ceil(W/32)]``."""

    @abstractmethod
    def pack_masks(self, masks: np.ndarray):
        """Host masks ``bool [N, H, W]`` packed, on this backend's device (a device backend
        packs on the host and copies the words: 32× less to copy than the masks)."""

    @abstractmethod
    def unpack(self, words, width: int):
        """Packed ``[N, H, WW]`` -> ``bool [N, H, width]``."""

    @abstractmethod
    def band(self, words, width: int, size: int):
        """The morphological gradient (``size``² square, odd; pixels outside the image take
        no part) of each packed mask of image width ``width``, packed."""

    @abstractmethod
    def background(self, words, width: int):
        """B(V) = 1 − V of each packed binary map of image width ``width``, packed (padding
        stays 0). Eq. 5's background term Σ_P B(V) is ``|P ∩ B(V)| = |P| − |P ∩ V|``."""

    @abstractmethod
    def boxes(self, words):
        """``int64 [N, 4]``: each packed mask's rows ``[y0, y1)`` and words ``[k0, k1)`` that
        hold its set bits (an empty mask gives ``(H, H, WW, 0)``) — all of a mask that the
        CPU run sums read."""

    # --- counts and sums ----------------------------------------------------------------

    @abstractmethod
    def popcounts(self, words):
        """``uint32 [N, ...]`` -> ``int64 [N]`` set bits of each mask."""

    @abstractmethod
    def and_counts(self, p, q):
        """``p: [N, ...]``, ``q: [M, ...]`` packed -> ``int64 [M, N]``: ``|P_n ∩ Q_m|``."""

    @abstractmethod
    def prefix_sums(self, maps):
        """``float [M, H, W]`` -> ``float64 [H, W+1, M]``: exclusive running sums along rows,
        the maps last (a run's M sums are adjacent), what :meth:`run_sums` reads."""

    @abstractmethod
    def run_sums(self, words, prefix, band_size: int = 0, box=None):
        """Each real map summed over each mask -> ``float64 [M, N]``. ``words: [N, H, WW]``,
        ``prefix``: the maps' :meth:`prefix_sums`. With ``band_size`` > 0 the sum is over
        each mask's own :meth:`band` instead. ``box``: the masks' :meth:`boxes` when the
        caller keeps them (the CPU kernels read only inside them; the others skip empty
        words without)."""

    # --- segments -----------------------------------------------------------------------

    @abstractmethod
    def segment_sums(self, labels, maps, count: int):
        """``labels: int32 [H, W]`` (< 0: no segment), ``maps: float [M, H, W]`` ->
        ``float64 [M, count]``: each map summed over each segment."""

    @abstractmethod
    def csr_sums(self, indptr, indices, values):
        """``values: float [M, S]`` summed over each row of the CSR ``(indptr, indices)``
        -> ``float64 [M, N]``."""

    @abstractmethod
    def members(self, indptr, indices, count: int):
        """CSR rows as bit sets: ``uint32 [N, ceil(count/32)]``, bit ``s`` set iff ``s`` is in row n."""

    @abstractmethod
    def boundary_groups(self, labels: np.ndarray, size: int):
        """The pixels of the host label map ``labels: int [H, W]`` whose ``size``² window
        (clipped to the image) holds more than one segment, grouped by that set of
        segments, on this backend's device.

        A union of segments P has such a pixel in its morphological gradient iff P meets
        the set and does not contain it, and no other pixel ever; so a proposal's contour
        sum is a sum over groups (:meth:`group_sums`). Returns ``(group int32 [H, W]`` (-1:
        interior pixel), ``indptr int64 [G+1]``, ``labels int32 [nnz]``); each set sorted,
        the groups in order of their first pixel (row by row). Found on the host (it
        hashes label sets) by every backend."""

    @abstractmethod
    def group_sums(self, member, group_indptr, group_labels, values):
        """``values: float [M, G]`` summed, for each set of ``member`` (``uint32 [N, SW]``),
        over the groups (CSR of segment ids) that the set meets but does not contain
        -> ``float64 [M, N]``."""

    # --- selection ----------------------------------------------------------------------

    @abstractmethod
    def nms(self, words, order, threshold: float):
        """Greedy mask NMS over packed masks ``[N, ...]`` taken in ``order``. Returns
        ``(keep int64 [n] in order taken, owner int64 [N])``: ``owner[i]`` is the kept
        mask that suppressed i (itself if kept). IoU ≥ ``threshold`` suppresses; two
        empty masks have IoU 0."""

    @abstractmethod
    def top_k_not_contained(self, words, order, valid, k: int):
        """For each row of ``order: int64 [K, N]`` (masks best first, the first
        ``valid[r]`` eligible): walk it, keep a mask unless it lies inside one already
        kept, stop at ``k`` -> ``int64 [K, k]``, padded with -1."""
