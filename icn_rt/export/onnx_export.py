"""``icn-rt export MODEL``: the PRM graph and the ICN graph as ONNX files beside the model,
checked, and a ``manifest.json`` of what was exported with what (docs/design.md §2, §4).

- ``prm.onnx``: ``images [B, 3, S, S]`` -> :data:`~icn_rt.export.graphs.PRM_OUTPUTS`.
- ``icn.onnx`` (models with an ICN and T ≥ 1): ``images [N, 3, S, S]``, ``prms [N, S, S]``
  -> ``enhanced``, ``masks``.

Batch (B, N) is dynamic, and so is the PRM graph's number of peaks found (its backward's
batch); S, the classes, the most peaks per image (``slots``), T and every threshold are
fixed at export (the manifest records them). ``precisions`` adds lower-precision variants of
both graphs (:mod:`icn_rt.export.precision`): ``prm.fp16.onnx``, ``icn.int8.onnx``, ...,
each recorded under its fp32 graph with the hash of the graph it was made from; an int8
variant whose source hash and calibration settings are unchanged is kept, not
recalibrated. Opset 17, TorchScript exporter, constant folding
(BN folds into the convolutions, ReLU(W) of the excitation rule becomes its own
initializer). Every graph is checked with ``onnx.checker`` (full check) and against the
operators TensorRT's ONNX parser imports (:func:`unsupported_operators`); with
``verify`` on, onnxruntime runs the graph once on a fixed input and the manifest records
the largest difference from PyTorch.

``simplify`` (default on) passes each fp32 graph through onnxslim (shape arithmetic and
constants folded, chains fused; before the lower-precision variants are made from it): it
is kept only when onnxruntime gives the same outputs as the graph as exported on the
fixed input (:data:`SIMPLIFY_TOLERANCE`); the manifest records the node counts before
and after, the difference and the tool's version (or why the exported graph was kept).
"""

from __future__ import annotations

import platform
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from icn_rt.errors import InputError
from icn_rt.export import precision as lower
from icn_rt.export.graphs import (ICN_INPUTS, ICN_OUTPUTS, PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS, ICNGraph,
                                  PRMGraph)
from icn_rt.models import manifest as manifests
from icn_rt.models.store import load_model
from icn_rt.progress import say

OPSET = 17
SIMPLIFY_TOLERANCE = 1e-5
"""Largest absolute difference (and count of differing booleans and integers: 0) a
simplified graph may show against the graph as exported, on the fixed input."""
PRECISIONS = manifests.PRECISIONS
TENSORRT_OPS = Path(__file__).with_name("tensorrt_onnx_ops.txt")


@dataclass(frozen=True)
class Calibration:
    """INT8 calibration: the first ``images`` images of ``root``'s ``split`` (a VOC
    directory), in batches of ``batch``; activation ranges by ``method``
    (:data:`~icn_rt.export.precision.CALIBRATION_METHODS`)."""

    root: str
    split: str = "train"
    images: int = 64
    batch: int = 8
    method: str = "minmax"

    def __post_init__(self) -> None:
        if self.method not in lower.CALIBRATION_METHODS:
            raise ValueError(f"unknown calibration method {self.method!r}; choose one of "
                             f"{', '.join(lower.CALIBRATION_METHODS)}")
        if self.images < 1 or self.batch < 1:
            raise ValueError("calibration needs at least one image and a batch of at least one")


def tensorrt_operators() -> set[str]:
    """The ONNX operators TensorRT's parser imports (opset ≤ 17), from the list shipped
    with the package."""
    lines = TENSORRT_OPS.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _model(source):
    import onnx

    return source if isinstance(source, onnx.ModelProto) else onnx.load(str(source))


def graph_operators(source) -> dict[str, int]:
    """Operator type -> node count of an ONNX model (a path or a loaded ``ModelProto``),
    subgraphs included."""
    import onnx

    counts: dict[str, int] = {}

    def visit(graph) -> None:
        for node in graph.node:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    visit(attr.g)

    visit(_model(source).graph)
    return dict(sorted(counts.items()))


