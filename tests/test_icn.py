"""The ICN: architecture, enhancement loop, labels, training, and its use in inference."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from icn_rt.cli import app
from icn_rt.data.proposals import Proposals
from icn_rt.data.results import load_results
from icn_rt.data.voc import Instance
from icn_rt.errors import InputError
from icn_rt.models.icn import ICN, ICNSettings, enhance, load_classifier_encoder, load_pretrained_encoder, minmax
from icn_rt.models.store import load_icn
from icn_rt.runtime.predictor import Predictor
from icn_rt.training.pseudo_labels import proposal_labels, saliency_label
from tests.conftest import ICN_ARGS
from tests import reference as ref

runner = CliRunner()
SMALL = ICNSettings(encoder="small", width=8)


def _inputs(k=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, 3, size, size, generator=g), torch.rand(k, 1, size, size, generator=g)


# --- architecture ---------------------------------------------------------------------

def _block_inputs(icn, blocks):
    seen = []
    hooks = [b.register_forward_hook(lambda m, args, out: seen.append((tuple(args[0].shape), tuple(out.shape))))
             for b in blocks]
    return seen, hooks


@pytest.mark.parametrize("encoder,size", [("small", 32), ("vgg16", 32)])
def test_cfm_and_dfm_paths_have_the_designed_shapes(encoder, size):
    """CFM walks s5 -> s1 (each E sees U(f) ++ s_i at s_i's size); DFM stays at s1's size
    and takes in s2..s5 in turn; the logit is at the input's resolution."""
    icn = ICN(ICNSettings(encoder=encoder, width=8)).eval()
    widths = {"small": (16, 32, 48, 64, 64), "vgg16": (64, 128, 256, 512, 512)}[encoder]
    s1 = size // (2 if encoder == "small" else 1)
    cfm, h1 = _block_inputs(icn, icn.cfm)
    dfm, h2 = _block_inputs(icn, icn.dfm)
    x, prm = _inputs(2, size)
    logits = icn(x, prm)
    for h in h1 + h2:
        h.remove()
    assert logits.shape == (2, 1, size, size)
    sides = [s1 // 2 ** i for i in range(5)]
    assert cfm == [((2, (widths[4] if i == 3 else 8) + widths[i], sides[i], sides[i]), (2, 8, sides[i], sides[i]))
                   for i in (3, 2, 1, 0)]
    assert dfm == [((2, widths[i] + (widths[0] if i == 1 else 8), s1, s1), (2, 8, s1, s1)) for i in (1, 2, 3, 4)]


def test_gradients_reach_every_parameter_and_the_prm_input():
    icn = ICN(SMALL)
    x, prm = _inputs()
    prm.requires_grad_(True)
    icn(x, prm).square().mean().backward()
    for name, p in icn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert prm.grad.abs().sum() > 0


def test_ablation_switches():
    x, prm = _inputs()
    no_prm = ICN(ICNSettings(encoder="small", width=8, prm_input=False)).eval()
    assert no_prm.stages[0][0].in_channels == 3
    torch.testing.assert_close(no_prm(x, prm), no_prm(x, torch.rand_like(prm)), rtol=0, atol=0)
    flat = ICN(ICNSettings(encoder="small", width=8, propagation=False)).eval()
    assert not hasattr(flat, "cfm") and not hasattr(flat, "dfm")
    assert flat.mapping[0].in_channels == 64 + 16  # U(s5) ++ s1
    assert flat(x, prm).shape == (3, 1, 32, 32)
    with pytest.raises(ValueError, match="unknown ICN encoder"):
        ICNSettings(encoder="resnet")


def test_pretrained_encoder_loads_vgg16_bn_and_zeroes_the_prm_channel(tmp_path):
    from torchvision.models import vgg16_bn

    ref = vgg16_bn(weights=None).features
    for m in ref:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
    path = tmp_path / "vgg16_bn.pth"
    torch.save({f"features.{k}": v for k, v in ref.state_dict().items()}, path)
    icn = ICN(ICNSettings())
    load_pretrained_encoder(icn, str(path))
    first = icn.stages[0][0].weight
    assert torch.equal(first[:, :3], ref[0].weight) and not first[:, 3].any()
    assert torch.equal(icn.stages[4][-2].running_mean, ref[41].running_mean)
    torch.save({"features.0.weight": ref[0].weight}, path)
    with pytest.raises(InputError, match="vgg16_bn.pth.*missing"):
        load_pretrained_encoder(ICN(ICNSettings()), str(path))


@pytest.mark.parametrize("trunk,size", [("small", 32), ("vgg16", 32)])
def test_classifier_encoder_is_the_classifier_backbone_with_a_zero_prm_channel(trunk, size):
    """Loaded from a classifier backbone, the encoder's stages reproduce the backbone's
    output exactly, whatever the PRM channel holds; small's fifth stage is its own."""
    from icn_rt.models.backbones import build_backbone

    torch.manual_seed(0)
    backbone = build_backbone(trunk).eval()
    for m in backbone:
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    icn = ICN(ICNSettings(encoder="classifier", trunk=trunk, width=8)).eval()
    fifth = [p.clone() for p in icn.stages[4].parameters()]
    load_classifier_encoder(icn, backbone.state_dict())
    x, prm = _inputs(2, size)
    h = torch.cat([x, prm], 1)
    for stage in icn.stages[: 4 if trunk == "small" else 5]:
        h = stage(h)
    with torch.no_grad():
        torch.testing.assert_close(h, backbone(x), rtol=1e-5, atol=1e-5)
    assert not icn.stages[0][0].weight[:, 3].any()
    assert [s[-3].out_channels for s in icn.stages] == ([32, 64, 128, 128, 128] if trunk == "small"
                                                         else [64, 128, 256, 512, 512])
    if trunk == "small":  # the backbone has four stages: the fifth keeps its own start
        assert all(torch.equal(a, b) for a, b in zip(fifth, icn.stages[4].parameters()))
    assert icn(x, prm).shape == (2, 1, size, size)


def test_classifier_encoder_refuses_what_it_cannot_be():
    from icn_rt.models.backbones import build_backbone

    with pytest.raises(ValueError, match="needs a small or vgg16 classifier backbone, not 'resnet50'"):
        ICNSettings(encoder="classifier", trunk="resnet50")
    with pytest.raises(ValueError, match="the small ICN encoder is not the classifier's backbone"):
        load_classifier_encoder(ICN(SMALL), build_backbone("small").state_dict())
    icn = ICN(ICNSettings(encoder="classifier", trunk="vgg16", width=8))
    with pytest.raises(ValueError, match=r"not a vgg16 classifier backbone: 0.weight has shape \(32, 4, 3, 3\)"):
        load_classifier_encoder(icn, build_backbone("small").state_dict())


def test_train_icn_starts_the_classifier_encoder_from_the_classifier(classifier, tiny_voc, tmp_path):
    """``--encoder classifier``: the trunk comes from the model, the encoder from the
    classifier's weights (at lr 0 its convolutions stay them), and the trained ICN loads."""
    import shutil

    from icn_rt.models.store import load_classifier

    model = tmp_path / "m"
    shutil.copytree(classifier, model)
    args = [a if a != "small" else "classifier" for a in ICN_ARGS]
    args[args.index("--lr") + 1] = "0"
    r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(model), "--epochs", "1",
                            "--supervision", "saliency", *args])
    assert r.exit_code == 0, r.output
    config = json.loads((model / "config.json").read_text())
    assert config["icn"]["encoder"] == "classifier" and config["icn"]["trunk"] == "small"
    icn, backbone = load_icn(model), load_classifier(model)[0].backbone
    first = icn.stages[0][0].weight
    assert torch.equal(first[:, :3], backbone[0].weight) and not first[:, 3].any()
    assert torch.equal(icn.stages[3][1].weight, backbone[12].weight)  # the fourth stage's conv
    r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(model), "--epochs", "1", "--supervision",
                            "saliency", *args, "--pretrained", "imagenet"])
    assert r.exit_code != 0 and "starts from the model's classifier" in r.output


