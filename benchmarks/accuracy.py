"""Accuracy with intervals: named configurations of one or more models on a split, each
as mAP^r 0.25/0.5/0.75, ABO and mIoU with 95% bootstrap intervals over the images, and
paired against a reference row (the difference and its interval, on the same draws).

Every choice is made on ``dev``; ``val`` only reports (issue 19). The paper as written
(Eq. 5 on the ICN's maps, vanilla matching on naive PRMs: ``score=auto``, T = 3) is a
row of every table, beside our readings. A row is ``NAME=MODEL[:key=value,...]`` with
keys ``T`` (ICN steps), ``score`` (matching score), ``binarize``, ``confidence``,
``nms``, ``rerank``, ``agree`` (the weight of the student's agreement in the confidence,
``instances.student_agreement``; 0: off; it applies where the model has a student),
``lead`` (``student``: the student's instances ranked by the pipeline's, ``instances.lead``),
``teacher_agree`` (their weight, ``instances.teacher_agreement``),
``backend`` (where the networks run: ``onnxruntime``,
``onnxruntime:int8``, ...: the model's exported graphs, whose T is the export's) and
``student`` (1: the model's student, ``icn-rt train student``, on ``torch`` or
``onnxruntime``; ``refine``, ``refine_scale``, ``proposal_iou``: its masks snapped to
superpixels or proposals; ``contrast_power``, ``consensus_power``: its confidence;
``mask_nms``: its mask NMS; ``tta``: ``flip`` also runs it on the mirrored image; on a
pipeline's row these set the student that runs beside it); each row
also records its images/s through the ``infer`` job; e.g.::

    python benchmarks/accuracy.py synth --split dev \\
        --row "paper as written=model_paper" --row "naive PRM=model:T=0" \\
        --row "full, iou matching=model:score=iou" --reference "naive PRM" \\
        --out benchmarks/results/accuracy_part_only_dev.json

Writes JSON (rows with settings, metrics, intervals and differences; the bootstrap seed
and draws; the models' training seeds; the command; the machine) and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from machine import machine_info

from icn_rt.data.datasets import open_dataset
from icn_rt.eval.bootstrap import difference, draws, intervals
from icn_rt.eval.coco import as_json
from icn_rt.eval.report import score
from icn_rt.models.store import read_config
from icn_rt.runtime.engines import GraphEngines, split_backend
from icn_rt.runtime.infer import InferSettings, infer
from icn_rt.runtime.predictor import Predictor, agreeing_student
from icn_rt.runtime.student import StudentPredictor

KEYS = {"T": int, "score": str, "binarize": float, "confidence": str, "nms": float, "rerank": int, "agree": float,
        "lead": str, "teacher_agree": float,
        "backend": str, "student": int, "refine": str, "refine_scale": float, "proposal_iou": float,
        "contrast_power": float, "consensus_power": float, "mask_nms": float, "tta": str}


def parse_row(text: str) -> tuple[str, Path, dict]:
    """``NAME=MODEL[:key=value,...]`` -> (name, model directory, settings)."""
    name, _, rest = text.partition("=")
    model, _, options = rest.partition(":")
    return name, Path(model), parse_settings(options, name)


def parse_settings(options: str, what: str = "settings") -> dict:
    """``key=value,...`` (keys: :data:`KEYS`; ``none`` for None) -> settings."""
    settings = {}
    for item in filter(None, options.split(",")):
        key, _, value = item.partition("=")
        if key not in KEYS:
            raise SystemExit(f"{what}: unknown key {key!r} (keys: {', '.join(KEYS)})")
        settings[key] = None if value == "none" and key != "refine" else KEYS[key](value)  # refine=none: a mode
    return settings


def predictor_for(model: Path, settings: dict) -> Predictor | StudentPredictor:
    """The model with a row's settings over its config's (or its student)."""
    keys = ("refine", "refine_scale", "proposal_iou", "contrast_power", "consensus_power", "mask_nms", "tta")
    if settings.get("student"):
        student = StudentPredictor.from_dir(model, backend=settings.get("backend", "torch"))
        student.settings = replace(student.settings, **{k: settings[k] for k in keys if k in settings})
        return student
    m = Predictor.from_dir(model, agreement=False).model
    matching, instances = m.matching, m.instances
    if "score" in settings:
        matching = replace(matching, score=settings["score"])
    if "binarize" in settings:
        matching = replace(matching, binarize=settings["binarize"])
    if "rerank" in settings:
        matching = replace(matching, rerank=settings["rerank"])
    if "confidence" in settings:
        instances = replace(instances, confidence=settings["confidence"])
    if "nms" in settings:
        instances = replace(instances, nms_iou=settings["nms"])
    if "agree" in settings:
        instances = replace(instances, student_agreement=settings["agree"])
    if "lead" in settings:
        instances = replace(instances, lead=settings["lead"])
    if "teacher_agree" in settings:
        instances = replace(instances, teacher_agreement=settings["teacher_agree"])
    m = m.replace(icn_steps=settings.get("T"), matching=matching, instances=instances)
    student = agreeing_student(m)
    if student is not None:
        student.settings = replace(student.settings, **{k: settings[k] for k in keys if k in settings})
    if settings.get("backend", "torch") == "torch":
        return Predictor(m, student=student)
    backend, precision = split_backend(settings["backend"])
    return Predictor(m, graphs=GraphEngines(m, backend, "cpu", precision), student=student)


def dataset_record(root: Path, regime: str | None) -> tuple[str, dict | None]:
    """The regime's name (``regime``, else from ``root/synth.json``) and the synthetic
    dataset's config (None for other data), for a report."""
    synth = root / "synth.json"
    config = json.loads(synth.read_text()) if synth.is_file() else None
    if regime or not config:
        return regime or "VOC layout", config
    backgrounds = ", photo backgrounds" if config.get("background") == "photo" else ""
    return f"synthetic, body evidence {config.get('body_evidence', 0)}{backgrounds}", config


