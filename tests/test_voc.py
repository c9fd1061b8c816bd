import numpy as np
import pytest

from icn_rt.data.voc import VOC_CLASSES, Instance, VOCDataset, read_label_png, voc_palette, write_classes, write_sample, write_splits
from icn_rt.errors import InputError


def _write_two(root):
    yy, xx = np.mgrid[0:20, 0:30]
    img = np.stack([xx * 8, yy * 12, 255 - xx * 8], 2).astype(np.uint8)  # smooth: JPEG keeps it
    a = np.zeros((20, 30), bool)
    a[2:8, 3:12] = True
    b = np.zeros((20, 30), bool)
    b[10:18, 15:28] = True
    void = np.zeros((20, 30), bool)
    void[1, 3:12] = True
    classes = ("cat", "dog", "cow")
    write_classes(root, classes)
    write_sample(root, "img1", img, [Instance(2, a), Instance(0, b, difficult=True)], classes, void=void)
    write_splits(root, {"val": ["img1"]}, classes, {"img1": {0, 2}})
    return img, a, b, void


def test_roundtrip(tmp_path):
    img, a, b, void = _write_two(tmp_path)
    ds = VOCDataset(tmp_path, "val")
    assert ds.classes == ("cat", "dog", "cow") and ds.ids == ["img1"]
    s = ds[0]
    assert s.image.shape == (20, 30, 3)
    assert np.abs(s.image.astype(int) - img).mean() < 4  # JPEG
    np.testing.assert_array_equal(s.labels, [0, 2])
    assert [(i.class_id, i.difficult) for i in s.instances] == [(2, False), (0, True)]
    np.testing.assert_array_equal(s.instances[0].mask, a & ~void)
    np.testing.assert_array_equal(s.instances[1].mask, b)
    assert (s.semantic[void] == 255).all() and s.semantic[12, 20] == 1 and s.semantic[5, 5] == 3
    assert (tmp_path / "ImageSets" / "Main" / "cow_val.txt").read_text() == "img1  1\n"
    assert (tmp_path / "ImageSets" / "Main" / "dog_val.txt").read_text() == "img1 -1\n"


def test_labels_read_the_xml_alone(tmp_path):
    """Image-level labels come from the annotation XML without decoding any PNG (VOC
    trainaug has 10k images); without an XML they come from SegmentationClass."""
    _write_two(tmp_path)
    ds = VOCDataset(tmp_path, "val", load_images=False)
    (tmp_path / "SegmentationClass" / "img1.png").write_bytes(b"not a png")
    np.testing.assert_array_equal(ds.labels("img1"), [0, 2])
    _write_two(tmp_path)
    (tmp_path / "Annotations" / "img1.xml").unlink()
    np.testing.assert_array_equal(ds.labels("img1"), [0, 2])


def test_label_png_is_voc_palette(tmp_path):
    _write_two(tmp_path)
    from PIL import Image

    with Image.open(tmp_path / "SegmentationClass" / "img1.png") as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.getpalette()[:6]), voc_palette()[:2].ravel())
    assert read_label_png(tmp_path / "SegmentationObject" / "img1.png").max() == 255


def test_voc_defaults_and_classification_only_images(tmp_path):
    """Without classes.txt the 20 VOC classes apply; an image with only an XML (as in
    VOC's Main sets) has labels and no instances."""
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("2007_000027\n")
    (tmp_path / "Annotations" / "2007_000027.xml").write_text(
        "<annotation><size><width>5</width><height>4</height><depth>3</depth></size>"
        "<object><name>person</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>3</xmax><ymax>3</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>3</xmax><ymax>3</ymax></bndbox></object>"
        "</annotation>")
    ds = VOCDataset(tmp_path, "train", load_images=False)
    assert ds.classes == VOC_CLASSES
    s = ds[0]
    np.testing.assert_array_equal(s.labels, [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")])
    assert s.instances is None and s.size == (4, 5)


def test_errors_name_the_file(tmp_path):
    _write_two(tmp_path)
    xml = tmp_path / "Annotations" / "img1.xml"
    xml.write_text("<annotation><object>")
    with pytest.raises(InputError, match="malformed XML") as e:
        VOCDataset(tmp_path, "val", load_images=False)[0]
    assert str(xml) in str(e.value)
    xml.write_text("<annotation><object><name>zebra</name></object></annotation>")
    with pytest.raises(InputError, match="unknown class 'zebra'"):
        VOCDataset(tmp_path, "val", load_images=False)[0]
    with pytest.raises(InputError, match="split 'test' not found"):
        VOCDataset(tmp_path, "test")
    (tmp_path / "JPEGImages" / "img1.jpg").unlink()
    with pytest.raises(InputError, match="img1.jpg: image file not found"):
        VOCDataset(tmp_path, "val")[0]


def test_ground_truth_requires_instances(tmp_path):
    _write_two(tmp_path)
    (tmp_path / "SegmentationObject" / "img1.png").unlink()
    ds = VOCDataset(tmp_path, "val", load_images=False)
    assert ds.get("img1").instances is None
    with pytest.raises(InputError, match=r"SegmentationObject/img1.png: ground-truth instance PNG not found"):
        ds.ground_truth("img1")


def test_a_sample_stacks_its_instances_masks_and_classes():
    from icn_rt.data.voc import Sample

    a, b = np.zeros((4, 5), bool), np.ones((4, 5), bool)
    sample = Sample("x", None, np.array([0, 2]), [Instance(2, a), Instance(0, b, difficult=True)], size=(4, 5))
    assert sample.instance_masks().tolist() == [a.tolist(), b.tolist()]
    assert sample.instance_classes().tolist() == [2, 0] and sample.instance_classes().dtype == np.int64
    for instances in ([], None):
        empty = Sample("y", None, np.array([1]), instances, size=(4, 5))
        assert empty.instance_masks().shape == (0, 4, 5) and empty.instance_masks().dtype == bool
        assert empty.instance_classes().shape == (0,) and empty.instance_classes().dtype == np.int64
