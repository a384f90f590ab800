"""One client's update and its aggregation weights, against hand-written
references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedrecon_jax import client, rounds, server
from fedrecon_jax.methods import base, fedrecon
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
from fedrecon_jax.hparams import Hparams
from fedrecon_jax import recipe

from toy import cfg_for, init_params, make_population, small_model
import toy

# The jitted server step (the tests' hand-stacked updates): one program per
# cohort size instead of an eager op-by-op step.
aggregate = jax.jit(server.aggregate, static_argnames='tx')


def fedavg(stage):
  cfg = cfg_for(server_opt='fedavg')
  return base.server_tx(cfg, stage)(Hparams.of(cfg))


@pytest.fixture(scope='module')
def setup():
  model = small_model()
  return model, init_params(model), make_population()


def test_masked_aggregation_ignores_clients_without_the_modality(setup):
  model, params, population = setup
  cfg = cfg_for()
  update = toy.stage_plan(cfg, GEN_STAGE).client_update
  trainable, frozen = rounds.split_params(params, ('gen', 'map'))
  take = lambda i: jax.tree.map(lambda x: x[i], population)
  key = jax.random.key(1)
  # Client 1 lacks modality 'a'; client 0 has it.
  h = Hparams.of(cfg)
  outs = [update(h, trainable, frozen, take(i), key) for i in (0, 1)]
  enc = lambda params, i: model.member(params['gen']['enc'], i)
  assert float(outs[1][1]['gen']['enc']['mlp']['Dense_0']['kernel'][0]) == 0.0
  stack = lambda *xs: jnp.stack(xs)
  tx = fedavg(GEN_STAGE)
  both = aggregate(trainable, server.init_opt_state(tx, trainable),
                          jax.tree.map(stack, *[o[0] for o in outs]),
                          jax.tree.map(stack, *[o[1] for o in outs]), tx)[0]
  only0 = aggregate(trainable, server.init_opt_state(tx, trainable),
                           jax.tree.map(stack, outs[0][0]),
                           jax.tree.map(stack, outs[0][1]), tx)[0]
  chex.assert_trees_all_equal(enc(both, 0), enc(only0, 0))
  chex.assert_trees_all_close(enc(only0, 0), enc(outs[0][0], 0), rtol=1e-6)
  # ... while a modality both hold is a true average of the two.
  assert not np.allclose(enc(both, 1)['Dense_0']['kernel'],
                         enc(only0, 1)['Dense_0']['kernel'])


@pytest.mark.parametrize('method,weights,a_weight', [
    ('fedrecon', 'seen', 30.0),      # trained on Dec_a(T(a<-m)(mu_m))
    ('zero_fill', 'seen', 30.0),     # FedMultimodal: every sample counts
    ('fedrecon', 'present', 0.0),    # the ablation: real inputs only
])
def test_task_encoder_weight_follows_what_it_trained_on(setup, method, weights,
                                                         a_weight):
  model, params, population = setup
  cfg = cfg_for(method=method, task_encoder_weights=weights)
  update = toy.stage_plan(cfg, TASK_STAGE).client_update
  trainable, frozen = rounds.split_params(params, ('task',))
  population = toy.filled(cfg, TASK_STAGE, params, population)
  take = lambda i: jax.tree.map(lambda x: x[i], population)
  # Client 1 (30 samples) lacks modality 'a'; client 0 (12) holds it.
  h = Hparams.of(cfg)
  outs = [update(h, trainable, frozen, take(i), jax.random.key(1))
          for i in (0, 1)]
  w = [model.member(o[1]['task']['enc'], 0, task=True)['MLP_0']['Dense_0'][
      'kernel'] for o in outs]
  assert (float(w[0]), float(w[1])) == (12.0, a_weight)
  assert float(outs[1][1]['task']['head']['Dense_0']['kernel']) == 30.0
  # FedAvg of task encoder 'a': sample-weighted mean written out by hand.
  tx = fedavg(TASK_STAGE)
  stack = lambda *xs: jnp.stack(xs)
  got = aggregate(trainable, server.init_opt_state(tx, trainable),
                         jax.tree.map(stack, *[o[0] for o in outs]),
                         jax.tree.map(stack, *[o[1] for o in outs]), tx)[0]
  kernel = lambda p: np.asarray(model.member(p['enc'], 0, task=True)['MLP_0'][
      'Dense_0']['kernel'])
  want = ((12.0 * kernel(outs[0][0]['task']) + a_weight * kernel(
      outs[1][0]['task'])) / (12.0 + a_weight))
  np.testing.assert_allclose(kernel(got['task']), want, rtol=1e-5, atol=1e-6)


def test_padding_changes_nothing(setup):
  model, params, population = setup
  cfg = cfg_for(local_epochs=2)
  pad = lambda x: x if x.ndim == 0 else np.concatenate(
      [x, np.zeros((37, *x.shape[1:]), x.dtype)])
  for stage, groups in ((GEN_STAGE, ('gen', 'map')), (TASK_STAGE, ('task',))):
    # Client 2: 7 real samples of 30 slots.
    data = jax.tree.map(lambda x: x[2], toy.filled(cfg, stage, params,
                                                   population))
    padded = jax.tree.map(pad, data)
    update = toy.stage_plan(cfg, stage).client_update
    trainable, frozen = rounds.split_params(params, groups)
    h = Hparams.of(cfg)
    a = update(h, trainable, frozen, data, jax.random.key(5))
    b = update(h, trainable, frozen, padded, jax.random.key(5))
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


def test_one_step_clients_take_one_step_and_empty_ones_none(setup):
  """All slots fit one batch (the loop-free path): a client with samples
  takes one step of (decay 0.5 + SGD 0.1) on sum(w^2), w -> w - 0.1 (2w +
  0.5w) = 0.75 w; an empty client keeps w (decay alone would move it)."""
  _, _, population = setup
  data = jax.tree.map(lambda x: x[2], population)
  assert data.y.shape[0] <= 32 and int(data.sample_mask.sum()) == 7

  def loss_fn(params, batch, key):
    del key
    return jnp.sum(params['w'] ** 2) * batch['mask'], {}

  tx = optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1))
  update = jax.jit(lambda p, d: client.local_update(
      p, {}, d, jax.random.key(0), loss_fn=loss_fn, tx=tx, batch_size=32,
      local_epochs=1)[0])
  w = jnp.array([1.0, -2.0, 0.5])
  np.testing.assert_allclose(update({'w': w}, data)['w'], 0.75 * w, rtol=1e-6)
  empty = data.replace(sample_mask=np.zeros_like(data.sample_mask))
  np.testing.assert_array_equal(update({'w': w}, empty)['w'], w)


def test_filling_once_per_stage_equals_completing_every_step(setup):
  """A frozen generator's reconstructions computed once for the population
  (client.make_fill) train the task model as completing each batch at each
  step did; a round refuses the population it does not expect."""
  model, params, population = setup
  cfg = cfg_for(local_epochs=2)
  trainable, frozen = rounds.split_params(params, ('task',))
  h, key = Hparams.of(cfg), jax.random.key(2)
  data = jax.tree.map(lambda x: x[1], population)   # 'a' absent: filled
  filled = jax.tree.map(lambda x: x[1], toy.filled(cfg, TASK_STAGE, params,
                                                   population))
  assert not np.array_equal(filled.xs[0], data.xs[0])
  update = toy.stage_plan(cfg, TASK_STAGE).client_update
  got = update(h, trainable, frozen, filled, key)
  with pytest.raises(ValueError, match='filled by rounds.fill_population'):
    update(h, trainable, frozen, data, key)
  every_step = fedrecon.task_stage(recipe.of(cfg), model,
                                   train_generator=False, fill_once=False)
  assert every_step.fill is None
  want = every_step.client_update(h, trainable, frozen, data, key)
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('method,train_map,fills', [
    ('fedrecon', False, True), ('fedrecon_no_map', False, True),
    ('fedrecon', True, False),              # T trains on: no frozen fill
    ('fedrecon_no_freeze', False, False), ('zero_fill', False, False)])
def test_only_a_frozen_generator_fills_once(method, train_map, fills):
  cfg = cfg_for(method=method, train_mapping_in_stage2=train_map)
  assert (toy.stage_plan(cfg, TASK_STAGE).fill is not None) is fills
  if recipe.of(cfg).generator is not None:
    assert toy.stage_plan(cfg, GEN_STAGE).fill is None
