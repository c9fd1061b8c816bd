"""The CUDA kernels compile for real GPUs without one: ``numba.cuda.compile_ptx`` needs
no driver, only NVVM (``numba-cuda[cu13]``, in the test extra). The simulator runs the
kernels' logic in the other tests but never compiles them; this compiles every kernel at
its launch signature for Jetson Orin (sm_87) and H100/H200 (sm_90), in a child process
with the simulator off."""

import json
import os
import subprocess
import sys

import pytest

TARGETS = ["8.7", "9.0"]

COMPILE_ALL = r"""
import json, sys
from numba import cuda
from icn_rt.kernels import ops_cuda
major, minor = (int(p) for p in sys.argv[1].split("."))
out = {}
for name, (func, signature) in ops_cuda._SIGNATURES.items():
    try:
        ptx, _ = cuda.compile_ptx(func, signature, cc=(major, minor))
        out[name] = {"ptx": ptx}
    except Exception as e:
        out[name] = {"error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


@pytest.mark.parametrize("target", TARGETS)
def test_every_cuda_kernel_compiles_to_ptx_for_the_target(target):
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    r = subprocess.run([sys.executable, "-c", COMPILE_ALL, target], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.splitlines()[-1])
    from icn_rt.kernels import ops_cuda

    assert set(results) == set(ops_cuda._SIGNATURES)
    errors = {name: res["error"] for name, res in results.items() if "error" in res}
    assert errors == {}
    sm = "sm_" + target.replace(".", "")
    for name, res in results.items():
        ptx = res["ptx"]
        assert f".target {sm}" in ptx and ".visible .entry" in ptx, name
