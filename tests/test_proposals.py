import json

import h5py
import numpy as np
import pytest
import scipy.io

from icn_rt.data.proposals import Proposals, load_proposals, proposal_path, save_proposals
from icn_rt.data.selective_search import SelectiveSearchConfig, _refine, selective_search
from icn_rt.data.synth import render
from icn_rt.errors import InputError
from tests.conftest import TINY


def _segments(seed=0, n=12, shape=(20, 17), n_sp=30):
    rng = np.random.default_rng(seed)
    sp = rng.integers(0, n_sp, shape)
    groups = [rng.choice(n_sp, rng.integers(1, 6), replace=False) for _ in range(n)]
    return Proposals.from_segments(sp, groups, rng.random(n))


def test_segment_and_mask_forms_agree():
    p = _segments()
    masks = p.to_masks()
    for i in range(len(p)):
        np.testing.assert_array_equal(masks[i], np.isin(p.superpixels, p.group(i)))
        np.testing.assert_array_equal(p.mask(i), masks[i])
    m = Proposals.from_masks(masks, p.scores)
    gt = np.random.default_rng(5).random(p.shape) > 0.6
    np.testing.assert_array_equal(p.areas(), masks.reshape(len(p), -1).sum(1))
    np.testing.assert_allclose(p.iou(gt), m.iou(gt))
    inter = (masks & gt).reshape(len(p), -1).sum(1)
    np.testing.assert_allclose(p.iou(gt), inter / (masks.reshape(len(p), -1).sum(1) + gt.sum() - inter))
    sel = p.select([3, 1])
    np.testing.assert_array_equal(sel.to_masks(), masks[[3, 1]])
    for idx in ([7, 2, 7, 0], [11], []):  # some proposals, in any order, repeated
        np.testing.assert_array_equal(p.to_masks(np.array(idx, np.int64)), masks[idx])
    assert sel.scores.tolist() == p.scores[[3, 1]].tolist()


@pytest.mark.parametrize("version", ["5", "7.3"])
def test_mcg_mat_roundtrip(tmp_path, version):
    p = _segments()
    path = tmp_path / "x.mat"
    save_proposals(path, p, version)
    q = load_proposals(path, expected_shape=p.shape)
    np.testing.assert_array_equal(q.superpixels, p.superpixels)
    np.testing.assert_array_equal(q.indptr, p.indptr)
    np.testing.assert_array_equal(q.indices, p.indices)
    np.testing.assert_allclose(q.scores, p.scores)
    assert h5py.is_hdf5(path) == (version == "7.3")


def test_mat_v73_is_matlab_layout(tmp_path):
    """As MATLAB writes v7.3: text header, transposed arrays, cells as references."""
    p = _segments()
    path = tmp_path / "x.mat"
    save_proposals(path, p, "7.3")
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path) as f:
        assert f["superpixels"].shape == p.shape[::-1]
        assert f["labels"].attrs["MATLAB_class"] == b"cell"
        first = np.asarray(f[f["labels"][0, 0]]).ravel()
        np.testing.assert_array_equal(first, p.group(0) + 1)


def test_mcg_v5_as_distributed(tmp_path):
    """A v5 file shaped like MCG's own: 1-based uint16 superpixels, N x 1 cell of row vectors."""
    sp = np.array([[1, 1, 2], [3, 3, 2]], np.uint16)
    labels = np.empty((2, 1), object)
    labels[0, 0] = np.array([[1, 2]], np.double)
    labels[1, 0] = np.array([[3]], np.double)
    scipy.io.savemat(tmp_path / "m.mat", {"superpixels": sp, "labels": labels, "scores": np.array([[0.9], [0.2]])})
    p = load_proposals(tmp_path / "m.mat")
    np.testing.assert_array_equal(p.to_masks(), [[[1, 1, 1], [0, 0, 1]], [[0, 0, 0], [1, 1, 0]]])


