"""The round engine against references written differently."""

import jax
import jax.numpy as jnp
import pytest

from fedrecon_jax import rounds
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
from fedrecon_jax.hparams import Hparams

import toy


@pytest.fixture(scope='module')
def setup():
  return toy.init_params(toy.small_model()), toy.make_population()


@pytest.mark.parametrize('method,stage,server_opt', [
    ('fedrecon', GEN_STAGE, 'fedopt'),
    ('fedrecon', TASK_STAGE, 'fedavg'),
    ('fedrecon_no_map', GEN_STAGE, 'fedavg'),
])
def test_vmapped_round_equals_python_loop(setup, method, stage, server_opt):
  params, population = setup
  cfg = toy.cfg_for(method=method, server_opt=server_opt)
  key = jax.random.key(3)
  got, _ = toy.one_round(cfg, stage, params, population, key)
  want, _ = toy.sequential_round(cfg, stage, params, population, key)
  toy.leaves_close(got, want, 2e-5)
  # The round did change what it trains (so equality is not vacuous).
  group = 'gen' if stage == GEN_STAGE else 'task'
  delta = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), got[group],
                       params[group])
  assert max(jax.tree.leaves(delta)) > 1e-3


def test_generator_frozen_in_stage2(setup):
  params, population = setup
  for method, frozen in (('fedrecon', True), ('fedrecon_no_freeze', False)):
    cfg = toy.cfg_for(method=method)
    round_, h = toy.make_round(cfg, TASK_STAGE), Hparams.of(cfg)
    state = round_.init(params, h)
    pop = round_.fill(params, round_.place(population))
    for r in range(3):
      state, _ = round_(state, pop, jax.random.key(r), h)
      same = jax.tree.leaves(jax.tree.map(
          lambda a, b: bool(jnp.array_equal(a, b)), state.params['gen'],
          params['gen']))
      assert all(same) == frozen, (method, r)


def test_non_finite_client_is_skipped(setup):
  params, _ = setup
  population = toy.with_nan_client()
  cfg = toy.cfg_for(clients_per_round=toy.K)     # every client takes part
  for stage in (GEN_STAGE, TASK_STAGE):
    p, metrics = toy.one_round(cfg, stage, params, population,
                               jax.random.key(0))
    assert int(metrics['skipped_clients']) == 1
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(p))


def test_server_step_overflow_reads_as_non_finite(setup):
  # What a run stops on (train._divergence): the server step's params.
  params, population = setup
  for server_lr, finite in ((1e-2, True), (1e38, False)):
    cfg = toy.cfg_for(server_opt='fedopt', server_lr=server_lr)
    _, metrics = toy.one_round(cfg, TASK_STAGE, params, population,
                               jax.random.key(0))
    assert bool(metrics['params_finite']) == finite, server_lr


def test_cpu_round_options_yield_to_xla_flags(monkeypatch):
  """Round programs on CPU keep dots out of YNNPACK, unless XLA_FLAGS says
  otherwise; other platforms keep XLA's defaults."""
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  assert rounds.compiler_options('cpu') == {
      'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_REDUCE'}
  assert rounds.compiler_options('gpu') is None
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=')
  assert rounds.compiler_options('cpu') is None
