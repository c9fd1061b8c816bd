"""Datasets beyond VOC folders: the tags and COCO readers, conversion between layouts,
pseudo labels as a COCO dataset, and a whole run on each layout giving VOC's results."""

import json
import shutil
import warnings

import numpy as np
import pytest

from tests.conftest import CLASSIFIER, TINY, runner
from icn_rt.cli import app
from icn_rt.data.coco_dataset import CocoDataset
from icn_rt.data.convert import convert_dataset, results_to_coco
from icn_rt.data.datasets import InputWarning, dataset_splits, detect_layout, listed_images, open_dataset
from icn_rt.data.images import write_image
from icn_rt.data.results import result_entry, write_results
from icn_rt.data.synth import generate
from icn_rt.data.tags import TagsDataset
from icn_rt.errors import InputError
from icn_rt.runtime.sources import list_images


def _image(path, h=8, w=10, value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, np.full((h, w, 3), value, np.uint8))


def _same_samples(a, b, masks: bool) -> None:
    assert a.ids == b.ids and a.classes == b.classes
    for image_id in a.ids:
        x, y = a.get(image_id), b.get(image_id)
        assert np.array_equal(x.labels, y.labels) and np.array_equal(x.image, y.image)
        if masks:
            assert np.array_equal(x.instance_masks(), y.instance_masks())
            assert np.array_equal(x.instance_classes(), y.instance_classes())
            assert np.array_equal(x.semantic, y.semantic)


# --- conversion ------------------------------------------------------------------------

def test_voc_converts_to_coco_and_tags_and_back_unchanged(tiny_voc, tmp_path):
    for to in ("coco", "tags"):
        convert_dataset(tiny_voc, tmp_path / to, to, progress=False)
    convert_dataset(tmp_path / "coco", tmp_path / "voc_from_coco", "voc", progress=False)
    convert_dataset(tmp_path / "tags", tmp_path / "voc_from_tags", "voc", progress=False)
    assert [detect_layout(tmp_path / n) for n in ("coco", "tags", "voc_from_coco")] == ["coco", "tags", "voc"]
    assert dataset_splits(tmp_path / "coco") == dataset_splits(tiny_voc) == ["dev", "train", "trainval", "val"]
    for split in ("train", "val"):
        voc = open_dataset(tiny_voc, split, load_images=True)
        assert len(voc) == {"train": TINY.train, "val": TINY.val}[split]
        for name, masks in (("coco", True), ("voc_from_coco", True), ("tags", False), ("voc_from_tags", False)):
            _same_samples(voc, open_dataset(tmp_path / name, split, load_images=True), masks)
    # a tags layout has no masks: VOC from it has annotation XML only
    assert open_dataset(tmp_path / "voc_from_tags", "val").get("val_000000").instances is None
    # an image in two splits (VOC's trainval) is one file in the tags layout
    assert len(list((tmp_path / "tags" / "images").iterdir())) == TINY.train + TINY.dev + TINY.val


def test_conversion_refuses_what_it_cannot_do(tiny_voc, tmp_path):
    convert_dataset(tiny_voc, tmp_path / "tags", "tags", splits=["val"], progress=False)
    assert dataset_splits(tmp_path / "tags") == ["val"]
    with pytest.raises(InputError, match="tags layout has no masks for COCO"):
        convert_dataset(tmp_path / "tags", tmp_path / "coco", "coco", progress=False)
    with pytest.raises(InputError, match="not empty"):
        convert_dataset(tiny_voc, tmp_path / "tags", "voc", progress=False)
    with pytest.raises(ValueError, match="unknown layout 'yolo'"):
        convert_dataset(tiny_voc, tmp_path / "y", "yolo", progress=False)
    r = runner.invoke(app, ["data", "convert", str(tmp_path / "nothere"), str(tmp_path / "z"), "--to", "voc"])
    assert r.exit_code == 2 and r.output.strip().endswith("nothere: dataset root is not a directory")


# --- the tags layout -------------------------------------------------------------------

def _tags_root(tmp_path, text: str, name: str = "tags.csv", images=("a.jpg", "b.png", "c.jpg")):
    root = tmp_path / "tags"
    root.mkdir(parents=True)
    for image in images:
        _image(root / "images" / image)
    (root / name).write_text(text)
    return root


