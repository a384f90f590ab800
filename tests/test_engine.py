"""The round engine against references written differently."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedrecon_jax import client, distributed, partition, rounds, server
from fedrecon_jax.config import Config, GEN_STAGE, TASK_STAGE
from fedrecon_jax.models import DataSpec, Model

SHAPES = ((5,), (7,), (4,))
SPEC = DataSpec(('a', 'b', 'c'), ('vector',) * 3, SHAPES, 3)
K = 6


def make_population(seed=0, sizes=(12, 30, 7, 20, 16, 25), missing=None):
  """Synthetic clients whose labels are learnable from every modality."""
  rng = np.random.default_rng(seed)
  n = sum(sizes)
  y = rng.integers(0, 3, n)
  xs = [(rng.normal(size=(n, *s)) + y[:, None]).astype(np.float32)
        for s in SHAPES]
  bounds = np.cumsum((0,) + tuple(sizes))
  idx = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
  if missing is None:
    missing = np.ones((len(sizes), 3), bool)
    missing[1, 0] = missing[3, 2] = missing[4, 1] = False
  return partition.stack_clients(xs, y.astype(np.int32), idx, missing)


def small_model():
  return Model(SPEC, latent_dim=4, gen_width=16, map_width=16, task_width=8)


def cfg_for(**kw):
  base = dict(workdir='/tmp/unused', num_clients=K, clients_per_round=4,
              batch_size=8, gen_lr=0.01, client_lr=0.05)
  return Config(**{**base, **kw})


def init_params(model):
  # Jitted: one program (shared through the compilation cache) instead of
  # an eager init's hundreds of small ones.
  return jax.jit(model.init)(jax.random.key(0))


def placed(mesh, *args):
  """Round arguments placed as train.run places them (replicated), so the
  first round and later ones (fed the outputs) run one program, and tests
  with the same round share it through the compilation cache."""
  return distributed.replicate(args, mesh)


def one_round(cfg, model, stage, params, population, key, mesh=None):
  mesh = mesh or rounds.make_mesh(1)
  fn, tx = rounds.make_round(cfg, model, stage, mesh, K)
  opt = rounds.init_server_opt(tx, params, cfg, stage)
  return fn(*placed(mesh, params, opt, population, key))


# The jitted server step (the tests' hand-stacked updates): one program per
# cohort size instead of an eager op-by-op step.
aggregate = jax.jit(server.aggregate, static_argnames='tx')


@pytest.fixture(scope='module')
def setup():
  model = small_model()
  return model, init_params(model), make_population()


@pytest.mark.parametrize('method,stage,server_opt', [
    ('fedrecon', GEN_STAGE, 'fedopt'),
    ('fedrecon', TASK_STAGE, 'fedavg'),
    ('fedrecon_no_map', GEN_STAGE, 'fedavg'),
])
def test_vmapped_round_equals_python_loop(setup, method, stage, server_opt):
  model, params, population = setup
  cfg = cfg_for(method=method, server_opt=server_opt)
  key = jax.random.key(3)
  got, _, _ = one_round(cfg, model, stage, params, population, key)
  opt = rounds.init_server_opt(server.server_optimizer(cfg, stage), params,
                               cfg, stage)
  want, _, _ = rounds.sequential_round(cfg, model, stage, params, opt,
                                       population, key, K)
  chex.assert_trees_all_close(got, want, atol=2e-5, rtol=1e-5)
  # The round did change what it trains (so equality is not vacuous).
  group = 'gen' if stage == GEN_STAGE else 'task'
  delta = jax.tree.map(lambda a, b: jnp.abs(a - b).max(), got[group],
                       params[group])
  assert max(jax.tree.leaves(delta)) > 1e-3


def test_masked_aggregation_ignores_clients_without_the_modality(setup):
  model, params, population = setup
  cfg = cfg_for()
  update = jax.jit(client.make_client_update(cfg, model, GEN_STAGE))
  trainable, frozen = rounds.split_params(params, ('gen', 'map'))
  take = lambda i: jax.tree.map(lambda x: x[i], population)
  key = jax.random.key(1)
  # Client 1 lacks modality 'a'; client 0 has it.
  outs = [update(trainable, frozen, take(i), key) for i in (0, 1)]
  assert float(outs[1][1]['gen']['enc']['a']['Dense_0']['kernel']) == 0.0
  stack = lambda *xs: jnp.stack(xs)
  tx = server.server_optimizer(cfg_for(server_opt='fedavg'), GEN_STAGE)
  both = aggregate(trainable, tx.init(trainable),
                          jax.tree.map(stack, *[o[0] for o in outs]),
                          jax.tree.map(stack, *[o[1] for o in outs]), tx)[0]
  only0 = aggregate(trainable, tx.init(trainable),
                           jax.tree.map(stack, outs[0][0]),
                           jax.tree.map(stack, outs[0][1]), tx)[0]
  chex.assert_trees_all_equal(both['gen']['enc']['a'], only0['gen']['enc']['a'])
  chex.assert_trees_all_close(only0['gen']['enc']['a'],
                              outs[0][0]['gen']['enc']['a'], rtol=1e-6)
  # ... while a modality both hold is a true average of the two.
  assert not np.allclose(both['gen']['enc']['b']['Dense_0']['kernel'],
                         only0['gen']['enc']['b']['Dense_0']['kernel'])


@pytest.mark.parametrize('method,weights,a_weight', [
    ('fedrecon', 'seen', 30.0),      # trained on Dec_a(T(a<-m)(mu_m))
    ('zero_fill', 'seen', 30.0),     # FedMultimodal: every sample counts
    ('fedrecon', 'present', 0.0),    # the ablation: real inputs only
])
def test_task_encoder_weight_follows_what_it_trained_on(setup, method, weights,
                                                         a_weight):
  model, params, population = setup
  cfg = cfg_for(method=method, task_encoder_weights=weights)
  update = jax.jit(client.make_client_update(cfg, model, TASK_STAGE))
  trainable, frozen = rounds.split_params(params, ('task',))
  take = lambda i: jax.tree.map(lambda x: x[i], population)
  # Client 1 (30 samples) lacks modality 'a'; client 0 (12) holds it.
  outs = [update(trainable, frozen, take(i), jax.random.key(1)) for i in (0, 1)]
  w = [o[1]['task']['enc']['a']['MLP_0']['Dense_0']['kernel'] for o in outs]
  assert (float(w[0]), float(w[1])) == (12.0, a_weight)
  assert float(outs[1][1]['task']['head']['Dense_0']['kernel']) == 30.0
  # FedAvg of task encoder 'a': sample-weighted mean written out by hand.
  tx = server.server_optimizer(cfg_for(server_opt='fedavg'), TASK_STAGE)
  stack = lambda *xs: jnp.stack(xs)
  got = aggregate(trainable, tx.init(trainable),
                         jax.tree.map(stack, *[o[0] for o in outs]),
                         jax.tree.map(stack, *[o[1] for o in outs]), tx)[0]
  kernel = lambda p: np.asarray(p['enc']['a']['MLP_0']['Dense_0']['kernel'])
  want = ((12.0 * kernel(outs[0][0]['task']) + a_weight * kernel(
      outs[1][0]['task'])) / (12.0 + a_weight))
  np.testing.assert_allclose(kernel(got['task']), want, rtol=1e-5, atol=1e-6)


def test_padding_changes_nothing(setup):
  model, params, population = setup
  cfg = cfg_for(local_epochs=2)
  take = lambda i: jax.tree.map(lambda x: x[i], population)
  data = take(2)                                  # 7 real samples of 30 slots
  pad = lambda x: x if x.ndim == 0 else np.concatenate(
      [x, np.zeros((37, *x.shape[1:]), x.dtype)])
  padded = jax.tree.map(pad, data)
  for stage, groups in ((GEN_STAGE, ('gen', 'map')), (TASK_STAGE, ('task',))):
    update = jax.jit(client.make_client_update(cfg, model, stage))
    trainable, frozen = rounds.split_params(params, groups)
    a = update(trainable, frozen, data, jax.random.key(5))
    b = update(trainable, frozen, padded, jax.random.key(5))
    chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)


def test_local_update_runs_only_the_clients_own_steps(setup):
  """Steps past a client's own data are skipped, not run masked: 7 real
  samples of 30 slots in batches of 4 take 2 steps per epoch, not 8."""
  _, _, population = setup
  data = jax.tree.map(lambda x: x[2], population)
  assert data.y.shape[0] == 30 and int(data.sample_mask.sum()) == 7
  batches = []

  def loss_fn(params, batch, key):
    del key
    jax.debug.callback(lambda m: batches.append(int(m.sum())), batch['mask'])
    return jnp.sum(params['w'] ** 2) * batch['mask'], {}

  update = jax.jit(lambda p, d, k: client.local_update(
      p, {}, d, k, loss_fn=loss_fn, tx=optax.sgd(0.1), batch_size=4,
      local_epochs=2))
  jax.block_until_ready(update({'w': jnp.ones(3)}, data, jax.random.key(0)))
  assert batches == [4, 3, 4, 3]                 # real samples per step run


def test_generator_frozen_in_stage2(setup):
  model, params, population = setup
  mesh = rounds.make_mesh(1)
  for method, frozen in (('fedrecon', True), ('fedrecon_no_freeze', False)):
    cfg = cfg_for(method=method)
    fn, tx = rounds.make_round(cfg, model, TASK_STAGE, mesh, K)
    opt = rounds.init_server_opt(tx, params, cfg, TASK_STAGE)
    p, opt, pop = placed(mesh, params, opt, population)
    for r in range(3):
      p, opt, _ = fn(p, opt, pop, *placed(mesh, jax.random.key(r)))
      same = jax.tree.leaves(jax.tree.map(
          lambda a, b: bool(jnp.array_equal(a, b)), p['gen'], params['gen']))
      assert all(same) == frozen, (method, r)


def test_non_finite_client_is_skipped(setup):
  model, params, _ = setup
  population = make_population()
  xs = list(population.xs)
  xs[1] = xs[1].copy()
  xs[1][3, 0, 0] = np.nan                        # one sample of client 3
  population = population.replace(xs=tuple(xs))
  cfg = cfg_for(clients_per_round=K)             # every client takes part
  for stage in (GEN_STAGE, TASK_STAGE):
    p, _, metrics = one_round(cfg, model, stage, params, population,
                              jax.random.key(0))
    assert int(metrics['skipped_clients']) == 1
    assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(p))


def test_no_recompilation_across_rounds(setup):
  model, params, population = setup
  cfg = cfg_for()
  mesh = rounds.make_mesh(1)
  fn, tx = rounds.make_round(cfg, model, GEN_STAGE, mesh, K)
  *state, pop = placed(mesh, params, rounds.init_server_opt(
      tx, params, cfg, GEN_STAGE), population)
  for r in range(3):
    p, o, _ = fn(*state, pop, *placed(mesh, jax.random.key(r)))
    state = (p, o)
  assert fn._cache_size() == 1


_EIGHT_DEVICE_SCRIPT = r'''
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
import test_engine as t
from fedrecon_jax import rounds
from fedrecon_jax.config import GEN_STAGE, TASK_STAGE
assert len(jax.devices()) == 8, jax.devices()
model = t.small_model()
params = t.init_params(model)
pop = t.make_population()
mesh = rounds.make_mesh()
p1, _, _ = t.one_round(t.cfg_for(), model, GEN_STAGE, params, pop, jax.random.key(7), mesh)
p2, _, _ = t.one_round(t.cfg_for(), model, TASK_STAGE, params, pop, jax.random.key(8), mesh)
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves((p1, p2))])
'''


def test_8_devices_match_1_device(setup, tmp_path):
  """4 clients on 8 CPU devices (4 zero-weight pads) == 4 clients on 1.
  The 1-device rounds run here: the programs of
  test_no_recompilation_across_rounds and test_generator_frozen_in_stage2."""
  model, params, population = setup
  want = [one_round(cfg_for(), model, stage, params, population,
                    jax.random.key(seed))[0]
          for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8))]
  out = str(tmp_path / '8.npz')
  # Keeps conftest's XLA flags (-O0; a shared compilation cache key).
  flags = os.environ.get('XLA_FLAGS', '')
  env = {**os.environ,
         'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count=8'}
  script = _EIGHT_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__),
                                       out=out)
  subprocess.run([sys.executable, '-c', script], env=env, check=True)
  with np.load(out) as f:
    got = [f[k] for k in sorted(f.files, key=lambda s: int(s[4:]))]
  want = jax.tree.leaves(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
