#!/usr/bin/env bash
# Every GPU check in one call, on a bare, offline GPU machine, from the repository tree:
#
#   bash scripts/gpu_check.sh [--dry-run] [OUT]          (OUT defaults to gpu-check/)
#
# Nothing is installed into that machine's Python: the wheels it lacks (scripts/gpu_wheels.sh
# puts them in .whl/ beforehand, here) go into a folder of their own with pip --no-index, and
# icn_rt runs from this tree through PYTHONPATH. Steps run in order of value, each under its
# own time limit and all within 7 minutes; a step that fails is recorded and the next one
# runs; TensorRT's steps are skipped, with the reason, where it cannot be imported.
# Everything lands in at most 8 files under OUT: the results to commit (matching_gpu.json,
# bench_gpu.json and its plot bench_gpu.png), steps.json (each step's exit code, seconds, and
# why it was skipped), summary.md, and logs.tar.gz (every step's log, the import report and
# the benchmarks' markdown tables).
#
# --dry-run: the same steps on the CPU with the smallest settings (CUDA kernels in Numba's
# simulator), so the plumbing is tested on every commit (tests/test_gpu_check.py).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${1:-gpu-check}
PY=${PY:-python3}
WHEELS=${WHEELS:-.whl}
BUDGET=${BUDGET:-420}  # seconds for all steps together

rm -rf "$OUT" && mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
LOGS="$WORK/logs" SITE="$WORK/site"
mkdir -p "$LOGS" "$SITE"
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [ "$DRY" = 1 ]; then
    export NUMBA_ENABLE_CUDASIM=1
    DEVICE=cpu
else
    export NUMBA_ENABLE_CUDASIM=0
    DEVICE=cuda
fi

