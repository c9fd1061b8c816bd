"""The package's layers (docs/code-map.md): imports run one way, down.

    cli
    demo, workflows               the demo job; jobs that chain runtime and training
    runtime, training, export     (none imports another)
    eval, baseline                (none imports another)
    models                        the model object, networks, manifest
    matching                      the kernels' Python face
    data
    errors, progress, machine, extras, icn_rt itself   (the foundation)
    kernels                       imports nothing of ours

A module may import its own folder and any layer below its own. The package never
imports ``tests`` (the reference oracle lives there) or ``benchmarks``, and never edits
``sys.path``. Function-level imports count. And every module imports without the
optional extras installed.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import icn_rt
from icn_rt import extras

PACKAGE = Path(icn_rt.__file__).parent
LAYERS = [("kernels",), ("errors", "progress", "machine", "extras", ""), ("data",), ("matching",), ("models",),
          ("eval", "baseline"), ("runtime", "training", "export"), ("demo", "workflows"), ("cli",)]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    """``icn_rt.runtime.engines.graphs`` -> ``runtime``; ``icn_rt`` -> ``""`` (the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def arrow_problem(importer: str, imported: str) -> str | None:
    """Why ``importer`` (a module of the package) may not import ``imported``; None if it may."""
    top = imported.split(".")[0]
    if top in ("tests", "benchmarks"):
        return f"the package imports {top}/"
    if top != "icn_rt":
        return None
    a, b = unit_of(importer), unit_of(imported)
    if a == b:
        return None
    if a == "kernels":
        return "kernels import nothing of ours"
    if RANK[b] >= RANK[a]:
        return f"{a or 'icn_rt'} (layer {RANK[a]}) imports {b or 'icn_rt'} (layer {RANK[b]})"
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def package_imports():
    """(module, line, imported) for every import statement of the package, anywhere in a
    file; ``from X import name`` counts as importing ``X.name`` where that is a module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield module, node.lineno, alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(node, module, path.name == "__init__.py")
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    rel = Path(*full.split("."))
                    is_module = (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel).is_dir()
                    yield module, node.lineno, full if is_module else base


def test_imports_run_down_the_layers():
    problems = [f"{module}:{line} imports {imported}: {why}" for module, line, imported in package_imports()
                if (why := arrow_problem(module, imported))]
    assert problems == []


def private_names(source: str, module: str, is_package: bool = False):
    """(line, name) for every ``from X import _name`` in ``source`` (the text of
    ``module``) that takes a private name (one ``_``) from a module of ours."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            for alias in node.names:
                if base.split(".")[0] == "icn_rt" and alias.name.startswith("_") and not alias.name.startswith("__"):
                    yield node.lineno, f"{base}.{alias.name}"


def test_no_module_imports_another_modules_private_names():
    found = [f"{_module_name(path)}:{line} imports {name}" for path in sorted(PACKAGE.rglob("*.py"))
             for line, name in private_names(path.read_text(), _module_name(path), path.name == "__init__.py")]
    assert found == []


def test_the_private_name_check_catches_one():
    source = "from icn_rt.models.backbones import _rename, load_pretrained\nfrom .whole_map_vjp import _pair\n" \
             "from torchvision.ops.poolers import _setup_scales\nfrom icn_rt import __version__\n"
    assert list(private_names(source, "icn_rt.models.icn")) == [(1, "icn_rt.models.backbones._rename"),
                                                                 (2, "icn_rt.models.whole_map_vjp._pair")]


def test_every_folder_of_the_package_has_a_layer():
    units = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    units |= {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    assert units <= set(RANK), sorted(units - set(RANK))


@pytest.mark.parametrize("importer,imported", [
    ("icn_rt.export.onnx_export", "icn_rt.runtime.predictor"),     # export wraps the model, not the predictor
    ("icn_rt.export.build_engine", "icn_rt.runtime.engines"),
    ("icn_rt.training.pseudo_labels", "icn_rt.runtime.matching"),  # training reaching up into runtime
    ("icn_rt.runtime.bench", "benchmarks.reference.prm_pipeline"),  # the package importing benchmarks/
    ("icn_rt.matching.scores", "tests.reference"),                 # production importing the test oracle
    ("icn_rt.kernels.ops_cuda", "icn_rt.errors"),                  # kernels import nothing of ours
    ("icn_rt.matching.scores", "icn_rt.models.store"),
    ("icn_rt.data.voc", "icn_rt.eval.report"),
])
def test_the_check_catches_arrows_against_the_layers(importer, imported):
    assert arrow_problem(importer, imported) is not None


def test_the_check_allows_arrows_down_and_within_a_folder():
    assert arrow_problem("icn_rt.runtime.predictor", "icn_rt.models.store") is None
    assert arrow_problem("icn_rt.runtime.predictor", "icn_rt.runtime.engines.graphs") is None
    assert arrow_problem("icn_rt.training.pseudo_labels", "icn_rt.matching") is None
    assert arrow_problem("icn_rt.cli", "icn_rt.demo.job") is None
    assert arrow_problem("icn_rt.kernels.ops_cuda", "numba") is None


def test_the_package_never_edits_sys_path():
    edits = [f"{path}:{node.lineno}" for path in PACKAGE.rglob("*.py")
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Attribute) and node.attr == "path"
             and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert edits == []


BLOCKED = ("tensorrt", "numba_cuda", "modelopt", "ray", "fastapi", "starlette", "cupy", "pycuda")
"""The modules of optional extras (and their likely kin): none may be needed to import icn-rt."""

_IMPORT_ALL = """
import importlib, importlib.abc, pkgutil, sys

blocked = set(sys.argv[1:])

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: an optional extra)")
        return None

# an extra's own import hooks go with it (numba-cuda's redirector of numba.cuda)
sys.meta_path = [f for f in sys.meta_path if not any(b in type(f).__module__ for b in blocked)]
sys.meta_path.insert(0, Missing())
import icn_rt
names = sorted(m.name for m in pkgutil.walk_packages(icn_rt.__path__, "icn_rt."))
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_module_imports_without_the_optional_extras():
    assert set(extras.HOW_TO_INSTALL) <= set(BLOCKED)
    r = subprocess.run([sys.executable, "-c", _IMPORT_ALL, *BLOCKED], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 50  # every submodule was imported, not a handful


def test_no_function_in_the_package_is_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
