"""scripts/gpu_check.sh, the one call that runs every GPU check on the bare, offline GPU
machine: its dry run here (the same steps on the CPU, smallest settings) exercises the
plumbing — PYTHONPATH instead of an install, the wheel install into a folder of its own,
the import check, the step limits, the packing into at most 8 files — and the wheel list
plus that machine's package list cover every third-party import."""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["wheels", "imports", "machine", "nvidia-smi", "kernel-smoke", "kernels", "bench-matching", "student",
         "build-engine", "bench", "pytest-gpu"]


def _wheel(folder: Path, module: str) -> Path:
    """A pure-Python wheel installing ``module`` (one line: ``VALUE = 42``), written by hand."""
    name = f"{module}-1.0.dist-info"
    files = {f"{module}/__init__.py": b"VALUE = 42\n",
             f"{name}/METADATA": f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n".encode(),
             f"{name}/WHEEL": b"Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
             f"{name}/top_level.txt": f"{module}\n".encode()}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}/RECORD,,\n"
    path = folder / f"{module}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for p, data in files.items():
            z.writestr(p, data)
        z.writestr(f"{name}/RECORD", record)
    return path


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu-check")
    wheels = work / "wheels"
    wheels.mkdir()
    _wheel(wheels, "icn_rt_probe_wheel")
    out = work / "out"
    env = {**os.environ, "PY": sys.executable, "WHEELS": str(wheels)}
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # the script sets it
    r = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), "--dry-run", str(out)], env=env,
                       capture_output=True, text=True, timeout=600, cwd=work)
    return r, out


def test_the_dry_run_runs_every_step_and_packs_at_most_8_files(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    assert files == ["bench_gpu.json", "bench_gpu.png", "logs.tar.gz", "matching_gpu.json", "steps.json",
                     "summary.md"]
    steps = json.loads((out / "steps.json").read_text())
    assert [s["step"] for s in steps] == STEPS
    assert all(s["rc"] == 0 for s in steps), steps
    notes = {s["step"]: s["note"] for s in steps}
    assert notes["nvidia-smi"] == "skipped: dry run"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert notes["build-engine"].startswith("skipped: TensorRT does not import")
    summary = (out / "summary.md").read_text()
    assert "dry run on the CPU" in summary and f"{len(STEPS)} of {len(STEPS)} steps passed." in summary


def test_the_dry_run_installs_the_wheels_apart_and_imports_everything_from_there(dry_run):
    r, out = dry_run
    with tarfile.open(out / "logs.tar.gz") as tar:
        names = set(tar.getnames())
        report = json.loads(tar.extractfile("logs/imports.json").read())
    assert {f"logs/{s}.log" for s in STEPS if s not in ("nvidia-smi", "build-engine")} <= names
    assert {"logs/bench_gpu.md", "logs/matching_gpu.md"} <= names
    package = sorted(p for p in (REPO / "icn_rt").rglob("*.py"))
    assert report["failed"] == [] and report["modules"] == len(package)
    [probe] = report["wheel_modules"]
    # installed by pip --target into the run's own folder, found there through PYTHONPATH
    assert probe["module"] == "icn_rt_probe_wheel" and probe["ok"] and probe["file"].endswith(
        "/site/icn_rt_probe_wheel/__init__.py")


def test_the_dry_run_measures_the_pipeline_and_a_student(dry_run):
    _, out = dry_run
    bench = json.loads((out / "bench_gpu.json").read_text())
    contestants = {(row["contestant"], row["backend"]) for row in bench["rows"]}
    assert ("student", "torch") in contestants and any(name != "student" for name, _ in contestants)
    assert all(row["images_per_s"] > 0 for row in bench["rows"])
    assert bench["device"] == "cpu" and bench["accuracy"]["split"] == "val"
    matching = json.loads((out / "matching_gpu.json").read_text())
    assert matching["cases"]


def _imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a Python file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def _listed(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {_canonical(line.split("==")[0]) for line in lines if line}


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def test_the_gpu_machine_plus_the_wheels_cover_every_third_party_import():
    """Every module the package, the check's scripts and the tests import is in the standard library,
    on the GPU machine (scripts/gpu_machine_packages.txt), in scripts/gpu_wheels.txt, or an
    optional extra that says how to install it (TensorRT, Ray)."""
    from importlib.metadata import packages_distributions

    from icn_rt.extras import HOW_TO_INSTALL

    files = [*(REPO / "icn_rt").rglob("*.py"), *(REPO / "scripts").glob("gpu_*.py"),
             *(REPO / "benchmarks" / name for name in ("bench_matching.py", "machine.py")),
             *(REPO / "tests").glob("*.py")]  # the GPU tests' run collects every test file
    local = {"icn_rt", "tests", *(p.stem for p in (REPO / "benchmarks").glob("*.py"))}  # the benchmarks' modules
    modules = set().union(*map(_imports, files)) - set(sys.stdlib_module_names) - local
    on_machine = _listed(REPO / "scripts" / "gpu_machine_packages.txt")
    wheels = _listed(REPO / "scripts" / "gpu_wheels.txt")
    assert wheels == {"pycocotools", "onnxslim"} and not wheels & on_machine
    distributions = packages_distributions()
    uncovered = {}
    for module in sorted(modules - set(HOW_TO_INSTALL)):
        dists = {_canonical(d) for d in distributions.get(module, [])}
        assert dists, f"{module} is imported but installed by no distribution here"
        if not dists & (on_machine | wheels):
            uncovered[module] = sorted(dists)
    assert uncovered == {}, "add these to scripts/gpu_wheels.txt"
    # and the wheels' own requirements are on that machine (they are installed with --no-deps)
    from importlib.metadata import requires

    for wheel in wheels:
        needs = {_canonical(r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip())
                 for r in requires(wheel) or [] if "extra ==" not in r}
        assert needs <= on_machine, (wheel, needs - on_machine)
