"""Every kernel, Numba CPU and Numba CUDA (the simulator without a GPU), against its
NumPy reference on random inputs and edge cases. Integer results and everything derived
from them are compared exactly; real-valued sums (added in another order) to 1e-12
relative."""

import numpy as np
import pytest
from numba import config

from icn_rt import kernels
from icn_rt.kernels import ops_numpy as ref
from tests.reference import contour_band

CUDA = pytest.param("cuda", id="cuda-simulator" if config.ENABLE_CUDASIM else "cuda-gpu",
                    marks=[] if config.ENABLE_CUDASIM else [pytest.mark.gpu])
FAST = ["cpu", CUDA]


def blobs(rng, n, h, w, density=0.3):
    """Random masks with structure: rectangles, noise, empty and full ones."""
    masks = np.zeros((n, h, w), bool)
    for i in range(n):
        kind = i % 5
        if kind == 0:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            masks[i, y0:y0 + rng.integers(1, h), x0:x0 + rng.integers(1, w)] = True
        elif kind == 1:
            masks[i] = rng.random((h, w)) < density
        elif kind == 2 and i == 2:
            pass  # empty
        elif kind == 3 and i == 3:
            masks[i] = True
        else:
            masks[i, rng.integers(0, h):, :rng.integers(1, w + 1)] = True
    return masks


def on(backend, x):
    """Inputs for ``backend``: the CUDA kernels take CUDA tensors on a GPU, arrays in the simulator."""
    if backend == "cuda" and not config.ENABLE_CUDASIM:
        import torch

        return torch.as_tensor(x).cuda()
    return x


def host(x):
    if type(x).__module__.startswith("torch"):
        x = x.cpu().numpy()
    return np.asarray(x)


def words_of(backend, w):
    w = host(w)
    return w.view(np.uint32) if w.dtype == np.int32 else w


