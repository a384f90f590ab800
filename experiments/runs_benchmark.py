r"""Experiments per second with R runs in one program (the runs axis).

  python -m experiments.runs_benchmark          # CPU: R in {1, 8, 32}
  python -m experiments.runs_benchmark --runs=1,8,32,64,128 \
      --out=experiments/results/runs_benchmark_gpu.json       # an accelerator

Workload: the default run (FedRecon on uci_multifeature, 20 clients, a
cohort of 10, batch 16), R runs of seeds 0..R-1 (each its own partition,
padded to the group's largest client) as one `rounds.make_round(runs=R)`
program; R = 1 is the solo program (no runs axis), what one process per
sweep cell runs. Per (stage, R): compile seconds, seconds per round (median
of --rounds after one warm-up), run-rounds/s (R / s per round: experiments
advanced one round per second) and client-steps/s, and the speedup of
run-rounds/s over R = 1 measured in the same process. Stage 1 runs each
run's cohort in chunks of --stage1_chunk clients (memory: each client holds
a copy of the 23.6 MB generator and its update; on CPU one at a time is also
fastest). Stage 2 runs R = 1 all at once and R > 1 in chunks of
--stage2_chunk clients per run: on this 2-core CPU a stage-2 round slows
down once more than ~10 clients are in flight (R = 8 all at once: 22 s per
round, in chunks of 1: 8.4 s, R = 1: 1.06 s), so the in-flight count is kept
near the solo run's.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags
import jax
import numpy as np

_RUNS = flags.DEFINE_list('runs', ['1', '8', '32'], 'Runs per program R.')
_STAGES = flags.DEFINE_list('stages', ['1', '2'], 'Stages to time.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (median).')
_STAGE1_CHUNK = flags.DEFINE_integer(
    'stage1_chunk', 1, 'Clients per chunk in stage 1 (0 = all at once).')
_STAGE2_CHUNK = flags.DEFINE_integer(
    'stage2_chunk', 1, 'Clients per chunk and run in stage 2 when R > 1.')
_BUDGET_S = flags.DEFINE_float(
    'budget_s', 900.0, 'Skip a (stage, R) projected to end past this budget.')
_OUT = flags.DEFINE_string('out', 'experiments/results/runs_benchmark_cpu.json',
                           'Where the JSON goes (a .md table beside it).')


def main(argv):
  del argv
  from fedrecon_jax import experiment, partition, plan, rounds  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  runs_list = sorted(int(r) for r in _RUNS.value)
  cfgs = [Config(workdir='/tmp/runs_benchmark_unused', seed=s)
          for s in range(max(runs_list))]
  exps = [experiment.build(c) for c in cfgs]
  model = exps[0].model
  max_n = max(e.population.y.shape[1] for e in exps)
  max_n = -(-max_n // cfgs[0].batch_size) * cfgs[0].batch_size
  pops = [partition.pad_clients(e.population, max_n) for e in exps]
  params = jax.device_get(jax.jit(model.init)(jax.random.key(0)))
  steps = max_n // cfgs[0].batch_size * cfgs[0].local_epochs
  stack = lambda *xs: np.stack([np.asarray(x) for x in xs])
  rows, load_start = [], os.getloadavg()
  for stage in (int(s) for s in _STAGES.value):
    stage_plan = plan.make_plan(cfgs[0], model, stage, cfgs[0].num_clients)
    base = None
    for r in runs_list:
      chunk = (_STAGE1_CHUNK.value if stage == 1 else
               _STAGE2_CHUNK.value if r > 1 else 0)
      row = {'stage': stage, 'runs': r, 'clients_per_chunk': chunk}
      rows.append(row)
      if base and time.time() + base['round_s'] * r * (
          _ROUNDS.value + 1) > t_start + _BUDGET_S.value:
        row['skipped'] = 'time budget'
        print(f'stage {stage} R={r}: skipped (time budget)', flush=True)
        continue
      runs = r if r > 1 else 0
      mesh = rounds.make_mesh(1, runs=runs)
      round_ = rounds.make_round(stage_plan, mesh, runs=runs,
                                 clients_per_chunk=chunk)
      if runs:
        h = jax.tree.map(stack, *[c.hparams() for c in cfgs[:r]])
        key = jax.random.wrap_key_data(stack(*[
            jax.random.key_data(jax.random.key(c.seed)) for c in cfgs[:r]]))
        pop = jax.tree.map(stack, *pops[:r])
        p = jax.tree.map(lambda x: stack(*[x] * r), params)
      else:
        h, key, pop, p = cfgs[0].hparams(), jax.random.key(0), pops[0], params
      pop = round_.place(pop)
      state = round_.init(p, h)
      t = time.perf_counter()
      round_.lower(state, pop, key, h).compile()
      row['compile_s'] = time.perf_counter() - t
      jax.block_until_ready(round_(state, pop, key, h))   # warm-up
      times = []
      for _ in range(_ROUNDS.value):
        t = time.perf_counter()
        state, metrics = round_(state, pop, key, h)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
      row['round_s'] = statistics.median(times)
      row['run_rounds_per_s'] = r / row['round_s']
      row['client_steps_per_s'] = (r * cfgs[0].clients_per_round * steps
                                   / row['round_s'])
      base = base or row
      row['speedup_vs_r1'] = row['run_rounds_per_s'] / base['run_rounds_per_s']
      print(f'stage {stage} R={r}: compile {row["compile_s"]:.1f} s, '
            f'{row["round_s"]:.3f} s/round, {row["run_rounds_per_s"]:.2f} '
            f'run-rounds/s (x{row["speedup_vs_r1"]:.2f} vs R=1), '
            f'{row["client_steps_per_s"]:.1f} client-steps/s', flush=True)
  table = ['| stage | R | compile s | s/round | run-rounds/s | x R=1 '
           '| client-steps/s |', '|---|---|---|---|---|---|---|']
  for row in rows:
    if 'skipped' in row:
      table.append(f'| {row["stage"]} | {row["runs"]} | - | - | - | - | - |')
      continue
    table.append(f'| {row["stage"]} | {row["runs"]} | {row["compile_s"]:.1f} '
                 f'| {row["round_s"]:.3f} | {row["run_rounds_per_s"]:.2f} '
                 f'| {row["speedup_vs_r1"]:.2f} '
                 f'| {row["client_steps_per_s"]:.1f} |')
  table = '\n'.join(table)
  print(table)
  report = {'device': str(jax.devices()[0].device_kind),
            'platform': platform.platform(), 'jax': jax.__version__,
            'cpu_count': os.cpu_count(), 'loadavg_start': load_start,
            'loadavg_end': os.getloadavg(), 'max_n': max_n,
            'steps_per_client': steps, 'rows': rows, 'table_markdown': table,
            'wall_s': time.time() - t_start}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(report, f, indent=1)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  app.run(main)
