"""The online server against the batch job, side by side in one run.

The demo model over ``--images`` copies of the demo's images (proposals read from disk, as
both contestants do): the batch job (``icn-rt infer``, one process) and ``icn-rt serve`` on
a local Ray cluster of this machine's CPUs (one model replica, one ingress replica), loaded
by a bounded test on 127.0.0.1: ``--requests`` requests at each ``--concurrency``, then
stop. Reported: requests/s, p50/p99 latency, errors, the server's batch sizes, its
images/s against the batch job's, and whether its instances are the batch job's (scores to
float32 rounding).

    python benchmarks/bench_serve.py --out benchmarks/results/serve_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from accuracy import write_report
from bench_distributed import _copies
from machine import machine_info

from icn_rt import demo as assets
from icn_rt.runtime.infer import InferSettings, PredictorSpec, infer
from icn_rt.runtime.serve import ServeSettings, request, start, stop
from icn_rt.runtime.sources import list_images


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def _ready(url: str, within: float = 300) -> None:
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {within} s")


def _load(url: str, paths: list[Path], requests: int, concurrency: int) -> dict:
    """``requests`` requests (cycling ``paths``), ``concurrency`` at a time."""
    order = [paths[k % len(paths)] for k in range(requests)]

    def one(path: Path):
        t = time.perf_counter()
        status, answer = request(url, path)
        return path.stem, status, time.perf_counter() - t, answer

    t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        done = list(pool.map(one, order))
    wall = time.perf_counter() - t
    latencies = [d[2] for d in done if d[1] == 200]
    return {"concurrency": concurrency, "requests": requests, "seconds": wall, "requests_per_second": requests / wall,
            "p50_ms": 1e3 * _percentile(latencies, 50) if latencies else None,
            "p99_ms": 1e3 * _percentile(latencies, 99) if latencies else None,
            "errors": sum(d[1] != 200 for d in done), "answers": {d[0]: d[3] for d in done if d[1] == 200}}


def _same(batch_results: Path, answers: dict) -> bool:
    expected: dict[str, list] = {}
    for entry in json.loads(batch_results.read_text()):
        expected.setdefault(entry["image_id"], []).append(entry)
    for image_id, answer in answers.items():
        got, want = answer["instances"], expected.get(image_id, [])
        if [(g["category_id"], g["segmentation"]) for g in got] != [(w["category_id"], w["segmentation"])
                                                                    for w in want]:
            return False
        if any(abs(g["score"] - w["score"]) > 1e-5 * abs(w["score"]) for g, w in zip(got, want)):
            return False
    return True


def run(args, tmp: Path, log) -> dict:
    images, props = _copies(args.images, tmp)
    paths = list_images([images])
    spec = PredictorSpec(str(assets.MODEL))
    settings = InferSettings(proposals=props, batch_size=args.max_batch_size, workers=min(4, os.cpu_count() or 1),
                             progress=False)
    t = time.perf_counter()
    infer(spec.build(), paths, tmp / "batch.json", settings)
    batch_seconds = time.perf_counter() - t
    log(f"batch job: {len(paths) / batch_seconds:.1f} images/s")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve_settings = ServeSettings(max_batch_size=args.max_batch_size, batch_wait_s=args.batch_wait,
                                   cpus_per_replica=max(1, (os.cpu_count() or 2) - 1), proposals=str(props),
                                   port=port)
    t = time.perf_counter()
    url, ours = start(spec, serve_settings, "local")
    _ready(url)
    start_seconds = time.perf_counter() - t
    log(f"server ready in {start_seconds:.1f} s")
    try:
        _load(url, paths[:4], 8, 2)  # warm-up, not reported
        rows = []
        for concurrency in args.concurrency:
            row = _load(url, paths, args.requests, concurrency)
            row["same_instances_as_the_batch_job"] = _same(tmp / "batch.json", row.pop("answers"))
            rows.append(row)
            log(f"concurrency {concurrency}: {row['requests_per_second']:.1f} requests/s, p50 {row['p50_ms']:.0f} ms, "
                f"p99 {row['p99_ms']:.0f} ms, {row['errors']} errors")
        with urllib.request.urlopen(url + "/stats", timeout=30) as r:
            stats = json.loads(r.read())
    finally:
        stop(ours)
    for row in rows:
        row["vs_batch_job"] = row["requests_per_second"] / (len(paths) / batch_seconds)
    return {"images": len(paths), "model": "the demo model (small backbone, 128 px)",
            "batch_job_images_per_second": len(paths) / batch_seconds, "server_start_seconds": start_seconds,
            "settings": {"max_batch_size": args.max_batch_size, "batch_wait_s": args.batch_wait,
                         "replicas": 1, "cpus_per_replica": serve_settings.cpus_per_replica},
            "rows": rows, "server_batches": stats}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--requests", type=int, default=128, help="requests per concurrency level")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-batch-size", type=int, default=8)
    ap.add_argument("--batch-wait", type=float, default=0.02)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    with tempfile.TemporaryDirectory() as tmp:
        doc = run(args, Path(tmp), log)
    doc = {"benchmark": "icn-rt serve (Ray Serve) against the batch job", "command": shlex.join(["python", *sys.argv]),
           **doc, "machine": machine_info()}
    s = doc["settings"]
    lines = [f"{doc['model']}, {doc['images']} images (the demo's, cycled), proposals from disk. Batch job: "
             f"{doc['batch_job_images_per_second']:.1f} images/s (batch {s['max_batch_size']}). Server: one model "
             f"replica ({s['cpus_per_replica']:g} CPUs) and one ingress on a local Ray cluster, batches of up to "
             f"{s['max_batch_size']} waiting {1e3 * s['batch_wait_s']:g} ms; ready in "
             f"{doc['server_start_seconds']:.0f} s. Each row: a fixed number of requests at a fixed concurrency "
             "on 127.0.0.1.", "",
             "| concurrency | requests | requests/s | × batch job | p50 ms | p99 ms | errors | same instances |",
             "|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['requests_per_second']:.1f} | "
                     f"{r['vs_batch_job']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | "
                     f"{'yes' if r['same_instances_as_the_batch_job'] else 'NO'} |")
    lines += ["", f"Server batch sizes over the run (size: batches): {doc['server_batches']['batch_sizes']}."]
    write_report(args.out, doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
