"""Pictures people look at: instance overlays and PRM heatmaps (PNG)."""

from __future__ import annotations

import cv2
import numpy as np

from icn_rt.data.voc import voc_palette


def overlay(image: np.ndarray, instances, classes: tuple[str, ...], alpha: float = 0.5) -> np.ndarray:
    """``image: uint8 [H, W, 3]`` RGB with each instance's mask tinted (VOC palette by
    instance order), outlined, its peak marked and labelled "class score"."""
    out = image.astype(np.float32)
    palette = voc_palette()[1:]
    for k, inst in enumerate(instances):
        colour = palette[k % len(palette)].astype(np.float32)
        out[inst.mask] = (1 - alpha) * out[inst.mask] + alpha * colour
    out = out.clip(0, 255).astype(np.uint8)
    for k, inst in enumerate(instances):
        colour = tuple(int(c) for c in palette[k % len(palette)])
        contours, _ = cv2.findContours(inst.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour, 1)
        y, x = (int(round(v)) for v in inst.peak)
        cv2.drawMarker(out, (x, y), (255, 255, 255), cv2.MARKER_CROSS, 7, 1)
        ys, xs = np.nonzero(inst.mask)
        org = (int(xs.min()), max(int(ys.min()) - 2, 8)) if len(ys) else (x, y)
        cv2.putText(out, f"{classes[inst.class_id]} {inst.score:.2f}", org, cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                    (255, 255, 255), 1, cv2.LINE_AA)
    return out


def heatmap(image: np.ndarray, prm: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``prm: float [h, w]`` scaled to its maximum, JET-coloured, resized to and blended
    over ``image: uint8 [H, W, 3]``."""
    h, w = image.shape[:2]
    top = float(prm.max())
    scaled = (prm / top if top > 0 else prm) * 255
    resized = cv2.resize(scaled.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    coloured = cv2.applyColorMap(resized.clip(0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    return ((1 - alpha) * image + alpha * coloured).clip(0, 255).astype(np.uint8)


def prm_strip(image: np.ndarray, instances, limit: int = 8) -> np.ndarray:
    """The PRM heatmaps of the first ``limit`` instances side by side (the image alone if
    none); when the ICN ran, a second row holds each instance's enhanced map below its PRM."""
    shown = instances[:limit]
    rows = [[heatmap(image, inst.prm) for inst in shown] or [image]]
    if shown and all(inst.enhanced is not None for inst in shown):
        rows.append([heatmap(image, inst.enhanced) for inst in shown])
    gap = np.full((image.shape[0], 2, 3), 255, np.uint8)
    lines = []
    for row in rows:
        parts = []
        for tile in row:
            parts += [tile, gap]
        lines += [np.concatenate(parts[:-1], axis=1), np.full((2, *parts[0].shape[1:]), 255, np.uint8)]
    lines = lines[:-1]
    width = max(line.shape[1] for line in lines)
    return np.concatenate([line if line.shape[1] == width else
                           np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)), constant_values=255)
                           for line in lines], axis=0)
