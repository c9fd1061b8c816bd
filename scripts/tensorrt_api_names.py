"""List the Python API names of each supported TensorRT version, from its binding wheel,
for the conformance test (``tests/test_tensorrt_api.py``)::

    python scripts/tensorrt_api_names.py              # the versions in VERSIONS
    python scripts/tensorrt_api_names.py 11.5.0.1     # add one

TensorRT's libraries cannot be installed on this project's build machines (PyPI's
``tensorrt-cu12-libs`` is a download stub), but the binding wheels
(``tensorrt-cu12-bindings``, ``tensorrt-cu13-bindings``) are real: a pybind11 module,
``tensorrt_bindings/tensorrt.so``, whose import needs ``libnvinfer``, ``libnvinfer_plugin``
and ``libnvonnxparser`` only to resolve nine C entry points (``createInferBuilder_INTERNAL``
and the like; the rest of the API is virtual calls on the objects they return). This script
downloads each wheel, compiles three placeholder libraries that define those entry points
(returning null; they are never called: importing registers the classes, enums and
methods, it creates no object), imports the module in a child process with them on
``LD_LIBRARY_PATH``, and writes every public name as ``Name`` or ``Class.member``, one per
line, to ``tests/data/tensorrt_api/<version>.txt``. The placeholders serve only to list
names; nothing here runs TensorRT. Needs pip's network access to PyPI and gcc.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "data" / "tensorrt_api"
# (version, wheel): the oldest and newest of 10.x, one between, the first and last 11.x
VERSIONS = [("10.0.1", "tensorrt-cu12-bindings"), ("10.8.0.43", "tensorrt-cu12-bindings"),
            ("10.16.1.11", "tensorrt-cu12-bindings"), ("11.0.0.114", "tensorrt-cu12-bindings"),
            ("11.4.0.106", "tensorrt-cu13-bindings")]
ENTRY_POINTS = ("createInferBuilder_INTERNAL", "createInferRefitter_INTERNAL", "createInferRuntime_INTERNAL",
                "createNvOnnxParserRefitter_INTERNAL", "createNvOnnxParser_INTERNAL", "getBuilderPluginRegistry",
                "getNvOnnxParserVersion", "getPluginRegistry", "initLibNvInferPlugins")
LIBRARIES = ("libnvinfer", "libnvinfer_plugin", "libnvonnxparser")

LIST_NAMES = r"""
import inspect, sys
import tensorrt_bindings as trt
names = set()
for name in dir(trt):
    if name.startswith("_"):
        continue
    names.add(name)
    value = getattr(trt, name)
    if inspect.isclass(value):
        for member in dir(value):
            if not member.startswith("_"):
                names.add(f"{name}.{member}")
print(trt.__version__)
print("\n".join(sorted(names)))
"""


def _placeholders(folder: Path, major: str) -> None:
    source = folder / "entry_points.c"
    source.write_text("".join(f"void *{name}(void) {{ return 0; }}\n" for name in ENTRY_POINTS))
    for lib in LIBRARIES:
        soname = f"{lib}.so.{major}"
        args = [str(source)] if lib == "libnvinfer" else ["-x", "c", "/dev/null"]
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(folder / soname), f"-Wl,-soname,{soname}", *args],
                       check=True)


def names_of(version: str, wheel: str, work: Path) -> list[str]:
    folder = work / version
    folder.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--platform",
                    "manylinux_2_17_x86_64", f"{wheel}=={version}", "-d", str(folder)], check=True)
    (path,) = folder.glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(folder / "site")
    _placeholders(folder, version.split(".")[0])
    env = {"LD_LIBRARY_PATH": str(folder), "PYTHONPATH": str(folder / "site"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", LIST_NAMES], env=env, capture_output=True, text=True, check=True)
    found, *names = result.stdout.split()
    if found != version:
        raise RuntimeError(f"{path.name} says it is TensorRT {found}, not {version}")
    return names


def main(argv: list[str]) -> None:
    versions = VERSIONS + [(v, "tensorrt-cu12-bindings") for v in argv]
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for version, wheel in versions:
            names = names_of(version, wheel, Path(work))
            header = (f"# TensorRT {version}: public names of {wheel}'s module ({len(names)}), "
                      "made by scripts/tensorrt_api_names.py\n")
            (OUT / f"{version}.txt").write_text(header + "\n".join(names) + "\n")
            print(f"{version}: {len(names)} names", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
