"""``icn-rt compare MODEL IMAGES --backend torch --backend onnxruntime:int8 ...``: run the same
images through several backends and precisions and say where they part, as Polygraphy's
``run --onnxrt --trt`` does for one network — here for the whole pipeline.

The first contestant is the reference. For every other one, per output (class scores,
class maps, the PRMs and the enhanced maps of the peaks both found), the largest absolute
and relative difference against a tolerance: an element passes when
``|got − want| ≤ atol + rtol·|want|`` (NumPy's ``allclose``). Then the peak agreement
(intersection over union of the (image, class, y, x) sets) and the same-instance
agreement (of the (image, class, chosen proposal) sets), each against a least value. The
tolerances follow the lower precision of the two (:data:`TOLERANCES`, stated in the
report); options override them. Any output over its tolerance or agreement under its
least value is a mismatch: ``icn-rt compare`` exits 1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from icn_rt.data.images import read_image
from icn_rt.data.proposals import Proposals
from icn_rt.progress import say
from icn_rt.runtime.engines import split_backend


@dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float
    peaks: float  # least peak agreement
    instances: float  # least same-instance agreement


TOLERANCES = {"fp32": Tolerance(1e-4, 1e-3, 1.0, 1.0), "fp16": Tolerance(2e-2, 2e-2, 0.95, 0.9),
              "bf16": Tolerance(1e-1, 1e-1, 0.9, 0.85), "int8": Tolerance(0.25, 0.25, 0.8, 0.7)}
"""By the lower precision of the pair. fp32: what a different kernel order leaves
(measured: ≤ 1e-5 between eager and onnxruntime on the demo); fp16: a few fp16 ulps of
the class-map range; bf16 (8 significant bits against fp16's 11): eight times coarser;
int8: a coarse bound, the agreements are what matter there."""

OUTPUTS = ("scores", "maps", "prms", "enhanced")
ORDER = ("int8", "bf16", "fp16", "fp32")


@dataclass
class Outputs:
    """One contestant's results on the images: per image, scores ``[C]`` and class maps
    ``[C, h, w]``; per peak (keyed by (image, class, y, x)), its PRM and enhanced map;
    per image, the (class, proposal) of its instances (None without proposals)."""

    scores: list[np.ndarray]
    maps: list[np.ndarray]
    prms: dict[tuple, np.ndarray]
    enhanced: dict[tuple, np.ndarray]
    instances: list[set] | None


def run_contestant(predictor, images: list[np.ndarray], proposals: list[Proposals] | None,
                   batch_size: int = 8) -> Outputs:
    import torch

    result = Outputs([], [], {}, {}, [] if proposals is not None else None)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = images[start: start + batch_size]
            naive = predictor.naive_maps(batch)
            enhanced = predictor.enhance(naive) if predictor.enhances else None
            result.scores += list(naive.scores.float().cpu().numpy())
            result.maps += list(naive.maps.float().cpu().numpy())
            p = naive.peaks
            keys = [(start + int(b), int(c), int(y), int(x))
                    for b, c, y, x in zip(p.image.tolist(), p.cls.tolist(), p.y.tolist(), p.x.tolist())]
            prms = naive.prms.float().cpu().numpy()
            maps = enhanced.float().cpu().numpy() if enhanced is not None else None
            for i, key in enumerate(keys):
                result.prms[key] = prms[i]
                if maps is not None:
                    result.enhanced[key] = maps[i]
            if proposals is not None:
                predictions = predictor.instances(batch, proposals[start: start + batch_size], naive, enhanced,
                                                  keep_maps=False)
                result.instances += [{(i.class_id, i.proposal) for i in pred.instances} for pred in predictions]
    return result


def _difference(got: list[np.ndarray], want: list[np.ndarray], tol: Tolerance) -> dict:
    if not want:
        return {"compared": 0, "max_abs": 0.0, "max_rel": 0.0, "atol": tol.atol, "rtol": tol.rtol, "ok": True}
    g = np.concatenate([a.ravel() for a in got]).astype(np.float64)
    w = np.concatenate([a.ravel() for a in want]).astype(np.float64)
    diff = np.abs(g - w)
    over = diff > tol.atol + tol.rtol * np.abs(w)
    return {"compared": int(w.size), "max_abs": float(diff.max(initial=0.0)),
            "max_rel": float((diff / np.maximum(np.abs(w), 1e-12)).max(initial=0.0)),
            "atol": tol.atol, "rtol": tol.rtol, "over_tolerance": int(over.sum()), "ok": not over.any()}


def _agreement(a: set, b: set) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def compare_outputs(got: Outputs, want: Outputs, tol: Tolerance) -> dict:
    """One contestant against the reference: per output and agreement, with ``ok``."""
    report: dict = {"tolerance": asdict(tol), "outputs": {}}
    report["outputs"]["scores"] = _difference(got.scores, want.scores, tol)
    report["outputs"]["maps"] = _difference(got.maps, want.maps, tol)
    both = sorted(set(got.prms) & set(want.prms))
    report["outputs"]["prms"] = _difference([got.prms[k] for k in both], [want.prms[k] for k in both], tol)
    both_enhanced = sorted(set(got.enhanced) & set(want.enhanced))
    report["outputs"]["enhanced"] = _difference([got.enhanced[k] for k in both_enhanced],
                                                [want.enhanced[k] for k in both_enhanced], tol)
    peaks = _agreement(set(got.prms), set(want.prms))
    report["peaks"] = {"agreement": peaks, "reference": len(want.prms), "got": len(got.prms),
                       "shared": len(both), "least": tol.peaks, "ok": peaks >= tol.peaks}
    if got.instances is not None and want.instances is not None:
        a = {(i, *inst) for i, s in enumerate(got.instances) for inst in s}
        b = {(i, *inst) for i, s in enumerate(want.instances) for inst in s}
        same = _agreement(a, b)
        report["instances"] = {"agreement": same, "reference": len(b), "got": len(a), "shared": len(a & b),
                               "least": tol.instances, "ok": same >= tol.instances}
    checks = [o["ok"] for o in report["outputs"].values()] + [report["peaks"]["ok"]]
    if "instances" in report:
        checks.append(report["instances"]["ok"])
    report["ok"] = all(checks)
    return report


def tolerance_for(a: str, b: str, override: dict | None = None) -> Tolerance:
    """The tolerance of a pair of contestants (``onnxruntime:int8``, ``torch``): the lower
    precision's, with ``override``'s non-None fields."""
    precisions = [split_backend(s)[1] or "fp32" for s in (a, b)]
    base = TOLERANCES[min(precisions, key=ORDER.index)]
    return Tolerance(**{**asdict(base), **{k: v for k, v in (override or {}).items() if v is not None}})


STUDENT_OUTPUTS = ("scores", "boxes", "box_masks")


def run_student(predictor, images: list[np.ndarray], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """The student's raw outputs per image: ``labels``, ``scores``, ``boxes`` and
    ``box_masks`` (probabilities over each box), by descending score."""
    from icn_rt.data.preprocess import preprocess_batch

    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start: start + batch_size]
        raw = predictor.outputs(preprocess_batch(batch, predictor.input_size).to(predictor.device))
        for b in range(len(batch)):
            mine = (raw["image"] == b).cpu().numpy()
            out.append({k: raw[k].float().cpu().numpy()[mine] if k != "labels" else raw[k].cpu().numpy()[mine]
                        for k in ("labels", "scores", "boxes", "box_masks")})
    return out


def compare_student_outputs(got: list[dict], want: list[dict], tol: Tolerance) -> dict:
    """A student contestant against the reference: detection agreement (the (image, rank,
    class) sets' IoU, against ``tol.instances``) and, over the images whose detections
    agree in number and classes, the largest differences of scores, boxes (relative to
    the side) and masks against ``tol.atol`` / ``tol.rtol``."""
    a = {(i, r, int(c)) for i, g in enumerate(got) for r, c in enumerate(g["labels"])}
    b = {(i, r, int(c)) for i, w in enumerate(want) for r, c in enumerate(w["labels"])}
    same = _agreement(a, b)
    agree = [i for i, (g, w) in enumerate(zip(got, want)) if np.array_equal(g["labels"], w["labels"])]
    report: dict = {"tolerance": asdict(tol), "outputs": {}}
    for name in STUDENT_OUTPUTS:
        report["outputs"][name] = _difference([got[i][name] for i in agree], [want[i][name] for i in agree], tol)
    report["instances"] = {"agreement": same, "reference": len(b), "got": len(a), "shared": len(a & b),
                           "images_identical_classes": len(agree), "least": tol.instances, "ok": same >= tol.instances}
    report["ok"] = all(o["ok"] for o in report["outputs"].values()) and report["instances"]["ok"]
    return report


def compare(model_dir: str | Path, image_paths: list[Path], contestants: list[str], device: str = "cpu",
            proposals_dir: Path | None = None, override: dict | None = None, batch_size: int = 8,
            student: bool = False) -> dict:
    """Run every contestant (a backend, with its precision) on the images and compare each
    with the first; the report. ``student``: the model's student instead of the pipeline
    (its raw detections: :func:`run_student`, :func:`compare_student_outputs`);
    ``proposals_dir``: the pipeline's same-instance agreement too."""
    from icn_rt.data.proposals import load_proposals, proposal_path
    from icn_rt.runtime.infer import PredictorSpec

    if len(contestants) < 2:
        raise ValueError("compare needs at least two contestants: --backend torch --backend onnxruntime ...")
    if student and proposals_dir is not None:
        raise ValueError("the student takes no proposals")
    run, differ = (_student_run, compare_student_outputs) if student else (run_contestant, compare_outputs)
    images = [read_image(p) for p in image_paths]
    proposals = None
    if proposals_dir is not None:
        proposals = [load_proposals(proposal_path(proposals_dir, p.stem)) for p in image_paths]
    outputs = {}
    for name in contestants:
        say(f"running {'the student' if student else 'the pipeline'} on {name}, {len(images)} images")
        # the pipeline's own instances: its student (eager wherever the networks run) is compared by --student
        predictor = PredictorSpec(str(model_dir), student, name, device, agreement=False).build()
        outputs[name] = run(predictor, images, proposals, batch_size)
    reference = contestants[0]
    report = {"model": str(model_dir), "student": student, "images": [str(p) for p in image_paths], "device": device,
              "reference": reference, "instances_compared": proposals is not None, "contestants": {}}
    for name in contestants[1:]:
        report["contestants"][name] = differ(outputs[name], outputs[reference], tolerance_for(name, reference, override))
    report["ok"] = all(c["ok"] for c in report["contestants"].values())
    return report


def _student_run(predictor, images: list[np.ndarray], proposals: None, batch_size: int) -> list[dict]:
    return run_student(predictor, images, batch_size)