def unsupported_operators(source) -> list[str]:
    """Operators of an ONNX model (a path or a loaded ``ModelProto``) that TensorRT's ONNX
    parser does not import, and Conv/ConvTranspose nodes whose weights are not
    initializers (TensorRT needs them so; in an int8 graph, the dequantized initializer)."""
    model = _model(source)
    allowed = tensorrt_operators()
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    # an int8 graph's weights: DequantizeLinear of a (quantized) initializer
    constants |= {n.output[0] for n in model.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0] in initializers | constants}
    bad = sorted({op for op in graph_operators(model) if op not in allowed})
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose") and not (set(node.input[1:2]) & (initializers | constants)):
            bad.append(f"{node.op_type} {node.name} (weights not an initializer)")
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            bad.append(f"MaxPool {node.name} (indices output)")
    return bad


def _export(module: torch.nn.Module, args: tuple, path: Path, inputs: tuple, outputs: tuple,
            per_peak: tuple = ()) -> None:
    """Trace ``module`` into ``path``; every first axis dynamic: the images' batch, or for
    the ``per_peak`` outputs the number of peaks found."""
    dynamic = {name: {0: "peaks" if name in per_peak else "batch"} for name in (*inputs, *outputs)}
    with warnings.catch_warnings():
        # the tracer warns about Python ints from shapes: every one of them is static here
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _inline_weight_identities(path: Path):
    """The exporter shares the weights of the unrolled ICN steps through Identity nodes;
    TensorRT wants convolution weights as initializers, so consumers are pointed at the
    initializer itself and the Identity nodes dropped. Returns the (loaded) model."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in initializers and n.output[0] not in outputs}
    if not alias:
        return model
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    onnx.save(model, str(path))
    return model


def _simplify(path: Path, feeds: dict[str, np.ndarray]) -> dict:
    """Replace the graph at ``path`` by onnxslim's simplification of it when onnxruntime
    gives the same outputs on ``feeds``; the record of what happened."""
    import onnx
    import onnxruntime as ort
    import onnxslim

    exported = onnx.load(str(path))
    record = {"tool": "onnxslim", "version": onnxslim.__version__, "nodes_before": len(exported.graph.node)}
    try:
        slim = onnxslim.slim(exported)
    except Exception as e:  # a failing simplifier must not fail the export: keep the graph as exported
        return {**record, "kept_exported": f"onnxslim failed: {type(e).__name__}: {e}"}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
           for m in (exported, slim)]
    names = [o.name for o in exported.graph.output]
    diff = {n: float(np.abs(a.astype(np.float64) - b).max()) if a.dtype.kind == "f" and a.size else
            float((a != b).sum()) for n, a, b in zip(names, *run)}
    record.update(nodes_after=len(slim.graph.node), max_difference=diff)
    if max(diff.values(), default=0.0) > SIMPLIFY_TOLERANCE:
        return {**record, "kept_exported": f"outputs differ by up to {max(diff.values()):.3g}"}
    onnx.save(slim, str(path))
    return record


def _describe(path: Path, inputs: tuple, outputs: tuple, simplify: dict | None = None) -> dict:
    """Check the exported graph (TensorRT's weights as initializers; simplified with the
    ``simplify`` feeds when given) -> its manifest record."""
    import onnx

    model = _inline_weight_identities(path)
    simplified = _simplify(path, simplify) if simplify is not None else None
    if simplified is not None and "kept_exported" not in simplified:
        model = onnx.load(str(path))
    onnx.checker.check_model(str(path), full_check=True)
    bad = unsupported_operators(model)
    if bad:
        raise RuntimeError(f"{path}: operators TensorRT does not import: {', '.join(bad)}")
    return {"file": path.name, "sha256": manifests.file_sha256(path), "bytes": path.stat().st_size, "opset": OPSET,
            "inputs": list(inputs), "outputs": list(outputs), "operators": graph_operators(model),
            "nodes": len(model.graph.node), "simplified": simplified}


def _max_difference(module: torch.nn.Module, path: Path, args: tuple, names: tuple) -> dict[str, float]:
    """Run the exported graph (or one of its variants) in onnxruntime (CPU) on ``args``: the
    largest absolute difference from PyTorch per output (booleans and integers: count of
    mismatches)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only, not onnxruntime's notes on outputs whose shapes vary
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {n: a.numpy() for n, a in zip(names, args)})
    with torch.no_grad():
        want = module(*args)
    diffs = {}
    for name, g, w in zip([o.name for o in session.get_outputs()], got, want):
        w = w.numpy()
        if g.shape != w.shape:  # another number of peaks (a lower precision's): every row differs
            diffs[name] = float(max(g.size, w.size))
        elif w.dtype.kind == "f":
            diffs[name] = float(np.abs(g - w).max()) if w.size else 0.0
        else:
            diffs[name] = float((g != w).sum())
    return diffs


