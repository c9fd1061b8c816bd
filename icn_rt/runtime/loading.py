"""Loading images for a job, in loader workers (threads, or processes when proposals are
made on the fly): decode, proposals (read from a folder or made by selective search) and
preprocessing, streamed in order with a bounded window, so memory does not depend on the
number of images. Bad input becomes a :class:`Failed` record, never an exception that
ends the job. (Loader processes import this module: it keeps the models and kernels out.)"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from icn_rt.data.images import decode_image, image_size, read_image
from icn_rt.data.preprocess import preprocess_array
from icn_rt.data.proposals import Proposals, load_proposals, proposal_path
from icn_rt.errors import InputError, TooLarge

MAX_PIXELS = 64_000_000


@dataclass
class Loaded:
    """One image ready for the predictor: ``image: uint8 [H, W, 3]``, its proposals (None
    for a predictor that needs none) and its network input ``x: float32 [3, S, S]``."""

    path: Path
    image: np.ndarray
    proposals: Proposals | None
    x: np.ndarray


@dataclass(frozen=True)
class LoadSettings:
    """``proposals``: the folder of ``<id>.mat``/``<id>.json`` files, or None to make them
    on the fly (selective search, ``max_proposals`` of them) unless ``make_proposals`` is
    off (the student needs none: ``Loaded.proposals`` is None); ``max_pixels``: larger
    images are refused before they are decoded."""

    input_size: int
    proposals: Path | None
    max_pixels: int = MAX_PIXELS
    max_proposals: int = 2000
    make_proposals: bool = True


def load(path: Path, settings: LoadSettings) -> Loaded:
    """Read, check and preprocess one image and its proposals; bad input raises
    :class:`InputError` naming the file."""
    size = image_size(path)
    _check_pixels(path, size, settings)
    return _prepared(path, read_image(path), size, settings)


def load_bytes(data: bytes, path: Path, settings: LoadSettings) -> Loaded:
    """:func:`load` of an encoded image received rather than read (``path`` names it, and
    its stem finds its proposals in a folder)."""
    import io

    size = image_size(io.BytesIO(data), path)
    _check_pixels(path, size, settings)
    return _prepared(path, decode_image(data, path), size, settings)


def _check_pixels(path: Path, size: tuple[int, int] | None, settings: LoadSettings) -> None:
    if size is not None and size[0] * size[1] > settings.max_pixels:
        raise TooLarge(path, f"image is {size[1]}x{size[0]} ({size[0] * size[1] / 1e6:.0f} MP), above the "
                               f"{settings.max_pixels / 1e6:g} MP limit (--max-pixels)")


def _prepared(path: Path, image: np.ndarray, size: tuple[int, int] | None, settings: LoadSettings) -> Loaded:
    if settings.proposals is not None:
        turned = size is not None and size != image.shape[:2]
        why = (f" (turned from {size[0]}x{size[1]} by its EXIF orientation; make the proposals on the turned "
               "image, as icn-rt proposals does)") if turned else ""
        props = load_proposals(proposal_path(settings.proposals, path.stem), expected_shape=image.shape[:2], why=why)
    elif not settings.make_proposals:
        props = None
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
