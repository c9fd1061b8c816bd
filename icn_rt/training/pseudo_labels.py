"""Labels for training the ICN (docs/design.md §1 step 5), one file per training image.

For every peak of a class the image is labelled with (image-level labels are known at
training time; other peaks are dropped):

- ``proposals`` (the paper's pseudo labels): score every proposal against the naive PRM
  with the model's matching settings (``auto`` -> PRM's vanilla score for a naive
  map), walk them best first, keep one unless it lies entirely inside one already kept,
  stop at ``k`` = 3; the label is the union of the kept ones. With objectness
  re-ranking on (``MatchingSettings.rerank``) the walk follows the re-ranked order.
- ``saliency`` (the paper's variant with a separate mask dataset): the ground-truth
  instance of the peak's class that holds the most PRM mass; the split needs
  SegmentationObject PNGs.

Stored in a directory (default ``MODEL/labels-<supervision>-<split>``) as
``<image id>.npz`` with ``prm: uint8 [K, S, S]`` (the min-max-normalised naive PRM × 255
— the ICN's input is min-max normalised, so 8 bits lose < 0.2 % of its range),
``label: bool [K, S, S]`` (at the network input's size S), ``cls: int64 [K]``,
``peak: float32 [K, 2]`` (class-map cell y, x) and, for proposals, ``kept: int64 [K, k]``
(-1 padded). ``settings.json`` records how they were made; a rerun with the same
settings skips images already done, so an interrupted run resumes. An image whose
image or proposals cannot be read is named in ``errors.txt`` and skipped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.data.proposals import Proposals, load_proposals, proposal_path
from icn_rt.errors import InputError
from icn_rt.kernels import ops
from icn_rt.matching import MatchingSettings, score_proposals
from icn_rt.models.store import Model, load_model

SUPERVISIONS = ("proposals", "saliency")
SETTINGS = "settings.json"
ERRORS = "errors.txt"


@dataclass
class LabelSettings:
    supervision: str = "proposals"
    split: str = "train"
    k: int = 3
    batch_size: int = 8
    rerank: int | None = None  # objectness re-ranking of the candidates; None: the model's matching setting

    def __post_init__(self) -> None:
        if self.supervision not in SUPERVISIONS:
            raise ValueError(f"unknown supervision {self.supervision!r}; choose one of {', '.join(SUPERVISIONS)}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.rerank is not None and self.rerank < 0:
            raise ValueError(f"rerank must be >= 0 (0 = off), got {self.rerank}")

    def matching(self, model: Model) -> MatchingSettings:
        """The matching settings labels are made with: the model's, ``rerank`` overridden when set."""
        return model.matching if self.rerank is None else replace(model.matching, rerank=self.rerank)


@dataclass
class LabelSummary:
    images: int = 0
    peaks: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def default_label_dir(model_dir: str | Path, settings: LabelSettings) -> Path:
    return Path(model_dir) / f"labels-{settings.supervision}-{settings.split}"


def label_model(root: str | Path, model_dir: str | Path, settings: LabelSettings, out: str | Path | None = None,
                proposals_dir: str | Path | None = None, device: str = "cpu", progress: bool = True,
                log: Callable[[str], None] = print) -> tuple[Path, LabelSummary]:
    """``icn-rt train pseudo-labels``: make (or, where made already, reuse) the labels of a
    model directory's classifier in ``out`` (default: :func:`default_label_dir`); returns
    that directory and what was done."""
    out = Path(out) if out else default_label_dir(model_dir, settings)
    return out, make_labels(root, load_model(model_dir, device), out, settings, proposals_dir, progress, log)


