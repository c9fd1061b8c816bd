"""The NumPy references of matching and NMS, against hand-computed values and OpenCV."""

import cv2
import numpy as np
import pytest

from icn_rt.matching import background_map
from tests.reference import (best_proposal, contour_band, mask_nms, rebalanced_scores, top_k_not_contained,
                             vanilla_scores)


def square(shape, y0, x0, y1, x1):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


@pytest.mark.parametrize("width", [3, 5])
def test_contour_band_equals_opencv_gradient(width):
    rng = np.random.default_rng(0)
    kernel = np.ones((width, width), np.uint8)
    for _ in range(5):
        m = rng.random((23, 31)) > 0.7
        want = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_GRADIENT, kernel).astype(bool)
        np.testing.assert_array_equal(contour_band(m, width), want)
        v = rng.random((23, 31)).astype(np.float32)
        np.testing.assert_allclose(contour_band(v, width), cv2.morphologyEx(v, cv2.MORPH_GRADIENT, kernel))


def test_contour_band_at_the_border():
    # outside pixels do not take part: the corner pixel of a corner square is interior
    band = contour_band(square((4, 4), 0, 0, 2, 2), 3)
    np.testing.assert_array_equal(band, square((4, 4), 0, 0, 3, 3) & ~square((4, 4), 0, 0, 1, 1))


def test_rebalanced_by_hand():
    s = (4, 4)
    v = square(s, 0, 0, 2, 2)
    props = np.stack([square(s, 0, 0, 2, 2), square(s, 0, 0, 1, 4), square(s, 0, 0, 4, 4)])
    scores = rebalanced_scores(v.astype(np.float32), props, band_width=3)
    # P = V: mean 1, band ∩ P = 3 pixels, no background
    # P = first row: mean 2/4, band ∩ P = (0,1),(0,2) = 2 pixels, 2 background pixels
    # P = whole image: 100% of the area >= 0.85 -> excluded
    np.testing.assert_allclose(scores[:2], [0.95 + 0.1 * 3, 0.95 * 0.5 + 0.1 * 2 - 0.8 * 2])
    assert scores[2] == -np.inf
    assert best_proposal(scores) == 0


def test_vanilla_by_hand():
    s = (4, 4)
    r = np.zeros(s)
    r[0, 0], r[1, 1], r[2, 2] = 1, 2, 4
    p = square(s, 0, 0, 2, 2)  # band (width 3): the 3x3 corner block without (0, 0)
    bg = np.ones(s, bool)
    score = vanilla_scores(r, p[None], bg, band_width=3)
    np.testing.assert_allclose(score, [0.8 * 3 + (2 + 4) - 1e-5 * 4])
    tiny = vanilla_scores(r, square(s, 0, 0, 1, 1)[None], bg, band_width=3, area_limits=(0.1, 0.85))
    assert tiny[0] == -np.inf


def test_background_map():
    cam = np.array([[0.0, 1.0], [2.0, 3.0]])  # bytescaled: 0, 85, 170, 255; mean 127.5
    np.testing.assert_array_equal(background_map(cam, (2, 2)), [[True, True], [False, False]])
    assert background_map(np.zeros((3, 3)), (6, 6)).shape == (6, 6)


def test_best_proposal_ties_and_limits():
    assert best_proposal(np.array([1.0, 3.0, 3.0])) == 1
    assert best_proposal(np.array([1.0, 2.0, 3.0]), max_proposals=2) == 1
    assert best_proposal(np.array([-np.inf, -np.inf])) == -1


def test_mask_nms():
    s = (4, 8)
    a = square(s, 0, 0, 4, 2)
    b = square(s, 0, 1, 4, 3)  # IoU(a, b) = 1/3
    c = square(s, 0, 5, 4, 7)
    d = square(s, 0, 2, 4, 4)  # IoU(b, d) = 1/3, IoU(a, d) = 0
    keep, owner = mask_nms(np.stack([d, b, a, c]), np.array([0.6, 0.8, 0.9, 0.7]), 0.3)
    np.testing.assert_array_equal(keep, [2, 3, 0])  # a, c, d: d survives because b was suppressed
    np.testing.assert_array_equal(owner, [0, 2, 2, 3])
    keep, _ = mask_nms(np.stack([d, b, a, c]), np.array([0.6, 0.8, 0.9, 0.7]), 0.34)
    np.testing.assert_array_equal(keep, [2, 1, 3, 0])


def test_top_k_not_contained():
    s = (6, 6)
    big = square(s, 0, 0, 4, 4)
    inside = square(s, 1, 1, 3, 3)
    other = square(s, 4, 4, 6, 6)
    partial = square(s, 2, 2, 5, 5)
    masks = np.stack([inside, big, partial, other])
    np.testing.assert_array_equal(top_k_not_contained(np.array([0.8, 0.9, 0.6, 0.7]), masks, 3), [1, 3, 2])
    np.testing.assert_array_equal(top_k_not_contained(np.array([0.8, 0.9, 0.6, 0.7]), masks, 1), [1])
    np.testing.assert_array_equal(top_k_not_contained(np.array([0.8, 0.9, -np.inf, 0.7]), masks, 3), [1, 3])
    # the contained one is kept when it comes first
    np.testing.assert_array_equal(top_k_not_contained(np.array([0.95, 0.9, 0.6, 0.7]), masks, 2), [0, 1])
