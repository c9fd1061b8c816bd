"""TensorRT API conformance without TensorRT: every TensorRT name the code uses exists in
every supported version's Python module, or sits behind a version branch that some
supported version takes (the name lists: ``scripts/tensorrt_api_names.py``, from the real
binding wheels)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from icn_rt.export.build_engine import SUPPORTED
from tests.tensorrt_api import load_versions, problems, uses_in

REPO = Path(__file__).resolve().parents[1]
VERSIONS = load_versions(REPO / "tests" / "data" / "tensorrt_api")


def _sources_using_tensorrt() -> dict[str, str]:
    found = {}
    for file in sorted((REPO / "icn_rt").rglob("*.py")):
        text = file.read_text()
        if re.search(r"\btrt\b", text):
            found[str(file.relative_to(REPO))] = text
    return found


def test_the_name_lists_cover_every_supported_major_version_and_the_extra_pins_them():
    assert {v.major for v in VERSIONS} == set(SUPPORTED)
    assert all(len(v.names) > 1500 for v in VERSIONS)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"tensorrt>={min(SUPPORTED)}.0,<{max(SUPPORTED) + 1}"' in pyproject
    # the lists are what the issue found by hand: 11 removed the weakly typed API
    for v in VERSIONS:
        assert ("BuilderFlag.FP16" in v.names) == (v.major == 10)
        assert ("IInt8EntropyCalibrator2" in v.names) == (v.major == 10)
        assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in v.names


def test_every_tensorrt_name_the_code_uses_exists_where_it_can_run():
    sources = _sources_using_tensorrt()
    assert {"icn_rt/export/build_engine.py", "icn_rt/runtime/engines/tensorrt.py"} <= set(sources)
    used = {u.name for text in sources.values() for u in uses_in(text)[0]}
    # the checker sees the calls that matter (it is not vacuously passing)
    assert {"Builder.create_network", "NetworkDefinitionCreationFlag.STRONGLY_TYPED", "BuilderFlag.FP16",
            "IExecutionContext.execute_async_v3", "IProgressMonitor.phase_start", "ITimingCache.serialize",
            "IProfiler.report_layer_time", "IExecutionContext.profiler", "ProfilingVerbosity.DETAILED",
            "ICudaEngine.create_execution_context", "IExecutionContext.set_output_allocator",
            "init_libnvinfer_plugins"} <= used
    assert problems(sources, VERSIONS) == []


FLAG_PATH = """
def build(trt, config, dla):
    {guard}
        config.set_flag(trt.BuilderFlag.FP16)
"""


@pytest.mark.parametrize("guard, expected", [
    ("if True:", ["BuilderFlag.FP16 is used where TensorRT 11.0.0.114, 11.4.0.106 has no such name"]),
    ("if dla:", ["BuilderFlag.FP16 is used where TensorRT 11.0.0.114, 11.4.0.106 has no such name"]),
    ("if tensorrt_major(trt) < 11:", []),
    ("if dla and tensorrt_major(trt) <= 10:", []),
    ("if hasattr(trt.BuilderFlag, 'FP16'):", []),
    ("if not tensorrt_major(trt) >= 11:", []),
    ("if tensorrt_major(trt) < 10:", ["a version branch no supported TensorRT version takes"]),
    ("if tensorrt_major(trt) < 12:", ["BuilderFlag.FP16 is used where",
                                      "a version guard every supported TensorRT version passes"]),
])
def test_the_checker_flags_a_removed_name_unless_a_live_version_branch_guards_it(guard, expected):
    found = problems({"x.py": FLAG_PATH.format(guard=guard)}, VERSIONS)
    assert len(found) == len(expected)
    for line, want in zip(found, expected):
        assert want in line


def test_the_checker_follows_aliases_else_branches_objects_and_subclasses():
    source = """
def build(trt, dla):
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    weakly = dla and tensorrt_major(trt) < 11
    if weakly:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    else:
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    builder.create_builder_config().int8_calibrator = None

class Calibrator(trt.IInt8EntropyCalibrator2):
    def get_batch(self, names):
        return None
"""
    found = problems({"x.py": source}, VERSIONS)
    assert len(found) == 3
    assert "x.py:9: trt.IBuilderConfig.int8_calibrator" in found[0]
    assert "x.py:12: trt.IInt8EntropyCalibrator2.get_batch" in found[1]
    assert "x.py:11: trt.IInt8EntropyCalibrator2 is used" in found[2]


def test_callbacks_the_binding_does_not_list_need_their_class_and_nothing_else_passes():
    source = """
def run(trt):
    class Allocator(trt.IOutputAllocator):
        def reallocate_output_async(self, name, memory, size, alignment, stream):
            return 0

        def notify_shape(self, name, shape):
            pass

        def notify_shapes(self, name, shape):
            pass
"""
    found = problems({"x.py": source}, VERSIONS)
    assert len(found) == 1 and "x.py:10: trt.IOutputAllocator.notify_shapes is used where" in found[0]