SHAPES = [(5, 7), (9, 32), (6, 33), (4, 70)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pack_round_trip_numpy(shape):
    masks = blobs(np.random.default_rng(0), 7, *shape)
    words = ref.pack(masks)
    assert words.dtype == np.uint32 and words.shape == (7, shape[0], (shape[1] + 31) // 32)
    np.testing.assert_array_equal(ref.unpack(words, shape[1]), masks)
    # bit j of word k is pixel 32k + j
    one = np.zeros((1, 1, shape[1]), bool)
    one[0, 0, shape[1] - 1] = True
    assert ref.pack(one)[0, 0, (shape[1] - 1) // 32] == 1 << ((shape[1] - 1) % 32)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack(backend, shape):
    k = kernels.backend(backend)
    masks = blobs(np.random.default_rng(1), 6, *shape)
    words = k.pack(on(backend, masks))
    np.testing.assert_array_equal(words_of(backend, words), ref.pack(masks))
    np.testing.assert_array_equal(host(k.unpack(words, shape[1])), masks)


@pytest.mark.parametrize("size", [3, 5])
def test_band_reference_is_contour_band(size):
    masks = blobs(np.random.default_rng(2), 6, 11, 37)
    want = np.stack([contour_band(m, size) for m in masks])
    np.testing.assert_array_equal(ref.unpack(ref.band(ref.pack(masks), 37, size), 37), want)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
def test_band(backend, shape):
    masks = blobs(np.random.default_rng(3), 6, *shape)
    words = ref.pack(masks)
    for size in (3, 5):
        got = kernels.backend(backend).band(on(backend, words), shape[1], size)
        np.testing.assert_array_equal(words_of(backend, got), ref.band(words, shape[1], size))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
def test_background(backend, shape):
    v = blobs(np.random.default_rng(11), 5, *shape)
    words = ref.pack(v)
    want = ref.background(words, shape[1])
    np.testing.assert_array_equal(ref.unpack(want, shape[1]), ~v)
    got = kernels.backend(backend).background(on(backend, words), shape[1])
    np.testing.assert_array_equal(words_of(backend, got), want)
    # Eq. 5's background term: |P ∩ B(V)| = |P| - |P ∩ V|
    p = ref.pack(blobs(np.random.default_rng(12), 6, *shape))
    np.testing.assert_array_equal(ref.and_counts(p, want), ref.popcounts(p)[None] - ref.and_counts(p, words))


@pytest.mark.parametrize("backend", FAST)
def test_popcounts_and_counts(backend):
    rng = np.random.default_rng(4)
    p, q = ref.pack(blobs(rng, 7, 9, 45)), ref.pack(blobs(rng, 4, 9, 45, 0.6))
    k = kernels.backend(backend)
    np.testing.assert_array_equal(host(k.popcounts(on(backend, p))), ref.popcounts(p))
    np.testing.assert_array_equal(host(k.and_counts(on(backend, p), on(backend, q))), ref.and_counts(p, q))
    assert ref.popcounts(p)[3] == 9 * 45 and ref.popcounts(p)[2] == 0


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", [(6, 32), (7, 45)])
def test_run_sums(backend, shape):
    rng = np.random.default_rng(5)
    masks = blobs(rng, 6, *shape)
    maps = rng.random((3, *shape))
    words, prefix = ref.pack(masks), ref.prefix_sums(maps)
    # the reference is the dense sum itself
    np.testing.assert_allclose(ref.run_sums(words, prefix), np.einsum("mhw,nhw->mn", maps, masks), rtol=1e-12)
    k = kernels.backend(backend)
    for band_size in (0, 5):
        want = ref.run_sums(words, prefix, band_size)
        got = host(k.run_sums(on(backend, words), on(backend, k.prefix_sums(maps) if backend == "cpu" else prefix),
                              band_size))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # a binary map sums to exact counts
    binary = (maps > 0.5).astype(np.float64)
    got = host(k.run_sums(on(backend, words), on(backend, ref.prefix_sums(binary))))
    np.testing.assert_array_equal(got, ref.and_counts(words, ref.pack(binary > 0.5)))


def segments(rng, h=12, w=17, count=9):
    """A label map with ``count`` segments (one of them absent) and random CSR groups."""
    labels = rng.integers(0, count - 1, (h // 3 + 1, w // 3 + 1)).repeat(3, 0).repeat(3, 1)[:h, :w].astype(np.int32)
    groups = [rng.choice(count, rng.integers(1, count), replace=False) for _ in range(7)] + [np.zeros(0, int)]
    indptr = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int64)
    return labels, indptr, np.concatenate(groups).astype(np.int32), count


@pytest.mark.parametrize("backend", FAST)
def test_segment_sums_and_csr(backend):
    rng = np.random.default_rng(6)
    labels, indptr, indices, count = segments(rng)
    labels[0, :3] = -1
    maps = rng.random((2, *labels.shape))
    k = kernels.backend(backend)
    want = ref.segment_sums(labels, maps, count)
    np.testing.assert_allclose(host(k.segment_sums(on(backend, labels), on(backend, maps), count)), want, rtol=1e-12)
    counts = ref.segment_sums(labels, np.ones((1, *labels.shape)), count)
    np.testing.assert_array_equal(host(k.segment_sums(on(backend, labels), on(backend, np.ones((1, *labels.shape))),
                                                      count)), counts)
    np.testing.assert_allclose(host(k.csr_sums(on(backend, indptr), on(backend, indices), on(backend, want))),
                               ref.csr_sums(indptr, indices, want), rtol=1e-12)
    np.testing.assert_array_equal(host(k.csr_sums(on(backend, indptr), on(backend, indices), on(backend, counts))),
                                  ref.csr_sums(indptr, indices, counts))
    np.testing.assert_array_equal(words_of(backend, k.members(on(backend, indptr), on(backend, indices), count)),
                                  ref.members(indptr, indices, count))


@pytest.mark.parametrize("size", [3, 5])
def test_boundary_groups_give_the_contour_of_every_union(size):
    rng = np.random.default_rng(7)
    labels, indptr, indices, count = segments(rng)
    group, gptr, glabels = ref.boundary_groups(labels, size)
    fast = kernels.backend("cpu").boundary_groups(labels, size)
    for a, b in zip(fast, (group, gptr, glabels)):
        np.testing.assert_array_equal(a, b)
    member = ref.members(indptr, indices, count)
    maps = rng.random((2, *labels.shape))
    gsums = ref.segment_sums(group, maps, len(gptr) - 1)
    got = ref.group_sums(member, gptr, glabels, gsums)
    for i in range(len(indptr) - 1):
        mask = np.isin(labels, indices[indptr[i]:indptr[i + 1]])
        band = contour_band(mask, size)
        np.testing.assert_allclose(got[:, i], (maps * band).sum((1, 2)), rtol=1e-12)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("backend", FAST)
def test_group_sums(backend, sparse):
    """Sparse: most groups zero for every map, as a PRM outside its receptive field."""
    rng = np.random.default_rng(8)
    labels, indptr, indices, count = segments(rng)
    group, gptr, glabels = ref.boundary_groups(labels, 5)
    member = ref.members(indptr, indices, count)
    values = rng.random((3, len(gptr) - 1))
    if sparse:
        values[:, rng.random(values.shape[1]) < 0.8] = 0
        values[1, rng.random(values.shape[1]) < 0.5] = 0
    got = kernels.backend(backend).group_sums(on(backend, member), on(backend, gptr), on(backend, glabels),
                                              on(backend, values))
    np.testing.assert_allclose(host(got), ref.group_sums(member, gptr, glabels, values), rtol=1e-12)


@pytest.mark.parametrize("backend", ["numpy", "cpu", CUDA])
def test_nms_matches_the_method_reference(backend):
    from tests.reference import mask_nms

    rng = np.random.default_rng(9)
    base = blobs(rng, 4, 10, 40)
    masks = np.concatenate([base, base[:3] ^ (rng.random((3, 10, 40)) < 0.05), np.zeros((1, 10, 40), bool)])
    scores = rng.permutation(len(masks)).astype(np.float64)
    scores[1] = scores[5]  # a tie: input order decides
    order = np.argsort(-scores, kind="stable")
    for threshold in (0.3, 0.5, 0.9):
        keep, owner = kernels.backend(backend).nms(on(backend, ref.pack(masks)), on(backend, order), threshold)
        want_keep, want_owner = mask_nms(masks, scores, threshold)
        np.testing.assert_array_equal(host(keep), want_keep)
        np.testing.assert_array_equal(host(owner), want_owner)


@pytest.mark.parametrize("backend", ["numpy", "cpu", CUDA])
def test_top_k_not_contained_matches_the_method_reference(backend):
    from tests.reference import top_k_not_contained

    rng = np.random.default_rng(10)
    big = np.zeros((12, 40), bool)
    big[2:10, 5:30] = True
    inner = big & (np.arange(40) < 20)[None]
    masks = np.concatenate([np.stack([big, inner, inner, big]), blobs(rng, 6, 12, 40)])
    rows = np.stack([rng.random(len(masks)) for _ in range(4)])
    rows[0, :4] = [0.99, 0.98, 0.97, 0.96]  # inner (twice) and a copy of big lie inside big
    rows[1, 5] = -np.inf
    order = np.argsort(-rows, axis=1, kind="stable")
    valid = np.isfinite(rows).sum(1)
    for k in (1, 3):
        got = host(kernels.backend(backend).top_k_not_contained(on(backend, ref.pack(masks)), on(backend, order),
                                                     on(backend, valid), k))
        for r in range(len(rows)):
            want = top_k_not_contained(rows[r], masks, k)
            np.testing.assert_array_equal(got[r], np.concatenate([want, np.full(k - len(want), -1)]))
    assert host(kernels.backend(backend).top_k_not_contained(on(backend, ref.pack(masks)), on(backend, order),
                                                 on(backend, valid), 3))[0, 1] not in (1, 2, 3)


@pytest.mark.parametrize("hashes", ["distinct", "all colliding"])
def test_unique_sets_by_hash(hashes):
    from icn_rt.kernels.ops_cpu import _unique_sets

    rng = np.random.default_rng(2)
    sets = rng.integers(-1, 6, size=(3000, 9)).astype(np.int32)
    sets[::7] = sets[3]  # many repeats
    pixels = np.arange(1, 3000, 2)
    if hashes == "distinct":
        h = np.array([hash(tuple(row)) % 2**64 for row in sets.tolist()], np.uint64)
    else:  # every set hashes alike: the collision is caught, NumPy decides
        h = np.zeros(len(sets), np.uint64)
    unique, inverse = _unique_sets(sets, h, pixels)
    want = []  # distinct rows in order of first occurrence
    for row in sets[pixels].tolist():
        if row not in want:
            want.append(row)
    assert unique.tolist() == want
    assert [want[i] for i in inverse] == sets[pixels].tolist()


def test_every_backend_offers_the_whole_interface():
    import inspect

    from icn_rt.kernels.interface import Kernels

    declared = sorted(Kernels.__abstractmethods__)
    assert {"pack", "boxes", "boundary_groups", "run_sums", "nms", "top_k_not_contained"} <= set(declared)
    for name in kernels.BACKENDS:
        k = kernels.backend(name)
        assert isinstance(k, Kernels) and k.name == name
        for method in declared:
            want = list(inspect.signature(getattr(Kernels, method)).parameters)[1:]  # without self
            got = list(inspect.signature(getattr(k, method)).parameters)
            assert got == want, (name, method, got, want)


def test_host_arrays_pick_the_cpu_kernels():
    assert kernels.ops().name == "cpu" and kernels.ops().device is None
    assert kernels.ops("cpu").name == "cpu"
    with pytest.raises(ValueError, match="unknown kernel backend"):
        kernels.backend("opencl")


@pytest.mark.parametrize("backend", FAST)
def test_boxes(backend):
    masks = blobs(np.random.default_rng(13), 7, 9, 70)
    words = ref.pack(masks)
    want = ref.boxes(words)
    assert want[2].tolist() == [9, 9, 3, 0]  # empty
    assert want[3].tolist() == [0, 9, 0, 3]  # full
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(ys):
            assert want[i].tolist() == [ys.min(), ys.max() + 1, xs.min() // 32, xs.max() // 32 + 1]
    np.testing.assert_array_equal(host(kernels.backend(backend).boxes(on(backend, words))), want)


@pytest.mark.parametrize("backend", ["numpy", "cpu", CUDA])
def test_host_inputs_arrive_on_the_backends_device(backend):
    """``pack_masks`` and ``boundary_groups`` take host arrays and give the backend's."""
    rng = np.random.default_rng(14)
    device = None
    if backend == "cuda":
        import torch

        device = torch.device("cpu" if config.ENABLE_CUDASIM else "cuda")
    k = kernels.backend(backend, device)
    masks = blobs(rng, 5, 6, 40)
    np.testing.assert_array_equal(words_of(backend, k.pack_masks(masks)), ref.pack(masks))
    labels, *_ = segments(rng)
    for got, want in zip(k.boundary_groups(labels, 5), ref.boundary_groups(labels, 5)):
        np.testing.assert_array_equal(host(got), want)


def test_numpy_s_row_stack_alias_is_put_back_for_numba_cuda(monkeypatch):
    """numba-cuda overloads ``np.row_stack``, which NumPy 2.5 removed: the alias comes back
    as ``np.vstack`` where it is missing, and an existing one is left alone."""
    from icn_rt.kernels import ops_cuda

    monkeypatch.delattr(np, "row_stack", raising=False)
    ops_cuda.restore_numpy_aliases()
    assert np.row_stack is np.vstack
    assert np.row_stack([[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    mine = object()
    monkeypatch.setattr(np, "row_stack", mine)
    ops_cuda.restore_numpy_aliases()
    assert np.row_stack is mine


def test_each_backend_declares_its_host_side():
    """Host work (packing host masks, boundary groups, a device backend's host arrays) goes
    to the backend the interface names: a host backend itself, the CUDA one the Numba CPU's."""
    for name in ("numpy", "cpu"):
        k = kernels.backend(name)
        assert k.host_kernels is k
    cuda = kernels.backend("cuda")
    assert cuda.host_kernels.name == "cpu" and cuda.host_kernels is cuda.host_kernels
    maps = np.random.default_rng(15).random((2, 5, 7))
    if config.ENABLE_CUDASIM:  # host arrays reach the CUDA backend only in the simulator
        np.testing.assert_array_equal(cuda.prefix_sums(maps), ref.prefix_sums(maps))