def _example_images(size: int) -> torch.Tensor:
    """Two images of the synthetic benchmark (objects, so the verification sees real peaks
    and PRMs, not the empty slots of noise), preprocessed."""
    from icn_rt.data.preprocess import preprocess_batch
    from icn_rt.data.synth import SynthConfig, render

    config = SynthConfig()
    return preprocess_batch([render(config, "val", i).image for i in range(2)], size)


def calibration_batches(calibration: Calibration, side: int) -> list[torch.Tensor]:
    """The calibration images, normalised at ``side``, in batches of ``calibration.batch``."""
    from icn_rt.data.images import read_image
    from icn_rt.data.preprocess import preprocess_batch
    from icn_rt.data.datasets import open_dataset

    ds = open_dataset(calibration.root, calibration.split, load_images=False)
    ids = ds.ids[: calibration.images]
    return [preprocess_batch([read_image(ds.image_path(i)) for i in ids[start: start + calibration.batch]], side)
            for start in range(0, len(ids), calibration.batch)]


def calibration_feeds(model, calibration: Calibration, graph: str) -> list[dict[str, np.ndarray]]:
    """Batches of ``graph``'s inputs from the calibration images: the PRM graph takes the
    normalised images; the ICN graph takes each peak's image and naive PRM (made by the
    model in PyTorch)."""
    feeds = []
    for x in calibration_batches(calibration, model.input_size):
        if graph == "prm":
            feeds.append({"images": x.numpy()})
            continue
        with torch.no_grad():
            naive = model.naive_maps(x)
        if len(naive.peaks):
            feeds.append({"images": naive.x[naive.peaks.image].contiguous().numpy(),
                          "prms": naive.prms.contiguous().numpy()})
    return feeds


def _variant(graph: str, record: dict, out: Path, precision: str, old: dict, model, calibration: Calibration | None,
             check) -> dict:
    """Make (or keep) the ``precision`` variant of the exported ``graph``; its record."""
    import onnx

    source = out / record["file"]
    path = out / f"{graph}.{precision}.onnx"
    settings = asdict(calibration) if precision == "int8" else None
    if old.get("source_sha256") == record["sha256"] and old.get("calibration") == settings and path.is_file() \
            and manifests.file_sha256(path) == old.get("sha256"):
        say(f"keeping {path} (made from this very {record['file']})")
        return old
    say(f"making the {precision} variant of the {graph} graph -> {path}")
    fp32 = onnx.load(str(source))
    if precision == "fp16":
        nodes = lower.fp16_nodes(fp32)
        onnx.save(lower.to_fp16(fp32, nodes), str(path))
    else:
        nodes = lower.int8_nodes(fp32)
        lower.to_int8(source, path, calibration_feeds(model, calibration, graph), calibration.method, nodes)
    onnx.checker.check_model(str(path), full_check=True)
    bad = unsupported_operators(path)
    if bad:
        raise RuntimeError(f"{path}: operators TensorRT does not import: {', '.join(bad)}")
    made = {"file": path.name, "sha256": manifests.file_sha256(path), "bytes": path.stat().st_size,
            "source_sha256": record["sha256"], "nodes_lowered": len(nodes), "operators": graph_operators(path),
            "calibration": settings}
    if check is not None:
        made["max_difference"] = check(path)
    return made


