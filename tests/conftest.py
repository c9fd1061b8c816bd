from pathlib import Path

import pytest

from icn_rt.data.synth import SynthConfig, generate

TINY = SynthConfig(size=64, train=4, val=6, classes=3, seed=7)


@pytest.fixture(scope="session")
def tiny_voc(tmp_path_factory) -> Path:
    """A tiny synthetic dataset in VOC layout (64 px, 4 train + 6 val images, 3 classes)."""
    root = tmp_path_factory.mktemp("voc")
    generate(root, TINY, progress=False)
    return root
