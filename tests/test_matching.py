"""The predictor's matching against the NumPy references, on both proposal forms."""

import numpy as np
import pytest
from numba import config

from icn_rt import kernels as backends
from icn_rt.kernels.arrays import host
from icn_rt.data.proposals import Proposals
from icn_rt.matching import (MatchingSettings, background_map, iou, match, matching_map, rebalanced, resize_proposals,
                             vanilla)
from tests import reference as ref


def _segments(rng, shape=(24, 20), n_sp=30, n=40) -> Proposals:
    sp = rng.integers(0, n_sp, size=shape)
    groups = [np.unique(rng.choice(n_sp, size=rng.integers(1, 8))) for _ in range(n)]
    return Proposals.from_segments(sp, groups, np.linspace(1, 0, n))


@pytest.mark.parametrize("shape", [(7, 9), (24, 20), (50, 33)])
def test_resized_segments_are_the_resized_masks(shape):
    import cv2

    props = _segments(np.random.default_rng(5))
    props.superpixels[props.superpixels == 29] = 0
    props.superpixels[0, 0] = 29  # one pixel: gone at (7, 9), still a proposal's superpixel
    resized = resize_proposals(props, shape)
    assert resized.is_segments and resized.num_superpixels == 30 and len(resized) == len(props)
    dense = np.stack([cv2.resize(m.view(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST)
                      for m in props.to_masks()]).astype(bool)
    assert np.array_equal(resized.to_masks(), dense)
    assert np.array_equal(resized.areas(), dense.sum((1, 2)))
    masks = Proposals.from_masks(props.to_masks(), props.scores)
    assert np.array_equal(resize_proposals(masks, shape).to_masks(), dense)
    assert resize_proposals(props, props.shape) is props


KERNELS = ["numpy", "cpu", pytest.param("cuda", id="cuda-simulator" if config.ENABLE_CUDASIM else "cuda-gpu",
                                         marks=[] if config.ENABLE_CUDASIM else [pytest.mark.gpu])]


def _kernels_and_inputs(kernels, *arrays):
    """The backend ``kernels`` and ``arrays`` as it takes them: CUDA tensors for the CUDA
    kernels on a GPU (as the predictor gives them), host arrays otherwise."""
    if kernels != "cuda" or config.ENABLE_CUDASIM:
        return (backends.backend(kernels), *arrays)
    import torch

    device = torch.device("cuda")
    return (backends.backend(kernels, device), *(torch.as_tensor(a, device=device) for a in arrays))


SCORES = {"rebalanced": (rebalanced, lambda v, masks: ref.rebalanced_scores(v, masks), 0, 1e-9),
          "iou": (iou, lambda v, masks: ref.iou_scores(v, masks), 4, 1e-12)}
"""score -> (the kernels' function, the reference, the seed of the case, atol for real maps)."""


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("form", ["segments", "masks"])
@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("score", list(SCORES))
def test_scores_equal_reference(score, form, binary, kernels):
    fn, reference, seed, atol = SCORES[score]
    rng = np.random.default_rng(seed)
    props = _segments(rng, n=40 if kernels != "cuda" else 10)
    if form == "masks":
        props = Proposals.from_masks(props.to_masks(), props.scores)
    v = rng.random((3, 24, 20))
    v = (v > 0.6).astype(np.float64) if binary else v
    backend, v_in = _kernels_and_inputs(kernels, v)
    got = host(fn(v_in, props, MatchingSettings(score=score), backend))
    masks = props.to_masks()
    for k in range(3):
        want = reference(v[k], masks)
        if binary:  # popcounts: exact
            np.testing.assert_array_equal(got[k], want)
        else:
            np.testing.assert_allclose(got[k], want, rtol=1e-12, atol=atol)


def test_iou_hand_computed():
    v = np.zeros((1, 4, 4))
    v[0, 1:3, 1:3] = 1  # 4 pixels
    p0 = v[0].astype(bool)
    p1 = np.zeros((4, 4), bool)
    p1[:, :2] = True  # 8 pixels, 2 of them in V
    props = Proposals.from_masks(np.stack([p0, p1]), np.ones(2))
    got = iou(v, props, MatchingSettings(score="iou", area_limits=(0.0, 1.0)))[0]
    assert got.tolist() == [1.0, 2 / 10]
    best, score, quality = match(v.astype(np.float32), np.ones((1, 2, 2)), props,
                                 MatchingSettings(score="iou", at="input", area_limits=(0.0, 1.0)))
    assert best.tolist() == [0] and score.tolist() == [1.0] and quality.tolist() == [1.0]


def test_rebalanced_hand_computed():
    # V: a 2x2 block in a 4x4 image; P0 = V exactly, P1 = the whole left half.
    v = np.zeros((1, 4, 4))
    v[0, 1:3, 1:3] = 1
    p0 = v[0].astype(bool)
    p1 = np.zeros((4, 4), bool)
    p1[:, :2] = True
    props = Proposals.from_masks(np.stack([p0, p1]), np.ones(2))
    s = MatchingSettings(score="rebalanced", band_width=3, area_limits=(0.0, 1.0))
    # E(V) with a 3x3 square: dilation covers all 16 pixels, erosion none -> band = all.
    got = rebalanced(v, props, s)[0]
    assert got[0] == pytest.approx(0.95 * 1.0 + 0.1 * 4 - 0.8 * 0)
    assert got[1] == pytest.approx(0.95 * 2 / 8 + 0.1 * 8 - 0.8 * 6)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("form", ["segments", "masks"])
def test_vanilla_equals_reference(form, kernels):
    rng = np.random.default_rng(1)
    props = _segments(rng, n=40 if kernels != "cuda" else 10)
    if form == "masks":
        props = Proposals.from_masks(props.to_masks(), props.scores)
    prm = rng.random((2, 24, 20))
    prm /= prm.sum((1, 2), keepdims=True)
    bg = rng.random((2, 24, 20)) > 0.5
    backend, prm_in, bg_in = _kernels_and_inputs(kernels, prm, bg)
    got = host(vanilla(prm_in, props, bg_in, MatchingSettings(score="vanilla"), backend))
    masks = props.to_masks()
    for k in range(2):
        np.testing.assert_allclose(got[k], ref.vanilla_scores(prm[k], masks, bg[k]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("score,rerank", [("vanilla", 0), ("rebalanced", 0), ("iou", 4)])
def test_cuda_kernels_take_tensors_end_to_end(score, rerank):
    """The GPU path (tensors in, resize and normalise in torch, kernels on the device) picks
    what the CPU path picks; without a GPU it runs in the simulator on CPU tensors."""
    import torch

    rng = np.random.default_rng(3)
    props = _segments(rng, shape=(32, 32), n=8)
    prms = rng.random((2, 16, 16)).astype(np.float32) ** 4
    class_maps = rng.random((2, 8, 8)).astype(np.float32)
    device = "cpu" if config.ENABLE_CUDASIM else "cuda"
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    for form in (props, Proposals.from_masks(props.to_masks(), props.scores)):
        s = MatchingSettings(score=score, binarize=0.3, rerank=rerank)
        want = match(prms, class_maps, form, s, kernels=backends.backend("cpu"), image=image)
        got = match(torch.from_numpy(prms).to(device), torch.from_numpy(class_maps), form, s,
                    kernels=backends.backend("cuda", torch.device(device)), image=image)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-5)


def test_area_limits_exclude_proposals():
    props = Proposals.from_masks(np.stack([np.ones((10, 10), bool), np.eye(10, dtype=bool)]), np.ones(2))
    got = rebalanced(np.ones((1, 10, 10)), props, MatchingSettings(score="rebalanced"))
    assert got[0, 0] == -np.inf and np.isfinite(got[0, 1])  # the full image is >= 0.85 of it


def test_match_picks_the_reference_best_and_respects_max_proposals():
    rng = np.random.default_rng(2)
    props = _segments(rng, shape=(32, 32), n=50)
    prms = rng.random((3, 16, 16)) ** 4
    class_maps = rng.random((3, 8, 8))
    for s in (MatchingSettings(score="vanilla", at="input"), MatchingSettings(score="rebalanced", binarize=0.3),
              MatchingSettings(score="vanilla", at="input", max_proposals=10)):
        best, score, quality = match(prms, class_maps, props, s)
        small = resize_proposals(props, (16, 16)).to_masks() if s.at == "input" else props.to_masks()
        for k in range(3):
            if s.at == "input":
                m = matching_map(prms[k], s)
                scores = ref.vanilla_scores(m, small, background_map(class_maps[k], (16, 16)))
            else:
                import cv2
                m = matching_map(cv2.resize(prms[k], (32, 32), interpolation=cv2.INTER_LINEAR), s)
                scores = ref.rebalanced_scores(m, small)
            assert best[k] == ref.best_proposal(scores, s.max_proposals or None)
            assert score[k] == pytest.approx(scores[best[k]])
            assert 0 <= quality[k] <= 1
        if s.max_proposals:
            assert (best < 10).all()


def test_auto_score_resolves_by_map_kind():
    s = MatchingSettings()
    assert s.resolved(enhanced=True).score == "rebalanced" and s.resolved(enhanced=False).score == "vanilla"
    s = MatchingSettings(score="auto-iou")
    assert s.resolved(enhanced=True).score == "iou" and s.resolved(enhanced=False).score == "vanilla"
    assert MatchingSettings(score="iou").resolved(enhanced=False).score == "iou"
    with pytest.raises(ValueError, match="unknown matching score"):
        MatchingSettings(score="best")


def test_no_proposals_means_no_match():
    best, score, _ = match(np.ones((2, 8, 8)), np.ones((2, 4, 4)), Proposals.from_masks(np.zeros((0, 8, 8)), []),
                           MatchingSettings())
    assert best.tolist() == [-1, -1] and np.isneginf(score).all()