def write_report(out: Path, doc: dict, text: str) -> None:
    """``doc`` as JSON at ``out`` and ``text`` (markdown) beside it, printed too."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)


def _training_seeds(model: Path) -> dict:
    config = read_config(model)
    return {section: config[section]["seed"] for section in ("training", "icn_training", "student_training")
            if "seed" in config.get(section, {})}


def _tta(settings) -> str:
    """A student's test-time augmentation as the tables name it ("" for none)."""
    return "" if settings.tta == "none" else f", tta {settings.tta}"


def _resolved(predictor: Predictor | StudentPredictor) -> dict:
    """The settings a row ran with, as the tables show them."""
    if isinstance(predictor, StudentPredictor):
        s = predictor.settings
        return {"icn_steps": "-", "matching": f"student ({s.backbone}, {s.input_size}²{_tta(s)})",
                "binarize": s.mask_threshold,
                "confidence": "detection score" + (f" × contrast^{s.contrast_power:g}" if s.contrast_power else "")
                + (f" × consensus^{s.consensus_power:g}" if s.refine == "proposals" and s.consensus_power else ""),
                "nms_iou": s.nms_iou}
    m = predictor.model
    if predictor.student is not None and m.instances.lead == "student":  # the student's row, ranked by the pipeline
        led, s = _resolved(predictor.student), predictor.student.settings
        return {**led, "icn_steps": m.icn_settings.steps if m.enhances else 0,
                "matching": f"student ({s.backbone}, {s.input_size}², {s.refine}{_tta(s)}), led",
                "confidence": f"{led['confidence']} × (1 + {m.instances.teacher_agreement:g} × pipeline agreement)"}
    agrees = f" × (1 + {m.instances.student_agreement:g} × student agreement)" if predictor.student is not None else ""
    return {"icn_steps": m.icn_settings.steps if m.enhances else 0, "matching": m.matching.resolved(m.enhances).score,
            "binarize": m.matching.binarize, "confidence": m.instances.confidence + agrees,
            "nms_iou": m.instances.nms_iou}


def run(args) -> dict:
    rows = [parse_row(r) for r in args.row]
    names = [name for name, _, _ in rows]
    if args.reference and args.reference not in names:
        raise SystemExit(f"--reference {args.reference!r} is not a row ({', '.join(names)})")
    ds = open_dataset(args.root, args.split, load_images=False)
    images = [ds.image_path(i) for i in ds.ids]
    weights = draws(len(images), args.bootstrap, args.seed)
    scored, out = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, settings in rows:
            predictor = predictor_for(model, settings)
            results = Path(tmp) / f"{len(scored)}.json"
            started = time.perf_counter()
            job = InferSettings(proposals=args.proposals or args.root / "Proposals", workers=args.workers,
                                progress=False)
            done = infer(predictor, images, results, job)
            if done.failed:  # scored, a failed image would count as one without instances
                raise SystemExit(f"{name}: {done.failures()}; no figure")
            rate = len(images) / (time.perf_counter() - started)
            scored[name] = score(args.root, results, args.split, progress=False)
            out.append({"name": name, "model": str(model), "settings": settings, "backend": predictor.backend,
                        "resolved": _resolved(predictor), "training_seeds": _training_seeds(model),
                        "images_per_second": rate})
            print(f"{name}: {scored[name].metrics()['mAP@0.5']:.1f} mAP^r@0.5", file=sys.stderr, flush=True)
    replicates = {name: [s.metrics(w) for w in weights] for name, s in scored.items()}
    for row in out:
        s, reps = scored[row["name"]], replicates[row["name"]]
        row["metrics"] = {k: v.to_json() for k, v in intervals(s.metrics(), reps, args.level).items()}
        if args.reference and row["name"] != args.reference:
            ref, ref_reps = scored[args.reference], replicates[args.reference]
            diff = intervals(difference(s.metrics(), ref.metrics()),
                             [difference(a, b) for a, b in zip(reps, ref_reps)], args.level)
            row["minus_reference"] = {k: {**v.to_json(), "excludes_zero": v.excludes_zero()} for k, v in diff.items()}
        row["ap_per_class_0.5"] = dict(zip(s.classes, [None if a != a else 100 * a
                                                       for a in s.inst.result()["ap"][0.5]]))
        row["COCO"] = as_json(s.coco.result())
    return {"rows": out, "images": len(images), "reference": args.reference}


