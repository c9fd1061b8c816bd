"""COCO-style instance results: a JSON list of
``{"image_id": str, "category_id": int (1-based), "score": float, "segmentation": RLE}``.

``image_id`` is the VOC image id (a string); ``category_id`` is 1 + the class's index in
the dataset's class list, as in its SegmentationClass PNGs. ``category_name`` may stand
in for ``category_id``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from icn_rt.data import rle as rlelib
from icn_rt.errors import InputError, read_json


def load_results(path: str | Path, classes: tuple[str, ...]) -> dict[str, list[dict]]:
    """Read and validate a results file -> ``{image_id: [{"class_id" (0-based), "score",
    "segmentation"}]}``. Any malformed entry is an error naming the file and the entry."""
    path = Path(path)
    doc = read_json(path, "results file not found")
    if isinstance(doc, dict) and "annotations" in doc:
        doc = doc["annotations"]
    if not isinstance(doc, list):
        raise InputError(path, "expected a JSON list of instance results")
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, list[dict]] = defaultdict(list)
    for k, r in enumerate(doc):
        where = f"entry {k}"
        if not isinstance(r, dict) or "image_id" not in r or "segmentation" not in r:
            raise InputError(path, f"{where} needs 'image_id' and 'segmentation'")
        if "category_id" in r:
            cid = r["category_id"]
            if not isinstance(cid, int) or not 1 <= cid <= len(classes):
                raise InputError(path, f"{where}: category_id {cid!r} is not in 1..{len(classes)}")
            class_id = cid - 1
        elif r.get("category_name") in index:
            class_id = index[r["category_name"]]
        else:
            raise InputError(path, f"{where} needs a category_id (1..{len(classes)}) or a known category_name")
        problem = rlelib.check(r["segmentation"])
        if problem:
            raise InputError(path, f"{where}: {problem}")
        score = r.get("score", 1.0)
        if not isinstance(score, (int, float)):
            raise InputError(path, f"{where}: score {score!r} is not a number")
        out[str(r["image_id"])].append({"class_id": class_id, "score": float(score), "segmentation": r["segmentation"]})
    return dict(out)


def result_entry(image_id: str, class_id: int, score: float, mask, classes: tuple[str, ...]) -> dict:
    """One results entry for ``mask: bool [H, W]`` of 0-based ``class_id``."""
    return {"image_id": image_id, "category_id": class_id + 1, "category_name": classes[class_id],
            "score": float(score), "segmentation": rlelib.encode(mask)}


def write_results(path: str | Path, entries: list[dict]) -> None:
    Path(path).write_text(json.dumps(entries))
