"""Export and engines: the exportable forms of peak finding and max-pool routing, the
graph modules against the eager predictor, the ONNX graphs against PyTorch in
onnxruntime, TensorRT's operator list, and the engine backends."""

import copy
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.images import read_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.export.graphs import PRMGraph
from icn_rt.export.onnx_export import SIMPLIFY_TOLERANCE, tensorrt_operators, unsupported_operators
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.peaks import PeakSettings, find_peaks, local_maxima, lower_median
from icn_rt.models.prm import PRMSettings, peak_response_maps, recorded_forward
from icn_rt.models.store import Model
from icn_rt.models.whole_map_vjp import Tape, by_index, record, vjp
from icn_rt.runtime.engines import OnnxRuntimeEngine, TorchEngine, pick_backend, tensorrt_available
from icn_rt.runtime.predictor import Predictor

runner = CliRunner()
ALL_PEAKS = PeakSettings(class_threshold=-1e9, peak_threshold=-1e9, max_peaks=6)
CLASSES = ("a", "b", "c")


def _indexed_local_maxima(maps, window):
    """The former definition: max-pool's argmax is the pixel itself."""
    h, w = maps.shape[-2:]
    r = window // 2
    _, idx = F.max_pool2d(F.pad(maps, (r, r, r, r), value=float("-inf")), window, stride=1, return_indices=True)
    own = (torch.arange(h)[:, None] + r) * (w + 2 * r) + torch.arange(w)[None, :] + r
    return idx == own


@pytest.mark.parametrize("window", [1, 3, 5])
def test_index_free_local_maxima_equal_max_pool_indices_on_ties(window):
    for seed in range(50):
        maps = torch.randint(0, 3, (2, 2, 9, 11), generator=torch.Generator().manual_seed(seed)).float()
        assert torch.equal(local_maxima(maps, window), _indexed_local_maxima(maps, window))


def test_lower_median_by_top_k():
    for n in range(1, 9):
        flat = torch.randn(4, n, generator=torch.Generator().manual_seed(n))
        assert torch.equal(lower_median(flat), flat.median(-1).values)


@pytest.mark.parametrize("pool", [torch.nn.MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(2), torch.nn.MaxPool2d(3, 1)])
def test_max_pool_routing_equals_autograd_with_ties_and_overlapping_windows(pool):
    # integer inputs: many ties, which must go to the first maximum in row-major order
    x = torch.randint(0, 4, (2, 3, 11, 10), generator=torch.Generator().manual_seed(0)).float()
    g = torch.randn(pool(x).shape, generator=torch.Generator().manual_seed(1))
    tape = Tape()
    record(pool, x, tape)
    index = torch.tensor([1, 0, 1])
    got = vjp(pool, g[index], by_index(index), tape, "gradient")
    for k, b in enumerate(index.tolist()):
        xr = x[b: b + 1].clone().requires_grad_(True)
        want, = torch.autograd.grad((pool(xr) * g[b: b + 1]).sum(), xr)
        # overlapping windows sum several gradients into one input: only the order differs
        torch.testing.assert_close(got[k], want[0], rtol=0, atol=1e-6)
        assert torch.equal(got[k] != 0, want[0] != 0)


@pytest.mark.parametrize("rule", ["gradient", "excitation"])
@pytest.mark.parametrize("backbone,size,sub_pixel,slots,local", [("small", 48, 2, 6, False), ("small", 48, 1, 3, False),
                                                                 ("small", 128, 4, 3, True),
                                                                 ("resnet50", 64, 8, 4, False)])