def test_tags_csv_with_a_split_column(tmp_path):
    root = _tags_root(tmp_path, "image,classes,split\na.jpg,cat;dog,train\nb.png,,train\nc.jpg, dog ,val\n")
    ds = TagsDataset(root, "train")
    assert ds.classes == ("cat", "dog") and ds.ids == ["a", "b"] and ds.skipped == []
    assert ds.labels("a").tolist() == [0, 1] and ds.labels("b").tolist() == []
    assert ds.image_path("b") == root / "images" / "b.png"
    assert TagsDataset(root, "val").labels("c").tolist() == [1]
    assert dataset_splits(root) == ["train", "val"]
    with pytest.raises(InputError, match=r"tags.csv: no rows of split 'dev' \(splits: train, val\)"):
        TagsDataset(root, "dev")
    with pytest.raises(InputError, match="no instance masks to evaluate against"):
        ds.ground_truth("a")


def test_tags_jsonl_with_split_files_and_classes_txt(tmp_path):
    root = _tags_root(tmp_path, '{"image": "a.jpg", "classes": ["dog"]}\n\n{"image": "c.jpg", "classes": []}\n',
                      name="tags.jsonl")
    (root / "classes.txt").write_text("dog\ncat\n")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("c.jpg\na.jpg\n")
    ds = open_dataset(root, "train")
    assert ds.layout == "tags" and ds.classes == ("dog", "cat") and ds.ids == ["c", "a"]
    assert ds.labels("a").tolist() == [0]
    (root / "splits" / "val.txt").write_text("b.png\n")
    with pytest.raises(InputError, match=r"val.txt: line 1: image 'b.png' has no row in tags.jsonl"):
        TagsDataset(root, "val")
    with pytest.raises(InputError, match="no split column and no splits/dev.txt"):
        TagsDataset(root, "dev")


@pytest.mark.parametrize("text, problem", [
    ("image,classes\na.jpg,cat,extra\n", "tags.csv: row 2: 3 cells where the header has 2"),
    ("image,labels\na.jpg,cat\n", "tags.csv: row 1: the header needs columns image and classes"),
    ("image,classes,split\na.jpg,cat,train\n,dog,train\n", "tags.csv: row 3: empty image name"),
    ("image,classes,split\na.jpg,cat,train\nsub/a.png,cat,train\n",
     "tags.csv: row 3: image id 'a' .* is also that of row 2"),
    ("image,classes,split\na.jpg,cat;bird,train\n", "tags.csv: row 2: unknown class 'bird'"),
])
def test_a_bad_tags_row_is_one_line_naming_file_and_row(tmp_path, text, problem):
    root = _tags_root(tmp_path, text)
    (root / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(InputError, match=problem):
        TagsDataset(root, "train")


def test_a_bad_jsonl_line_names_the_line(tmp_path):
    root = _tags_root(tmp_path, '{"image": "a.jpg", "classes": ["cat"]}\n{"image": "b.png", "classes": "cat"}\n',
                      name="tags.jsonl")
    with pytest.raises(InputError, match=r"tags.jsonl: line 2: \"classes\" must be a list"):
        TagsDataset(root, "train")


def test_a_missing_tagged_image_is_recorded_and_skipped(tmp_path):
    root = _tags_root(tmp_path, "image,classes,split\na.jpg,cat,train\ngone.jpg,dog,train\nc.jpg,dog,train\n")
    with pytest.warns(InputWarning, match=r"tags.csv: row 3: image .*gone.jpg not found, skipped"):
        ds = TagsDataset(root, "train")
    assert ds.ids == ["a", "c"] and len(ds.skipped) == 1 and "row 3" in ds.skipped[0]
    only_missing = _tags_root(tmp_path / "x", "image,classes,split\ngone.jpg,dog,train\n", images=())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"split 'train' has no readable images \(1 listed, none found\)"):
            TagsDataset(only_missing, "train")


# --- the COCO layout -------------------------------------------------------------------

def _coco_root(tmp_path, annotations, images=None, found=("x.jpg", "y.jpg")):
    root = tmp_path / "coco"
    (root / "val").mkdir(parents=True)
    for name in found:
        _image(root / "val" / name)
    images = images if images is not None else [{"id": 7, "file_name": "x.jpg", "height": 8, "width": 10},
                                                {"id": 9, "file_name": "y.jpg", "height": 8, "width": 10}]
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": images, "annotations": annotations,
        "categories": [{"id": 5, "name": "dog"}, {"id": 2, "name": "cat"}]}))
    return root


