"""The ICN's pseudo labels made on a Ray cluster (``icn-rt train pseudo-labels --ray``,
``icn-rt train icn --ray``): the same files as
:func:`~icn_rt.training.pseudo_labels.make_labels`, one batch of images per task of a
fixed pool of actors that each load the model once and write each image's label file
(atomically) into the label directory, which every node must see at the same path. The
driver keeps the count, the failures (``errors.txt``) and the progress; a rerun skips the
images that have a label file, as in one process."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from icn_rt.models.store import load_model
from icn_rt.progress import Counter
from icn_rt.runtime.ray_infer import RaySettings, actor_device, check_resources, connect, pooled, quiet_data
from icn_rt.training.pseudo_labels import (LabelSettings, LabelSummary, default_label_dir, finish_labels,
                                           label_images, start_labels)


def labels_first_on_ray(root: str | Path, model_dir: str | Path, settings: LabelSettings, cluster: RaySettings,
                        out: str | Path | None = None, proposals_dir: str | Path | None = None,
                        log: Callable[[str], None] = print) -> None:
    """``icn-rt train icn --ray``: the labels made on the cluster before training starts, by
    the launching process only: under ``torchrun`` (``WORLD_SIZE`` set) the ranks find them
    made and train."""
    import os

    if "WORLD_SIZE" not in os.environ:
        label_on_ray(root, model_dir, settings, cluster, out, proposals_dir, log=log)


def label_on_ray(root: str | Path, model_dir: str | Path, settings: LabelSettings, cluster: RaySettings,
                 out: str | Path | None = None, proposals_dir: str | Path | None = None, progress: bool = True,
                 log: Callable[[str], None] = print) -> tuple[Path, LabelSummary]:
    """:func:`~icn_rt.training.pseudo_labels.label_model` on a Ray cluster; returns the
    label directory and what was done."""
    out = Path(out) if out else default_label_dir(model_dir, settings)
    todo, summary = start_labels(root, load_model(model_dir, "cpu"), out, settings)
    if todo:
        ours = connect(cluster.address)
        import ray
        import ray.data

        bar = Counter(f"labels ({settings.supervision}, ray)", len(todo), "images", progress)
        try:
            check_resources(ray.cluster_resources(), cluster)
            quiet_data()
            size = settings.batch_size
            rows = [{"ids": json.dumps(todo[s: s + size])} for s in range(0, len(todo), size)]
            kwargs = {"root": str(root), "model_dir": str(model_dir), "out": str(out), "settings": asdict(settings),
                      "proposals": None if proposals_dir is None else str(proposals_dir)}
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            for (text,) in pooled(ds, _Labeller, kwargs, cluster, ("summary",)):
                part = json.loads(text)
                summary.images += part["images"]
                summary.peaks += part["peaks"]
                summary.failed += [tuple(f) for f in part["failed"]]
                bar.advance(part["images"] + len(part["failed"]))
        finally:
            bar.close()
            if ours:
                ray.shutdown()
        order = {image_id: k for k, image_id in enumerate(todo)}
        summary.failed.sort(key=lambda f: order[f[0]])  # the split's order, as in one process
    finish_labels(out, summary, log)
    return out, summary


class _Labeller:
    """A pool actor: the model, loaded once; a batch of image ids in, their label files
    written, the batch's counts out."""

    def __init__(self, root: str, model_dir: str, out: str, settings: dict, proposals: str | None, gpus: float,
                 threads: int) -> None:
        self.model = load_model(model_dir, actor_device(gpus, threads))
        self.root, self.out, self.proposals = root, out, proposals
        self.settings = LabelSettings(**settings)

    def __call__(self, rows: dict) -> dict:
        out = []
        for ids in rows["ids"]:
            summary = LabelSummary()
            label_images(self.root, self.model, json.loads(ids), self.out, self.settings, self.proposals, summary)
            out.append(json.dumps({"images": summary.images, "peaks": summary.peaks, "failed": summary.failed}))
        return {"summary": np.array(out, dtype=object)}
