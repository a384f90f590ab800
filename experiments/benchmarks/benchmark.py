r"""Round throughput and memory: vmapped cohort vs chunked cohort vs a client loop.

  python -m experiments.benchmarks.benchmark     # canonical run, budget 9 min
  python -m experiments.benchmarks.benchmark --population=10000 --cohorts=1000 \
      --variants=vmap,vmap_donate,chunked,chunked_donate,sequential \
      --rounds=1 --budget_s=1800 --out=experiments/results/benchmark_cpu_10k.json

Workload: FedRecon on uci_multifeature (6 modalities), stage 1 (generator +
mappings) and stage 2 (task model), batch 16, 1 local epoch, the Config
defaults otherwise. The 1600 training samples are Dirichlet-split (alpha 5)
into --base_clients clients; the population of --population clients is that
split tiled: client k holds base client k mod base_clients's data under its own
id (so its cohort key, hence shuffles and noise, differ). Per-client work is
then the same at every cohort size and time per round should be linear in N.

Variants, each timed in this process after a warm-up (median of --rounds):
  vmap           rounds.make_round: the whole cohort vmapped, one program.
  chunked        rounds.make_round(clients_per_chunk=...): the cohort run in
                 chunks of --clients_per_device x devices, one after another
                 inside one program, aggregation accumulated as it goes; the
                 program serves every N (compiled once per stage).
  auto           memory_plan.choose_round with --clients_per_device=auto, the
                 state donated: what a training run picks (all at once if
                 XLA says it fits --memory_fraction of the device, else the
                 largest chunk that does); the note says which.
  sequential     rounds.sequential_round: one jitted single-client update called
                 per client in Python, then server.aggregate over the stack.
                 At N > --seq_max_clients it runs a cohort of seq_max_clients
                 and the time is scaled by N / seq_max_clients ('extrapolated').
  *_donate       the variant with params / opt_state buffers donated.

Achieved GFLOP/s use the same numerator for every variant: N x the XLA cost
analysis of one client's update (x its step count: XLA counts a loop body
once) - the model's useful work, next to two ceilings measured in the same
process: a jitted f32 [4096, 4096] matmul (the device's large-matmul peak) and
the per-client matmul that bounds stage 1, [N, 16, 256] @ [N, 256, 256]
batched over N = 256 clients. A
variant whose compiled program XLA says needs more than --memory_gb is not
run; one that would not finish within --budget_s is skipped, and both say so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax

from experiments.benchmarks import instruments
from experiments.benchmarks.instruments import GB
from experiments.benchmarks.runner import Runner, client_flops, workload

_OUT = flags.DEFINE_string('out', 'experiments/results/benchmark_cpu.json',
                           'Where the JSON results go.')
_COHORTS = flags.DEFINE_list('cohorts', ['16', '64', '256', '1024'],
                             'Cohort sizes N (clients per round).')
_POPULATION = flags.DEFINE_integer('population', 0,
                                   'Clients K in the population (0 = max N).')
_BASE_CLIENTS = flags.DEFINE_integer(
    'base_clients', 200, 'Dirichlet clients of the real split, tiled to K.')
_STAGES = flags.DEFINE_list('stages', ['1', '2'], 'FedRecon stages to time.')
_VARIANTS = flags.DEFINE_list(
    'variants', ['vmap', 'chunked', 'sequential'],
    'Any of vmap, chunked, auto, sequential, with an optional _donate '
    'suffix on the first two.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds (median).')
_WARMUP = flags.DEFINE_integer('warmup', 1, 'Untimed rounds after compiling.')
_SEQ_MAX = flags.DEFINE_integer(
    'seq_max_clients', 16, 'Clients the sequential baseline really runs per '
    'round; larger N are extrapolated per client.')
_PER_DEVICE = flags.DEFINE_list(
    'clients_per_device', ['1', '8'], 'Chunk size per device of the chunked '
    'variants, for stage 1 and stage 2 (the best of 1/2/8/32 here: one client '
    'of the 23 MB generator at a time, 8 of the 0.6 MB task model).')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', 1, 'CPU devices of the clients mesh (jax_num_cpu_devices).')
_MEMORY_GB = flags.DEFINE_float(
    'memory_gb', 12.0, 'Skip programs XLA says need more than this (GB).')
_BUDGET_S = flags.DEFINE_float(
    'budget_s', 540.0, 'Wall-clock budget; configurations that would exceed '
    'it are skipped (smallest N first, so the large N go).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the split and the params.')
_SAVE_HLO = flags.DEFINE_string(
    'save_hlo', '', 'Directory: write the optimized HLO text and memory '
    'analysis of every vmap program at the largest N there.')

@dataclasses.dataclass
class _Bench:
  """What every (stage, N, variant) measurement shares."""
  model: Any
  mesh: Any
  num_clients: int
  host_pop: Any
  device_pop: Any
  params: Any
  peak: float          # GFLOP/s of a large matmul
  ceiling: float       # GFLOP/s of the per-client matmul
  deadline: float      # time.time() of the budget's end
  max_cohort: int
  # (stage, variant) -> dict(n, ran, compile_s, round_s, memory_gb)
  history: dict = dataclasses.field(default_factory=dict)


def _skip(bench: _Bench, row: dict, ran: int) -> int:
  """Rounds to run (warm-up included) for `row`, or 0 with row['skipped']
  set: a memory extrapolation or the time budget rules it out."""
  stage, n, variant = row['stage'], row['cohort'], row['variant']
  prev = bench.history.get((stage, variant))
  rounds_wanted = _WARMUP.value + _ROUNDS.value
  # Skip without compiling when the last N already says it won't fit.
  if prev and variant != 'sequential' and prev['memory_gb']:
    guess = prev['memory_gb'] * n / prev['n']
    if guess > 1.25 * _MEMORY_GB.value:
      row['skipped'] = (f'memory: ~{guess:.1f} GB extrapolated from '
                        f'N={prev["n"]} > --memory_gb')
      bench.history[(stage, variant)] = {**prev, 'n': n, 'memory_gb': guess}
      return 0
  if prev:
    per_round = prev['round_s'] * ran / prev['ran']
    left = bench.deadline - time.time() - prev['compile_s']
    fit = int(left // max(per_round, 1e-3))
    if fit < _WARMUP.value + 1:
      row['skipped'] = (f'time budget: ~{per_round:.0f} s/round '
                        f'projected, {max(left, 0):.0f} s left')
      return 0
    rounds_wanted = min(rounds_wanted, fit)
  return rounds_wanted


def _measure(bench: _Bench, row: dict, run_cfg, ran: int, rounds_wanted: int,
             f_client: float) -> None:
  """Compiles and times one (stage, N, variant) into `row`."""
  from fedrecon_jax import compile_stats  # pylint: disable=g-import-not-at-top
  stage, n, variant = row['stage'], row['cohort'], row['variant']
  prev = bench.history.get((stage, variant))
  instruments.reset_peak_rss()
  before = compile_stats.snapshot().compiles
  runner = Runner(variant, run_cfg, bench.model, stage, bench.mesh,
                  bench.num_clients, bench.host_pop, bench.device_pop,
                  bench.params, int(_PER_DEVICE.value[stage - 1]))
  if _SAVE_HLO.value and variant == 'vmap' and n == bench.max_cohort:
    runner.save_hlo = os.path.join(_SAVE_HLO.value, f'stage{stage}_n{n}_vmap')
  info = runner.compile()
  info['compiles_in_aot'] = compile_stats.snapshot().compiles - before
  row.update(info)
  history = {'n': n, 'ran': ran, 'round_s': 0.0,
             'compile_s': info['compile_s'],
             'memory_gb': info['xla_memory_gb']}
  bench.history[(stage, variant)] = history
  if info['xla_memory_gb'] and info['xla_memory_gb'] > _MEMORY_GB.value:
    row['skipped'] = (f'memory: XLA needs {info["xla_memory_gb"]:.1f} '
                      f'GB > --memory_gb')
    return
  fresh = prev is None or info['compiles_in_aot'] > 0 or variant == (
      'sequential')
  warm = min(_WARMUP.value if fresh else 0, rounds_wanted - 1)
  row['warmup_times_s'] = [runner.run_round(r) for r in range(warm)]
  after_warmup = compile_stats.snapshot().compiles
  timed = [runner.run_round(r) for r in range(warm, rounds_wanted)]
  row['round_times_s'] = timed
  row['compiles_setup'] = after_warmup - before
  row['compiles_after_warmup'] = (compile_stats.snapshot().compiles
                                  - after_warmup)
  history['round_s'] = round_s = statistics.median(timed)
  row['rounds_timed'] = len(timed)
  row['clients_run'] = ran
  row['seconds_per_round_measured'] = round_s
  if ran < n:
    row['extrapolated'] = f'from {ran} of {n} clients, x{n / ran:g}'
    round_s *= n / ran
  row['seconds_per_round'] = round_s
  row['client_steps_per_s'] = n * row['steps_per_client'] / round_s
  row['gflops_per_s'] = n * f_client / round_s / GB
  row['fraction_of_peak'] = row['gflops_per_s'] / bench.peak
  row['fraction_of_per_client_ceiling'] = row['gflops_per_s'] / bench.ceiling
  row['peak_rss_gb'] = instruments.peak_rss_gb()
  if runner.note:
    row['note'] = runner.note


def _setup(cohorts: list[int], deadline: float) -> tuple[_Bench, Any, dict]:
  """The ceilings and the tiled population: (bench, base Config, facts)."""
  from fedrecon_jax import distributed, rounds  # pylint: disable=g-import-not-at-top
  num_clients = _POPULATION.value or max(cohorts)
  if num_clients < max(cohorts):
    raise app.UsageError(f'--population={num_clients} < max cohort.')
  peak = instruments.matmul_peak_gflops()
  ceiling = instruments.per_client_matmul_gflops()
  print(f'matmul peak: {peak:.1f} GFLOP/s (f32 4096^2, jit); per-client '
        f'ceiling {ceiling:.1f} GFLOP/s ([256, 16, 256] @ [256, 256, 256])',
        flush=True)
  t = time.perf_counter()
  model, host_pop, base_cfg = workload(num_clients, _BASE_CLIENTS.value,
                                       _SEED.value)
  mesh = rounds.make_mesh(_CPU_DEVICES.value)
  device_pop = None
  if any(not v.startswith('sequential') for v in _VARIANTS.value):
    device_pop = distributed.replicate(host_pop, mesh)
  params = jax.device_get(model.init_params(jax.random.key(_SEED.value)))
  store_gb = sum(x.nbytes for x in jax.tree.leaves(host_pop)) / GB
  print(f'population: {num_clients} clients x max_n={host_pop.y.shape[1]} '
        f'({store_gb:.2f} GB store), setup {time.perf_counter() - t:.1f} s',
        flush=True)
  bench = _Bench(model, mesh, num_clients, host_pop, device_pop, params,
                 peak, ceiling, deadline, max(cohorts))
  return bench, base_cfg, {'max_n': int(host_pop.y.shape[1]),
                           'population_store_gb': store_gb}


def main(argv):
  del argv
  t_start = time.time()
  jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from fedrecon_jax import compile_stats  # pylint: disable=g-import-not-at-top
  compile_stats.start()
  cohorts = sorted(int(n) for n in _COHORTS.value)
  load_start = os.getloadavg()
  bench, base_cfg, facts = _setup(cohorts, t_start + _BUDGET_S.value)
  flops_per_client, results = {}, []
  for n in cohorts:
    # The cheap task stage first, so a tight budget cuts stage 1 at large N.
    for stage in sorted((int(s) for s in _STAGES.value), reverse=True):
      cfg = dataclasses.replace(base_cfg, num_clients=bench.num_clients,
                                clients_per_round=n)
      if stage not in flops_per_client:
        seq_cfg = dataclasses.replace(
            cfg, clients_per_round=min(n, _SEQ_MAX.value))
        flops_per_client[stage] = client_flops(
            seq_cfg, bench.model, stage, bench.host_pop, bench.params)
      f_client, steps = flops_per_client[stage]
      for variant in _VARIANTS.value:
        row = {'stage': stage, 'cohort': n, 'variant': variant,
               'steps_per_client': steps}
        results.append(row)
        ran = min(n, _SEQ_MAX.value) if variant == 'sequential' else n
        rounds_wanted = _skip(bench, row, ran)
        if rounds_wanted:
          _measure(bench, row, dataclasses.replace(cfg, clients_per_round=ran),
                   ran, rounds_wanted, f_client)
        if 'skipped' in row:
          print(f'stage {stage} N={n} {variant}: {row["skipped"]}',
                flush=True)
          continue
        print(f'stage {stage} N={n} {variant}: '
              f'{row["seconds_per_round"]:.3f} s/round '
              f'{row["client_steps_per_s"]:.1f} client-steps/s '
              f'{row["gflops_per_s"]:.1f} GFLOP/s compile '
              f'{row["compile_s"]:.1f} s, XLA mem '
              f'{row["xla_memory_gb"] or 0:.2f} GB, compiles after warm-up '
              f'{row["compiles_after_warmup"]} {row.get("extrapolated", "")}',
              flush=True)
  _write(bench, base_cfg, results, {
      **facts, 'flops_per_client_update': {
          str(s): f for s, (f, _) in flops_per_client.items()}},
         load_start, t_start)


def _write(bench: _Bench, base_cfg, results: list[dict], workload_facts: dict,
           load_start, t_start: float) -> None:
  """Sorts the rows, prints the table and writes the JSON (--out)."""
  from fedrecon_jax import compile_stats  # pylint: disable=g-import-not-at-top
  order = {v: i for i, v in enumerate(_VARIANTS.value)}
  results.sort(key=lambda r: (r['stage'], r['cohort'], order[r['variant']]))
  _add_ratios(results)
  report = {
      'machine': {
          'platform': platform.platform(), 'python': sys.version.split()[0],
          'jax': jax.__version__, 'cpu_count': os.cpu_count(),
          'devices': [str(d) for d in bench.mesh.devices.flat],
          'matmul_peak_gflops': bench.peak,
          'per_client_matmul_gflops': bench.ceiling,
          'loadavg_start': load_start, 'loadavg_end': os.getloadavg(),
      },
      'workload': {
          'dataset': base_cfg.dataset, 'method': base_cfg.method,
          'batch_size': base_cfg.batch_size,
          'local_epochs': base_cfg.local_epochs,
          'population': bench.num_clients,
          'base_clients': _BASE_CLIENTS.value, **workload_facts,
          'clients_per_device': _PER_DEVICE.value,
          'population_note': (
              'Dirichlet split (alpha 5, min 5 samples) of the 1600 train '
              'samples into base_clients clients, tiled to the population; '
              'copies differ only by client id (hence their keys).'),
      },
      'flags': {f: flags.FLAGS[f].value for f in (
          'cohorts', 'population', 'stages', 'variants', 'rounds', 'warmup',
          'seq_max_clients', 'clients_per_device', 'cpu_devices',
          'memory_gb', 'budget_s')},
      'results': results,
      'compiles_by_function': compile_stats.snapshot().by_function,
      'peak_rss_gb_process': instruments.max_rss_gb(),
      'wall_s': time.time() - t_start,
  }
  table = markdown_table(results, bench.peak, bench.ceiling)
  print(table)
  print(f'peak RSS (process): {instruments.max_rss_gb():.2f} GB; wall '
        f'{report["wall_s"]:.0f} s; load average {load_start} -> '
        f'{report["machine"]["loadavg_end"]}')
  report['table_markdown'] = table
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, 'w') as f:
    json.dump(report, f, indent=1, default=str)
  print(f'wrote {_OUT.value}')


def _add_ratios(results):
  """speedup_vs_sequential on every row that has a sequential partner."""
  seq = {(r['stage'], r['cohort']): r.get('seconds_per_round')
         for r in results if r['variant'] == 'sequential'}
  for r in results:
    s = seq.get((r['stage'], r['cohort']))
    if s and r.get('seconds_per_round') and r['variant'] != 'sequential':
      r['speedup_vs_sequential'] = s / r['seconds_per_round']


def markdown_table(results, peak, ceiling) -> str:
  head = ('| stage | N | variant | s/round | client-steps/s | x seq | GFLOP/s '
          f'| % of peak ({peak:.0f}) | % of per-client ({ceiling:.0f}) '
          '| compile s | XLA mem GB | peak RSS GB | compiles '
          'setup / after warm-up | note |')
  lines = [head, '|' + '---|' * 14]
  for r in results:
    if 'skipped' in r:
      lines.append(f'| {r["stage"]} | {r["cohort"]} | {r["variant"]} | - | - '
                   f'| - | - | - | - | {_fmt(r.get("compile_s"))} '
                   f'| {_fmt(r.get("xla_memory_gb"))} | - | - | '
                   f'skipped: {r["skipped"]} |')
      continue
    note = '; '.join(x for x in (r.get('extrapolated', ''),
                                 r.get('note', '')) if x)
    lines.append(
        f'| {r["stage"]} | {r["cohort"]} | {r["variant"]} '
        f'| {r["seconds_per_round"]:.3f} | {r["client_steps_per_s"]:.1f} '
        f'| {_fmt(r.get("speedup_vs_sequential"))} '
        f'| {r["gflops_per_s"]:.1f} | {100 * r["fraction_of_peak"]:.1f} '
        f'| {100 * r["fraction_of_per_client_ceiling"]:.1f} '
        f'| {r["compile_s"]:.1f} '
        f'| {_fmt(r.get("xla_memory_gb"))} | {r["peak_rss_gb"]:.2f} '
        f'| {r["compiles_setup"]} / {r["compiles_after_warmup"]} | {note} |')
  return '\n'.join(lines)


def _fmt(x) -> str:
  return '-' if x is None else f'{x:.2f}'


if __name__ == '__main__':
  app.run(main)
