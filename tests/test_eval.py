import contextlib
import io

import numpy as np
import pytest

from icn_rt.data import rle
from icn_rt.data.results import load_results, result_entry, write_results
from icn_rt.data.voc import VOCDataset
from icn_rt.errors import InputError
from icn_rt.eval.instance import InstanceEvaluator, mask_iou, voc_ap
from icn_rt.eval.report import evaluate
from icn_rt.eval.semantic import SemanticEvaluator, merge_instances


def box(shape, y0, x0, y1, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_iou():
    a = np.stack([box((10, 10), 0, 0, 4, 5), box((10, 10), 0, 0, 0, 0)])
    b = np.stack([box((10, 10), 2, 0, 6, 5)])
    np.testing.assert_allclose(mask_iou(a, b), [[10 / 30], [0.0]])


def test_voc_ap_by_hand():
    # ranks TP, FP, TP of 2 positives: precision 1, .5, 2/3 at recall .5, .5, 1
    assert voc_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_known_ap_case():
    s = (8, 8)
    g1, g2 = box(s, 0, 0, 4, 4), box(s, 4, 4, 8, 8)
    ev = InstanceEvaluator(2, (0.5,))
    # class 0: TP (0.9), FP on background (0.8), TP (0.7) -> AP = 0.5*1 + 0.5*(2/3)
    preds = np.stack([g1, box(s, 0, 5, 2, 8), g2])
    ev.add(preds, [0, 0, 0], [0.9, 0.8, 0.7], np.stack([g1, g2]), [0, 0])
    # class 1: one GT, found at IoU 0.5 exactly (counts: >= t) only by the lower-scored prediction
    g3 = box(s, 0, 0, 2, 8)
    ev.add(np.stack([box(s, 6, 0, 8, 8), box(s, 0, 0, 2, 4)]), [1, 1], [0.6, 0.5], g3[None], [1])
    r = ev.result()
    np.testing.assert_allclose(r["ap"][0.5], [0.5 + 0.5 * 2 / 3, 0.5])
    assert r["map"][0.5] == pytest.approx((0.5 + 1 / 3 + 0.5) / 2)
    # ABO: g1, g2 found exactly, g3 at 0.5
    assert r["abo"] == pytest.approx((1 + 1 + 0.5) / 3)


def test_duplicate_detection_does_not_fall_back_to_second_gt():
    """chainercv/VOC rule: a prediction whose best GT is taken is a false positive, even
    if it overlaps another free GT above the threshold."""
    s = (4, 10)
    g1, g2 = box(s, 0, 0, 4, 5), box(s, 0, 4, 4, 10)
    pred = box(s, 0, 1, 4, 6)  # IoU 4/6 with g1 (best), 2/8 with g2
    ev = InstanceEvaluator(1, (0.25,))
    ev.add(np.stack([g1, pred]), [0, 0], [0.9, 0.8], np.stack([g1, g2]), [0, 0])
    assert ev.result()["ap"][0.25][0] == pytest.approx(0.5)


def test_difficult_is_ignored_by_default():
    s = (6, 6)
    easy, hard = box(s, 0, 0, 3, 3), box(s, 3, 3, 6, 6)
    args = (np.stack([hard, easy]), [0, 0], [0.9, 0.8], np.stack([easy, hard]), [0, 0], [False, True])
    ev = InstanceEvaluator(1, (0.5,))
    ev.add(*args)
    assert ev.result()["ap"][0.5][0] == pytest.approx(1.0)
    ev = InstanceEvaluator(1, (0.5,), count_difficult=True)
    ev.add(*args)
    assert ev.result()["ap"][0.5][0] == pytest.approx(1.0)
    ev = InstanceEvaluator(1, (0.5,), count_difficult=True)
    ev.add(np.stack([easy]), [0], [0.8], np.stack([easy, hard]), [0, 0], [False, True])
    assert ev.result()["ap"][0.5][0] == pytest.approx(0.5)


def test_classes_without_gt_are_not_averaged_and_missed_classes_score_zero():
    s = (4, 4)
    ev = InstanceEvaluator(3, (0.5,))
    ev.add(np.stack([box(s, 0, 0, 2, 2)]), [2], [1.0], np.stack([box(s, 0, 0, 2, 2), box(s, 2, 2, 4, 4)]), [0, 1])
    ap = ev.result()["ap"][0.5]
    assert ap[0] == 0 and ap[1] == 0 and np.isnan(ap[2])
    assert ev.result()["map"][0.5] == 0


def test_semantic():
    gt = np.array([[0, 1, 1], [2, 2, 255]], np.uint8)
    pred = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    ev = SemanticEvaluator(2)
    ev.add(pred, gt)
    r = ev.result()
    np.testing.assert_allclose(r["iou"], [1.0, 0.5, 2 / 3])
    assert r["miou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)


def test_merge_instances_higher_score_wins():
    s = (2, 3)
    a, b = box(s, 0, 0, 2, 2), box(s, 0, 1, 2, 3)
    np.testing.assert_array_equal(merge_instances(np.stack([a, b]), [0, 1], [0.9, 0.1], s), [[1, 1, 2], [1, 1, 2]])
    np.testing.assert_array_equal(merge_instances(np.stack([a, b]), [0, 1], [0.1, 0.9], s), [[1, 2, 2], [1, 2, 2]])


def _gt_results(root, split="val"):
    ds = VOCDataset(root, split, load_images=False)
    return [result_entry(s.image_id, i.class_id, 1.0, i.mask, ds.classes) for s in ds for i in s.instances]


def test_ground_truth_scores_100(tiny_voc, tmp_path):
    write_results(tmp_path / "gt.json", _gt_results(tiny_voc))
    r = evaluate(tiny_voc, tmp_path / "gt.json", progress=False)
    assert all(v == pytest.approx(1.0) for v in r.map.values())
    assert r.abo == pytest.approx(1.0) and r.miou == pytest.approx(1.0)
    assert r.predictions == r.instances > 0


def test_results_validation(tiny_voc, tmp_path):
    entries = _gt_results(tiny_voc)
    bad = dict(entries[0], category_id=99)
    write_results(tmp_path / "r.json", [bad])
    with pytest.raises(InputError, match=r"r.json: entry 0: category_id 99 is not in 1..3"):
        evaluate(tiny_voc, tmp_path / "r.json", progress=False)
    (tmp_path / "s.json").write_text("{not json")
    with pytest.raises(InputError, match="s.json: not valid JSON"):
        load_results(tmp_path / "s.json", ("a",))
    wrong = dict(entries[0], segmentation=rle.encode(np.zeros((5, 5), bool)))
    write_results(tmp_path / "t.json", [wrong])
    with pytest.raises(InputError, match=r"RLE size \[5, 5\] differs from the image's \[64, 64\]"):
        evaluate(tiny_voc, tmp_path / "t.json", progress=False)
    named = [{k: v for k, v in e.items() if k != "category_id"} for e in entries]
    write_results(tmp_path / "n.json", named + [dict(entries[0], image_id="elsewhere")])
    r = evaluate(tiny_voc, tmp_path / "n.json", progress=False)
    assert r.map[0.5] == pytest.approx(1.0) and r.ignored_images == ["elsewhere"]


def test_agrees_with_pycocotools_on_a_random_case():
    """AP@0.5 vs COCOeval: GT instances in separate cells, so the two matching rules pick
    the same pairs; what remains is COCO's 101-point interpolation."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(11)
    shape, cell, n_classes = (96, 96), 24, 3
    ev = InstanceEvaluator(n_classes, (0.5,))
    images, anns, dets = [], [], []
    for img in range(12):
        gms, gls, pms, pls, pss = [], [], [], [], []
        for cy in range(0, 96, cell):
            for cx in range(0, 96, cell):
                label = int(rng.integers(n_classes))
                h, w = rng.integers(6, 16, 2)
                y, x = cy + rng.integers(0, cell - h), cx + rng.integers(0, cell - w)
                has_gt = rng.random() < 0.7
                if has_gt:
                    gms.append(box(shape, y, x, y + h, x + w))
                    gls.append(label)
                for _ in range(rng.integers(0, 3)):  # detections near the cell's GT, or stray
                    dy, dx = rng.integers(-2, 3, 2)
                    y0, x0 = np.clip([y + dy, x + dx], [cy, cx], [cy + cell - h, cx + cell - w])
                    pms.append(box(shape, y0, x0, y0 + h, x0 + w))
                    pls.append(label if rng.random() < 0.85 else int(rng.integers(n_classes)))
                    pss.append(float(rng.random()))
        gm = np.stack(gms) if gms else np.zeros((0, *shape), bool)
        pm = np.stack(pms) if pms else np.zeros((0, *shape), bool)
        ev.add(pm, pls, pss, gm, gls)
        images.append({"id": img, "height": shape[0], "width": shape[1]})
        for m, lab in zip(gms, gls):
            r = rle.encode(m)
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": lab + 1, "segmentation": r,
                         "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0})
        for m, lab, sc in zip(pms, pls, pss):
            dets.append({"image_id": img, "category_id": lab + 1, "segmentation": rle.encode(m), "score": sc})
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(n_classes)]}
        coco.createIndex()
        ce = COCOeval(coco, coco.loadRes(dets), "segm")
        ce.params.iouThrs = np.array([0.5])
        ce.params.maxDets = [100]
        ce.params.areaRng, ce.params.areaRngLbl = [[0, 1e10]], ["all"]
        ce.evaluate()
        ce.accumulate()
    coco_ap = ce.eval["precision"][0, :, :, 0, 0].mean(0)  # per class
    ours = ev.result()["ap"][0.5]
    assert 0.2 < ours.mean() < 0.9  # a non-trivial case
    np.testing.assert_allclose(ours, coco_ap, atol=0.01)


def _random_image(rng, shape=(24, 24), n_classes=2):
    """Ground truth in separate cells and noisy predictions (distinct scores) of one image."""
    gms, gls, pms, pls, pss = [], [], [], [], []
    for cy in (0, 12):
        for cx in (0, 12):
            label = int(rng.integers(n_classes))
            if rng.random() < 0.8:
                gms.append(box(shape, cy + 2, cx + 2, cy + 9, cx + 9))
                gls.append(label)
            for _ in range(rng.integers(0, 3)):
                d = int(rng.integers(-3, 4))
                pms.append(box(shape, cy + 2 + d, cx + 2, cy + 9 + d, cx + 9))
                pls.append(label if rng.random() < 0.8 else 1 - label)
                pss.append(float(rng.random()))
    stack = (lambda ms: np.stack(ms) if ms else np.zeros((0, *shape), bool))
    return stack(pms), pls, pss, stack(gms), gls


def test_image_weights_equal_repeating_the_images():
    rng = np.random.default_rng(5)
    images = [_random_image(rng) for _ in range(6)]
    weights = np.array([1, 3, 0, 2, 1, 1])
    weighted, repeated = InstanceEvaluator(2), InstanceEvaluator(2)
    sw, sr = SemanticEvaluator(2), SemanticEvaluator(2)
    for image, w in zip(images, weights):
        pm, pl, ps, gm, gl = image
        weighted.add(pm, pl, ps, gm, gl)
        sw.add(merge_instances(pm, np.array(pl), np.array(ps), (24, 24)), merge_instances(gm, np.array(gl),
                                                                                         np.ones(len(gl)), (24, 24)))
        for _ in range(w):
            repeated.add(pm, pl, ps, gm, gl)
            sr.add(merge_instances(pm, np.array(pl), np.array(ps), (24, 24)),
                   merge_instances(gm, np.array(gl), np.ones(len(gl)), (24, 24)))
    got, want = weighted.result(weights), repeated.result()
    for t in want["ap"]:
        np.testing.assert_allclose(got["ap"][t], want["ap"][t], rtol=1e-12)
    assert 0 < want["map"][0.5] < 1 and got["abo"] == pytest.approx(want["abo"], rel=1e-12)
    np.testing.assert_array_equal(sw.result(weights)["iou"], sr.result()["iou"])
    # all weights one is the plain result, bit for bit
    assert weighted.result(np.ones(6, np.int64))["ap"][0.5].tolist() == weighted.result()["ap"][0.5].tolist()


def test_bootstrap_interval_of_a_known_case():
    """One class, two images with one object each: found in the first, missed in the
    second. A draw of both images scores 50, two copies of the first 100, of the second 0
    (probabilities 1/2, 1/4, 1/4), so the 95% interval is [0, 100] around 50."""
    from icn_rt.eval.bootstrap import bootstrap

    s = (8, 8)
    g = box(s, 2, 2, 6, 6)
    ev = InstanceEvaluator(1, (0.5,))
    ev.add(g[None], [0], [0.9], g[None], [0])
    ev.add(np.zeros((0, *s), bool), [], [], g[None], [0])
    got = bootstrap(lambda w: {"mAP": 100 * ev.result(w)["map"][0.5]}, ev.num_images, samples=400, seed=1)["mAP"]
    assert (got.estimate, got.low, got.high) == (50.0, 0.0, 100.0)
    # identical images: every draw is the same, the interval has no width
    same = InstanceEvaluator(1, (0.5,))
    for _ in range(5):
        same.add(g[None], [0], [0.9], g[None], [0])
    got = bootstrap(lambda w: {"mAP": 100 * same.result(w)["map"][0.5]}, 5, samples=50)["mAP"]
    assert (got.estimate, got.low, got.high) == (100.0, 100.0, 100.0)


def test_paired_comparison(tiny_voc, tmp_path):
    entries = _gt_results(tiny_voc)
    write_results(tmp_path / "gt.json", entries)
    ids = sorted({e["image_id"] for e in entries})
    write_results(tmp_path / "half.json", [e for e in entries if e["image_id"] in ids[::2]])
    # the same file against itself: a difference of exactly 0 in every draw
    r = evaluate(tiny_voc, tmp_path / "gt.json", progress=False, samples=100, against=tmp_path / "gt.json")
    for d in r.against["difference"].values():
        assert d["estimate"] == 0 and d["interval"] == [0, 0] and d["excludes_zero"] is False
    # ground truth against ground truth on half the images: better in every draw
    r = evaluate(tiny_voc, tmp_path / "gt.json", progress=False, samples=200, against=tmp_path / "half.json")
    assert r.intervals["mAP@0.5"].estimate == pytest.approx(100) and r.intervals["mAP@0.5"].low == pytest.approx(100)
    half = r.against["metrics"]["mAP@0.5"]
    diff = r.against["difference"]["mAP@0.5"]
    assert diff["estimate"] == pytest.approx(100 - half["estimate"]) and diff["excludes_zero"]
    assert 0 < diff["interval"][0] <= diff["estimate"] <= diff["interval"][1]
    doc = r.to_json()
    assert doc["bootstrap"]["samples"] == 200 and set(doc["bootstrap"]["intervals"]) == {
        "mAP@0.25", "mAP@0.5", "mAP@0.75", "ABO", "mIoU"}
    with pytest.raises(ValueError, match="needs bootstrap samples"):
        evaluate(tiny_voc, tmp_path / "gt.json", progress=False, against=tmp_path / "half.json")


def test_eval_cli_prints_intervals_and_the_difference(tiny_voc, tmp_path):
    from typer.testing import CliRunner

    from icn_rt.cli import app

    entries = _gt_results(tiny_voc)
    write_results(tmp_path / "gt.json", entries)
    write_results(tmp_path / "some.json", entries[::2])
    r = CliRunner().invoke(app, ["eval", str(tiny_voc), str(tmp_path / "gt.json"), "--bootstrap", "100", "--against",
                                 str(tmp_path / "some.json"), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    assert "95% bootstrap intervals (100 draws" in r.output and "difference" in r.output
    assert "100.0 [100.0, 100.0]" in r.output
    import json

    assert json.loads((tmp_path / "m.json").read_text())["against"]["results"] == str(tmp_path / "some.json")


def _noisy_results(root, split="val", seed=5):
    """The split's ground truth made imperfect: masks shifted by up to 3 px, random scores,
    a fifth of the objects missed, a wrong-class copy of some and a stray box per image."""
    rng = np.random.default_rng(seed)
    ds = VOCDataset(root, split, load_images=False)
    entries = []
    for s in ds:
        for inst in s.instances:
            if rng.random() < 0.2:
                continue
            mask = np.roll(inst.mask, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            entries.append(result_entry(s.image_id, inst.class_id, float(rng.random()), mask, ds.classes))
            if rng.random() < 0.3:
                entries.append(result_entry(s.image_id, (inst.class_id + 1) % len(ds.classes), float(rng.random()),
                                            mask, ds.classes))
        h, w = s.semantic.shape
        entries.append(result_entry(s.image_id, int(rng.integers(len(ds.classes))), float(rng.random()),
                                    box((h, w), 5, 5, 20, 30), ds.classes))
    return entries


def test_eval_prints_cocos_metrics_as_pycocotools_computes_them(tiny_voc, tmp_path):
    """COCO AP/AP50/AP75/APs/m/l of `icn-rt eval` against COCOeval run here directly on the
    results file and a COCO ground truth written from the VOC annotations."""
    import json

    from pycocotools import mask as cocomask
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    from typer.testing import CliRunner

    from icn_rt.cli import app

    write_results(tmp_path / "r.json", _noisy_results(tiny_voc))
    r = CliRunner().invoke(app, ["eval", str(tiny_voc), str(tmp_path / "r.json"), "--json", str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    ours = json.loads((tmp_path / "m.json").read_text())["COCO"]

    ds = VOCDataset(tiny_voc, "val", load_images=False)
    images, anns = [], []
    for s in ds:
        h, w = s.semantic.shape
        images.append({"id": s.image_id, "height": h, "width": w})
        for inst in s.instances:
            code = cocomask.encode(np.asfortranarray(inst.mask.astype(np.uint8)))
            anns.append({"id": len(anns) + 1, "image_id": s.image_id, "category_id": inst.class_id + 1,
                         "segmentation": code, "area": float(inst.mask.sum()), "bbox": list(cocomask.toBbox(code)),
                         "iscrowd": 0})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(3)]}
        gt.createIndex()
        run = COCOeval(gt, gt.loadRes(str(tmp_path / "r.json")), "segm")
        run.evaluate()
        run.accumulate()
        run.summarize()
    want = dict(zip(["AP", "AP50", "AP75", "APs", "APm", "APl"], run.stats[:6]))
    assert 20 < ours["AP50"] < 95 and ours["AP"] < ours["AP50"]  # a case that is neither trivial nor empty
    for name, value in want.items():
        if value < 0:  # no ground truth in that area range
            assert ours[name] is None, name
        else:
            assert ours[name] == pytest.approx(100 * value, abs=1e-9), name
    line = next(row for row in r.output.splitlines() if row.startswith("COCO segm"))
    assert f"AP50 {ours['AP50']:.1f}" in line and f"AP75 {ours['AP75']:.1f}" in line


def test_cocos_metrics_ignore_difficult_objects_unless_counted():
    from icn_rt.eval.coco import CocoAccumulator

    shape = (40, 40)
    gt = np.stack([box(shape, 2, 2, 12, 12), box(shape, 20, 20, 34, 34)])
    found = box(shape, 2, 2, 12, 12)[None]
    for count, want in ((False, 100.0), (True, 50.0)):
        acc = CocoAccumulator(1, count_difficult=count)
        # the difficult object is not found: ignored, AP 100; counted, a miss halves recall
        acc.add(shape, rle.encode_many(gt), [0, 0], [False, True], rle.encode_many(found), [0], [0.9])
        assert acc.result()["AP50"] == pytest.approx(want, abs=1.0)
    assert np.isnan(CocoAccumulator(1).result()["AP"])  # nothing added: no metric
