"""A folder of images and a tags file: image-level labels for images in no VOC or COCO layout.

The layout, relative to the root::

    tags.csv           header ``image,classes`` and optionally ``split``; classes are
                       separated by ``;`` (an empty cell: an image with none of the classes)
    or tags.jsonl      one ``{"image": str, "classes": [str, ...], "split": str}`` a line
                       (``split`` optional)
    images/            the images, named by the ``image`` column relative to this folder
                       (to the root when there is no ``images/``); subfolders allowed
    classes.txt        optional: class names one a line (their order is the class ids);
                       without it, the sorted names that the tags use
    splits/<split>.txt optional: image names one a line, when the tags have no ``split``

An image's id is its file name without suffix, unique in the dataset. A malformed row,
an unknown class (with ``classes.txt``), a duplicate id is an error naming the file and
row; an image that is listed but missing is skipped and recorded (a warning naming the
file and row, and :attr:`TagsDataset.skipped`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from icn_rt.data.datasets import ListedDataset
from icn_rt.errors import InputError

TAG_FILES = ("tags.csv", "tags.jsonl")


@dataclass(frozen=True)
class TagRow:
    image: str
    classes: tuple[str, ...]
    split: str | None
    where: str  # "row 3" (CSV, counting the header as row 1) or "line 3" (JSON lines)


def tags_file(root: Path) -> Path:
    there = [root / name for name in TAG_FILES if (root / name).is_file()]
    if len(there) > 1:
        raise InputError(root, "holds both tags.csv and tags.jsonl; keep one")
    if not there:
        raise InputError(root / "tags.csv", "tags file not found (tags.csv or tags.jsonl)")
    return there[0]


def read_tags(path: str | Path) -> list[TagRow]:
    """The rows of a tags file (CSV or JSON lines, by suffix); a malformed row is an
    :class:`InputError` naming the file and row."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputError(path, "tags file not found") from None
    except UnicodeDecodeError as e:
        raise InputError(path, f"not UTF-8 text ({e})") from None
    rows = _read_jsonl(path, text) if path.suffix == ".jsonl" else _read_csv(path, text)
    if not rows:
        raise InputError(path, "lists no images")
    return rows


def _read_csv(path: Path, text: str) -> list[TagRow]:
    reader = csv.reader(text.splitlines())
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in ("image", "classes") if c not in header]
    if missing:
        raise InputError(path, f"row 1: the header needs columns image and classes (missing: {', '.join(missing)})")
    col = {name: header.index(name) for name in header}
    rows = []
    for values in reader:
        where = f"row {reader.line_num}"
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise InputError(path, f"{where}: {len(values)} cells where the header has {len(header)}")
        image = values[col["image"]].strip()
        if not image:
            raise InputError(path, f"{where}: empty image name")
        classes = tuple(c.strip() for c in values[col["classes"]].split(";") if c.strip())
        split = values[col["split"]].strip() or None if "split" in col else None
        rows.append(TagRow(image, classes, split, where))
    return rows


def _read_jsonl(path: Path, text: str) -> list[TagRow]:
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(path, f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("image"), str) or not doc["image"].strip():
            raise InputError(path, f"{where}: needs an \"image\" string")
        classes = doc.get("classes")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise InputError(path, f"{where}: \"classes\" must be a list of class names")
        split = doc.get("split")
        if split is not None and not isinstance(split, str):
            raise InputError(path, f"{where}: \"split\" must be a string")
        rows.append(TagRow(doc["image"].strip(), tuple(c.strip() for c in classes if c.strip()), split, where))
    return rows


def tag_classes(root: Path, rows: list[TagRow], path: Path) -> tuple[str, ...]:
    """``classes.txt`` when present (every tag must be in it), else the tags' names sorted."""
    if (root / "classes.txt").is_file():
        from icn_rt.data.voc import read_classes

        classes = read_classes(root)
        known = set(classes)
        for row in rows:
            for name in row.classes:
                if name not in known:
                    raise InputError(path, f"{row.where}: unknown class '{name}' (not in classes.txt)")
        return classes
    classes = tuple(sorted({name for row in rows for name in row.classes}))
    if not classes:
        raise InputError(path, "no row names a class (and there is no classes.txt)")
    return classes


def tag_splits(root: str | Path) -> list[str]:
    root = Path(root)
    rows = read_tags(tags_file(root))
    named = {row.split for row in rows if row.split}
    return sorted(named) if named else sorted(p.stem for p in (root / "splits").glob("*.txt"))


class TagsDataset(ListedDataset):
    """One split of a tags layout (see the module's doc): image-level labels, no masks."""

    layout = "tags"

    def __init__(self, root: str | Path, split: str = "val", load_images: bool = False) -> None:
        super().__init__(root, split, load_images)
        path = tags_file(self.root)
        rows = read_tags(path)
        self.classes = tag_classes(self.root, rows, path)
        self.split_file = path
        index = {name: i for i, name in enumerate(self.classes)}
        images = self.root / "images" if (self.root / "images").is_dir() else self.root
        seen: dict[str, str] = {}
        for row in self._split_rows(rows, path):
            self._keep(Path(row.image).stem, images / row.image, [index[c] for c in row.classes], row.where, seen)
        self._finish()

    def _split_rows(self, rows: list[TagRow], path: Path) -> list[TagRow]:
        named = {row.split for row in rows if row.split}
        if named:
            chosen = [row for row in rows if row.split == self.split]
            if not chosen:
                raise InputError(path, f"no rows of split '{self.split}' (splits: {', '.join(sorted(named))})")
            return chosen
        split_file = self.root / "splits" / f"{self.split}.txt"
        if not split_file.is_file():
            raise InputError(path, f"no split column and no splits/{self.split}.txt: split '{self.split}' not found")
        by_image = {row.image: row for row in rows}
        chosen = []
        for n, line in enumerate(split_file.read_text().splitlines(), 1):
            name = line.strip()
            if not name:
                continue
            if name not in by_image:
                raise InputError(split_file, f"line {n}: image '{name}' has no row in {path.name}")
            chosen.append(by_image[name])
        if not chosen:
            raise InputError(split_file, "lists no images")
        return chosen
