import numpy as np
import pytest

from icn_rt.data.synth import MIN_PART_VISIBLE, PARTS, SynthConfig, render
from icn_rt.data.voc import VOCDataset
from tests.conftest import TINY

CFG = SynthConfig(size=96, classes=5, seed=3)
PHOTO = SynthConfig(size=96, classes=5, seed=3, background="photo", body_evidence=0.75)


def test_deterministic_per_image():
    a, b = render(CFG, "val", 5), render(CFG, "val", 5)
    np.testing.assert_array_equal(a.image, b.image)
    assert [i.class_id for i in a.instances] == [i.class_id for i in b.instances]
    assert not np.array_equal(render(CFG, "val", 6).image, a.image)
    assert not np.array_equal(render(CFG, "train", 5).image, a.image)
    assert not np.array_equal(render(SynthConfig(size=96, classes=5, seed=4), "val", 5).image, a.image)


@pytest.mark.parametrize("regime", ["plain", "photo"])
def test_scene_properties(regime):
    """Instances: 1-4, disjoint, each with its class part visible and small, coloured as its
    class; in the photo regime too (its objects are drawn and annotated as the plain ones)."""
    config, colour_share = (CFG, 0.95) if regime == "plain" else (PHOTO, 0.9)
    counts, part_fraction, colour_error = [], [], []
    for i in range(40):
        s = render(config, "train", i)
        counts.append(len(s.instances))
        union = np.zeros(s.image.shape[:2], int)
        for inst, part in zip(s.instances, s.parts):
            union += inst.mask
            assert (part <= inst.mask).all()
            assert part.sum() > 0
            assert inst.mask.sum() >= 0.45 * 40  # never below the visible share of the smallest object
            part_fraction.append(part.sum() / inst.mask.sum())
            colour_error.append(np.abs(np.median(s.image[part], 0) - PARTS[inst.class_id][1]).max())
        assert union.max() <= 1
    assert min(counts) >= 1 and max(counts) <= 4 and len(set(counts)) >= 3
    assert np.median(part_fraction) < 0.3  # the discriminative part is a small piece of the object
    # the part wears its class colour (up to jitter, edge blur and occluders)
    assert np.mean(np.array(colour_error) < 35) >= colour_share


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


# --- the photo regime -----------------------------------------------------------------

def _write_photo(path, pattern: str):
    """A 200x240 photo file: ``flat`` grey or vertical black/white ``stripes`` 4 px wide."""
    from icn_rt.data.images import write_image

    image = np.full((200, 240, 3), 128, np.uint8)
    if pattern == "stripes":
        image[:, (np.arange(240) // 4) % 2 == 0] = 0
        image[:, (np.arange(240) // 4) % 2 == 1] = 255
    write_image(path, image)
    return str(path)


def test_photo_regime_deterministic_per_seed():
    from dataclasses import replace

    a, b = render(PHOTO, "val", 2), render(PHOTO, "val", 2)
    np.testing.assert_array_equal(a.image, b.image)
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.instances, b.instances))
    assert not np.array_equal(render(replace(PHOTO, seed=4), "val", 2).image, a.image)
    assert not np.array_equal(render(PHOTO, "val", 3).image, a.image)
    # the plain regime of the same seed draws other scenes
    assert not np.array_equal(render(replace(PHOTO, background="plain"), "val", 2).image, a.image)


def test_photo_backgrounds_come_from_the_photos(tmp_path):
    """The same scenes over a flat and a striped photo: same objects and annotations, and
    the striped photo shows through wherever no object is (strong edges)."""
    flat = SynthConfig(size=96, classes=5, seed=3, background="photo",
                       photos=(_write_photo(tmp_path / "f.png", "flat"),))
    striped = SynthConfig(size=96, classes=5, seed=3, background="photo",
                          photos=(_write_photo(tmp_path / "s.png", "stripes"),))
    edges = {}
    for name, config in (("flat", flat), ("striped", striped)):
        energy = []
        for i in range(6):
            s = render(config, "val", i)
            background = ~np.any([inst.mask for inst in s.instances], axis=0)
            grey = s.image.astype(np.float32).mean(2)
            dx, dy = np.abs(np.diff(grey, axis=1))[:-1, :], np.abs(np.diff(grey, axis=0))[:, :-1]
            energy.append((dx + dy)[background[:-1, :-1]].mean())
            if name == "flat":
                edges.setdefault("masks", []).append([(x.class_id, x.mask) for x in s.instances])
            else:
                assert [(c, m.tobytes()) for c, m in edges["masks"][i]] == \
                       [(x.class_id, x.mask.tobytes()) for x in s.instances]
        edges[name] = float(np.mean(energy))
    assert edges["striped"] > 3 * edges["flat"]


def test_photo_settings_are_checked(tmp_path):
    from icn_rt.data import photos
    from icn_rt.errors import InputError

    with pytest.raises(ValueError, match="background must be one of"):
        SynthConfig(background="studio")
    with pytest.raises(ValueError, match="photos are for background 'photo'"):
        SynthConfig(photos=("astronaut",))
    with pytest.raises(InputError, match="nosuch: not a photo file"):
        SynthConfig(background="photo", photos=("nosuch",))
    with pytest.raises(InputError, match="gone.png: photo not found"):
        SynthConfig(background="photo", photos=(str(tmp_path / "gone.png"),))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty: holds no image"):
        SynthConfig(background="photo", photos=(str(tmp_path / "empty"),))
    folder = tmp_path / "photos"
    folder.mkdir()
    b, a = _write_photo(folder / "b.png", "flat"), _write_photo(folder / "a.png", "stripes")
    (folder / "notes.txt").write_text("not a photo")
    assert SynthConfig(background="photo", photos=(str(folder), "coffee")).photo_names == (a, b, "coffee")
    assert SynthConfig(background="photo").photo_names == photos.DEV_PHOTOS
    assert not set(photos.DEV_PHOTOS) & set(photos.HELD_OUT_PHOTOS)


def test_every_named_photo_ships_with_scikit_image():
    """No download: each named photo loads from the installed wheel as RGB."""
    from icn_rt.data import photos

    for name in photos.DEV_PHOTOS + photos.HELD_OUT_PHOTOS:
        image = photos.load(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) >= 100


@pytest.mark.parametrize("config, digest", [
    (SynthConfig(), "3a37467a33ddd46f7a8457d17bde1a94fa634a5f69d9e553f6455bf8ba4acad6"),
    (SynthConfig(body_evidence=0.75, size=160, classes=6, seed=3),
     "eaca2cb288a8e2292b640265f0c61642b70d5ce9871ae53399f15868f9b313db"),
])
def test_plain_regimes_draw_the_images_of_earlier_versions(config, digest):
    """Part-only and VOC-like images and masks, bit for bit those drawn before the photo
    regime existed (digests taken with that renderer)."""
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "val"):
        for i in range(3):
            s = render(config, split, i)
            h.update(s.image.tobytes())
            for inst in s.instances:
                h.update(inst.mask.tobytes())
    assert h.hexdigest() == digest
