"""COCO run-length encoding of binary masks (column-major, compressed counts string)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as cocomask


def encode(mask: np.ndarray) -> dict:
    """``mask: bool [H, W]`` -> ``{"size": [H, W], "counts": str}``."""
    rle = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def encode_many(masks: np.ndarray) -> list[dict]:
    """``masks: bool [N, H, W]`` -> N RLE dicts."""
    if len(masks) == 0:
        return []
    rles = cocomask.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _coco(rle: dict) -> dict:
    counts = rle["counts"]
    if isinstance(counts, list):  # uncompressed RLE
        return cocomask.frPyObjects(rle, *rle["size"])
    return {"size": list(rle["size"]), "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def decode(rle: dict) -> np.ndarray:
    """RLE dict (compressed or uncompressed counts) -> ``bool [H, W]``."""
    return cocomask.decode(_coco(rle)).astype(bool)


def decode_many(rles: list[dict], shape: tuple[int, int]) -> np.ndarray:
    """N RLE dicts of one size -> ``bool [N, H, W]``."""
    if not rles:
        return np.zeros((0, *shape), bool)
    return np.ascontiguousarray(cocomask.decode([_coco(r) for r in rles]).transpose(2, 0, 1).astype(bool))


def check(rle, expected_size: tuple[int, int] | None = None) -> str | None:
    """Why ``rle`` is not a usable RLE dict (of ``expected_size``), or None."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "segmentation is not an RLE dict with 'size' and 'counts'"
    size = rle["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
        return f"RLE size {size!r} is not [height, width]"
    if expected_size is not None and tuple(size) != tuple(expected_size):
        return f"RLE size {list(size)} differs from the image's {list(expected_size)}"
    if not isinstance(rle["counts"], (str, bytes, list)):
        return "RLE counts must be a string or a list"
    return None
