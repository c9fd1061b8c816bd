"""``icn-rt infer --ray``: the same job as :func:`~icn_rt.runtime.infer.infer`, spread over a
Ray cluster with Ray Data (``pip install 'icn-rt[distributed]'``).

The images still to do (after ``--resume``'s skips) are cut, in input order, into the
batches the single-process job would make; each batch is one row of a Ray Dataset.
Loading (decode, proposals read or made by selective search, preprocessing) runs as CPU
tasks, one batch each; prediction runs in a fixed pool of stateful actors, each of which
makes its predictor once (:class:`~icn_rt.runtime.infer.PredictorSpec`) on the backend
the job names, on a GPU of its own when ``gpus_per_actor`` asks for one. Execution
streams: Ray Data's executor keeps a bounded number of batches in flight, whatever the
number of images. The driver (this process) appends each batch's records, as they come
back in whatever order, to the same JSONL shards, and merges them into the COCO JSON in
input order at the end, so the job keeps every promise of the single-process one:
resume, the errors file, exit codes, progress, and the same results (the same batches
through the same code).

Every node must see the images, the proposals and the model directory at the same paths
(a shared or replicated file system); only the driver writes the results (``--save-vis``
pictures are written by the actors, where they run).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from icn_rt import extras
from icn_rt.runtime.infer import (InferSettings, PredictorSpec, finish_job, groups, load_settings,
                                  open_job, predict_batch)
from icn_rt.runtime.loading import LoadSettings, load_or_failed
from icn_rt.runtime.result_log import InferSummary


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide: ``address``: ``auto`` (a cluster running here, or a new local
    one), ``local`` (a new one) or the cluster's address; ``actors`` predictors, each
    with ``gpus_per_actor`` GPUs (0: on CPUs) and ``cpus_per_actor`` CPUs (Ray's logical
    CPUs; also its torch threads, at least one); ``loader_cpus`` per loading task (0: no
    loading tasks, for jobs whose actors read their own input)."""

    address: str = "auto"
    actors: int = 1
    gpus_per_actor: float = 0.0
    cpus_per_actor: float = 1.0
    loader_cpus: float = 1.0

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"--actors must be at least 1, got {self.actors}")
        if self.gpus_per_actor < 0 or self.cpus_per_actor <= 0 or self.loader_cpus < 0:
            raise ValueError("--gpus-per-actor and --loader-cpus must be >= 0, --cpus-per-actor > 0")


@dataclass
class RayTimes:
    """Seconds spent joining (or starting) the cluster, running the job (the pool's start
    included), until the ``first_images`` of the first batch came back, and the driver
    writing results; ``payload``: bytes of loaded batches handed through the object store."""

    start: float = 0.0
    run: float = 0.0
    first: float = 0.0
    first_images: int = 0
    write: float = 0.0
    payload: int = 0


def connect(address: str) -> bool:
    """Join (or start) the cluster; True when this call started Ray in this process (the
    caller shuts it down)."""
    ray = extras.require("ray", "rerun")
    if ray.is_initialized():
        return False
    kwargs = {"include_dashboard": False, "log_to_driver": True}
    if address == "auto":
        ray.init(**kwargs)
    else:
        ray.init(address=address, **kwargs)
    return True


def infer_ray(spec: PredictorSpec, images: list[Path], out: Path, settings: InferSettings, cluster: RaySettings,
              times: RayTimes | None = None) -> InferSummary:
    """:func:`~icn_rt.runtime.infer.infer` on a Ray cluster (see the module's docstring).
    The driver makes the predictor once, eager on its CPU (whatever backend the actors
    use: it gives the same instances), for the job's fingerprint and input side only.
    Ctrl-C (or SIGTERM through the CLI) ends the job with ``interrupted`` set; what was
    written stays for ``--resume``."""
    from icn_rt.progress import Counter

    if cluster.loader_cpus <= 0:
        raise ValueError("--loader-cpus must be above 0: loading runs in tasks of its own")
    predictor = replace(spec, backend="torch", cuda_graph=False).build("cpu")
    log, todo = open_job(predictor.fingerprint(settings.proposals), images, out, settings)
    load = load_settings(predictor, settings)
    del predictor
    times = times if times is not None else RayTimes()
    started = time.perf_counter()
    ours = connect(cluster.address)
    times.start = time.perf_counter() - started
    import ray

    interrupted = False
    bar = Counter("infer (ray)", len(todo), "images", settings.progress)
    try:
        check_resources(ray.cluster_resources(), cluster)
        started = time.perf_counter()
        for records, payload in _results(todo, load, spec, settings, cluster):
            wrote = time.perf_counter()
            log.write(records)
            times.write += time.perf_counter() - wrote
            times.payload += payload
            if not times.first_images:
                times.first, times.first_images = time.perf_counter() - started, len(records)
            bar.advance(len(records))
        times.run = time.perf_counter() - started
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        log.close()
        if ours:
            ray.shutdown()
    return finish_job(log, images, todo, interrupted)


