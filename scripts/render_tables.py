"""Render the results tables of README.md and docs/*.md from benchmarks/results/*.json.

A table lives between ``<!-- table: NAME -->`` and ``<!-- /table -->``; this script
replaces what is between them with what ``RENDERERS[NAME]`` makes of the committed JSON,
so no figure is typed by hand. ``--check`` changes nothing and exits 1 naming every table
that differs from its rendering (the test suite runs it)::

    python scripts/render_tables.py            # rewrite the tables
    python scripts/render_tables.py --check    # drift?
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def _ci(metric: dict) -> str:
    lo, hi = metric["interval"]
    return f"{metric['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"


def _diff(d: dict | None) -> str:
    """A paired difference with its interval ("~0" when it holds 0), or "(reference)"."""
    if d is None:
        return "(reference)"
    return _ci(d) + ("" if d.get("excludes_zero", True) else " ~0")


def student() -> str:
    """The student against the pipeline that labelled it (part-only val) and their speed."""
    doc = _json("student_part_only.json")
    rows = doc["accuracy"]["rows"]
    speed = doc["speed"]["contestants"]
    lines = ["| model | mAP^r@0.5 | mAP^r@0.75 |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {_ci(r['metrics']['mAP@0.5'])} | {_ci(r['metrics']['mAP@0.75'])} |")
    lines += ["", "| on 500×375 photos, 2 CPU cores | images/s | × pipeline, proposals on the fly |", "|---|---|---|"]
    for name, c in speed.items():
        lines.append(f"| {name} | {c['images_per_second']:.1f} | {c['x_pipeline_on_the_fly']:.1f} |")
    lines += ["", f"Part-only regime, {doc['accuracy'].get('images', 500)} val images, 95% bootstrap intervals; "
                  + _student_setup(doc) + "; `benchmarks/results/student_part_only.json`."]
    return "\n".join(lines)


def _student_setup(doc: dict) -> str:
    """Who taught ``benchmarks/student.py``'s students and how they ranked and refined, from
    its report."""
    rows = doc["accuracy"]["rows"]
    agrees = "student agreement" in rows[0]["resolved"]["confidence"]
    taught = f"the teacher is the demo model's pipeline, ranked {'by' if agrees else 'without'} its student's agreement"
    ranked = {r["resolved"]["confidence"] for r in rows if r["settings"].get("student")}
    students = doc.get("students", {}).values()
    refines = {s.get("refine", "none") for s in students}
    refined = f", masks snapped to {refines.pop()} (chosen on dev)" if len(refines) == 1 and "none" not in refines else ""
    pruned = ", mask NMS" if students and all(s.get("mask_nms") for s in students) else ""
    return taught + (f"; the students ranked by {ranked.pop()}" if len(ranked) == 1 else "") + refined + pruned


def student_detail() -> str:
    """Every row of ``benchmarks/student.py``'s report with its paired difference to the
    teacher, then the speed of each contestant end to end."""
    doc = _json("student_part_only.json")
    lines = ["| row | mAP^r@0.25 | mAP^r@0.5 | mAP^r@0.75 | mAP^r@0.5 − teacher |", "|---|---|---|---|---|"]
    for r in doc["accuracy"]["rows"]:
        m = r["metrics"]
        lines.append(f"| {r['name']} | {_ci(m['mAP@0.25'])} | {_ci(m['mAP@0.5'])} | {_ci(m['mAP@0.75'])} | "
                     f"{_diff(r.get('minus_reference', {}).get('mAP@0.5'))} |")
    sp = doc["speed"]
    lines += ["", f"| {sp['images']} new {sp['size'][0]}×{sp['size'][1]} photos, the `infer` job, {sp['workers']} "
                  f"loader workers, median of {sp['repeats']} | images/s | × pipeline, proposals on the fly |",
              "|---|---|---|"]
    for name, c in sp["contestants"].items():
        lines.append(f"| {name} | {c['images_per_second']:.1f} | {c['x_pipeline_on_the_fly']:.1f} |")
    return "\n".join(lines)


def student_refine(name: str = "student_refine_part_only_val.json") -> str:
    """The student's masks as pasted and snapped to superpixels: accuracy and images/s (val;
    the scale chosen on dev)."""
    doc = _json(name)
    lines = ["| row | mAP^r@0.5 | mAP^r@0.75 | ABO | mAP^r@0.5 − student | images/s (the `infer` job) |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        m = r["metrics"]
        lines.append(f"| {r['name']} | {_ci(m['mAP@0.5'])} | {_ci(m['mAP@0.75'])} | {_ci(m['ABO'])} | "
                     f"{_diff(r.get('minus_reference', {}).get('mAP@0.5'))} | {r['images_per_second']:.1f} |")
    lines += ["", f"val, {doc['images']} images ({doc['regime']}); 95% bootstrap intervals over the images; "
                  f"`benchmarks/results/{name}` (dev, where the scale was chosen among 100 / 200 / 400: "
                  "`..._dev.json`)."]
    return "\n".join(lines)


def speed() -> str:
    """``icn-rt bench`` on the CPU: the baseline against icn-rt, best batch per contestant."""
    doc = _json("bench_cpu.json")
    best: dict[tuple, dict] = {}
    for r in doc["rows"]:
        key = (r["contestant"], r["backend"])
        if key not in best or r["images_per_s"] > best[key]["images_per_s"]:
            best[key] = r
    lines = ["| contestant | backend | best batch | images/s | × baseline |", "|---|---|---|---|---|"]
    for (name, backend), r in best.items():
        lines.append(f"| {name} | {backend} | {r['batch_size']} | {r['images_per_s']:.1f} | "
                     f"{r['speedup_vs_baseline']:.1f} |")
    size = doc["image_sizes"][0]
    agrees = any("student" in r.get("stage_shares", {}) for r in doc["rows"])
    lines += ["", f"{doc['images']} images of {size[0]}×{size[1]}, proposals read from disk, "
                  f"{doc['machine'].get('cpu_count', 2)} CPU cores; the model "
                  + ("with its student (the student's time included)" if agrees else
                     "without a student (so without the student's stage)")
                  + "; `benchmarks/results/bench_cpu.json`."]
    return "\n".join(lines)


def serve() -> str:
    """``icn-rt serve`` under a bounded load test, beside the batch job."""
    doc = _json("serve_cpu.json")
    lines = ["| concurrency | requests/s | × batch job | p50 ms | p99 ms | errors | same instances |",
             "|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['concurrency']} | {r['requests_per_second']:.1f} | {r['vs_batch_job']:.2f} | "
                     f"{r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | "
                     f"{'yes' if r['same_instances_as_the_batch_job'] else 'no'} |")
    model = doc["model"][:1].upper() + doc["model"][1:]
    lines += ["", f"{model}, {doc['images']} images, proposals from disk, one model replica; the batch job "
                  f"on the same images: {doc['batch_job_images_per_second']:.1f} images/s; "
                  "`benchmarks/results/serve_cpu.json`."]
    return "\n".join(lines)


def matching() -> str:
    """``bench_matching.py`` on the CPU: the K = 8 cases, every contestant's seconds."""
    doc = _json("matching_cpu.json")

    def secs(entry: dict) -> str:
        if "seconds" not in entry:
            return "—"
        return f"{entry['seconds']:.3g}" + (" (extrap.)" if entry.get("extrapolated") else "")

    lines = ["| N | S | baseline s | NumPy s | Numba CPU s | × baseline | paper's score, Numba CPU s | pack s "
             "| same selections |", "|---|---|---|---|---|---|---|---|---|"]
    for c in doc["cases"]:
        if c["maps"] != 8:
            continue
        v, r = c["vanilla"], c["rebalanced"]
        same = c["identical"]["vanilla"]["equal"] and c["identical"]["rebalanced"]["equal"]
        lines.append(f"| {c['proposals']} | {c['size']}² | {secs(v['baseline'])} | {secs(v['numpy'])} | "
                     f"{secs(v['cpu'])} | {v['cpu']['speedup_vs_baseline']:.0f} | {secs(r['cpu'])} | "
                     f"{c['pack_seconds']:.3g} | {'yes' if same else 'no'} |")
    speedups = [c["vanilla"]["cpu"]["speedup_vs_baseline"] for c in doc["cases"]]
    lines += ["", f"K = 8 maps; over the whole grid (N {min(doc['settings']['proposals'])}–"
                  f"{max(doc['settings']['proposals'])}, K {min(doc['settings']['maps'])}–"
                  f"{max(doc['settings']['maps'])}, {min(doc['settings']['sizes'])}²–"
                  f"{max(doc['settings']['sizes'])}²) "
                  f"Numba CPU is {min(speedups):.0f}× to {max(speedups):.0f}× the baseline; "
                  "`benchmarks/results/matching_cpu.{json,md}`."]
    return "\n".join(lines)


