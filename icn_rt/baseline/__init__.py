"""The baseline that ``icn-rt bench`` and the speed benchmarks race: the pipeline as the
PRM authors' code runs it (one image at a time, one autograd backward per peak, a Python
loop over proposals with OpenCV), written here from the algorithm, never copied. It
ships with the package so that an installed ``icn-rt bench`` has it too."""

from icn_rt.baseline.pipeline import BaselineInstance, BaselineSettings, run_baseline

__all__ = ["BaselineInstance", "BaselineSettings", "run_baseline"]
