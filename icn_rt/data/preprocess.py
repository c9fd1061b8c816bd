"""Image -> network input. The one place that knows how images are resized and normalised."""

from __future__ import annotations

import cv2
import numpy as np
import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, np.float32) * 255
_STD = np.array(IMAGENET_STD, np.float32) * 255


def preprocess_array(image: np.ndarray, size: int) -> np.ndarray:
    """``image: uint8 [H, W, 3]`` RGB -> ``float32 [3, size, size]``: bilinear resize
    (OpenCV; area averaging when shrinking, so small objects survive), ImageNet
    normalisation. NumPy only, so loader threads and processes can run it."""
    h, w = image.shape[:2]
    if (h, w) != (size, size):
        shrink = size < h and size < w
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    x = (image.astype(np.float32) - _MEAN) / _STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image: np.ndarray, size: int) -> torch.Tensor:
    """:func:`preprocess_array` as a tensor."""
    return torch.from_numpy(preprocess_array(image, size))


def preprocess_batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    """Images (``uint8 [H, W, 3]`` RGB each) -> ``float32 [B, 3, size, size]`` on the host."""
    return torch.stack([preprocess(image, size) for image in images])