def bench_batches() -> str:
    """``icn-rt bench`` on the CPU: images/s per contestant and batch size (× the baseline)."""
    doc = _json("bench_cpu.json")
    batches = sorted({r["batch_size"] for r in doc["rows"]})
    table: dict[tuple, dict] = {}
    for r in doc["rows"]:
        table.setdefault((r["contestant"], r["backend"]), {})[r["batch_size"]] = r
    lines = ["| contestant | backend | " + " | ".join(f"batch {b}" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for (name, backend), by_batch in table.items():
        cells = []
        for b in batches:
            r = by_batch.get(b)
            cells.append("" if r is None else f"{r['images_per_s']:.1f}" + (
                f" ({r['speedup_vs_baseline']:.1f}×)" if name != "baseline" else " images/s"))
        same = {r.get("same_instances_as_baseline") for r in by_batch.values()} - {None}
        shown = same and name != "baseline"
        label = name + (f" (same instances: {'yes' if same == {True} else 'no'})" if shown else "")
        lines.append(f"| {label} | {backend} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench_summary() -> str:
    """``icn-rt bench`` on the CPU in words: the like-for-like ratios, the per-image stage
    times at the largest batch, and where the model as configured spends its time."""
    doc = _json("bench_cpu.json")
    by = {(r["contestant"], r["backend"], r["batch_size"]): r for r in doc["rows"]}
    top = max(r["batch_size"] for r in doc["rows"])
    rules = {b: r for (name, backend, b), r in by.items() if name == "icn-rt, PRM rules" and backend == "torch"}
    model = by[("icn-rt, model", "torch", top)]
    base_ms = 1000 * by[("baseline", "torch", 1)]["latency_s"]["total"]["median"]

    def per_image(row: dict, stage: str) -> str:
        return f"{1000 * row['latency_s'][stage]['median'] / row['batch_size']:.1f} ms"

    first, *rest = [b for b in sorted(rules) if b > 1]
    ratios = (f"{rules[first]['speedup_vs_baseline']:.0f}× the baseline at batch {first}"
              + "".join(f" and {rules[b]['speedup_vs_baseline']:.0f}× at batch {b}" for b in rest))
    same = all(r["same_instances_as_baseline"] for r in rules.values())
    stages = [s for s in ("prm", "icn", "matching", "nms", "student") if model["stage_shares"].get(s, 0) >= 0.01]
    names = {"prm": "PRMs", "icn": "the ICN", "matching": "matching", "nms": "NMS", "student": "the student"}
    return (f"Like for like, icn-rt is {ratios}"
            f"{' with the same instances' if same else ''} (the target is 20×; batch 1 pays fixed per-call "
            f"costs: {rules[1]['speedup_vs_baseline']:.0f}×). Per image at batch {top}: PRMs "
            f"{per_image(rules[top], 'prm')} (forward and backward), matching {per_image(rules[top], 'matching')}, "
            f"NMS {per_image(rules[top], 'nms')}, against the baseline's {base_ms:.0f} ms. The model as configured "
            f"runs {model['images_per_s']:.1f} images/s at batch {top} on eager PyTorch, per image "
            + ", ".join(f"{names[s]} {per_image(model, s)}" for s in stages)
            + f" ({doc['peaks_per_image']['model']:.1f} peaks per image); `benchmarks/results/bench_cpu.json`.")


def rows(name: str) -> str:
    """A benchmark's rows (``benchmarks/accuracy.py``, ``icn_in_matching.py``): mAP^r at 0.5
    and 0.75, and the paired difference to its reference at 0.5."""
    doc = _json(name)
    lines = ["| row | mAP^r@0.5 | mAP^r@0.75 | mAP^r@0.5 − reference |", "|---|---|---|---|"]
    for r in doc["rows"]:
        diff = _diff((r.get("minus_reference") or {}).get("mAP@0.5"))
        lines.append(f"| {r['name']} | {_ci(r['metrics']['mAP@0.5'])} | {_ci(r['metrics']['mAP@0.75'])} | {diff} |")
    lines += ["", f"{doc['split']}, {doc['images'] if isinstance(doc['images'], int) else len(doc['images'])} images "
                  f"({doc['regime']}); 95% bootstrap intervals over the images; ~0: the difference's interval holds 0; "
                  f"`benchmarks/results/{name}`."]
    return "\n".join(lines)


def paper_suspects() -> str:
    """The paper as written, one suspect changed at a time: val, with paired differences to
    the literal row and to the naive PRM."""
    literal, naive = _json("paper_suspects_part_only_val.json"), _json("paper_suspects_part_only_val_vs_naive.json")
    against = {r["name"]: r.get("minus_reference", {}).get("mAP@0.5") for r in naive["rows"]}

    lines = ["| row | mAP^r@0.5 | − the paper as written | − naive PRM |", "|---|---|---|---|"]
    for r in literal["rows"]:
        lines.append(f"| {r['name']} | {_ci(r['metrics']['mAP@0.5'])} | "
                     f"{_diff(r.get('minus_reference', {}).get('mAP@0.5'))} | {_diff(against[r['name']])} |")
    lines += ["", f"val, {literal['images']} images ({literal['regime']}); 95% bootstrap intervals over the images; "
                  "~0: the difference's interval holds 0; `benchmarks/results/paper_suspects_part_only_val.json`, "
                  "`..._val_vs_naive.json` (dev: `..._dev*.json`)."]
    return "\n".join(lines)


def precision() -> str:
    """Each backend and precision of the demo model: size, accuracy, its paired difference to
    eager fp32, and speed at batch 8."""
    doc = _json("precision_cpu.json")
    speed = {r["backend"]: r["images_per_s"] for r in doc["rows"]
             if r["contestant"] == "icn-rt, model" and r["batch_size"] == 8}
    lines = ["| backend, precision | size | mAP^r@0.5 | − torch fp32 | images/s (batch 8) |", "|---|---|---|---|---|"]
    for r in doc["accuracy"]["rows"]:
        backend, _, prec = r["backend"].partition(":")
        name = f"{backend} {prec or 'fp32'}" + (" (eager)" if r["backend"] == "torch" else
                                                " (autocast)" if backend == "torch" else "")
        lines.append(f"| {name} | {r['model_bytes'] / 1e6:.2f} MB | {_ci(r['mAP@0.5'])} | "
                     f"{_diff(r['minus_torch_fp32'])} | {speed[r['backend']]:.1f} |")
    lines += ["", "~0: the difference's interval holds 0."]
    return "\n".join(lines)


def distributed() -> str:
    """Single process against Ray Data, proposals from disk and made on the fly."""
    doc = _json("distributed_cpu.json")
    lines = ["| proposals | contestant | images/s | × single | s to the first batch | images/s after it | "
             "object store KB/image |", "|---|---|---|---|---|---|---|"]

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    for r in doc["inference"]["rows"]:
        lines.append(f"| {r['proposals']} | {r['contestant']} | {r['images_per_second']:.1f} | {r['vs_single']:.2f} | "
                     f"{f(r.get('seconds_to_first_batch'), '.1f')} | "
                     f"{f(r.get('images_per_second_after_first_batch'), '.1f')} | "
                     f"{f(r.get('object_store_kb_per_image'), '.0f')} |")
    train = doc["training"]["rows"]
    lines += ["", f"{doc['inference']['images']} images, batch {doc['inference']['batch_size']}, "
                  f"{doc['inference']['model']}. Training ({doc['training']['train_images']} images): "
              + ", ".join(f"{r['processes']} process{'es' if r['processes'] > 1 else ''} "
                          f"{r['seconds_per_epoch']:.1f} s/epoch" for r in train)
              + f" ({train[0]['seconds_per_epoch'] / train[-1]['seconds_per_epoch']:.2f}× with "
                f"{train[-1]['processes']})."]
    return "\n".join(lines)


def bench_paper() -> str:
    """`benchmarks/bench_paper.py`: the baseline and icn-rt at the paper's configuration."""
    doc = _json("bench_paper_cpu.json")
    sizes = sorted({r["batch_size"] for r in doc["rows"]})
    names = {"icn-rt, PRM rules": "icn-rt, PRM rules", "icn-rt, model": "icn-rt, model (its own peaks, gradient rule)"}
    lines = ["| contestant | " + " | ".join(f"batch {b}" for b in sizes) + " |", "|---|" + "---|" * len(sizes)]
    groups: dict = {}
    for r in doc["rows"]:
        groups.setdefault((r["contestant"], r["backend"]), {})[r["batch_size"]] = r
    for (contestant, backend), by_size in groups.items():
        cells = []
        for b in sizes:
            r = by_size.get(b)
            if r is None:
                cells.append("")
            elif contestant == "baseline":
                cells.append(f"{r['images_per_s']:.3f} images/s ({1 / r['images_per_s']:.1f} s/image)")
            else:
                cells.append(f"{r['images_per_s']:.2f} ({r['speedup_vs_baseline']:.1f}×)")
        same = next(iter(by_size.values()))["same_instances_as_baseline"]
        label = "baseline" if contestant == "baseline" else (
            f"{names.get(contestant, contestant)}, {backend}" + (f" (same instances: {'yes' if same else 'NO'})"
                                                                 if same is not None else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_summary() -> str:
    """`benchmarks/bench_paper.py` in words: peaks per image, the PRM stage's share, the
    forward passes each peak's backward costs (per rule), the like-for-like ratio."""
    doc = _json("bench_paper_cpu.json")
    shares = [r["stage_shares"]["prm"] for r in doc["rows"] if r["stage_shares"]]
    rules = doc["backward"]["rules"]
    model, prm = rules["model"], rules["PRM rules"]
    return (f"Peaks per image: {doc['peaks_per_image']['model']:.1f} (model), "
            f"{doc['peaks_per_image']['PRM rules']:.1f} (PRM rules). The PRM stage is "
            f"{100 * min(shares):.0f}–{100 * max(shares):.0f}% of the time: here every peak costs a backward pass "
            f"over the whole map, measured at {model['forwards_per_peak']:.2f} forward passes per peak for the "
            f"{model['rule']} rule (a per-peak autograd loop: {model['autograd_loop_forwards_per_peak']:.2f}) and "
            f"{prm['forwards_per_peak']:.2f} for the {prm['rule']} rule (the baseline's patched autograd loop: "
            f"{prm['autograd_loop_forwards_per_peak']:.2f}); one forward is "
            f"{1000 * doc['backward']['forward_s']:.0f} ms. "
            f"Like for like, icn-rt runs {doc['best_like_for_like_speedup']:.1f}× the baseline here.")


def engines_summary() -> str:
    """`benchmarks/engines.py` in words: onnxruntime's networks against the peaks per image,
    and its ratios to eager PyTorch at the model's own settings, networks and predictor."""
    doc = _json("engines_cpu.json")
    ort = [r for r in doc["rows"] if r["backend"] == "onnxruntime"]
    fixed = {r["peaks_per_image"]: r for r in ort if r["peaks"] != "model" and r["batch_size"] == 8}
    own = sorted((r for r in ort if r["peaks"] == "model"), key=lambda r: r["batch_size"])
    low, high = fixed[min(fixed)], fixed[max(fixed)]

    def ratios(stage: str) -> list[str]:
        return [f"{r[stage]['speedup_vs_torch_eager']:.2f}×" for r in own]

    sizes = [r["batch_size"] for r in own]
    net, whole = ratios("networks"), ratios("predict")
    return (f"onnxruntime runs the networks of batch 8 at {low['networks']['images_per_s']:.1f} images/s with "
            f"{low['peaks_per_image']:.0f} peak per image and {high['networks']['images_per_s']:.1f} with "
            f"{high['peaks_per_image']:.0f}. At the model's own settings ({own[0]['peaks_per_image']:.1f} peaks per "
            f"image) onnxruntime runs the networks at " + ", ".join(f"{v} eager PyTorch at batch {b}" if k == 0
                                                                  else f"{v} at batch {b}"
                                                                  for k, (v, b) in enumerate(zip(net, sizes)))
            + f", and the whole predictor at {', '.join(whole)} (`benchmarks/results/engines_cpu.json`).")


def memory_summary() -> str:
    """`benchmarks/bench_infer_memory.py` in words: peak resident memory at each count."""
    doc = _json("infer_memory_cpu.json")
    first, last = doc["rows"][0], doc["rows"][-1]

    def mib(row: dict) -> str:
        return f"{row['peak_rss_bytes'] / 2 ** 20:,.0f} MiB at {row['count']:,} images"

    growth = 100 * (doc["peak_rss_ratio_largest_to_smallest"] - 1)
    return (f"Peak resident memory: {mib(first)}, {mib(last)} ({growth:+.1f}%; the target is 10% at most), at "
            f"{first['images_per_s']:.1f} and {last['images_per_s']:.1f} images/s "
            "(`benchmarks/results/infer_memory_cpu.json`).")


def label_repick(name: str = "label_repick_photo_dev_41.json") -> str:
    """`benchmarks/label_repick.py`: the student's labels as they are and re-picked."""
    doc = _json(name)
    keys = ("precision", "recall", "F1", "F1 − the labels as they are", "leak", "fragment", "off")
    lines = ["| labels | " + " | ".join(k + (" %" if k in keys[4:] else "") for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    for row_name, row in doc["rows"].items():
        cells = [(_diff(row[k]) if k.startswith("F1 −") else _ci(row[k])) if k in row else "(reference)"
                 for k in keys]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{doc['split']}, {doc['images']} images, {doc['labels']} labels; the colour "
                               f"model fitted on {doc['fit_split']}'s labels; 95% bootstrap intervals over the images "
                               f"({doc['bootstrap']} draws); ~0: the difference's interval holds 0; "
                               f"`benchmarks/results/{name}`.")


DIAGNOSIS = {"part-only, default": "diagnose_part_only_default.json",
             "VOC-like, default": "diagnose_voc_like_default.json",
             "part-only, previous default": "diagnose_part_only.json",
             "VOC-like, previous default": "diagnose_voc_like.json"}


def diagnosis(columns: dict[str, str] = DIAGNOSIS, skip: tuple[str, ...] = ()) -> str:
    """`benchmarks/diagnose.py`, stage by stage (values in %), one column per report; by
    default the default and the previous default (Eq. 5, T 3, no re-ranking, PRM's
    confidence) in both regimes. ``skip``: stages left out."""
    stages = {"classification": "classification: image AP, mean over classes",
              "peaks": "peaks: objects with a peak of their class",
              "pseudo labels (top-k union)": "pseudo labels: IoU with the peak's object",
              "map V_0 (naive PRM)": "naive PRM, binarised: IoU with the object",
              "map V_T": "ICN map V_T (last step), binarised: IoU",
              "proposals (upper bound)": "proposals: the best one's IoU with each object",
              "matching, a perfect matcher of the final map": "matching: GT IoU of the proposal that best fits V_T",
              "matching (shipped score)": "matching: GT IoU of the proposal picked",
              "instances: shipped": "mAP^r@0.5, shipped",
              "instances: oracle ranking": "mAP^r@0.5, oracle ranking",
              "instances: oracle matching": "mAP^r@0.5, oracle matching",
              "instances: oracle matching + ranking": "mAP^r@0.5, oracle matching and ranking"}
    values = {}
    for column, name in columns.items():
        rows = _json(name)["rows"]
        found = {r["stage"]: r["value"] for r in rows}
        found["map V_T"] = [r["value"] for r in rows if r["stage"].startswith("map V_")][-1]
        values[column] = found
    lines = ["| stage | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for stage, label in stages.items():
        if stage not in skip:
            lines.append(f"| {label} | " + " | ".join(f"{100 * values[c][stage]:.1f}" for c in columns) + " |")
    sizes = sorted({_json(name)["images"] for name in columns.values()})
    lines += ["", f"dev, {'/'.join(map(str, sizes))} images; `benchmarks/results/" + "`, `".join(columns.values()) + "`."]
    return "\n".join(lines)


def label_quality(name: str = "label_quality_part_only_train.json",
                  data: str = "the part-only set (6 classes, 160², seed 7)") -> str:
    """The ICN's training labels against the ground truth, label set by label set."""
    doc = _json(name)
    kinds = all("fragment" in row for row in doc["rows"].values())  # reports since the kinds of miss
    lines = ["| labels | peaks | IoU with the object | IoU ≥ 0.5 | " + "fragment, % | leak, % | " * kinds
             + "area, % of the image |", "|---|---|---|---|---|" + "---|---|" * kinds]
    for label, row in doc["rows"].items():
        lines.append(f"| {label} | {row['labels']} | {_ci(row['IoU'])} | {_ci(row['IoU >= 0.5'])} | "
                     + (f"{_ci(row['fragment'])} | {_ci(row['leak'])} | " if kinds else "") + f"{_ci(row['area'])} |")
    s = doc["student"]
    lines += ["", f"{doc['split']} split of {data}, 95% bootstrap intervals over "
                  f"the images ({doc['bootstrap']} draws, seed {doc['seed']}); the student's masks replace "
                  f"{s['replaced']} of {s['peaks']} labels (a detection of the peak's class scoring at least "
                  f"{s['min_score']:g}); `benchmarks/results/{name}`."]
    return "\n".join(lines)


def recipe(name: str) -> str:
    """``benchmarks/recipe.py``: each row's mean and spread over the trainings from scratch,
    each training's interval and paired difference, its classes with AP 0."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from recipe import caption, table

    doc = _json(name)
    return table(doc) + f"\n\n{caption(doc)} `benchmarks/results/{name}`."


def recipe_regimes() -> str:
    """The recipe's rows in every regime measured, side by side: mean ± sd over the
    trainings at IoU 0.5 and 0.75 (the per-training detail is in docs/accuracy.md)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from recipe import DEFAULT, REFERENCE, label_areas, spread

    names = {"part-only": "recipe_part_only.json", "VOC-like": "recipe_voc_like.json", "photo": "recipe_photo.json"}
    docs = {k: _json(v) for k, v in names.items() if (RESULTS / v).exists()}
    for doc in docs.values():  # the reference's earlier name, from before the student's agreement: the same settings
        doc["rows"] = {REFERENCE if n == "default: naive PRM + re-ranking" else n: r for n, r in doc["rows"].items()}
    before = [k for k, doc in docs.items() if DEFAULT not in doc["rows"]]
    rows = list(dict.fromkeys(name for doc in docs.values() for name in doc["rows"]))
    lines = ["| row | " + " | ".join(f"{k} mAP^r@0.5 | {k} @0.75" for k in docs) + " |",
             "|---|" + "---|---|" * len(docs)]
    for name in rows:
        cells = [spread(doc["rows"][name][key]) if name in doc["rows"] else "-" for doc in docs.values()
                 for key in ("mAP@0.5", "mAP@0.75")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sets = "; ".join(f"{k}: seeds {', '.join(map(str, d['seeds']))}, {d['set']}"
                     + (f", {d['classifier']}" if "classifier" in d else "") for k, d in docs.items())
    earlier = (f"; {' and '.join(before)}: measured before the student led (`instances.lead`, docs/accuracy.md), "
               "ranked the pipeline (`instances.student_agreement`) and had its mask NMS (`student.mask_nms`, "
               "docs/student.md), the trainings no longer on disk") if before else ""
    chose = {k: label_areas(d) for k, d in docs.items() if d.get("student_labels")}
    unchosen, areas = [k for k in docs if k not in chose], ""
    if chose:
        areas = "; the students' label areas (shares of the image) chosen on dev: " + "; ".join(
            f"{k} {v}" for k, v in chose.items())
        if unchosen:
            areas += f"; {' and '.join(unchosen)}: trained before `train student` chose them (every area)"
    lines += ["", f"val; mean ± sd over the trainings from scratch (n: how many); {sets}{earlier}{areas}; "
                  "`benchmarks/results/" + "`, `".join(names[k] for k in docs) + "`."]
    return "\n".join(lines)


def label_area_kept(name: str = "label_area_train.json") -> str:
    """`benchmarks/label_area.py`: the students' training labels inside and outside the area chosen on dev."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from label_area import markdown

    return markdown(_json(name)).rstrip() + f" `benchmarks/results/{name}`."


def class_collapse(name: str) -> str:
    """``benchmarks/diagnose.py``'s split by class: where a class that collapses is lost."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from diagnose import class_table

    doc = _json(name)
    return class_table(doc["per_class"], doc["class_ap"]) + (
        f"\n\n{doc['split']}, {doc['images']} images; peak values in the classifier's units; IoU and AP in %; "
        f"`benchmarks/results/{name}`.")


def _columns(docs: dict[str, dict], names: dict[str, str], key: str = "mAP@0.5") -> list[str]:
    """A table of ``benchmarks/accuracy.py`` reports side by side: one column per report
    (``docs``: header -> report), one line per row (``names``: row -> label), each cell the
    row's ``key`` and its paired difference to the reference ("-": not in that report)."""
    lines = ["| row | " + " | ".join(docs) + " |", "|---|" + "---|" * len(docs)]
    for name, label in names.items():
        cells = []
        for doc in docs.values():
            row = next((r for r in doc["rows"] if r["name"] == name), None)
            cells.append("-" if row is None else _ci(row["metrics"][key]) + (
                "" if "minus_reference" not in row else f"; {_diff(row['minus_reference'][key])}"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def default_choice() -> str:
    """The default chosen on dev: each fresh training's naive PRM + re-ranking against the
    ICN pipeline of the same classifier (and, on the first, the students of both)."""
    names = {"naive PRM + re-ranking": "naive PRM + re-ranking",
             "ICN pipeline (T 1, IoU matching)": "with the ICN (T 1)",
             "student of naive PRM + re-ranking": "student of naive PRM + re-ranking",
             "student of the ICN pipeline": "student of the ICN pipeline"}
    files = sorted(RESULTS.glob("default_choice_part_only_dev_*.json"))
    docs = {f"seed {f.stem.rsplit('_', 1)[1]}": _json(f.name) for f in files}
    lines = _columns(docs, names)
    sizes = sorted({d["images"] for d in docs.values()})
    lines += ["", f"mAP^r@0.5 on dev ({'/'.join(map(str, sizes))} images), then the paired difference to naive PRM + "
                  "re-ranking; 95% bootstrap intervals over the images; the part-only sets and trainings of the recipe "
                  "table; `benchmarks/results/default_choice_part_only_dev_*.json`."]
    return "\n".join(lines)


EARLIER_DEFAULT = {"default: + the student's agreement": "the pipeline leading, ranked by its student (then the "
                                                          "default)"}
"""Rows named for the default they measured, by what they are since the student leads."""


def per_training(prefix: str, what: str, key: str = "mAP@0.5", split: str = "dev") -> str:
    """A choice made on dev (or checked on val), training by training: the rows of every
    ``<prefix>_<regime>_<split>_<seed>.json`` (``benchmarks/accuracy.py`` on one training's
    split) as columns, each cell the row's ``key`` and its paired difference to the reference."""
    files = sorted(RESULTS.glob(f"{prefix}_*_{split}_*.json"))
    docs = {f.stem[len(prefix) + 1:].replace(f"_{split}_", " ").replace("_", "-"): _json(f.name) for f in files}
    names = {n: EARLIER_DEFAULT.get(n, n)
             for n in dict.fromkeys(r["name"] for doc in docs.values() for r in doc["rows"])}
    lines = _columns(docs, names, key)
    sizes = sorted({d["images"] for d in docs.values()})
    lines += ["", f"{what}: mAP^r@{key.split('@')[1]} on {split} ({'/'.join(map(str, sizes))} images) of each "
                  "training of the recipe (regime and seed), then the paired difference to the first row; 95% "
                  f"bootstrap intervals over the images; `benchmarks/results/{prefix}_*_{split}_*.json`."]
    return "\n".join(lines)


def student_tta(seed: str = "41") -> str:
    """The student with and without ``tta: flip`` (``benchmarks/accuracy.py`` on photo dev):
    one row per way of making its masks, both passes side by side with the paired difference."""
    lines = ["| masks | mAP^r@0.5, one pass | with flip | − one pass | mAP^r@0.75, one pass | with flip | − one pass "
             "| images/s, one pass / with flip |", "|---|" + "---|" * 7]
    for mode, name in (("proposals", "student, snapped to proposals"), ("superpixels", "student, snapped to superpixels"),
                       ("none", "student, pasted"), ("default", "default: the student, ranked by the pipeline")):
        doc = _json(f"student_tta_{mode}_photo_dev_{seed}.json")
        one, flip = doc["rows"]
        cells = [c for key in ("mAP@0.5", "mAP@0.75") for c in (_ci(one["metrics"][key]), _ci(flip["metrics"][key]),
                                                                 _diff(flip["minus_reference"][key]))]
        speed = f"{one['images_per_second']:.1f} / {flip['images_per_second']:.1f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {speed} |")
    lines += ["", f"dev, {doc['images']} images of the recipe's photo training {seed} (its student, 16 epochs); "
                  "95% bootstrap intervals over the images; ~0: the difference's interval holds 0; images/s through "
                  f"the `infer` job on this project's CPU VM; `benchmarks/results/student_tta_*_photo_dev_{seed}.json`."]
    return "\n".join(lines)


def _photo_trainings(prefix: str) -> dict[str, dict]:
    """Every ``<prefix>_photo_dev_<seed>.json`` as ``{"photo <seed>": report}``, by seed."""
    return {f"photo {f.stem.rsplit('_', 1)[1]}": _json(f.name)
            for f in sorted(RESULTS.glob(f"{prefix}_photo_dev_*.json"))}


def student_oracle() -> str:
    """The proposal-snapped student on each photo training's dev split as ranked and ranked by
    an oracle (``benchmarks/mask_fit.py``: each instance scored by its best IoU with an
    object of its class)."""
    docs = _photo_trainings("student_oracle")
    first = next(iter(docs.values()))
    lines = [f"| {first['rows'][0]['name']} | " + " | ".join(docs) + " |", "|---|" + "---|" * len(docs)]
    for t in ("0.5", "0.75"):
        for key, how in ((f"mAP@{t}", "as ranked"), (f"mAP@{t}, oracle ranking", "oracle ranking")):
            lines.append(f"| mAP^r@{t}, {how} | " + " | ".join(_ci(d["rows"][0]["metrics"][key])
                                                             for d in docs.values()) + " |")
    lines += ["", f"dev ({first['images']} images) of each photo training of the recipe; the oracle scores each "
                  "instance by its best IoU with an object of its class; 95% bootstrap intervals over the images; "
                  "`benchmarks/results/student_oracle_photo_dev_*.json`."]
    return "\n".join(lines)


def student_cues(key: str = "mAP@0.5") -> str:
    """The student's masks snapped and ranked in other ways (``benchmarks/student_cues.py``
    on each photo training's dev split): one column per training, each cell the way's
    ``key`` and its paired difference to the student as shipped."""
    docs = _photo_trainings("student_cues")
    first = next(iter(docs.values()))
    snaps = {"shipped": "as shipped: the proposal the mask overlaps most", "pasted": "the pasted mask, not snapped",
             "oracle": "snapped by an oracle: the proposal that fits an object of its class best"}
    lines = ["| way | " + " | ".join(docs) + " |", "|---|" + "---|" * len(docs)]
    for i, row in enumerate(first["rows"]):
        name = row["name"]
        if row["kind"] == "snap":
            label = snaps.get(name, f"snapped by the mask {name}" if name.startswith("cut")
                              else f"snapped by overlap × {name}")
        else:
            label = f"ranked by {name}" if "mix" in name else f"ranked by score × {name}"
        cells = [_ci(d["rows"][i]["metrics"][key])
                 + ("" if i == 0 else "; " + _diff(d["rows"][i]["minus_reference"][key])) for d in docs.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "The proposal-snapped student's masks, snapped and ranked in other ways: "
                  f"mAP^r@{key.split('@')[1]} on dev ({first['images']} images) of each photo training of the "
                  "recipe, then the paired difference to the student as shipped; 95% bootstrap intervals over the "
                  "images; the oracle and the mix use dev's truth; `benchmarks/results/student_cues_photo_dev_*.json`."]
    return "\n".join(lines)


def student_cue_kinds() -> str:
    """What the best-scored instances of the shipped student are (``benchmarks/student_cues.py``)."""
    docs = _photo_trainings("student_cues")
    first = next(iter(docs.values()))
    kinds = list(next(iter(first["best_scored"].values())))
    lines = ["| best-scored | " + " | ".join(docs) + " |", "|---|" + "---|" * len(docs)]
    for n in first["best_scored"]:
        lines.append(f"| {n} | " + " | ".join(" / ".join(str(d["best_scored"][n][k]) for k in kinds)
                                              for d in docs.values()) + " |")
    lines += ["", f"The proposal-snapped student's best-scored instances on dev ({first['images']} images) of each photo "
                  f"training of the recipe, counted {' / '.join(kinds)}: right at IoU 0.5 with an object of its class, "
                  "covering at least half of one, at least half of it on one, neither; "
                  "`benchmarks/results/student_cues_photo_dev_*.json`."]
    return "\n".join(lines)


def student_confidence(key: str = "mAP@0.5") -> str:
    """The student's confidence chosen on dev: every ``student_confidence_<mode>_<regime>_dev_<seed>.json``
    (``benchmarks/accuracy.py``: one refinement's student rows on one training's dev split,
    the detection score alone the reference) as a column per training, the rows of the
    three modes one under the other."""
    docs: dict[str, dict[str, dict]] = {}
    for f in sorted(RESULTS.glob("student_confidence_*_dev_*.json")):
        mode, rest = f.stem[len("student_confidence_"):].split("_", 1)
        docs.setdefault(rest.replace("_dev_", " ").replace("_", "-"), {})[mode] = _json(f.name)
    merged = {training: {"rows": [r for mode in ("none", "superpixels", "proposals") if mode in by_mode
                                  for r in by_mode[mode]["rows"]], "images": next(iter(by_mode.values()))["images"]}
              for training, by_mode in docs.items()}
    names = {n: n for n in dict.fromkeys(r["name"] for doc in merged.values() for r in doc["rows"])}
    lines = _columns(merged, names, key)
    sizes = sorted({d["images"] for d in merged.values()})
    lines += ["", f"The student's confidence: mAP^r@{key.split('@')[1]} on dev ({'/'.join(map(str, sizes))} images) of "
                  "each training (regime and seed), then the paired difference to the same refinement's detection "
                  "score alone; 95% bootstrap intervals over the images; "
                  "`benchmarks/results/student_confidence_*_dev_*.json`."]
    return "\n".join(lines)


def mask_fit(name: str) -> str:
    """``benchmarks/mask_fit.py``: per row the objects it finds, how well it outlines those
    it finds with its reference, and its mAP^r as ranked and with oracle ranking."""
    doc = _json(name)
    lines = ["| row | objects found at IoU 0.5 / 0.75, % | IoU on the objects both it and the reference find, "
             "− the reference's | mAP^r@0.5 / @0.75 | with oracle ranking |", "|---|---|---|---|---|"]
    for row in doc["rows"]:
        m = {k: v["estimate"] for k, v in row["metrics"].items()}
        diff = "(reference)" if row["name"] == doc["reference"] else _diff(row["both_found_minus_reference"])
        lines.append(f"| {row['name']} | {m['found@0.5']:.1f} / {m['found@0.75']:.1f} | {diff} "
                     f"| {m['mAP@0.5']:.1f} / {m['mAP@0.75']:.1f} "
                     f"| {m['mAP@0.5, oracle ranking']:.1f} / {m['mAP@0.75, oracle ranking']:.1f} |")
    lines += ["", f"{doc['split']}, {doc['images']} images, {doc['objects']} objects; an object is found at IoU t "
                  "when a prediction of its class overlaps it by t; oracle ranking: each prediction scored by its best "
                  "IoU with an object of its class; 95% bootstrap intervals over the images; "
                  f"`benchmarks/results/{name}` (intervals of every figure in its markdown)."]
    return "\n".join(lines)


RENDERERS = {"accuracy": lambda: rows("accuracy_part_only.json"), "student": student, "speed": speed, "serve": serve,
             "matching": matching,
             "bench-batches": bench_batches, "bench-summary": bench_summary, "label-repick": label_repick,
             "student-label-sets": lambda: rows("student_labels_photo_dev_41.json"), "paper-summary": paper_summary,
             "label-area-photo-dev": lambda: rows("student_label_area_photo_dev_41.json"),
             "label-area-kept": label_area_kept,
             "engines-summary": engines_summary, "memory-summary": memory_summary, "label-quality": label_quality,
             "recipe-part-only-val": lambda: rows("accuracy_recipe_part_only_val.json"),
             "recipe-photo-dev": lambda: rows("accuracy_recipe_photo_dev.json"),
             "icn-in-matching-rerank-labels": lambda: rows("icn_in_matching_part_only_dev_rerank_labels_20ep.json"),
             "icn-in-matching-photo": lambda: rows("icn_in_matching_photo_dev.json"),
             "icn-in-matching-photo-student-labels": lambda: rows("icn_in_matching_photo_41_dev_student_labels.json"),
             "student-input": lambda: rows("student_input_photo_dev_41.json"),
             "student-epochs": lambda: rows("student_epochs_photo_dev_41.json"),
             "student-seed": lambda: rows("student_seed_photo_dev_41.json"),
             "icn-in-matching-photo-classifier-encoder": lambda: rows(
                 "icn_in_matching_photo_41_dev_student_labels_classifier.json"),
             "label-quality-photo": lambda: label_quality("label_quality_photo_41_train.json",
                                                          "the recipe's first photo set (6 classes, 128², seed 41)"),
             "recipe-part-only": lambda: recipe("recipe_part_only.json"),
             "recipe-part-only-dev": lambda: recipe("recipe_part_only_dev.json"),
             "recipe-part-only-60": lambda: recipe("recipe_part_only_classifier60.json"),
             "recipe-part-only-copy-paste": lambda: recipe("recipe_part_only_copy_paste.json"),
             "recipe-photo": lambda: recipe("recipe_photo.json"),
             "recipe-photo-held-out": lambda: recipe("recipe_photo_held_out.json"),
             "recipe-photo-copy-paste": lambda: recipe("recipe_photo_copy_paste.json"),
             "recipe-photo-held-out-copy-paste": lambda: recipe("recipe_photo_held_out_copy_paste.json"),
             "recipe-photo-60": lambda: recipe("recipe_photo_classifier60.json"),
             "recipe-voc-like": lambda: recipe("recipe_voc_like.json"),
             "default-choice": default_choice,
             "classifier-schedule": lambda: per_training("classifier_schedule", "The classifier's schedule"),
             "proposal-iou": lambda: per_training("student_proposal_iou", "The student's masks snapped to proposals"),
             "proposal-iou-75": lambda: per_training("student_proposal_iou", "The same at IoU 0.75", "mAP@0.75"),
             "student-confidence": student_confidence,
             "student-consensus": lambda: per_training("student_consensus", "The confidence of proposal-snapped "
                                                       "masks"),
             "student-consensus-75": lambda: per_training("student_consensus", "The same at IoU 0.75", "mAP@0.75"),
             "student-consensus-unseen": lambda: rows("student_consensus_unseen_photo_val_61.json"),
             "student-tta": student_tta,
             "student-mask-nms": lambda: per_training("student_mask_nms_proposals", "Mask NMS of proposal-snapped "
                                                      "masks"),
             "student-mask-nms-75": lambda: per_training("student_mask_nms_proposals", "The same at IoU 0.75",
                                                         "mAP@0.75"),
             "student-mask-nms-superpixels": lambda: per_training("student_mask_nms_superpixels",
                                                                  "Mask NMS of superpixel-snapped masks"),
             "student-mask-nms-none": lambda: per_training("student_mask_nms_none", "Mask NMS of the pasted masks"),
             "student-oracle-photo": student_oracle,
             "student-cues": student_cues,
             "student-cues-75": lambda: student_cues("mAP@0.75"),
             "student-cue-kinds": student_cue_kinds,
             "student-mask-nms-val": lambda: per_training("student_mask_nms", "Checked on val", split="val"),
             "student-agreement": lambda: per_training("student_agreement", "The pipeline ranked by its student's "
                                                       "agreement"),
             "student-agreement-75": lambda: per_training("student_agreement", "The same at IoU 0.75", "mAP@0.75"),
             "student-agreement-val": lambda: per_training("student_agreement", "Checked on val", split="val"),
             "student-agreement-val-75": lambda: per_training("student_agreement", "The same at IoU 0.75",
                                                              "mAP@0.75", split="val"),
             "student-lead": lambda: per_training("student_lead", "The student leading"),
             "student-lead-75": lambda: per_training("student_lead", "The same at IoU 0.75", "mAP@0.75"),
             "student-lead-val": lambda: per_training("student_lead", "Checked on val", split="val"),
             "student-lead-val-75": lambda: per_training("student_lead", "The same at IoU 0.75", "mAP@0.75",
                                                         split="val"),
             "student-copy-paste": lambda: per_training("student_copy_paste", "Copy-paste"),
             "student-copy-paste-75": lambda: per_training("student_copy_paste", "The same at IoU 0.75", "mAP@0.75"),
             "student-copy-paste-val": lambda: per_training("student_copy_paste", "Checked on val", split="val"),
             "student-copy-paste-val-75": lambda: per_training("student_copy_paste", "The same at IoU 0.75",
                                                               "mAP@0.75", "val"),
             "held-out-copy-paste-val": lambda: per_training("held_out_copy_paste", "Photographs development "
                                                             "never used", split="val"),
             "held-out-copy-paste-val-75": lambda: per_training("held_out_copy_paste", "The same at IoU 0.75",
                                                                "mAP@0.75", "val"),
             "lead-refine": lambda: per_training("lead_refine", "The led student's masks"),
             "lead-refine-75": lambda: per_training("lead_refine", "The same at IoU 0.75", "mAP@0.75"),
             "teacher-settings": lambda: per_training("teacher_settings", "The teacher's settings around the "
                                                      "default"),
             "mask-fit-photo": lambda: mask_fit("mask_fit_photo_41_dev.json"),
             "student-confidence-75": lambda: student_confidence("mAP@0.75"),
             "class-collapse": lambda: class_collapse("diagnose_recipe_part_only_32_dev.json"),
             "recipe-regimes": recipe_regimes,
             "photo-diagnosis": lambda: diagnosis({"photo, seed 41": "diagnose_recipe_photo_41_dev.json",
                                                   "part-only, seed 31": "diagnose_recipe_part_only_31_dev.json"},
                                                  skip=("pseudo labels (top-k union)", "map V_T",
                                                        "matching, a perfect matcher of the final map")),
             "icn-in-matching-gt-labels": lambda: rows("icn_in_matching_part_only_dev_gt_labels.json"),
             "icn-ceiling": lambda: diagnosis({"naive PRM + re-ranking (no ICN)": "diagnose_part_only_dev_no_icn.json",
                                               "ICN trained on the true masks": "diagnose_part_only_dev_gt_labels.json"},
                                              skip=("classification", "peaks", "pseudo labels (top-k union)")),
             "paper-suspects": paper_suspects,
             "paper-sub-pixel": lambda: rows("paper_suspects_sub_pixel_part_only_val.json"),
             "paper-sub-pixel-diagnosis": lambda: diagnosis(
                 {"sub-pixel 1 (the recipe's)": "diagnose_paper_part_only_dev_sub_pixel_1.json",
                  "classifier trained at sub-pixel 8": "diagnose_paper_part_only_dev_sub_pixel_8.json"},
                 skip=("classification", "pseudo labels (top-k union)", "instances: oracle ranking",
                       "instances: oracle matching + ranking")), "precision": precision, "distributed": distributed,
             "bench-paper": bench_paper, "diagnosis": diagnosis,
             "student-detail": student_detail,
             "student-recipe": lambda: rows("student_recipe_part_only_val.json"),
             "student-refine": student_refine,
             "student-refine-photo": lambda: student_refine("student_refine_photo_val.json")}


def render(text: str) -> str:
    def fill(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise SystemExit(f"unknown table '{name}' (known: {', '.join(RENDERERS)})")
        return m.group(1) + RENDERERS[name]() + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table differs")
    args = ap.parse_args()
    stale = []
    for path in documents():
        text = path.read_text()
        new = render(text)
        if new != text:
            stale += [f"{path.relative_to(REPO)}: {m.group('name')}" for m in BLOCK.finditer(text)
                      if m.group(0) != render(m.group(0))]
            if not args.check:
                path.write_text(new)
    if stale:
        print(("stale tables (run python scripts/render_tables.py):\n  " if args.check else "rendered:\n  ")
              + "\n  ".join(stale), file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
