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
