"""``icn-rt infer``: a model directory, images and their proposals in; COCO-style results
(RLE masks) out, plus optional overlays and PRM heatmaps.

Images are processed in batches (one recorded forward and one batched backward per
batch). An image that cannot be read, or whose proposal file is missing, corrupt or of
another size, is recorded in ``<out>.errors.txt`` with the reason and skipped; the rest
of the job goes on. An image with no detected class yields no instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from icn_rt.data.images import read_image, write_image
from icn_rt.data.proposals import load_proposals, proposal_path
from icn_rt.data.results import result_entry, write_results
from icn_rt.errors import InputError
from icn_rt.runtime.predictor import Predictor
from icn_rt.runtime.visualize import overlay, prm_strip

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass
class InferSummary:
    images: int = 0
    instances: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    empty: int = 0


def expand_images(paths: list[Path]) -> list[Path]:
    """Files as given; directories become their image files (sorted, not recursive)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(p)
    return out


def infer(predictor: Predictor, images: list[Path], proposals_dir: Path, out: Path, save_vis: Path | None = None,
          batch_size: int = 8, progress: bool = True) -> InferSummary:
    """Run ``predictor`` over ``images`` (their stems are the image ids) and write ``out``."""
    summary = InferSummary()
    entries: list[dict] = []
    errors_path = out.with_name(out.name + ".errors.txt")
    if save_vis is not None:
        save_vis.mkdir(parents=True, exist_ok=True)
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    if progress:
        from icn_rt.progress import track

        batches = track(batches, "infer", unit="batch")
    for batch in batches:
        loaded = []
        for path in batch:
            try:
                image = read_image(path)
                props = load_proposals(proposal_path(proposals_dir, path.stem), expected_shape=image.shape[:2])
            except InputError as e:
                summary.failed.append((str(path), str(e)))
                continue
            loaded.append((path, image, props))
        if not loaded:
            continue
        predictions = predictor.predict([im for _, im, _ in loaded], [pr for _, _, pr in loaded])
        for (path, image, _), pred in zip(loaded, predictions):
            summary.images += 1
            summary.instances += len(pred.instances)
            summary.empty += not pred.instances
            entries += [result_entry(path.stem, inst.class_id, inst.score, inst.mask, predictor.classes)
                        for inst in pred.instances]
            if save_vis is not None:
                write_image(save_vis / f"{path.stem}_overlay.png", overlay(image, pred.instances, predictor.classes))
                write_image(save_vis / f"{path.stem}_prm.png", prm_strip(image, pred.instances))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_results(out, entries)
    if summary.failed:
        errors_path.write_text("".join(f"{p}\t{reason}\n" for p, reason in summary.failed))
    elif errors_path.exists():
        errors_path.unlink()
    return summary
