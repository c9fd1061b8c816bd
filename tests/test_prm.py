"""Batched peak backpropagation (over whole maps, and on each peak's receptive field)
against per-peak autograd on the same batch."""

import pytest
import torch

from icn_rt.baseline.excitation import excitation_backward
from icn_rt.models.classifier import ClassifierSettings, PeakClassifier
from icn_rt.models.peaks import Peaks, PeakSettings, find_peaks
from icn_rt.models.prm import (PRMSettings, input_gradients, normalise_prm, peak_response_maps, receptive_field,
                               recorded_forward)

ALL_PEAKS = PeakSettings(rule="median", class_threshold=-1e9, peak_threshold=-1e9, max_peaks=4)


def _model(backbone: str, size: int, sub_pixel: int) -> PeakClassifier:
    torch.manual_seed(0)
    model = PeakClassifier(3, ClassifierSettings(backbone=backbone, input_size=size, sub_pixel=sub_pixel))
    for m in model.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model.eval()


def _autograd(model, x, peaks, k):
    """The reference: one image, one peak, one autograd backward."""
    xr = x[peaks.image[k]][None].clone().requires_grad_(True)
    maps = model.class_maps(xr)
    grad, = torch.autograd.grad(maps[0, peaks.cls[k], peaks.y[k], peaks.x[k]], xr)
    return grad[0]


def _assert_each_equals_autograd(batched, model, x, peaks, rule):
    """Every peak's batched gradient against its own autograd backward (float64: 1e-9)."""
    for k in range(len(peaks)):
        if rule == "excitation":
            with excitation_backward(model):
                ref = _autograd(model, x, peaks, k)
        else:
            ref = _autograd(model, x, peaks, k)
        assert ref.abs().max() > 0
        torch.testing.assert_close(batched[k], ref, rtol=1e-9, atol=1e-11 * ref.abs().max().item())


@pytest.mark.parametrize("local", [False, True], ids=["whole", "local"])
@pytest.mark.parametrize("rule", ["gradient", "excitation"])
@pytest.mark.parametrize("backbone,size,sub_pixel", [("small", 48, 1), ("small", 48, 4), ("vgg16", 64, 2),
                                                     ("resnet50", 64, 8)])
def test_batched_backward_equals_per_peak_autograd(rule, backbone, size, sub_pixel, local):
    """In float64: the same mathematics. (In float32 the reference's own forward, over
    one image in another layout, rounds otherwise: a ReLU or max-pool decision near a tie
    flips and a gradient moves by percents, the more so on some CPUs than on others.)"""
    model = _model(backbone, size, sub_pixel).double()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rec = recorded_forward(model, x)
    peaks = find_peaks(rec.maps, rec.scores, ALL_PEAKS, sub_pixel)
    assert set(peaks.image.tolist()) == {0, 1}
    peaks = peaks.select(torch.cat([(peaks.image == b).nonzero()[:2, 0] for b in (0, 1)]))  # 2 per image: fast
    _assert_each_equals_autograd(input_gradients(model, rec, peaks, rule, local=local), model, x, peaks, rule)


