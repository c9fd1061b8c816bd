"""``icn-rt compare``: backends and precisions against a reference on the same images,
per output against stated tolerances, peak and same-instance agreement; a deliberately
perturbed graph must be flagged (exit 1)."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.runtime.compare import TOLERANCES, Outputs, Tolerance, compare_outputs, tolerance_for

runner = CliRunner()


def _outputs(scale=1.0, drop_peak=False, instance=1):
    prms = {(0, 1, 2, 3): np.full((4, 4), 0.0625), (0, 2, 1, 1): np.eye(4) / 4}
    if drop_peak:
        prms.pop((0, 2, 1, 1))
    return Outputs([np.array([1.0, 2.0]) * scale], [np.ones((2, 3, 3)) * scale], prms,
                   {k: v * 4 for k, v in prms.items()}, [{(1, 7), (2, instance)}])


def test_compare_outputs_on_hand_made_results():
    tol = Tolerance(atol=1e-3, rtol=1e-3, peaks=1.0, instances=1.0)
    same = compare_outputs(_outputs(), _outputs(), tol)
    assert same["ok"] and same["peaks"]["agreement"] == 1.0 and same["instances"]["agreement"] == 1.0
    assert same["outputs"]["maps"] == {"compared": 18, "max_abs": 0.0, "max_rel": 0.0, "atol": 1e-3, "rtol": 1e-3,
                                       "over_tolerance": 0, "ok": True}
    off = compare_outputs(_outputs(scale=1.01), _outputs(), tol)
    assert not off["ok"] and not off["outputs"]["maps"]["ok"]
    assert off["outputs"]["scores"]["max_abs"] == pytest.approx(0.02) and off["outputs"]["scores"]["max_rel"] \
        == pytest.approx(0.01)
    assert off["outputs"]["prms"]["ok"]  # the maps only were scaled
    lost = compare_outputs(_outputs(drop_peak=True, instance=9), _outputs(), tol)
    assert lost["peaks"] == {"agreement": 0.5, "reference": 2, "got": 1, "shared": 1, "least": 1.0, "ok": False}
    assert lost["instances"]["agreement"] == pytest.approx(1 / 3) and not lost["ok"]
    assert lost["outputs"]["prms"]["compared"] == 16  # only the peak both found


def test_tolerance_follows_the_lower_precision_and_options_override_it():
    assert tolerance_for("torch", "onnxruntime") == TOLERANCES["fp32"]
    assert tolerance_for("onnxruntime:int8", "onnxruntime:fp16") == TOLERANCES["int8"]
    assert tolerance_for("torch", "tensorrt:fp16", {"atol": 0.5, "rtol": None}).atol == 0.5
    assert tolerance_for("torch", "tensorrt:fp16", {"atol": 0.5, "rtol": None}).rtol == TOLERANCES["fp16"].rtol


@pytest.fixture(scope="module")
def exported_small(with_icn, tiny_voc, tmp_path_factory):
    model = tmp_path_factory.mktemp("compare") / "model"
    shutil.copytree(with_icn[0], model)
    r = runner.invoke(app, ["export", str(model), "--slots", "8", "--precision", "fp16"])
    assert r.exit_code == 0, r.output
    return model


def _args(model, tiny_voc, out, *contestants):
    args = ["compare", str(model), str(tiny_voc / "JPEGImages" / "val_*.jpg"),
            "--proposals", str(tiny_voc / "Proposals"), "--json", str(out)]
    for c in contestants:
        args += ["--backend", c]
    return args


def test_compare_passes_backends_that_agree_and_writes_a_report(exported_small, tiny_voc, tmp_path):
    out = tmp_path / "report.json"
    r = runner.invoke(app, _args(exported_small, tiny_voc, out, "torch", "onnxruntime", "onnxruntime:fp16"))
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["ok"] and report["reference"] == "torch" and report["instances_compared"]
    fp32 = report["contestants"]["onnxruntime"]
    assert fp32["tolerance"] == {"atol": 1e-4, "rtol": 1e-3, "peaks": 1.0, "instances": 1.0}
    assert fp32["peaks"]["reference"] > 0 and fp32["peaks"]["agreement"] == 1.0
    assert fp32["instances"]["reference"] > 0 and fp32["instances"]["agreement"] == 1.0
    assert all(o["compared"] > 0 for o in fp32["outputs"].values())
    assert report["contestants"]["onnxruntime:fp16"]["tolerance"]["atol"] == TOLERANCES["fp16"].atol


def test_compare_flags_a_perturbed_graph(exported_small, tiny_voc, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(exported_small, model)
    graph = onnx.load(str(model / "prm.onnx"))
    weight = next(t for t in graph.graph.initializer if t.name.endswith("classifier.weight")
                  or "classifier" in t.name)
    array = numpy_helper.to_array(weight) * 1.02  # a 2 % error in the classifier's weights
    weight.CopyFrom(numpy_helper.from_array(array.astype(np.float32), weight.name))
    onnx.save(graph, str(model / "prm.onnx"))
    out = tmp_path / "report.json"
    r = runner.invoke(app, _args(model, tiny_voc, out, "torch", "onnxruntime"))
    assert r.exit_code == 1, r.output
    report = json.loads(out.read_text())
    assert not report["ok"]
    outputs = report["contestants"]["onnxruntime"]["outputs"]
    assert not outputs["maps"]["ok"] and not outputs["scores"]["ok"]
    assert "mismatch" in r.output


def test_compare_needs_two_contestants(exported_small, tiny_voc, tmp_path):
    r = runner.invoke(app, _args(exported_small, tiny_voc, tmp_path / "r.json", "torch"))
    assert r.exit_code == 2 and "at least two contestants" in r.output


def test_the_old_out_name_still_writes_the_report_with_a_warning(exported_small, tiny_voc, tmp_path):
    """compare's report was --out before every command's machine output became --json."""
    args = _args(exported_small, tiny_voc, tmp_path / "unused.json", "torch", "onnxruntime")
    args[args.index("--json")] = "--out"
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "--out is deprecated here and goes in the next release: use --json" in r.output
    assert json.loads((tmp_path / "unused.json").read_text())["ok"]