def coco_cell(row: dict) -> str:
    """COCO's segm AP (IoU 0.5:0.95) of a row; '-' for rows measured before it was recorded."""
    ap = row.get("COCO", {}).get("AP")
    return "-" if ap is None else f"{ap:.1f}"


def markdown(doc: dict) -> str:
    def cell(m):
        lo, hi = m["interval"]
        return f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]" if m["estimate"] is not None else "-"

    lines = [f"Accuracy on the `{doc['split']}` split of `{doc['root']}` ({doc['images']} images; {doc['regime']}); "
             f"{100 * doc['bootstrap']['level']:g}% bootstrap intervals over the images ({doc['bootstrap']['samples']} "
             f"draws, seed {doc['bootstrap']['seed']}). Commands and settings in the JSON beside this file.", "",
             "| row | T | matching | confidence | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | ABO | mIoU | COCO AP | "
             + (f"mAP^r@0.5 − {doc['reference']} |" if doc["reference"] else ""),
             "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if doc["reference"] else "")]
    for r in doc["rows"]:
        m, s = r["metrics"], r["resolved"]
        diff = ""
        if doc["reference"]:
            d = r.get("minus_reference", {}).get("mAP@0.5")
            diff = "(reference) |" if d is None else f"{cell(d)}{'' if d['excludes_zero'] else ' ~0'} |"
        lines.append(f"| {r['name']} | {s['icn_steps']} | {s['matching']} | {s['confidence']} | "
                     + " | ".join(cell(m[k]) for k in ("mAP@0.25", "mAP@0.5", "mAP@0.75", "ABO", "mIoU"))
                     + f" | {coco_cell(r)} | {diff}")
    if doc["reference"]:
        lines += ["", "~0: the difference's interval holds 0 (not a difference the images support)."]
    lines.append("")
    return "\n".join(lines)


def row_arguments(ap: argparse.ArgumentParser, reference: str) -> None:
    """The arguments of a benchmark of named rows on a split (this one's, ``mask_fit.py``'s):
    the data, ``--split``, ``--row`` (repeated), ``--reference`` (``reference``: its help),
    ``--proposals`` and the bootstrap's ``--bootstrap`` and ``--seed``."""
    ap.add_argument("root", type=Path, help="VOC-layout root with Proposals/ for the split")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--row", action="append", required=True, help="NAME=MODEL[:key=value,...] (repeat)")
    ap.add_argument("--reference", default=None, help=reference)
    ap.add_argument("--proposals", type=Path, default=None, help="[default: ROOT/Proposals]")
    ap.add_argument("--bootstrap", type=int, default=1000, help="draws of the images")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    row_arguments(ap, "the row every other is compared with, paired")
    ap.add_argument("--level", type=float, default=0.95)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--regime", default=None, help="a name for the data's regime [default: from ROOT/synth.json]")
    ap.add_argument("--notes", default="", help="how the models were made, kept in the JSON")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    result = run(args)
    regime, dataset = dataset_record(args.root, args.regime)
    doc = {"benchmark": "accuracy", "command": shlex.join(["python", *sys.argv]), "root": str(args.root),
           "split": args.split, "regime": regime,
           "bootstrap": {"samples": args.bootstrap, "seed": args.seed, "level": args.level, "unit": "image"},
           "dataset": dataset, **result, **({"notes": args.notes} if args.notes else {}), "machine": machine_info()}
    write_report(args.out, doc, markdown(doc))


if __name__ == "__main__":
    main()
