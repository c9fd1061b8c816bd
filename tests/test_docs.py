"""The documentation: every results table is what scripts/render_tables.py renders from the
committed JSON, the README stays short, and the site builds with mkdocs --strict."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_tables", REPO / "scripts" / "render_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_is_rendered_from_the_committed_json():
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "render_tables.py"), "--check"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    render = _renderer()
    names = {m.group("name") for path in render.documents() for m in render.BLOCK.finditer(path.read_text())}
    assert {"accuracy", "student", "speed"} <= names


def test_a_table_typed_by_hand_is_caught():
    render = _renderer()
    text = (REPO / "README.md").read_text()
    edited = text.replace("| naive PRM | 5.5", "| naive PRM | 5.6", 1)
    assert edited != text and render.render(edited) == text  # the rendering puts the JSON's figure back


def test_no_results_table_is_typed_by_hand():
    """A table of measurements (its header names mAP, IoU, images/s or a latency) lives only
    between render markers; tables of commands and settings may be typed."""
    render = _renderer()
    measured = re.compile(r"mAP|IoU|images/s|ms/batch|s/epoch")
    typed = []
    for path in render.documents():
        lines = render.BLOCK.sub("", path.read_text()).splitlines()
        for i, line in enumerate(lines):
            starts = line.strip().startswith("|") and (i == 0 or not lines[i - 1].strip().startswith("|"))
            if starts and measured.search(line):
                typed.append(f"{path.name}:{i + 1}: {line.strip()[:60]}")
    assert not typed, typed


def test_the_readme_is_short_and_links_resolve():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (REPO / target).exists(), target


def test_the_site_builds_strictly(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    r = subprocess.run([str(mkdocs), "build", "--strict", "-f", str(REPO / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                       capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "site" / "accuracy" / "index.html").is_file()