def test_prm_graph_equals_the_eager_peaks_and_prms(rule, backbone, size, sub_pixel, slots, local):
    """The graph backpropagates over whole maps, or on each peak's receptive field where
    the eager path would (``local``: the small backbone's 46² field at 128²)."""
    torch.manual_seed(0)
    model = PeakClassifier(3, ClassifierSettings(backbone=backbone, input_size=size, sub_pixel=sub_pixel)).eval()
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    settings = PeakSettings(class_threshold=-1e9, peak_threshold=-1e9, max_peaks=slots)
    with torch.no_grad():
        scores, maps, image, cls, y, xs, value, prms = PRMGraph(Model(model, CLASSES, settings,
                                                                      PRMSettings(rule)), slots)(x)
    # the graph runs the eager path's operations in its layout, over whole maps, on the peaks found
    rec = recorded_forward(model, x, channels_last=False)
    peaks = find_peaks(rec.maps, rec.scores, settings, sub_pixel)
    assert len(peaks) > 0 and len(image) == len(peaks) == len(prms)
    assert torch.bincount(peaks.image, minlength=3).max() <= slots
    assert torch.equal(scores, rec.scores) and torch.equal(maps, rec.maps)
    for got, want in ((image, peaks.image), (cls, peaks.cls), (y, peaks.y), (xs, peaks.x)):
        assert got.dtype == torch.int32 and torch.equal(got.long(), want)
    assert torch.equal(value, peaks.value)
    graph = PRMGraph(Model(model, CLASSES, settings, PRMSettings(rule)), slots)
    assert graph.local == local
    eager = peak_response_maps(model, rec, peaks, PRMSettings(rule), local=local)
    if rule == "gradient":
        assert torch.equal(prms, eager)
    else:  # eagerly the excitation rule convolves each image apart (other sums: rounding)
        torch.testing.assert_close(prms, eager, rtol=1e-5, atol=1e-6 * eager.abs().max().item())


def test_prm_graph_without_peaks_gives_empty_peak_outputs(tmp_path):
    from icn_rt.export.graphs import PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS
    from icn_rt.export.onnx_export import _export

    torch.manual_seed(0)
    model = PeakClassifier(3, ClassifierSettings(backbone="small", input_size=32, sub_pixel=1)).eval()
    none = PeakSettings(class_threshold=1e9, peak_threshold=1e9, max_peaks=4)
    graph = PRMGraph(Model(model, CLASSES, none, PRMSettings("gradient")), 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "prm.onnx"
    _export(graph, (x,), path, PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS)
    got = OnnxRuntimeEngine(path)(images=x)
    assert got["scores"].shape == (2, 3) and got["prms"].shape == (0, 32, 32)
    assert all(got[name].shape[0] == 0 for name in PRM_PEAK_OUTPUTS)


@pytest.mark.parametrize("rule", ["gradient", "excitation"])
def test_resnet_prm_graph_exports_to_tensorrt_operators_and_runs_in_onnxruntime(rule, tmp_path):
    from icn_rt.export.graphs import PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS
    from icn_rt.export.onnx_export import _export

    torch.manual_seed(0)
    model = PeakClassifier(3, ClassifierSettings(backbone="resnet50", input_size=32, sub_pixel=8)).eval()
    graph = PRMGraph(Model(model, CLASSES, ALL_PEAKS, PRMSettings(rule)), 3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    path = tmp_path / "prm.onnx"
    _export(graph, (x,), path, PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS)
    assert unsupported_operators(path) == []  # ReLU(W) of the excitation rule: initializers too
    got = OnnxRuntimeEngine(path)(images=x)
    want = TorchEngine(graph, PRM_INPUTS, PRM_OUTPUTS)(images=x)
    assert len(want["prms"]) > 0
    for name in ("peak_image", "peak_class", "peak_y", "peak_x"):
        assert torch.equal(got[name], want[name]), name
    torch.testing.assert_close(got["prms"], want["prms"], rtol=1e-4, atol=1e-6 * float(want["prms"].max()))


def test_operator_check_flags_what_tensorrt_cannot_import(tmp_path):
    assert {"Conv", "ConvTranspose", "TopK", "MaxPool", "Resize"} <= tensorrt_operators()
    assert "MaxUnpool" not in tensorrt_operators()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 3, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")]
    idx = helper.make_tensor_value_info("i", TensorProto.INT64, None)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv_of_input"),
             helper.make_node("MaxPool", ["x"], ["p", "i"], kernel_shape=[2, 2], name="pool_with_indices"),
             helper.make_node("MaxUnpool", ["p", "i"], ["z"], kernel_shape=[2, 2], name="unpool")]
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "bad", [x, w], [*outs, idx])), path)
    bad = unsupported_operators(path)
    assert "MaxUnpool" in bad
    assert any(b.startswith("Conv conv_of_input") for b in bad)
    assert any(b.startswith("MaxPool pool_with_indices") for b in bad)


@pytest.fixture(scope="module")
def exported(with_icn, tmp_path_factory):
    model = tmp_path_factory.mktemp("export") / "model"
    shutil.copytree(with_icn[0], model)
    r = runner.invoke(app, ["export", str(model)])
    assert r.exit_code == 0, r.output
    return model


