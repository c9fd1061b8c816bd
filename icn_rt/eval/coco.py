"""COCO's own instance-segmentation metrics (pycocotools' ``COCOeval``, ``segm``) of
results against a split's ground truth, beside mAP^r: AP (IoU 0.5:0.95), AP50, AP75 and
AP for small, medium and large objects (COCO's absolute areas: under 32², to 96², above),
each over 100 detections an image.

Ground truth goes in as COCO annotations (RLE, area, ``iscrowd`` 0). VOC's *difficult*
objects are ignored by VOC's convention; COCO ignores only crowd regions, so unless they
are counted they go in as ``iscrowd`` 1 (a detection on one is neither a hit nor a false
positive; COCO measures its overlap as the share of the detection inside the region).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""``COCOeval.stats[:6]`` in order, in percent (NaN where no ground truth falls in a range)."""


@dataclass
class CocoAccumulator:
    """Images added one at a time (their ground truth and predictions as RLE), scored at
    the end by :meth:`result`."""

    classes: int
    count_difficult: bool = False
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    detections: list[dict] = field(default_factory=list)

    def add(self, shape: tuple[int, int], gt_rles: list[dict], gt_labels, gt_difficult, pred_rles: list[dict],
            pred_labels, pred_scores) -> None:
        """One image: ``gt_rles`` / ``pred_rles`` COCO RLE of its masks at ``shape`` (H, W),
        labels 0-based, ``gt_difficult`` bool per ground-truth instance."""
        from pycocotools import mask as cocomask

        image_id = len(self.images) + 1
        self.images.append({"id": image_id, "height": int(shape[0]), "width": int(shape[1])})
        for rle, label, difficult in zip(gt_rles, gt_labels, gt_difficult):
            crowd = bool(difficult) and not self.count_difficult
            self.annotations.append({"id": len(self.annotations) + 1, "image_id": image_id,
                                     "category_id": int(label) + 1, "segmentation": rle,
                                     "area": float(cocomask.area(rle)), "bbox": cocomask.toBbox(rle).tolist(),
                                     "iscrowd": int(crowd)})
        for rle, label, score in zip(pred_rles, pred_labels, pred_scores):
            self.detections.append({"image_id": image_id, "category_id": int(label) + 1, "segmentation": rle,
                                    "score": float(score)})

    def result(self) -> dict[str, float]:
        """:data:`METRICS` in percent (NaN for a metric with no ground truth; all NaN without
        any prediction)."""
        if not self.detections or not self.annotations:
            return {name: float("nan") for name in METRICS}
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
            gt = COCO()
            gt.dataset = {"images": self.images, "annotations": self.annotations,
                          "categories": [{"id": c + 1} for c in range(self.classes)]}
            gt.createIndex()
            run = COCOeval(gt, gt.loadRes(self.detections), "segm")
            run.evaluate()
            run.accumulate()
            run.summarize()
        return {name: (100 * float(v) if v >= 0 else float("nan")) for name, v in zip(METRICS, run.stats[:6])}


def as_json(metrics: dict[str, float]) -> dict[str, float | None]:
    """:data:`METRICS` for a JSON report: NaN (no ground truth in a range) as None."""
    return {k: None if v != v else v for k, v in metrics.items()}
