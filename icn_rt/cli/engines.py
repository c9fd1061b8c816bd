"""``icn-rt bench``, ``icn-rt export``, ``icn-rt build-engine``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from icn_rt.cli.common import DEPRECATED_OUT, app, err, fail, out, renamed
from icn_rt.cli.options import (Backend, CudaGraph, Device, Images, Json, Model, OrtOptimization, OrtSaveOptimized,
                                Precision, Proposals, Student, backends, precisions)
from icn_rt.errors import InputError


@app.command("bench")
def bench_cmd(
    model_dir: Model,
    images: Images = None,
    proposals_dir: Proposals = None,
    count: int = typer.Option(32, "--count", help="Images per measurement (cycling through those given)."),
    old_count: Optional[int] = typer.Option(None, "--images", hidden=True, help="Deprecated: --count."),
    batch_sizes: str = typer.Option("1,4,16", help="Batch sizes, comma separated."),
    backend: Backend = None,
    old_backends: Optional[str] = typer.Option(None, "--backends", hidden=True, help="Deprecated: --backend."),
    baseline: bool = typer.Option(True, help="Run the baseline pipeline (icn_rt.baseline) too."),
    warmup: int = typer.Option(1, help="Untimed batches before each measurement."),
    iterations: int = typer.Option(20, help="Least timed batches per contestant and batch size (passes over the "
                                            "images repeat; p90/p99 need 20 samples)."),
    duration: Optional[float] = typer.Option(None, help="Least seconds timed per contestant and batch size."),
    json_out: Json = Path("bench.json"),
    old_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help=DEPRECATED_OUT),
    device: Device = "auto",
    eval_root: Optional[Path] = typer.Option(None, "--eval", help="Dataset root with masks (VOC or COCO layout): "
                                             "add each backend's model size and mAP^r@0.5 on a split, with its "
                                             "difference to torch fp32."),
    eval_split: str = typer.Option("val", help="The split --eval scores."),
    eval_proposals: Optional[Path] = typer.Option(None, help="Proposals of --eval's images [default: ROOT/Proposals]."),
    cuda_graph: CudaGraph = False,
    profile_layers: bool = typer.Option(False, help="TensorRT's per-layer times of each plan at the largest batch "
                                                    "size, into the report (as trtexec --dumpProfile)."),
    ort_optimization: OrtOptimization = "all",
    ort_save_optimized: OrtSaveOptimized = False,
):
    """Per-stage latency (median/p90/p99), images/s vs batch size per backend (--backend,
    repeated; default torch, onnxruntime and tensorrt; absent ones are reported as skipped,
    with why), and the speed-up over the baseline pipeline on the same images with the
    same instances; with --eval, each backend's size and accuracy. IMAGES and --proposals
    default to the demo's; the plot goes beside the --json report (.png)."""
    json_out = renamed(old_out, "--out", json_out, "--json")
    count = renamed(old_count, "--images", count, "--count")
    chosen = backends(renamed(old_backends, "--backends", backend, "--backend"), ("torch", "onnxruntime", "tensorrt"))
    from icn_rt import demo
    from icn_rt.runtime.bench import BenchSettings, EvalSettings, backward_lines, bench, write_report
    from icn_rt.runtime.sources import list_images

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
        if not sizes or min(sizes) < 1:
            raise ValueError
    except ValueError:
        fail(ValueError(f"--batch-sizes must be positive integers separated by commas, got {batch_sizes!r}"))
    try:
        paths = list_images(images or [demo.IMAGES])
        settings = BenchSettings(batch_sizes=sizes, backends=tuple(chosen),
                                 images=count, baseline=baseline, device=device, warmup=warmup,
                                 iterations=iterations, duration=duration,
                                 evaluation=EvalSettings(eval_root, eval_split, eval_proposals) if eval_root else None,
                                 cuda_graph=cuda_graph, profile_layers=profile_layers,
                                 ort_optimization=ort_optimization, ort_save_optimized=ort_save_optimized)
        report = bench(model_dir, paths, proposals_dir or demo.PROPOSALS, settings,
                       log=lambda m: err.print(m, highlight=False))
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    report = write_report({"command": shlex.join(["icn-rt", *sys.argv[1:]]), **report}, json_out)
    table = _bench_table(report)
    out.print(table)
    for line in backward_lines(report):
        out.print(line, highlight=False)
    if report["accuracy"]:
        out.print(_accuracy_table(report["accuracy"]))
    for name, reason in report["skipped"].items():
        err.print(f"[yellow]skipped {name}:[/yellow] {reason}", highlight=False, soft_wrap=True)
    out.print(f"report -> {json_out} (and .md); plot -> {json_out.with_suffix('.png')}", soft_wrap=True)


