"""PASCAL VOC 2012 layout: reader and writer.

The layout, relative to the root (the ``VOC2012`` folder)::

    JPEGImages/<id>.jpg              the image
    Annotations/<id>.xml             objects: name, difficult, bndbox (image-level labels)
    SegmentationClass/<id>.png       palette PNG: 0 background, 1..C class, 255 void
    SegmentationObject/<id>.png      palette PNG: 0 background, i = i-th object, 255 void
    ImageSets/Main/<split>.txt       ids, one a line (classification/detection splits)
    ImageSets/Segmentation/<split>.txt
    classes.txt                      optional, not in VOC: class names one a line; without
                                     it the 20 VOC classes are used

An instance's class is read from SegmentationClass under its pixels (as chainercv's
``VOCInstanceSegmentationDataset`` does); its ``difficult`` flag from the i-th XML object.
The reader works on the real VOC 2012 tree unchanged; the synthetic benchmark is written
by :func:`write_sample` so this is the only loader.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from icn_rt.data.images import read_image, write_image
from icn_rt.errors import InputError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)
VOID = 255


def voc_palette() -> np.ndarray:
    """The VOC colour map: ``uint8 [256, 3]``, index i's colour from the bits of i."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


@dataclass
class Instance:
    """One ground-truth object: ``mask: bool [H, W]``, ``class_id`` 0-based."""

    class_id: int
    mask: np.ndarray
    difficult: bool = False


@dataclass
class Sample:
    """One image of a VOC-layout dataset.

    ``image``: uint8 [H, W, 3] RGB (None when not loaded); ``labels``: sorted 0-based class
    ids present (image-level tags); ``instances``: None when the image has no
    SegmentationObject PNG (e.g. classification-only images); ``semantic``: uint8 [H, W]
    with 0 background, 1..C classes, 255 void, or None.
    """

    image_id: str
    image: np.ndarray | None
    labels: np.ndarray
    instances: list[Instance] | None = None
    semantic: np.ndarray | None = None
    size: tuple[int, int] = field(default=(0, 0))

    def instance_masks(self) -> np.ndarray:
        """The instances' masks stacked, ``bool [N, H, W]`` (N = 0 without instances)."""
        return np.stack([i.mask for i in self.instances]) if self.instances else np.zeros((0, *self.size), bool)

    def instance_classes(self) -> np.ndarray:
        """The instances' class ids, ``int64 [N]``."""
        return np.array([i.class_id for i in self.instances or []], np.int64)


class SampleSequence:
    """A split as a sequence of :class:`Sample` in ``ids`` order (a reader supplies ``ids``
    and ``get``)."""

    ids: list[str]

    def get(self, image_id: str) -> Sample:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        return self.get(self.ids[i])

    def __iter__(self):
        for image_id in self.ids:
            yield self.get(image_id)


