"""``icn-rt infer``: streaming batch inference that loses nothing.

Images (files, directories, glob patterns, list files: :mod:`.sources`) stream through
loader workers (decode, proposals — read from a folder or made on the fly — and
preprocessing: :mod:`.loading`) into the predictor a batch at a time; memory is bounded
by the batch and the loaders' window, whatever the number of images.

Results are appended as they come to JSONL shards in ``<out>.parts/`` and merged into the
COCO results JSON ``<out>`` (in input order) when the job ends (:mod:`.result_log`). A
crash, a kill or Ctrl-C loses at most the batches in flight (one; on a GPU also the next,
whose copy overlaps this one's compute): ``resume`` skips every image that has a result
and retries those that failed. An image that cannot be used — unreadable, too large,
missing or mismatched proposals — is recorded with the reason (in its shard and in
``<out>.errors.txt``) and the job goes on.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from icn_rt.data.images import write_image
from icn_rt.data.results import result_entry
from icn_rt.progress import Counter
from icn_rt.runtime.loading import MAX_PIXELS, Failed, Loaded, LoadSettings, load_or_failed, stream
from icn_rt.runtime.predictor import Predictor, Staged, Staging
from icn_rt.runtime.result_log import InferSummary, ResultLog, image_key
from icn_rt.runtime.student import StudentPredictor


@dataclass
class InferSettings:
    """How a job runs. ``proposals``: the folder of ``<id>.mat``/``<id>.json`` files, None to
    make them on the fly (selective search, in worker processes); ``save_vis``: write each
    image's overlay and PRM pictures there; ``workers``: loader workers (0: in this
    thread); ``resume``: continue an unfinished run; ``overwrite``: discard one;
    ``max_pixels``: larger images are refused before they are decoded; ``overlap``: stage
    each batch on the device before the one ahead of it is predicted, so its copy overlaps
    that compute (None: on a GPU only; see :meth:`~icn_rt.runtime.predictor.Predictor.stage`)."""

    proposals: Path | None = None
    save_vis: Path | None = None
    batch_size: int = 8
    workers: int = 2
    resume: bool = False
    overwrite: bool = False
    max_pixels: int = MAX_PIXELS
    progress: bool = True
    overlap: bool | None = None


@dataclass(frozen=True)
class PredictorSpec:
    """How to make a job's predictor, so that a process other than this one (a Ray actor)
    can make its own: the model directory, the student or the pipeline (``agreement``: ranked
    with its student's agreement, :meth:`Predictor.from_dir`), and the backend options of
    ``icn-rt infer``."""

    model_dir: str
    student: bool = False
    backend: str = "torch"
    device: str = "cpu"
    icn_steps: int | None = None
    cuda_graph: bool = False
    ort_optimization: str = "all"
    ort_save_optimized: bool = False
    agreement: bool = True

    def build(self, device: str | None = None) -> Staging:
        """The predictor, on ``device`` (default: the spec's)."""
        device = device or self.device
        if self.student:
            if self.cuda_graph or self.icn_steps is not None:
                raise ValueError("the student takes no --icn-steps or --cuda-graph")
            return StudentPredictor.from_dir(self.model_dir, device, self.backend, self.ort_optimization,
                                             self.ort_save_optimized)
        return Predictor.from_dir(self.model_dir, device, backend=self.backend, cuda_graph=self.cuda_graph,
                                  icn_steps=self.icn_steps, ort_optimization=self.ort_optimization,
                                  ort_save_optimized=self.ort_save_optimized, agreement=self.agreement)


def infer(predictor: Staging, images: list[Path], out: Path,
          settings: InferSettings) -> InferSummary:
    """Run ``predictor`` over ``images`` (their stems are the image ids) and write ``out``
    (see the module's docstring). Ctrl-C ends the job after the batches in flight are
    dropped, with ``interrupted`` set; nothing written is lost."""
    log, todo = open_job(predictor.fingerprint(settings.proposals), images, out, settings)
    load = load_settings(predictor, settings)
    loaded = stream(todo, partial(load_or_failed, settings=load), settings.workers,
                    processes=load.make_proposals and settings.proposals is None)
    overlap = settings.overlap if settings.overlap is not None else predictor.device.type == "cuda"
    batches = stage_ahead(predictor, groups(loaded, settings.batch_size), ahead=int(overlap))
    interrupted = False
    bar = Counter("infer", len(todo), "images", settings.progress)
    try:
        for batch in batches:
            log.write(batch.failed + predict_batch(predictor, batch, settings.save_vis))
            bar.advance(len(batch.loaded) + len(batch.failed))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        batches.close()
        loaded.close()
        log.close()
    return finish_job(log, images, todo, interrupted)


def open_job(fingerprint: dict, images: list[Path], out: Path, settings: InferSettings) -> tuple[ResultLog, list[Path]]:
    """The job's result log (resumed, or new) and the images it still has to do."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = ResultLog(out, fingerprint, settings.resume, settings.overwrite)
    if settings.save_vis is not None:
        settings.save_vis.mkdir(parents=True, exist_ok=True)
    return log, [p for p in images if image_key(p) not in log.done]


def load_settings(predictor: Staging, settings: InferSettings) -> LoadSettings:
    """How the loaders prepare an image for ``predictor`` (the student needs no proposals)."""
    needs = predictor.needs_proposals
    return LoadSettings(predictor.input_size, settings.proposals if needs else None, settings.max_pixels,
                        make_proposals=needs)


def finish_job(log: ResultLog, images: list[Path], todo: list[Path], interrupted: bool) -> InferSummary:
    """The summary; unless ``interrupted``, the merged results written first."""
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
            batch.failed.append({"image": image_key(item.path), "id": item.path.stem, "ok": False,
                                 "error": item.reason})
        else:
            batch.loaded.append(item)
        if len(batch.loaded) + len(batch.failed) >= batch_size:
            yield batch
            batch = Batch([], [])
    if batch.loaded or batch.failed:
        yield batch


def stage_ahead(predictor: Staging, batches: Iterator[Batch], ahead: int) -> Iterator[Batch]:
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


def predict_batch(predictor: Staging, batch: Batch, save_vis: Path | None) -> list[dict]:
    """Records of one batch's loaded images (and their pictures)."""
    if not batch.loaded:
        return []
    predictions = predictor.predict([b.image for b in batch.loaded], [b.proposals for b in batch.loaded], batch.staged,
                                    keep_maps=save_vis is not None)  # the maps are for the pictures only
    records = []
    for item, pred in zip(batch.loaded, predictions):
        image_id = item.path.stem
        records.append({"image": image_key(item.path), "id": image_id, "ok": True, "size": list(item.image.shape[:2]),
                        "instances": [result_entry(image_id, inst.class_id, inst.score, inst.mask, predictor.classes)
                                      for inst in pred.instances]})
        if save_vis is not None:
            for suffix, picture in predictor.pictures(item.image, pred).items():
                write_image(save_vis / f"{image_id}_{suffix}.png", picture)
    return records
