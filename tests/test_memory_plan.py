"""--clients_per_device=auto: a cohort that does not fit all at once is
chunked until it fits, and the chunked round equals the all-at-once one."""

import types

import chex
import jax
import numpy as np
import pytest

from fedrecon_jax import memory_plan, recipe, rounds
from fedrecon_jax.methods import TASK_STAGE
from fedrecon_jax.hparams import Hparams

import toy as t

K = 1024


@pytest.fixture(scope='module')
def big():
  rng = np.random.default_rng(0)
  present = rng.random((K, 3)) > 0.3
  present[:, 0] |= ~present.any(1)
  model = t.small_model()
  params = model.init_params(jax.random.key(0))
  population = t.make_population(sizes=tuple(rng.integers(2, 7, K)),
                                 missing=present)
  mesh = rounds.make_mesh(1)
  return model, params, population, mesh


def plan(big, **kw):
  model, params, population, mesh = big
  cfg = t.cfg_for(num_clients=K, server_opt='fedavg', **kw)
  stage_plan = recipe.of(cfg).plan(model, TASK_STAGE, K)
  return memory_plan.choose_round(
      stage_plan, mesh, params,
      rounds.fill_population(stage_plan, mesh, 0, params, population),
      Hparams.of(cfg), cfg=cfg)


# Each compiles a round to read its memory plan (~20 s): slow; CI runs both
# tiers.
@pytest.mark.slow
def test_auto_chunks_a_1024_client_round_that_does_not_fit(big, monkeypatch):
  # The memory rule alone (on CPU `auto` also caps clients in flight).
  monkeypatch.setattr(memory_plan, 'CPU_IN_FLIGHT', {1: K, 2: K})
  _, params, population, _ = big
  whole = plan(big, clients_per_round=K, device_memory_gb=1e3)
  assert whole.clients_per_device == 0            # fits a 1 TB device
  # A device that holds a third of what the all-at-once round needs.
  limit_gb = whole.program_bytes / 3 / 2**30
  chunked = plan(big, clients_per_round=K, memory_fraction=1.0,
                 device_memory_gb=limit_gb)
  assert 0 < chunked.clients_per_device < K
  assert chunked.program_bytes <= limit_gb * 2**30 < whole.program_bytes
  h, key = Hparams.of(t.cfg_for()), jax.random.key(4)
  got, want = (p.round(p.round.init(params, h),
                       p.round.fill(params, p.round.place(population)), key,
                       h)[0] for p in (chunked, whole))
  chex.assert_trees_all_close(got, want, atol=2e-5, rtol=1e-5)



@pytest.mark.slow
def test_auto_runs_per_program_fits_the_budget(env):
  """--runs_per_program=auto off CPU: R = budget // a solo run's program
  bytes, and the group program of that R really fits the budget; on CPU 1."""
  import tiny  # pylint: disable=g-import-not-at-top
  from fedrecon_jax import experiment, partition  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  cfgs = [Config(workdir='/tmp/unused', method='zero_fill', seed=s,
                 data_dir=env['TFDS_DATA_DIR'], **tiny.MODEL)
          for s in range(5)]
  per_run = memory_plan.solo_round_bytes(cfgs[0])
  budget = int(3.5 * per_run)
  assert memory_plan.fit_runs(5, per_run, budget, 'gpu') == 3
  assert memory_plan.fit_runs(2, per_run, budget, 'gpu') == 2
  assert memory_plan.fit_runs(5, per_run, per_run // 2, 'gpu') == 1
  assert memory_plan.fit_runs(5, per_run, budget, 'cpu') == 1
  assert memory_plan.runs_per_program(cfgs[0], 5) == 1      # this CPU
  # Three runs' group program, as train.run_group builds it.
  exps = [experiment.build(c) for c in cfgs[:3]]
  n = max(e.population.y.shape[1] for e in exps)
  pop = t.stacked(*[partition.pad_clients(e.population, n) for e in exps])
  stage_plan = recipe.of(cfgs[0]).plan(exps[0].model, TASK_STAGE,
                                       cfgs[0].num_clients)
  group = rounds.make_round(stage_plan, rounds.make_mesh(1), runs=3)
  params = exps[0].model.init_params(jax.random.key(0))
  h = t.stacked(*[Hparams.of(c) for c in cfgs[:3]])
  params = t.stacked(*[params] * 3)
  pop = group.fill(params, group.place(pop))
  compiled = group.lower(group.init(params, h), pop,
                         jax.random.split(jax.random.key(0), 3), h).compile()
  assert 2.5 * per_run < memory_plan.program_bytes(compiled) <= budget


def _fake_plan(max_per_device, cap, bytes_per_client=1, budget=10**9):
  """plan_round over stand-in programs whose bytes grow with the chunk."""
  compiled = lambda k: types.SimpleNamespace(memory_analysis=lambda: (
      types.SimpleNamespace(argument_size_in_bytes=0, output_size_in_bytes=0,
                            alias_size_in_bytes=0, temp_size_in_bytes=(
                                k or max_per_device) * bytes_per_client)))
  lowered = lambda k: types.SimpleNamespace(compile=lambda: compiled(k))
  return memory_plan.plan_round(lambda k: k, lowered, setting='auto',
                                max_per_device=max_per_device,
                                budget_bytes=budget, cap=cap)


def test_auto_on_cpu_caps_clients_in_flight():
  """CPU: stage 1 one client at a time, stage 2 up to 10 in flight over all
  runs of a group, in even chunks; memory can only lower that; other
  platforms start from all at once."""
  cap = memory_plan.speed_cap
  assert cap(1, 0, 'cpu') == 1 and cap(1, 8, 'cpu') == 1
  assert cap(2, 0, 'cpu') == 10 and cap(2, 4, 'cpu') == 2
  assert cap(2, 64, 'cpu') == 1 and cap(1, 0, 'gpu') is None
  assert _fake_plan(10, cap(1, 0, 'cpu')).clients_per_device == 1
  assert _fake_plan(10, cap(2, 0, 'cpu')).clients_per_device == 0   # all
  assert _fake_plan(12, cap(2, 0, 'cpu')).clients_per_device == 6   # 2 x 6
  assert _fake_plan(10, cap(2, 4, 'cpu')).clients_per_device == 2
  assert _fake_plan(10, None).clients_per_device == 0
  # Memory below the cap: halves from the cap, never back up past it.
  assert _fake_plan(1024, 10, budget=4).clients_per_device == 4
