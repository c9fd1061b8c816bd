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
# the deployed path: the demo model exported (fp16 and int8 calibrated on the demo's images),
# TensorRT plans from its fp16 graphs, then every backend and precision on the GPU with CUDA
# graphs, TensorRT's per-layer profile and each one's mAP^r on the demo's val images
DEMO=$("$PY" -c "import icn_rt.demo as d; print(d.MODEL.parent)")
rm -rf "$OUT/model" && cp -r "$DEMO/model" "$OUT/model"
run export "$PY" -m icn_rt.cli export "$OUT/model" --precision fp16,int8 --calibration "$DEMO/data" \
    --calibration-split val --calibration-images 8
run build-engine "$PY" -m icn_rt.cli build-engine "$OUT/model" --precision fp16 --max-batch 16
run bench-engines "$PY" -m icn_rt.cli bench "$OUT/model" --device cuda --batch-sizes 1,8,16 \
    --backends torch,torch:bf16,torch:fp16,onnxruntime,onnxruntime:fp16,tensorrt --cuda-graph \
    --profile-layers --eval "$DEMO/data" --out "$OUT/bench_engines_gpu.json"
(IFS=,; echo "[${steps[*]}]") > "$OUT/steps.json"
