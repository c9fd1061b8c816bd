"""Object proposals of one image, in either of their two forms, and their file formats.

*Segment* proposals (MCG, selective search): a superpixel label map plus, per proposal,
the ids of the superpixels it unites, held as CSR (``indptr``, ``indices``). *Mask*
proposals: any binary masks. :class:`Proposals` holds either; the rest of icn-rt uses
only this type.

Files, one per image, found by :func:`proposal_path`:

- ``<id>.mat`` — the MCG layout: ``superpixels`` (H×W, 1-based ids), ``labels`` (N×1
  cell, each a vector of 1-based superpixel ids), ``scores`` (N×1). Read as MATLAB v5
  (scipy) or v7.3 (HDF5, h5py), as MCG's VOC proposals are distributed; written as either.
- ``<id>.json`` — dense masks: ``{"size": [H, W], "masks": [RLE counts...],
  "scores": [...]}`` with COCO compressed RLE counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icn_rt.data import rle as rlelib
from icn_rt.errors import InputError, read_json

MAT_V73_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: icn-rt HDF5 schema 1.00 ."


@dataclass
class Proposals:
    """N proposals of an image of ``shape`` (H, W), best first by ``scores``.

    Segment form: ``superpixels: int32 [H, W]`` (0-based ids), ``indptr: int64 [N+1]``,
    ``indices: int32 [nnz]`` (0-based superpixel ids). Mask form: ``masks: bool [N, H, W]``.
    ``scores: float32 [N]``.
    """

    shape: tuple[int, int]
    scores: np.ndarray
    superpixels: np.ndarray | None = None
    indptr: np.ndarray | None = None
    indices: np.ndarray | None = None
    masks: np.ndarray | None = None

    @classmethod
    def from_segments(cls, superpixels: np.ndarray, groups: list[np.ndarray] | tuple[np.ndarray, np.ndarray],
                      scores: np.ndarray) -> Proposals:
        """Build from a superpixel map and, per proposal, its superpixel ids (0-based) —
        a list of arrays or an ``(indptr, indices)`` pair."""
        if isinstance(groups, tuple):
            indptr, indices = groups
        else:
            lengths = np.array([len(g) for g in groups], np.int64)
            indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            indices = np.concatenate(groups).astype(np.int32) if groups else np.zeros(0, np.int32)
        return cls(tuple(superpixels.shape), np.asarray(scores, np.float32),
                   superpixels=superpixels.astype(np.int32, copy=False),
                   indptr=np.asarray(indptr, np.int64), indices=np.asarray(indices, np.int32))

    @classmethod
    def from_masks(cls, masks: np.ndarray, scores: np.ndarray) -> Proposals:
        masks = np.asarray(masks, bool)
        return cls(tuple(masks.shape[1:]), np.asarray(scores, np.float32), masks=masks)

    @property
    def is_segments(self) -> bool:
        return self.superpixels is not None

    @property
    def num_superpixels(self) -> int:
        if not self.is_segments:
            return 0
        # a superpixel may be named by a proposal and absent from the map (e.g. resized away)
        return int(max(self.superpixels.max(initial=-1), self.indices.max(initial=-1))) + 1

    def __len__(self) -> int:
        return len(self.scores)

    def group(self, i: int) -> np.ndarray:
        """Superpixel ids of proposal ``i`` (segment form)."""
        return self.indices[self.indptr[i]:self.indptr[i + 1]]

    def incidence(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``bool [n, S]``: proposal ``idx[r]`` (all by default) contains superpixel s
        (segment form); only the asked rows are built."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        starts, lengths = self.indptr[idx], self.indptr[idx + 1] - self.indptr[idx]
        rows = np.repeat(np.arange(len(idx)), lengths)
        at = np.arange(lengths.sum()) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        inc = np.zeros((len(idx), self.num_superpixels), bool)
        inc[rows, self.indices[at]] = True
        return inc

    def mask(self, i: int) -> np.ndarray:
        """``bool [H, W]`` of proposal ``i``."""
        if self.masks is not None:
            return self.masks[i]
        member = np.zeros(self.num_superpixels, bool)
        member[self.group(i)] = True
        return member[self.superpixels]

    def to_masks(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``bool [n, H, W]`` of the proposals ``idx`` (all by default)."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        if self.masks is not None:
            return self.masks[idx]
        return self.incidence(idx)[:, self.superpixels]

    def areas(self) -> np.ndarray:
        """``int64 [N]`` pixel count of each proposal."""
        if self.masks is not None:
            return self.masks.reshape(len(self), self.shape[0] * self.shape[1]).sum(1).astype(np.int64)
        return self.segment_sums(np.bincount(self.superpixels.ravel(), minlength=self.num_superpixels))

    def segment_sums(self, per_superpixel: np.ndarray) -> np.ndarray:
        """Sum a per-superpixel quantity ``[S]`` over each proposal's superpixels -> ``[N]``."""
        vals = np.asarray(per_superpixel)[self.indices]
        csum = np.concatenate([[0], np.cumsum(vals, dtype=np.float64 if vals.dtype.kind == "f" else np.int64)])
        return csum[self.indptr[1:]] - csum[self.indptr[:-1]]

    def overlaps(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(intersection [N], area [N])`` of every proposal with ``mask: bool [H, W]``;
        exact, by segment sums in the segment form."""
        if self.masks is not None:
            flat = self.masks.reshape(len(self), -1)
            m = mask.reshape(-1)
            return flat[:, m].sum(1).astype(np.int64), self.areas()
        inside = np.bincount(self.superpixels[mask], minlength=self.num_superpixels)
        return self.segment_sums(inside), self.areas()

    def iou(self, mask: np.ndarray) -> np.ndarray:
        """``float64 [N]`` IoU of every proposal with ``mask: bool [H, W]``."""
        inter, area = self.overlaps(mask)
        union = area + int(mask.sum()) - inter
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    def select(self, idx: np.ndarray) -> Proposals:
        """The proposals ``idx``, in that order."""
        idx = np.asarray(idx, np.int64)
        if self.masks is not None:
            return Proposals.from_masks(self.masks[idx], self.scores[idx])
        return Proposals.from_segments(self.superpixels, [self.group(i) for i in idx], self.scores[idx])


# --- files ----------------------------------------------------------------------------

def proposal_path(directory: str | Path, image_id: str) -> Path:
    """The proposal file of ``image_id`` in ``directory``: ``<id>.json`` if only that
    exists, else ``<id>.mat`` (present or not)."""
    directory = Path(directory)
    mat, rle = directory / f"{image_id}.mat", directory / f"{image_id}.json"
    return rle if rle.exists() and not mat.exists() else mat


def load_proposals(path: str | Path, expected_shape: tuple[int, int] | None = None, why: str = "") -> Proposals:
    """Read an MCG ``.mat`` (v5 or v7.3) or an RLE ``.json`` proposal file.

    ``expected_shape``: the image's (H, W); a file of another size is an error naming it,
    with ``why`` (what may explain it) appended.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "proposal file not found")
    if path.suffix == ".mat":
        props = _read_mat(path)
    elif path.suffix == ".json":
        props = _read_json(path)
    else:
        raise InputError(path, "unknown proposal format (expected .mat or .json)")
    if expected_shape is not None and tuple(props.shape) != tuple(expected_shape):
        raise InputError(path, f"proposals are {props.shape[0]}x{props.shape[1]} but the image is "
                               f"{expected_shape[0]}x{expected_shape[1]}{why}")
    return props


