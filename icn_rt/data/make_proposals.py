"""``icn-rt proposals``: selective-search proposals for every image of a split.

Parallel over images, one MCG ``.mat`` per image, written atomically (temporary name,
then rename) so an interrupted run leaves no half file and a rerun skips finished
images. An image that fails is recorded in ``errors.txt`` with the reason and the run
goes on.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import save_proposals
from icn_rt.data.selective_search import SelectiveSearchConfig, selective_search
from icn_rt.errors import InputError


@dataclass
class ProposalJobSummary:
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _one(args) -> tuple[str, str | None]:
    image_path, out_path, config, mat_version = args
    try:
        props = selective_search(read_image(image_path), config)
        tmp = out_path.with_name(out_path.stem + ".partial.mat")
        save_proposals(tmp, props, mat_version)
        os.replace(tmp, out_path)
        return out_path.stem, None
    except InputError as e:
        return out_path.stem, str(e)
    except Exception as e:  # a failing image must not stop the job; record why
        return out_path.stem, f"{image_path}: {type(e).__name__}: {e}"


def make_proposals(voc_root: str | Path, out_dir: str | Path, split: str = "val",
                   config: SelectiveSearchConfig = SelectiveSearchConfig(), jobs: int | None = None,
                   mat_version: str = "5", progress: bool = True) -> ProposalJobSummary:
    dataset = open_dataset(voc_root, split, load_images=False)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = ProposalJobSummary()
    todo = []
    for image_id in dataset.ids:
        out = out_dir / f"{image_id}.mat"
        if out.exists():
            summary.skipped += 1
        else:
            todo.append((dataset.image_path(image_id), out, config, mat_version))
    jobs = jobs or os.cpu_count() or 1
    if jobs > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(jobs)
        results = pool.map(_one, todo, chunksize=max(1, min(8, len(todo) // (4 * jobs))))
    else:
        pool, results = None, map(_one, todo)
    if progress:
        from icn_rt.progress import track

        results = track(results, "proposals", total=len(todo), unit="img")
    try:
        with (out_dir / "errors.txt").open("a") as errors:
            for image_id, error in results:
                if error is None:
                    summary.written += 1
                else:
                    summary.failed.append((image_id, error))
                    errors.write(f"{image_id}\t{error}\n")
                    errors.flush()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return summary