def _val(tiny_voc, n=None):
    ds = VOCDataset(tiny_voc, "val", load_images=False)
    ids = ds.ids[:n]
    images = [read_image(ds.image_path(i)) for i in ids]
    return images, [load_proposals(proposal_path(tiny_voc / "Proposals", i)) for i in ids]


def test_export_writes_checked_graphs_of_tensorrt_operators_and_a_manifest(exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {"prm", "icn"}
    assert manifest["slots"] == 32 and manifest["peak_batch"] == "found" and manifest["graphs"]["icn"]["steps"] == 3
    for name, g in manifest["graphs"].items():
        path = exported / g["file"]
        onnx.checker.check_model(str(path), full_check=True)
        assert unsupported_operators(path) == []
        ops = set(g["operators"])
        assert ops <= tensorrt_operators() and "MaxUnpool" not in ops
        diff = g["max_difference"]
        assert all(diff[k] == 0 for k in ("peak_image", "peak_class", "peak_y", "peak_x") if k in diff), diff
        assert max(diff.values()) < 1e-4, diff
    assert {"ConvTranspose", "TopK", "Conv", "MaxPool"} <= set(manifest["graphs"]["prm"]["operators"])
    assert manifest["graphs"]["icn"]["operators"]["Sigmoid"] == 3  # T steps unrolled
    assert set(manifest["weights"]) == {"classifier.safetensors", "icn.safetensors"}
    # dynamic batch
    model = onnx.load(str(exported / "prm.onnx"))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # the backward's batch: the peaks found
    prms = next(o for o in model.graph.output if o.name == "prms")
    assert prms.type.tensor_type.shape.dim[0].dim_param != "batch" and "NonZero" in manifest["graphs"]["prm"]["operators"]


def test_export_simplifies_the_graphs_only_where_their_outputs_stay_the_same(exported, with_icn, tmp_path,
                                                                            monkeypatch):
    import onnxslim
    from onnx import numpy_helper

    slimmed = json.loads((exported / "manifest.json").read_text())["graphs"]
    for g in slimmed.values():
        record = g["simplified"]
        assert record["tool"] == "onnxslim" and "kept_exported" not in record
        nodes = len(onnx.load(str(exported / g["file"])).graph.node)
        assert record["nodes_after"] == g["nodes"] == nodes < record["nodes_before"]
        assert max(record["max_difference"].values()) <= SIMPLIFY_TOLERANCE
    plain = tmp_path / "plain"
    shutil.copytree(with_icn[0], plain)
    r = runner.invoke(app, ["export", str(plain), "--no-simplify", "--no-verify"])
    assert r.exit_code == 0, r.output
    exported_as_is = json.loads((plain / "manifest.json").read_text())["graphs"]
    for name, g in exported_as_is.items():
        assert g["simplified"] is None and g["nodes"] == slimmed[name]["simplified"]["nodes_before"]

    def wrong(model):  # a "simplifier" that changes the first convolution's weights
        model = copy.deepcopy(model)
        weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) + 0.5, weight.name))
        return model

    monkeypatch.setattr(onnxslim, "slim", wrong)
    r = runner.invoke(app, ["export", str(plain), "--no-verify"])
    assert r.exit_code == 0, r.output
    assert "prm: kept as exported: outputs differ by up to" in r.output
    for name, g in json.loads((plain / "manifest.json").read_text())["graphs"].items():
        assert g["simplified"]["kept_exported"].startswith("outputs differ by up to")
        assert g["sha256"] == exported_as_is[name]["sha256"]  # the graph as exported, untouched


