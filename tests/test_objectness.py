"""Objectness re-ranking (MatchingSettings.rerank) against the plain reference."""

import cv2
import numpy as np
import pytest

from icn_rt.data.proposals import Proposals
from icn_rt.matching import MatchingSettings, match, score_proposals
from icn_rt.matching.instances import InstanceSettings, confidence
from icn_rt.matching.objectness import consensus, mask_contrast, objectness, rerank
from tests import reference as ref


def _scene(rng, shape=(40, 36)):
    """An image of a few flat blobs on a noisy background and segment proposals over a
    random superpixel map that follows the blobs."""
    image = rng.integers(90, 110, size=(*shape, 3)).astype(np.uint8)
    sp = np.zeros(shape, np.int64)
    for k, (y, x, r, colour) in enumerate([(10, 10, 7, (200, 30, 30)), (28, 22, 9, (30, 60, 200)),
                                           (12, 27, 5, (40, 180, 60))]):
        yy, xx = np.ogrid[:shape[0], :shape[1]]
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= r * r
        image[disc] = colour
        sp[disc] = 1 + 2 * k
        sp[disc & (xx >= x)] = 2 + 2 * k
    sp[rng.random(shape) < 0.05] = 7
    groups = [np.unique(rng.choice(8, size=rng.integers(1, 4))) for _ in range(30)]
    groups += [np.array([1, 2]), np.array([3, 4]), np.array([5, 6]), np.array([1, 2, 3, 4])]
    return image, Proposals.from_segments(sp, groups, np.linspace(1, 0, len(groups)))


@pytest.mark.parametrize("form", ["segments", "masks"])
def test_objectness_equals_reference(form):
    image, props = _scene(np.random.default_rng(0))
    if form == "masks":
        props = Proposals.from_masks(props.to_masks(), props.scores)
    candidates = np.array([0, 3, 30, 31, 32, 33, 5])
    want = ref.objectness(image, props.to_masks(), candidates)
    got = objectness(image, props, candidates)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert (want > 0).any() and len(np.unique(want)) > 3  # the case tells candidates apart


def test_whole_object_beats_fragment_and_leak():
    image = np.full((48, 48, 3), 120, np.uint8)
    square = np.zeros((48, 48), bool)
    square[10:30, 10:30] = True
    image[square] = (220, 40, 40)
    nearly = square.copy()
    nearly[10, 10] = False
    half = square.copy()
    half[:, 20:] = False
    leak = square.copy()
    leak[10:30, 30:40] = True
    props = Proposals.from_masks(np.stack([half, square, leak, nearly]), np.ones(4))
    got = objectness(image, props, np.arange(4))
    # the square: inside all red, its ring all grey (distance 1), two proposals agree with it
    assert got[1] == pytest.approx(np.sqrt(2))
    assert got.argmax() == 1 and got[0] < got[1] and got[2] < got[1]


@pytest.mark.parametrize("form", ["segments", "masks"])
def test_consensus_counts_the_proposals_that_agree_with_each(form):
    image, props = _scene(np.random.default_rng(3))
    if form == "masks":
        props = Proposals.from_masks(props.to_masks(), props.scores)
    candidates = np.array([30, 31, 32, 33, 0, 7])
    want = ref.consensus(props.to_masks(), candidates)
    np.testing.assert_array_equal(consensus(props, candidates), want)
    assert want.min() >= 1 and len(np.unique(want)) > 1  # each agrees with itself; the case tells them apart
    # a 20×20 square, its half, a leak of 200 px (IoU 400/600 < 0.7) and the square less one pixel
    square = np.zeros((48, 48), bool)
    square[10:30, 10:30] = True
    half, leak, nearly = square.copy(), square.copy(), square.copy()
    half[:, 20:] = False
    leak[10:30, 30:40] = True
    nearly[10, 10] = False
    four = Proposals.from_masks(np.stack([half, square, leak, nearly]), np.ones(4))
    assert consensus(four, np.array([1, 0, 2, 3, 1])).tolist() == [2, 1, 1, 2, 2]
    assert consensus(four, np.zeros(0, np.int64)).shape == (0,)


