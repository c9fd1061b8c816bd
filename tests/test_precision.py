"""Precision in the graph: the fp16 pass on a hand-made graph, the fp16 and int8 variants
of a trained model's graphs (what stays fp32, Q/DQ where TensorRT wants it, parity with
the fp32 graph in onnxruntime), their manifest records, the reuse of a calibration keyed by
the graph's hash, and choosing a variant at inference (``onnxruntime:int8``)."""

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.images import read_image
from icn_rt.data.preprocess import preprocess_batch
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.export.onnx_export import unsupported_operators
from icn_rt.export.precision import fp16_nodes, in_network, int8_nodes, to_fp16
from icn_rt.runtime.engines import split_backend
from icn_rt.runtime.predictor import Predictor

runner = CliRunner()


def _hand_made():
    """x -> /net/Conv -> /net/Relu -> /net/Conv_1 -> y; ReduceMax (graph code) of y -> m."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 2, 3, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((3, 4, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="/net/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="/net/Relu"),
             helper.make_node("Conv", ["b", "w2"], ["y"], name="/net/Conv_1"),
             helper.make_node("ReduceMax", ["y"], ["m"], name="/ReduceMax", keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8]),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, None)], [w1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fp16_pass_casts_only_at_the_borders_and_keeps_io_types():
    model = _hand_made()
    assert fp16_nodes(model) == ["/net/Conv", "/net/Relu", "/net/Conv_1"]
    half = to_fp16(model)
    onnx.checker.check_model(half, full_check=True)
    casts = [n for n in half.graph.node if n.op_type == "Cast"]
    # one cast into the fp16 run (x), one out of it (y, read by ReduceMax and the graph output)
    assert [(c.input[0], c.output[0], c.attribute[0].i) for c in casts] == \
           [("x", "x/fp16", TensorProto.FLOAT16), ("y/fp16", "y", TensorProto.FLOAT)]
    assert {t.name: t.data_type for t in half.graph.initializer} == \
           {"w1/fp16": TensorProto.FLOAT16, "w2/fp16": TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in (*half.graph.input, *half.graph.output)] == [TensorProto.FLOAT] * 3
    x = np.random.default_rng(1).standard_normal((1, 2, 8, 8)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    got = ort.InferenceSession(half.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert got[0].dtype == np.float32
    np.testing.assert_allclose(got[0], want[0], rtol=1e-2, atol=2e-2)
    assert not np.array_equal(got[0], want[0])  # it did compute in fp16


@pytest.fixture(scope="module")
def lowered(with_icn, tiny_voc, tmp_path_factory):
    model = tmp_path_factory.mktemp("precision") / "model"
    shutil.copytree(with_icn[0], model)
    r = runner.invoke(app, ["export", str(model), "--precision", "fp16,int8", "--calibration", str(tiny_voc),
                            "--calibration-count", "4", "--slots", "8"])
    assert r.exit_code == 0, r.output
    return model


def test_fp16_and_int8_variants_are_recorded_checked_and_lower_only_the_networks(lowered):
    manifest = json.loads((lowered / "manifest.json").read_text())
    for graph in ("prm", "icn"):
        record = manifest["graphs"][graph]
        fp32 = onnx.load(str(lowered / record["file"]))
        assert set(record["precisions"]) == {"fp16", "int8"}
        for precision, variant in record["precisions"].items():
            path = lowered / variant["file"]
            assert path.name == f"{graph}.{precision}.onnx" and variant["source_sha256"] == record["sha256"]
            assert unsupported_operators(path) == []
            assert variant["max_difference"]  # verified against PyTorch
        half = onnx.load(str(lowered / record["precisions"]["fp16"]["file"]))
        assert record["precisions"]["fp16"]["nodes_lowered"] == len(fp16_nodes(fp32)) > 0
        # graph code (peaks, normalisation, sigmoid, the backward) keeps its fp32 nodes
        assert [n.name for n in half.graph.node if not n.name.endswith("/cast")] == [n.name for n in fp32.graph.node]
        code = [n for n in half.graph.node if not in_network(n) and not n.name.endswith("/cast")]
        assert code and not any(x.endswith("/fp16") for n in code for x in n.input)
        fp16_inits = {t.name for t in half.graph.initializer if t.data_type == TensorProto.FLOAT16}
        assert fp16_inits and all(name.endswith("/fp16") for name in fp16_inits)
        assert [i.type.tensor_type.elem_type for i in half.graph.input] == \
               [i.type.tensor_type.elem_type for i in fp32.graph.input]
        q = onnx.load(str(lowered / record["precisions"]["int8"]["file"]))
        dq = {n.output[0]: n.input[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
        convs = {n.name: n for n in q.graph.node if n.name in set(int8_nodes(fp32))}
        assert len(convs) == len(int8_nodes(fp32)) > 0
        assert all(n.input[0] in dq and n.input[1] in dq for n in convs.values())  # activation and weight int8
        # the activations' Q/DQ pairs feed the quantized convolutions only: the graph code
        # (ReLU masks and max-pool routing of the backward) reads the fp32 tensors
        q_out = {n.output[0] for n in q.graph.node if n.op_type == "QuantizeLinear"}
        act_dq = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_out}
        readers = {n.name for n in q.graph.node if set(n.input) & act_dq}
        assert act_dq and readers == set(convs)
        zero_points = [numpy_helper.to_array(t) for t in q.graph.initializer if "zero_point" in t.name]
        assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)  # symmetric int8
        calibration = record["precisions"]["int8"]["calibration"]
        assert calibration["images"] == 4 and calibration["method"] == "minmax"


def _val(tiny_voc):
    ds = VOCDataset(tiny_voc, "val", load_images=False)
    images = [read_image(ds.image_path(i)) for i in ds.ids]
    return images, [load_proposals(proposal_path(tiny_voc / "Proposals", i)) for i in ds.ids]


def test_lower_precision_graphs_find_the_same_peaks_as_fp32_in_onnxruntime(lowered, tiny_voc):
    images, _ = _val(tiny_voc)
    x = preprocess_batch(images, 64).numpy()
    run = {p: ort.InferenceSession(str(lowered / f"prm{p}.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"images": x}) for p in ("", ".fp16", ".int8")}
    assert len(run[""][2]) > 0  # the peaks found
    for k in (2, 3, 4, 5):  # peak image, class, y, x
        np.testing.assert_array_equal(run[".fp16"][k], run[""][k])
    np.testing.assert_allclose(run[".fp16"][7], run[""][7], atol=2e-3)  # PRMs (each sums to 1)

    def peaks(out):
        return set(zip(*(out[k].tolist() for k in (2, 3, 4, 5))))

    # int8 on a 3-epoch model calibrated on 4 images moves some peaks; most stay
    kept = len(peaks(run[".int8"]) & peaks(run[""])) / len(peaks(run[""]))
    assert kept >= 0.5, kept


def test_a_precision_is_chosen_per_backend_and_refused_when_not_exported(lowered, tiny_voc, tmp_path):
    images, props = _val(tiny_voc)
    fp32 = Predictor.from_dir(lowered, backend="onnxruntime")
    half = Predictor.from_dir(lowered, backend="onnxruntime:fp16")
    assert (fp32.backend, half.backend) == ("onnxruntime", "onnxruntime:fp16")
    assert half.graphs.prm.path.name == "prm.fp16.onnx" and half.graphs.icn.path.name == "icn.fp16.onnx"
    a, b = fp32.predict(images, props), half.predict(images, props)
    assert sum(len(p.instances) for p in a) > 0
    assert [[i.class_id for i in p.instances] for p in a] == [[i.class_id for i in p.instances] for p in b]
    assert split_backend("tensorrt:int8") == ("tensorrt", "int8") and split_backend("torch") == ("torch", None)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        split_backend("onnxruntime:fp8")
    assert split_backend("torch:bf16") == ("torch", "bf16")
    with pytest.raises(ValueError, match="torch runs at fp32, bf16, fp16"):
        split_backend("torch:int8")
    with pytest.raises(ValueError, match="graph backends"):
        split_backend("auto:fp16")
    bare = tmp_path / "bare"
    shutil.copytree(lowered, bare)
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["graphs"]["prm"]["precisions"]
    (bare / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"no int8 prm graph; run `icn-rt export MODEL --precision int8`"):
        Predictor.from_dir(bare, backend="onnxruntime:int8")


def test_reexport_keeps_a_calibration_of_the_same_graph_and_redoes_a_changed_one(lowered, tiny_voc, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(lowered, model)
    before = json.loads((model / "manifest.json").read_text())
    r = runner.invoke(app, ["export", str(model), "--precision", "int8", "--calibration", str(tiny_voc),
                            "--calibration-count", "4", "--slots", "8", "--no-verify"])
    assert r.exit_code == 0, r.output
    assert "keeping" in r.output
    after = json.loads((model / "manifest.json").read_text())
    for graph in ("prm", "icn"):
        assert after["graphs"][graph]["sha256"] == before["graphs"][graph]["sha256"]  # the export is deterministic
        assert after["graphs"][graph]["precisions"]["int8"] == before["graphs"][graph]["precisions"]["int8"]
        assert after["graphs"][graph]["precisions"]["fp16"] == before["graphs"][graph]["precisions"]["fp16"]
    r = runner.invoke(app, ["export", str(model), "--precision", "int8", "--calibration", str(tiny_voc),
                            "--calibration-count", "4", "--calibration-method", "percentile", "--slots", "8",
                            "--no-verify"])
    assert r.exit_code == 0, r.output
    again = json.loads((model / "manifest.json").read_text())["graphs"]["prm"]["precisions"]["int8"]
    assert again["calibration"]["method"] == "percentile"
    assert again["sha256"] != before["graphs"]["prm"]["precisions"]["int8"]["sha256"]  # other activation ranges
    r = runner.invoke(app, ["export", str(model), "--precision", "int8"])
    assert r.exit_code == 2 and "int8 graphs need calibration images" in r.output
    r = runner.invoke(app, ["export", str(model), "--precision", "fp8"])
    assert r.exit_code == 2 and "unknown precision 'fp8'" in r.output


def test_graph_engines_record_the_precision_of_tensorrt_plans_they_would_run(lowered):
    # without TensorRT the check on the plan's precision is what can run here: the manifest
    # side of plan_record (the plan must be of the variant it was built from)
    from icn_rt.models import manifest as manifests

    manifest = json.loads((lowered / "manifest.json").read_text())
    fp16 = manifest["graphs"]["prm"]["precisions"]["fp16"]
    manifest["plans"] = {"prm": {"file": "prm.fp16.plan", "precision": "fp16", "onnx_sha256": fp16["sha256"]}}
    assert manifests.plan_record(lowered, manifest, "prm")["precision"] == "fp16"
    manifest["plans"]["prm"]["onnx_sha256"] = manifest["graphs"]["prm"]["sha256"]  # built from the fp32 graph
    with pytest.raises(InputError, match="built from an older export"):
        manifests.plan_record(lowered, manifest, "prm")


def test_torch_runs_its_networks_at_bf16_under_autocast_and_hands_on_fp32(with_icn, tiny_voc):
    images, props = _val(tiny_voc)
    fp32 = Predictor.from_dir(with_icn[0])
    bf16 = Predictor.from_dir(with_icn[0], backend="torch:bf16")
    assert (fp32.backend, bf16.backend) == ("torch", "torch:bf16")
    a, b = fp32.naive_maps(images), bf16.naive_maps(images)
    assert b.maps.dtype == b.prms.dtype == b.peaks.value.dtype == torch.float32
    # bf16 keeps 8 significant bits: the class maps move, by about that much
    error = (a.maps - b.maps).abs().max().item()
    assert 0 < error < 0.1 * a.maps.abs().max().item()
    enhanced = bf16.enhance(b)
    assert enhanced.dtype == torch.float32 and enhanced.shape == b.prms.shape
    with pytest.raises(ValueError, match="unknown torch precision 'int8'"):
        Predictor(fp32.model, precision="int8")


def test_bench_eval_adds_each_backends_size_and_accuracy_against_torch_fp32(lowered, tiny_voc, tmp_path):
    from icn_rt.eval.report import score
    from icn_rt.runtime.infer import InferSettings, infer

    out = tmp_path / "bench.json"
    images = [str(tiny_voc / "JPEGImages" / "val_000000.jpg")]
    r = runner.invoke(app, ["bench", str(lowered), *images, "--proposals", str(tiny_voc / "Proposals"), "--count", "2",
                            "--batch-sizes", "2", "--iterations", "1", "--no-baseline", "--backend",
                            "torch,torch:bf16,onnxruntime,onnxruntime:int8", "--eval", str(tiny_voc), "--json", str(out)])
    assert r.exit_code == 0, r.output
    acc = json.loads(out.read_text())["accuracy"]
    assert acc["split"] == "val" and acc["images"] == 6 and acc["bootstrap"]["samples"] == 1000
    rows = {row["backend"]: row for row in acc["rows"]}
    assert list(rows) == ["torch", "torch:bf16", "onnxruntime", "onnxruntime:int8"]
    # the reference is what `infer` + `eval` give for eager torch
    ds = VOCDataset(tiny_voc, "val", load_images=False)
    infer(Predictor.from_dir(lowered), [ds.image_path(i) for i in ds.ids], tmp_path / "r.json",
          InferSettings(proposals=tiny_voc / "Proposals", progress=False))
    scored = score(tiny_voc, tmp_path / "r.json", "val", progress=False)
    want = scored.metrics()["mAP@0.5"]
    assert rows["torch"]["mAP@0.5"]["estimate"] == pytest.approx(want) and rows["torch"]["minus_torch_fp32"] is None
    assert rows["torch"]["COCO"] == scored.report().to_json()["COCO"]  # COCO's AP as `eval` reports it
    low, high = rows["torch"]["mAP@0.5"]["interval"]
    assert low <= want <= high
    for name, row in rows.items():
        if name != "torch":
            diff = row["minus_torch_fp32"]
            assert diff["estimate"] == pytest.approx(row["mAP@0.5"]["estimate"] - want)
            assert diff["interval"][0] <= diff["estimate"] <= diff["interval"][1]
    # sizes: the weight files for torch at any precision, the graphs each backend runs
    manifest = json.loads((lowered / "manifest.json").read_text())
    weights = sum((lowered / f).stat().st_size for f in ("classifier.safetensors", "icn.safetensors"))
    assert rows["torch"]["model_bytes"] == rows["torch:bf16"]["model_bytes"] == weights
    graphs = manifest["graphs"]
    assert rows["onnxruntime"]["model_bytes"] == sum((lowered / graphs[g]["file"]).stat().st_size for g in graphs)
    assert rows["onnxruntime:int8"]["model_bytes"] == sum(
        (lowered / graphs[g]["precisions"]["int8"]["file"]).stat().st_size for g in graphs)
    assert rows["onnxruntime:int8"]["model_bytes"] < rows["onnxruntime"]["model_bytes"]
    assert "accuracy on val" in r.output and "(reference)" in r.output
