"""`icn-rt bench`: the report's contents, the like-for-like check against the baseline, the plot."""

import json

import pytest
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.runtime.bench import percentiles

runner = CliRunner()


def test_percentiles_only_from_enough_samples():
    assert percentiles([3.0, 1.0, 2.0]) == {"median": 2.0, "p90": None, "p99": None, "n": 3}
    assert percentiles([3.0, 1.0, 2.0], least=3) == {"median": 2.0, "p90": 2.8, "p99": 2.98, "n": 3}
    got = percentiles([float(v) for v in range(1, 21)])
    assert got["n"] == 20 and got["p90"] == pytest.approx(18.1) and got["median"] == 10.5


def test_bench_reports_stages_throughput_and_the_baseline(classifier, tiny_voc, tmp_path):
    images = [str(tiny_voc / "JPEGImages" / f"val_00000{i}.jpg") for i in range(3)]
    out = tmp_path / "b" / "bench.json"
    r = runner.invoke(app, ["bench", str(classifier), *images, "--proposals", str(tiny_voc / "Proposals"),
                            "--count", "4", "--batch-sizes", "1,2", "--backend", "torch,onnxruntime",
                            "--iterations", "3", "--warmup", "2", "--json", str(out)])
    assert r.exit_code == 0, r.output
    report = json.loads(out.read_text())
    assert report["images"] == 4 and report["distinct_images"] == 3 and report["machine"]["cpu_count"]
    rows = [(row["contestant"], row["backend"], row["batch_size"]) for row in report["rows"]]
    assert rows == [("baseline", "torch", 1), ("icn-rt, PRM rules", "torch", 1), ("icn-rt, PRM rules", "torch", 2),
                    ("icn-rt, model", "torch", 1), ("icn-rt, model", "torch", 2)]
    assert "run `icn-rt export" in report["skipped"]["icn-rt, model, onnxruntime"]
    for row in report["rows"]:
        # passes over the 4 images until at least 3 batches are timed
        want = 4 if row["contestant"] == "baseline" else 4 // row["batch_size"] * (2 if row["batch_size"] == 2 else 1)
        assert row["images_per_s"] > 0 and row["latency_s"]["total"]["n"] == want
        assert row["images_timed"] == (4 if row["batch_size"] == 1 else 8)
        assert row["latency_s"]["total"]["p90"] is None  # fewer than 20 samples
        assert row["speedup_vs_baseline"] > 0
    like = [row for row in report["rows"] if row["contestant"] == "icn-rt, PRM rules"]
    assert all(row["same_instances_as_baseline"] is True for row in like)
    assert report["baseline_instances_per_image"] > 0  # instances were compared, not two empty lists
    stages = like[0]["latency_s"]
    assert {"preprocess", "prm", "matching"} <= stages.keys()
    assert stages["prm"]["median"] <= stages["total"]["median"]
    shares = like[0]["stage_shares"]
    assert shares["prm"] > 0 and sum(shares.values()) <= 1.0 + 1e-9
    assert report["per_image_load_s"]["decode"]["n"] == 3
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "PRM rules" in r.output and "yes" in r.output


def test_bench_rejects_bad_batch_sizes(classifier, tmp_path):
    r = runner.invoke(app, ["bench", str(classifier), "--batch-sizes", "1,x"])
    assert r.exit_code == 2 and "--batch-sizes must be positive integers" in r.output