def test_coco_polygons_rle_and_crowds(tmp_path):
    full = np.zeros((8, 10), np.uint8)
    full[0:2, 0:10] = 1  # uncompressed RLE, column-major: per column 2 ones then 6 zeros
    counts = [0] + [2, 6] * 9 + [2, 6]
    root = _coco_root(tmp_path, [
        {"id": 1, "image_id": 7, "category_id": 5, "segmentation": [[2, 2, 6, 2, 6, 5, 2, 5]], "iscrowd": 0},
        {"id": 2, "image_id": 7, "category_id": 2, "segmentation": {"size": [8, 10], "counts": counts},
         "iscrowd": 1},
    ])
    ds = open_dataset(root, "val")
    assert ds.layout == "coco" and ds.classes == ("cat", "dog") and ds.ids == ["x", "y"]
    assert ds.labels("x").tolist() == [0, 1] and ds.labels("y").tolist() == []
    sample = ds.ground_truth("x")
    dog, crowd = sample.instances
    expected = np.zeros((8, 10), bool)
    expected[2:5, 2:6] = True  # COCO's rasterisation of the rectangle (2,2)-(6,5)
    assert dog.class_id == 1 and not dog.difficult and np.array_equal(dog.mask, expected)
    assert crowd.class_id == 0 and crowd.difficult and np.array_equal(crowd.mask, full.astype(bool))
    assert (sample.semantic[0:2] == 255).all() and (sample.semantic[2:5, 2:6] == 2).all()
    assert sample.semantic.sum() == 255 * 20 + 2 * 12
    assert ds.ground_truth("y").instances == [] and ds.get("y").size == (8, 10)


@pytest.mark.parametrize("annotations, images, problem", [
    ([{"id": 1, "image_id": 3, "category_id": 5, "segmentation": [[0, 0, 2, 0, 2, 2]]}], None,
     r"annotations\[0\]: image_id 3 is not among the images"),
    ([{"id": 1, "image_id": 7, "category_id": 4, "segmentation": [[0, 0, 2, 0, 2, 2]]}], None,
     r"annotations\[0\]: category_id 4 is not a category"),
    ([], [{"id": 7, "file_name": "x.jpg"}], r"images\[0\] needs a positive integer height and width"),
])
def test_a_bad_coco_file_is_one_line_naming_the_entry(tmp_path, annotations, images, problem):
    root = _coco_root(tmp_path, annotations, images)
    with pytest.raises(InputError, match="instances_val.json: " + problem):
        CocoDataset(root, "val")


def test_a_bad_coco_segmentation_names_the_annotation(tmp_path):
    root = _coco_root(tmp_path, [{"id": 1, "image_id": 9, "category_id": 5, "segmentation": [[0, 0, 2]]}])
    with pytest.raises(InputError, match=r"annotations\[0\]: bad segmentation \(polygons must be"):
        CocoDataset(root, "val").ground_truth("y")