def _bench_table(report: dict) -> Table:
    """``bench``'s table: per contestant, backend and batch size, throughput, the ratio to the
    baseline, whether its instances are the baseline's, and the latency quantiles."""
    table = Table(title=f"{report['images']} images ({report['image_sizes'][0][0]}x{report['image_sizes'][0][1]}"
                        f"{'…' if len(report['image_sizes']) > 1 else ''}), input {report['input_size']}², "
                        f"{report['device']}",
                  caption="same: the baseline's instances; ms/batch: median, then p90, p99 (from n timed batches; "
                          "none from fewer than 20)", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    for column in ("contestant", "backend", "batch", "img/s", "×base", "same", "ms/batch", "p90", "p99", "n"):
        if column == "contestant":  # wraps at words; the backend stays whole (onnxruntime:int8)
            table.add_column(column, min_width=9)
        elif column == "backend":
            table.add_column(column, no_wrap=True, min_width=max(len(r["backend"]) for r in report["rows"]))
        else:
            table.add_column(column, justify="right", no_wrap=True)
    for row in report["rows"]:
        total = row["latency_s"]["total"]
        same = {True: "yes", False: "NO", None: "-"}[row["same_instances_as_baseline"]]
        ratio = row["speedup_vs_baseline"]
        table.add_row(row["contestant"], row["backend"], str(row["batch_size"]), f"{row['images_per_s']:.1f}",
                      f"{ratio:.1f}" if ratio else "-", same, f"{1e3 * total['median']:.1f}",
                      *("-" if total[q] is None else f"{1e3 * total[q]:.1f}" for q in ("p90", "p99")),
                      str(total["n"]))
    return table


def _accuracy_table(acc: dict) -> Table:
    """``bench --eval``'s table: per backend, size, mAP^r@0.5 and the difference to torch fp32."""
    def cell(m):
        lo, hi = m["interval"]
        return "-" if m["estimate"] is None else f"{m['estimate']:.1f} [{lo:.1f}, {hi:.1f}]"

    table = Table(title=f"accuracy on {acc['split']} of {acc['root']} ({acc['images']} images)",
                  caption=f"{100 * acc['bootstrap']['level']:g}% bootstrap intervals over the images "
                          f"({acc['bootstrap']['samples']} draws); ~0: the difference's interval holds 0")
    table.add_column("backend", overflow="fold")
    for column in ("MB", "mAP^r@0.5", "− torch fp32"):
        table.add_column(column, justify="right", no_wrap=True)
    for row in acc["rows"]:
        d = row["minus_torch_fp32"]
        diff = "(reference)" if d is None else cell(d) + ("" if d["excludes_zero"] else " ~0")
        table.add_row(row["backend"], f"{row['model_bytes'] / 1e6:.2f}", cell(row["mAP@0.5"]), diff)
    return table


@app.command("export")
def export_cmd(
    model_dir: Model,
    slots: Optional[int] = typer.Option(None, help="The most peaks per image the PRM graph keeps (the highest) "
                                                  "[default: the model's peaks.max_peaks]."),
    precision: Precision = None,
    calibration: Optional[Path] = typer.Option(None, help="Dataset root (any layout) whose images calibrate int8."),
    calibration_split: str = typer.Option("train", help="Split of the calibration images."),
    calibration_count: int = typer.Option(64, help="How many calibration images."),
    old_calibration_count: Optional[int] = typer.Option(None, "--calibration-images", hidden=True,
                                                        help="Deprecated: --calibration-count."),
    calibration_method: str = typer.Option("minmax", help="minmax | entropy | percentile."),
    verify: bool = typer.Option(True, help="Run each graph once in onnxruntime and record its difference from "
                                           "PyTorch in the manifest."),
    simplify: bool = typer.Option(True, help="Simplify the fp32 graphs with onnxslim (kept only when onnxruntime "
                                             "gives the same outputs; node counts in the manifest)."),
    student: Student = False,
):
    """ONNX graphs beside the model: prm.onnx (classifier, peaks, peak backprop, PRMs) and
    icn.onnx (T enhancement steps), checked, with manifest.json; --precision adds their
    fp16 / int8 variants (prm.fp16.onnx, ...; fp32 is always written), which build-engine
    builds strongly typed. --student: student.onnx (one image per run, recorded in
    student.onnx.json); fp16 adds student.fp16.onnx, int8 student.int8.onnx for onnxruntime
    on CPUs and student.int8.s8.onnx for TensorRT."""
    from icn_rt.export.onnx_export import Calibration, export_model

    calibration_count = renamed(old_calibration_count, "--calibration-images", calibration_count,
                                "--calibration-count")
    chosen = tuple(dict.fromkeys(["fp32", *precisions(precision, ())]))
    try:
        calibrate = None
        if calibration is not None:
            calibrate = Calibration(str(calibration), calibration_split, calibration_count, method=calibration_method)
    except ValueError as e:
        fail(e)
    if student:
        from icn_rt.export.onnx_export import export_student

        try:
            record = export_student(model_dir, verify=verify, precisions=chosen, calibration=calibrate)
        except (InputError, ValueError) as e:
            fail(e)
        check = record.get("verification", {})
        out.print(f"student -> {model_dir / record['file']} ({record['bytes'] / 2**20:.1f} MiB, "
                  f"{sum(record['operators'].values())} nodes; TensorRT-unsupported operators: "
                  f"{', '.join(record['tensorrt_unsupported']) or 'none'}"
                  + (f"; onnxruntime vs torch: {check['onnxruntime_detections']}/{check['detections']} detections, "
                     f"boxes {check.get('max_difference_boxes', float('nan')):.1e} px, masks "
                     f"{check.get('max_difference_box_masks', float('nan')):.1e}" if check else "") + ")", soft_wrap=True)
        for name, variant in record.get("precisions", {}).items():
            for form in (variant, variant.get("tensorrt")):
                if form is None:
                    continue
                check = form.get("verification", {})
                out.print(f"{name} student -> {model_dir / form['file']} ({form['bytes'] / 2**20:.1f} MiB, "
                          f"{form['nodes_lowered']} layers in {name}"
                          + (f", {form['activations'].split(' (')[0]} activations" if "activations" in form else "")
                          + (f"; onnxruntime vs torch fp32: {check['onnxruntime_detections']}/{check['detections']} "
                             "detections" if check else "") + ")", soft_wrap=True)
        return
    try:
        manifest = export_model(model_dir, slots=slots, verify=verify, precisions=chosen, calibration=calibrate,
                                simplify=simplify)
    except (InputError, ValueError) as e:
        fail(e)
    table = Table(title=f"exported {model_dir}", caption="nodes: after onnxslim (as exported)")
    for column in ("graph", "file", "MiB", "nodes", "operators", "max |ONNX − torch|"):
        table.add_column(column)
    for name, g in manifest["graphs"].items():
        for record in (g, *g.get("precisions", {}).values()):
            diff = record.get("max_difference", {})
            nodes = str(sum(record["operators"].values()))
            slim = record.get("simplified")
            if slim:
                nodes += f" ({slim['nodes_before']})" if "kept_exported" not in slim else " (not simplified)"
            table.add_row(name, record["file"], f"{record['bytes'] / 2**20:.1f}", nodes, str(len(record["operators"])),
                          ", ".join(f"{k} {v:.1e}" for k, v in diff.items()) or "-")
    out.print(table)
    for name, g in manifest["graphs"].items():
        if g.get("simplified") and "kept_exported" in g["simplified"]:
            err.print(f"[yellow]{name}: kept as exported:[/yellow] {g['simplified']['kept_exported']}", highlight=False)


@app.command("build-engine")
def build_engine_cmd(
    model_dir: Model,
    precision: Precision = None,
    min_batch: int = typer.Option(1, help="Smallest image batch of the PRM plan's profile."),
    opt_batch: int = typer.Option(8, help="Image batch the PRM plan is tuned for."),
    max_batch: int = typer.Option(16, help="Largest image batch of the PRM plan's profile."),
    workspace: Optional[int] = typer.Option(None, help="Workspace limit in MiB [default: 4096; 1024 on Jetson]."),
    dla_core: Optional[int] = typer.Option(None, help="Build for this DLA core, GPU fallback on (Jetson)."),
    timing_cache: Optional[Path] = typer.Option(None, help="Timing cache file [default: MODEL/timing.cache]."),
    device: Device = "cuda",
    student: Student = False,
):
    """TensorRT plans from the exported graphs (`icn-rt export`), recorded in manifest.json
    with the GPU and TensorRT version they are valid for, at one --precision a run (default
    fp16), each layer in the exported graph's type. --student: student.PRECISION.plan from
    `icn-rt export MODEL --student --precision ...` (one image a run, recorded in
    student.onnx.json), run by `icn-rt infer MODEL --student --backend tensorrt[:PRECISION]`."""
    from icn_rt.export.build_engine import BuildSettings, build_engines, build_student_engine

    try:
        chosen = precisions(precision, ("fp16",))
        if len(chosen) > 1:
            raise ValueError(f"build-engine builds one precision a run (the manifest records one set of plans); "
                             f"got {', '.join(chosen)}")
        precision = chosen[0]
        settings = BuildSettings(precision=precision, batch=(min_batch, opt_batch, max_batch),
                                 workspace_mib=workspace, dla_core=dla_core,
                                 timing_cache=str(timing_cache) if timing_cache else None)
        if student:
            plans = {"student": build_student_engine(model_dir, settings, device)["plans"][precision]}
        else:
            plans = build_engines(model_dir, settings, device)["plans"]
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    for name, plan in plans.items():
        out.print(f"{name}: {plan['file']} ({plan['precision']}, TensorRT {plan['tensorrt']}, {plan['gpu']['name']})")
