"""The embedded demo: a small model trained by icn-rt on the synthetic benchmark, and a few
of its validation images in VOC layout with their proposals (rebuilt by
``scripts/build_demo.py``)."""

from pathlib import Path

DEMO = Path(__file__).parent
MODEL = DEMO / "model"
DATA = DEMO / "data"
IMAGES = DATA / "JPEGImages"
PROPOSALS = DATA / "Proposals"
