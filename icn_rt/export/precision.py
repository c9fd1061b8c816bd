"""Lower-precision variants of an exported graph: the precision lives in the graph, so that
TensorRT builds it as a strongly typed network (TensorRT 11 builds no other kind, and
has no FP16/INT8 builder flags) and onnxruntime runs the very same graph.

- **fp16** (:func:`to_fp16`): the networks' convolutions, pooling and activations — the
  nodes of :data:`FP16_OPS` inside a network module (an ONNX node name with a module scope,
  ``/backbone.4/Conv``, ``/icn/stages.1/...``) — compute in fp16; everything else stays
  fp32: peak finding and its thresholds, the min-max normalisations, the sigmoid and the
  ≥ ``binarize`` test, the PRM normalisation, and the peak backpropagation (the PRM
  graph's unscoped nodes: gradients through a deep network are small enough to underflow
  fp16). Casts sit only at the borders of fp16 runs; the graph's inputs and outputs keep
  their types.
- **int8** (:func:`to_int8`): explicit quantization, Q/DQ pairs on the inputs and weights
  of the networks' convolutions (signed, symmetric, per-channel weights, as TensorRT
  requires; biases stay fp32), with activation ranges calibrated on images by
  onnxruntime's static quantization (``onnxruntime.quantization``, QDQ format; method
  ``minmax``, ``entropy`` or ``percentile``). The quantizer puts its pairs on tensors, so
  every reader of a quantized activation would read it dequantized; measured on the demo
  model, that moved the PRMs by up to 0.32 with a single quantized convolution (the
  backward's ReLU masks and max-pool routing compare dequantized values, where ties
  appear). So the pairs are left on the convolutions' inputs only
  (:func:`_only_conv_inputs`): the rest of the graph reads fp32 tensors again. The
  transposed convolutions of the backward share the forward's weights, so they read the
  dequantized int8 weights.

Why our own fp16 pass and not a converter: onnxconverter-common 1.16's
``convert_float_to_float16`` did not finish on the ICN graph in 11 minutes with an
``op_block_list``, and with a ``node_block_list`` wrote a graph onnxruntime rejects (a
Flatten whose output type it left inconsistent); NVIDIA ModelOpt's AutoCast needs
``nvidia-modelopt[onnx]``, which pins onnxruntime-gpu 1.24 and an older onnx and pulls
CuPy. The rule here is short, explicit and tested for parity against the fp32 graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

FP16_OPS = frozenset({"Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "Relu",
                      "BatchNormalization", "Gemm"})
"""Operators that run in fp16 in an fp16 graph, when they belong to a network module."""

INT8_OPS = ("Conv",)
"""Operators quantized in an int8 graph, when they belong to a network module."""

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def in_network(node) -> bool:
    """Whether an exported node belongs to a network module (``/backbone.4/Conv``) rather
    than to the graph's own code (``/Conv_3``: peaks, the peak backpropagation, the
    normalisations)."""
    return node.name.count("/") >= 2


def fp16_nodes(model) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in FP16_OPS and in_network(n)]


def int8_nodes(model) -> list[str]:
    """The network convolutions an int8 graph quantizes: all but the first and the last
    (the input layer and the class-map or output head stay fp32, as is usual; chosen on
    the synthetic dev split: same instances as fp32 0.77 against 0.69 with every
    convolution quantized, ``benchmarks/results/precision_int8_compare.md``)."""
    convs = [n.name for n in model.graph.node if n.op_type in INT8_OPS and in_network(n)]
    return convs[1:-1] if len(convs) > 2 else convs


def to_fp16(model, nodes: Iterable[str] | None = None):
    """A copy of ``model`` (an ``onnx.ModelProto``) whose ``nodes`` (default:
    :func:`fp16_nodes`) compute in fp16: their float initializers converted, a Cast to
    fp16 in front of each float activation they read from an fp32 node or a graph input,
    a Cast back to fp32 behind each output that an fp32 node or a graph output reads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    chosen = set(fp16_nodes(model) if nodes is None else nodes)
    float_tensors = {v.name for v in (*graph.value_info, *graph.input, *graph.output)
                     if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    initializers = {t.name: t for t in graph.initializer}
    float_tensors |= {name for name, t in initializers.items() if t.data_type == TensorProto.FLOAT}
    graph_outputs = {o.name for o in graph.output}
    fp16_output = {o: f"{o}/fp16" for n in graph.node if n.name in chosen for o in n.output if o}
    read_in_fp32 = {x for n in graph.node if n.name not in chosen for x in n.input} | graph_outputs

    new_nodes, half_of = [], {}
    for node in graph.node:
        if node.name not in chosen:
            new_nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if not name or name not in float_tensors:
                continue
            if name in fp16_output:
                node.input[i] = fp16_output[name]
                continue
            if name not in half_of:
                half = f"{name}/fp16"
                if name in initializers:
                    array = numpy_helper.to_array(initializers[name]).astype(np.float16)
                    graph.initializer.append(numpy_helper.from_array(array, half))
                else:
                    new_nodes.append(helper.make_node("Cast", [name], [half], name=f"{half}/cast",
                                                      to=TensorProto.FLOAT16))
                half_of[name] = half
            node.input[i] = half_of[name]
        new_nodes.append(node)
        for i, name in enumerate(node.output):
            if not name:
                continue
            node.output[i] = fp16_output[name]
            if name in read_in_fp32:
                new_nodes.append(helper.make_node("Cast", [fp16_output[name]], [name], name=f"{name}/cast",
                                                  to=TensorProto.FLOAT))
    del graph.node[:]
    graph.node.extend(new_nodes)
    _drop_unread_initializers(graph)
    del graph.value_info[:]  # the fp32 types inferred above no longer hold for renamed tensors
    return model


class _Feeds:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of feed dicts."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)

    def rewind(self) -> None:  # (older onnxruntime versions do not call it)
        pass


def student_int8_nodes(model) -> list[str]:
    """The student's layers an int8 student graph quantizes: its network convolutions and
    fully connected layers (``Conv``, ``Gemm``) but the first convolution and the layers that
    predict (the RPN's objectness and box deltas, the box head's classes and deltas, the
    mask logits), which stay fp32 as the pipeline's input layer and output head do."""
    predicts = ("/rpn/head/cls_logits", "/rpn/head/bbox_pred", "/box_predictor/", "/mask_fcn_logits")
    chosen = [n.name for n in model.graph.node if n.op_type in STUDENT_INT8_OPS and in_network(n)]
    return [name for name in chosen[1:] if not any(p in name for p in predicts)]


STUDENT_INT8_OPS = ("Conv", "Gemm")


def to_int8(source: Path, out: Path, feeds: list[dict[str, np.ndarray]], method: str = "minmax",
            nodes: Iterable[str] | None = None, conv_inputs_only: bool = True,
            ops: Iterable[str] = INT8_OPS, activations: str = "s8") -> None:
    """Write ``out``: the graph ``source`` with Q/DQ pairs around ``nodes`` (default:
    :func:`int8_nodes`) of types ``ops``, activation ranges calibrated on ``feeds`` (the
    graph's inputs, batch by batch) with ``method``. ``conv_inputs_only``: the pairs stay on
    the quantized layers' inputs only (:func:`_only_conv_inputs`; the pipeline's backward
    needs it); else onnxruntime fuses each Q/DQ-wrapped layer into its integer kernel.
    ``activations``: ``s8`` (signed, symmetric: TensorRT's explicit quantization) or ``u8``
    (unsigned with a zero point: onnxruntime's fast form on x86 CPUs, its u8s8 kernels;
    the student's graph alone on this project's idle CPU: 1.1-1.4x its fp32 graph where
    s8 gave 0.9-1.1x)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
    if not feeds:
        raise ValueError("no calibration batches (no peaks in the calibration images?)")
    chosen = list(int8_nodes(onnx.load(str(source))) if nodes is None else nodes)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    if activations not in ("s8", "u8"):
        raise ValueError(f"int8 activations are s8 or u8, not {activations!r}")
    signed = activations == "s8"
    quantize_static(str(source), str(out), _Feeds(feeds), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8 if signed else QuantType.QUInt8, weight_type=QuantType.QInt8,
                    per_channel=True, nodes_to_quantize=chosen, op_types_to_quantize=list(ops),
                    calibrate_method=calibrate,
                    extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True,
                                   "DedicatedQDQPair": True, "QuantizeBias": False})
    if conv_inputs_only:
        model = onnx.load(str(out))
        _only_conv_inputs(model, set(chosen))
        onnx.save(model, str(out))


def _only_conv_inputs(model, convs: set[str]) -> None:
    """Leave the Q/DQ pairs on the quantized convolutions' inputs only: every other reader of
    a dequantized activation (the next ReLU, the max-pool routing and the masks of the
    backward) reads the fp32 tensor again, and Q/DQ pairs left without a reader go."""
    nodes = model.graph.node
    quantized_from = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    original = {n.output[0]: quantized_from[n.input[0]] for n in nodes
                if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from}
    for node in nodes:
        if node.name in convs:
            continue
        for i, name in enumerate(node.input):
            if name in original and node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                node.input[i] = original[name]
    outputs = {o.name for o in model.graph.output}
    while True:  # drop Q/DQ nodes nobody reads any more
        read = {x for n in nodes for x in n.input} | outputs
        dead = [n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.output[0] not in read]
        if not dead:
            break
        for n in dead:
            nodes.remove(n)
    _drop_unread_initializers(model.graph)


def _drop_unread_initializers(graph) -> None:
    read = {x for n in graph.node for x in n.input}
    kept = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept)