def test_onnxruntime_graphs_equal_pytorch_on_synthetic_images(exported, tiny_voc):
    predictor = Predictor.from_dir(exported)
    images, _ = _val(tiny_voc)
    naive = predictor.naive_maps(images)
    assert len(naive.peaks) > 0
    from icn_rt.data.preprocess import preprocess

    prm = OnnxRuntimeEngine(exported / "prm.onnx")
    graph = TorchEngine(PRMGraph(predictor.model, 32), ("images",),
                        ("scores", "maps", "peak_image", "peak_class", "peak_y", "peak_x", "peak_value", "prms"))
    for batch in (images[:1], images):  # dynamic batch
        x = torch.stack([preprocess(im, 64) for im in batch])
        got, want = prm(images=x), graph(images=x)
        for name in ("peak_image", "peak_class", "peak_y", "peak_x"):
            assert torch.equal(got[name], want[name]), name  # peaks identical
        for name, tol in (("scores", 1e-5), ("maps", 1e-5), ("peak_value", 1e-5), ("prms", 1e-6)):
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=tol)
    # ICN graph: T steps on each peak's image and PRM
    icn = OnnxRuntimeEngine(exported / "icn.onnx")
    out = icn(images=naive.x[naive.peaks.image], prms=naive.prms)
    from icn_rt.models.icn import enhance, minmax

    want = enhance(predictor.model.icn, naive.x, naive.peaks.image, naive.prms, 3)
    torch.testing.assert_close(out["enhanced"], want, rtol=1e-4, atol=1e-5)
    assert torch.equal(out["masks"], minmax(want) >= 0.5) or \
        (out["masks"] != (minmax(want) >= 0.5)).float().mean() < 1e-4


def test_onnxruntime_backend_gives_the_instances_of_the_torch_backend(exported, tiny_voc, tmp_path):
    images, props = _val(tiny_voc)
    eager = Predictor.from_dir(exported).predict(images, props)
    ort = Predictor.from_dir(exported, backend="onnxruntime")
    assert ort.backend == "onnxruntime"
    graphs = ort.predict(images, props)
    assert sum(len(p.instances) for p in eager) > 0
    for a, b in zip(eager, graphs):
        assert [(i.class_id, i.proposal, i.peak) for i in a.instances] == \
               [(i.class_id, i.proposal, i.peak) for i in b.instances]
        for i, j in zip(a.instances, b.instances):
            assert np.array_equal(i.mask, j.mask) and abs(i.score - j.score) < 1e-4
    # and through the CLI
    paths = [str(p) for p in sorted((tiny_voc / "JPEGImages").glob("val_*.jpg"))[:3]]
    outs = []
    for backend in ("torch", "onnxruntime"):
        results = tmp_path / f"{backend}.json"
        r = runner.invoke(app, ["infer", str(exported), *paths, "--proposals", str(tiny_voc / "Proposals"),
                                "--out", str(results), "--backend", backend])
        assert r.exit_code == 0, r.output
        outs.append([(d["image_id"], d["category_id"], d["segmentation"]["counts"])
                     for d in json.loads(results.read_text())])
    assert outs[0] == outs[1] and outs[0]


def test_engines_refuse_stale_graphs_and_other_settings(exported, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(exported, model)
    with pytest.raises(InputError, match="T = 3.*T = 2"):
        Predictor.from_dir(model, backend="onnxruntime", icn_steps=2)
    assert Predictor.from_dir(model, backend="onnxruntime", icn_steps=0).graphs.icn is None
    original = (model / "config.json").read_text()
    config = json.loads(original)
    config["peaks"]["sigma"] = 2.0
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="other peaks settings"):
        Predictor.from_dir(model, backend="onnxruntime")
    (model / "config.json").write_text(original)
    weights = load_file(str(model / "classifier.safetensors"))
    weights = {k: v + 1e-3 if v.is_floating_point() else v for k, v in weights.items()}
    save_file(weights, str(model / "classifier.safetensors"))  # retrained after the export
    with pytest.raises(InputError, match="another classifier.safetensors"):
        Predictor.from_dir(model, backend="onnxruntime")
    missing = tmp_path / "none"
    shutil.copytree(exported, missing)
    (missing / "manifest.json").unlink()
    r = runner.invoke(app, ["infer", str(missing), "x.jpg", "--proposals", str(tmp_path), "--backend", "onnxruntime"])
    assert r.exit_code == 2 and "icn-rt export" in r.output


def test_auto_backend_on_cpu_is_torch(exported):
    assert pick_backend("auto", torch.device("cpu"), exported) == "torch"
    with pytest.raises(ValueError, match="unknown backend"):
        pick_backend("tflite", torch.device("cpu"), exported)


@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_says_how_to_install_it(exported):
    r = runner.invoke(app, ["build-engine", str(exported)])
    assert r.exit_code == 2 and "TensorRT is not installed" in r.output and "pip install tensorrt" in r.output


