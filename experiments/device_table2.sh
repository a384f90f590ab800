#!/bin/bash
# Table 2 on the released PolyMNIST (60k training samples) in one short call
# of a lent accelerator: FedRecon, PoE, MoE and MoPoE trained federated and
# scored (experiments.paper.table2, one process, so each program compiles once).
#
#   bash experiments/device_table2.sh MANUAL_DIR
#
# MANUAL_DIR holds the released files, <MANUAL_DIR>/{train,test}/m{0..4}/
# <i>.<digit>.png (the device reaches no network: carry them). The machine
# needs the same wheels as benchmarks/device_benchmark.sh (.whl, carried). GEN_ROUNDS,
# LOCAL_EPOCHS, VARIANTS and BUDGET_S (seconds for the whole call) set the
# work; each variant writes its table2.json as it finishes, under
# $OUT/table2 (copy it to workdirs/table2 here and run
# `python -m experiments.paper --parts=report --table2_datasets=polymnist_5k,polymnist`).
#
# SMOKE=1 (on CPU, before any device call): writes a small PNG layout from
# polymnist_5k into MANUAL_DIR (SMOKE_SAMPLES per split), skips the wheels
# and runs the same command on it for one round each.
set -euo pipefail
MANUAL_DIR=${1:?usage: device_table2.sh MANUAL_DIR}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$OUT/tfds}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$OUT/xla_cache}
if [[ "${SMOKE:-0}" == 1 ]]; then
  python3 - "$MANUAL_DIR" "${SMOKE_SAMPLES:-60}" <<'PY'
import pathlib, sys
import numpy as np
from PIL import Image
from fedrecon_jax import data
root, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
ds = data.load('polymnist_5k')
for split in ('train', 'test'):
  part = getattr(ds, split)
  for k, x in enumerate(part.xs):
    folder = root / split / f'm{k}'
    folder.mkdir(parents=True, exist_ok=True)
    # Every k-th sample: the splits are sorted by class.
    for i, j in enumerate(np.linspace(0, len(part.y) - 1, n).astype(int)):
      pixels = np.round(x[j] * 255).astype(np.uint8).transpose(1, 2, 0)
      Image.fromarray(pixels).save(folder / f'{i}.{part.y[j]}.png')
PY
  GEN_ROUNDS=${GEN_ROUNDS:-1}
  EXTRA="--num_clients=2 --clients_per_round=2 --probe_steps=20"
else
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl
  cp -r .whl/promise /tmp/site/ 2>/dev/null || true
  export PYTHONPATH=/tmp/site:$PWD XLA_PYTHON_CLIENT_MEM_FRACTION=0.92
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  EXTRA="--num_clients=100 --clients_per_round=10"
fi
# The settings of the polymnist_5k table (experiments.paper.table2's
# DATASET_SETTINGS), with the full data's 600 samples a client.
timeout "${BUDGET_S:-780}" python3 -m experiments.paper.table2 \
  --datasets=polymnist --manual_dir="$MANUAL_DIR" --root="$OUT/table2" \
  --variants="${VARIANTS:-fedrecon,poe,moe,mopoe}" \
  --gen_rounds="${GEN_ROUNDS:-20}" --local_epochs="${LOCAL_EPOCHS:-1}" \
  $EXTRA 2>&1 | grep -v '^[IW][0-9]' | tee "$OUT/device_table2.log"
