"""Datasets in three layouts behind one reader.

Every command that reads a dataset takes its root and a split, and reads any of:

- **VOC** — PASCAL VOC folders (:mod:`icn_rt.data.voc`): ``ImageSets/``, ``JPEGImages/``,
  ``Annotations/``, ``SegmentationClass/``, ``SegmentationObject/``.
- **COCO** — ``annotations/instances_<split>.json`` and the images under ``<split>/``
  (COCO's own layout) or ``images/`` (:mod:`icn_rt.data.coco_dataset`).
- **tags** — a folder of images and ``tags.csv`` (``image,classes[,split]``, classes
  separated by ``;``) or ``tags.jsonl`` (``{"image", "classes", "split"}`` a line)
  (:mod:`icn_rt.data.tags`). Image-level tags only: no masks to evaluate against.

The layout is told by what the root holds. All three give :class:`~icn_rt.data.voc.Sample`
objects with ids that are file names without suffix, so proposals, labels and results
made from one layout are found under the same names from another.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol

import numpy as np

from icn_rt.data.voc import Sample, SampleSequence
from icn_rt.errors import InputError

LAYOUTS = ("voc", "coco", "tags")


class Dataset(Protocol):
    """One split of a dataset. ``ids`` are the readable images in the split's order;
    ``skipped`` names those listed but missing (one line each, file and row)."""

    root: Path
    layout: str
    classes: tuple[str, ...]
    split: str
    split_file: Path
    ids: list[str]
    skipped: list[str]
    load_images: bool

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Sample]: ...

    def __getitem__(self, i: int) -> Sample: ...

    def image_path(self, image_id: str) -> Path: ...

    def labels(self, image_id: str) -> np.ndarray: ...

    def get(self, image_id: str) -> Sample: ...

    def ground_truth(self, image_id: str) -> Sample: ...


def detect_layout(root: str | Path) -> str:
    """``"voc"``, ``"coco"`` or ``"tags"``, from what ``root`` holds."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset root is not a directory")
    found = [name for name, there in (("voc", (root / "ImageSets").is_dir()),
                                      ("coco", any((root / "annotations").glob("instances_*.json"))),
                                      ("tags", any((root / f).is_file() for f in ("tags.csv", "tags.jsonl"))))
             if there]
    if len(found) > 1:
        raise InputError(root, f"holds more than one dataset layout ({', '.join(found)}); keep one")
    if not found:
        raise InputError(root, "not a dataset: expected ImageSets/ (VOC), annotations/instances_<split>.json "
                               "(COCO) or tags.csv / tags.jsonl (a folder of images with tags)")
    return found[0]


def open_dataset(root: str | Path, split: str = "val", load_images: bool = False) -> Dataset:
    """The ``split`` of the dataset at ``root``, in whichever layout it is."""
    layout = detect_layout(root)
    if layout == "voc":
        from icn_rt.data.voc import VOCDataset

        return VOCDataset(root, split, load_images=load_images)
    if layout == "coco":
        from icn_rt.data.coco_dataset import CocoDataset

        return CocoDataset(root, split, load_images=load_images)
    from icn_rt.data.tags import TagsDataset

    return TagsDataset(root, split, load_images=load_images)


def dataset_splits(root: str | Path) -> list[str]:
    """The splits a dataset root defines, sorted."""
    root = Path(root)
    layout = detect_layout(root)
    if layout == "voc":
        from icn_rt.data.voc import read_classes

        per_class = tuple(f"{name}_" for name in read_classes(root))  # Main's <class>_<split>.txt
        files = list((root / "ImageSets" / "Segmentation").glob("*.txt")) or \
            list((root / "ImageSets" / "Main").glob("*.txt"))
        return sorted(p.stem for p in files if not p.stem.startswith(per_class))
    if layout == "coco":
        return sorted(p.stem[len("instances_"):] for p in (root / "annotations").glob("instances_*.json"))
    from icn_rt.data.tags import tag_splits

    return tag_splits(root)


class InputWarning(UserWarning):
    """Input that was skipped (a missing image, say) and recorded, not fatal."""


class ListedDataset(SampleSequence):
    """A split whose images and image-level labels are listed in one file (a tags file,
    a COCO JSON): the common part of the COCO and tags readers. Subclasses fill
    ``ids``, ``paths`` and ``tags`` (id -> sorted class ids) and may override
    :meth:`get` to add masks."""

    layout = ""

    def __init__(self, root: str | Path, split: str, load_images: bool) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(self.root, "dataset root is not a directory")
        self.split = split
        self.load_images = load_images
        self.classes: tuple[str, ...] = ()
        self.split_file = self.root
        self.ids: list[str] = []
        self.paths: dict[str, Path] = {}
        self.tags: dict[str, np.ndarray] = {}
        self.skipped: list[str] = []

    def _keep(self, image_id: str, path: Path, labels, where: str, seen: dict[str, str]) -> None:
        """Add one listed image, or record it as skipped when its file is missing."""
        if image_id in seen:
            raise InputError(self.split_file, f"{where}: image id '{image_id}' (the file name without suffix) is "
                                              f"also that of {seen[image_id]}; ids must be unique")
        seen[image_id] = where
        if not path.is_file():
            self.skipped.append(f"{self.split_file}: {where}: image {path} not found, skipped")
            return
        self.ids.append(image_id)
        self.paths[image_id] = path
        self.tags[image_id] = np.array(sorted(set(labels)), np.int64)

    def _finish(self) -> None:
        if self.skipped:
            import warnings

            more = f" (and {len(self.skipped) - 1} more)" if len(self.skipped) > 1 else ""
            warnings.warn(self.skipped[0] + more, InputWarning, stacklevel=3)
        if not self.ids:
            raise InputError(self.split_file, f"split '{self.split}' has no readable images"
                                              + (f" ({len(self.skipped)} listed, none found)" if self.skipped else ""))

    def image_path(self, image_id: str) -> Path:
        return self.paths[image_id]

    def labels(self, image_id: str) -> np.ndarray:
        return self.tags[image_id]

    def _image(self, image_id: str) -> tuple[np.ndarray | None, tuple[int, int]]:
        if not self.load_images:
            return None, (0, 0)
        from icn_rt.data.images import read_image

        image = read_image(self.paths[image_id])
        return image, image.shape[:2]

    def get(self, image_id: str) -> Sample:
        image, size = self._image(image_id)
        return Sample(image_id, image, self.tags[image_id], None, None, size)

    def ground_truth(self, image_id: str) -> Sample:
        raise InputError(self.split_file, f"the {self.layout} layout has no instance masks to evaluate against: "
                                          "evaluate on a VOC or COCO layout of the same images")


def listed_images(path: str | Path) -> list[Path] | None:
    """The images a dataset's listing file names, in its order, every split — a tags file
    (``tags.csv``, ``tags.jsonl``) or a COCO ``annotations/instances_<split>.json`` — or
    None when ``path`` is no such file. Missing images are kept: a job records them."""
    path = Path(path)
    from icn_rt.data.tags import TAG_FILES

    if path.name in TAG_FILES and path.is_file():
        from icn_rt.data.tags import read_tags

        root = path.parent
        folder = root / "images" if (root / "images").is_dir() else root
        return [folder / row.image for row in read_tags(path)]
    if path.parent.name == "annotations" and path.name.startswith("instances_") and path.suffix == ".json" \
            and path.is_file():
        from icn_rt.data.coco_dataset import CocoDataset

        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing images are kept here, and fail where they are read
            ds = CocoDataset(path.parent.parent, path.stem[len("instances_"):])
        folder = ds.image_folder
        return [folder / name for name in ds.file_names]
    return None
