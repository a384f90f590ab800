r"""What grouping a sweep's cells into one program buys: the same grid run
one process per cell, one cell at a time in one process (its cells share
programs in memory: config.per_program), and --runs_per_program at a time,
in one session.

  python -m experiments.benchmarks.group_timing --config=table1_reduced \
      --runs_per_program=6 --gen_rounds=2 --rounds=3

Each setting runs in fresh subprocesses (one per cell, or one for the whole
grid) with its own empty compilation cache and sweep root, one after the
other; the child counts XLA compiles and sums the seconds JAX spends
producing programs (trace, lower, compile) with fedrecon_jax.compile_stats.
Writes a JSON and a markdown table (--out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string('config', 'table1_reduced', 'Sweep config.')
_METHODS = flags.DEFINE_list('methods', None, 'Override the grid\'s methods.')
_RPP = flags.DEFINE_integer('runs_per_program', 6, 'The grouped setting.')
_GEN_ROUNDS = flags.DEFINE_integer('gen_rounds', 2, 'Stage-1 rounds per cell.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Stage-2 rounds per cell.')
_OUT = flags.DEFINE_string('out', 'experiments/results/group_timing_cpu.json',
                           'Where the JSON goes (a .md beside it).')

_CHILD = r'''
import json, sys, time
from fedrecon_jax import compile_stats, grid as grid_lib, sweep
compile_stats.start()
root, config, rpp, gen_rounds, rounds = sys.argv[1:6]
methods = [m for m in sys.argv[7].split(",") if m]
shard, shards = int(sys.argv[8]), int(sys.argv[9])
grid = grid_lib.make_grid({"method": methods} if methods else {},
                          {"gen_rounds": int(gen_rounds),
                           "rounds": int(rounds), "eval_every": 5,
                           "compilation_cache": sys.argv[6]}, config)
t = time.time()
failed = sweep.run_sweep(grid, root, shard, shards,
                         runs_per_program=int(rpp))
stats = compile_stats.snapshot()
counts = {"compiles": stats.compiles, "compile_s": stats.compile_seconds,
          "program_s": stats.program_seconds, "wall_s": time.time() - t,
          "failed": failed, "cells": len(grid.cells())}
print("RESULT " + json.dumps(counts))
'''


def measure(runs_per_program: int, processes: int = 1) -> dict:
  """Runs the grid as `processes` shards (1: one process), each a fresh
  subprocess; sums their counts. Wall time includes process start-up."""
  tmp = tempfile.mkdtemp(prefix='group_timing_')
  root, cache = os.path.join(tmp, 'sweep'), os.path.join(tmp, 'xla')
  load, t = os.getloadavg()[0], time.time()
  total = {}
  for shard in range(processes):
    proc = subprocess.run(
        [sys.executable, '-c', _CHILD, root, _CONFIG.value,
         str(runs_per_program), str(_GEN_ROUNDS.value), str(_ROUNDS.value),
         cache, ','.join(_METHODS.value or []), str(shard), str(processes)],
        capture_output=True, text=True, check=True,
        env={**os.environ, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})
    line = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')][-1]
    for k, v in json.loads(line[7:]).items():
      total[k] = total.get(k, [] if isinstance(v, list) else 0) + v
  total['cells'] = total['cells'] // processes   # each child counts the grid
  return {'runs_per_program': runs_per_program, 'processes': processes,
          'load_start': load, 'load_end': os.getloadavg()[0], **total,
          'wall_s': time.time() - t}


def main(argv):
  del argv
  t = time.strftime('%Y-%m-%d %H:%M')
  from fedrecon_jax import grid as grid_lib  # pylint: disable=g-import-not-at-top
  cells = len(grid_lib.make_grid(
      {'method': _METHODS.value} if _METHODS.value else {}, {},
      _CONFIG.value).cells())
  rows = [measure(1, processes=cells), measure(1), measure(_RPP.value)]
  table = ['| setting | runs per program | cells | wall s | XLA compiles '
           '| XLA compile s | trace+lower+compile s | load start -> end |',
           '|---|---|---|---|---|---|---|---|']
  for r in rows:
    where = ('one process per cell' if r['processes'] > 1 else
             'one process')
    table.append(f'| {where} | {r["runs_per_program"]} | {r["cells"]} '
                 f'| {r["wall_s"]:.0f} | {r["compiles"]} '
                 f'| {r["compile_s"]:.0f} | {r["program_s"]:.0f} '
                 f'| {r["load_start"]:.1f} -> {r["load_end"]:.1f} |')
  table = '\n'.join(table)
  print(table)
  out = {'when': t, 'config': _CONFIG.value, 'methods': _METHODS.value,
         'gen_rounds': _GEN_ROUNDS.value,
         'rounds': _ROUNDS.value, 'rows': rows,
         'wall_ratio': rows[0]['wall_s'] / rows[2]['wall_s'],
         'table_markdown': table}
  with open(_OUT.value, 'w') as f:
    json.dump(out, f, indent=1)
  print(f'wrote {_OUT.value}; grouped wall time x{out["wall_ratio"]:.2f}')


if __name__ == '__main__':
  app.run(main)
