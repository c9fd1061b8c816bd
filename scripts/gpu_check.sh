#!/usr/bin/env bash
# Every GPU test and GPU benchmark in one call, all output under one folder, so a lent GPU
# is used once: `make gpu-check` (or `PY=python3 scripts/gpu_check.sh OUT` on a machine
# where icn-rt's dependencies are installed but the package is not). A step that fails is
# recorded in OUT/steps.json and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-check}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" NUMBA_ENABLE_CUDASIM=0
steps=()
run() {  # name, command...
    local name=$1; shift
    local start=$SECONDS
    "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    steps+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $((SECONDS - start))}")
    echo "$name: rc $rc ($((SECONDS - start)) s)"
}
run machine "$PY" -c "import json, icn_rt.machine as m; print(json.dumps(m.machine_info(), indent=2))"
run nvidia-smi nvidia-smi
run pytest-gpu "$PY" -m pytest -q -rs -m "gpu or tensorrt" --junitxml="$OUT/pytest-gpu.xml"
run pytest-kernels "$PY" -m pytest -q -rs tests/test_kernels.py tests/test_matching.py \
    --junitxml="$OUT/pytest-kernels.xml"
run bench-matching "$PY" benchmarks/bench_matching.py --out "$OUT/matching_gpu.json"
run bench "$PY" -m icn_rt.cli bench --device cuda --out "$OUT/bench_gpu.json"
(IFS=,; echo "[${steps[*]}]") > "$OUT/steps.json"
