"""``icn-rt infer``, ``icn-rt compare``, ``icn-rt demo``."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from icn_rt.cli.common import DEPRECATED_OUT, app, err, eval_table, fail, out, pct, plural, recall_table, renamed
from icn_rt.cli.options import (Actors, Backend, BatchSize, CpusPerActor, CudaGraph, Device, GpusPerActor, IcnSteps,
                                Images, Json, MaxPixels, Model, OrtOptimization, OrtSaveOptimized, Out, Proposals,
                                Quiet, Ray, Resume, Student, Workers, backends, one_backend)
from icn_rt.errors import InputError


@app.command("infer")
def infer_cmd(
    model_dir: Model,
    images: Images,
    proposals_dir: Proposals = None,
    results: Out = Path("results.json"),
    backend: Backend = None,
    save_vis: Optional[Path] = typer.Option(None, help="Write <id>_overlay.png and <id>_prm.png here."),
    batch_size: BatchSize = 8,
    workers: Workers = None,
    resume: Resume = False,
    overwrite: bool = typer.Option(False, help="Discard an unfinished run's results in OUT.parts/ and start over."),
    max_pixels: MaxPixels = 64,
    icn_steps: IcnSteps = None,
    device: Device = "auto",
    overlap: Optional[bool] = typer.Option(None, help="Copy the next batch to the device while this one computes "
                                                      "[default: on a GPU]."),
    cuda_graph: CudaGraph = False,
    ort_optimization: OrtOptimization = "all",
    ort_save_optimized: OrtSaveOptimized = False,
    student: Student = False,
    ray: Ray = None,
    actors: Actors = 1,
    gpus_per_actor: GpusPerActor = 0.0,
    cpus_per_actor: CpusPerActor = 1.0,
    loader_cpus: float = typer.Option(1.0, help="--ray: CPUs per loading task (decode, proposals, preprocessing)."),
    quiet: Quiet = False,
):
    """Instances for images tagged with nothing: peaks -> PRMs -> ICN -> proposal matching -> NMS.
    Streams, records bad inputs and goes on (exit 1 if any failed), resumes (exit 130 when
    interrupted: rerun with --resume)."""
    import os

    from icn_rt.models.store import student_settings
    from icn_rt.runtime.infer import InferSettings, PredictorSpec
    from icn_rt.runtime.sources import list_images

    if batch_size < 1:
        fail(ValueError(f"--batch-size must be at least 1, got {batch_size}"))
    try:
        backend = one_backend(backend)
        needs_proposals = not student or student_settings(model_dir).refine == "proposals"
        if not needs_proposals and proposals_dir is not None:
            raise ValueError("--student needs no --proposals (its masks snap to proposals only with student.refine: "
                             "proposals)")
        spec = PredictorSpec(str(model_dir), student, backend, device, icn_steps, cuda_graph, ort_optimization,
                             ort_save_optimized)
        cluster = None if ray is None else _cluster(ray, actors, gpus_per_actor, cpus_per_actor, loader_cpus)
        predictor = spec.build() if cluster is None else None  # under Ray, each actor makes its own
        paths = list_images(images)
        if not paths:
            raise ValueError("no images given (directories are searched for .jpg/.png files)")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    if backend == "auto" and predictor is not None:
        err.print(f"backend: {predictor.backend} (auto)", highlight=False)
    if proposals_dir is None and needs_proposals:
        err.print("no --proposals: making selective-search proposals on the fly (slow; `icn-rt proposals` "
                  "makes them once)", highlight=False)
    settings = InferSettings(proposals=proposals_dir, save_vis=save_vis, batch_size=batch_size,
                             workers=min(4, os.cpu_count() or 1) if workers is None else workers, resume=resume,
                             overwrite=overwrite, max_pixels=int(max_pixels * 1e6), progress=not quiet,
                             overlap=overlap)
    summary = _run(predictor, spec, paths, results, settings, cluster)
    _report(summary, results, save_vis)


def _cluster(*args):
    from icn_rt.runtime.ray_infer import RaySettings

    return RaySettings(*args)


def _run(predictor, spec, paths: list, results: Path, settings, cluster):
    """The job, here or on Ray (``cluster``); a kill (SIGTERM) stops it like Ctrl-C: what is
    written stays, --resume continues."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if cluster is None:
            from icn_rt.runtime.infer import infer

            return infer(predictor, paths, results, settings)
        from icn_rt.runtime.ray_infer import infer_ray

        try:
            return infer_ray(spec, paths, results, settings, cluster)
        except (ValueError, RuntimeError) as e:  # the cluster: too small, Ray missing or unreachable
            fail(e)
    except InputError as e:
        fail(e)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report(summary, results: Path, save_vis: Path | None) -> None:
    """What the job did; exit 130 when interrupted, 1 when images failed."""
    if summary.interrupted:
        err.print(f"interrupted: results of {plural(summary.images, 'image')} are kept in {results}.parts; rerun with "
                  "--resume to finish", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    out.print(f"{plural(summary.images, 'image')}, {plural(summary.instances, 'instance')} ({summary.empty} without any) "
              f"-> {results}" + (f" ({summary.skipped} done by an earlier run)" if summary.skipped else "")
              + (f"; pictures -> {save_vis}" if save_vis else ""), soft_wrap=True)
    if summary.failed:
        err.print(f"[yellow]{plural(len(summary.failed), 'image')} failed (reasons in {results}.errors.txt); first: "
                  f"{summary.failed[0][1]}[/yellow]", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("compare")
def compare_cmd(
    model_dir: Model,
    images: Images,
    contestants: Backend = None,
    old_with: Optional[list[str]] = typer.Option(None, "--with", hidden=True, help="Deprecated: --backend."),
    proposals_dir: Proposals = None,
    report_out: Json = Path("compare.json"),
    old_out: Optional[Path] = typer.Option(None, "--out", hidden=True, help=DEPRECATED_OUT),
    atol: Optional[float] = typer.Option(None, help="Absolute tolerance [default: by precision]."),
    rtol: Optional[float] = typer.Option(None, help="Relative tolerance [default: by precision]."),
    min_peak_agreement: Optional[float] = typer.Option(None, help="Least peak agreement (IoU of the peak sets)."),
    min_instance_agreement: Optional[float] = typer.Option(None, help="Least same-instance agreement."),
    student: Student = False,
    device: Device = "auto",
):
    """Run the same images through several backends and precisions and compare each with
    the first, as Polygraphy does: per output the largest absolute and relative error
    against stated tolerances, peak agreement, same-instance agreement (class, chosen
    proposal): --backend repeated, the first the reference (torch | onnxruntime[:fp16|:int8] |
    tensorrt[:fp16|:int8]); --proposals adds the same-instance agreement; --student
    compares detections, scores, boxes and masks. Exit 1 on a mismatch."""
    report_out = renamed(old_out, "--out", report_out, "--json")
    contestants = backends(renamed(old_with, "--with", contestants, "--backend"), ())
    from icn_rt.runtime.compare import compare
    from icn_rt.runtime.sources import list_images

    override = {"atol": atol, "rtol": rtol, "peaks": min_peak_agreement, "instances": min_instance_agreement}
    try:
        if not contestants:
            raise ValueError("name the backends to compare: --backend torch --backend onnxruntime ...")
        paths = list_images(images)
        if not paths:
            raise ValueError("no images given (directories are searched for .jpg/.png files)")
        if proposals_dir is not None and not proposals_dir.is_dir():
            raise InputError(proposals_dir, "proposal directory not found")
        report = compare(model_dir, paths, contestants, device, proposals_dir, override, student=student)
    except (InputError, ValueError, RuntimeError) as e:
        fail(e)
    report_out.write_text(json.dumps(report, indent=2) + "\n")
    if student:
        _student_compare_table(report, paths, report_out)
        return
    table = Table(title=f"against {report['reference']} on {plural(len(paths), 'image')}",
                  caption="largest absolute error per output; peak and same-instance agreement; ✗: over tolerance")
    table.add_column("contestant", no_wrap=True, min_width=max(map(len, report["contestants"])))
    for column in ("scores", "maps", "prms", "enhanced", "peaks", "instances", ""):
        table.add_column(column)
    for name, c in report["contestants"].items():
        cells = [f"{o['max_abs']:.0e}" + ("" if o["ok"] else " ✗") for o in c["outputs"].values()]
        inst = c.get("instances")
        table.add_row(name, *cells, f"{c['peaks']['agreement']:.2f}" + ("" if c["peaks"]["ok"] else " ✗"),
                      "-" if inst is None else f"{inst['agreement']:.2f}" + ("" if inst["ok"] else " ✗"),
                      "ok" if c["ok"] else "✗")
    _compare_verdict(table, report, report_out)


def _compare_verdict(table: Table, report: dict, report_out: Path) -> None:
    """Print a comparison's table and report path; exit 1 on a mismatch."""
    out.print(table)
    out.print(f"report -> {report_out}", soft_wrap=True)
    if not report["ok"]:
        err.print("[red]mismatch:[/red] " + ", ".join(n for n, c in report["contestants"].items() if not c["ok"])
                  + " (tolerances and errors in the report)", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _student_compare_table(report: dict, paths: list, report_out: Path) -> None:
    table = Table(title=f"student against {report['reference']} on {plural(len(paths), 'image')}",
                  caption="largest absolute error per output (images whose detections agree); ✗: over tolerance")
    table.add_column("contestant", no_wrap=True, min_width=max(map(len, report["contestants"])))
    for column in ("scores", "boxes", "masks", "detections", ""):
        table.add_column(column)
    for name, c in report["contestants"].items():
        cells = [f"{o['max_abs']:.0e}" + ("" if o["ok"] else " ✗") for o in c["outputs"].values()]
        inst = c["instances"]
        table.add_row(name, *cells, f"{inst['agreement']:.2f}" + ("" if inst["ok"] else " ✗"),
                      "ok" if c["ok"] else "✗")
    _compare_verdict(table, report, report_out)


@app.command("demo")
def demo(
    out_dir: Out = Path("icn-rt-demo"),
    device: Device = "auto",
):
    """The whole job on the embedded demo: a small model trained by icn-rt on the synthetic
    benchmark, run on sample images with their proposals -> instances, evaluation, pictures;
    its proposal-free student beside it (accuracy and images/s of both)."""
    from icn_rt import demo as assets
    from icn_rt.demo.job import run_demo

    try:
        report = run_demo(out_dir, device)
    except InputError as e:
        fail(e)
    runs = [("pipeline", report.pipeline)] + ([("student", report.student)] if report.student else [])
    summary = report.pipeline.summary
    out.print(f"{plural(summary.images, 'image')} -> {plural(summary.instances, 'instance')} "
              f"(model: {report.backbone} classifier + ICN, T = {report.steps}"
              + ("; its student leads, ranked by the pipeline)" if report.leads else ")"))
    out.print(recall_table(report.recall, "proposal upper bound (the best proposal per object)"))
    out.print(eval_table(report.pipeline.metrics))
    table = Table(title="pipeline and student, side by side", box=box.SIMPLE_HEAD)
    for col in ("", "instances", "mAP^r@0.25", "mAP^r@0.5", "mAP^r@0.75", "ABO", "images/s"):
        table.add_column(col, justify="right")
    for name, run in runs:
        m = run.metrics
        table.add_row(name, str(run.summary.instances), *[pct(m.map[t]) for t in (0.25, 0.5, 0.75)], pct(m.abo),
                      f"{run.images_per_second:.1f}")
    out.print(table)
    for name, run in runs:
        pictures = f"{run.pictures}/<id>_overlay.png" + (", <id>_prm.png" if name == "pipeline" else "")
        out.print(f"{name}: instances (COCO JSON, RLE masks) {run.results}; pictures {pictures}; metrics "
                  f"{run.metrics_file}", soft_wrap=True)
    out.print(f"the model and the images with their annotations and proposals: {assets.DEMO}"
              + ("" if report.student else " (no student in this model: rebuild with scripts/build_demo.py)"),
              soft_wrap=True)
