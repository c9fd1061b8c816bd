"""``icn-rt serve``: the online server and its client."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from icn_rt.cli.common import app, err, fail, out, plural, renamed
from icn_rt.cli.options import (Backend, Device, IcnSteps, Images, MaxPixels, Model, Out, Proposals, Ray, Student,
                                Timeout, one_backend)
from icn_rt.errors import InputError


@app.command("serve")
def serve_cmd(
    model_dir: Model,
    old_images: Optional[list[str]] = typer.Argument(None, hidden=True),
    old_client: Optional[str] = typer.Option(None, "--client", hidden=True, help="Deprecated: icn-rt client."),
    student: Student = False,
    backend: Backend = None,
    device: Device = "auto",
    icn_steps: IcnSteps = None,
    proposals_dir: Proposals = None,
    max_batch_size: int = typer.Option(8, help="Most images in one batch of a model replica."),
    batch_wait: float = typer.Option(0.01, help="Seconds a batch waits for more images once one came."),
    replicas: int = typer.Option(1, help="Model replicas (and as many ingress replicas)."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per model replica (0: on CPUs; above 0: --device cuda)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per model replica (its torch threads)."),
    max_pixels: MaxPixels = 64,
    max_body_mb: float = typer.Option(64, help="Refuse request bodies over this many MB (413)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="HTTP port."),
    timeout: Timeout = 120,
    ray: Ray = "auto",
    old_results: Path = typer.Option(Path("results.json"), "--out", hidden=True, help="Deprecated: icn-rt client."),
    old_concurrency: int = typer.Option(4, "--concurrency", hidden=True, help="Deprecated: icn-rt client."),
):
    """An online server on Ray Serve: POST an image's bytes to /predict, get its instances as
    COCO RLE JSON (dynamic batching, replicas, /healthz, /readyz, /stats; 4xx for bad
    requests; images over --max-pixels: 413). --proposals: found by each request's id
    [default: selective search per request, slow]. Runs until Ctrl-C or SIGTERM, then
    drains. `icn-rt client URL IMAGES` posts images to it."""
    if old_client is not None:  # `serve --client URL IMAGES`: MODEL is the first image
        renamed(old_client, "--client", None, "icn-rt client")
        _client(old_client, [str(model_dir), *(old_images or [])], old_results, old_concurrency, timeout)
        return
    from icn_rt.runtime.infer import PredictorSpec
    from icn_rt.runtime.serve import ServeSettings, start, stop, wait_for_signal

    try:
        if old_images:
            raise ValueError(f"serve takes one model directory; got also {' '.join(old_images)}")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
        spec = PredictorSpec(str(model_dir.resolve()), student, one_backend(backend),
                             "cuda" if gpus_per_replica > 0 else device, icn_steps)
        from icn_rt.models.store import read_config

        read_config(spec.model_dir)  # not a model directory: said here, before the cluster starts
        settings = ServeSettings(max_batch_size, batch_wait, replicas, gpus_per_replica, cpus_per_replica,
                                 int(max_pixels * 1e6), max_body_mb,
                                 str(proposals_dir.resolve()) if proposals_dir else None, host, port, timeout)
        url, ours = start(spec, settings, ray)
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    out.print(f"serving {model_dir} at {url}: POST /predict?id=NAME (the image's bytes); GET /healthz /readyz "
              "/stats; Ctrl-C stops", highlight=False)
    try:
        wait_for_signal()
    finally:
        err.print("stopping: draining requests in flight", highlight=False)
        stop(ours)


@app.command("client")
def client_cmd(
    url: str = typer.Argument(..., help="The server's address (`icn-rt serve`), e.g. http://127.0.0.1:8000."),
    images: Images = None,
    results: Out = Path("results.json"),
    concurrency: int = typer.Option(4, help="Requests in flight at once."),
    timeout: Timeout = 120,
):
    """Post images to an `icn-rt serve` server and write their instances (COCO results, RLE
    masks). A request that fails is named and the rest go on (exit 1 if any failed)."""
    _client(url, images or [], results, concurrency, timeout)


def _client(url: str, images: list[str], results: Path, concurrency: int, timeout: float) -> None:
    from icn_rt.data.results import write_results
    from icn_rt.progress import Counter
    from icn_rt.runtime.serve import client
    from icn_rt.runtime.sources import list_images

    try:
        paths = list_images(images)
        if not paths:
            raise ValueError("no images given")
    except (InputError, ValueError) as e:
        fail(e)
    entries, failed = [], 0
    bar = Counter("requests", len(paths), "images")
    for path, status, answer in client(url, paths, concurrency, timeout):
        bar.advance()
        if status == 200:
            entries += answer["instances"]
        else:
            failed += 1
            err.print(f"[yellow]failed:[/yellow] {path}: {status or 'no answer'}: {answer.get('error')}",
                      highlight=False, soft_wrap=True)
    bar.close()
    write_results(results, entries)
    out.print(f"{plural(len(paths) - failed, 'image')}, {plural(len(entries), 'instance')} -> {results}"
              + (f"; {failed} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)
