"""Inference peaks (Eq. 1 and the PRM median rule), thresholds and limits."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from icn_rt.models.peaks import PeakSettings, find_peaks, gaussian_blur, peak_candidates


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_gaussian_blur_equals_scipy(sigma):
    rng = np.random.default_rng(0)
    maps = rng.random((1, 2, 20, 17)).astype(np.float32)
    got = gaussian_blur(torch.from_numpy(maps), sigma).numpy()
    want = np.stack([ndimage.gaussian_filter(m, sigma, mode="nearest", truncate=3.0) for m in maps[0]])
    np.testing.assert_allclose(got[0], want, atol=1e-6)


def _two_bumps() -> torch.Tensor:
    m = torch.zeros(1, 1, 9, 9)
    m[0, 0, 2, 2] = 5.0   # a sharp peak
    m[0, 0, 6, 6] = 2.0   # a weaker one
    m[0, 0, 6, 7] = 2.0   # plateau: only the first (row-major) position is a maximum
    return m


def test_eq1_keeps_sharp_maxima_above_the_blurred_map_and_mean():
    m = _two_bumps()
    keep = peak_candidates(m, PeakSettings(rule="eq1", sigma=1.0))
    assert keep.nonzero().tolist() == [[0, 0, 2, 2], [0, 0, 6, 6]]
    # a constant map has no Eq. 1 peak (M - G(M) - mean = -mean <= 0)
    assert not peak_candidates(torch.full((1, 1, 5, 5), 3.0), PeakSettings(rule="eq1")).any()


def test_median_rule_admits_flat_maxima():
    m = _two_bumps()
    keep = peak_candidates(m, PeakSettings(rule="median"))
    # zeros form plateaus whose first positions are local maxima at or above the median (0)
    assert keep[0, 0, 2, 2] and keep[0, 0, 6, 6] and not keep[0, 0, 6, 7]
    assert keep.sum() > 2


def test_thresholds_and_max_peaks():
    maps = torch.cat([_two_bumps(), 2 * _two_bumps()], 1).repeat(2, 1, 1, 1)
    scores = torch.tensor([[1.0, -1.0], [1.0, 1.0]])
    peaks = find_peaks(maps, scores, PeakSettings(rule="eq1", class_threshold=0.0, peak_threshold=2.5))
    # image 0: class 1 fails the class threshold; values: class 0 -> 5 (2 is not > 2.5),
    # image 1: class 0 -> 5, class 1 -> 10 and 4
    assert list(zip(peaks.image.tolist(), peaks.cls.tolist(), peaks.y.tolist(), peaks.value.tolist())) == [
        (0, 0, 2, 5.0), (1, 0, 2, 5.0), (1, 1, 2, 10.0), (1, 1, 6, 4.0)]
    top2 = find_peaks(maps, scores, PeakSettings(rule="eq1", peak_threshold=2.5, max_peaks=2))
    assert list(zip(top2.image.tolist(), top2.value.tolist())) == [(0, 5.0), (1, 5.0), (1, 10.0)]


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="unknown peak rule"):
        peak_candidates(torch.zeros(1, 1, 3, 3), PeakSettings(rule="nms"))


def test_per_class_peak_thresholds():
    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((2, 3, 8, 8)).astype(np.float32) * 10)
    scores = torch.ones(2, 3)
    thresholds = [2.0, 9.0, 5.0]
    got = find_peaks(maps, scores, PeakSettings(rule="median", peak_threshold=thresholds, max_peaks=0))
    # one class at a time with its own single threshold: the same peaks
    for c, t in enumerate(thresholds):
        one = find_peaks(maps[:, c:c + 1], scores[:, c:c + 1], PeakSettings(rule="median", peak_threshold=t,
                                                                             max_peaks=0))
        mine = got.cls == c
        assert torch.equal(got.y[mine], one.y) and torch.equal(got.x[mine], one.x) and len(one.y) > 0
        assert (got.value[mine] > t).all()
    with pytest.raises(ValueError, match="2 values for 3 classes"):
        find_peaks(maps, scores, PeakSettings(peak_threshold=[1.0, 2.0]))
