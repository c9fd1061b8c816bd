"""`icn-rt infer --ray`: the job on a local Ray cluster (started by the session's
``ray_cluster`` fixture) gives the single-process job's COCO results, records failures
the same way, and resumes after its driver is killed without losing or repeating an image."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.runtime.ray_infer import RaySettings, check_resources
from tests.test_batch_infer import _records, _same_files

runner = CliRunner()


@pytest.fixture(scope="module")
def many(tiny_voc, classifier, tmp_path_factory):
    """The 6 val images and their proposals four times over (24 images, ids a0..d5), and a
    broken image among them; (model, images, proposals)."""
    from icn_rt.data.voc import VOCDataset

    root = tmp_path_factory.mktemp("ray")
    images, props = root / "images", root / "props"
    images.mkdir()
    props.mkdir()
    for copy in "abcd":
        for i, image_id in enumerate(VOCDataset(tiny_voc, "val", load_images=False).ids):
            shutil.copy(tiny_voc / "JPEGImages" / f"{image_id}.jpg", images / f"{copy}{i}.jpg")
            shutil.copy(tiny_voc / "Proposals" / f"{image_id}.mat", props / f"{copy}{i}.mat")
    (images / "b9.jpg").write_bytes(b"not a jpeg")
    return classifier, images, props


def _infer(model, images, props, out, *extra):
    return runner.invoke(app, ["infer", str(model), str(images), "--proposals", str(props), "--out", str(out),
                               "--quiet", "--batch-size", "4", *extra])


def test_ray_gives_the_single_process_results_and_records_failures(many, ray_cluster, tmp_path):
    model, images, props = many
    single = _infer(model, images, props, tmp_path / "single.json")
    spread = _infer(model, images, props, tmp_path / "ray.json", "--ray", ray_cluster, "--actors", "2")
    assert (single.exit_code, spread.exit_code) == (1, 1), spread.output  # the broken image fails both
    _same_files(tmp_path / "single.json", tmp_path / "ray.json")
    assert json.loads((tmp_path / "ray.json").read_text())  # instances were found
    errors = (tmp_path / "ray.json.errors.txt").read_text()
    assert errors == (tmp_path / "single.json.errors.txt").read_text()
    assert "b9.jpg" in errors and len(errors.splitlines()) == 1
    assert len(_records(tmp_path / "ray.json")) == 25


def test_killing_the_driver_then_resume_loses_and_repeats_nothing(many, ray_cluster, tmp_path):
    model, images, props = many
    out = tmp_path / "ray.json"
    args = [str(Path(sys.executable).parent / "icn-rt"), "infer", str(model), str(images), "--proposals", str(props),
            "--out", str(out), "--quiet", "--batch-size", "1", "--ray", ray_cluster]
    driver = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    shard = out.with_name(out.name + ".parts") / "part-0000.jsonl"
    deadline = time.monotonic() + 120
    while not (shard.exists() and shard.read_text().count("\n") >= 3):
        assert driver.poll() is None and time.monotonic() < deadline, driver.stdout.read().decode()
        time.sleep(0.02)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    first = shard.read_text().count("\n")
    assert 3 <= first < 25  # killed mid-run
    resumed = runner.invoke(app, ["infer", str(model), str(images), "--proposals", str(props), "--out", str(out),
                                  "--quiet", "--batch-size", "1", "--ray", ray_cluster, "--resume"])
    assert resumed.exit_code == 1, resumed.output  # the broken image, recorded again
    assert f"({first - ('b9.jpg' in shard.read_text())} done by an earlier run)" in resumed.output
    lines = [json.loads(line) for s in sorted(out.with_name(out.name + ".parts").glob("part-*.jsonl"))
             for line in s.read_text().splitlines()]
    ok = [r["id"] for r in lines if r["ok"]]
    assert sorted(ok) == sorted(set(ok)) and len(ok) == 24  # each image once
    assert _infer(model, images, props, tmp_path / "single.json").exit_code == 1
    _same_files(tmp_path / "single.json", out)


def test_a_pool_that_cannot_fit_the_cluster_is_refused_with_why():
    with pytest.raises(ValueError, match="has 2 CPUs; 2 actors x 1 CPUs \\+ 1 for loading need 3"):
        check_resources({"CPU": 2.0}, RaySettings(actors=2))
    with pytest.raises(ValueError, match="has 0 GPUs"):
        check_resources({"CPU": 8.0}, RaySettings(gpus_per_actor=1))
    check_resources({"CPU": 3.0}, RaySettings(actors=2))
    with pytest.raises(ValueError, match="--actors must be at least 1"):
        RaySettings(actors=0)


def test_icn_labels_made_on_ray_are_the_single_process_ones(tiny_voc, classifier, ray_cluster, tmp_path):
    """`train pseudo-labels --ray`: the same label files, the same failure recorded."""
    import numpy as np

    root = tmp_path / "voc"
    shutil.copytree(tiny_voc, root)
    broken = next((root / "JPEGImages").glob("train_*.jpg"))
    broken.write_bytes(b"not a jpeg")
    made = {}
    for name, extra in (("single", []), ("ray", ["--ray", ray_cluster, "--actors", "2"])):
        out = tmp_path / name
        r = runner.invoke(app, ["train", "pseudo-labels", str(root), "--model", str(classifier), "--labels", str(out),
                                "--batch-size", "2", *extra])
        assert r.exit_code == 0, r.output
        said = " ".join(r.output.split())
        assert "3 images" in said and "1 failed" in said, r.output
        made[name] = out
    assert (made["ray"] / "errors.txt").read_text() == (made["single"] / "errors.txt").read_text()
    assert broken.stem in (made["ray"] / "errors.txt").read_text()
    files = sorted(p.name for p in made["single"].glob("*.npz"))
    assert files == sorted(p.name for p in made["ray"].glob("*.npz")) and len(files) == 3
    for name in files:
        with np.load(made["single"] / name) as a, np.load(made["ray"] / name) as b:
            assert a.files == b.files
            for key in a.files:  # the 8-bit PRMs may round the other way where float sums differ in the last bit
                np.testing.assert_allclose(b[key].astype(float), a[key].astype(float), atol=1 if key == "prm" else 0)
    r = runner.invoke(app, ["train", "pseudo-labels", str(root), "--model", str(classifier), "--labels",
                            str(made["ray"]), "--batch-size", "2", "--ray", ray_cluster])
    assert r.exit_code == 0 and "3 already there" in " ".join(r.output.split()), r.output  # a rerun skips them


def test_train_icn_makes_its_labels_on_ray_then_trains(tiny_voc, classifier, ray_cluster, tmp_path):
    from tests.conftest import ICN_ARGS

    model = tmp_path / "model"
    shutil.copytree(classifier, model)
    r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(model), "--epochs", "1", "--supervision",
                            "saliency", *ICN_ARGS, "--ray", ray_cluster])
    assert r.exit_code == 0, r.output
    said = "".join(r.output.split())  # the console wraps long paths anywhere
    assert "labels(saliency,ray)" in said and "labels-saliency-train:4images" in said, r.output  # on the cluster
    assert "4alreadythere" in said and "ICN->" in said, r.output  # then found by the training
    assert (model / "icn.safetensors").is_file()
