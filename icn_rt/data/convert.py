"""Moving datasets between layouts (VOC, COCO, tags), and pseudo labels into a COCO dataset.

:func:`convert_dataset` reads each split of a dataset in any layout and writes it in
another: images are copied byte for byte where the target takes their format (VOC's
``JPEGImages`` takes JPEG only: other formats are re-encoded), masks go over losslessly
(COCO RLE), VOC's *difficult* objects and COCO's crowds map onto each other, and ids (file
names without suffix) stay the same, so proposals and results keep their names. A tags
layout has no masks: it converts to VOC as annotation XML without segmentation, not to
COCO. VOC cannot hold overlapping objects: where COCO masks overlap, the earlier object
keeps the pixels.

:func:`results_to_coco` turns `icn-rt infer`'s results (COCO results JSON) into a COCO
*dataset* whose annotations are those masks, with their images: what a fully supervised
trainer (Mask R-CNN and the like) reads.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np

from icn_rt.data import rle as rlelib
from icn_rt.data.datasets import Dataset, dataset_splits, open_dataset
from icn_rt.errors import InputError

TARGETS = ("voc", "coco", "tags")


def convert_dataset(source: str | Path, out: str | Path, to: str, splits: list[str] | None = None,
                    progress: bool = True) -> dict[str, int]:
    """Write the ``splits`` (default: all) of the dataset at ``source`` under ``out`` in
    layout ``to``; returns ``{split: images written}``."""
    if to not in TARGETS:
        raise ValueError(f"unknown layout '{to}' (choose from {', '.join(TARGETS)})")
    source, out = Path(source), Path(out)
    splits = splits or dataset_splits(source)
    if not splits:
        raise InputError(source, "defines no splits")
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty")
    datasets = [open_dataset(source, split) for split in splits]
    if to == "coco" and datasets[0].layout == "tags":
        raise InputError(source, "a tags layout has no masks for COCO annotations: convert it to voc (or keep it)")
    out.mkdir(parents=True, exist_ok=True)
    writer = {"voc": _write_voc, "coco": _write_coco, "tags": _write_tags}[to]
    writer(out, datasets, progress)
    return {ds.split: len(ds) for ds in datasets}


def _ids(ds: Dataset, progress: bool):
    if not progress:
        return ds.ids
    from icn_rt.progress import track

    return track(ds.ids, f"converting {ds.split}", unit="img")


def _samples(ds: Dataset, progress: bool):
    for image_id in _ids(ds, progress):
        yield ds.get(image_id)


def _copy_image(src: Path, dst: Path, jpeg_only: bool = False) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not jpeg_only or src.suffix.lower() in (".jpg", ".jpeg"):
        shutil.copyfile(src, dst)
        return
    from icn_rt.data.images import read_image, write_image

    write_image(dst, read_image(src))


def _write_voc(out: Path, datasets: list[Dataset], progress: bool) -> None:
    from icn_rt.data.voc import VOID, Instance, write_annotation, write_classes, write_label_pngs, write_splits

    classes = datasets[0].classes
    write_classes(out, classes)
    written: set[str] = set()
    splits, labels = {}, {}
    for ds in datasets:
        splits[ds.split] = list(ds.ids)
        for sample in _samples(ds, progress):
            labels[sample.image_id] = set(sample.labels.tolist())
            if sample.image_id in written:
                continue
            written.add(sample.image_id)
            _copy_image(ds.image_path(sample.image_id), out / "JPEGImages" / f"{sample.image_id}.jpg", jpeg_only=True)
            if sample.instances is None:  # tags: the XML names the classes, there are no masks
                from icn_rt.data.images import image_size

                size = image_size(ds.image_path(sample.image_id)) or (0, 0)
                tags = [Instance(int(c), np.zeros(size, bool)) for c in sample.labels]
                write_annotation(out, sample.image_id, size, tags, classes, boxes=False)
                continue
            instances, void, taken = [], np.zeros(sample.size, bool), np.zeros(sample.size, bool)
            for inst in sample.instances:
                if inst.difficult and sample.semantic is not None and (sample.semantic[inst.mask] == VOID).all():
                    void |= inst.mask & ~taken  # a COCO crowd: void in VOC
                    continue
                mask = inst.mask & ~taken
                taken |= mask
                instances.append(Instance(inst.class_id, mask, inst.difficult))
            write_label_pngs(out, sample.image_id, instances, void & ~taken)
            write_annotation(out, sample.image_id, sample.size, instances, classes)
    write_splits(out, splits, classes, labels)


def _write_coco(out: Path, datasets: list[Dataset], progress: bool) -> None:
    for ds in datasets:
        images, annotations = [], []
        for sample in _samples(ds, progress):
            src = ds.image_path(sample.image_id)
            _copy_image(src, out / ds.split / src.name)
            images.append({"id": len(images) + 1, "file_name": src.name, "height": int(sample.size[0]),
                           "width": int(sample.size[1])})
            for inst in sample.instances or []:
                annotations.append({"id": len(annotations) + 1, "image_id": len(images),
                                    "category_id": inst.class_id + 1, **_coco_geometry(inst.mask),
                                    "iscrowd": int(inst.difficult)})
        write_coco_file(out, ds.split, images, annotations, ds.classes)


def write_coco_file(out: Path, split: str, images: list[dict], annotations: list[dict], classes) -> Path:
    path = out / "annotations" / f"instances_{split}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": name} for i, name in enumerate(classes)]
    path.write_text(json.dumps({"info": {"description": f"icn-rt {split}"}, "images": images,
                                "annotations": annotations, "categories": categories}))
    return path


def _write_tags(out: Path, datasets: list[Dataset], progress: bool) -> None:
    classes = datasets[0].classes
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image", "classes", "split"])
    copied: set[str] = set()
    for ds in datasets:  # an image in several splits (VOC's trainval) is one file and a row per split
        for image_id in _ids(ds, progress):
            src = ds.image_path(image_id)
            if src.name not in copied:
                _copy_image(src, out / "images" / src.name)
                copied.add(src.name)
            writer.writerow([src.name, ";".join(classes[c] for c in ds.labels(image_id)), ds.split])
    (out / "tags.csv").write_text(buf.getvalue())


def results_to_coco(results: str | Path, images: list[Path], out: str | Path, classes: tuple[str, ...],
                    split: str = "train", min_score: float = 0.0) -> dict[str, int]:
    """A COCO dataset under ``out`` (``annotations/instances_<split>.json`` and
    ``<split>/``) whose annotations are the instances in ``results`` scoring at least
    ``min_score``; ``images``: the image files the results are of; ``classes``: the model's (category id = 1 +
    index, as in the results). Every image goes in, with or without instances."""
    from icn_rt.data.images import image_size
    from icn_rt.data.results import load_results

    results, out = Path(results), Path(out)
    by_image = load_results(results, classes)
    paths = {Path(p).stem: Path(p) for p in images}
    unknown = sorted(set(by_image) - set(paths))
    if unknown:
        raise InputError(results, f"results name images not given: {', '.join(unknown[:3])}"
                                  + (" ..." if len(unknown) > 3 else ""))
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty")
    coco_images, annotations = [], []
    for image_id, path in paths.items():
        size = image_size(path)
        if size is None:
            raise InputError(path, "cannot read the image's size")
        _copy_image(path, out / split / path.name)
        coco_images.append({"id": len(coco_images) + 1, "file_name": path.name, "height": size[0], "width": size[1]})
        kept = [r for r in by_image.get(image_id, []) if r["score"] >= min_score]
        for r in kept:
            problem = rlelib.check(r["segmentation"], size)
            if problem:
                raise InputError(results, f"an instance of image {image_id}: {problem}")
        masks = rlelib.decode_many([r["segmentation"] for r in kept], size)
        for r, mask in zip(kept, masks):
            annotations.append({"id": len(annotations) + 1, "image_id": len(coco_images),
                                "category_id": r["class_id"] + 1, **_coco_geometry(mask), "iscrowd": 0,
                                "score": r["score"]})
    write_coco_file(out, split, coco_images, annotations, classes)
    return {"images": len(coco_images), "annotations": len(annotations)}


def _coco_geometry(mask: np.ndarray) -> dict:
    """``segmentation`` (compressed RLE), ``area`` and ``bbox`` of ``mask: bool [H, W]``."""
    from pycocotools import mask as cocomask

    rle = rlelib.encode(mask)
    coco_rle = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return {"segmentation": rle, "area": float(cocomask.area(coco_rle)),
            "bbox": [float(v) for v in cocomask.toBbox(coco_rle)]}