def check_resources(available: dict, cluster: RaySettings) -> None:
    """The pool and one loading task must fit the cluster at once, or the job would wait forever."""
    cpus, gpus = available.get("CPU", 0.0), available.get("GPU", 0.0)
    need_cpus = cluster.actors * cluster.cpus_per_actor + cluster.loader_cpus
    if need_cpus > cpus + 1e-9:
        raise ValueError(f"the Ray cluster has {cpus:g} CPUs; {cluster.actors} actors x {cluster.cpus_per_actor:g} "
                         f"CPUs + {cluster.loader_cpus:g} for loading need {need_cpus:g} (lower --actors, "
                         "--cpus-per-actor or --loader-cpus)")
    if cluster.actors * cluster.gpus_per_actor > gpus + 1e-9:
        raise ValueError(f"the Ray cluster has {gpus:g} GPUs; {cluster.actors} actors x {cluster.gpus_per_actor:g} "
                         "GPUs do not fit (lower --actors or --gpus-per-actor)")


def _results(todo: list[Path], load: LoadSettings, spec: PredictorSpec, settings: InferSettings,
             cluster: RaySettings):
    """Each batch's records as the pool finishes it, with the bytes its loaded batch took
    through the object store."""
    import ray.data

    if not todo:
        return
    quiet_data()
    size = settings.batch_size
    rows = [{"batch": json.dumps([str(p) for p in todo[s: s + size]])} for s in range(0, len(todo), size)]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map(_load_batch, fn_kwargs={"settings": load}, num_cpus=cluster.loader_cpus)
    save_vis = None if settings.save_vis is None else str(settings.save_vis)
    for records, payload in pooled(ds, _PredictBatches, {"spec": spec, "save_vis": save_vis}, cluster,
                                   ("records", "payload")):
        yield json.loads(records), int(payload)


def pooled(ds, actor: type, kwargs: dict, cluster: RaySettings, columns: tuple[str, ...]) -> Iterator[tuple]:
    """``ds`` (a batch a row) through a fixed pool of ``cluster.actors`` instances of
    ``actor``, each made once with ``kwargs`` plus ``gpus`` and ``threads`` (see
    :func:`actor_device`); the ``columns`` of each row they return, as the pool finishes it."""
    import ray.data

    ds = ds.map_batches(actor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=cluster.actors),
                        fn_constructor_kwargs={**kwargs, "gpus": cluster.gpus_per_actor,
                                               "threads": max(1, int(cluster.cpus_per_actor))},
                        num_cpus=cluster.cpus_per_actor, num_gpus=cluster.gpus_per_actor or None)
    for block in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
        yield from zip(*(block[c] for c in columns))


def actor_device(gpus: float, threads: int) -> str:
    """In a pool actor: its torch threads set; the device it computes on (Ray shows an
    actor its own GPUs only)."""
    import torch

    torch.set_num_threads(threads)
    return "cuda" if gpus > 0 else "cpu"


def quiet_data() -> None:
    """Ray Data without its progress bars (ours count images) and its per-job log lines (a
    plan and a log folder per job) on the console."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _load_batch(row: dict, settings: LoadSettings) -> dict:
    """A loading task: one batch's images loaded (or their failures), pickled for the pool."""
    paths = [Path(p) for p in json.loads(row["batch"])]
    return {"loaded": pickle.dumps([load_or_failed(p, settings) for p in paths], protocol=5)}


class _PredictBatches:
    """A pool actor: its predictor, made once; a loaded batch in, the batch's records
    (JSON) out."""

    def __init__(self, spec: PredictorSpec, save_vis: str | None, gpus: float, threads: int) -> None:
        self.predictor = spec.build(actor_device(gpus, threads))
        self.save_vis = Path(save_vis) if save_vis is not None else None

    def __call__(self, rows: dict) -> dict:
        out, sizes = [], []
        for payload in rows["loaded"]:
            sizes.append(len(payload))
            items = pickle.loads(payload)
            records = []
            for batch in groups(iter(items), len(items)):
                if batch.loaded:
                    batch.staged = self.predictor.stage([b.x for b in batch.loaded])
                records += batch.failed + predict_batch(self.predictor, batch, self.save_vis)
            out.append(json.dumps(records))
        return {"records": np.array(out, dtype=object), "payload": np.array(sizes, np.int64)}