START=$SECONDS
steps=()
record() {  # name, rc, seconds, note
    local note=${4//\"/\'}
    steps+=("{\"step\": \"$1\", \"rc\": $2, \"seconds\": $3, \"note\": \"$note\"}")
    printf '%-16s rc %-3s %4s s  %s\n' "$1" "$2" "$3" "$4"
}
run() {  # name, limit in seconds, command... (the limit is cut to what is left of BUDGET)
    local name=$1 limit=$2; shift 2
    local left=$((BUDGET - (SECONDS - START)))
    if [ "$left" -lt 10 ]; then record "$name" 124 0 "skipped: the ${BUDGET} s budget is spent"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    local note=""
    [ "$rc" = 124 ] && note="timed out after ${limit} s"
    record "$name" "$rc" $((SECONDS - start)) "$note"
}
skip() {  # name, why
    record "$1" 0 0 "skipped: $2"
}

# 1. the wheels this machine lacks, into a folder of their own (no index, no network)
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
    run wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$SITE" "${wheels[@]}"
else
    skip wheels "no wheels in $WHEELS (scripts/gpu_wheels.sh makes them)"
fi

# 2. every module of the package imports on this Python, and every wheel's modules from SITE
run imports 90 "$PY" scripts/gpu_import_check.py --wheels "$WHEELS" --site "$SITE" --json "$LOGS/imports.json"
run machine 30 "$PY" -c "import json, icn_rt.machine as m; print(json.dumps(m.machine_info(), indent=2))"
if [ "$DRY" = 1 ]; then skip nvidia-smi "dry run"; else run nvidia-smi 20 nvidia-smi; fi

# 3. one CUDA kernel compiles and runs (seconds), then every one against its CPU twin and
#    NumPy reference
run kernel-smoke 90 "$PY" -c "
import numpy as np, torch
from numba import config
from icn_rt.kernels import backend, ops_numpy
device = torch.device('cpu' if config.ENABLE_CUDASIM else 'cuda')
masks = np.random.default_rng(0).random((3, 9, 70)) < 0.4
words = backend('cuda', device).pack(torch.as_tensor(masks, device=device))
assert (words.cpu().numpy().view(np.uint32) == ops_numpy.pack(masks)).all(), 'pack differs from NumPy'
print('the CUDA pack kernel on', device, 'equals the NumPy reference')
"
if [ "$DRY" = 1 ]; then
    run kernels 60 "$PY" -m pytest -q -p no:cacheprovider -rs tests/test_kernels.py -k host_inputs
else
    run kernels 150 "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_kernels.py tests/test_matching.py
fi

# 4. the matching stage: baseline loop, NumPy, Numba CPU and Numba CUDA side by side
if [ "$DRY" = 1 ]; then
    run bench-matching 60 "$PY" benchmarks/bench_matching.py --proposals 64 --maps 2 --sizes 32 --repeats 1 \
        --baseline-budget 1 --out "$OUT/matching_gpu.json"
else
    run bench-matching 120 "$PY" benchmarks/bench_matching.py --out "$OUT/matching_gpu.json"
fi

# 5. a student for the demo model, trained here on the demo's images (for its speed, not its accuracy)
DEMO=$("$PY" -c "import icn_rt.demo as d; print(d.MODEL.parent)")
MODEL="$WORK/model"
cp -r "$DEMO/model" "$MODEL"
# the demo ships its ICN at T 0 (the recipe's default: naive PRM + re-ranking); the check runs it at T 1
"$PY" -c "import json, sys; c = json.load(open(sys.argv[1])); c['icn']['steps'] = 1
json.dump(c, open(sys.argv[1], 'w'), indent=2)" "$MODEL/config.json"
if [ "$DRY" = 1 ]; then student=(--epochs 1 --input-size 64); else student=(--epochs 8); fi
run student 120 "$PY" -m icn_rt.cli train student "$DEMO/data" --model "$MODEL" --split val --threshold 0 \
    --batch-size 2 --device "$DEVICE" --quiet "${student[@]}"

# 6. the pipeline and the student, eager at fp32 / fp16 / bf16 autocast, batch 1 / 8 / 16, with
#    each one's accuracy on the demo's images; TensorRT (plans, CUDA graphs) where it imports
if "$PY" -c "import tensorrt" > /dev/null 2>&1; then
    backends=torch,torch:fp16,torch:bf16,tensorrt
    graphs=(--cuda-graph --profile-layers)
    run build-engine 150 bash -c "'$PY' -m icn_rt.cli export '$MODEL' --precision fp16 && \
        '$PY' -m icn_rt.cli build-engine '$MODEL' --precision fp16 --max-batch 16"
else
    backends=torch,torch:fp16,torch:bf16
    graphs=()
    skip build-engine "TensorRT does not import on this machine (no wheel of its libraries can be had here)"
fi
if [ "$DRY" = 1 ]; then
    run bench 120 "$PY" -m icn_rt.cli bench "$MODEL" --device cpu --batch-sizes 1 --backend torch \
        --count 2 --warmup 0 --iterations 1 --duration 0.01 --no-baseline --eval "$DEMO/data" --json "$OUT/bench_gpu.json"
else
    run bench 180 "$PY" -m icn_rt.cli bench "$MODEL" --device cuda --batch-sizes 1,8,16 --backend "$backends" \
        "${graphs[@]}" --eval "$DEMO/data" --json "$OUT/bench_gpu.json"
fi

# 7. the remaining GPU tests (kernels ran in 3)
if [ "$DRY" = 1 ]; then
    run pytest-gpu 60 "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_batch_infer.py
else
    run pytest-gpu 150 "$PY" -m pytest -q -p no:cacheprovider -rs -m "gpu or tensorrt" \
        --deselect tests/test_kernels.py --deselect tests/test_matching.py
fi

# pack: steps.json, summary.md and one tarball of the logs beside the results
(IFS=,; echo "[${steps[*]}]") > "$OUT/steps.json"
for md in "$OUT"/matching_gpu.md "$OUT"/bench_gpu.md; do [ -f "$md" ] && mv "$md" "$LOGS/"; done  # rendered from the JSON
"$PY" scripts/gpu_summary.py "$OUT" "$LOGS/imports.json" --dry-run "$DRY" > "$OUT/summary.md"
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs
cat "$OUT/summary.md"