def _cuda() -> bool:
    return torch.cuda.is_available()


_NO_TENSORRT = ("TensorRT is not installed (pip install tensorrt)" if not tensorrt_available() else
                "TensorRT needs a CUDA GPU" if not _cuda() else None)


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_TENSORRT is not None, reason=_NO_TENSORRT or "")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_plans_match_pytorch(exported, tiny_voc, tmp_path, precision):
    model = tmp_path / "m"
    shutil.copytree(exported, model)
    if precision != "fp32":
        r = runner.invoke(app, ["export", str(model), "--precision", precision, "--calibration", str(tiny_voc),
                                "--calibration-count", "4"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["build-engine", str(model), "--precision", precision, "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["plans"]["prm"]["strongly_typed"] and manifest["plans"]["prm"]["precision"] == precision
    images, props = _val(tiny_voc)
    # the same graph in onnxruntime is the reference at every precision; eager at fp32
    reference = Predictor.from_dir(model, "cpu", backend=f"onnxruntime:{precision}").predict(images, props)
    trt = Predictor.from_dir(model, "cuda", backend=f"tensorrt:{precision}")
    assert trt.backend == ("tensorrt" if precision == "fp32" else f"tensorrt:{precision}")
    got = trt.predict(images, props)
    if precision == "fp32":
        eager = Predictor.from_dir(model, "cuda").predict(images, props)
        assert [[(i.class_id, i.proposal) for i in p.instances] for p in eager] == \
               [[(i.class_id, i.proposal) for i in p.instances] for p in got]
    same = [[i.class_id for i in p.instances] for p in reference] == [[i.class_id for i in p.instances] for p in got]
    assert same or precision == "int8", (reference, got)  # int8 kernels differ between providers
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["plans"]["prm"]["tensorrt"] = "0.0"
    (model / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="built with TensorRT 0.0"):
        Predictor.from_dir(model, "cuda", backend="tensorrt")


@pytest.mark.tensorrt
@pytest.mark.skipif(_NO_TENSORRT is not None, reason=_NO_TENSORRT or "")
def test_tensorrt_cuda_graphs_replay_what_the_plans_compute_and_layers_are_profiled(exported, tiny_voc, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(exported, model)
    r = runner.invoke(app, ["build-engine", str(model), "--precision", "fp32", "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    images, props = _val(tiny_voc)
    plain = Predictor.from_dir(model, "cuda", backend="tensorrt")
    graphed = Predictor.from_dir(model, "cuda", backend="tensorrt", cuda_graph=True)
    assert graphed.backend == "tensorrt+cuda-graph"
    x = plain.network_input(images)
    prms = torch.rand(4, *x.shape[2:], device=x.device)
    prms = prms / prms.sum((1, 2), keepdim=True)
    for batch, p in ((x[:4], prms), (x[:4] + 0.5, prms.flip(0)), (x[:3], prms[:3])):  # new values, new shape
        want, got = plain.graphs.icn(images=batch, prms=p), graphed.graphs.icn(images=batch, prms=p)
        for name in want:
            assert torch.equal(want[name], got[name]), name
        want, got = plain.graphs.prm(images=batch), graphed.graphs.prm(images=batch)
        for name in want:
            assert torch.equal(want[name], got[name]), name
    assert len(graphed.graphs.icn._graphs) == 2
    assert not graphed.graphs.prm._graphs  # its peaks' number is data-dependent: it runs plainly
    a, b = plain.predict(images, props), graphed.predict(images, props)
    assert [[(i.class_id, i.proposal) for i in p.instances] for p in a] == \
           [[(i.class_id, i.proposal) for i in p.instances] for p in b]
    profile = plain.graphs.prm.profile_layers(5, images=x[:4])
    assert profile["runs"] == 5 and profile["total_ms"] > 0 and len(profile["layers"]) > 3
    assert all(layer["samples"] == 5 for layer in profile["layers"])
    assert sum(layer["share"] for layer in profile["layers"]) == pytest.approx(1.0)
    assert any("Conv" in layer["name"] for layer in profile["layers"])  # names, not indices (detailed verbosity)
    out = tmp_path / "bench.json"
    r = runner.invoke(app, ["bench", str(model), *(str(tiny_voc / "JPEGImages" / f"val_00000{i}.jpg") for i in range(2)),
                            "--proposals", str(tiny_voc / "Proposals"), "--count", "2", "--batch-sizes", "2",
                            "--iterations", "2", "--no-baseline", "--backend", "tensorrt", "--cuda-graph",
                            "--profile-layers", "--device", "cuda", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert [row["backend"] for row in report["rows"]] == ["tensorrt", "tensorrt+cuda-graph"]
    assert set(report["tensorrt_layers"]["tensorrt"]) == {"prm", "icn"}


def test_graphs_of_the_fixed_slot_layout_are_refused(exported, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(exported, model)
    record = json.loads((model / "manifest.json").read_text())
    del record["peak_batch"]  # as icn-rt wrote it before the graphs' backward took the peaks found
    (model / "manifest.json").write_text(json.dumps(record))
    with pytest.raises(InputError, match=r"older icn-rt \(fixed peak slots\); run `icn-rt export` again"):
        Predictor.from_dir(model, backend="onnxruntime")


def test_cuda_graphs_are_refused_where_they_cannot_replay(exported):
    with pytest.raises(ValueError, match="CUDA graphs replay TensorRT plans only"):
        Predictor.from_dir(exported, backend="onnxruntime", cuda_graph=True)
    with pytest.raises(ValueError, match="CUDA graphs replay TensorRT plans only"):
        Predictor.from_dir(exported, cuda_graph=True)
    r = runner.invoke(app, ["infer", str(exported), "x.jpg", "--cuda-graph"])
    assert r.exit_code == 2 and "CUDA graphs replay TensorRT plans only" in r.output


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_onnxruntime_io_binding_on_gpu_equals_cpu(exported, tiny_voc):
    from icn_rt.runtime.engines import onnxruntime_has_gpu

    if not onnxruntime_has_gpu():
        pytest.skip("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
    from icn_rt.data.preprocess import preprocess

    images, _ = _val(tiny_voc)
    x = torch.stack([preprocess(im, 64) for im in images])
    cpu = OnnxRuntimeEngine(exported / "prm.onnx")(images=x)
    gpu = OnnxRuntimeEngine(exported / "prm.onnx", "cuda")(images=x.cuda())
    assert gpu["prms"].is_cuda
    assert torch.equal(gpu["peak_image"].cpu(), cpu["peak_image"]) and torch.equal(gpu["peak_y"].cpu(), cpu["peak_y"])
    torch.testing.assert_close(gpu["prms"].cpu(), cpu["prms"], rtol=1e-3, atol=1e-6)


def test_engine_benchmark_compares_backends_side_by_side(with_icn, tiny_voc, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "engines.json"
    script = Path(__file__).parents[1] / "benchmarks" / "engines.py"
    r = subprocess.run([sys.executable, str(script), str(with_icn[0]), str(tiny_voc), "--images", "3",
                        "--batch-sizes", "2", "--peaks-per-image", "2", "--repeats", "1", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert [(row["backend"], row["peaks"]) for row in record["rows"]] == [
        (backend, peaks) for peaks in ("model", "2 per image") for backend in ("torch eager", "torch graph",
                                                                                 "onnxruntime")]
    assert [row["peaks_per_image"] for row in record["rows"][3:]] == [2.0] * 3  # every image has its 2 peaks
    assert record["rows"][0]["networks"]["speedup_vs_torch_eager"] == 1.0
    assert all(row[s]["images_per_s"] > 0 for row in record["rows"] for s in ("networks", "predict"))
    assert record["onnxruntime_instances_equal_torch_eager"] == {"model, batch 2": True, "2 per image, batch 2": True}
    assert record["machine"]["packages"]["onnxruntime"]


def test_onnxruntime_tensorrt_provider_gets_caches_and_fp16_for_fp16_graphs(monkeypatch, tmp_path):
    import onnxruntime as ort

    from icn_rt.runtime.engines.onnxruntime import onnxruntime_providers

    assert onnxruntime_providers(torch.device("cpu"), tmp_path) == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    chosen = onnxruntime_providers(torch.device("cuda:1"), tmp_path, fp16=True)
    assert chosen == [("TensorrtExecutionProvider", {"device_id": 1, "trt_engine_cache_enable": True,
                                                     "trt_engine_cache_path": str(tmp_path),
                                                     "trt_timing_cache_enable": True,
                                                     "trt_timing_cache_path": str(tmp_path), "trt_fp16_enable": True}),
                      ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert "trt_fp16_enable" not in onnxruntime_providers(torch.device("cuda"), tmp_path)[0][1]


def test_onnxruntime_gpu_outputs_get_torch_buffers_only_where_their_sizes_follow_the_batch():
    from icn_rt.runtime.engines.onnxruntime import _fixed_rest
    assert _fixed_rest(["batch", 5, 16, 16], "batch") == (5, 16, 16)
    assert _fixed_rest(["peaks", 128, 128], "batch") is None  # the PRM graph's peaks: data-dependent
    assert _fixed_rest(["batch", "batch", "GreaterOrEqualmasks_dim_2"], "batch") is None  # symbolic after onnxslim


@pytest.mark.parametrize("rule", ["gradient", "excitation"])
@pytest.mark.parametrize("backbone,size,local", [("small", 128, True), ("small", 48, False)])
def test_onnxruntime_prm_graph_equals_its_module_on_windows_and_whole_maps(rule, backbone, size, local, tmp_path):
    """The exported backward on each peak's receptive field (gathers, one-hot placements)
    and over whole maps, against the module it was traced from, at two batch sizes."""
    from icn_rt.export.graphs import PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS
    from icn_rt.export.onnx_export import _export

    torch.manual_seed(0)
    model = PeakClassifier(3, ClassifierSettings(backbone=backbone, input_size=size, sub_pixel=2)).eval()
    settings = PeakSettings(class_threshold=-1e9, peak_threshold=-1e9, max_peaks=3)
    graph = PRMGraph(Model(model, CLASSES, settings, PRMSettings(rule)), 3)
    assert graph.local == local
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
    path = tmp_path / "prm.onnx"
    _export(graph, (x[:2],), path, PRM_INPUTS, PRM_OUTPUTS, PRM_PEAK_OUTPUTS)
    engine = OnnxRuntimeEngine(path)
    for batch in (x[:1], x):
        got = engine(images=batch)
        with torch.no_grad():
            want = dict(zip(PRM_OUTPUTS, graph(batch)))
        assert len(want["prms"]) >= len(batch)
        for name in ("peak_image", "peak_class", "peak_y", "peak_x"):
            assert torch.equal(got[name], want[name]), name
        torch.testing.assert_close(got["prms"], want["prms"], rtol=1e-4, atol=1e-6)


def test_onnxruntime_optimisation_levels_agree_and_the_optimised_graph_is_saved(exported, tiny_voc, tmp_path):
    from icn_rt.data.preprocess import preprocess

    path = tmp_path / "prm.onnx"
    shutil.copy(exported / "prm.onnx", path)
    images, _ = _val(tiny_voc)
    x = torch.stack([preprocess(im, 64) for im in images])
    want = OnnxRuntimeEngine(path)(images=x)
    saved = OnnxRuntimeEngine(path, optimization="extended", save_optimized=True)
    assert saved.optimized_path == tmp_path / "prm.ort-extended.onnx" and saved.optimized_path.is_file()
    engines = [OnnxRuntimeEngine(path, optimization=level) for level in ("disable", "basic")]
    engines += [saved, OnnxRuntimeEngine(saved.optimized_path, optimization="disable")]  # loaded as saved
    for engine in engines:
        got = engine(images=x)
        for name in ("peak_image", "peak_class", "peak_y", "peak_x"):
            assert torch.equal(got[name], want[name]), name
        torch.testing.assert_close(got["prms"], want["prms"], rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="optimisation level 'fast'"):
        OnnxRuntimeEngine(path, optimization="fast")


def test_infer_takes_onnxruntime_session_options_and_refuses_an_unknown_level(exported, tiny_voc, tmp_path):
    val = VOCDataset(tiny_voc, "val", load_images=False)
    images = [str(val.image_path(i)) for i in val.ids]
    common = ["infer", str(exported), *images, "--proposals", str(tiny_voc / "Proposals"), "--backend",
              "onnxruntime", "--quiet", "--device", "cpu"]
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "a.json"), "--ort-optimization", "basic"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "a.json").read_text())
    r = runner.invoke(app, [*common, "--out", str(tmp_path / "b.json"), "--ort-optimization", "fast"])
    assert r.exit_code != 0 and "optimisation level 'fast'" in r.output
    assert not (tmp_path / "b.json").exists()
