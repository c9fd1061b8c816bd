"""COCO instances datasets: reader and writer.

The layout, relative to the root (COCO 2017's own)::

    annotations/instances_<split>.json   images, annotations, categories
    <split>/<file_name>                  the images (or images/<file_name>)

Classes are the categories sorted by id (class id = position). An image's tags are the
categories of its annotations. Masks are polygons, uncompressed or compressed RLE,
decoded by pycocotools as COCO does; ``iscrowd`` regions become *difficult* instances,
which evaluation ignores as COCO ignores crowds (VOC's convention for its difficult
objects), and void in the semantic map. An image's id is its file name without suffix.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from icn_rt.data.datasets import ListedDataset
from icn_rt.data.voc import VOID, Instance, Sample
from icn_rt.errors import InputError, read_json


def annotation_file(root: Path, split: str) -> Path:
    return root / "annotations" / f"instances_{split}.json"


def _require(path: Path, doc: dict, key: str) -> list:
    value = doc.get(key)
    if not isinstance(value, list):
        raise InputError(path, f"needs a \"{key}\" list")
    return value


class CocoDataset(ListedDataset):
    """One split of a COCO layout (see the module's doc)."""

    layout = "coco"

    def __init__(self, root: str | Path, split: str = "val", load_images: bool = False) -> None:
        super().__init__(root, split, load_images)
        path = annotation_file(self.root, split)
        self.split_file = path
        doc = read_json(path, f"split '{split}' not found (no annotations/instances_{split}.json)")
        if not isinstance(doc, dict):
            raise InputError(path, "expected a COCO instances object")
        self.category_ids = category_ids = self._categories(path, _require(path, doc, "categories"))
        self.image_folder = images = self._image_folder()
        self.file_names: list[str] = []  # every image the file lists, found or not
        by_coco_id: dict[int, tuple[str, tuple[int, int]]] = {}
        entries = []
        for k, image in enumerate(_require(path, doc, "images")):
            where = f"images[{k}]"
            if not isinstance(image, dict) or not isinstance(image.get("id"), int) \
                    or not isinstance(image.get("file_name"), str):
                raise InputError(path, f"{where} needs an integer id and a file_name")
            h, w = image.get("height"), image.get("width")
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
                raise InputError(path, f"{where} needs a positive integer height and width")
            if image["id"] in by_coco_id:
                raise InputError(path, f"{where}: image id {image['id']} appears twice")
            by_coco_id[image["id"]] = (Path(image["file_name"]).stem, (h, w))
            self.file_names.append(image["file_name"])
            entries.append((image, where))
        self.annotations: dict[str, list[dict]] = defaultdict(list)
        for k, ann in enumerate(_require(path, doc, "annotations")):
            where = f"annotations[{k}]"
            if not isinstance(ann, dict) or ann.get("image_id") not in by_coco_id:
                raise InputError(path, f"{where}: image_id {ann.get('image_id') if isinstance(ann, dict) else None!r}"
                                       " is not among the images")
            if ann.get("category_id") not in category_ids:
                raise InputError(path, f"{where}: category_id {ann.get('category_id')!r} is not a category")
            if not isinstance(ann.get("segmentation"), (list, dict)):
                raise InputError(path, f"{where} needs a segmentation (polygons or RLE)")
            if ann.get("iscrowd", 0) not in (0, 1):
                raise InputError(path, f"{where}: iscrowd must be 0 or 1")
            self.annotations[by_coco_id[ann["image_id"]][0]].append({**ann, "_where": where})
        self.sizes = {image_id: size for image_id, size in by_coco_id.values()}
        seen: dict[str, str] = {}
        for image, where in entries:
            image_id = Path(image["file_name"]).stem
            labels = [category_ids[a["category_id"]] for a in self.annotations.get(image_id, [])]
            self._keep(image_id, images / image["file_name"], labels, where, seen)
        self._finish()

    def _categories(self, path: Path, categories: list) -> dict[int, int]:
        for k, c in enumerate(categories):
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or not isinstance(c.get("name"), str):
                raise InputError(path, f"categories[{k}] needs an integer id and a name")
        ordered = sorted(categories, key=lambda c: c["id"])
        if not ordered:
            raise InputError(path, "has no categories")
        names = tuple(c["name"] for c in ordered)
        if len(set(names)) != len(names) or len({c["id"] for c in ordered}) != len(ordered):
            raise InputError(path, "category ids and names must be unique")
        self.classes = names
        return {c["id"]: i for i, c in enumerate(ordered)}

    def _image_folder(self) -> Path:
        for folder in (self.root / self.split, self.root / "images"):
            if folder.is_dir():
                return folder
        raise InputError(self.root, f"no image folder: expected {self.split}/ or images/")

    def get(self, image_id: str) -> Sample:
        image, _ = self._image(image_id)
        size = self.sizes[image_id]
        if image is not None and image.shape[:2] != size:
            raise InputError(self.paths[image_id], f"image is {image.shape[1]}x{image.shape[0]} where "
                                                   f"{self.split_file.name} says {size[1]}x{size[0]}")
        instances, semantic = self._masks(image_id, size)
        return Sample(image_id, image, self.tags[image_id], instances, semantic, size)

    def ground_truth(self, image_id: str) -> Sample:
        return self.get(image_id)

    def _masks(self, image_id: str, size: tuple[int, int]) -> tuple[list[Instance], np.ndarray]:
        from pycocotools import mask as cocomask

        instances = []
        for ann in self.annotations.get(image_id, []):
            try:
                mask = cocomask.decode(segmentation_rle(ann["segmentation"], size)).astype(bool)
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise InputError(self.split_file, f"{ann['_where']}: bad segmentation ({e})") from None
            if mask.ndim == 3:
                mask = mask.any(axis=2)
            instances.append(Instance(self.category_ids[ann["category_id"]], mask, bool(ann.get("iscrowd", 0))))
        semantic = np.zeros(size, np.uint8)
        for inst in sorted(instances, key=lambda i: not i.difficult):  # crowds first, objects over them
            semantic[inst.mask] = VOID if inst.difficult else inst.class_id + 1
        return instances, semantic


def segmentation_rle(segmentation, size: tuple[int, int]):
    """A COCO segmentation (polygons, uncompressed or compressed RLE) as pycocotools'
    RLE at ``size`` (H, W)."""
    from pycocotools import mask as cocomask

    h, w = size
    if isinstance(segmentation, list):  # polygons: [[x1, y1, x2, y2, ...], ...]
        if not segmentation or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in segmentation):
            raise ValueError("polygons must be lists of at least three x, y pairs")
        return cocomask.merge(cocomask.frPyObjects(segmentation, h, w))
    if list(segmentation.get("size", [])) != [h, w]:
        raise ValueError(f"RLE size {segmentation.get('size')} differs from the image's [{h}, {w}]")
    counts = segmentation.get("counts")
    if isinstance(counts, list):
        return cocomask.frPyObjects(segmentation, h, w)
    if isinstance(counts, str):
        return {"size": [h, w], "counts": counts.encode("ascii")}
    raise ValueError("RLE counts must be a string or a list")
