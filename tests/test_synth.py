import numpy as np
import pytest

from icn_rt.data.synth import MIN_PART_VISIBLE, PARTS, SynthConfig, render
from icn_rt.data.voc import VOCDataset
from tests.conftest import TINY

CFG = SynthConfig(size=96, classes=5, seed=3)


def test_deterministic_per_image():
    a, b = render(CFG, "val", 5), render(CFG, "val", 5)
    np.testing.assert_array_equal(a.image, b.image)
    assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
    assert not np.array_equal(render(CFG, "val", 6).image, a.image)
    assert not np.array_equal(render(CFG, "train", 5).image, a.image)
    assert not np.array_equal(render(SynthConfig(size=96, classes=5, seed=4), "val", 5).image, a.image)


def test_scene_properties():
    """Instances: 1-4, disjoint, each with its class part visible and small, coloured as its class."""
    counts, part_fraction, colour_error = [], [], []
    for i in range(40):
        s = render(CFG, "train", i)
        counts.append(len(s.instances))
        union = np.zeros(s.image.shape[:2], int)
        for inst, part in zip(s.instances, s.parts):
            union += inst.mask
            assert (part <= inst.mask).all()
            assert part.sum() > 0
            part_fraction.append(part.sum() / inst.mask.sum())
            colour_error.append(np.abs(np.median(s.image[part], 0) - PARTS[inst.class_id][1]).max())
        assert union.max() <= 1
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3
    assert np.median(part_fraction) < 0.3  # the discriminative part is a small piece of the object
    # the part wears its class colour (up to jitter, edge blur and thin occluders)
    assert np.mean(np.array(colour_error) < 35) >= 0.95


def test_config_validation():
    with pytest.raises(ValueError, match="classes"):
        SynthConfig(classes=9)
    with pytest.raises(ValueError, match="size"):
        SynthConfig(size=16)
    with pytest.raises(ValueError, match="image counts"):
        SynthConfig(val=-1)


def test_generated_dataset_reads_back(tiny_voc):
    val = VOCDataset(tiny_voc, "val")
    assert len(val) == TINY.val and len(VOCDataset(tiny_voc, "train")) == TINY.train
    assert len(VOCDataset(tiny_voc, "trainval")) == TINY.train + TINY.val
    assert val.classes == TINY.class_names
    for i, sample in enumerate(val):
        expected = render(TINY, "val", i)
        assert sample.image.shape == (64, 64, 3)
        np.testing.assert_array_equal(sample.labels, sorted({inst.class_id for inst in expected.instances}))
        assert len(sample.instances) == len(expected.instances)
        for got, want in zip(sample.instances, expected.instances):
            assert got.class_id == want.class_id
            np.testing.assert_array_equal(got.mask, want.mask)
    assert MIN_PART_VISIBLE > 0.5


def _body_hues(config: SynthConfig, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(class, hue angle of the mean colour of the visible body) of every object of ``n`` images."""
    import cv2

    classes, angles = [], []
    for i in range(n):
        s = render(config, "train", i)
        for inst, part in zip(s.instances, s.parts):
            body = inst.mask & ~part
            if body.sum() < 20:
                continue
            mean = s.image[body].mean(0).astype(np.uint8)[None, None]
            hue = cv2.cvtColor(mean, cv2.COLOR_RGB2HSV)[0, 0, 0]
            classes.append(inst.class_id)
            angles.append(2 * np.pi * hue / 180)
    return np.array(classes), np.array(angles)


def _hue_accuracy(classes: np.ndarray, angles: np.ndarray, n_classes: int) -> float:
    """Nearest class centroid on the hue circle, fitted on half the bodies, scored on the rest."""
    vec = np.stack([np.cos(angles), np.sin(angles)], 1)
    fit, test = np.arange(len(vec)) % 2 == 0, np.arange(len(vec)) % 2 == 1
    centroids = np.stack([vec[fit & (classes == c)].mean(0) for c in range(n_classes)])
    return float(((vec[test] @ centroids.T).argmax(1) == classes[test]).mean())


def test_body_evidence_makes_bodies_class_conditional_only_above_zero():
    from dataclasses import replace

    part_only = _hue_accuracy(*_body_hues(CFG, 60), 5)
    voc_like = _hue_accuracy(*_body_hues(replace(CFG, body_evidence=1.0), 60), 5)
    assert part_only < 0.45 < 0.9 < voc_like  # chance is 0.2
    assert _hue_accuracy(*_body_hues(replace(CFG, body_evidence=0.5), 60), 5) > 0.45
    # at 0 the knob changes nothing: the images of the default regime, bit for bit
    for i in range(5):
        np.testing.assert_array_equal(render(replace(CFG, body_evidence=0.0), "val", i).image,
                                      render(SynthConfig(size=96, classes=5, seed=3), "val", i).image)
    with pytest.raises(ValueError, match="body_evidence"):
        SynthConfig(body_evidence=1.5)


def test_distractor_bodies_off_keeps_the_objects():
    from dataclasses import replace

    differ = 0
    for i in range(10):
        a, b = render(CFG, "val", i), render(replace(CFG, distractor_bodies=False), "val", i)
        assert [x.class_id for x in a.instances] == [x.class_id for x in b.instances]
        assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.instances, b.instances))
        differ += not np.array_equal(a.image, b.image)
    assert differ >= 2  # a part-less body is drawn in about half the images


def test_dev_split_is_drawn_apart(tiny_voc):
    dev = VOCDataset(tiny_voc, "dev", load_images=False)
    assert dev.ids == ["dev_000000", "dev_000001"] and not set(dev.ids) & set(VOCDataset(tiny_voc, "val").ids)
    assert not np.array_equal(render(TINY, "dev", 0).image, render(TINY, "val", 0).image)
    assert len(VOCDataset(tiny_voc, "trainval")) == TINY.train + TINY.val
