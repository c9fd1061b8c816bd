"""`icn-rt train classifier` and `icn-rt infer` on a tiny dataset, end to end."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.make_proposals import make_proposals
from icn_rt.data.results import load_results
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.models.backbones import build_backbone, load_pretrained
from icn_rt.training.classifier import calibrate_peaks, classification_map

runner = CliRunner()
TRAIN = ["--backbone", "small", "--input-size", "64", "--sub-pixel", "2", "--lr", "1e-3", "--batch-size", "2"]


@pytest.fixture(scope="module")
def trained(tiny_voc, tmp_path_factory):
    model = tmp_path_factory.mktemp("model") / "m"
    r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(model), "--epochs", "2", *TRAIN])
    assert r.exit_code == 0, r.output
    return model, r.output


@pytest.fixture(scope="module")
def proposals(tiny_voc, tmp_path_factory):
    out = tmp_path_factory.mktemp("props")
    make_proposals(tiny_voc, out, "val", jobs=1, progress=False)
    return out


def test_train_writes_a_model_directory(trained):
    model, output = trained
    assert "epoch 2/2" in output and "val classification mAP" in output
    config = json.loads((model / "config.json").read_text())
    assert config["classes"] == ["disc", "triangle", "square"]
    assert config["classifier"] == {"backbone": "small", "input_size": 64, "sub_pixel": 2, "window": 3,
                                    "stimulation": True}
    assert config["training"]["epochs"] == 2 and config["training"]["lr"] == 1e-3
    assert np.isfinite(config["peaks"]["peak_threshold"]).all() and len(config["peaks"]["peak_threshold"]) == 3
    assert config["prm"] == {"rule": "gradient"}
    # a new model gets the recommended settings over the (paper's) defaults
    assert config["matching"]["score"] == "auto-iou" and config["matching"]["rerank"] == 50
    assert config["instances"]["confidence"] == "peak_match"
    assert len(json.loads((model / "train_log.json").read_text())) == 2
    assert (model / "classifier.safetensors").is_file() and (model / "train_state.pt").is_file()


def test_resume_continues_exactly(trained, tiny_voc, tmp_path):
    model, _ = trained
    part = tmp_path / "part"
    r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(part), "--epochs", "1", *TRAIN])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "classifier", str(tiny_voc), "--model", str(part), "--epochs", "2", "--resume",
                            *TRAIN])
    assert r.exit_code == 0, r.output
    assert "resuming" in r.output
    a, b = load_file(str(model / "classifier.safetensors")), load_file(str(part / "classifier.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_infer_writes_results_pictures_and_evaluates(trained, tiny_voc, proposals, tmp_path):
    model, _ = trained
    images = tiny_voc / "JPEGImages"
    val = VOCDataset(tiny_voc, "val", load_images=False)
    paths = [str(images / f"{i}.jpg") for i in val.ids]
    results, vis = tmp_path / "results.json", tmp_path / "vis"
    r = runner.invoke(app, ["infer", str(model), *paths, "--proposals", str(proposals), "--out", str(results),
                            "--save-vis", str(vis)])
    assert r.exit_code == 0, r.output
    assert f"{len(paths)} images" in r.output
    loaded = load_results(results, ("disc", "triangle", "square"))
    assert set(loaded) <= set(val.ids)
    for image_id in val.ids:
        assert (vis / f"{image_id}_overlay.png").is_file() and (vis / f"{image_id}_prm.png").is_file()
    r = runner.invoke(app, ["eval", str(tiny_voc), str(results)])
    assert r.exit_code == 0, r.output


def test_infer_records_bad_inputs_and_goes_on(trained, tiny_voc, proposals, tmp_path):
    model, _ = trained
    images = tmp_path / "images"
    shutil.copytree(tiny_voc / "JPEGImages", images)
    val = VOCDataset(tiny_voc, "val", load_images=False)
    for p in images.iterdir():
        if p.stem not in val.ids:
            p.unlink()
    (images / f"{val.ids[0]}.jpg").write_bytes(b"not a jpeg")
    props = tmp_path / "props"
    shutil.copytree(proposals, props)
    (props / f"{val.ids[1]}.mat").unlink()
    results = tmp_path / "r.json"
    r = runner.invoke(app, ["infer", str(model), str(images), "--proposals", str(props), "--out", str(results)])
    assert r.exit_code == 1, r.output
    assert f"{len(val.ids) - 2} images" in r.output
    errors = (tmp_path / "r.json.errors.txt").read_text().splitlines()
    assert len(errors) == 2
    assert "cannot decode" in errors[0] or "not" in errors[0]
    assert errors[1].endswith(f"{val.ids[1]}.mat: proposal file not found")
    assert set(load_results(results, ("disc", "triangle", "square"))) <= set(val.ids[2:])


def test_infer_without_a_model_is_one_line(tmp_path):
    r = runner.invoke(app, ["infer", str(tmp_path / "nope"), str(tmp_path), "--proposals", str(tmp_path)])
    assert r.exit_code == 2
    assert "config.json missing" in r.output


def test_pretrained_weights_load_from_a_file(tmp_path):
    from torchvision.models import vgg16_bn

    source = vgg16_bn(weights=None)
    torch.save(source.state_dict(), tmp_path / "vgg.pth")
    backbone = build_backbone("vgg16")
    load_pretrained(backbone, "vgg16", tmp_path / "vgg.pth")
    assert torch.equal(backbone[0].weight, source.features[0].weight)
    assert torch.equal(backbone[-2].running_var, source.features[-3].running_var)
    with pytest.raises(InputError, match="not resnet50 weights"):
        load_pretrained(build_backbone("resnet50"), "resnet50", tmp_path / "vgg.pth")
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read weights"):
        load_pretrained(backbone, "vgg16", tmp_path / "bad.pth")


def test_classification_map_and_calibration():
    targets = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], np.float32)
    perfect = np.array([[3, 0], [0, 2], [2, 1], [1, 0]], np.float32)
    assert classification_map(perfect, targets) == pytest.approx(1.0)
    reversed_ = -perfect
    # positives ranked 3rd and 4th: precision 1/3 then 2/4; interpolated, both recall halves get 1/2
    assert classification_map(reversed_[:, :1], targets[:, :1]) == pytest.approx(0.5 * 2 / 4 + 0.5 * 2 / 4)
    maxima = np.array([[10.0, 1.0], [2.0, 4.0], [6.0, 0.0], [9.0, 9.0]])
    assert calibrate_peaks(maxima, targets, 0.5, per_class=False).peak_threshold == pytest.approx(0.5 * 6.0)
    # per class: the median of each class's labelled images (10, 6 | 4)
    assert calibrate_peaks(maxima, targets, 0.5).peak_threshold == pytest.approx([0.5 * 8.0, 0.5 * 4.0])
    # a class without a labelled image takes the one threshold
    unseen = np.concatenate([targets, np.zeros((4, 1), np.float32)], 1)
    wide = np.concatenate([maxima, np.full((4, 1), 50.0)], 1)
    assert calibrate_peaks(wide, unseen, 0.5).peak_threshold == pytest.approx([4.0, 2.0, 3.0])


def test_weak_classes_are_those_under_the_bar():
    from icn_rt.training.classifier import TrainSummary

    summary = TrainSummary(classes=("disc", "triangle", "square", "star"), class_ap=[0.97, 0.41, float("nan"), 0.8])
    assert summary.weak_classes() == [("triangle", 0.41)]  # NaN: no val image has it; 0.8 is not under 0.8
    assert summary.weak_classes(below=0.99) == [("disc", 0.97), ("triangle", 0.41), ("star", 0.8)]
    assert TrainSummary(classes=("disc",)).weak_classes() == []  # no epoch run (a finished run resumed)


def test_calibrate_peaks_rewrites_a_models_thresholds(trained, tiny_voc, tmp_path):
    import shutil

    model, _ = trained
    copy = tmp_path / "model"
    shutil.copytree(model, copy)
    before = json.loads((copy / "config.json").read_text())
    r = runner.invoke(app, ["train", "calibrate-peaks", str(tiny_voc), "--model", str(copy)])
    assert r.exit_code == 0, r.output
    after = json.loads((copy / "config.json").read_text())
    # the same images and rule as at the end of training: the same thresholds, one per class
    assert len(after["peaks"]["peak_threshold"]) == len(after["classes"]) and "calibrated to" in r.output
    assert after["peaks"]["peak_threshold"] == pytest.approx(before["peaks"]["peak_threshold"], rel=1e-5)
    assert {k: v for k, v in after.items() if k != "peaks"} == {k: v for k, v in before.items() if k != "peaks"}
    r = runner.invoke(app, ["train", "calibrate-peaks", str(tiny_voc), "--model", str(copy), "--no-per-class"])
    assert r.exit_code == 0, r.output
    assert isinstance(json.loads((copy / "config.json").read_text())["peaks"]["peak_threshold"], float)
    r = runner.invoke(app, ["train", "calibrate-peaks", str(tmp_path / "nowhere"), "--model", str(copy)])
    assert r.exit_code != 0 and "nowhere" in r.output


def test_an_image_without_a_detected_class_has_no_instances(trained, tiny_voc, proposals):
    from icn_rt.data.proposals import load_proposals
    from icn_rt.models.peaks import PeakSettings
    from icn_rt.runtime.predictor import Predictor

    model, _ = trained
    val = VOCDataset(tiny_voc, "val")
    sample = val.get(val.ids[0])
    props = load_proposals(proposals / f"{sample.image_id}.mat", sample.size)
    nothing = Predictor.from_dir(model, peaks=PeakSettings(class_threshold=1e9))
    assert nothing.predict([sample.image], [props])[0].instances == []
    some = Predictor.from_dir(model, peaks=PeakSettings(class_threshold=-1e9, peak_threshold=-1e9))
    found = some.predict([sample.image], [props])[0].instances
    assert found and all(i.mask.shape == sample.size and i.mask.any() for i in found)
    assert [i.score for i in found] == sorted((i.score for i in found), reverse=True)