def proposal_labels(scores: np.ndarray, props: Proposals, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pseudo labels of K peaks from their proposal scores ``float [K, N]``: ``(bool [K, H, W]``
    union of each peak's kept proposals, ``int64 [K, k]`` their indices, -1 padded).

    The top-k-not-contained walk runs on bit sets (the host kernels, :func:`icn_rt.kernels.ops`):
    packed masks, or for segment proposals their superpixel sets (a union of superpixels
    lies inside another iff its non-empty superpixels are among the other's).
    """
    cpu = ops()
    scores = np.atleast_2d(scores)
    order = np.argsort(-scores, axis=1, kind="stable")
    valid = np.isfinite(scores).sum(1)
    if props.is_segments:
        count = props.num_superpixels
        present = np.bincount(props.superpixels.ravel(), minlength=count) > 0
        sets = cpu.members(props.indptr, props.indices, count) & cpu.pack(present[None, None])[0]
    else:
        sets = cpu.pack(props.masks)
    kept = cpu.top_k_not_contained(sets, order, valid, k)
    labels = np.zeros((len(scores), *props.shape), bool)
    for r, row in enumerate(kept):
        chosen = row[row >= 0]
        if len(chosen):
            labels[r] = props.to_masks(chosen).any(0)
    return labels, kept


def saliency_label(prm: np.ndarray, instances: list, class_id: int) -> np.ndarray | None:
    """The ground-truth instance mask of ``class_id`` holding the most of ``prm`` (at the
    masks' size; ties: first), or None when the image has no such instance."""
    masses = [(float(prm[inst.mask].sum()), i) for i, inst in enumerate(instances) if inst.class_id == class_id]
    if not masses:
        return None
    best = max(masses, key=lambda m: (m[0], -m[1]))[1]
    return instances[best].mask


def _to_size(mask: np.ndarray, size: int) -> np.ndarray:
    if mask.shape == (size, size):
        return mask
    return cv2.resize(mask.view(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)


def _quantise(prms: np.ndarray) -> np.ndarray:
    lo = prms.reshape(len(prms), -1).min(1)[:, None, None]
    span = prms.reshape(len(prms), -1).max(1)[:, None, None] - lo
    v = np.where(span > 0, (prms - lo) / np.where(span > 0, span, 1), 0)
    return np.round(v * 255).astype(np.uint8)


def _matching_record(matching: MatchingSettings) -> dict:
    """The matching settings the labels depend on; ``rerank`` only when on, so labels made
    before it existed (it was off) are still recognised as made with these settings."""
    record = asdict(matching)
    if not record["rerank"]:
        del record["rerank"]
    return record


def make_labels(root: str | Path, model: Model, out: str | Path, settings: LabelSettings,
                proposals_dir: str | Path | None = None, progress: bool = True,
                log: Callable[[str], None] = print) -> LabelSummary:
    """Write the labels of ``root``'s ``settings.split`` into ``out`` using ``model``'s
    classifier, peak, PRM and matching settings (its naive PRMs: the ICN takes no part).
    ``proposals_dir`` defaults to ``root/Proposals``."""
    todo, summary = start_labels(root, model, out, settings)
    batches = [todo[i:i + settings.batch_size] for i in range(0, len(todo), settings.batch_size)]
    if progress:
        from icn_rt.progress import track

        batches = track(batches, f"labels ({settings.supervision})", unit="batch")
    for batch in batches:
        label_images(root, model, batch, out, settings, proposals_dir, summary)
    finish_labels(out, summary, log)
    return summary


def start_labels(root: str | Path, model: Model, out: str | Path,
                 settings: LabelSettings) -> tuple[list[str], LabelSummary]:
    """``out`` made ready for ``model``'s labels of ``settings.split`` (refused when it holds
    labels made otherwise); the image ids still without a label file, and the summary
    counting those that have one."""
    out = Path(out)
    ds = open_dataset(root, settings.split, load_images=False)
    # what the labels depend on (not the batch size; rerank through the matching record)
    made_with = {k: v for k, v in asdict(settings).items() if k not in ("batch_size", "rerank")}
    record = {"settings": made_with, "matching": _matching_record(settings.matching(model)), "peaks": asdict(model.peaks),
              "prm": asdict(model.prm), "input_size": model.input_size}
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / SETTINGS
    if settings_path.exists():
        if json.loads(settings_path.read_text()) != json.loads(json.dumps(record)):
            raise InputError(settings_path, "labels here were made with other settings; "
                                            "choose another directory or delete this one")
    else:
        settings_path.write_text(json.dumps(record, indent=1) + "\n")
    todo = [i for i in ds.ids if not (out / f"{i}.npz").exists()]
    return todo, LabelSummary(reused=len(ds.ids) - len(todo))


def label_images(root: str | Path, model: Model, image_ids: list[str], out: str | Path, settings: LabelSettings,
                 proposals_dir: str | Path | None, summary: LabelSummary) -> None:
    """The label files of ``image_ids`` (one batch), counted into ``summary``; an image or
    proposals that cannot be read go to ``summary.failed``."""
    root, out = Path(root), Path(out)
    ds = open_dataset(root, settings.split, load_images=False)
    proposals_dir = Path(proposals_dir) if proposals_dir else root / "Proposals"
    loaded = []
    for image_id in image_ids:
        try:
            image = read_image(ds.image_path(image_id))
            if settings.supervision == "proposals":
                extra = load_proposals(proposal_path(proposals_dir, image_id), expected_shape=image.shape[:2])
            else:
                extra = ds.ground_truth(image_id).instances
            loaded.append((image_id, image, ds.labels(image_id), extra))
        except InputError as e:
            summary.failed.append((image_id, str(e)))
    if loaded:
        _label_batch(model, loaded, out, settings, summary)


def finish_labels(out: str | Path, summary: LabelSummary, log: Callable[[str], None] = print) -> None:
    """``errors.txt`` when images failed; the summary logged."""
    out = Path(out)
    if summary.failed:
        (out / ERRORS).write_text("".join(f"{i}\t{reason}\n" for i, reason in summary.failed))
    log(f"labels -> {out}: {summary.images} images, {summary.peaks} peaks"
        + (f", {summary.reused} already there" if summary.reused else "")
        + (f", {len(summary.failed)} failed (see {out / ERRORS})" if summary.failed else ""))


def _label_batch(model: Model, loaded: list, out: Path, settings: LabelSettings, summary: LabelSummary) -> None:
    naive = model.naive_maps(preprocess_batch([im for _, im, _, _ in loaded], model.input_size).to(model.device))
    peaks = naive.peaks
    image_of, cls = peaks.image.cpu().numpy(), peaks.cls.cpu().numpy()
    yx = torch.stack([peaks.y, peaks.x], 1).float().cpu().numpy()
    prms = naive.prms.cpu().numpy()
    maps = naive.maps.cpu().numpy()
    size = model.input_size
    for b, (image_id, image, labels, extra) in enumerate(loaded):
        idx = np.flatnonzero((image_of == b) & np.isin(cls, labels))
        rows: dict[str, list] = {"prm": [], "label": [], "cls": [], "peak": [], "kept": []}
        if settings.supervision == "proposals" and len(idx):
            scores, props = score_proposals(prms[idx], maps[b][cls[idx]], extra, settings.matching(model),
                                            image=image)[:2]
            labels, kept = proposal_labels(scores, props, settings.k)
            for j, i in enumerate(idx):
                rows["label"].append(_to_size(labels[j], size))
                rows["kept"].append(kept[j])
                rows["prm"].append(i)
        elif len(idx):
            h, w = image.shape[:2]
            for i in idx:
                mask = saliency_label(cv2.resize(prms[i], (w, h), interpolation=cv2.INTER_LINEAR), extra, int(cls[i]))
                if mask is not None:
                    rows["label"].append(_to_size(mask, size))
                    rows["prm"].append(i)
        keep = np.array(rows["prm"], np.int64)
        arrays = {"prm": _quantise(prms[keep]) if len(keep) else np.zeros((0, size, size), np.uint8),
                  "label": np.stack(rows["label"]) if rows["label"] else np.zeros((0, size, size), bool),
                  "cls": cls[keep].astype(np.int64), "peak": yx[keep].reshape(-1, 2)}
        if settings.supervision == "proposals":
            arrays["kept"] = np.stack(rows["kept"]) if rows["kept"] else np.zeros((0, settings.k), np.int64)
        tmp = out / f"{image_id}.tmp.npz"
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, out / f"{image_id}.npz")
        summary.images += 1
        summary.peaks += len(keep)
