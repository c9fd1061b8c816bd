"""How good the proposals can be: the best proposal per ground-truth instance.

ABO (average best overlap) and recall at IoU 0.5/0.7 of the best proposal per instance
bound what any matching of peaks to proposals can reach. The best proposals themselves,
labelled with the true class and scored by their IoU, form an *oracle* results file
that ``icn-rt eval`` scores as the upper bound of mAP^r.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from icn_rt.data.datasets import open_dataset
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.results import result_entry
from icn_rt.errors import InputError


@dataclass
class RecallReport:
    images: int
    instances: int
    mean_proposals: float
    abo: float
    recall: dict[float, float]
    missing: list[str] = field(default_factory=list)
    oracle: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"images": self.images, "gt_instances": self.instances, "mean_proposals": self.mean_proposals,
                "ABO": self.abo * 100, "recall": {f"{t:g}": v * 100 for t, v in self.recall.items()},
                "images_without_usable_proposals": self.missing}


def proposal_recall(voc_root: str | Path, proposals_dir: str | Path, split: str = "val",
                    thresholds=(0.5, 0.7), progress: bool = True) -> RecallReport:
    """Best-proposal IoU per GT instance of ``split``. An image whose proposal file is
    missing or unreadable counts with IoU 0, and the reason is listed in ``missing``."""
    dataset = open_dataset(voc_root, split, load_images=False)
    best: list[float] = []
    counts: list[int] = []
    missing: list[str] = []
    oracle: list[dict] = []
    items = dataset.ids
    if progress:
        from icn_rt.progress import track

        items = track(items, "proposal recall", unit="img")
    for image_id in items:
        sample = dataset.ground_truth(image_id)
        try:
            props = load_proposals(proposal_path(proposals_dir, image_id), sample.semantic.shape)
        except InputError as e:
            missing.append(str(e))
            best.extend(0.0 for _ in sample.instances)
            continue
        counts.append(len(props))
        for inst in sample.instances:
            iou = props.iou(inst.mask)
            k = int(np.argmax(iou)) if len(iou) else -1
            best.append(float(iou[k]) if k >= 0 else 0.0)
            if k >= 0 and iou[k] > 0:
                oracle.append(result_entry(image_id, inst.class_id, float(iou[k]), props.mask(k), dataset.classes))
    b = np.array(best)
    return RecallReport(len(dataset), len(b), float(np.mean(counts)) if counts else 0.0,
                        float(b.mean()) if len(b) else float("nan"),
                        {t: float((b >= t).mean()) if len(b) else float("nan") for t in thresholds}, missing, oracle)