def save_proposals(path: str | Path, props: Proposals, mat_version: str = "5") -> None:
    """Write ``props``: segment form as MCG ``.mat`` (``mat_version`` "5" or "7.3"),
    mask form as RLE ``.json``. The suffix must match the form."""
    path = Path(path)
    if props.is_segments:
        if path.suffix != ".mat":
            raise ValueError(f"{path}: segment proposals are written as .mat")
        (_write_mat_v73 if mat_version == "7.3" else _write_mat_v5)(path, props)
    else:
        if path.suffix != ".json":
            raise ValueError(f"{path}: mask proposals are written as .json")
        doc = {"size": list(props.shape), "masks": [r["counts"] for r in rlelib.encode_many(props.masks)],
               "scores": [float(s) for s in props.scores]}
        path.write_text(json.dumps(doc))


def _from_mcg(path: Path, superpixels, labels: list, scores) -> Proposals:
    superpixels = np.asarray(superpixels)
    if superpixels.ndim != 2 or superpixels.size == 0:
        raise InputError(path, f"'superpixels' must be a 2-D label map, got shape {superpixels.shape}")
    if superpixels.min() < 1:
        raise InputError(path, "'superpixels' ids must be 1-based")
    n_sp = int(superpixels.max())
    groups = []
    for i, lab in enumerate(labels):
        ids = np.asarray(lab).astype(np.int64).ravel()
        if ids.size and (ids.min() < 1 or ids.max() > n_sp):
            raise InputError(path, f"proposal {i} names superpixel ids outside 1..{n_sp}")
        groups.append(ids.astype(np.int32) - 1)
    scores = np.asarray(scores, np.float32).ravel()
    if len(scores) != len(groups):
        raise InputError(path, f"{len(scores)} scores for {len(groups)} proposals")
    return Proposals.from_segments(superpixels.astype(np.int32) - 1, groups, scores)