def test_mask_contrast_is_objectness_colour_term_of_any_mask():
    image, props = _scene(np.random.default_rng(2))
    masks = props.to_masks()[[30, 31, 32, 33, 0]]
    got = mask_contrast(image, masks)
    # the reference's objectness of a mask alone: √1 (only itself agrees with it) × contrast²
    want = [np.sqrt(ref.objectness(image, masks[k: k + 1], [0])[0]) for k in range(len(masks))]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    square = np.zeros((48, 48), bool)
    square[10:30, 10:30] = True
    flat = np.full((48, 48, 3), 120, np.uint8)
    flat[square] = (220, 40, 40)
    half = square.copy()
    half[:, 20:] = False
    # the half square's 4-px ring (304 pixels) holds 80 red ones of the other half
    assert mask_contrast(flat, np.stack([square, half])).tolist() == pytest.approx([1.0, 1 - 80 / 304])
    assert mask_contrast(flat, np.zeros((0, 48, 48), bool)).shape == (0,)
    with pytest.raises(ValueError, match="masks of 48×40 for an image of 48×48"):
        mask_contrast(flat, np.zeros((1, 48, 40), bool))


def test_working_size_makes_large_images_cost_the_same():
    rng = np.random.default_rng(1)
    image, props = _scene(rng, (64, 60))
    candidates = np.arange(len(props))
    big = cv2.resize(image, (240, 256), interpolation=cv2.INTER_NEAREST)
    # 4x nearest upscale: the area-resized image and the nearest-resized proposals are the originals again
    big_props = Proposals.from_segments(cv2.resize(props.superpixels, (240, 256), interpolation=cv2.INTER_NEAREST),
                                        (props.indptr, props.indices), props.scores)
    small = cv2.resize(big, (120, 128), interpolation=cv2.INTER_AREA)
    small_props = Proposals.from_segments(cv2.resize(big_props.superpixels, (120, 128),
                                                     interpolation=cv2.INTER_NEAREST),
                                          (props.indptr, props.indices), props.scores)
    np.testing.assert_allclose(objectness(big, big_props, candidates),
                               ref.objectness(small, small_props.to_masks(), candidates), atol=1e-12)


def test_rerank_gives_each_rows_n_best_their_objectness():
    image, props = _scene(np.random.default_rng(2))
    n = len(props)
    scores = np.tile(np.linspace(1, 0, n), (3, 1))
    scores[1] = scores[1][::-1]
    scores[2, :] = -np.inf
    scores[2, [4, 9]] = (0.5, 0.5)
    value = objectness(image, props, np.arange(n))
    got = rerank(scores, image, props, 3)
    want = np.full((3, n), -np.inf)
    want[0, :3] = value[:3]
    want[1, -3:] = value[-3:]
    want[2, [4, 9]] = value[[4, 9]]  # only two eligible
    np.testing.assert_array_equal(got, want)
    assert rerank(np.zeros((0, n)), image, props, 3).shape == (0, n)


@pytest.mark.parametrize("score", ["vanilla", "iou"])
def test_match_with_rerank_picks_the_most_object_like_of_the_n_best(score):
    rng = np.random.default_rng(3)
    image, props = _scene(rng)
    prms = rng.random((2, 20, 18)).astype(np.float32)
    class_maps = rng.random((2, 5, 5)).astype(np.float32)
    plain = MatchingSettings(score=score)
    settings = MatchingSettings(score=score, rerank=5)
    scores = score_proposals(prms, class_maps, props, plain).scores
    value = ref.objectness(image, props.to_masks(), np.arange(len(props)))
    best, picked, _ = match(prms, class_maps, props, settings, image=image)
    for k in range(2):
        top = np.argsort(-scores[k], kind="stable")[:5]
        want = top[np.argmax(value[top])]
        assert best[k] == want
        assert picked[k] == pytest.approx(value[want], abs=1e-12)
    assert confidence(InstanceSettings(confidence="peak_match"), np.array([2.0, 3.0]), picked,
                      np.zeros(2)) == pytest.approx([2 * picked[0], 3 * picked[1]])
    with pytest.raises(ValueError, match="needs the image"):
        match(prms, class_maps, props, settings)
    with pytest.raises(ValueError, match="rerank must be >= 0"):
        MatchingSettings(rerank=-1)