def export_model(directory: str | Path, out: str | Path | None = None, slots: int | None = None,
                 verify: bool = True, precisions: tuple[str, ...] = ("fp32",),
                 calibration: Calibration | None = None, simplify: bool = True) -> dict:
    """Export the model directory's graphs into ``out`` (default: the model directory) and
    write ``manifest.json`` there; returns the manifest. ``slots``: the most peaks per
    image the PRM graph keeps (default: the model's ``peaks.max_peaks``; it must be > 0).
    ``precisions``: the fp32 graphs are always written; ``fp16`` and ``int8`` add their
    variants (int8 needs ``calibration``). ``simplify``: onnxslim on the fp32 graphs
    (kept only when it changes no output)."""
    directory = Path(directory)
    out = Path(out) if out else directory
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision {unknown[0]!r}; choose among {', '.join(PRECISIONS)}")
    if "int8" in precisions and calibration is None:
        raise ValueError("int8 graphs need calibration images: give --calibration VOCROOT")
    previous = manifests.read(out) if manifests.path(out).is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(directory)
    slots = slots or model.peaks.max_peaks
    if slots < 1:
        raise InputError(directory / "config.json", "peaks.max_peaks is 0 (unbounded); give --slots N for the graph")
    size = model.input_size
    example = _example_images(size)
    manifest: dict = {"model": str(directory.resolve()), "weights": manifests.weight_hashes(directory),
                      "input_size": size, "classes": list(model.classes),
                      "slots": slots, "peak_batch": manifests.PEAK_BATCH,
                      "settings": {"peaks": asdict(model.peaks), "prm": asdict(model.prm),
                                   "icn": asdict(model.icn_settings), "matching": asdict(model.matching)},
                      "versions": _versions(), "graphs": {}}
    prm_graph = PRMGraph(model, slots)
    path = out / manifests.GRAPHS["prm"]
    say(f"exporting the PRM graph (up to {slots} peaks per image) -> {path}")
    _export(prm_graph, (example,), path, PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS)
    manifest["graphs"]["prm"] = _describe(path, PRM_INPUTS, PRM_OUTPUTS,
                                          {"images": example.numpy()} if simplify else None)
    if verify:
        manifest["graphs"]["prm"]["max_difference"] = _max_difference(prm_graph, path, (example,), PRM_INPUTS)
    if model.enhances:
        icn_graph = ICNGraph(model)
        with torch.no_grad():
            found = prm_graph(example)
        prm, icn_images = found[-1], example[found[2].long()]  # every peak's PRM and image
        if not len(prm):
            prm, icn_images = torch.zeros(example.shape[0], size, size), example
        path = out / manifests.GRAPHS["icn"]
        say(f"exporting the ICN graph (T = {icn_graph.steps} steps unrolled) -> {path}")
        _export(icn_graph, (icn_images, prm), path, ICN_INPUTS, ICN_OUTPUTS)
        feeds = {"images": icn_images.numpy(), "prms": prm.numpy()} if simplify else None
        manifest["graphs"]["icn"] = {**_describe(path, ICN_INPUTS, ICN_OUTPUTS, feeds), "steps": icn_graph.steps,
                                     "binarize": icn_graph.binarize}
        if verify:
            manifest["graphs"]["icn"]["max_difference"] = _max_difference(icn_graph, path, (icn_images, prm),
                                                                          ICN_INPUTS)
    checks = {"prm": lambda p: _max_difference(prm_graph, p, (example,), PRM_INPUTS)}
    if model.enhances:
        checks["icn"] = lambda p: _max_difference(icn_graph, p, (icn_images, prm), ICN_INPUTS)
    for graph, record in manifest["graphs"].items():
        old = previous.get("graphs", {}).get(graph, {}).get("precisions", {})
        variants = {p: v for p, v in old.items()  # earlier variants of this very graph stay listed
                    if v.get("source_sha256") == record["sha256"] and (out / v["file"]).is_file()}
        variants.update({p: _variant(graph, record, out, p, old.get(p, {}), model, calibration,
                                     checks[graph] if verify else None)
                         for p in precisions if p != "fp32"})
        if variants:
            record["precisions"] = variants
    manifests.write(out, manifest)
    return manifest


def _versions() -> dict[str, str]:
    import onnx

    from icn_rt import __version__

    return {"icn_rt": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "python": platform.python_version()}


STUDENT_TOLERANCE = {"boxes": 1e-2, "scores": 1e-4, "box_masks": 1e-3}
"""Largest differences onnxruntime may show against PyTorch on the verification input,
the detections being the same: boxes in pixels (their regression deltas are exponentiated
and scaled, so float32 rounding grows to ~1e-3 px), scores and mask probabilities."""