def _read_mat(path: Path) -> Proposals:
    import h5py

    if h5py.is_hdf5(path):
        return _read_mat_v73(path)
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for corrupt files
        raise InputError(path, f"cannot read MATLAB file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("superpixels", "labels") if k not in mat]
    if missing:
        raise InputError(path, f"not an MCG proposal file: missing {', '.join(missing)}")
    labels = mat["labels"]
    cells = list(labels.ravel()) if labels.dtype == object else [row for row in np.atleast_2d(labels)]
    scores = mat["scores"] if "scores" in mat else -np.arange(len(cells), dtype=np.float32)
    return _from_mcg(path, mat["superpixels"], cells, scores)


def _read_mat_v73(path: Path) -> Proposals:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("superpixels", "labels") if k not in f]
            if missing:
                raise InputError(path, f"not an MCG proposal file: missing {', '.join(missing)}")
            # HDF5 holds MATLAB arrays column-major: transpose back.
            superpixels = np.asarray(f["superpixels"]).T
            labels_ds = f["labels"]
            if labels_ds.dtype == h5py.ref_dtype:
                cells = [np.asarray(f[ref]).T for ref in np.asarray(labels_ds).T.ravel()]
            else:
                cells = list(np.atleast_2d(np.asarray(labels_ds).T))
            scores = np.asarray(f["scores"]).T if "scores" in f else -np.arange(len(cells), dtype=np.float32)
    except InputError:
        raise
    except Exception as e:
        raise InputError(path, f"cannot read MATLAB v7.3 file ({type(e).__name__}: {e})") from None
    return _from_mcg(path, superpixels, cells, scores)


def _mcg_arrays(props: Proposals):
    superpixels = (props.superpixels + 1).astype(np.uint16 if props.num_superpixels < 65535 else np.uint32)
    cells = [(props.group(i).astype(np.uint32) + 1)[None, :] for i in range(len(props))]
    return superpixels, cells, props.scores.astype(np.float64)[:, None]


def _write_mat_v5(path: Path, props: Proposals) -> None:
    import scipy.io

    superpixels, cells, scores = _mcg_arrays(props)
    labels = np.empty((len(cells), 1), dtype=object)
    for i, c in enumerate(cells):
        labels[i, 0] = c
    scipy.io.savemat(path, {"superpixels": superpixels, "labels": labels, "scores": scores}, do_compression=True)


def _write_mat_v73(path: Path, props: Proposals) -> None:
    """MATLAB v7.3: HDF5 with a 512-byte MATLAB header, arrays stored transposed, the
    cell array as object references into ``#refs#``, each with its ``MATLAB_class``."""
    import h5py

    superpixels, cells, scores = _mcg_arrays(props)
    with h5py.File(path, "w", userblock_size=512) as f:
        d = f.create_dataset("superpixels", data=superpixels.T, compression="gzip")
        d.attrs["MATLAB_class"] = np.bytes_(superpixels.dtype.name)
        refs = f.create_group("#refs#")
        ref_arr = np.empty((1, len(cells)), dtype=h5py.ref_dtype)
        for i, c in enumerate(cells):
            ds = refs.create_dataset(f"p{i}", data=c.T)
            ds.attrs["MATLAB_class"] = np.bytes_("uint32")
            ref_arr[0, i] = ds.ref
        lab = f.create_dataset("labels", data=ref_arr)
        lab.attrs["MATLAB_class"] = np.bytes_("cell")
        sc = f.create_dataset("scores", data=scores.T)
        sc.attrs["MATLAB_class"] = np.bytes_("double")
    header = MAT_V73_HEADER.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM"
    with open(path, "r+b") as fh:
        fh.write(header.ljust(512, b"\0"))


def _read_json(path: Path) -> Proposals:
    doc = read_json(path)
    if not isinstance(doc, dict) or not {"size", "masks"} <= doc.keys():
        raise InputError(path, "RLE proposal file needs 'size' and 'masks'")
    size = doc["size"]
    if rlelib.check({"size": size, "counts": ""}) is not None:
        raise InputError(path, f"bad 'size' {size!r}")
    scores = doc.get("scores", [-float(i) for i in range(len(doc["masks"]))])
    if len(scores) != len(doc["masks"]):
        raise InputError(path, f"{len(scores)} scores for {len(doc['masks'])} masks")
    try:
        masks = rlelib.decode_many([{"size": size, "counts": c} for c in doc["masks"]], tuple(size))
    except Exception as e:
        raise InputError(path, f"bad RLE mask ({type(e).__name__}: {e})") from None
    return Proposals.from_masks(masks, np.asarray(scores, np.float32))
