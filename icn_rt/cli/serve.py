"""``icn-rt serve``: the online server and its client."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from icn_rt.cli.common import DEVICE_HELP, RAY_HELP, app, auto_device, err, fail, out, plural
from icn_rt.errors import InputError


@app.command("serve")
def serve_cmd(
    args: Optional[list[str]] = typer.Argument(None, help="The model directory; with --client, the images (files, "
                                               "folders, globs, list files, a tags or COCO file)."),
    client_url: Optional[str] = typer.Option(None, "--client", help="Be the client of the server at this URL: "
                                             "post the images, write their instances to --out."),
    student: bool = typer.Option(False, help="Serve the model's student (no proposals)."),
    backend: str = typer.Option("torch", help="torch | onnxruntime | tensorrt | auto, as `icn-rt infer`'s."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " (--gpus-per-replica above 0 means cuda)",
                               callback=auto_device),
    icn_steps: Optional[int] = typer.Option(None, help="ICN enhancement steps T [default: the model's]."),
    proposals_dir: Optional[Path] = typer.Option(None, "--proposals", help="A folder of <id>.mat / .json "
                                                 "proposals, found by each request's id [default: selective search "
                                                 "per request, slow]."),
    max_batch_size: int = typer.Option(8, help="Most images in one batch of a model replica."),
    batch_wait: float = typer.Option(0.01, help="Seconds a batch waits for more images once one came."),
    replicas: int = typer.Option(1, help="Model replicas (and as many ingress replicas)."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per model replica (0: on CPUs)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per model replica (its torch threads)."),
    max_pixels: float = typer.Option(64, help="Refuse images larger than this many megapixels (413)."),
    max_body_mb: float = typer.Option(64, help="Refuse request bodies over this many MB (413)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="HTTP port."),
    timeout: float = typer.Option(120, help="Seconds before a request is answered 503 (server), or given up "
                                            "(client)."),
    ray: str = typer.Option("auto", help=RAY_HELP + "."),
    results: Path = typer.Option(Path("results.json"), "--out", help="--client: the COCO-style results JSON."),
    concurrency: int = typer.Option(4, help="--client: requests in flight at once."),
):
    """An online server on Ray Serve: POST an image's bytes to /predict, get its instances as
    COCO RLE JSON (dynamic batching, replicas, /healthz, /readyz, /stats; 4xx for bad
    requests). Runs until Ctrl-C or SIGTERM, then drains. With --client URL: post images."""
    if client_url is not None:
        _serve_client(client_url, args or [], results, concurrency, timeout)
        return
    from icn_rt.runtime.infer import PredictorSpec
    from icn_rt.runtime.serve import ServeSettings, start, stop, wait_for_signal

    try:
        if not args or len(args) != 1:
            raise ValueError("give one model directory (or --client URL and images)")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
        spec = PredictorSpec(str(Path(args[0]).resolve()), student, backend,
                             "cuda" if gpus_per_replica > 0 else device, icn_steps)
        from icn_rt.models.store import read_config

        read_config(spec.model_dir)  # not a model directory: said here, before the cluster starts
        settings = ServeSettings(max_batch_size, batch_wait, replicas, gpus_per_replica, cpus_per_replica,
                                 int(max_pixels * 1e6), max_body_mb,
                                 str(proposals_dir.resolve()) if proposals_dir else None, host, port, timeout)
        url, ours = start(spec, settings, ray)
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    out.print(f"serving {args[0]} at {url}: POST /predict?id=NAME (the image's bytes); GET /healthz /readyz "
              "/stats; Ctrl-C stops", highlight=False)
    try:
        wait_for_signal()
    finally:
        err.print("stopping: draining requests in flight", highlight=False)
        stop(ours)


def _serve_client(url: str, images: list[str], results: Path, concurrency: int, timeout: float) -> None:
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