@pytest.mark.parametrize("rule", ["gradient", "excitation"])
@pytest.mark.parametrize("backbone,size,sub_pixel", [("small", 96, 1), ("small", 64, 4)])
def test_local_backward_equals_the_whole_one_for_every_peak(rule, backbone, size, sub_pixel):
    """Peaks everywhere, corners and edges included: windows overhanging the maps.
    (Residual blocks: the autograd test above.)"""
    model = _model(backbone, size, sub_pixel)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    rec = recorded_forward(model, x)
    b, c, h, w = rec.maps.shape
    grid = torch.tensor([0, 1, h // 2, h - 2, h - 1])
    ys, xs = torch.meshgrid(grid, grid, indexing="ij")
    n = ys.numel()
    image = torch.arange(n) % b
    peaks = Peaks(image, torch.arange(n) % c, ys.flatten(), xs.flatten(), torch.ones(n))
    whole = input_gradients(model, rec, peaks, rule, local=False)
    local = input_gradients(model, rec, peaks, rule, local=True)
    torch.testing.assert_close(local, whole, rtol=1e-4, atol=1e-5 * whole.abs().max().item())
    assert (whole != 0).flatten(1).any(1).all()


@pytest.mark.parametrize("backbone,size,sub_pixel,field", [("small", 128, 1, (38, 38)), ("small", 128, 4, (46, 46)),
                                                           ("resnet50", 64, 1, (427, 427))])
def test_receptive_field(backbone, size, sub_pixel, field):
    """small: 1 cell -> conv 3 -> pool 6 -> conv 8 -> pool 16 -> conv 18 -> pool 36 -> conv 38;
    sub-pixel upsampling starts from 2 cells. ResNet-50: 427, its known theoretical field,
    far beyond the image: the whole-map backward runs."""
    model = _model(backbone, size, sub_pixel)
    rec = recorded_forward(model, torch.randn(1, 3, size, size))
    peaks = find_peaks(rec.maps, rec.scores, ALL_PEAKS, sub_pixel)
    assert receptive_field(model, rec, peaks) == field


@pytest.mark.parametrize("backbone,size,local", [("small", 128, True), ("resnet50", 64, False)])
def test_the_local_backward_runs_where_the_field_is_small(backbone, size, local):
    model = _model(backbone, size, 1)
    rec = recorded_forward(model, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(4)))
    peaks = find_peaks(rec.maps, rec.scores, ALL_PEAKS, 1)
    auto = input_gradients(model, rec, peaks, "gradient")
    assert torch.equal(auto, input_gradients(model, rec, peaks, "gradient", local=local))


def test_recorded_forward_equals_the_model():
    model = _model("resnet50", 64, 8)
    x = torch.randn(2, 3, 64, 64)
    rec = recorded_forward(model, x)
    with torch.no_grad():
        scores, maps = model(x)
    # on the CPU the recorded pass runs channels-last: the same sums in another order
    scale = maps.abs().max().item()
    torch.testing.assert_close(rec.maps, maps, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(rec.scores, scores, rtol=1e-4, atol=1e-5 * scale)
    assert rec.maps.is_contiguous()


def test_excitation_differs_from_gradient():
    model = _model("small", 48, 1)
    rec = recorded_forward(model, torch.randn(1, 3, 48, 48))
    peaks = find_peaks(rec.maps, rec.scores, ALL_PEAKS)
    a = peak_response_maps(model, rec, peaks, PRMSettings("gradient"))
    b = peak_response_maps(model, rec, peaks, PRMSettings("excitation"))
    assert not torch.allclose(a, b)


def test_prm_is_clamped_and_normalised():
    grad = torch.zeros(2, 3, 2, 2)
    grad[0, 0] = torch.tensor([[1.0, -4.0], [2.0, 1.0]])
    grad[0, 1] = torch.tensor([[1.0, 0.0], [-3.0, 0.0]])
    prm = normalise_prm(grad)
    torch.testing.assert_close(prm[0], torch.tensor([[2.0, 0.0], [0.0, 1.0]]) / 3)
    assert torch.equal(prm[1], torch.zeros(2, 2))  # all-zero gradient stays zero, no NaN


def test_no_peaks_gives_no_maps():
    model = _model("small", 32, 1)
    rec = recorded_forward(model, torch.randn(1, 3, 32, 32))
    peaks = find_peaks(rec.maps, rec.scores, PeakSettings(class_threshold=1e9))
    assert len(peaks) == 0
    assert peak_response_maps(model, rec, peaks, PRMSettings()).shape == (0, 32, 32)


def test_unknown_rule_is_rejected():
    with pytest.raises(ValueError, match="unknown backprop rule"):
        PRMSettings("guided")


@pytest.mark.parametrize("rule", ["gradient", "excitation"])
def test_whole_map_backward_in_chunks_of_an_image_equals_per_peak_autograd(rule, monkeypatch):
    """More peaks on an image than a chunk holds, and two images: the chunks of each image
    (its activations broadcast to them) give every peak its own gradient, in order."""
    import icn_rt.models.prm as prm

    monkeypatch.setattr(prm, "PEAK_CHUNK", 3)
    model = _model("small", 48, 1).double()
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    rec = recorded_forward(model, x)
    peaks = find_peaks(rec.maps, rec.scores, ALL_PEAKS, 1)
    order = torch.argsort(peaks.image, descending=True, stable=True)  # image 1's peaks first: out of order
    peaks = peaks.select(order)
    assert (peaks.image == 0).sum() > 3 and (peaks.image == 1).sum() > 3
    _assert_each_equals_autograd(input_gradients(model, rec, peaks, rule, local=False), model, x, peaks, rule)
