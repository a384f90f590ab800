r"""Experiments per second with R runs in one program (the runs axis).

  python -m experiments.benchmarks.runs_benchmark      # CPU: R in {1, 8, 32}
  python -m experiments.benchmarks.runs_benchmark --runs=1,8,32,64,128,256 \
      --stage1_chunk=0 --stage2_chunk=0 \
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
fastest; on a GPU all at once is). Stage 2 runs R = 1 all at once and R > 1 in chunks of
--stage2_chunk clients per run: on this 2-core CPU a stage-2 round slows
down once more than ~10 clients are in flight (R = 8 all at once: 22 s per
round, in chunks of 1: 8.4 s, R = 1: 1.06 s), so the in-flight count is kept
near the solo run's. An R whose program does not fit the device's memory
is recorded as such and the larger ones are skipped; the JSON is rewritten
after every row, so a run cut short keeps what it measured.
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
  from fedrecon_jax import experiment, partition, recipe  # pylint: disable=g-import-not-at-top
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
  params = jax.device_get(model.init_params(jax.random.key(0)))
  # Each client runs its own ceil(n / B) steps per epoch: the mean of those.
  steps = float(np.mean([-(-e.population.num_samples // cfgs[0].batch_size)
                         for e in exps])) * cfgs[0].local_epochs
  rows, load_start = [], os.getloadavg()

  def write():
    table = _table(rows)
    report = {'device': str(jax.devices()[0].device_kind),
              'platform': platform.platform(), 'jax': jax.__version__,
              'cpu_count': os.cpu_count(), 'loadavg_start': load_start,
              'loadavg_end': os.getloadavg(), 'max_n': max_n,
              'steps_per_client': steps, 'rows': rows,
              'table_markdown': table, 'wall_s': time.time() - t_start}
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, 'w') as f:
      json.dump(report, f, indent=1)
    with open(os.path.splitext(_OUT.value)[0] + '.md', 'w') as f:
      f.write(table + '\n')
    return table

  for stage in (int(s) for s in _STAGES.value):
    stage_plan = recipe.of(cfgs[0]).plan(model, stage, cfgs[0].num_clients)
    base, too_big = None, False
    for r in runs_list:
      chunk = (_STAGE1_CHUNK.value if stage == 1 else
               _STAGE2_CHUNK.value if r > 1 else 0)
      row = {'stage': stage, 'runs': r, 'clients_per_chunk': chunk}
      rows.append(row)
      if too_big:
        row['skipped'] = 'a smaller R did not fit in memory'
      elif base and time.time() + base['round_s'] * r * (
          _ROUNDS.value + 1) > t_start + _BUDGET_S.value:
        row['skipped'] = 'time budget'
      if 'skipped' in row:
        print(f'stage {stage} R={r}: skipped ({row["skipped"]})', flush=True)
        continue
      try:
        _time_one(row, stage_plan, cfgs[:r], pops[:r], params, steps)
      except Exception as e:  # pylint: disable=broad-except
        if 'RESOURCE_EXHAUSTED' not in str(e) and 'out of memory' not in str(e):
          raise
        row['skipped'] = 'out of memory'
        too_big = True
        print(f'stage {stage} R={r}: out of memory', flush=True)
        write()
        continue
      base = base or row
      row['speedup_vs_r1'] = row['run_rounds_per_s'] / base['run_rounds_per_s']
      print(f'stage {stage} R={r}: compile {row["compile_s"]:.1f} s, '
            f'{row["round_s"]:.3f} s/round, {row["run_rounds_per_s"]:.2f} '
            f'run-rounds/s (x{row["speedup_vs_r1"]:.2f} vs R=1), '
            f'{row["client_steps_per_s"]:.1f} client-steps/s, '
            f'XLA {row["xla_memory_gb"]:.2f} GB', flush=True)
      write()
  print(write())
  print(f'wrote {_OUT.value}')


def _time_one(row, stage_plan, cfgs, pops, params, steps):
  """Compiles and times one (stage, R) round program into `row`."""
  from fedrecon_jax import recipe, rounds  # pylint: disable=g-import-not-at-top
  r = len(cfgs)
  runs = r if r > 1 else 0
  stack = lambda *xs: np.stack([np.asarray(x) for x in xs])
  round_ = rounds.make_round(stage_plan, rounds.make_mesh(1, runs=runs),
                             runs=runs, clients_per_chunk=row['clients_per_chunk'])
  if runs:
    h = jax.tree.map(stack, *[recipe.of(c).hparams() for c in cfgs])
    key = jax.random.wrap_key_data(stack(*[
        jax.random.key_data(jax.random.key(c.seed)) for c in cfgs]))
    pop = jax.tree.map(stack, *pops)
    p = jax.tree.map(lambda x: stack(*[x] * r), params)
  else:
    h, key, pop, p = (recipe.of(cfgs[0]).hparams(), jax.random.key(0),
                      pops[0], params)
  t = time.perf_counter()
  pop = jax.block_until_ready(round_.fill(p, round_.place(pop)))
  row['fill_s'] = time.perf_counter() - t   # once per stage, not per round
  state = round_.init(p, h)
  t = time.perf_counter()
  compiled = round_.lower(state, pop, key, h).compile()
  row['compile_s'] = time.perf_counter() - t
  mem = compiled.memory_analysis()
  row['xla_memory_gb'] = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                          + mem.temp_size_in_bytes) / 1e9 if mem else float('nan')
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


def _table(rows):
  table = ['| stage | R | clients/chunk | compile s | XLA GB | s/round '
           '| run-rounds/s | x R=1 | client-steps/s |',
           '|---|---|---|---|---|---|---|---|---|']
  for row in rows:
    if 'round_s' not in row:
      table.append(f'| {row["stage"]} | {row["runs"]} '
                   f'| {row["clients_per_chunk"]} | {row.get("skipped", "-")} '
                   '| - | - | - | - | - |')
      continue
    table.append(f'| {row["stage"]} | {row["runs"]} '
                 f'| {row["clients_per_chunk"]} | {row["compile_s"]:.1f} '
                 f'| {row["xla_memory_gb"]:.2f} | {row["round_s"]:.4f} '
                 f'| {row["run_rounds_per_s"]:.2f} '
                 f'| {row["speedup_vs_r1"]:.2f} '
                 f'| {row["client_steps_per_s"]:.1f} |')
  return '\n'.join(table)

if __name__ == '__main__':
  app.run(main)
