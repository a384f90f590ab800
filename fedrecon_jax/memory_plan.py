"""Choosing how many clients a device trains at once (`--clients_per_device`).

A vmapped cohort holds every client's params, optimizer state and
activations at once, so the all-at-once round stops fitting somewhere between
a few hundred and a few thousand clients, depending on the model and device.
With `--clients_per_device=auto` the round program is compiled all at once
first (the program the run needs anyway when it fits, so small cohorts pay
nothing extra); if XLA's memory analysis of the compiled program exceeds the
budget, a chunked program (`rounds.make_round(clients_per_chunk=...)`) is
compiled at the
power of two below the proportional guess, halving until one fits.

The budget is `--memory_fraction` of one device's memory: the bytes_limit of
`device.memory_stats()` on GPU/TPU, else `--device_memory_gb`, else (CPU) the
host's physical memory shared by its local devices.

On CPU, memory is rarely the limit but speed is: more clients in flight than
the caches hold run slower than a loop over chunks (CPU_IN_FLIGHT), so
`auto` starts there, counting every run of a group, and halves further only
for memory.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

from absl import logging
import jax
import numpy as np

from fedrecon_jax import rounds, server
from fedrecon_jax.config import Config
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE


# Clients in flight per CPU device that run a round fastest, measured on a
# 2-core VM (experiments/results/benchmark_cpu.md, runs_benchmark_cpu.md):
# in stage 1 each client carries a whole generator and its optimizer state,
# and one at a time runs faster than the cohort at once; stage 2's small
# task models slow down past about ten at once.
CPU_IN_FLIGHT = {GEN_STAGE: 1, TASK_STAGE: 10}


def speed_cap(stage: int, runs: int, platform: str) -> int | None:
  """Clients per device and run that `auto` starts from (None: all)."""
  if platform != 'cpu':
    return None
  return max(1, CPU_IN_FLIGHT[stage] // max(runs, 1))


@dataclasses.dataclass(frozen=True)
class Plan:
  """The chosen round program and what it was measured to need."""
  round: Any                    # the rounds.Round program
  clients_per_device: int       # 0 = the whole cohort at once
  program_bytes: int            # per device, from XLA's memory analysis
  budget_bytes: int


def device_memory_bytes(device_memory_gb: float = 0.0) -> int:
  """Memory of one local device: the flag if > 0, else what the device
  reports, else (CPU) physical memory / local devices."""
  if device_memory_gb > 0:
    return int(device_memory_gb * 2**30)
  device = jax.local_devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and stats.get('bytes_limit'):
    return int(stats['bytes_limit'])
  physical = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return physical // jax.local_device_count()


def program_bytes(compiled) -> int:
  """Per-device bytes a compiled program needs (arguments, outputs, temps)."""
  ma = compiled.memory_analysis()
  total = (ma.argument_size_in_bytes + ma.output_size_in_bytes
           - ma.alias_size_in_bytes + ma.temp_size_in_bytes)
  return int(max(total, getattr(ma, 'peak_memory_in_bytes', 0) or 0))


def plan_round(build: Callable[[int], Any], lower: Callable[[Any], Any], *,
               max_per_device: int,
               setting, budget_bytes: int, cap: int | None = None) -> Plan:
  """Picks the round program for a `--clients_per_device` setting.

  Args:
    build: clients_per_device -> rounds.Round; 0 builds the all-at-once
      round, k > 0 the chunked one.
    lower: Round -> its jax `Lowered` for this run's arguments.
    max_per_device: ceil(cohort / devices), where chunking stops mattering.
    setting: an int >= 0 (used as given, nothing compiled here) or 'auto'.
    budget_bytes: what one device may hold.
    cap: with 'auto', chunks of at most this many clients per device even
      when more fit (speed_cap); None = all at once if it fits.
  """
  if setting != 'auto':
    return Plan(build(int(setting)), int(setting), 0, budget_bytes)
  per_device, size = 0, max_per_device
  if cap is not None and cap < max_per_device:
    # Even chunks: a cohort of 10 with a cap of 8 runs 2 x 5, not 2 x 8.
    per_device = size = -(-max_per_device // -(-max_per_device // cap))
  while True:
    round_ = build(per_device)
    need = program_bytes(lower(round_).compile())
    logging.info('clients_per_device=%s needs %.3g GB (budget %.3g GB)',
                 per_device or 'all', need / 1e9, budget_bytes / 1e9)
    if need <= budget_bytes or size <= 1:
      if need > budget_bytes:
        logging.warning('Even one client per device needs %.3g GB, over the '
                        'budget of %.3g GB.', need / 1e9, budget_bytes / 1e9)
      return Plan(round_, per_device, need, budget_bytes)
    # Memory grows about linearly with the chunk: jump to the power of two
    # below the proportional guess (one or two compiles), then halve.
    guess = max(int(size * budget_bytes / need), 1)
    per_device = size = min(2 ** (guess.bit_length() - 1), size // 2)


def choose_round(stage_plan, mesh, params, population, h, *, runs: int = 0,
               cfg: Config, donate: bool = False) -> Plan:
  """The round program of a stage, chunked as cfg.clients_per_device says
  (donate: see rounds.make_round).

  Config fields: clients_per_device, memory_fraction, device_memory_gb.
  `params` (every group), `population` (as placed on the mesh) and h are
  this run's arguments (with a leading runs axis if runs), used to lower
  the candidates.
  """
  clients = mesh.shape[rounds.CLIENTS]

  def build(per_device):
    return rounds.make_round(stage_plan, mesh, runs=runs,
                             clients_per_chunk=per_device * clients,
                             donate=donate)

  def lower(round_):
    key = jax.random.key(0)
    if runs:
      key = jax.random.split(key, runs)
    return round_.lower(round_.init(params, h), population, key, h)

  budget = cfg.memory_fraction * device_memory_bytes(cfg.device_memory_gb)
  return plan_round(build, lower, setting=cfg.chunk_setting,
                    max_per_device=-(-stage_plan.cohort // clients),
                    budget_bytes=int(budget),
                    cap=speed_cap(stage_plan.stage, runs,
                                  jax.default_backend()))


def solo_round_bytes(cfg: Config) -> int:
  """Bytes one run of cfg's program needs on one device: the larger of its
  stages' all-at-once round programs (XLA's memory analysis, compiled here)."""
  from fedrecon_jax import experiment  # pylint: disable=g-import-not-at-top
  exp = experiment.build(cfg)
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  h, mesh = exp.recipe.hparams(), rounds.make_mesh(1)
  need = 0
  for stage in exp.recipe.stages:
    stage_plan = exp.recipe.plan(exp.model, stage, exp.population.y.shape[0])
    round_ = rounds.make_round(stage_plan, mesh)
    state = jax.eval_shape(functools.partial(
        server.init_state, stage_plan, round_=0), params, h)
    population = (exp.population if stage_plan.fill is None else
                  jax.eval_shape(stage_plan.fill, params, exp.population))
    lowered = round_.jitted.lower(state, population, jax.random.key(0),
                                  h, np.int32(stage_plan.cohort))
    need = max(need, program_bytes(lowered.compile()))
  return need


def fit_runs(cells: int, per_run_bytes: int, budget_bytes: int,
             platform: str) -> int:
  """--runs_per_program=auto for `cells` runs that share a program.

  CPU: 1. A CPU round of R runs costs about R solo rounds or more
  (experiments/results/runs_benchmark_cpu.md): grouping saves only the
  compiles, which a schedule of tens of rounds gives back. Accelerators: as
  many as the budget holds at per_run_bytes each (a solo program, whose
  launches leave the device idle: runs_benchmark_gpu_h200.md); the group's
  own --clients_per_device=auto still chunks clients if R runs need more.
  """
  if platform == 'cpu':
    return 1
  return max(1, min(cells, budget_bytes // max(per_run_bytes, 1)))


def runs_per_program(cfg: Config, cells: int) -> int:
  """fit_runs for cfg's program on this process's devices."""
  platform = jax.default_backend()
  if platform == 'cpu' or cells <= 1:
    return 1
  budget = (cfg.memory_fraction * jax.local_device_count()
            * device_memory_bytes(cfg.device_memory_gb))
  runs = fit_runs(cells, solo_round_bytes(cfg), int(budget), platform)
  logging.info('runs_per_program=auto: %d of %d cells per program', runs,
               cells)
  return runs
