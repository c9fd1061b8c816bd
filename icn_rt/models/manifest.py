"""``manifest.json``: what ``icn-rt export`` and ``icn-rt build-engine`` made from a model
directory and with what (docs/design.md §2, §4) — the exported graphs (file, hash, operators,
T, the settings and weight hashes they fix) and the TensorRT plans (precision, GPU,
TensorRT version). The one module that names, reads and writes it, and that checks that
what it lists still fits the model and the machine; export writes through it and the
runtime engines check through it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from icn_rt.errors import InputError, read_json
from icn_rt.models.store import CLASSIFIER, ICN_WEIGHTS, Model

NAME = "manifest.json"
GRAPHS = {"prm": "prm.onnx", "icn": "icn.onnx"}
"""The exported graphs' files, beside the model."""
PRECISIONS = ("fp32", "fp16", "int8")
"""The precisions a graph is exported at (fp32 always; the others are its variants,
``prm.fp16.onnx``, recorded under ``graphs[name]["precisions"]``)."""


def path(directory: str | Path) -> Path:
    return Path(directory) / NAME


def read(directory: str | Path) -> dict:
    """The manifest of a model directory; missing: an :class:`InputError` saying to export."""
    return read_json(path(directory), "no exported graphs; run `icn-rt export MODEL` first")


def write(directory: str | Path, manifest: dict) -> None:
    path(directory).write_text(json.dumps(manifest, indent=2) + "\n")


def file_sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_hashes(directory: str | Path) -> dict[str, str]:
    """SHA-256 of each weights file the model directory has."""
    directory = Path(directory)
    return {name: file_sha256(directory / name) for name in (CLASSIFIER, ICN_WEIGHTS) if (directory / name).is_file()}


def has_graph(directory: str | Path, graph: str = "prm") -> bool:
    return (Path(directory) / GRAPHS[graph]).is_file()


def has_plans(directory: str | Path) -> bool:
    """Whether ``build-engine`` recorded TensorRT plans for the model."""
    file = path(directory)
    return file.is_file() and bool(json.loads(file.read_text()).get("plans"))


PEAK_BATCH = "found"
"""The PRM graph's backward batch: the peaks found (``found``); graphs of icn-rt 0.x before
it have none recorded (a fixed number of slots per image) and are refused."""


def check_graphs(model: Model, manifest: dict) -> None:
    """Refuse graphs exported from other weights or other peak, PRM or ICN (T) settings
    than ``model``'s, or in an older layout (an :class:`InputError` naming the manifest and
    what to rerun)."""
    where = path(model.directory)
    if manifest.get("peak_batch") != PEAK_BATCH:
        raise InputError(where, "the PRM graph was exported by an older icn-rt (fixed peak slots); run `icn-rt "
                                "export` again")
    for name, digest in manifest.get("weights", {}).items():
        if file_sha256(model.directory / name) != digest:
            raise InputError(where, f"the graphs were exported from another {name}; run `icn-rt export` again")
    exported = manifest["settings"]
    wanted = {"peaks": model.peaks, "prm": model.prm}
    for section, settings in wanted.items():
        if exported[section] != json.loads(json.dumps(asdict(settings))):  # tuples as JSON has them: lists
            raise InputError(where, f"the graphs were exported with other {section} settings; run `icn-rt export` "
                                    "again")
    if model.enhances:
        graphs, steps = manifest["graphs"], model.icn_settings.steps
        if "icn" not in graphs or graphs["icn"]["steps"] != steps:
            have = graphs["icn"]["steps"] if "icn" in graphs else "no ICN graph"
            raise InputError(where, f"the ICN graph has T = {have}, the predictor wants T = {steps}; run "
                                    "`icn-rt export` again")


def plan_record(directory: str | Path, manifest: dict, graph: str) -> dict:
    """The TensorRT plan of ``graph``, refused when there is none or when it was built from
    an older export of the graph (at the plan's precision)."""
    plans = manifest.get("plans", {})
    if graph not in plans:
        raise InputError(path(directory), f"no TensorRT plan for the {graph} graph; run `icn-rt build-engine` first")
    record = manifest["graphs"][graph]
    precision = plans[graph].get("precision", "fp32")
    if precision != "fp32":
        record = record.get("precisions", {}).get(precision, {})
    if plans[graph]["onnx_sha256"] != record.get("sha256"):
        raise InputError(path(directory), f"the {graph} plan was built from an older export; run `icn-rt "
                                          "build-engine` again")
    return plans[graph]


def current_gpu(device: torch.device) -> dict:
    """The GPU a plan is built for or run on: name and compute capability."""
    props = torch.cuda.get_device_properties(device)
    return {"name": props.name, "compute_capability": f"{props.major}.{props.minor}"}


def check_plan(plan: Path, record: dict, tensorrt_version: str, gpu: dict) -> None:
    """Refuse a plan built with another TensorRT version or for another GPU than this
    (``record``: the plan's entry in the manifest)."""
    if record.get("tensorrt") != tensorrt_version:
        raise InputError(plan, f"built with TensorRT {record.get('tensorrt')}, this is {tensorrt_version}; "
                               "rebuild with `icn-rt build-engine`")
    if record.get("gpu", {}).get("compute_capability") != gpu["compute_capability"] or \
            record.get("gpu", {}).get("name") != gpu["name"]:
        raise InputError(plan, f"built for {record.get('gpu')}, this GPU is {gpu}; rebuild with `icn-rt build-engine`")
