"""Single process against Ray and DDP on this machine, side by side in one run.

Inference: the demo model over ``--images`` copies of the demo's images (their
proposals read from disk, then made on the fly by selective search), through the
single-process ``icn-rt infer`` job and through ``--ray`` with 1 and 2 predictor actors
on a local Ray cluster of this machine's CPUs. Ray's start-up (joining/starting the
cluster) is timed apart from the job (which includes starting the actor pool); the
results are checked equal to the single-process job's. Also reported: the bytes each
image's loaded batch takes through the object store and the driver's time writing
results, per image.

Training: ``icn-rt train classifier`` (the demo's small backbone at 128 px) for
``--epochs`` on a synthetic set, on 1 process and under torchrun on 2 (gloo, global
BatchNorm), seconds per epoch after the first.

    python benchmarks/bench_distributed.py --out benchmarks/results/distributed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from accuracy import write_report
from machine import machine_info

from icn_rt import demo as assets
from icn_rt.runtime.infer import InferSettings, PredictorSpec, infer
from icn_rt.runtime.ray_infer import RaySettings, RayTimes, infer_ray
from icn_rt.runtime.sources import list_images


def _copies(n: int, where: Path) -> tuple[Path, Path]:
    """``n`` images cycled from the demo's (unique ids) and their proposals."""
    images, props = where / "images", where / "props"
    images.mkdir()
    props.mkdir()
    demo = sorted(assets.IMAGES.glob("*.jpg"))
    for k in range(n):
        source = demo[k % len(demo)]
        shutil.copy(source, images / f"img{k:05d}.jpg")
        shutil.copy(assets.PROPOSALS / f"{source.stem}.mat", props / f"img{k:05d}.mat")
    return images, props


def _same(a: Path, b: Path) -> bool:
    """The same instances (scores to float32 rounding)."""
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    strip = [{k: v for k, v in e.items() if k != "score"} for e in x]
    return strip == [{k: v for k, v in e.items() if k != "score"} for e in y] and all(
        abs(e["score"] - f["score"]) <= 1e-5 * abs(e["score"]) for e, f in zip(x, y))


def inference(n: int, batch: int, tmp: Path, log) -> dict:
    import ray

    images, props = _copies(n, tmp)
    paths = list_images([images])
    spec = PredictorSpec(str(assets.MODEL))
    rows = []
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    try:
        for source in ("disk", "on the fly"):
            proposals = props if source == "disk" else None
            settings = InferSettings(proposals=proposals, batch_size=batch, workers=min(4, os.cpu_count() or 1),
                                     progress=False)
            single = tmp / f"single-{source}.json"
            t = time.perf_counter()
            infer(spec.build(), paths, single, settings)
            seconds = time.perf_counter() - t
            rows.append({"proposals": source, "contestant": "single process", "seconds": seconds,
                         "images_per_second": n / seconds})
            log(f"{source}: single process {n / seconds:.1f} images/s")
            for actors in (1, 2):
                cpus = (os.cpu_count() - 1) / actors  # one CPU stays with the loading tasks
                cluster = RaySettings("local", actors=actors, cpus_per_actor=cpus, loader_cpus=1)
                out = tmp / f"ray{actors}-{source}.json"
                times = RayTimes()
                infer_ray(spec, paths, out, settings, cluster, times)
                steady = (n - times.first_images) / (times.run - times.first)
                rows.append({"proposals": source, "contestant": f"ray, {actors} actor{'s' * (actors > 1)}",
                             "actors": actors, "cpus_per_actor": cpus, "seconds": times.run,
                             "images_per_second": n / times.run, "seconds_to_first_batch": times.first,
                             "images_per_second_after_first_batch": steady,
                             "driver_write_ms_per_image": 1e3 * times.write / n,
                             "object_store_kb_per_image": times.payload / n / 1024,
                             "same_results_as_single": _same(single, out)})
                log(f"{source}: ray {actors} actors {n / times.run:.1f} images/s ({steady:.1f} after the first "
                    f"batch, {times.first:.1f} s)")
    finally:
        ray.shutdown()
    base = {r["proposals"]: r["images_per_second"] for r in rows if r["contestant"] == "single process"}
    for r in rows:
        r["vs_single"] = r["images_per_second"] / base[r["proposals"]]
    config = json.loads((assets.MODEL / "config.json").read_text())
    model = (f"the demo model ({config['classifier']['backbone']} backbone, {config['classifier']['input_size']} px, "
             f"ICN T={config['icn']['steps']})")
    return {"images": n, "batch_size": batch, "model": model,
            "ray_start_seconds": ray_start, "rows": rows}