def read_label_png(path: Path) -> np.ndarray:
    """Read a palette (or greyscale) label PNG as its indices, ``uint8 [H, W]``."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(path, f"label PNG must be palette or greyscale, got mode {im.mode}")
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise InputError(path, "label PNG not found") from None
    except InputError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise InputError(path, f"cannot read label PNG ({type(e).__name__}: {e})") from None


def write_label_png(path: Path, labels: np.ndarray) -> None:
    """Write ``uint8 [H, W]`` indices as a palette PNG with the VOC colour map."""
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    im.putpalette(voc_palette().reshape(-1).tolist())
    im.save(path)


@dataclass
class XMLObject:
    name: str
    difficult: bool
    bbox: tuple[int, int, int, int]  # xmin, ymin, xmax, ymax, 1-based inclusive as VOC


def read_annotation(path: Path) -> tuple[tuple[int, int], list[XMLObject]]:
    """Parse a VOC XML annotation: ``((height, width), objects)``."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(path, "annotation XML not found") from None
    except ET.ParseError as e:
        raise InputError(path, f"malformed XML ({e})") from None
    try:
        size = root.find("size")
        hw = (int(size.findtext("height")), int(size.findtext("width"))) if size is not None else (0, 0)
        objects = []
        for obj in root.iter("object"):
            name = obj.findtext("name")
            if not name:
                raise ValueError("an object has no <name>")
            bb = obj.find("bndbox")
            bbox = tuple(int(float(bb.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")) if bb is not None else (0, 0, 0, 0)
            objects.append(XMLObject(name.strip(), obj.findtext("difficult", "0").strip() == "1", bbox))
    except (ValueError, TypeError, AttributeError) as e:
        raise InputError(path, f"bad VOC annotation ({e})") from None
    return hw, objects


def read_classes(root: Path) -> tuple[str, ...]:
    """Class names of a dataset root: ``classes.txt`` if present, else the 20 VOC classes."""
    path = Path(root) / "classes.txt"
    if not path.exists():
        return VOC_CLASSES
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise InputError(path, "no class names")
    if len(set(names)) != len(names):
        raise InputError(path, "duplicate class names")
    if len(names) > 254:
        raise InputError(path, "at most 254 classes fit a VOC label PNG")
    return names


class VOCDataset(SampleSequence):
    """Reader for a VOC-layout root.

    ``split`` names ``ImageSets/<imagesets>/<split>.txt``; ``imagesets`` is
    ``"Segmentation"``, ``"Main"`` or ``None`` (Segmentation when that file exists,
    else Main). ``load_images=False`` skips decoding JPEGs (evaluation needs only GT).
    """

    layout = "voc"

    def __init__(self, root: str | Path, split: str = "val", imagesets: str | None = None,
                 load_images: bool = True):
        self.root = Path(root)
        self.skipped: list[str] = []  # a VOC split lists ids: a missing image fails where it is read
        if not self.root.is_dir():
            raise InputError(self.root, "dataset root is not a directory")
        self.classes = read_classes(self.root)
        self.split = split
        self.load_images = load_images
        self.split_file = self._split_file(split, imagesets)
        ids = [line.split()[0] for line in self.split_file.read_text().splitlines() if line.strip()]
        if not ids:
            raise InputError(self.split_file, "split lists no images")
        self.ids: list[str] = ids
        self._index = {name: i for i, name in enumerate(self.classes)}

    def _split_file(self, split: str, imagesets: str | None) -> Path:
        kinds = [imagesets] if imagesets else ["Segmentation", "Main"]
        for kind in kinds:
            path = self.root / "ImageSets" / kind / f"{split}.txt"
            if path.exists():
                return path
        raise InputError(self.root / "ImageSets" / kinds[0] / f"{split}.txt", f"split '{split}' not found")

    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def class_id(self, name: str, path: Path) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise InputError(path, f"unknown class '{name}' (not in the dataset's class list)") from None

    def get(self, image_id: str) -> Sample:
        image = read_image(self.image_path(image_id)) if self.load_images else None
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        objects: list[XMLObject] | None = None
        size = (0, 0)
        if xml_path.exists():
            size, objects = read_annotation(xml_path)
        semantic, instances = self._segmentation(image_id, objects)
        if image is not None:
            size = image.shape[:2]
        elif semantic is not None:
            size = semantic.shape
        if objects is not None:
            labels = {self.class_id(o.name, xml_path) for o in objects}
        elif semantic is not None:
            labels = {int(v) - 1 for v in np.unique(semantic) if 0 < v < VOID}
        else:
            raise InputError(xml_path, "no annotation XML and no SegmentationClass PNG: image has no labels")
        return Sample(image_id, image, np.array(sorted(labels), dtype=np.int64), instances, semantic, tuple(size))

    def labels(self, image_id: str) -> np.ndarray:
        """The image-level labels (sorted class ids), from the annotation XML alone when it
        exists — no image or mask is decoded — else from the SegmentationClass PNG."""
        xml_path = self.root / "Annotations" / f"{image_id}.xml"
        if xml_path.exists():
            _, objects = read_annotation(xml_path)
            return np.array(sorted({self.class_id(o.name, xml_path) for o in objects}), dtype=np.int64)
        return self.get(image_id).labels

    def ground_truth(self, image_id: str) -> Sample:
        """:meth:`get`, requiring instance annotations (for evaluation)."""
        sample = self.get(image_id)
        if sample.instances is None:
            raise InputError(self.root / "SegmentationObject" / f"{image_id}.png", "ground-truth instance PNG not found")
        return sample

    def _segmentation(self, image_id: str, objects: list[XMLObject] | None):
        cls_path = self.root / "SegmentationClass" / f"{image_id}.png"
        obj_path = self.root / "SegmentationObject" / f"{image_id}.png"
        if not cls_path.exists() and not obj_path.exists():
            return None, None
        semantic = read_label_png(cls_path)
        if not obj_path.exists():
            return semantic, None
        objmap = read_label_png(obj_path)
        if objmap.shape != semantic.shape:
            raise InputError(obj_path, f"size {objmap.shape} differs from SegmentationClass {semantic.shape}")
        instances = []
        for inst_id in np.unique(objmap):
            if inst_id == 0 or inst_id == VOID:
                continue
            mask = objmap == inst_id
            classes, counts = np.unique(semantic[mask], return_counts=True)
            valid = (classes != 0) & (classes != VOID)
            if not valid.any():
                raise InputError(obj_path, f"object {inst_id} has no class in SegmentationClass")
            class_value = int(classes[valid][np.argmax(counts[valid])])
            if class_value > len(self.classes):
                raise InputError(cls_path, f"class index {class_value} beyond the {len(self.classes)} classes")
            difficult = bool(objects and inst_id <= len(objects) and objects[inst_id - 1].difficult)
            instances.append(Instance(class_value - 1, mask, difficult))
        return semantic, instances


# --- writer -------------------------------------------------------------------------

def write_classes(root: str | Path, classes: tuple[str, ...] | list[str]) -> None:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))


def write_sample(root: str | Path, image_id: str, image: np.ndarray, instances: list[Instance],
                 classes: tuple[str, ...] | list[str], void: np.ndarray | None = None) -> None:
    """Write one image with its instances in VOC layout.

    ``instances`` must not overlap (visible pixels only); object i in the XML is
    instance i+1 in SegmentationObject. ``void``: optional bool [H, W] written as 255.
    """
    root = Path(root)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    write_label_pngs(root, image_id, instances, void, image.shape[:2])
    write_image(root / "JPEGImages" / f"{image_id}.jpg", image)
    write_annotation(root, image_id, image.shape[:2], instances, classes)


def write_label_pngs(root: str | Path, image_id: str, instances: list[Instance], void: np.ndarray | None = None,
                     size: tuple[int, int] | None = None) -> None:
    """SegmentationClass and SegmentationObject PNGs of non-overlapping ``instances``
    (object i is instance i+1); ``void`` pixels are 255. ``size`` (H, W) is needed only
    when there are neither instances nor void."""
    root = Path(root)
    for sub in ("SegmentationClass", "SegmentationObject"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    h, w = size or (instances[0].mask.shape if instances else void.shape)
    semantic = np.zeros((h, w), np.uint8)
    objmap = np.zeros((h, w), np.uint8)
    for i, inst in enumerate(instances):
        if (objmap[inst.mask] != 0).any():
            raise ValueError(f"{image_id}: instance {i + 1} overlaps an earlier one")
        semantic[inst.mask] = inst.class_id + 1
        objmap[inst.mask] = i + 1
    if void is not None:
        semantic[void] = VOID
        objmap[void] = VOID
    write_label_png(root / "SegmentationClass" / f"{image_id}.png", semantic)
    write_label_png(root / "SegmentationObject" / f"{image_id}.png", objmap)


def write_annotation(root: str | Path, image_id: str, size: tuple[int, int], instances: list[Instance],
                     classes, boxes: bool = True) -> None:
    """``Annotations/<id>.xml`` naming ``instances``' classes (with their boxes unless
    ``boxes`` is False: image-level tags only)."""
    (Path(root) / "Annotations").mkdir(parents=True, exist_ok=True)
    (Path(root) / "Annotations" / f"{image_id}.xml").write_text(
        _annotation_xml(image_id, size, instances, classes, boxes))


def _annotation_xml(image_id: str, size: tuple[int, int], instances: list[Instance], classes, boxes: bool) -> str:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC2012"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    sz = ET.SubElement(ann, "size")
    for tag, val in (("width", size[1]), ("height", size[0]), ("depth", 3)):
        ET.SubElement(sz, tag).text = str(val)
    ET.SubElement(ann, "segmented").text = "1" if boxes else "0"
    for inst in instances:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = classes[inst.class_id]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if inst.difficult else "0"
        if not boxes or not inst.mask.any():
            continue
        ys, xs = np.nonzero(inst.mask)
        bb = ET.SubElement(obj, "bndbox")
        for tag, val in (("xmin", xs.min() + 1), ("ymin", ys.min() + 1), ("xmax", xs.max() + 1), ("ymax", ys.max() + 1)):
            ET.SubElement(bb, tag).text = str(int(val))
    ET.indent(ann)
    return ET.tostring(ann, encoding="unicode") + "\n"


def write_splits(root: str | Path, splits: dict[str, list[str]], classes, labels: dict[str, set[int]]) -> None:
    """Write ``ImageSets/{Main,Segmentation}/<split>.txt`` and VOC's per-class files
    ``ImageSets/Main/<class>_<split>.txt`` (id and 1 / -1)."""
    root = Path(root)
    for kind in ("Main", "Segmentation"):
        (root / "ImageSets" / kind).mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        text = "".join(f"{i}\n" for i in ids)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text(text)
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(text)
        for c, name in enumerate(classes):
            lines = "".join(f"{i} {1 if c in labels[i] else -1:2d}\n" for i in ids)
            (root / "ImageSets" / "Main" / f"{name}_{split}.txt").write_text(lines)
