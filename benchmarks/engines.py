"""Engines side by side on the same images in one run: the networks of a batch (PRM stage:
forward, peaks, backward -> PRMs; ICN stage: T steps on every peak) and the whole
predictor (plus matching and NMS), per backend:

- ``torch eager``: the predictor's own path (one backward over the K real peaks);
- ``torch graph``: the exported graph modules run in PyTorch (the fixed peak slots);
- ``onnxruntime``: the exported ONNX graphs (CPU provider here; CUDA/TensorRT providers
  where installed).

The graphs are exported at each ``--slots`` into a scratch copy of the model. Reports
median and p90 seconds per batch, images/s, and ratios to torch eager; checks that the
onnxruntime instances equal the eager ones. Writes JSON with the machine and versions::

    python benchmarks/engines.py MODEL VOCROOT --out benchmarks/results/engines_cpu.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine_info

from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.voc import VOCDataset
from icn_rt.export.graphs import ICN_INPUTS, ICN_OUTPUTS, PRM_INPUTS, PRM_OUTPUTS, ICNGraph, PRMGraph
from icn_rt.export.onnx_export import export_model
from icn_rt.runtime.engines import TorchEngine
from icn_rt.runtime.predictor import Predictor


def _timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("root", type=Path, help="VOC root with Proposals/ for the split")
    parser.add_argument("--split", default="val")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--slots", type=int, nargs="+", default=[32, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engines_cpu.json"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    ds = VOCDataset(args.root, args.split, load_images=False)
    ids = ds.ids[: args.images]
    images = [read_image(ds.image_path(i)) for i in ids]
    props = [load_proposals(proposal_path(args.root / "Proposals", i), im.shape[:2]) for i, im in zip(ids, images)]
    batches = [(images[s: s + args.batch_size], props[s: s + args.batch_size])
               for s in range(0, len(images), args.batch_size)]

    eager = Predictor.from_dir(args.model, args.device)
    peaks_per_image = len(eager.naive_maps(images).peaks) / len(images)
    rows = []

    def add(name: str, predictor: Predictor, slots: int | None) -> None:
        net = _timed(lambda: [_networks(predictor, b)() for b, _ in batches], args.repeats)
        full = _timed(lambda: [predictor.predict(b, p) for b, p in batches], args.repeats)
        rows.append({"backend": name, "slots": slots, "networks": _summary(net, len(images)),
                     "predict": _summary(full, len(images))})
        print(f"{name:>12} slots {slots or '-':>3}: networks {len(images) / statistics.median(net):6.2f} img/s, "
              f"predict {len(images) / statistics.median(full):6.2f} img/s", flush=True)

    add("torch eager", eager, None)
    identical = {}
    with tempfile.TemporaryDirectory() as tmp:
        for slots in args.slots:
            model = Path(tmp) / f"model-{slots}"
            shutil.copytree(args.model, model, ignore=shutil.ignore_patterns("labels-*", "*_state.pt"))
            export_model(model, slots=slots, verify=False)
            ort = Predictor.from_dir(model, args.device, backend="onnxruntime")
            graph = Predictor.from_dir(model, args.device)
            graph.graphs = _torch_graphs(graph, slots)
            add("torch graph", graph, slots)
            add("onnxruntime", ort, slots)
            identical[slots] = all(_same_instances(eager.predict(b, p), ort.predict(b, p)) for b, p in batches)
    base = rows[0]
    for row in rows:
        for stage in ("networks", "predict"):
            row[stage]["speedup_vs_torch_eager"] = row[stage]["images_per_s"] / base[stage]["images_per_s"]
    result = {"benchmark": "engines", "machine": machine_info(), "model": str(args.model),
              "device": args.device, "images": len(images), "batch_size": args.batch_size,
              "peaks_per_image": peaks_per_image, "input_size": eager.input_size,
              "icn_steps": eager.model.icn_settings.steps if eager.enhances else 0,
              "onnxruntime_instances_equal_torch_eager": identical, "rows": rows,
              "torch_threads": torch.get_num_threads()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


class _TorchGraphs:
    """The graph modules in PyTorch behind the same engine interface the predictor uses."""

    def __init__(self, prm: TorchEngine, icn: TorchEngine | None, slots: int) -> None:
        self.prm, self.icn, self.slots, self.backend = prm, icn, slots, "torch graph"


def _torch_graphs(predictor: Predictor, slots: int) -> _TorchGraphs:
    prm = TorchEngine(PRMGraph(predictor.model, slots), PRM_INPUTS, PRM_OUTPUTS, predictor.device)
    icn = None
    if predictor.enhances:
        icn = TorchEngine(ICNGraph(predictor.model), ICN_INPUTS, ICN_OUTPUTS, predictor.device)
    return _TorchGraphs(prm, icn, slots)


if __name__ == "__main__":
    main()
