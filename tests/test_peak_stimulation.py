import pytest
import torch

from icn_rt.models.class_scores import peak_stimulation, stimulation_peaks
from icn_rt.models.peaks import local_maxima


def test_local_maxima_plateau_and_border():
    m = torch.tensor([[5.0, 5.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 7.0],
                      [0.0, 3.0, 0.0, 0.0]])[None, None]
    want = torch.tensor([[True, False, False, False],   # plateau 5, 5: the first wins
                         [False, False, False, True],    # border pixel: -inf padding, not a wall
                         [False, True, False, False]])
    # the zeros at (2, 3) etc. are not maxima: a larger value is always within reach
    assert torch.equal(local_maxima(m)[0, 0], want)


def test_median_filter_uses_lower_median():
    # sorted: 0 0 0.9 0.95 2 3 -> lower median 0.9 keeps the peak 0.9 (the mean of the middle pair, 0.925, would not)
    m = torch.tensor([[0.9, 0.0, 2.0, 0.0, 3.0, 0.95]])[None, None]
    assert stimulation_peaks(m)[0, 0].tolist() == [[True, False, True, False, True, False]]
    # sorted: 0 0.5 3 3 4 5 6 -> median 3: the local maximum 0.5 is dropped
    m = torch.tensor([[0.5, 0.0, 4.0, 3.0, 5.0, 3.0, 6.0]])[None, None]
    assert stimulation_peaks(m)[0, 0].tolist() == [[False, False, True, False, True, False, True]]


def test_scores_and_undivided_backward():
    m = torch.tensor([[1.0, 0.0, 2.0, 0.0, 3.0, 0.0]])[None, None].repeat(2, 2, 1, 1)
    m[1, 1] = -m[1, 1]
    m.requires_grad_(True)
    s = peak_stimulation(m)
    assert s.shape == (2, 2)
    assert s[0, 0].item() == pytest.approx(2.0)
    peaks = stimulation_peaks(m.detach())
    g = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    s.backward(g)
    assert torch.equal(m.grad, peaks.float() * g[..., None, None])  # full gradient at every peak


def test_matches_mean_at_peaks_on_random_maps():
    torch.manual_seed(0)
    m = torch.randn(3, 4, 9, 7)
    peaks = stimulation_peaks(m)
    want = torch.stack([torch.stack([m[b, c][peaks[b, c]].mean() for c in range(4)]) for b in range(3)])
    torch.testing.assert_close(peak_stimulation(m), want)
    assert peaks.flatten(2).any(2).all()  # the global maximum is always a peak
    # a local maximum within its window, and the first one of its value there
    for b, c, y, x in peaks.nonzero().tolist():
        win = m[b, c, max(0, y - 1):y + 2, max(0, x - 1):x + 2]
        assert m[b, c, y, x] == win.max()
