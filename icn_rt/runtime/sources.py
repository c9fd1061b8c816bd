"""Which images a job runs on: image files, directories, glob patterns and list files, in
order, with unique ids."""

from __future__ import annotations

import glob
from pathlib import Path

from icn_rt.errors import InputError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LIST_SUFFIXES = (".txt", ".lst", ".list")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def list_images(sources: list[str | Path]) -> list[Path]:
    """The images named by ``sources``, in order: an image file; a directory (its image
    files, sorted, not recursive); a glob pattern (``*``, ``?``, ``[``; ``**`` recurses);
    a list file (``.txt``/``.lst``: one path a line, relative to the list's folder, ``#``
    comments); a dataset's listing — ``tags.csv``/``tags.jsonl``, a COCO
    ``annotations/instances_<split>.json`` — (the images it names, every split). A path that does not exist is kept (it fails, recorded, when loaded).
    Image ids are file stems and must be unique."""
    from icn_rt.data.datasets import listed_images

    out: list[Path] = []
    for source in sources:
        path = Path(source)
        listed = listed_images(path)
        if listed is not None:
            out += listed
        elif path.is_dir():
            out += sorted(q for q in path.iterdir() if _is_image(q))
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
            out += [path.parent / line for line in lines if line]
        elif not path.exists() and any(c in str(source) for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(source), recursive=True) if _is_image(Path(p)))
            if not matches:
                raise InputError(source, "the pattern matches no image files")
            out += matches
        else:
            out.append(path)
    seen: dict[str, Path] = {}
    for path in out:
        if path.stem in seen and seen[path.stem] != path:
            raise InputError(path, f"image id '{path.stem}' is also the id of {seen[path.stem]}; "
                                   "ids (file names without suffix) must be unique")
        seen[path.stem] = path
    return list(dict.fromkeys(out))
