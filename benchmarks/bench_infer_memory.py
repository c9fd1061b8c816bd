"""Peak host memory of ``icn-rt infer`` does not grow with the number of images.

Runs the real job (streaming, loader workers, shards, merge) in a fresh process per
image count on copies of the demo images (symlinks, each with its proposals) and reads
the process's peak resident set size (``ru_maxrss``, loader threads included); also
its images/s. Writes JSON with the machine and versions::

    python benchmarks/bench_infer_memory.py --counts 100 2000 --out benchmarks/results/infer_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import machine_info


def child(model: str, images: str, proposals: str, out: str, batch_size: int, workers: int) -> None:
    from icn_rt.runtime.infer import InferSettings, infer
    from icn_rt.runtime.predictor import Predictor
    from icn_rt.runtime.sources import list_images

    predictor = Predictor.from_dir(model)
    paths = list_images([images])
    start = time.perf_counter()
    summary = infer(predictor, paths, Path(out), InferSettings(proposals=Path(proposals), batch_size=batch_size,
                                                               workers=workers, progress=False))
    seconds = time.perf_counter() - start
    print(json.dumps({"images": summary.images, "instances": summary.instances, "failed": len(summary.failed),
                      "seconds": seconds, "images_per_s": summary.images / seconds,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 2000])
    parser.add_argument("--model", default=None, help="Model directory [default: the demo's].")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/infer_memory_cpu.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.batch_size, args.workers)
        return
    from icn_rt import demo

    model = args.model or str(demo.MODEL)
    sources = sorted(demo.IMAGES.iterdir())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.counts:
            images, props = Path(tmp) / f"images{count}", Path(tmp) / f"props{count}"
            images.mkdir()
            props.mkdir()
            for i in range(count):
                src = sources[i % len(sources)]
                (images / f"{src.stem}_{i:05d}{src.suffix}").symlink_to(src)
                (props / f"{src.stem}_{i:05d}.mat").symlink_to(demo.PROPOSALS / f"{src.stem}.mat")
            cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
                   "--child", model, str(images), str(props), str(Path(tmp) / f"results{count}.json")]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = {"count": count, **json.loads(done.stdout.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    peaks = [r["peak_rss_bytes"] for r in rows]
    report = {"benchmark": "infer peak host memory vs number of images", "machine": machine_info(),
              "model": model, "batch_size": args.batch_size, "workers": args.workers, "rows": rows,
              "peak_rss_ratio_largest_to_smallest": max(peaks) / min(peaks),
              "target": "within 10% (ratio <= 1.10)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    peaks_text = ", ".join(f"{r['count']}: {r['peak_rss_bytes'] / 2**20:.0f} MiB" for r in rows)
    print(f"peak RSS {peaks_text} (ratio {report['peak_rss_ratio_largest_to_smallest']:.3f}) -> {args.out}")


if __name__ == "__main__":
    main()
