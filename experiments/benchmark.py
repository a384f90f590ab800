r"""Round throughput and memory: vmapped cohort vs chunked cohort vs a client loop.

  python -m experiments.benchmark        # canonical run, budget 9 min
  python -m experiments.benchmark --population=10000 --cohorts=1000 \
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
  auto           memory_plan.choose_round with --clients_per_device=auto: what
                 a training run picks (all at once if XLA says it fits
                 --memory_fraction of the device, else the largest chunk
                 that does); the note says which.
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

import json
import os
import platform
import resource
import statistics
import sys
import time

import dataclasses

from absl import app
from absl import flags

import jax
import jax.numpy as jnp
import numpy as np

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

GB = 1e9


# ------------------------------------------------------------ instruments


def reset_peak_rss() -> bool:
  """Resets the kernel's high-water mark of this process's RSS (VmHWM)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_gb() -> float:
  """VmHWM: peak RSS since the last reset_peak_rss (or process start)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024 / GB
  except OSError:
    pass
  return max_rss_gb()


def max_rss_gb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def best_seconds(f, *args, repeats: int = 5) -> float:
  """Best-of-`repeats` wall time of a jitted f(*args), after one warm call."""
  f(*args).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(*args).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return best


def _fastest(f, *args) -> float:
  """Best seconds of f compiled with XLA's defaults and as the round
  programs are (rounds.compiler_options): on CPU the first is faster for a
  large matmul (YNNPACK), the second for small batched ones."""
  from fedrecon_jax import rounds  # pylint: disable=g-import-not-at-top
  options = rounds.compiler_options(jax.default_backend())
  return min(best_seconds(jax.jit(f, compiler_options=o), *args)
             for o in (None, options))


def matmul_peak_gflops(n: int = 4096) -> float:
  """f32 [n, n] @ [n, n] under jit on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  return 2 * n**3 / _fastest(jnp.matmul, a, a) / GB


def per_client_matmul_gflops(clients: int = 256, rows: int = 16,
                             width: int = 256) -> float:
  """Batched [C, rows, w] @ [C, w, w]: one small matmul per client, the
  shape stage 1's MLPs run on a vmapped cohort."""
  k1, k2 = jax.random.split(jax.random.key(1))
  a = jax.random.normal(k1, (clients, rows, width), jnp.float32)
  b = jax.random.normal(k2, (clients, width, width), jnp.float32)
  f = lambda a, b: jnp.einsum('cij,cjk->cik', a, b)
  return 2 * clients * rows * width**2 / _fastest(f, a, b) / GB


def memory_gb(compiled) -> float | None:
  """What XLA says the program needs live: arguments + outputs + temps."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes
          + m.temp_size_in_bytes - m.alias_size_in_bytes) / GB


def save_program(compiled, path: str):
  """Optimized HLO text + memory analysis, to read where memory goes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.hlo.txt', 'w') as f:
    f.write(compiled.as_text())
  with open(path + '.memory.txt', 'w') as f:
    f.write(str(compiled.memory_analysis()))


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per program
    cost = cost[0]
  return float(cost.get('flops', 0.0))


# ---------------------------------------------------------------- workload


def tile_population(population, num_clients: int):
  """Client k <- base client k % K0: the padded store, K rows."""
  base = population.y.shape[0]
  rows = np.arange(num_clients) % base
  return jax.tree.map(lambda x: np.ascontiguousarray(x[rows]), population)


def workload(num_clients: int):
  """(model, host population [K, ...], base Config) of the canonical run."""
  from fedrecon_jax import experiment  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  base = Config(workdir='/tmp/fedrecon_benchmark_unused',
                num_clients=_BASE_CLIENTS.value, seed=_SEED.value)
  exp = experiment.build(base)
  population = tile_population(exp.population, num_clients)
  return exp.model, population, base


# ---------------------------------------------------------------- variants


