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