def training(epochs: int, train_images: int, tmp: Path, log) -> dict:
    from icn_rt.data.synth import SynthConfig, generate

    root = tmp / "voc"
    generate(root, SynthConfig(size=128, train=train_images, val=16, dev=0, seed=11), progress=False)
    cli = str(Path(sys.executable).parent / "icn-rt")
    common = ["train", "classifier", str(root), "--backbone", "small", "--input-size", "128", "--sub-pixel", "1",
              "--lr", "1e-3", "--batch-size", "16", "--epochs", str(epochs), "--device", "cpu", "--sync-bn"]
    rows = []
    for nproc in (1, 2):
        out = tmp / f"train{nproc}"
        command = [cli, *common, "--out", str(out), "--nproc", str(nproc)]
        t = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, "COLUMNS": "300"})
        wall = time.perf_counter() - t
        epochs_log = json.loads((out / "train_log.json").read_text())
        later = [e["seconds"] for e in epochs_log[1:]] or [epochs_log[0]["seconds"]]
        rows.append({"processes": nproc, "seconds_per_epoch": sum(later) / len(later), "wall_seconds": wall,
                     "final_loss": epochs_log[-1]["loss"], "command": shlex.join(command[1:])})
        log(f"training on {nproc} process(es): {rows[-1]['seconds_per_epoch']:.1f} s/epoch")
    for r in rows:
        r["speedup"] = rows[0]["seconds_per_epoch"] / r["seconds_per_epoch"]
    return {"train_images": train_images, "epochs": epochs, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-images", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local cluster: no token file left in ~/.ray
    with tempfile.TemporaryDirectory() as tmp:
        infer_doc = inference(args.images, args.batch_size, Path(tmp), log)
        train_doc = training(args.epochs, args.train_images, Path(tmp), log)
    doc = {"benchmark": "single process vs Ray Data inference and DDP training",
           "command": shlex.join(["python", *sys.argv]), "inference": infer_doc, "training": train_doc,
           "machine": machine_info()}
    lines = [f"Inference: {infer_doc['model']}, {infer_doc['images']} images (the demo's, cycled), batch "
             f"{infer_doc['batch_size']}; Ray on a local cluster of this machine's {os.cpu_count()} CPUs, started in "
             f"{infer_doc['ray_start_seconds']:.1f} s (apart; the job's time includes starting the actor pool).", "",
             "| proposals | contestant | images/s | × single | s to the first batch | images/s after it "
             "| object store KB/image | driver writing ms/image | same results |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in infer_doc["rows"]:
        ray_cells = (f"{r['seconds_to_first_batch']:.1f} | {r['images_per_second_after_first_batch']:.1f} | "
                     f"{r['object_store_kb_per_image']:.0f} | {r['driver_write_ms_per_image']:.2f} | "
                     f"{'yes' if r['same_results_as_single'] else 'NO'}") if "actors" in r else "– | – | – | – | –"
        lines.append(f"| {r['proposals']} | {r['contestant']} | {r['images_per_second']:.1f} | "
                     f"{r['vs_single']:.2f} | {ray_cells} |")
    lines += ["", f"Training: `icn-rt train classifier` (small backbone, 128 px, batch 16, global BatchNorm) on "
                  f"{train_doc['train_images']} synthetic images, {train_doc['epochs']} epochs; seconds per epoch "
                  "after the first.", "", "| processes | s/epoch | × one process | final loss |", "|---|---|---|---|"]
    for r in train_doc["rows"]:
        lines.append(f"| {r['processes']} | {r['seconds_per_epoch']:.1f} | {r['speedup']:.2f} | "
                     f"{r['final_loss']:.4f} |")
    write_report(args.out, doc, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
