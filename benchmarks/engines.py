"""Engines side by side on the same images in one run: the networks of a batch (PRM stage:
forward, peaks, backward -> PRMs; ICN stage: T steps on every peak) and the whole
predictor (plus matching and NMS, as `icn-rt infer` and `bench` run it: no per-instance maps
kept), per backend:

- ``torch eager``: the predictor's own path (one backward over the K peaks found, on
  receptive-field windows where they are smaller than the map);
- ``torch graph``: the exported graph modules run in PyTorch (windows or whole maps, as
  the eager path chooses);
- ``onnxruntime``: the exported ONNX graphs (CPU provider here; CUDA/TensorRT providers
  where installed).

Both backward over the peaks found, never a fixed number of slots. Rows at the model's
own settings, then (``--peaks-per-image 1 8``) with every class map's threshold taken
away and the peaks per image capped at N, so that each image has N peaks: the cost of
each engine follows the peaks. Per row the peaks per image measured, median and p90
seconds per batch, images/s and ratios to torch eager (the contestants timed in turns,
round after round); the onnxruntime instances are checked against the eager ones.
Writes JSON with the machine and versions::

    python benchmarks/engines.py MODEL VOCROOT --batch-sizes 1 8 16 --peaks-per-image 1 8 \
        --out benchmarks/results/engines_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.export.graphs import ICN_INPUTS, ICN_OUTPUTS, PRM_INPUTS, PRM_OUTPUTS, ICNGraph, PRMGraph
from icn_rt.export.onnx_export import export_model
from icn_rt.runtime.engines import TorchEngine
from icn_rt.runtime.predictor import GraphRunner, Predictor


def _interleaved(fns: dict, repeats: int) -> dict[str, list[float]]:
    """Each function once untimed, then ``repeats`` rounds timing each in turn: a slow
    spell of a shared machine falls on every contestant alike, so their ratios hold."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _summary(times: list[float], images: int) -> dict:
    median = statistics.median(times)
    return {"median_s": median, "p90_s": float(np.percentile(times, 90)), "images_per_s": images / median,
            "repeats": len(times)}


def _networks(predictor: Predictor, images: list[np.ndarray]):
    def run():
        naive = predictor.naive_maps(images)
        if predictor.enhances:
            predictor.enhance(naive)
    return run


def _same_instances(a, b) -> bool:
    return all([(i.class_id, i.proposal) for i in p.instances] == [(i.class_id, i.proposal) for i in q.instances]
               for p, q in zip(a, b))


def _with_peaks(model: Path, out: Path, peaks: int | None) -> Path:
    """A copy of the model, exported; with ``peaks``, every threshold taken away and the
    peaks per image capped at that."""
    shutil.copytree(model, out, ignore=shutil.ignore_patterns("labels-*", "*_state.pt", "*.onnx", "manifest.json"))
    if peaks is not None:
        config = json.loads((out / "config.json").read_text())
        config["peaks"].update(class_threshold=-1e9, peak_threshold=-1e9, max_peaks=peaks)
        (out / "config.json").write_text(json.dumps(config, indent=2))
    export_model(out, verify=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("root", type=Path, help="VOC root with Proposals/ for the split")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8])
    parser.add_argument("--peaks-per-image", type=int, nargs="*", default=[1, 8],
                        help="Extra rows with exactly this many peaks per image.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engines_cpu.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    ds = open_dataset(args.root, args.split, load_images=False)
    ids = ds.ids[: args.images]
    images = [read_image(ds.image_path(i)) for i in ids]
    props = [load_proposals(proposal_path(args.root / "Proposals", i), im.shape[:2]) for i, im in zip(ids, images)]
    rows, identical = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for peaks in (None, *args.peaks_per_image):
            setting = "model" if peaks is None else f"{peaks} per image"
            model = _with_peaks(args.model, Path(tmp) / f"model-{peaks}", peaks)
            eager = Predictor.from_dir(model, args.device)
            graph = Predictor.from_dir(model, args.device)
            graph.runner = GraphRunner(graph.model, _torch_graphs(graph))
            ort = Predictor.from_dir(model, args.device, backend="onnxruntime")
            found = len(eager.naive_maps(images).peaks) / len(images)
            for b in args.batch_sizes:
                batches = [(images[s: s + b], props[s: s + b]) for s in range(0, len(images), b)]
                contestants = {"torch eager": eager, "torch graph": graph, "onnxruntime": ort}
                nets = _interleaved({name: (lambda p=p: [_networks(p, i)() for i, _ in batches])
                                     for name, p in contestants.items()}, args.repeats)
                fulls = _interleaved({name: (lambda p=p: [p.predict(i, q, keep_maps=False) for i, q in batches])
                                      for name, p in contestants.items()}, args.repeats)
                for name in contestants:
                    net, full = nets[name], fulls[name]
                    rows.append({"backend": name, "peaks": setting, "peaks_per_image": found, "batch_size": b,
                                 "networks": _summary(net, len(images)), "predict": _summary(full, len(images))})
                    print(f"{name:>12} peaks {setting:>12} ({found:.2f}/image) batch {b:>2}: networks "
                          f"{len(images) / statistics.median(net):6.2f} img/s, predict "
                          f"{len(images) / statistics.median(full):6.2f} img/s", flush=True)
                identical[f"{setting}, batch {b}"] = all(_same_instances(eager.predict(i, p), ort.predict(i, p))
                                                         for i, p in batches)
    for row in rows:
        base = next(r for r in rows if r["backend"] == "torch eager" and r["peaks"] == row["peaks"]
                    and r["batch_size"] == row["batch_size"])
        for stage in ("networks", "predict"):
            row[stage]["speedup_vs_torch_eager"] = row[stage]["images_per_s"] / base[stage]["images_per_s"]
    result = {"benchmark": "engines", "command": "python " + " ".join(sys.argv), "machine": machine_info(),
              "model": str(args.model), "device": args.device, "images": len(images),
              "batch_sizes": args.batch_sizes, "input_size": eager.input_size,
              "icn_steps": eager.model.icn_settings.steps if eager.enhances else 0,
              "onnxruntime_instances_equal_torch_eager": identical, "rows": rows,
              "torch_threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


class _TorchGraphs:
    """The graph modules in PyTorch behind the same engine interface the predictor uses."""

    def __init__(self, prm: TorchEngine, icn: TorchEngine | None) -> None:
        self.prm, self.icn, self.backend = prm, icn, "torch graph"
        self.precision, self.cuda_graph = "fp32", False


def _torch_graphs(predictor: Predictor) -> _TorchGraphs:
    slots = predictor.model.peaks.max_peaks
    prm = TorchEngine(PRMGraph(predictor.model, slots), PRM_INPUTS, PRM_OUTPUTS, predictor.device)
    icn = None
    if predictor.enhances:
        icn = TorchEngine(ICNGraph(predictor.model), ICN_INPUTS, ICN_OUTPUTS, predictor.device)
    return _TorchGraphs(prm, icn)


if __name__ == "__main__":
    main()