def test_missing_coco_images_are_recorded_and_skipped(tmp_path):
    with pytest.warns(InputWarning, match=r"images\[1\]: image .*y.jpg not found, skipped"):
        ds = CocoDataset(_coco_root(tmp_path, [], found=("x.jpg",)), "val")
    assert ds.ids == ["x"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(InputError, match=r"has no readable images \(2 listed, none found\)"):
            CocoDataset(_coco_root(tmp_path / "none", [], found=()), "val")


def test_a_dataset_listing_is_an_image_source(tmp_path):
    coco = _coco_root(tmp_path, [], found=("x.jpg",))
    assert list_images([coco / "annotations" / "instances_val.json"]) == [coco / "val" / "x.jpg",
                                                                         coco / "val" / "y.jpg"]
    tags = _tags_root(tmp_path, "image,classes,split\na.jpg,cat,train\na.jpg,cat,trainval\nc.jpg,,val\n")
    assert list_images([tags / "tags.csv"]) == [tags / "images" / "a.jpg", tags / "images" / "c.jpg"]
    assert listed_images(tags / "images" / "a.jpg") is None


# --- pseudo labels as a COCO dataset ---------------------------------------------------

def test_results_become_a_coco_dataset(tmp_path):
    images = tmp_path / "imgs"
    _image(images / "p.jpg")
    _image(images / "q.png", 6, 4)
    classes = ("cat", "dog", "bird")
    mask = np.zeros((8, 10), bool)
    mask[1:4, 2:7] = True
    write_results(tmp_path / "r.json", [result_entry("p", 2, 0.9, mask, classes),
                                        result_entry("p", 0, 0.1, ~mask, classes)])
    counts = results_to_coco(tmp_path / "r.json", list_images([images]), tmp_path / "out", classes, "train",
                             min_score=0.5)
    assert counts == {"images": 2, "annotations": 1}
    ds = open_dataset(tmp_path / "out", "train")
    assert ds.classes == classes and ds.ids == ["p", "q"]
    (inst,) = ds.ground_truth("p").instances
    assert inst.class_id == 2 and np.array_equal(inst.mask, mask)
    assert ds.ground_truth("q").instances == [] and ds.get("q").size == (6, 4)
    write_results(tmp_path / "bad.json", [result_entry("zzz", 0, 1.0, mask, classes)])
    with pytest.raises(InputError, match="results name images not given: zzz"):
        results_to_coco(tmp_path / "bad.json", list_images([images]), tmp_path / "out2", classes)
    r = runner.invoke(app, ["data", "convert", str(tmp_path / "r.json"), str(tmp_path / "o3"), "--to", "coco-dataset"])
    assert r.exit_code == 2 and "needs --images" in r.output


# --- a whole run on each layout --------------------------------------------------------

@pytest.mark.slow
def test_coco_and_tags_layouts_give_the_voc_layouts_results(tiny_voc, classifier, tmp_path):
    """proposals -> train classifier -> train icn -> infer -> eval on a COCO and a tags
    layout of the tiny set: the same weights, results and metrics as on its VOC layout."""
    icn = ["--epochs", "2", "--encoder", "small", "--width", "8", "--batch-size", "4", "--lr", "3e-3"]
    voc_model = tmp_path / "voc_model"
    shutil.copytree(classifier, voc_model)
    assert runner.invoke(app, ["train", "icn", str(tiny_voc), "--model", str(voc_model), *icn]).exit_code == 0
    reference = tmp_path / "voc.json"
    r = runner.invoke(app, ["infer", str(voc_model), str(tiny_voc / "JPEGImages" / "val_*.jpg"), "--proposals",
                            str(tiny_voc / "Proposals"), "--out", str(reference), "--quiet"])
    assert r.exit_code == 0, r.output
    for layout, listing in (("coco", "annotations/instances_val.json"), ("tags", "tags.csv")):
        root, model = tmp_path / layout, tmp_path / f"{layout}_model"
        generate(root, TINY, progress=False, layout=layout)
        for split in ("train", "val"):
            r = runner.invoke(app, ["proposals", str(root), "--split", split, "--workers", "1"])
            assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["train", "classifier", str(root), "--model", str(model), "--epochs", "3", *CLASSIFIER])
        assert r.exit_code == 0, r.output
        assert (model / "classifier.safetensors").read_bytes() == (classifier / "classifier.safetensors").read_bytes()
        r = runner.invoke(app, ["train", "icn", str(root), "--model", str(model), *icn])
        assert r.exit_code == 0, r.output
        assert (model / "icn.safetensors").read_bytes() == (voc_model / "icn.safetensors").read_bytes()
        results = tmp_path / f"{layout}.json"
        images = str(root / listing) if layout == "coco" else str(root / "images" / "val_*.jpg")
        r = runner.invoke(app, ["infer", str(model), images, "--proposals", str(root / "Proposals"), "--out",
                                str(results), "--quiet"])
        assert r.exit_code == 0, r.output
        assert json.loads(results.read_text()) == json.loads(reference.read_text())
    metrics = {}
    for name, root in (("voc", tiny_voc), ("coco", tmp_path / "coco")):
        r = runner.invoke(app, ["eval", str(root), str(tmp_path / f"{name}.json"), "--json",
                                str(tmp_path / f"{name}_metrics.json")])
        assert r.exit_code == 0, r.output
        metrics[name] = json.loads((tmp_path / f"{name}_metrics.json").read_text())
    assert metrics["coco"] == metrics["voc"] and metrics["voc"]["images"] == TINY.val
    r = runner.invoke(app, ["eval", str(tmp_path / "tags"), str(tmp_path / "tags.json")])
    assert r.exit_code == 2 and "no instance masks to evaluate against" in r.output
    # the pseudo labels as a COCO dataset: every result an annotation, every image there
    r = runner.invoke(app, ["data", "convert", str(reference), str(tmp_path / "pseudo"), "--to", "coco-dataset",
                            "--images", str(tiny_voc / "JPEGImages" / "val_*.jpg"), "--model", str(voc_model),
                            "--split", "val"])
    assert r.exit_code == 0, r.output
    pseudo = open_dataset(tmp_path / "pseudo", "val")
    assert len(pseudo) == TINY.val and pseudo.classes == open_dataset(tiny_voc, "val").classes
    assert sum(len(pseudo.ground_truth(i).instances) for i in pseudo.ids) == len(json.loads(reference.read_text()))
