#!/usr/bin/env bash
# Download, here, the wheels that the lent GPU machine lacks (scripts/gpu_wheels.txt) for
# CPython 3.12 on manylinux x86-64 into DIR (default .whl/, ignored by git), for
# scripts/gpu_check.sh to install there with no network. Fails if they pass the 48 MiB this
# project allows them (the working tree travels in 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
PY=${PY:-python3}
LIMIT_MIB=48
mkdir -p "$DIR"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
grep -v '^\s*#' scripts/gpu_wheels.txt | grep -v '^\s*$' | while read -r req; do
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$DIR" "$req"
done
size=$(du -sm "$DIR" | cut -f1)
ls -1 "$DIR"
echo "$DIR: ${size} MiB"
if [ "$size" -gt "$LIMIT_MIB" ]; then
    echo "error: $DIR holds ${size} MiB, over the ${LIMIT_MIB} MiB the GPU machine's transfer leaves for wheels" >&2
    exit 1
fi
