"""The per-stage diagnosis: each measurement on a hand-made case with a known answer, and
the runner (benchmarks/diagnose.py) on a trained tiny model, whose shipped instances must
be the predictor's."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icn_rt.eval.diagnosis import (PeakCensus, average_precision, best_match, class_average_precision,
                                   classification_ap, fit_summary, object_fit, oracle_confidence, pair_overlap,
                                   peak_owners)


def box(y0, x0, y1, x1, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_classification_ap():
    targets = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], float)
    scores = np.array([[0.9, 0.1, 0], [0.8, 0.7, 0], [0.1, 0.2, 0], [0.2, 0.9, 0]])
    ap = classification_ap(scores, targets)
    assert ap[0] == pytest.approx(1.0)
    # class 1 ranks: image 3 (pos), image 1 (neg), image 2 (pos): precision 1 at recall .5, 2/3 at 1
    assert ap[1] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert np.isnan(ap[2])  # no image has class 2


def test_peak_owners_and_census():
    gt = np.stack([box(0, 0, 5, 5), box(0, 5, 5, 10), box(5, 0, 10, 10)])
    gt_cls = np.array([0, 0, 1])
    cls = np.array([0, 0, 1, 0, 1])
    yx = np.array([[2, 2], [3, 1], [1, 1], [7, 7], [8, 8]])  # on 0; on 0 again; class 1 on a class-0 object;
    value = np.array([5.0, 6.0, 4.0, 3.0, 2.0])               # class 0 on the class-1 object; on 2
    owner, duplicate = peak_owners(cls, yx, value, gt, gt_cls)
    assert owner.tolist() == [0, 0, -1, -1, 2]
    assert duplicate.tolist() == [True, False, False, False, False]  # the higher peak (6.0) came first
    census = PeakCensus()
    census.add(owner, duplicate, len(gt_cls))
    census.add(np.zeros(0, np.int64), np.zeros(0, bool), 2)  # an image with two objects and no peaks
    doc = census.to_json()
    assert (doc["instances"], doc["found"], doc["peaks"], doc["off_instance"], doc["duplicates"]) == (5, 2, 5, 2, 1)
    assert doc["recall"] == pytest.approx(2 / 5) and doc["off_instance_share"] == pytest.approx(2 / 5)
    assert peak_owners(cls, yx, value, np.zeros((0, 10, 10), bool), np.zeros(0, int))[0].tolist() == [-1] * 5


def test_pair_overlap_and_best_match():
    a = np.stack([box(0, 0, 4, 5), box(0, 0, 0, 0), box(0, 0, 2, 2)])
    b = np.stack([box(2, 0, 6, 5), box(0, 0, 0, 0), box(5, 5, 7, 7)])
    iou, area = pair_overlap(a, b)
    np.testing.assert_allclose(iou, [10 / 30, 0, 0])
    np.testing.assert_allclose(area, [0.2, 0, 0.04])
    proposals = np.stack([box(0, 0, 10, 10), box(2, 0, 6, 5), box(0, 0, 4, 4)])
    index, best = best_match(np.stack([box(2, 0, 6, 5), box(0, 0, 4, 5)]), proposals)
    assert index.tolist() == [1, 2] and best.tolist() == pytest.approx([1.0, 16 / 20])
    assert best_match(a, np.zeros((0, 10, 10), bool))[0].tolist() == [-1, -1, -1]


def test_object_fit_takes_each_objects_best_mask_of_its_class():
    gt = np.stack([box(0, 0, 4, 5), box(5, 5, 10, 10)])  # 20 and 25 pixels, classes 0 and 1
    masks = np.stack([box(0, 0, 4, 4), box(0, 0, 4, 5), box(5, 5, 10, 10), box(0, 0, 2, 5)])
    labels = np.array([0, 1, 0, 0])  # the exact mask of object 0 is of class 1; object 1's exact one of class 0
    np.testing.assert_allclose(object_fit(masks, labels, gt, np.array([0, 1])), [16 / 20, 0.0])
    np.testing.assert_allclose(object_fit(masks, np.array([1, 1, 1, 0]), gt, np.array([0, 1])), [10 / 20, 1.0])
    assert object_fit(masks[:0], labels[:0], gt, np.array([0, 1])).tolist() == [0, 0]
    assert object_fit(masks, labels, gt[:0], np.zeros(0, np.int64)).shape == (0,)


def test_oracle_confidence_is_each_predictions_best_iou_with_an_object_of_its_class():
    gt = np.stack([box(0, 0, 4, 5), box(5, 5, 10, 10)])
    masks = np.stack([box(0, 0, 4, 4), box(0, 0, 4, 5), box(5, 5, 10, 10)])
    np.testing.assert_allclose(oracle_confidence(masks, np.array([0, 1, 0]), gt, np.array([0, 1])),
                               [16 / 20, 0.0, 0.0])  # the exact mask of object 0 is of class 1
    assert oracle_confidence(masks, np.array([0, 1, 0]), gt[:0], np.zeros(0, np.int64)).tolist() == [0, 0, 0]
    assert oracle_confidence(masks[:0], np.zeros(0, np.int64), gt, np.array([0, 1])).shape == (0,)


def test_fit_summary_counts_found_objects_and_pairs_the_ones_both_find():
    fit = np.array([0.9, 0.6, 0.4, 0.8])
    ref = np.array([0.7, 0.0, 0.9, 0.6])
    s = fit_summary(fit, ref)
    assert s["found@0.5"] == pytest.approx(75.0) and s["found@0.75"] == pytest.approx(50.0)
    assert s["IoU, found"] == pytest.approx(100 * (0.9 + 0.6 + 0.8) / 3)
    # both find objects 0 and 3
    assert s["IoU, both found"] == pytest.approx(85.0) and s["reference IoU, both found"] == pytest.approx(65.0)
    w = fit_summary(fit, ref, np.array([2, 0, 1, 0]))  # object 0 twice, object 2 once
    assert w["found@0.5"] == pytest.approx(100 * 2 / 3) and w["IoU, both found"] == pytest.approx(90.0)
    assert np.isnan(fit_summary(fit, ref, np.zeros(4))["found@0.5"])
    assert np.isnan(fit_summary(np.zeros(2), np.ones(2))["IoU, both found"])


def test_average_precision():
    g = np.stack([box(0, 0, 5, 5), box(5, 5, 10, 10)])
    perfect = (g, np.array([0, 1]), np.array([0.9, 0.8]), g, np.array([0, 1]))
    assert average_precision([perfect], 2) == {"mAP@0.25": 100.0, "mAP@0.5": 100.0, "mAP@0.75": 100.0}
    half = (g[:1], np.array([0]), np.array([0.9]), g, np.array([0, 1]))
    assert average_precision([half], 2)["mAP@0.5"] == pytest.approx(50.0)  # class 1 found by nothing
    assert class_average_precision([half], 3) == [100.0, 0.0, None]  # class 2: no ground truth


def test_diagnose_runs_the_predictor_stage_by_stage(with_icn, tiny_voc, tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "diagnose.py"
    out = tmp_path / "diagnose.json"
    r = subprocess.run([sys.executable, str(script), str(with_icn[0]), str(tiny_voc), "--split", "val",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["consistent_with_predictor"] is True and doc["images"] == 6
    stages = [row["stage"] for row in doc["rows"]]
    assert stages[:3] == ["classification", "peaks", "pseudo labels (top-k union)"]
    assert [s for s in stages if s.startswith("map V_")] == ["map V_0 (naive PRM)", "map V_1 (ICN)",
                                                              "map V_2 (ICN)", "map V_3 (ICN)"]
    assert all(row["value"] is None or 0 <= row["value"] <= 1 for row in doc["rows"])
    assert set(doc["ap"]) == {"shipped", "oracle ranking", "oracle matching", "oracle matching + ranking"}
    assert doc["census"]["instances"] > 0 and 0 <= doc["census"]["recall"] <= 1
    per_class = doc["per_class"]  # the split by class adds up to the census
    assert list(per_class) == ["disc", "triangle", "square"]
    for key, total in (("instances", "instances"), ("found", "found"), ("peaks", "peaks"), ("off", "off_instance")):
        assert sum(e[key] for e in per_class.values()) == doc["census"][total], key
    assert all(e["ap@0.5"] is None or 0 <= e["ap@0.5"] <= 100 for e in per_class.values())
    text = out.with_suffix(".md").read_text()
    assert text.startswith("Per-stage diagnosis") and "| class | classification AP |" in text


def test_accuracy_benchmark_rows_intervals_and_paired_differences(with_icn, tiny_voc, tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "accuracy.py"
    out = tmp_path / "accuracy.json"
    model = str(with_icn[0])
    r = subprocess.run([sys.executable, str(script), str(tiny_voc), "--split", "val", "--bootstrap", "50",
                        "--row", f"naive={model}:T=0", "--row", f"again naive={model}:T=0",
                        "--row", f"iou, T 1={model}:T=1,score=iou,confidence=match", "--reference", "naive",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert [row["name"] for row in doc["rows"]] == ["naive", "again naive", "iou, T 1"]
    naive, again, iou = doc["rows"]
    assert naive["resolved"]["icn_steps"] == 0 and naive["resolved"]["matching"] == "vanilla"
    assert iou["resolved"] == {"icn_steps": 1, "matching": "iou", "binarize": 0.5, "confidence": "match",
                               "nms_iou": 0.3}
    assert naive["metrics"] == again["metrics"] and "minus_reference" not in naive
    assert all(d["estimate"] == 0 and d["interval"] == [0, 0] for d in again["minus_reference"].values())
    m = iou["metrics"]["mAP@0.5"]
    assert m["interval"][0] <= m["estimate"] <= m["interval"][1]
    assert doc["bootstrap"] == {"samples": 50, "seed": 0, "level": 0.95, "unit": "image"}
    assert iou["training_seeds"] == {"training": 0, "icn_training": 0}
    assert "naive" in out.with_suffix(".md").read_text()
    # COCO's segm AP beside mAP^r: the same results give the same figures, AP within AP50
    assert set(naive["COCO"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"} and naive["COCO"] == again["COCO"]
    assert all(row["COCO"]["AP"] is None or row["COCO"]["AP"] <= row["COCO"]["AP50"] for row in doc["rows"])
    assert "| COCO AP |" in out.with_suffix(".md").read_text()


def test_accuracy_row_settings_parse_none_as_none_but_refine_none_as_a_mode():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from accuracy import parse_settings

    assert parse_settings("T=0,binarize=none,student=1,refine=none") == {"T": 0, "binarize": None, "student": 1,
                                                                        "refine": "none"}
    assert parse_settings("student=1,refine=proposals,proposal_iou=0.5") == {"student": 1, "refine": "proposals",
                                                                            "proposal_iou": 0.5}
    with pytest.raises(SystemExit, match="unknown key 'tee'"):
        parse_settings("tee=1")


def test_mask_fit_runner_agrees_with_the_accuracy_benchmark(with_icn, tiny_voc, tmp_path):
    bench = Path(__file__).parents[1] / "benchmarks"
    model = str(with_icn[0])
    rows = ["--row", f"naive={model}:T=0", "--row", f"T 1={model}:T=1,score=iou,confidence=match"]
    out, acc = tmp_path / "fit.json", tmp_path / "acc.json"
    r = subprocess.run([sys.executable, str(bench / "mask_fit.py"), str(tiny_voc), "--split", "val", "--bootstrap",
                        "50", *rows, "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, str(bench / "accuracy.py"), str(tiny_voc), "--split", "val", "--bootstrap",
                        "50", *rows, "--out", str(acc)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc, accuracy = json.loads(out.read_text()), json.loads(acc.read_text())
    assert doc["reference"] == "naive" and doc["images"] == 6 and doc["objects"] > 0
    for row, theirs in zip(doc["rows"], accuracy["rows"]):  # the same predictions, scored by `icn-rt eval`
        for t in ("0.5", "0.75"):
            assert row["metrics"][f"mAP@{t}"]["estimate"] == pytest.approx(theirs["metrics"][f"mAP@{t}"]["estimate"])
        m = row["metrics"]
        assert 0 <= m["found@0.75"]["estimate"] <= m["found@0.5"]["estimate"] <= 100
    naive = doc["rows"][0]
    assert naive["both_found_minus_reference"]["estimate"] == 0  # the reference against itself
    assert "| naive |" in out.with_suffix(".md").read_text()


def test_icn_learnability_trains_each_source_on_the_same_peaks(classifier, tiny_voc, tmp_path):
    """benchmarks/icn_learnability.py on the tiny model's labels: every source trains on the
    peaks left after the held-out ones (a ``top`` source on its share of them), is scored
    every ``--every`` steps, and sources of other peaks are refused."""
    from tests.conftest import runner

    from icn_rt.cli import app

    labels, truth = tmp_path / "labels", tmp_path / "truth"
    for out, supervision in ((labels, "proposals"), (truth, "saliency")):
        r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier),
                                "--supervision", supervision, "--labels", str(out)])
        assert r.exit_code == 0, r.output
    peaks = sum(len(np.load(f)["cls"]) for f in labels.glob("*.npz"))
    assert peaks >= 4
    script = Path(__file__).parents[1] / "benchmarks" / "icn_learnability.py"
    out = tmp_path / "learn.json"
    command = [sys.executable, str(script), str(tiny_voc), "--truth", str(truth), "--source", f"labels={labels}",
               "--source", f"half={labels}:top=0.5", "--held-out", "2", "--steps", "2", "--every", "1",
               "--batch-size", "2", "--width", "4", "--input-size", "64", "--out", str(out)]
    r = subprocess.run(command, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["peaks"] == peaks and doc["held_out_peaks"] == 2
    full, half = doc["sources"]["labels"], doc["sources"]["half"]
    assert full["training_peaks"] == peaks - 2 and half["training_peaks"] == max(2, round((peaks - 2) / 2))
    assert [c["step"] for c in full["curve"]] == [0, 1, 2]
    assert 0 < full["label_share"] < 1 and full["constant_bce"] > 0
    assert all(0 <= c["map_iou_with_truth"] <= 1 for c in full["curve"] + half["curve"])
    assert "| labels |" in out.with_suffix(".md").read_text()
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text((labels / "settings.json").read_text())
    first = sorted(labels.glob("*.npz"))[0]
    (other / first.name).write_bytes(first.read_bytes())
    r = subprocess.run([*command[:5], "--source", f"other={other}", *command[9:]], capture_output=True, text=True)
    assert r.returncode != 0 and "not the same peaks" in r.stderr


def test_icn_learnability_starts_a_classifier_encoder_from_the_model(classifier):
    import argparse

    import torch

    from icn_rt.models.store import load_classifier

    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from icn_learnability import new_icn

    icn = new_icn(argparse.Namespace(encoder="classifier", classifier=classifier, width=4))
    backbone = load_classifier(classifier)[0].backbone
    assert icn.settings.trunk == "small" and torch.equal(icn.stages[0][0].weight[:, :3], backbone[0].weight)
    assert new_icn(argparse.Namespace(encoder="small", classifier=None, width=4)).settings.encoder == "small"
    with pytest.raises(SystemExit, match="pass --classifier MODEL"):
        new_icn(argparse.Namespace(encoder="classifier", classifier=None, width=4))


def test_icn_learnability_source_syntax():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from icn_learnability import parse_source

    assert parse_source("a b=dir/x:top=0.25") == ("a b", Path("dir/x"), 0.25)
    assert parse_source("n=d") == ("n", Path("d"), 1.0)
    with pytest.raises(SystemExit):
        parse_source("n=d:top=0")


def test_icn_in_matching_ways_match_the_predictor_where_they_are_its_own(with_icn, tiny_voc, tmp_path):
    """benchmarks/icn_in_matching.py: the reference (naive PRM + re-ranking) and the default
    way give the predictor's instances; every way is scored with paired intervals."""
    script = Path(__file__).parents[1] / "benchmarks" / "icn_in_matching.py"
    out = tmp_path / "ways.json"
    r = subprocess.run([sys.executable, str(script), str(with_icn[0]), str(tiny_voc), "--split", "val",
                        "--candidates", "5", "--bootstrap", "20", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["images"] == 6
    assert doc["equal_to_the_predictor"] == {"naive PRM + re-ranking": True,
                                             "default: re-ranking among the ICN's candidates": True}
    names = [row["name"] for row in doc["rows"]]
    assert names[:3] == ["naive PRM + re-ranking", "default: re-ranking among the ICN's candidates",
                         "ICN map alone (IoU matching)"] and len(names) == 9
    assert "minus_reference" not in doc["rows"][0]
    for row in doc["rows"]:
        m = row["metrics"]["mAP@0.5"]
        assert m["interval"][0] <= m["estimate"] <= m["interval"][1]
    assert "| naive PRM + re-ranking |" in out.with_suffix(".md").read_text()


def test_icn_in_matching_picks_as_the_re_ranking_does():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from icn_in_matching import best_n, most_object_like

    scores = np.array([0.5, np.inf * -1, 0.9, 0.5, 0.1])
    assert best_n(scores, 3).tolist() == [2, 0, 3]  # ties: the lower index first
    assert best_n(scores, 10).tolist() == [2, 0, 3, 4]  # -inf is never a candidate
    value = np.array([0.3, 0.0, 0.2, 0.3, 0.9])
    assert most_object_like(np.array([2, 3, 0]), value, 5) == 0  # equal objectness: the lower index, as argmax
    assert most_object_like(np.zeros(0, np.int64), value, 5) == -1


def test_icn_learnability_blurs_a_dot_into_a_gaussian_peaking_at_1():
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import torch

    from icn_learnability import blurred

    dot = torch.zeros(1, 1, 21, 21)
    dot[0, 0, 10, 10] = 0.4
    assert blurred(dot, 0) is dot
    out = blurred(dot, 2.0)[0, 0]
    assert out.max().item() == pytest.approx(1.0) and out[10, 10].item() == pytest.approx(1.0)
    assert out[10, 12].item() == pytest.approx(np.exp(-4 / 8), rel=1e-5)  # exp(-d²/2σ²) at d = 2
    assert torch.allclose(out, out.flip(0)) and torch.allclose(out, out.T)


def test_label_quality_scores_the_truth_100_and_makes_student_labels(classifier, tiny_voc, tmp_path):
    """benchmarks/label_quality.py: ground-truth labels score IoU 100; a "student" whose
    masks are the ground truth gives every peak the instance its PRM points at, so its
    label set scores 100 too, while the proposals' labels score what they score."""
    from tests.conftest import runner

    from icn_rt.cli import app
    from icn_rt.data.results import result_entry, write_results
    from icn_rt.data.voc import VOCDataset

    labels, truth = tmp_path / "labels", tmp_path / "truth"
    for out, supervision in ((labels, "proposals"), (truth, "saliency")):
        r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier),
                                "--supervision", supervision, "--labels", str(out)])
        assert r.exit_code == 0, r.output
    ds = VOCDataset(tiny_voc, "train", load_images=False)
    write_results(tmp_path / "student.json", [result_entry(i, inst.class_id, 1.0, inst.mask, ds.classes)
                                              for i in ds.ids for inst in ds.ground_truth(i).instances])
    script = Path(__file__).parents[1] / "benchmarks" / "label_quality.py"
    out = tmp_path / "q.json"
    r = subprocess.run([sys.executable, str(script), str(tiny_voc), "--labels", f"proposals={labels}",
                        "--labels", f"truth={truth}", "--student", str(tmp_path / "student.json"),
                        "--student-labels", str(tmp_path / "sl"), "--bootstrap", "20", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    peaks = sum(len(np.load(f)["cls"]) for f in labels.glob("*.npz"))
    assert doc["student"]["peaks"] == doc["student"]["replaced"] == peaks
    for name in ("truth", "student masks (score >= 0.5)"):
        assert doc["rows"][name]["labels"] == peaks
        assert doc["rows"][name]["IoU"] == {"estimate": 100.0, "interval": [100.0, 100.0]}, name
        assert doc["rows"][name]["fragment"]["estimate"] == doc["rows"][name]["leak"]["estimate"] == 0.0
    row = doc["rows"]["proposals"]
    assert 0 <= row["IoU"]["estimate"] <= 100
    assert row["IoU >= 0.5"]["estimate"] + row["fragment"]["estimate"] + row["leak"]["estimate"] <= 100 + 1e-9
    assert out.with_suffix(".md").read_text().count("\n| ") == 4  # header and three rows


def test_label_quality_sorts_each_miss_into_fragment_leak_or_off():
    """A 10×10 instance (100 px) against hand-made labels: itself, a 5×10 half inside it
    (IoU 0.5: right), a 4×10 piece (fragment), a 20×10 block holding it (leak: IoU 0.5 is
    right, so 21×10 is a leak), and a block beside it (off)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from label_quality import kinds, overlaps

    gt = np.zeros((30, 30), bool)
    gt[0:10, 0:10] = True

    def box(y0, y1, x0, x1):
        m = np.zeros_like(gt)
        m[y0:y1, x0:x1] = True
        return m

    labels = [gt, box(0, 5, 0, 10), box(0, 4, 0, 10), box(0, 21, 0, 10), box(20, 30, 20, 30)]
    rows = np.array([overlaps(m, gt) + (0.0,) for m in labels])
    np.testing.assert_allclose(rows[:, :3], [[1, 1, 1], [0.5, 1, 0.5], [0.4, 1, 0.4], [100 / 210, 100 / 210, 1],
                                             [0, 0, 0]])
    assert kinds(rows).tolist() == [0, 0, 2, 1, 3]


BENCHMARKS = str(Path(__file__).parents[1] / "benchmarks")


def _recipe_args(**overrides):
    import argparse

    defaults = dict(regime="photo", seed=[5, 6], size=96, classes=4, max_instances=2, train=10, dev=4, val=4,
                    classifier_epochs=3, classifier_lr_step=2, icn_epochs=2, icn_lr_step=1, student_epochs=0,
                    student_rounds=1, copy_paste=0.0, paper_seeds=1, icn_seeds=1, bootstrap=10, workers=1,
                    split="val", photo=[])
    return argparse.Namespace(**{**defaults, **overrides})


def test_recipe_plans_the_readme_commands_per_seed(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    from recipe import DEFAULT, ON_PROPOSALS, PAPER_T1, RANKED, REFERENCE, REFINED, ROUND2, WITH_ICN, plan

    first = plan(tmp_path, 5, _recipe_args())
    assert [name for name, _, _ in first] == ["data", "proposals", "classifier", "default", "icn", "paper", "accuracy"]
    synth = first[0][2][0]
    assert synth[:4] == ["icn-rt", "data", "synth", str(tmp_path / "data-5")]
    assert synth[synth.index("--seed") + 1] == "5"
    assert synth[-4:] == ["--body-evidence", "0.75", "--background", "photo"]
    models = tmp_path / "models-5"
    assert first[3][2] == [["rm", "-rf", str(models / "default")], ["cp", "-r", str(models / "classifier"),
                                                                    str(models / "default")]]
    icn = first[4][2][2]
    assert icn[icn.index("--model") + 1] == str(models / "icn")
    assert icn[icn.index("--rerank") + 1] == "50" and icn[icn.index("--k") + 1] == "1"
    paper = first[5][2]
    assert paper[0] == ["rm", "-rf", str(models / "paper")]  # a stopped step starts over
    assert "--no-per-class" in paper[2] and paper[3][paper[3].index("--self-feed") + 1] == "0"
    assert "--resume" in first[2][2][0] and [step[1] for step in first[:3]] == [tmp_path / "done" / f"5-{n}" for n in
                                                                              ("data", "proposals", "classifier")]
    accuracy = first[-1][2][0]
    assert accuracy[accuracy.index("--split") + 1] == "val"
    rows = [x for x in accuracy if "=" in x and x.split("=")[0] in
            ("the paper as written", PAPER_T1, "naive PRM", REFERENCE, WITH_ICN, "student")]
    assert [r.split("=")[0] for r in rows] == ["the paper as written", PAPER_T1, "naive PRM", REFERENCE, WITH_ICN]
    assert rows[0].endswith(":T=3,score=auto,rerank=0,confidence=peak_quality") and ":T=1," in rows[1]
    assert rows[2].endswith(",agree=0,lead=teacher")  # the pipeline's own instances, unranked by a student
    assert not any(x.startswith((DEFAULT, RANKED)) for x in accuracy)  # no student: neither lead nor agreement
    assert rows[3] == f"{REFERENCE}={models / 'default'}:agree=0,lead=teacher"
    assert rows[4] == f"{WITH_ICN}={models / 'icn'}:agree=0,lead=teacher"
    second = plan(tmp_path, 6, _recipe_args(student_epochs=4, split="dev"))
    assert [name for name, _, _ in second] == ["data", "proposals", "classifier", "default", "student", "accuracy"]
    assert second[-1][1].name == "accuracy-6-dev-student" and accuracy[-1] == str(tmp_path / "accuracy-5-val-icn.json")
    student, scored = second[4][2][0], second[-1][2][0]
    assert "--resume" in student and student[student.index("--model") + 1] == str(tmp_path / "models-6" / "default")
    assert "--copy-paste" not in student  # off unless asked
    assert scored[-1].endswith("accuracy-6-dev-student.json")
    assert f"student={tmp_path / 'models-6' / 'default'}:student=1,refine=none" in scored
    assert f"{REFINED}={tmp_path / 'models-6' / 'default'}:student=1,refine=superpixels" in scored
    assert f"{ON_PROPOSALS}={tmp_path / 'models-6' / 'default'}:student=1,refine=proposals" in scored
    assert f"{RANKED}={tmp_path / 'models-6' / 'default'}:lead=teacher" in scored
    assert scored[scored.index("--row", scored.index(f"{RANKED}={tmp_path / 'models-6' / 'default'}:lead=teacher")) + 1
                  ] == f"{DEFAULT}={tmp_path / 'models-6' / 'default'}"  # the student leading: the config's way
    assert not any(x.startswith(ROUND2) for x in scored)
    third = plan(tmp_path, 7, _recipe_args(student_epochs=4, student_rounds=2, icn_seeds=0))
    models = tmp_path / "models-7"
    assert [name for name, _, _ in third] == ["data", "proposals", "classifier", "default", "student", "round2",
                                              "accuracy"]
    held_out = plan(tmp_path, 8, _recipe_args(photo=["cell", "clock"]))[0][2][0]
    assert held_out[-8:] == ["--body-evidence", "0.75", "--background", "photo", "--photo", "cell", "--photo", "clock"]
    remove, copy, taught = third[5][2]  # a copy of the classifier, taught by the first student
    assert remove == ["rm", "-rf", str(models / "round2")]
    assert copy == ["cp", "-r", str(models / "classifier"), str(models / "round2")]
    assert taught[taught.index("--model") + 1] == str(models / "round2")
    assert taught[taught.index("--from-student") + 1] == str(models / "default")
    assert taught[taught.index("--epochs") + 1] == "4"
    scored = third[-1][2][0]
    assert scored[-1].endswith("accuracy-7-val-student-round2.json")
    assert f"{ROUND2}={models / 'round2'}:student=1,refine=superpixels" in scored
    pasted = plan(tmp_path, 9, _recipe_args(student_epochs=4, student_rounds=2, copy_paste=0.5))
    taught = {name: commands[-1] for name, _, commands in pasted if name in ("student", "round2")}
    assert [c[c.index("--copy-paste") + 1] for c in taught.values()] == ["0.5", "0.5"]  # both, the chance asked


def test_recipe_runs_only_the_steps_not_done(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    from recipe import run_steps

    done, todo = tmp_path / "done", tmp_path / "todo"
    done.touch()
    log: list = []
    run_steps([("a", done, [["false"]]), ("b", todo, [["true"]])], log)
    assert todo.exists() and [entry["step"] for entry in log] == ["b"] and log[0]["commands"] == ["true"]
    with pytest.raises(subprocess.CalledProcessError):  # a failing command: the step is not marked done
        run_steps([("c", tmp_path / "never", [["true"], ["false"]])], log)
    assert not (tmp_path / "never").exists()


def test_recipe_aggregates_the_trainings():
    sys.path.insert(0, BENCHMARKS)
    from recipe import REFERENCE, aggregate, markdown

    def row(name, est, lo, hi, aps, diff=None):
        m = {"estimate": est, "interval": [lo, hi]}
        out = {"name": name, "metrics": {"mAP@0.5": m, "mAP@0.75": m}, "ap_per_class_0.5": aps}
        if diff is not None:
            out["minus_reference"] = {"mAP@0.5": {"estimate": diff[0], "interval": diff[1:]}}
        return out

    reports = {1: {"rows": [row(REFERENCE, 10.0, 8.0, 12.0, {"a": 10.0, "b": 10.0}),
                            row("default", 14.0, 11.0, 17.0, {"a": 28.0, "b": 0.0}, (4.0, 1.0, 7.0))]},
               2: {"rows": [row(REFERENCE, 20.0, 15.0, 25.0, {"a": 20.0, "b": 20.0}),
                            row("default", 18.0, 14.0, 22.0, {"a": 18.0, "b": 18.0}, (-2.0, -5.0, 1.0))]}}
    rows = aggregate(reports)
    assert rows["default"]["mAP@0.5"] == {"mean": 16.0, "sd": round(float(np.std([14.0, 18.0], ddof=1)), 2), "n": 2}
    assert rows["default"]["minus_reference"] == {"mean": 1.0, "above_0": 1, "below_0": 0, "n": 2}
    assert rows["default"]["trainings"]["1"]["classes_with_ap_0"] == ["b"]
    assert "minus_reference" not in rows[REFERENCE]
    text = markdown({"seeds": [1, 2], "regime": "part-only", "set": "s", "rows": rows, "reference": REFERENCE})
    assert "| default | 16.0 ± 2.8 (n 2) | 14.0 [11.0, 17.0]; 18.0 [14.0, 22.0] |" in text
    assert "+4.0 [1.0, 7.0]; -2.0 [-5.0, 1.0] | b; none |" in text
    assert "label areas" not in text  # none recorded: a recipe run before train student chose them
    assert "copy-paste" not in text
    pasted = markdown({"seeds": [1], "regime": "photo", "set": "s", "rows": rows, "reference": REFERENCE,
                       "classifier": "c", "copy_paste": 0.5})
    assert "(seed 1; s; c; the students with copy-paste 0.5); val;" in pasted


def test_recipe_records_each_student_label_choice(tmp_path):
    sys.path.insert(0, BENCHMARKS)
    from recipe import caption, label_choices

    for seed, chosen in ((1, {"threshold": 2.5, "area": [0.02, 0.4], "candidates": []}),
                         (2, {"threshold": 0.0, "candidates": []})):  # 2: a report from before the area was chosen
        (tmp_path / f"models-{seed}" / "default").mkdir(parents=True)
        (tmp_path / f"models-{seed}" / "default" / "student_threshold.json").write_text(json.dumps(chosen))
    labels = label_choices(tmp_path, [1, 2, 3])  # 3: no student trained
    assert labels == {"1": {"threshold": 2.5, "area": [0.02, 0.4]}, "2": {"threshold": 0.0, "area": [0.0, 1.0]}}
    doc = {"seeds": [1, 2, 3], "regime": "photo", "set": "s", "reference": "r", "student_labels": labels}
    assert caption(doc).endswith("the reference is r; the students' label areas (shares of the image) chosen on "
                                 "dev: [0.02, 0.4]; [0, 1].")
    assert caption(doc).startswith("The recipe trained from scratch on 3 sets of the photo regime (seeds 1, 2, 3; s)")
    assert caption({**doc, "seeds": [1]}).startswith("The recipe trained from scratch on 1 set of the photo regime "
                                                     "(seed 1; s)")


def _strips(width: int, height: int = 4):
    """A segment-form Proposals of ``height``×``width`` whose superpixels are 1-px columns."""
    from icn_rt.data.proposals import Proposals

    return lambda groups: Proposals.from_segments(np.tile(np.arange(width, dtype=np.int32), (height, 1)),
                                                  [np.array(g, np.int32) for g in groups], np.ones(len(groups)))


def test_label_repick_by_colour_takes_the_proposal_of_the_most_class_colour():
    """A red object (columns 0-3) on grey (columns 4-7): the class's colour model, fitted on
    a label of the object, re-picks a label holding only column 0 as the proposal of
    columns 0-3 (not the whole image, which adds grey, nor itself)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from label_repick import by_colour, colour_weights

    image = np.full((4, 8, 3), 128, np.uint8)
    image[:, :4] = (230, 30, 30)
    props = _strips(8)([[0], [0, 1, 2, 3], list(range(8))])
    fit = [("a", image, [{"class_id": 0, "score": 1.0, "mask": props.mask(1)}], props)]
    weights = colour_weights(fit, classes=1)
    red, grey = (7 * 8 + 0) * 8 + 0, (4 * 8 + 4) * 8 + 4
    assert weights[0, red] > 0 > weights[0, grey]
    label = {"class_id": 0, "score": 0.5, "mask": props.mask(0)}
    picked = by_colour([("a", image, [label], props)], weights, tau=0.1, bias=0.0)["a"][0]
    assert np.array_equal(picked["mask"], props.mask(1)) and picked["score"] == 0.5
    # τ above the object's IoU with the label (4 of 1 px: 0.25): no candidate, the label stays
    assert by_colour([("a", image, [label], props)], weights, tau=0.3, bias=0.0)["a"][0] is label


def test_label_repick_counts_right_leak_fragment_and_off_labels():
    """One 4×4 object (columns 0-3 of a 4×10 image) and five labels, best score first: the
    object itself (right), columns 0-9 (leak: covers all of it at IoU 0.4), column 0 (a
    fragment: IoU 0.25, all of it on the object), columns 6-9 (off), columns 0, 1, 4-9 (a
    leak by label_quality's rule: it covers half of the object, a quarter of it on it) and
    the object itself tagged with another class (off: no object of its class)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from label_repick import ceiling, metrics, per_image

    from icn_rt.data.voc import Instance

    props = _strips(10)([[0, 1, 2, 3], list(range(10)), [0], [6, 7, 8, 9], [0, 1, 4, 5, 6, 7, 8, 9], [0, 1, 2, 3]])

    class Truth:
        instances = [Instance(class_id=0, mask=props.mask(0))]

        def instance_masks(self):
            return np.stack([i.mask for i in self.instances])

    class Split:
        ids = ["a"]

        def ground_truth(self, image_id):
            return Truth()

    labels = [{"class_id": int(k == 5), "score": s, "mask": props.mask(k)}
              for k, s in enumerate((0.9, 0.8, 0.7, 0.6, 0.5, 0.4))]
    rows = per_image(Split(), {"a": labels})
    assert rows[0].tolist() == [1, 1, 2, 1, 2]
    m = metrics(rows)(None)
    assert m == pytest.approx({"precision": 100 / 6, "recall": 100.0, "F1": 200 / 7, "leak": 100 / 3,
                               "fragment": 100 / 6, "off": 100 / 3})
    # the ceiling replaces each label by the proposal near it (IoU >= 0.1) fitting the object best
    best = ceiling(Split(), [("a", None, labels, props)])["a"]
    assert [np.array_equal(e["mask"], props.mask(0)) for e in best] == [True, True, True, False, True, True]


def test_label_repick_by_class_map_takes_the_proposal_that_fits_the_maps_region_the_label_touches():
    """A class map of 1 over columns 0-3, 0.4 over 4-5, 0 over 6-7 and 0.6 over 8-9, and a
    label of columns 0-5 (a leak): at α 0.5 the region it touches is columns 0-3 (8-9 are
    hot too but apart), and among the proposals near it the one of columns 0-3 fits that
    region best, so it replaces the label; at α 0.3 columns 4-5 join the region, which the
    label itself then fits best, so it stays; the map of another class, cold under the
    label, leaves it too."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from label_repick import by_class_map, map_region

    props = _strips(10)([[0, 1, 2, 3], list(range(10)), [0, 1, 2, 3, 4, 5], [8, 9]])
    maps = np.zeros((2, 4, 10), np.float32)
    maps[0, :, :4], maps[0, :, 4:6], maps[0, :, 8:] = 1.0, 0.4, 0.6
    maps[1, :, 8:] = 1.0
    label = {"class_id": 0, "score": 0.5, "mask": props.mask(2)}
    assert np.array_equal(map_region(maps[0], label["mask"], 0.5), props.mask(0))
    items = [("a", None, [label], props)]
    picked = by_class_map(items, {"a": maps}, tau=0.1, alpha=0.5)["a"][0]
    assert np.array_equal(picked["mask"], props.mask(0)) and picked["score"] == 0.5
    assert np.array_equal(map_region(maps[0], label["mask"], 0.3), label["mask"])
    assert by_class_map(items, {"a": maps}, tau=0.1, alpha=0.3)["a"][0] is label
    other = dict(label, class_id=1)
    assert by_class_map([("a", None, [other], props)], {"a": maps}, tau=0.1, alpha=0.5)["a"][0] is other


def test_label_repick_by_student_snaps_the_label_to_the_proposal_its_student_mask_fits():
    """A label of columns 0-1 and a student instance of columns 0-4 (its class, score 0.9):
    among the proposals near the label (IoU >= 0.1) the one of columns 0-3 fits the
    student's mask best (IoU 0.8), so it replaces the label; a student instance of another
    class, or one scoring under 0.5, leaves the label as it is."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from label_repick import by_student

    from icn_rt.data import rle as rlelib

    props = _strips(10)([[0, 1], [0, 1, 2, 3], list(range(10)), [8, 9]])
    student = np.zeros((4, 10), bool)
    student[:, :5] = True
    label = {"class_id": 1, "score": 0.5, "mask": props.mask(0)}
    items = [("a", None, [label], props)]

    def results(class_id, score):
        return {"a": [{"class_id": class_id, "score": score, "segmentation": rlelib.encode(student)}]}

    picked = by_student(items, results(1, 0.9), tau=0.1)["a"][0]
    assert np.array_equal(picked["mask"], props.mask(1)) and picked["score"] == 0.5
    assert by_student(items, results(0, 0.9), tau=0.1)["a"][0] is label
    assert by_student(items, results(1, 0.4), tau=0.1)["a"][0] is label


def test_student_label_sets_writes_the_truth_and_the_ceiling_of_the_teachers_labels(classifier, tiny_voc, tmp_path):
    """benchmarks/student_label_sets.py on the tiny set, its teacher's labels made here as
    the ground truth's boxes filled (each a leak of its object): the truth set is the
    ground truth, instance for instance; the ceiling set keeps every label (its class and
    score) and puts in its place a proposal of the image, the one near it fitting its object
    best."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    import shutil

    from student_label_sets import write_sets

    from icn_rt.data import rle as rlelib
    from icn_rt.data.datasets import open_dataset
    from icn_rt.data.proposals import load_proposals, proposal_path
    from icn_rt.data.results import load_results, result_entry, write_results

    model = tmp_path / "model"
    shutil.copytree(classifier, model)
    (model / "student-labels").mkdir()
    for split in ("train", "val"):
        ds = open_dataset(tiny_voc, split, load_images=False)
        entries = []
        for i in ds.ids:
            for inst in ds.ground_truth(i).instances:
                ys, xs = np.nonzero(inst.mask)
                box = np.zeros_like(inst.mask)
                box[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
                entries.append(result_entry(i, inst.class_id, 0.7, box, ds.classes))
        write_results(model / "student-labels" / f"{split}.json", entries)
    sets = write_sets(tiny_voc, model, tmp_path / "work", splits=("train", "val"))
    assert sets["teacher"] == model / "student-labels"
    ds = open_dataset(tiny_voc, "train", load_images=False)
    truth = load_results(sets["truth"] / "train.json", ds.classes)
    teacher = load_results(sets["teacher"] / "train.json", ds.classes)
    top = load_results(sets["ceiling"] / "train.json", ds.classes)
    for i in ds.ids:
        gt = [inst for inst in ds.ground_truth(i).instances if not inst.difficult]
        assert [e["class_id"] for e in truth.get(i, [])] == [inst.class_id for inst in gt]
        assert all(np.array_equal(rlelib.decode(e["segmentation"]), inst.mask) for e, inst in zip(truth[i], gt))
        assert [(e["class_id"], e["score"]) for e in top.get(i, [])] == [(e["class_id"], e["score"])
                                                                         for e in teacher.get(i, [])]
        props = load_proposals(proposal_path(tiny_voc / "Proposals", i))
        for e, t in zip(top.get(i, []), teacher.get(i, [])):
            mask, label = rlelib.decode(e["segmentation"]), rlelib.decode(t["segmentation"])
            fits = [np.array_equal(mask, props.mask(k)) for k in range(len(props))]
            assert any(fits) or np.array_equal(mask, label)  # no proposal near it: the label stays


def test_accuracy_benchmark_stops_on_failed_images_instead_of_scoring_them_empty(with_icn, tiny_voc, tmp_path):
    script = Path(__file__).parents[1] / "benchmarks" / "accuracy.py"
    out = tmp_path / "accuracy.json"
    (tmp_path / "none").mkdir()  # no proposals: every image fails in the pipeline
    r = subprocess.run([sys.executable, str(script), str(tiny_voc), "--split", "val", "--bootstrap", "10",
                        "--row", f"re-ranked={with_icn[0]}:T=0", "--proposals", str(tmp_path / "none"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode != 0 and not out.exists()
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("re-ranked: 6 images failed (first: val_") and last.endswith("; no figure"), last
    assert "proposal" in last


def test_label_area_splits_the_training_labels_by_the_chosen_area_and_scores_each_side(classifier, tiny_voc,
                                                                                         tmp_path):
    """On a training image lacking a class, labels of its first object's class: the object
    itself (kept), the whole image (a leak, above the range), three of the object's pixels
    (a fragment, below it), the object again under the threshold and the object tagged with
    the class the image lacks (neither: not labels)."""
    from icn_rt.data.results import result_entry, write_results
    from icn_rt.data.voc import VOCDataset

    ds = VOCDataset(tiny_voc, "train", load_images=False)
    iid = next(i for i in ds.ids if len(ds.labels(i)) < len(ds.classes))
    obj = ds.ground_truth(iid).instances[0]
    model = tmp_path / "model"
    shutil.copytree(classifier, model)
    config = json.loads((model / "config.json").read_text())
    area = float(obj.mask.mean())
    config["student_training"] = {"threshold": 0.5, "min_area": area / 2, "max_area": 0.9}
    (model / "config.json").write_text(json.dumps(config))
    piece = np.zeros_like(obj.mask)
    piece.flat[np.flatnonzero(obj.mask)[:3]] = True
    absent = next(c for c in range(len(ds.classes)) if c not in ds.labels(iid))
    entries = [(obj.class_id, 0.9, obj.mask), (obj.class_id, 0.8, np.ones_like(obj.mask)),
               (obj.class_id, 0.7, piece), (obj.class_id, 0.1, obj.mask), (absent, 0.9, obj.mask)]
    (model / "student-labels").mkdir()
    write_results(model / "student-labels" / "train.json",
                  [result_entry(iid, c, s, m, ds.classes) for c, s, m in entries])
    out = tmp_path / "label_area.json"
    script = Path(__file__).parents[1] / "benchmarks" / "label_area.py"
    r = subprocess.run([sys.executable, str(script), "--training", f"tiny={tiny_voc},{model}", "--bootstrap", "20",
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = json.loads(out.read_text())["trainings"]["tiny"]
    assert t["area"] == [area / 2, 0.9] and t["threshold"] == 0.5
    kept, dropped = t["rows"]["kept"], t["rows"]["dropped"]
    objects = sum(len(ds.ground_truth(i).instances) for i in ds.ids)
    assert kept["labels"] == 1 and dropped["labels"] == 2
    assert {k: kept[k]["estimate"] for k in ("precision", "recall", "leak", "fragment", "off")} == pytest.approx(
        {"precision": 100, "recall": 100 / objects, "leak": 0, "fragment": 0, "off": 0})
    assert {k: dropped[k]["estimate"] for k in ("precision", "recall", "leak", "fragment", "off")} == pytest.approx(
        {"precision": 0, "recall": 0, "leak": 50, "fragment": 50, "off": 0})
    assert f"| tiny | [{area / 2:g}, 0.9] | 1 | 100.0 [" in out.with_suffix(".md").read_text()


def test_student_benchmark_reads_the_label_choice_at_its_threshold_and_area(tmp_path):
    """benchmarks/student.py's label record: the candidate chosen is the one of the chosen
    threshold *and* area (every area shares the threshold 0); a choice from before the label
    area (no ``area`` keys) is every area."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from student import _threshold

    candidates = [{"threshold": 0.0, "area": [0.0, 0.2], "precision": 0.5, "recall": 0.2},
                  {"threshold": 0.0, "area": [0.02, 0.3], "precision": 0.66, "recall": 0.36},
                  {"threshold": 0.4, "area": [0.02, 0.3], "precision": 0.7, "recall": 0.1}]
    (tmp_path / "student_threshold.json").write_text(json.dumps({"threshold": 0.0, "area": [0.02, 0.3],
                                                                 "candidates": candidates}))
    assert _threshold(tmp_path) == {"threshold": 0.0, "area": [0.02, 0.3], "precision": 0.66, "recall": 0.36}
    old = [{"threshold": 0.0, "precision": 0.4, "recall": 0.5}, {"threshold": 2.0, "precision": 0.6, "recall": 0.3}]
    (tmp_path / "student_threshold.json").write_text(json.dumps({"threshold": 2.0, "candidates": old}))
    assert _threshold(tmp_path) == {"threshold": 2.0, "area": [0.0, 1.0], "precision": 0.6, "recall": 0.3}


def test_student_cues_score_a_box_mask_and_snap_by_each_rule():
    """benchmarks/student_cues.py's cues on hand-made box masks, and each snapping rule on
    a hand-made detection: a 4×4 object, a 4×3 pasted mask from the column left of it, and
    two candidate proposals: a 4×5 block that leaks that column past the object (holding the
    pasted mask: IoU 0.6) and the object itself (IoU 0.4)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from student_cues import certainty, fit_logistic, off_border, snapped

    soft = np.zeros((4, 4))
    soft[1:3, 1:3] = [[0.5, 0.7], [0.9, 1.0]]
    soft[0, 0] = 0.4
    assert certainty(soft) == pytest.approx(0.775) and certainty(np.zeros((4, 4))) == 0
    assert off_border(soft) == pytest.approx(1 - 0.4 / 12) and off_border(np.ones((3, 3))) == 0

    def block(y0, y1, x0, x1):
        m = np.zeros((6, 8), bool)
        m[y0:y1, x0:x1] = True
        return m

    obj, leak, pasted = block(1, 5, 1, 5), block(1, 5, 0, 5), block(1, 5, 0, 3)
    det = {"class_id": 1, "mask": pasted, "cut 0.3": leak, "cut 0.7": block(1, 5, 1, 3),
           "candidates": np.stack([leak, obj]), "overlap": np.array([12 / 20, 8 / 20]),
           "consensus": np.array([1.0, 81.0])}
    truth = (obj[None], np.array([1]))
    assert (snapped(det, "shipped", truth) == leak).all() and (snapped(det, "pasted", truth) == pasted).all()
    assert (snapped(det, "cut at 0.3", truth) == leak).all()
    assert (snapped(det, "cut at 0.7", truth) == obj).all()  # its 8 px: IoU 0.4 with the leak, 0.5 with the object
    assert (snapped(det, "consensus^0.25", truth) == obj).all()  # 0.4 × 3 > 0.6 × 1
    assert (snapped(det, "oracle", truth) == obj).all()
    assert (snapped(det, "oracle", (obj[None], np.array([0]))) == leak).all()  # no object of its class: as shipped
    assert (snapped(dict(det, candidates=np.zeros((0, 6, 8), bool)), "oracle", truth) == pasted).all()
    x = np.array([[-2.0], [-1.0], [1.0], [2.0], [-0.5], [0.5]])
    w = fit_logistic(x, np.array([0, 0, 1, 1, 1, 0], np.float64))
    assert w[0] > 0 and len(w) == 2
