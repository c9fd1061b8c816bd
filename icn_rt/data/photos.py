"""Real photographs as raw material for the synthetic benchmark's photo regime.

scikit-image ships about twenty photographs with its wheel (no download). A photo is
named either by its scikit-image loader (``astronaut``, ``coffee``, ...) or by a path to
an image file; a folder stands for every image in it. Each draw takes a random crop
(a quarter to all of the photo's short side, at any position), flips and quarter-turns
it, scales it to the wanted side and jitters its colours, so a dozen photos give
thousands of distinct backgrounds and textures.

:data:`DEV_PHOTOS` are the photographs development used (the default);
:data:`HELD_OUT_PHOTOS` were never looked at while choosing anything, to check results on
photographs development has not seen (``icn-rt data synth --background photo --photo NAME``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from icn_rt.errors import InputError

DEV_PHOTOS: tuple[str, ...] = ("astronaut", "brick", "camera", "chelsea", "coffee", "coins", "grass", "gravel",
                               "moon", "page", "rocket", "text")
HELD_OUT_PHOTOS: tuple[str, ...] = ("cell", "clock", "hubble_deep_field", "immunohistochemistry", "microaneurysms",
                                    "retina", "stereo_motorcycle")
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@lru_cache(maxsize=16)
def expand(names: tuple[str, ...]) -> tuple[str, ...]:
    """Photo names with every folder replaced by the image files in it (sorted), checked:
    an unknown name or an empty folder is an :class:`InputError`."""
    out: list[str] = []
    for name in names:
        path = Path(name)
        if path.is_dir():
            files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not files:
                raise InputError(path, f"holds no image ({', '.join(SUFFIXES)})")
            out += files
        elif path.suffix.lower() in SUFFIXES or path.exists():
            if not path.is_file():
                raise InputError(path, "photo not found")
            out.append(name)
        elif name not in DEV_PHOTOS + HELD_OUT_PHOTOS:
            raise InputError(Path(name), "not a photo file, a folder of them, or one of scikit-image's photos "
                                         f"({', '.join(DEV_PHOTOS + HELD_OUT_PHOTOS)})")
        else:
            out.append(name)
    return tuple(out)


@lru_cache(maxsize=64)
def load(name: str) -> np.ndarray:
    """Photo ``name`` as uint8 ``[H, W, 3]`` RGB (grey photos repeated over channels)."""
    if name in DEV_PHOTOS + HELD_OUT_PHOTOS:
        import skimage.data

        image = getattr(skimage.data, name)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs: the left view
    else:
        from icn_rt.data.images import read_image

        image = read_image(Path(name))
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def crop(rng: np.random.Generator, photos: tuple[str, ...], size: int) -> np.ndarray:
    """A random view of a random photo: float32 ``[size, size, 3]`` RGB in 0-255 (see the
    module doc for the draw)."""
    image = load(photos[int(rng.integers(len(photos)))])
    h, w = image.shape[:2]
    side = max(8, int(round(min(h, w) * rng.uniform(0.25, 1.0))))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    view = image[y:y + side, x:x + side]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    view = np.rot90(view, int(rng.integers(4)))
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    view = cv2.resize(np.ascontiguousarray(view), (size, size), interpolation=interpolation)
    return jitter(rng, view.astype(np.float32))


def jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Colour jitter of float ``[H, W, 3]`` RGB: a per-channel gain (which also tints grey
    photos), contrast about the mean and a brightness shift; clipped to 0-255."""
    gain = rng.uniform(0.7, 1.3, 3)
    contrast = rng.uniform(0.6, 1.3)
    mean = image.mean((0, 1))
    out = (image - mean) * contrast + mean * gain + rng.uniform(-30, 30)
    return np.clip(out, 0, 255).astype(np.float32)


def luminance_modulation(rng: np.random.Generator, photos: tuple[str, ...], size: int) -> np.ndarray:
    """A photo's texture as a multiplicative field float32 ``[size, size, 1]`` around 1:
    ``1 + a (L - mean L)`` with L its luminance in 0-1 and a in 0.6-1.4."""
    lum = crop(rng, photos, size).mean(2, keepdims=True) / 255.0
    return (1 + rng.uniform(0.6, 1.4) * (lum - lum.mean())).astype(np.float32)