# --- enhancement loop -----------------------------------------------------------------

def test_minmax():
    v = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    torch.testing.assert_close(minmax(v), torch.tensor([[[0, 0.5], [0.25, 1]], [[0.0, 0], [0, 0]]]))


class _Recorder(nn.Module):
    """A stand-in ICN whose logit is 4·(prm − 0.5) + the image's first channel, recording its inputs."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, image, prm):
        self.calls.append((image.clone(), prm.clone()))
        return 4 * (prm - 0.5) + image[:, :1]


def test_enhance_runs_t_steps_on_min_max_maps_of_the_right_image():
    images = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    image_of = torch.tensor([1, 0, 1])
    prms = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2)) / 100
    icn = _Recorder()
    v = enhance(icn, images, image_of, prms, steps=3, chunk=2)
    expected = prms
    for _ in range(3):
        expected = torch.sigmoid(4 * (minmax(expected) - 0.5) + images[image_of, 0])
    torch.testing.assert_close(v, expected)
    assert len(icn.calls) == 6  # 3 steps × 2 chunks (2 + 1 peaks)
    torch.testing.assert_close(icn.calls[0][0], images[[1, 0]])
    torch.testing.assert_close(icn.calls[0][1][:, 0], minmax(prms[:2]))
    assert float(icn.calls[0][1].amax()) == 1.0
    torch.testing.assert_close(enhance(_Recorder(), images, image_of, prms, steps=3, chunk=16), v)
    assert torch.equal(enhance(_Recorder(), images, image_of, prms, steps=0), prms)


# --- labels ---------------------------------------------------------------------------

def _box(y0, y1, x0, x1, shape=(10, 10)):
    m = np.zeros(shape, bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pseudo_label_skips_proposals_inside_a_kept_one():
    big = _box(0, 6, 0, 6)
    inside = _box(1, 3, 1, 3)        # entirely inside big
    partial = _box(4, 8, 4, 8)       # overlaps big, not inside it
    apart = _box(8, 10, 0, 2)
    last = _box(0, 2, 8, 10)
    masks = np.stack([inside, big, partial, apart, last])
    # the same proposals as segments: a superpixel per pixel, ids from 51 up shifted by
    # one so that id 50 names no pixel; "inside" also lists it and is still inside "big"
    pixel = np.arange(100).reshape(10, 10)
    superpixels = pixel + (pixel >= 50)
    groups = [np.append(superpixels[m], 50) if i == 0 else superpixels[m] for i, m in enumerate(masks)]
    for props in (Proposals.from_masks(masks, np.zeros(5)), Proposals.from_segments(superpixels, groups, np.zeros(5))):
        scores = np.array([[4.0, 5.0, 3.0, 2.0, 1.0], [5.0, 4.0, -np.inf, -np.inf, 1.0], [-np.inf] * 5])
        labels, kept = proposal_labels(scores, props, 3)
        assert kept.tolist() == [[1, 2, 3], [0, 1, 4], [-1, -1, -1]]
        np.testing.assert_array_equal(labels[0], big | partial | apart)
        # kept first, a small one does not stop the larger one that contains it
        np.testing.assert_array_equal(labels[1], big | last)
        assert not labels[2].any()


def test_saliency_label_takes_the_instance_of_the_class_with_most_prm_mass():
    prm = np.zeros((10, 10))
    prm[5:8, 5:8] = 1.0
    a, b, c = Instance(0, _box(0, 4, 0, 4)), Instance(0, _box(5, 9, 5, 9)), Instance(1, _box(5, 9, 5, 9))
    assert saliency_label(prm, [a, b, c], 0) is b.mask
    assert saliency_label(prm, [a, c], 0) is a.mask
    assert saliency_label(prm, [a, b], 2) is None


# --- training and inference, end to end -----------------------------------------------

def test_pseudo_labels_are_stored_per_image_and_reused(classifier, tiny_voc, tmp_path):
    out = tmp_path / "labels"
    r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier), "--labels", str(out)])
    assert r.exit_code == 0, r.output
    files = sorted(out.glob("*.npz"))
    assert [f.stem for f in files] == sorted((tiny_voc / "ImageSets/Segmentation/train.txt").read_text().split())
    total = 0
    for f in files:
        z = np.load(f)
        k = len(z["cls"])
        total += k
        labels = set(np.flatnonzero([c in z["cls"] for c in range(3)]))
        assert z["prm"].shape == (k, 64, 64) and z["prm"].dtype == np.uint8
        assert z["label"].shape == (k, 64, 64) and z["label"].dtype == bool
        assert z["kept"].shape == (k, 3) and z["peak"].shape == (k, 2)
        assert (z["prm"].reshape(k, -1).max(1) == 255).all()
        assert labels <= set(_image_labels(tiny_voc, f.stem))  # only classes the image is tagged with
        assert z["label"].reshape(k, -1).any(1).all()
    assert total > 0
    r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier), "--labels", str(out)])
    assert r.exit_code == 0 and "already there" in r.output
    r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier), "--labels", str(out),
                            "--k", "2"])
    assert r.exit_code == 2 and "settings.json" in r.output and "other settings" in r.output


def test_pseudo_labels_rerank_by_objectness(classifier, tiny_voc, tmp_path):
    from dataclasses import replace

    from icn_rt.data.images import read_image
    from icn_rt.data.preprocess import preprocess_batch
    from icn_rt.data.proposals import load_proposals, proposal_path
    from icn_rt.data.voc import VOCDataset
    from icn_rt.matching import score_proposals
    from icn_rt.models.store import load_model

    plain, ranked = tmp_path / "plain", tmp_path / "ranked"
    for out, extra in ((plain, ["--rerank", "0"]), (ranked, ["--rerank", "5", "--k", "1"])):
        r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier), "--labels", str(out),
                                *extra])
        assert r.exit_code == 0, r.output
    # off is recorded as labels made before the setting existed were
    assert "rerank" not in json.loads((plain / "settings.json").read_text())["matching"]
    assert json.loads((ranked / "settings.json").read_text())["matching"]["rerank"] == 5
    model = load_model(classifier, "cpu")
    plain_matching = replace(model.matching, rerank=0)
    ds = VOCDataset(tiny_voc, "train", load_images=False)
    checked = 0
    for image_id in ds.ids:
        image = read_image(ds.image_path(image_id))
        props = load_proposals(proposal_path(tiny_voc / "Proposals", image_id), expected_shape=image.shape[:2])
        naive = model.naive_maps(preprocess_batch([image], model.input_size))
        keep = np.isin(naive.peaks.cls.numpy(), ds.labels(image_id))
        cls = naive.peaks.cls.numpy()[keep]
        scores = score_proposals(naive.prms.numpy()[keep], naive.maps[0].numpy()[cls], props, plain_matching).scores
        kept = np.load(ranked / f"{image_id}.npz")["kept"]
        assert kept.shape == (len(cls), 1)
        tops = [np.argsort(-row, kind="stable")[:5] for row in scores]
        tops = [top[np.isfinite(row[top])] for row, top in zip(scores, tops)]
        # the reference scores each candidate on its own: only those some peak ranks are needed
        needed = np.unique(np.concatenate([*tops, np.zeros(0, np.int64)]))
        value = dict(zip(needed.tolist(), ref.objectness(image, props.to_masks(), needed)))
        for top, got in zip(tops, kept[:, 0]):
            assert got == top[np.argmax([value[t] for t in top.tolist()])]
            checked += 1
    assert checked > 0


def _image_labels(root, image_id):
    from icn_rt.data.voc import VOCDataset

    return VOCDataset(root, "train", load_images=False).labels(image_id).tolist()


def test_saliency_labels_come_from_ground_truth_instances(classifier, tiny_voc, tmp_path):
    from icn_rt.data.voc import VOCDataset

    out = tmp_path / "sal"
    r = runner.invoke(app, ["train", "pseudo-labels", str(tiny_voc), "--model", str(classifier), "--labels", str(out),
                            "--supervision", "saliency"])
    assert r.exit_code == 0, r.output
    ds = VOCDataset(tiny_voc, "train", load_images=False)
    for f in out.glob("*.npz"):
        z = np.load(f)
        gt = [i.mask for i in ds.ground_truth(f.stem).instances]
        for label in z["label"]:
            assert any(np.array_equal(label, m) for m in gt)  # 64 px images: no resize


def test_icn_training_lowers_the_loss_and_is_stored(with_icn):
    model, output = with_icn
    log = json.loads((model / "icn_train_log.json").read_text())
    assert len(log) == 10 and "ICN epoch 10/10" in output
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    config = json.loads((model / "config.json").read_text())
    assert config["icn"] == {"encoder": "small", "trunk": "small", "width": 8, "propagation": True,
                             "prm_input": True, "steps": 3, "chunk": 16}
    assert config["icn_training"]["epochs"] == 10 and config["icn_training"]["lr_step"] == 20
    assert config["icn_training"]["self_feed"] == 0.5  # the default
    assert load_icn(model).settings.width == 8


def test_self_fed_rows_are_what_the_loop_feeds_back():
    from icn_rt.training.icn import self_fed

    x, prm = _inputs(k=3, size=32, seed=3)
    chosen = torch.tensor([True, False, True])
    got = self_fed(_Recorder(), x, prm, chosen)
    want = minmax(torch.sigmoid(4 * (prm[:, 0] - 0.5) + x[:, 0]))
    torch.testing.assert_close(got[chosen, 0], want[chosen])
    assert torch.equal(got[1], prm[1])
    icn = ICN(SMALL)
    assert not self_fed(icn, x, prm, chosen).requires_grad  # a fixed input, like the PRM
    assert self_fed(icn, x, prm, torch.zeros(3, dtype=torch.bool)) is prm


def test_self_feeding_training_is_a_setting(with_icn, classifier, tiny_voc, tmp_path):
    import shutil

    model, _ = with_icn
    labels = ["--labels", str(model / "labels-saliency-train"), "--supervision", "saliency", *ICN_ARGS]

    def train(name: str, *extra: str) -> dict:
        out = tmp_path / name
        if not out.exists():
            shutil.copytree(classifier, out)
        r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(out), *labels, *extra])
        assert r.exit_code == 0, r.output
        return load_file(str(out / "icn.safetensors"))

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    shutil.copytree(classifier, tmp_path / "bad")
    r = runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(tmp_path / "bad"), *labels, "--epochs", "2",
                            "--self-feed", "1.5"])
    assert r.exit_code == 2 and "self_feed must be in [0, 1], got 1.5" in r.output
    off, fed = train("0", "--epochs", "2", "--self-feed", "0"), train("0.5", "--epochs", "2", "--self-feed", "0.5")
    assert json.loads((tmp_path / "0.5" / "config.json").read_text())["icn_training"]["self_feed"] == 0.5
    assert not same(off, fed)
    # without PRM input there is nothing to feed: the same training either way
    assert same(train("noprm-0", "--epochs", "2", "--no-prm-input", "--self-feed", "0"),
                train("noprm-0.5", "--epochs", "2", "--no-prm-input", "--self-feed", "0.5"))
    # a run stored before the setting existed resumes as it started: without self-feeding
    train("old", "--epochs", "1", "--self-feed", "0")
    config = json.loads((tmp_path / "old" / "config.json").read_text())
    del config["icn_training"]["self_feed"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(config))
    assert same(train("old", "--epochs", "2", "--resume"), off)


def test_icn_resume_continues_exactly(with_icn, classifier, tiny_voc, tmp_path):
    import shutil

    model, _ = with_icn
    part = tmp_path / "part"
    shutil.copytree(classifier, part)
    args = ["train", "icn", str(tiny_voc), "--model", str(part), "--labels", str(model / "labels-saliency-train"),
            "--supervision", "saliency",
            *ICN_ARGS]
    assert runner.invoke(app, [*args, "--epochs", "4"]).exit_code == 0
    r = runner.invoke(app, [*args, "--epochs", "10", "--resume"])
    assert r.exit_code == 0 and "resuming" in r.output, r.output
    a, b = load_file(str(model / "icn.safetensors")), load_file(str(part / "icn.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predictor_enhances_and_steps_zero_is_the_naive_predictor(with_icn, classifier, tiny_voc):
    from icn_rt.data.images import read_image
    from icn_rt.data.proposals import load_proposals, proposal_path
    from icn_rt.data.voc import VOCDataset

    model, _ = with_icn
    ds = VOCDataset(tiny_voc, "val", load_images=False)
    images = [read_image(ds.image_path(i)) for i in ds.ids]
    props = [load_proposals(proposal_path(tiny_voc / "Proposals", i)) for i in ds.ids]
    naive = Predictor.from_dir(classifier).predict(images, props)
    off = Predictor.from_dir(model, icn_steps=0).predict(images, props)
    assert [[(i.class_id, i.proposal, i.score) for i in p.instances] for p in naive] == \
           [[(i.class_id, i.proposal, i.score) for i in p.instances] for p in off]
    on = Predictor.from_dir(model)
    assert on.enhances and on.model.icn_settings.steps == 3
    got = on.predict(images, props)
    enhanced = [i for p in got for i in p.instances]
    assert enhanced and all(i.enhanced.shape == (64, 64) and 0 <= i.enhanced.min() <= i.enhanced.max() <= 1
                            for i in enhanced)
    # each enhanced map is T steps of the ICN on that peak's image
    naive_maps = on.naive_maps(images)
    direct = enhance(on.model.icn, naive_maps.x, naive_maps.peaks.image, naive_maps.prms, 3).numpy()
    assert any(np.allclose(enhanced[0].enhanced, d, atol=1e-6) for d in direct)
    # without maps kept (infer without pictures): the same instances, no maps
    bare = on.predict(images, props, keep_maps=False)
    assert [[(i.class_id, i.proposal, i.score, i.peak, i.match) for i in p.instances] for p in bare] == \
           [[(i.class_id, i.proposal, i.score, i.peak, i.match) for i in p.instances] for p in got]
    assert all(np.array_equal(i.mask, j.mask) for p, q in zip(bare, got) for i, j in zip(p.instances, q.instances))
    assert all(i.prm is None and i.enhanced is None for p in bare for i in p.instances)


def test_infer_cli_uses_the_icn(with_icn, tiny_voc, tmp_path):
    model, _ = with_icn
    paths = sorted(str(p) for p in (tiny_voc / "JPEGImages").glob("val_*.jpg"))
    outs = {}
    for steps in ("0", "2"):
        results = tmp_path / f"r{steps}.json"
        r = runner.invoke(app, ["infer", str(model), *paths, "--proposals", str(tiny_voc / "Proposals"),
                                "--out", str(results), "--icn-steps", steps, "--save-vis", str(tmp_path / steps)])
        assert r.exit_code == 0, r.output
        outs[steps] = load_results(results, ("disc", "triangle", "square"))
    assert outs["0"] != outs["2"]
    from icn_rt.data.images import read_image

    image_id = next(i for i in outs["2"] if outs["2"][i])
    # the PRM strip gets a second row, the enhanced maps, when the ICN ran
    assert read_image(tmp_path / "0" / f"{image_id}_prm.png").shape[0] == 64
    assert read_image(tmp_path / "2" / f"{image_id}_prm.png").shape[0] == 2 * 64 + 2


def test_ablation_benchmark_writes_every_row(with_icn, tiny_voc, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    model, _ = with_icn
    out = tmp_path / "ablation.json"
    script = Path(__file__).parents[1] / "benchmarks" / "ablation.py"
    r = subprocess.run([sys.executable, str(script), "--root", str(tiny_voc), "--full", str(model),
                        "--no-propagation", str(model), "--no-prm-input", str(model), "--paper-training", str(model),
                        "--steps", "1", "3", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads(out.read_text())
    assert [row["variant"] for row in record["rows"]] == [
        "w/o ICN (naive PRM)", "w/o CFM&DFM", "w/o PRM input", "w/o rebalance (vanilla matching)", "full",
        "T = 1", "T = 3", "T = 1", "T = 3"]
    assert [row["table"] for row in record["rows"]][-2:] == ["steps, trained without self-feeding (the paper)"] * 2
    assert record["rows"][-1]["metrics"] == record["rows"][6]["metrics"]  # the same model given twice
    maps = record["enhanced_maps"]
    assert list(maps) == ["full", "full, trained without self-feeding"] and maps["full"] == maps[
        "full, trained without self-feeding"]
    assert [s["step"] for s in maps["full"]] == [0, 1, 2, 3]
    assert all(s["peaks"] == maps["full"][0]["peaks"] > 0 for s in maps["full"])
    assert all(0 <= s["mean_area_fraction"] <= 1 and 0 <= s["mean_iou_with_gt"] <= 1 for s in maps["full"])
    assert len({s["mean_area_fraction"] for s in maps["full"]}) > 1  # the steps change the maps
    rows = {row["variant"]: row for row in record["rows"]}
    assert rows["w/o ICN (naive PRM)"]["icn_steps"] == 0 and rows["w/o ICN (naive PRM)"]["matching"] == "vanilla"
    assert rows["full"]["matching"] == "iou" and rows["w/o rebalance (vanilla matching)"]["matching"] == "vanilla"
    assert rows["T = 3"]["metrics"] == rows["full"]["metrics"]
    assert record["pseudo_labels"]["peaks"] > 0 and record["machine"]
    table = out.with_suffix(".md").read_text()
    assert table.count("\n| ") == 10 + 3 and table.count("\n|---|") == 2  # header + 9 rows; header + 2 models
    assert "| full | " in table