STUDENT_PRECISIONS = ("fp32", "fp16", "int8")


def export_student(directory: str | Path, verify: bool = True, precisions: tuple[str, ...] = ("fp32",),
                   calibration: Calibration | None = None) -> dict:
    """``student.onnx`` beside the model, and its lower-precision variants that ``precisions``
    name: ``student.fp16.onnx`` (:func:`_student_fp16`), ``student.int8.onnx`` and
    ``student.int8.s8.onnx`` (:func:`_student_int8`, calibrated on ``calibration``). The
    student (:class:`~icn_rt.models.student.StudentGraph`) for one image ``images [1, 3, S,
    S]`` -> ``boxes``, ``labels``, ``scores``, ``box_masks``, ``image`` (their first axis:
    the detections, dynamic). One image per run: torchvision's Mask R-CNN traces its per-image loop unrolled, so the batch is fixed at export; the
    engine runs a batch image by image. Opset 17, TorchScript exporter, checked with
    ``onnx.checker`` and against TensorRT's operator list (the result records what is off
    it); with ``verify``, onnxruntime runs it on a verification image (a training image
    when the config names the data, else a pattern) and the record holds the largest
    differences. Writes ``student.onnx.json`` (the record) and returns it."""
    import onnx

    from icn_rt.models.store import load_student
    from icn_rt.models.student import STUDENT_GRAPH, STUDENT_INPUTS, STUDENT_OUTPUTS, STUDENT_RECORD, StudentGraph

    unknown = [p for p in precisions if p not in STUDENT_PRECISIONS]
    if unknown:
        raise ValueError(f"the student exports at {' and '.join(STUDENT_PRECISIONS)}, not {unknown[0]!r}")
    if "int8" in precisions and calibration is None:
        raise ValueError("an int8 student needs calibration images: give --calibration VOCROOT")
    directory = Path(directory)
    network, settings, classes = load_student(directory)
    graph = StudentGraph(network).eval()
    s = settings.input_size
    x = _student_probe(s)
    path = directory / STUDENT_GRAPH
    say(f"exporting the student ({settings.backbone}, {s}x{s}) -> {path}")
    dynamic = {name: {0: "detections"} for name in STUDENT_OUTPUTS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on Python values from shapes
        torch.onnx.export(graph, (x,), str(path), input_names=list(STUDENT_INPUTS), output_names=list(STUDENT_OUTPUTS),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    record = {"file": STUDENT_GRAPH, "sha256": manifests.file_sha256(path), "bytes": path.stat().st_size,
              "opset": OPSET, "batch": 1, "input_size": s, "backbone": settings.backbone, "classes": list(classes),
              "operators": graph_operators(model), "tensorrt_unsupported": unsupported_operators(model),
              "torch": torch.__version__, "python": platform.python_version()}
    if verify:
        record["verification"] = verify_student(graph, path, x)
    variants = {}
    if "fp16" in precisions:
        variants["fp16"] = _student_fp16(directory, record, graph, x, verify)
    if "int8" in precisions:
        variants["int8"] = _student_int8(directory, record, settings.input_size, calibration, graph, x, verify)
    if variants:
        record["precisions"] = variants
    (directory / STUDENT_RECORD).write_text(__import__("json").dumps(record, indent=1) + "\n")
    return record


def _student_fp16(directory: Path, record: dict, graph, x: torch.Tensor, verify: bool) -> dict:
    """``student.fp16.onnx``: the student's network layers (:func:`~icn_rt.export.precision.fp16_nodes`:
    convolutions, fully connected layers, pooling, ReLUs inside a network module) in fp16,
    the rest (anchors, box decoding, NMS, region pooling, the per-image selection) in fp32,
    inputs and outputs fp32 — for TensorRT's strongly typed fp16 plan and onnxruntime's
    GPU providers."""
    import onnx

    from icn_rt.models.student import student_graph_file

    source, path = directory / record["file"], directory / student_graph_file("fp16")
    model = onnx.load(str(source))
    nodes = lower.fp16_nodes(model)
    say(f"fp16 student: {len(nodes)} layers in fp16 -> {path}")
    onnx.save(lower.to_fp16(model, nodes), str(path))
    onnx.checker.check_model(str(path), full_check=True)
    made = {"file": path.name, "sha256": manifests.file_sha256(path), "bytes": path.stat().st_size,
            "source_sha256": record["sha256"], "nodes_lowered": len(nodes), "operators": graph_operators(path)}
    if verify:
        made["verification"] = verify_student(graph, path, x)
    return made


def _student_int8(directory: Path, record: dict, side: int, calibration: Calibration, graph, x: torch.Tensor,
                  verify: bool) -> dict:
    """The student's convolutions and fully connected layers but its first and its
    predicting ones (:func:`~icn_rt.export.precision.student_int8_nodes`) in int8, with
    signed per-channel weights and the Q/DQ pairs around each layer, calibrated on
    ``calibration``'s images at the student's side, in two forms: ``student.int8.onnx`` for
    onnxruntime on CPUs — unsigned activations with zero points, so that it fuses its u8s8
    integer kernels (signed symmetric activations ran no faster than fp32 there) — and
    ``student.int8.s8.onnx`` for TensorRT, whose explicit quantization takes signed
    symmetric activations only (recorded under ``tensorrt``)."""
    import onnx

    from icn_rt.models.student import student_graph_file

    calibration = replace(calibration, batch=1)  # the student's graph takes one image a run
    feeds = [{"images": x.numpy()} for x in calibration_batches(calibration, side)]
    source = directory / record["file"]
    nodes = lower.student_int8_nodes(onnx.load(str(source)))
    forms = {}
    for activations, precision in (("u8", "int8"), ("s8", "int8.s8")):
        path = directory / student_graph_file(precision)
        say(f"int8 student ({activations} activations): {len(nodes)} layers quantized, calibrated "
            f"({calibration.method}) on {len(feeds)} images of {calibration.root} {calibration.split} -> {path}")
        lower.to_int8(source, path, feeds, calibration.method, nodes, conv_inputs_only=False,
                      ops=lower.STUDENT_INT8_OPS, activations=activations)
        onnx.checker.check_model(str(path), full_check=True)
        forms[activations] = {"file": path.name, "sha256": manifests.file_sha256(path), "bytes": path.stat().st_size,
                              "source_sha256": record["sha256"], "nodes_lowered": len(nodes),
                              "operators": graph_operators(path)}
        if verify:
            forms[activations]["verification"] = verify_student(graph, path, x)
    forms["u8"]["activations"] = "u8 (onnxruntime on CPUs; TensorRT builds the s8 form)"
    forms["s8"]["activations"] = "s8 symmetric (TensorRT's explicit quantization)"
    return {**forms["u8"], "calibration": {**asdict(calibration), "images": len(feeds)}, "tensorrt": forms["s8"]}


def _student_probe(side: int) -> torch.Tensor:
    """A fixed verification input: smooth blobs on a ramp (normalised-image range)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    blobs = torch.stack([torch.exp(-((yy - 0.3) ** 2 + (xx + 0.2) ** 2) * 8),
                         torch.exp(-((yy + 0.4) ** 2 + xx ** 2) * 6),
                         (xx + 1) / 2])
    return (blobs * 4 - 2)[None].float()


def verify_student(graph: torch.nn.Module, path: Path, x: torch.Tensor) -> dict:
    """onnxruntime against PyTorch on ``x``: detection counts, labels equal, the largest
    differences of boxes, scores and masks."""
    import onnxruntime as ort

    with torch.inference_mode():
        expected = [t.numpy() for t in graph(x)]
    options = ort.SessionOptions()
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})
    result = {"detections": int(len(expected[0])), "onnxruntime_detections": int(len(got[0]))}
    if len(expected[0]) == len(got[0]):
        result["labels_equal"] = bool(np.array_equal(expected[1], got[1]))
        for name, a, b in zip(("boxes", "scores", "box_masks"), (expected[0], expected[2], expected[3]),
                              (got[0], got[2], got[3])):
            result[f"max_difference_{name}"] = float(np.abs(a - b).max()) if a.size else 0.0
    return result
