"""The per-client state hook (methods.ClientState): rounds carry it along
the clients axis for every cohort client, whatever the chunking, as a
Python loop over the cohort does; checkpoints save and restore it.

The state here is a toy 'personal' vector per client (a running mix of its
own data and noise from its key) and a count of the rounds it took part in,
so a state written to the wrong client, or a pad's written at all, shows.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fedrecon_jax import checkpoint, rounds, server
from fedrecon_jax.methods import TASK_STAGE
from fedrecon_jax.methods import ClientState
from fedrecon_jax.hparams import Hparams

import toy

ROUNDS = 3


def _init(params, num_clients):
  del params
  return {'v': jnp.zeros((num_clients, 4)), 'n': jnp.zeros(num_clients)}


def _update(h, state, trainable, frozen, data, key):
  """v <- 0.5 v + client_lr * (mean of its real modality-'c' rows) + noise."""
  del trainable, frozen
  w = (data.sample_mask & data.modality_mask[:, 2]).astype(jnp.float32)
  mean = (data.xs[2] * w[:, None]).sum(0) / jnp.maximum(w.sum(), 1.0)
  v = 0.5 * state['v'] + h.client_lr * mean + 0.01 * jax.random.normal(
      key, (4,))
  return {'v': v, 'n': state['n'] + 1}, {'personal_norm': jnp.sum(v * v)}


@pytest.fixture(scope='module')
def setup():
  cfg = toy.cfg_for(method='zero_fill', clients_per_round=4)
  plan = dataclasses.replace(toy.stage_plan(cfg, TASK_STAGE),
                             client_state=ClientState(_init, _update))
  params = toy.init_params(toy.small_model())
  return cfg, plan, params, toy.make_population()


def _python_loop_reference(cfg, plan, population, key):
  """Each round's cohort (rounds.cohort_ids) updates its clients' states,
  written one client at a time in numpy."""
  v, n = np.zeros((toy.K, 4)), np.zeros(toy.K)
  lr = np.float32(cfg.client_lr)
  for r in range(ROUNDS):
    rkey = jax.random.fold_in(key, r + 1)
    ids, _ = rounds.cohort_ids(rkey, toy.K, jnp.arange(plan.cohort),
                               plan.cohort)
    for i, k in zip(np.asarray(ids), rounds.client_keys(rkey, ids)):
      w = np.asarray(population.sample_mask[i] & population.modality_mask[i, :,
                                                                         2])
      x = np.asarray(population.xs[2][i], np.float64)
      mean = (x * w[:, None]).sum(0) / max(w.sum(), 1.0)
      v[i] = 0.5 * v[i] + lr * mean + 0.01 * np.asarray(
          jax.random.normal(k, (4,)))
      n[i] += 1
  return v, n


@pytest.mark.parametrize('chunk', [0, 1, 3])
def test_rounds_carry_each_clients_state(setup, chunk):
  cfg, plan, params, population = setup
  h, key = Hparams.of(cfg), jax.random.key(7)
  round_ = rounds.make_round(plan, rounds.make_mesh(1),
                             clients_per_chunk=chunk)
  state, pop = round_.init(params, h), round_.place(population)
  seq = state
  for _ in range(ROUNDS):
    state, metrics = round_(state, pop, key, h)
    seq, _ = rounds.sequential_round(plan, seq, population, key, h)
  v, n = _python_loop_reference(cfg, plan, population, key)
  np.testing.assert_allclose(state.clients['v'], v, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(state.clients['n'], n)
  # Cohorts of 4 of 6: clients took part in different numbers of rounds.
  assert n.sum() == ROUNDS * plan.cohort and len(set(n)) > 1
  toy.leaves_close(state.clients, seq.clients)
  toy.leaves_close(state.params, seq.params, 2e-5)
  assert float(metrics['personal_norm']) > 0


def test_checkpoint_saves_the_client_state(setup, tmp_path):
  cfg, plan, params, population = setup
  h = Hparams.of(cfg)
  round_ = rounds.make_round(plan, rounds.make_mesh(1))
  state, _ = round_(round_.init(params, h), round_.place(population),
                    jax.random.key(1), h)
  tree = checkpoint._tree(state)   # pylint: disable=protected-access
  assert 'clients' in tree
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'c', tree)
    ckpt.wait_until_finished()
    abstract = checkpoint._tree(jax.eval_shape(   # pylint: disable=protected-access
        lambda p: server.init_state(plan, p, h), params))
    got = ckpt.restore(tmp_path / 'c', abstract)
  toy.leaves_close(got['clients'], state.clients, 0)
  # A plan without client state keeps checkpoints as they were.
  plain = server.init_state(toy.stage_plan(cfg, TASK_STAGE), params, h)
  assert set(checkpoint._tree(plain)) == {'params', 'opt_state'}  # pylint: disable=protected-access