def test_rle_json_roundtrip(tmp_path):
    masks = _segments().to_masks()
    p = Proposals.from_masks(masks, np.arange(len(masks), dtype=np.float32))
    save_proposals(tmp_path / "r.json", p)
    assert proposal_path(tmp_path, "r") == tmp_path / "r.json"
    assert proposal_path(tmp_path, "absent") == tmp_path / "absent.mat"
    q = load_proposals(tmp_path / "r.json")
    np.testing.assert_array_equal(q.masks, masks)
    np.testing.assert_array_equal(q.scores, p.scores)


def test_bad_proposal_files(tmp_path):
    p = _segments()
    save_proposals(tmp_path / "a.mat", p)
    with pytest.raises(InputError, match=r"a.mat: proposals are 20x17 but the image is 21x17"):
        load_proposals(tmp_path / "a.mat", (21, 17))
    with pytest.raises(InputError, match="proposal file not found"):
        load_proposals(tmp_path / "none.mat")
    scipy.io.savemat(tmp_path / "b.mat", {"foo": np.zeros(2)})
    with pytest.raises(InputError, match="b.mat: not an MCG proposal file: missing superpixels, labels"):
        load_proposals(tmp_path / "b.mat")
    (tmp_path / "c.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(InputError, match="c.mat: cannot read MATLAB file"):
        load_proposals(tmp_path / "c.mat")
    labels = np.empty((1, 1), object)
    labels[0, 0] = np.array([[7]])
    scipy.io.savemat(tmp_path / "d.mat", {"superpixels": np.ones((2, 2)), "labels": labels, "scores": [[1.0]]})
    with pytest.raises(InputError, match="superpixel ids outside 1..1"):
        load_proposals(tmp_path / "d.mat")
    (tmp_path / "e.json").write_text(json.dumps({"size": [4, 4], "masks": ["??"], "scores": [1, 2]}))
    with pytest.raises(InputError, match="1 masks"):
        load_proposals(tmp_path / "e.json")


def test_refinement_is_common_refinement():
    rng = np.random.default_rng(2)
    maps = [rng.integers(0, k, (15, 11)) for k in (3, 4, 5)]
    refined, parents = _refine(maps)
    for seg, parent in zip(maps, parents):
        np.testing.assert_array_equal(parent[refined], seg)
    # two pixels share a refined label iff they share a label in every map
    key = maps[0] * 100 + maps[1] * 10 + maps[2]
    assert len(np.unique(refined)) == len(np.unique(key))


def test_selective_search_on_synthetic_image():
    sample = render(TINY, "val", 0)
    config = SelectiveSearchConfig()
    p = selective_search(sample.image, config)
    assert p.shape == sample.image.shape[:2]
    assert 50 <= len(p) <= config.max_proposals
    assert (np.diff(p.scores) <= 0).all()
    inc = p.incidence()
    assert len(np.unique(np.packbits(inc, axis=1), axis=0)) == len(p)  # deduplicated
    assert (p.areas() >= config.min_area).all()
    for inst in sample.instances:  # the objects are there to be found
        assert p.iou(inst.mask).max() >= 0.5
    q = selective_search(sample.image, config)
    np.testing.assert_array_equal(q.indices, p.indices)


def test_selective_search_options():
    image = render(TINY, "val", 1).image
    small = selective_search(image, SelectiveSearchConfig(colour_spaces=("rgb",), scales=(100.0,), similarities=("C",), max_proposals=25))
    assert len(small) == 25
    with pytest.raises(ValueError, match="colour space"):
        SelectiveSearchConfig(colour_spaces=("xyz",))
    with pytest.raises(ValueError, match="similarity"):
        SelectiveSearchConfig(similarities=("CQ",))


@pytest.mark.parametrize("shape", [(64, 64), (150, 200)])
def test_smallest_superpixel_scales_with_image_area(shape):
    """With one strategy the output superpixels are Felzenszwalb components, each at
    least min_superpixel of the image: the count cannot grow with the resolution."""
    img = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    config = SelectiveSearchConfig(colour_spaces=("rgb",), scales=(100.0,), similarities=("S",), min_area=1)
    p = selective_search(img, config)
    sizes = np.bincount(p.superpixels.ravel())
    assert sizes.min() >= round(config.min_superpixel * shape[0] * shape[1])
    assert p.num_superpixels <= 1 / config.min_superpixel
