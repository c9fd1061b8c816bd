"""Image decoding: any JPEG/PNG (grey, RGB, RGBA, palette, 8 or 16 bit) to RGB uint8,
turned the way viewers show it (the EXIF orientation applied)."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from icn_rt.errors import InputError, TooLarge


def decode_image(data: bytes | np.ndarray, path: str | Path = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes to ``uint8 [H, W, 3]`` RGB.

    16-bit images are scaled to 8 bits, alpha is dropped (not composited: the colour
    channels are what the network sees), grey is replicated to three channels. An EXIF
    orientation (phone photos) is applied, as viewers, OpenCV's ``imread`` and PIL's
    ``exif_transpose`` do, so masks line up with the image people see; sizes are those
    of the turned image.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if buf.size == 0:
        raise InputError(path, "file is empty")
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)  # 3 channels, 8 or 16 bit, EXIF applied
    if img is None:
        raise InputError(path, "not a decodable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img.astype(np.uint32) * 255 + 32767) // 65535
        img = img.astype(np.uint8)
    elif img.dtype != np.uint8:
        raise InputError(path, f"unsupported pixel type {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise InputError(path, f"unsupported pixel layout {img.shape}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``uint8 [H, W, 3]`` RGB; errors name the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "image file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot read image ({e.strerror})") from None
    return decode_image(data, path)


def image_size(path: str | Path | BinaryIO, name: str | Path | None = None) -> tuple[int, int] | None:
    """``(H, W)`` from the header of a file (or a file object, named ``name`` in errors),
    without decoding it; None when the header cannot be read (decoding will say why).
    Beyond PIL's decompression-bomb limit (~179 MP) it is an :class:`InputError`."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's decompression-bomb warning: we check the size ourselves
            with Image.open(path) as im:
                return im.height, im.width
    except Image.DecompressionBombError:
        raise TooLarge(name or path, f"image is over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP: refused before "
                               "decoding") from None
    except Exception:
        return None


def write_image(path: str | Path, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write ``uint8 [H, W, 3]`` RGB as JPEG or PNG by the file's suffix."""
    path = Path(path)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, enc = cv2.imencode(path.suffix, bgr, params)
    if not ok:
        raise InputError(path, "cannot encode image")
    path.write_bytes(enc.tobytes())
