"""``icn-rt infer``: streaming batch inference that loses nothing.

Images (files, directories, glob patterns, list files) stream through loader workers
(decode, proposals — read from a folder or made on the fly — and preprocessing) into
the predictor a batch at a time; memory is bounded by the batch and the loaders' window,
whatever the number of images.

Results are appended as they come to JSONL shards in ``<out>.parts/`` (one shard per
run, one line per image, flushed and synced after every batch), and merged into the COCO
results JSON ``<out>`` (in input order) when the job ends. A crash, a kill or Ctrl-C
loses at most the batches in flight (one; on a GPU also the next, whose copy overlaps
this one's compute): ``resume=True`` skips every image that has a result and retries
those that failed. An image that cannot be used — unreadable, too large,
missing or mismatched proposals — is recorded with the reason (in its shard and in
``<out>.errors.txt``) and the job goes on.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from icn_rt.data.images import image_size, read_image, write_image
from icn_rt.data.preprocess import preprocess_array
from icn_rt.data.proposals import Proposals, load_proposals, proposal_path
from icn_rt.data.results import result_entry
from icn_rt.errors import InputError
from icn_rt.progress import Counter

if TYPE_CHECKING:  # loader processes import this module: keep the models and kernels out of them
    from icn_rt.runtime.predictor import Staged

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst", ".list")
MAX_PIXELS = 64_000_000


# --- which images ---------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(sources: list[str | Path]) -> list[Path]:
    """The images named by ``sources``, in order: an image file; a directory (its image
    files, sorted, not recursive); a glob pattern (``*``, ``?``, ``[``; ``**`` recurses);
    a list file (``.txt``/``.lst``: one path a line, relative to the list's folder, ``#``
    comments). A path that does not exist is kept (it fails, recorded, when loaded).
    Image ids are file stems and must be unique."""
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            out += sorted(q for q in path.iterdir() if _is_image(q))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
            out += [path.parent / line for line in lines if line]
        elif not path.exists() and any(c in str(source) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True) if _is_image(Path(p)))
            if not matches:
                raise InputError(source, "the pattern matches no image files")
            out += matches
        else:
            out.append(path)
    seen: dict[str, Path] = {}
    for path in out:
        if path.stem in seen and seen[path.stem] != path:
            raise InputError(path, f"image id '{path.stem}' is also the id of {seen[path.stem]}; "
                                   "ids (file names without suffix) must be unique")
        seen[path.stem] = path
    return list(dict.fromkeys(out))


# --- loading (in worker threads or processes) -------------------------------------------

@dataclass
class Loaded:
    """One image ready for the predictor: ``image: uint8 [H, W, 3]``, its proposals and
    its network input ``x: float32 [3, S, S]``."""

    path: Path
    image: np.ndarray
    proposals: Proposals
    x: np.ndarray


@dataclass(frozen=True)
class LoadSettings:
    """``proposals``: the folder of ``<id>.mat``/``<id>.json`` files, or None to make them
    on the fly (selective search, ``max_proposals`` of them); ``max_pixels``: larger
    images are refused before they are decoded."""

    input_size: int
    proposals: Path | None
    max_pixels: int = MAX_PIXELS
    max_proposals: int = 2000


def load(path: Path, settings: LoadSettings) -> Loaded:
    """Read, check and preprocess one image and its proposals; bad input raises
    :class:`InputError` naming the file."""
    size = image_size(path)
    if size is not None and size[0] * size[1] > settings.max_pixels:
        raise InputError(path, f"image is {size[1]}x{size[0]} ({size[0] * size[1] / 1e6:.0f} MP), above the "
                               f"{settings.max_pixels / 1e6:g} MP limit (--max-pixels)")
    image = read_image(path)
    if settings.proposals is not None:
        turned = size is not None and size != image.shape[:2]
        why = (f" (turned from {size[0]}x{size[1]} by its EXIF orientation; make the proposals on the turned "
               "image, as icn-rt proposals does)") if turned else ""
        props = load_proposals(proposal_path(settings.proposals, path.stem), expected_shape=image.shape[:2], why=why)
    else:
        from icn_rt.data.selective_search import SelectiveSearchConfig, selective_search

        props = selective_search(image, SelectiveSearchConfig(max_proposals=settings.max_proposals))
    return Loaded(path, image, props, preprocess_array(image, settings.input_size))


@dataclass
class Failed:
    path: Path
    reason: str


def load_or_failed(path: Path, settings: LoadSettings) -> Loaded | Failed:
    """:func:`load`, with bad input (or anything else that goes wrong) as a :class:`Failed`."""
    try:
        return load(path, settings)
    except InputError as e:
        return Failed(path, str(e))
    except Exception as e:  # one bad file must not end the job: record what happened
        return Failed(path, f"{path}: {type(e).__name__}: {e}")


def stream(paths: list[Path], fn: Callable[[Path], Loaded | Failed], workers: int,
           processes: bool = False) -> Iterator[Loaded | Failed]:
    """``fn`` over ``paths`` in order, ``workers`` at a time (0: in this thread), with at
    most ``2 * workers`` results waiting: memory does not grow with the number of paths."""
    if workers <= 0:
        yield from map(fn, paths)
        return
    executor: Executor
    if processes:
        import multiprocessing

        executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        executor = ThreadPoolExecutor(workers, thread_name_prefix="icn-rt-load")
    pending: deque = deque()
    todo = iter(paths)
    try:
        for path in todo:
            pending.append(executor.submit(fn, path))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(executor.submit(fn, nxt))
            yield result
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


# --- the result log ---------------------------------------------------------------------

class ResultLog:
    """``<out>.parts/``: ``run.json`` (what made the results: the fingerprint, and whether
    the run finished) and ``part-NNNN.jsonl`` shards, one per run. A line is one image:
    ``{"image": absolute path, "id", "ok": true, "size": [H, W], "instances": [COCO
    result entries]}`` or ``{"image", "id", "ok": false, "error": reason}``; for an
    image with several lines the last one counts. A line cut short by a crash is ignored."""

    def __init__(self, out: Path, fingerprint: dict, resume: bool, overwrite: bool = False) -> None:
        self.out = out
        self.dir = out.with_name(out.name + ".parts")
        run = self.dir / "run.json"
        if overwrite:
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.dir.exists() and not resume:
            state = _read_state(run)
            if state is not None and not state.get("finished", False):
                raise InputError(self.dir, "holds an unfinished run's results: pass --resume to continue it, "
                                           "or --overwrite to start over")
            shutil.rmtree(self.dir)
        if resume and self.dir.exists():
            state = _read_state(run)
            if state is not None and state.get("fingerprint") != fingerprint:
                changed = sorted(k for k in fingerprint if fingerprint[k] != state.get("fingerprint", {}).get(k))
                raise InputError(self.dir, f"was made with another {', '.join(changed) or 'setup'}; rerun "
                                           "without --resume (or with --overwrite) to start over")
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(run, {"fingerprint": fingerprint, "finished": False})
        self.shards = sorted(self.dir.glob("part-*.jsonl"))
        self.done = {key for key, record in self.index().items() if record[2]}
        self._file = None

    def index(self) -> dict[str, tuple[int, int, bool]]:
        """image key -> (shard, byte offset, ok) of its last complete line."""
        index = {}
        for s, shard in enumerate(self.shards):
            with open(shard, "rb") as f:
                offset = 0
                for line in f:
                    if line.endswith(b"\n"):
                        try:
                            record = json.loads(line)
                            index[record["image"]] = (s, offset, bool(record["ok"]))
                        except (ValueError, KeyError, TypeError):
                            pass
                    offset += len(line)
        return index

    def write(self, records: list[dict]) -> None:
        """Append ``records`` to this run's shard and make them durable."""
        if not records:
            return
        if self._file is None:
            path = self.dir / f"part-{len(self.shards):04d}.jsonl"
            self.shards.append(path)
            self._file = open(path, "ab")
        self._file.write(b"".join(json.dumps(r).encode() + b"\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def merge(self, paths: list[Path]) -> InferSummary:
        """Write ``<out>`` (the COCO results of ``paths``, in their order) and
        ``<out>.errors.txt`` from the shards, one record in memory at a time; marks the
        run finished."""
        self.close()
        index = self.index()
        summary = InferSummary()
        errors = self.out.with_name(self.out.name + ".errors.txt")
        tmp = self.out.with_name(self.out.name + ".partial")
        files = [open(shard, "rb") for shard in self.shards]
        try:
            with open(tmp, "w") as out, open(errors.with_suffix(".partial"), "w") as err:
                out.write("[")
                first = True
                for path in paths:
                    where = index.get(_key(path))
                    if where is None:
                        summary.missing += 1
                        continue
                    f = files[where[0]]
                    f.seek(where[1])
                    record = json.loads(f.readline())
                    if not record["ok"]:
                        summary.failed.append((record["image"], record["error"]))
                        err.write(f"{record['image']}\t{record['error']}\n")
                        continue
                    summary.images += 1
                    summary.instances += len(record["instances"])
                    summary.empty += not record["instances"]
                    for entry in record["instances"]:
                        out.write(("" if first else ",\n") + json.dumps(entry))
                        first = False
                out.write("]\n")
        finally:
            for f in files:
                f.close()
        os.replace(tmp, self.out)
        if summary.failed:
            os.replace(errors.with_suffix(".partial"), errors)
        else:
            errors.with_suffix(".partial").unlink()
            errors.unlink(missing_ok=True)
        state = _read_state(self.dir / "run.json") or {}
        _write_json(self.dir / "run.json", {**state, "finished": summary.missing == 0})
        return summary


def _key(path: Path) -> str:
    return str(path.resolve())


def _read_state(path: Path) -> dict | None:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


# --- the job ----------------------------------------------------------------------------

@dataclass
class InferSummary:
    """Of the images asked for: ``images`` with results (``empty``: without instances),
    ``failed`` (path, reason), ``missing`` (not reached: interrupted), ``skipped`` (done by an
    earlier run, with ``--resume``)."""

    images: int = 0
    instances: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    empty: int = 0
    missing: int = 0
    skipped: int = 0
    interrupted: bool = False


def fingerprint(predictor, proposals: Path | None) -> dict:
    """What decides an image's results: the weights, every setting and the proposals'
    source (the backend does not: every backend gives the same instances)."""
    weights = hashlib.sha256()
    for module in (predictor.model, predictor.icn):
        if module is not None:
            for name, tensor in module.state_dict().items():
                weights.update(name.encode())
                weights.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = {"classes": list(predictor.classes), "peaks": asdict(predictor.peaks), "prm": asdict(predictor.prm),
                "matching": asdict(predictor.matching), "instances": asdict(predictor.instances),
                "icn": asdict(predictor.icn_settings) if predictor.enhances else None}
    return {"weights": weights.hexdigest(), "settings": json.loads(json.dumps(settings)),
            "proposals": str(proposals.resolve()) if proposals is not None else "selective search"}


def infer(predictor, images: list[Path], proposals_dir: Path | None, out: Path, save_vis: Path | None = None,
          batch_size: int = 8, workers: int = 2, resume: bool = False, overwrite: bool = False,
          max_pixels: int = MAX_PIXELS, progress: bool = True, overlap: bool | None = None) -> InferSummary:
    """Run ``predictor`` over ``images`` (their stems are the image ids) and write ``out``
    (see the module's docstring). ``proposals_dir`` None: selective search on the fly (in
    worker processes). ``overlap``: stage each batch on the device before the one ahead
    of it is predicted, so its copy overlaps that compute (None: on a GPU only; see
    :meth:`~icn_rt.runtime.predictor.Predictor.stage`). Ctrl-C ends the job after the
    batches in flight are dropped, with ``interrupted`` set; nothing written is lost."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = ResultLog(out, fingerprint(predictor, proposals_dir), resume, overwrite)
    todo = [p for p in images if _key(p) not in log.done]
    if save_vis is not None:
        save_vis.mkdir(parents=True, exist_ok=True)
    settings = LoadSettings(predictor.input_size, proposals_dir, max_pixels)
    loaded = stream(todo, partial(load_or_failed, settings=settings), workers, processes=proposals_dir is None)
    if overlap is None:
        overlap = predictor.device.type == "cuda"
    batches = stage_ahead(predictor, groups(loaded, batch_size), ahead=int(overlap))
    interrupted = False
    bar = Counter("infer", len(todo), "images", progress)
    try:
        for batch in batches:
            log.write(batch.failed + _predict(predictor, batch, save_vis))
            bar.advance(len(batch.loaded) + len(batch.failed))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        batches.close()
        loaded.close()
        log.close()
    if interrupted:
        return InferSummary(images=sum(ok for _, _, ok in log.index().values()), interrupted=True)
    summary = log.merge(images)
    summary.skipped = len(images) - len(todo)
    return summary


@dataclass
class Batch:
    """Up to ``batch_size`` images in input order: ``loaded`` ones, the ``failed`` ones'
    records, and ``staged``: the loaded ones' network input on its way to the device
    (None until :func:`stage_ahead` starts it, or when none loaded)."""

    loaded: list[Loaded]
    failed: list[dict]
    staged: Staged | None = None


def groups(items: Iterator[Loaded | Failed], batch_size: int) -> Iterator[Batch]:
    """``items`` in batches of ``batch_size`` (loaded and failed together, the last one short)."""
    batch = Batch([], [])
    for item in items:
        if isinstance(item, Failed):
            batch.failed.append({"image": _key(item.path), "id": item.path.stem, "ok": False, "error": item.reason})
        else:
            batch.loaded.append(item)
        if len(batch.loaded) + len(batch.failed) >= batch_size:
            yield batch
            batch = Batch([], [])
    if batch.loaded or batch.failed:
        yield batch


def stage_ahead(predictor, batches: Iterator[Batch], ahead: int) -> Iterator[Batch]:
    """``batches`` with their inputs staged on the predictor's device ``ahead`` batches
    before each is handed on: with ``ahead=1`` the next batch's copy is under way while
    this one is predicted. Memory: ``ahead`` more batches."""
    waiting: deque[Batch] = deque()
    for batch in batches:
        if batch.loaded:
            batch.staged = predictor.stage([b.x for b in batch.loaded])
        waiting.append(batch)
        if len(waiting) > ahead:
            yield waiting.popleft()
    yield from waiting


def _predict(predictor, batch: Batch, save_vis: Path | None) -> list[dict]:
    """Records of one batch's loaded images (and their pictures)."""
    if not batch.loaded:
        return []
    predictions = predictor.predict([b.image for b in batch.loaded], [b.proposals for b in batch.loaded], batch.staged,
                                    keep_maps=save_vis is not None)  # the maps are for the pictures only
    records = []
    for item, pred in zip(batch.loaded, predictions):
        image_id = item.path.stem
        records.append({"image": _key(item.path), "id": image_id, "ok": True, "size": list(item.image.shape[:2]),
                        "instances": [result_entry(image_id, inst.class_id, inst.score, inst.mask, predictor.classes)
                                      for inst in pred.instances]})
        if save_vis is not None:
            from icn_rt.runtime.visualize import overlay, prm_strip

            write_image(save_vis / f"{image_id}_overlay.png", overlay(item.image, pred.instances, predictor.classes))
            write_image(save_vis / f"{image_id}_prm.png", prm_strip(item.image, pred.instances))
    return records