class Runner:
  """One variant at one (stage, N): build + AOT compile, then rounds."""

  def __init__(self, variant, cfg, model, stage, mesh, num_clients,
               host_pop, device_pop, params):
    from fedrecon_jax import plan, rounds  # pylint: disable=g-import-not-at-top
    self.variant = variant
    self.kind = variant.removesuffix('_donate')
    self.cfg, self.stage, self.mesh = cfg, stage, mesh
    self.h = cfg.hparams()
    self.plan = plan.make_plan(cfg, model, stage, num_clients)
    self.save_hlo = ''
    self.note = ''
    self.params = params
    self.pop = device_pop
    self.round = None
    if self.kind == 'vmap':
      self.round = rounds.make_round(self.plan, mesh,
                                     donate=variant.endswith('_donate'))
    elif self.kind == 'chunked':
      # Built per N: the plan holds the population K its cohorts are drawn
      # from (reusing N=16's program ran 16 clients at every N).
      per_device = int(_PER_DEVICE.value[stage - 1])
      self.round = rounds.make_round(
          self.plan, mesh, clients_per_chunk=per_device * mesh.size,
          donate=variant.endswith('_donate'))
      n = cfg.clients_per_round
      pads = -(-n // self.round.chunk) * self.round.chunk - n
      self.note = f'chunk={self.round.chunk}, {pads} pads'
    elif self.kind == 'sequential':
      self.pop = host_pop
    elif self.kind != 'auto':
      raise ValueError(f'unknown variant {variant!r}')
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.place = lambda tree: jax.device_put(tree, replicated)
    if self.kind == 'sequential':
      # The loop runs its jitted update on one device, like FedJAX does.
      one = jax.devices()[0]
      self.place = lambda tree: jax.device_put(tree, one)

  def compile(self):
    """AOT-compiles (which also fills the jit cache). -> info dict."""
    from fedrecon_jax import memory_plan, rounds, server  # pylint: disable=g-import-not-at-top
    key = self.place(jax.random.key(0))
    self.params = self.place(self.params)
    # The stage's population (filled once per stage by a frozen generator);
    # not timed: train.py does it once per stage, not per round.
    self.pop = rounds.fill_population(self.plan, self.mesh, 0, self.params,
                                      self.pop)
    if self.kind == 'auto':
      # What train.py runs: the plan compiles its candidates; the chosen
      # program's jit call below reuses that compile.
      t = time.perf_counter()
      plan = memory_plan.choose_round(
          self.plan, self.mesh, self.params, self.pop, self.h,
          cfg=dataclasses.replace(self.cfg, clients_per_device='auto'))
      self.round = plan.round
      self.state = self.round.init(self.params, self.h)
      self.note = (f'auto: {plan.clients_per_device or "all"} per device, '
                   f'{plan.program_bytes / GB:.2f} of '
                   f'{plan.budget_bytes / GB:.1f} GB budget')
      return {'compile_s': time.perf_counter() - t, 'xla_flops_program': None,
              'xla_memory_gb': plan.program_bytes / GB,
              'program': 'round (memory plan)',
              'auto_clients_per_device': plan.clients_per_device}
    self.state = self.place(server.init_state(self.plan, self.params, self.h))
    if self.kind == 'sequential':
      # The same jit object sequential_round calls (cached on the plan).
      update, _ = rounds._sequential_parts(self.plan)  # pylint: disable=protected-access
      trainable, frozen = rounds.split_params(self.params, self.plan.groups)
      one = jax.tree.map(lambda x: x[0], self.pop)
      t = time.perf_counter()
      compiled = update.lower(self.h, trainable, frozen, one, key).compile()
      return {'compile_s': time.perf_counter() - t,
              'xla_flops_program': xla_flops(compiled),
              'xla_memory_gb': memory_gb(compiled),
              'program': 'one client update'}
    if self.variant.endswith('_donate'):
      # Fresh buffers: a donated one may not alias the driver's numpy copy.
      self.state = jax.tree.map(lambda x: x.copy(), self.state)
    t = time.perf_counter()
    compiled = self.round.lower(self.state, self.pop, key, self.h).compile()
    compile_s = time.perf_counter() - t
    if self.save_hlo:
      save_program(compiled, self.save_hlo)
    return {'compile_s': compile_s,
            'xla_flops_program': xla_flops(compiled),
            'xla_memory_gb': memory_gb(compiled), 'program': 'round'}

  def run_round(self, r: int) -> float:
    from fedrecon_jax import rounds  # pylint: disable=g-import-not-at-top
    key = self.place(jax.random.key(1000 + r))
    t = time.perf_counter()
    if self.kind == 'sequential':
      out = rounds.sequential_round(self.plan, self.state, self.pop, key,
                                    self.h)
      jax.block_until_ready(out)
      # Keep the server state fixed: every timed round is the same work.
      return time.perf_counter() - t
    state, metrics = self.round(self.state, self.pop, key, self.h)
    jax.block_until_ready((state, metrics))
    self.state = state
    return time.perf_counter() - t

  def cache_size(self) -> int | None:
    if self.kind == 'sequential':
      return None
    size = getattr(self.round.jitted, '_cache_size', None)
    return size() if size else None


# ------------------------------------------------------------------- driver


def client_flops(cfg, model, stage, host_pop, params) -> tuple[float, int]:
  """(FLOPs of one client's local update, its local steps)."""
  from fedrecon_jax import plan, rounds  # pylint: disable=g-import-not-at-top
  stage_plan = plan.make_plan(cfg, model, stage, host_pop.y.shape[0])
  update, _ = rounds._sequential_parts(stage_plan)  # pylint: disable=protected-access
  trainable, frozen = rounds.split_params(params, stage_plan.groups)
  pop = host_pop
  if stage_plan.fill is not None:   # what the round's clients read
    pop = jax.eval_shape(stage_plan.fill, params, host_pop)
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), pop)
  compiled = update.lower(cfg.hparams(), trainable, frozen, one,
                          jax.random.key(0)).compile()
  steps = -(-host_pop.y.shape[1] // cfg.batch_size) * cfg.local_epochs
  # XLA's cost analysis counts the body of the step loop once.
  return xla_flops(compiled) * steps, steps


def main(argv):
  del argv
  t_start = time.time()
  deadline = t_start + _BUDGET_S.value
  jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
  from fedrecon_jax import compile_stats, distributed, rounds  # pylint: disable=g-import-not-at-top

  compile_stats.start()
  cohorts = sorted(int(n) for n in _COHORTS.value)
  stages = [int(s) for s in _STAGES.value]
  num_clients = _POPULATION.value or max(cohorts)
  if num_clients < max(cohorts):
    raise app.UsageError(f'--population={num_clients} < max cohort.')
  load_start = os.getloadavg()
  peak = matmul_peak_gflops()
  ceiling = per_client_matmul_gflops()
  print(f'matmul peak: {peak:.1f} GFLOP/s (f32 4096^2, jit); per-client '
        f'ceiling {ceiling:.1f} GFLOP/s ([256, 16, 256] @ [256, 256, 256])',
        flush=True)

  t = time.perf_counter()
  model, host_pop, base_cfg = workload(num_clients)
  mesh = rounds.make_mesh(_CPU_DEVICES.value)
  device_pop = None
  if any(not v.startswith('sequential') for v in _VARIANTS.value):
    device_pop = distributed.replicate(host_pop, mesh)
  params = jax.device_get(model.init_params(jax.random.key(_SEED.value)))
  store_gb = sum(x.nbytes for x in jax.tree.leaves(host_pop)) / GB
  print(f'population: {num_clients} clients x max_n={host_pop.y.shape[1]} '
        f'({store_gb:.2f} GB store), setup {time.perf_counter() - t:.1f} s',
        flush=True)

  flops_per_client = {}
  results = []
  history = {}   # (stage, variant) -> dict(n, compile_s, round_s, memory_gb)
  for n in cohorts:
    # The cheap task stage first, so a tight budget cuts stage 1 at large N.
    for stage in sorted(stages, reverse=True):
      cfg = dataclasses.replace(base_cfg, num_clients=num_clients,
                                clients_per_round=n)
      if stage not in flops_per_client:
        seq_cfg = dataclasses.replace(
            cfg, clients_per_round=min(n, _SEQ_MAX.value))
        flops_per_client[stage] = client_flops(seq_cfg, model, stage,
                                               host_pop, params)
      f_client, steps = flops_per_client[stage]
      for variant in _VARIANTS.value:
        row = {'stage': stage, 'cohort': n, 'variant': variant,
               'steps_per_client': steps}
        results.append(row)
        seq = variant == 'sequential'
        ran = min(n, _SEQ_MAX.value) if seq else n
        run_cfg = dataclasses.replace(cfg, clients_per_round=ran)
        prev = history.get((stage, variant))
        # Skip without compiling when the last N already says it won't fit.
        if prev and not seq and prev['memory_gb']:
          guess = prev['memory_gb'] * n / prev['n']
          if guess > 1.25 * _MEMORY_GB.value:
            row['skipped'] = (f'memory: ~{guess:.1f} GB extrapolated from '
                              f'N={prev["n"]} > --memory_gb')
            print(f'stage {stage} N={n} {variant}: {row["skipped"]}',
                  flush=True)
            history[(stage, variant)] = {**prev, 'n': n, 'memory_gb': guess}
            continue
        warm_planned = _WARMUP.value
        rounds_wanted = warm_planned + _ROUNDS.value
        if prev:
          per_round = prev['round_s'] * ran / prev['ran']
          left = deadline - time.time() - prev['compile_s']
          fit = int(left // max(per_round, 1e-3))
          if fit < warm_planned + 1:
            row['skipped'] = (f'time budget: ~{per_round:.0f} s/round '
                              f'projected, {max(left, 0):.0f} s left')
            print(f'stage {stage} N={n} {variant}: {row["skipped"]}',
                  flush=True)
            continue
          rounds_wanted = min(rounds_wanted, fit)
        reset_peak_rss()
        before = compile_stats.snapshot().compiles
        runner = Runner(variant, run_cfg, model, stage, mesh, num_clients,
                        host_pop, device_pop, params)
        if _SAVE_HLO.value and variant == 'vmap' and n == max(cohorts):
          runner.save_hlo = os.path.join(_SAVE_HLO.value,
                                         f'stage{stage}_n{n}_vmap')
        info = runner.compile()
        info['compiles_in_aot'] = compile_stats.snapshot().compiles - before
        row.update(info)
        if info['xla_memory_gb'] and info['xla_memory_gb'] > _MEMORY_GB.value:
          row['skipped'] = (f'memory: XLA needs {info["xla_memory_gb"]:.1f} '
                            f'GB > --memory_gb')
          print(f'stage {stage} N={n} {variant}: {row["skipped"]}', flush=True)
          history[(stage, variant)] = {'n': n, 'ran': ran, 'round_s': 0.0,
                                       'compile_s': info['compile_s'],
                                       'memory_gb': info['xla_memory_gb']}
          del runner
          continue
        fresh = prev is None or info['compiles_in_aot'] > 0 or seq
        warm = min(_WARMUP.value if fresh else 0, rounds_wanted - 1)
        warm_times = [runner.run_round(r) for r in range(warm)]
        after_warmup = compile_stats.snapshot().compiles
        timed = [runner.run_round(r) for r in range(warm, rounds_wanted)]
        row['warmup_times_s'] = warm_times
        row['round_times_s'] = timed
        row['compiles_setup'] = after_warmup - before
        row['compiles_after_warmup'] = (compile_stats.snapshot().compiles
                                        - after_warmup)
        row['jit_cache_size'] = runner.cache_size()
        round_s = statistics.median(timed)
        row['rounds_timed'] = len(timed)
        row['clients_run'] = ran
        row['seconds_per_round_measured'] = round_s
        if ran < n:
          row['extrapolated'] = f'from {ran} of {n} clients, x{n / ran:g}'
          round_s *= n / ran
        row['seconds_per_round'] = round_s
        row['client_steps_per_s'] = n * steps / round_s
        row['gflops_per_s'] = n * f_client / round_s / GB
        row['fraction_of_peak'] = row['gflops_per_s'] / peak
        row['fraction_of_per_client_ceiling'] = row['gflops_per_s'] / ceiling
        row['peak_rss_gb'] = peak_rss_gb()
        if runner.note:
          row['note'] = runner.note
        history[(stage, variant)] = {'n': n, 'ran': ran,
                                     'round_s': statistics.median(timed),
                                     'compile_s': info['compile_s'],
                                     'memory_gb': info['xla_memory_gb']}
        print(f'stage {stage} N={n} {variant}: {round_s:.3f} s/round '
              f'{row["client_steps_per_s"]:.1f} client-steps/s '
              f'{row["gflops_per_s"]:.1f} GFLOP/s compile '
              f'{info["compile_s"]:.1f} s, XLA mem '
              f'{info["xla_memory_gb"] or 0:.2f} GB, compiles after warm-up '
              f'{row["compiles_after_warmup"]} {row.get("extrapolated", "")}',
              flush=True)
        del runner

  order = {v: i for i, v in enumerate(_VARIANTS.value)}
  results.sort(key=lambda r: (r['stage'], r['cohort'], order[r['variant']]))
  _add_ratios(results)
  report = {
      'machine': {
          'platform': platform.platform(), 'python': sys.version.split()[0],
          'jax': jax.__version__, 'cpu_count': os.cpu_count(),
          'devices': [str(d) for d in mesh.devices.flat],
          'matmul_peak_gflops': peak,
          'per_client_matmul_gflops': ceiling,
          'loadavg_start': load_start, 'loadavg_end': os.getloadavg(),
      },
      'workload': {
          'dataset': base_cfg.dataset, 'method': base_cfg.method,
          'batch_size': base_cfg.batch_size,
          'local_epochs': base_cfg.local_epochs,
          'population': num_clients, 'base_clients': _BASE_CLIENTS.value,
          'max_n': int(host_pop.y.shape[1]),
          'population_store_gb': store_gb,
          'flops_per_client_update': {str(s): f for s, (f, _) in
                                      flops_per_client.items()},
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
      'peak_rss_gb_process': max_rss_gb(),
      'wall_s': time.time() - t_start,
  }
  table = markdown_table(results, peak, ceiling)
  print(table)
  print(f'peak RSS (process): {max_rss_gb():.2f} GB; wall '
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
