import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.proposals import load_proposals
from icn_rt.data.voc import VOCDataset

runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("data", "proposals", "eval", "train", "infer", "demo"):
        assert cmd in r.output


def test_help_texts_show_their_defaults():
    """A help text's "[default: ...]" is text, not markup that swallows it."""
    for command, default in ((["infer"], "[default: on a GPU]"),
                             (["infer"], "[default: inference up to 4, one per core; proposals one per core; "
                                         "training 0, all in this process]"),
                             (["build-engine"], "[default: 4096; 1024 on Jetson]")):
        r = runner.invoke(app, [*command, "--help"])
        assert r.exit_code == 0 and default in " ".join(r.output.split()), r.output


def test_synth_proposals_eval_end_to_end(tmp_path):
    root = tmp_path / "voc"
    r = runner.invoke(app, ["data", "synth", str(root), "--size", "64", "--train", "2", "--val", "5", "--dev", "1",
                            "--classes", "3"])
    assert r.exit_code == 0, r.output
    assert "2 train + 5 val images" in r.output
    props = tmp_path / "props"
    r = runner.invoke(app, ["proposals", str(root), "--out", str(props), "--workers", "2", "--mat-version", "7.3",
                            "--oracle", str(tmp_path / "oracle.json"), "--json", str(tmp_path / "recall.json")])
    assert r.exit_code == 0, r.output
    assert "5 written" in r.output
    recall = json.loads((tmp_path / "recall.json").read_text())
    assert recall["images"] == 5 and recall["recall"]["0.5"] > 80
    val = VOCDataset(root, "val", load_images=False)
    for image_id in val.ids:
        assert load_proposals(props / f"{image_id}.mat", (64, 64)).is_segments
    r = runner.invoke(app, ["eval", str(root), str(tmp_path / "oracle.json"), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["ABO"] == pytest.approx(recall["ABO"])
    assert metrics["mAP"]["0.25"] == pytest.approx(100.0)
    assert "mAP^r@0.5" in r.output

    # rerun: everything is already there
    r = runner.invoke(app, ["proposals", str(root), "--out", str(props)])
    assert "0 written, 5 already there" in r.output


def test_proposals_job_records_a_bad_image_and_goes_on(tiny_voc, tmp_path):
    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    val = VOCDataset(root, "val", load_images=False)
    bad = val.ids[2]
    val.image_path(bad).write_bytes(b"")
    props = tmp_path / "props"
    r = runner.invoke(app, ["proposals", str(root), "--out", str(props), "--workers", "1"])
    assert r.exit_code == 1
    assert f"{len(val) - 1} written" in r.output and "1 failed" in r.output
    errors = (props / "errors.txt").read_text()
    assert errors.startswith(f"{bad}\t") and "file is empty" in errors
    assert sorted(p.stem for p in props.glob("*.mat")) == sorted(set(val.ids) - {bad})
    assert not list(props.glob("*.partial.mat"))
    assert f"no usable proposals (counted as IoU 0): {props / bad}.mat: proposal file not found" in r.output

    # a corrupt proposal file does not stop the recall report either
    (props / f"{val.ids[0]}.mat").write_bytes(b"junk")
    r = runner.invoke(app, ["proposals", str(root), "--out", str(props), "--recall-only", "--json", str(tmp_path / "r.json")])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["images_without_usable_proposals"]) == 2
    assert any("cannot read MATLAB file" in m for m in report["images_without_usable_proposals"])


def test_eval_bad_results_is_one_line(tiny_voc, tmp_path):
    bad = tmp_path / "r.json"
    bad.write_text(json.dumps([{"image_id": "val_000000", "category_id": 1}]))
    r = runner.invoke(app, ["eval", str(tiny_voc), str(bad)])
    assert r.exit_code == 2
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert lines == [f"error: {bad}: entry 0 needs 'image_id' and 'segmentation'"]


def test_demo(tmp_path):
    from icn_rt import demo

    r = r_demo = runner.invoke(app, ["demo", "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    ids = sorted(p.stem for p in demo.IMAGES.iterdir())
    assert len(ids) == 8
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["predictions"] > 0 and np.isfinite(metrics["mIoU"])
    for image_id in ids:
        assert (tmp_path / "d" / "pictures" / f"{image_id}_overlay.png").is_file()
    results = json.loads((tmp_path / "d" / "results.json").read_text())
    assert {e["image_id"] for e in results} <= set(ids)
    assert "mAP^r" in r.output and "pictures" in r.output
    assert "its student leads, ranked by the pipeline" in " ".join(r.output.split())  # instances.lead: student
    # the demo's results are the model's own: the same as `icn-rt infer` on those files
    r = runner.invoke(app, ["infer", str(demo.MODEL), str(demo.IMAGES), "--proposals", str(demo.PROPOSALS),
                            "--out", str(tmp_path / "r.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "r.json").read_text()) == results
    # the student beside it: its own results, pictures and metrics, the same as `infer --student`
    assert "pipeline and student, side by side" in r_demo.output and "student" in r_demo.output
    metrics = json.loads((tmp_path / "d" / "student" / "metrics.json").read_text())
    assert metrics["images"] == 8 and metrics["predictions"] > 0
    for image_id in ids:
        assert (tmp_path / "d" / "student" / "pictures" / f"{image_id}_overlay.png").is_file()
    r = runner.invoke(app, ["infer", str(demo.MODEL), str(demo.IMAGES), "--student", "--out",
                            str(tmp_path / "s.json"), "--quiet"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((tmp_path / "d" / "student" /
                                                                        "results.json").read_text())


def test_demo_assets_are_small():
    from icn_rt import demo

    size = sum(p.stat().st_size for p in demo.DEMO.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert size < 8 * 2**20  # the model, its student (5 MB) and 8 images with their annotations


def test_device_auto_means_the_gpu_when_one_is_present(monkeypatch):
    import torch

    from icn_rt.cli import auto_device

    assert auto_device("cuda:1") == "cuda:1" and auto_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_device("auto") == "cuda"
    r = runner.invoke(app, ["infer", "--help"])
    assert "auto (the GPU when one is present" in r.output
