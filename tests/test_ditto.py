"""Ditto (methods/ditto.py) against a per-client Python loop written here:
each round's cohort clients take proximal gradient steps on their own
personal task model towards the round's starting global model; the others
keep theirs. A large lambda pins v_k to w; checkpoints carry the v_k."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from fedrecon_jax import checkpoint, rounds, server, train
from fedrecon_jax.config import Config
from fedrecon_jax.methods import TASK_STAGE
from fedrecon_jax.hparams import Hparams

import tiny
import toy

ROUNDS = 2


def _reference_step(model, v, w, xs, y, real, lam, lr):
  """One full-batch step of CE(real samples) + lam/2 ||v - w||^2."""
  def loss(v):
    logits = model.logits(v, xs, jnp.ones((y.shape[0], len(xs)), bool))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    prox = sum(jnp.sum(jnp.square(a - b)) for a, b in
               zip(jax.tree.leaves(v), jax.tree.leaves(w)))
    return jnp.sum(ce * real) / max(float(real.sum()), 1.0) + lam / 2 * prox
  g = jax.grad(loss)(v)
  return jax.tree.map(lambda a, b: a - lr * b, v, g)


def _run(lam, steps=2, reference=False):
  """ROUNDS Ditto rounds of the toy population; reference=True also steps
  every cohort client's personal model in a Python loop (`personal`; it
  compiles per client step, so only the test that compares with it asks)."""
  cfg = toy.cfg_for(method='ditto', ditto_lambda=lam, local_epochs=steps)
  model, params = toy.small_model(), toy.init_params(toy.small_model())
  plan = toy.stage_plan(cfg, TASK_STAGE)
  round_ = toy.make_round(cfg, TASK_STAGE)
  h, key = Hparams.of(cfg), jax.random.key(3)
  pop = toy.filled(cfg, TASK_STAGE, params, toy.make_population())
  state = round_.init(params, h)
  personal = [jax.tree.map(np.asarray, params['task'])] * toy.K
  touched = np.zeros(toy.K, bool)
  for _ in range(ROUNDS):
    w = state.params['task']
    ids, _ = rounds.cohort_ids(rounds.round_key(key, state), toy.K,
                               jnp.arange(plan.cohort), plan.cohort)
    for i in np.asarray(ids) if reference else ():
      xs = tuple(x[i] for x in pop.xs)
      v = personal[i]
      for _ in range(steps):
        v = _reference_step(model, v, w, xs, pop.y[i],
                            np.asarray(pop.sample_mask[i], np.float32), lam,
                            np.float32(cfg.client_lr))
      personal[i] = v
      touched[i] = True
    before = state.clients
    state, _ = round_(state, round_.place(pop), key, h)
  # before: the client states before the last round; w: its w^t; ids its
  # cohort.
  return cfg, plan, params, state, personal, touched, (before, w, ids)


# ~55 s (the loop reference compiles per client step): slow.
@pytest.mark.slow
def test_personal_models_follow_the_loop_reference():
  _, _, params, state, personal, touched, _ = _run(0.1, reference=True)
  for i in range(toy.K):
    got = jax.tree.map(lambda x: x[i], state.clients)
    toy.leaves_close(got, personal[i], 1e-5)
  # Cohorts of 4 of 6 over 2 rounds: some clients never took part and
  # keep the initial task model bitwise.
  assert touched.any() and not touched.all()
  for i in np.flatnonzero(~touched):
    toy.leaves_close(jax.tree.map(lambda x: x[i], state.clients),
                     params['task'], 0)


def _distance(a, b):
  return float(sum(jnp.sum(jnp.square(x - y)) for x, y in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))) ** 0.5


def test_large_lambda_pulls_personal_models_to_global():
  """lr * lambda = 1 (the largest pull stable for explicit steps): each step
  lands on w^t less lr * the CE gradient, so the last cohort's v_k sit much
  nearer their w^t than with a small lambda (measured: 0.05 vs 0.18)."""
  dist = {}
  for lam in (0.1, 20.0):
    _, _, _, state, _, _, (_, w, ids) = _run(lam)
    dist[lam] = [_distance(jax.tree.map(lambda x, i=i: x[i], state.clients),
                           w) for i in np.asarray(ids)]
  assert np.mean(dist[20.0]) < 0.4 * np.mean(dist[0.1]), dist


def test_checkpoint_carries_personal_models(tmp_path):
  _, plan, params, state, _, _, _ = _run(0.1)
  h = Hparams.of(toy.cfg_for(method='ditto'))
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'c', checkpoint._tree(state))  # pylint: disable=protected-access
    ckpt.wait_until_finished()
    abstract = checkpoint._tree(jax.eval_shape(   # pylint: disable=protected-access
        lambda p: server.init_state(plan, p, h), params))
    got = ckpt.restore(tmp_path / 'c', abstract)
  toy.leaves_close(got['clients'], state.clients, 0)


def _saved(workdir, round_):
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(workdir, 'checkpoints', str(round_),
                                     'state'))


@pytest.mark.slow
def test_resumed_run_carries_personal_models(tmp_path, env):
  """tiny.py's run, stopped after the first task round and resumed, ends
  with the personal models (and params) of the uninterrupted run, and
  logs the same last record (personal_f1_macro, local_f1_macro included)."""
  def run(name, rounds):
    cfg = Config(workdir=str(tmp_path / name), data_dir=env['TFDS_DATA_DIR'],
                 method='ditto', gen_rounds=1, rounds=rounds,
                 checkpoint_every=1, eval_every=10, local_test_fraction=0.2,
                 **tiny.MODEL)
    train.run(cfg)
    return str(tmp_path / name)
  whole = run('whole', 2)
  run('resumed', 1)
  resumed = run('resumed', 2)
  got, want = _saved(resumed, 3), _saved(whole, 3)
  # Its last record too, with the personal models' scores on the local
  # splits (the first leg also scored round 2, its last).
  assert tiny.records(resumed)[-1] == tiny.records(whole)[-1]
  assert 'personal_f1_macro' in tiny.records(whole)[-1]
  assert 'clients' in want
  toy.leaves_close(got['clients'], want['clients'], 0)
  toy.leaves_close(got['params'], want['params'], 0)
  # The personal models moved off the global model they started from.
  assert not np.allclose(_saved(whole, 2)['clients']['head']['Dense_0']
                         ['kernel'], want['clients']['head']['Dense_0']
                         ['kernel'])


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, env):
  """Ditto with local test splits as one --distributed run of 2 processes
  (the cohort, and with it the personal models, split between them) logs
  what one process logs, personal_f1_macro and local_f1_macro included
  (up to the all-reduce's float order)."""
  schedule = dict(method='ditto', gen_rounds=1, rounds=2, eval_every=1,
                  checkpoint_every=0, local_test_fraction=0.2)
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  tiny.run(tiny.train_cmd(one, **schedule), env)
  procs = tiny.two_processes(tiny.train_cmd(two, **schedule), env)
  for p, log in zip(procs, tiny.finish(procs)):
    assert p.returncode == 0, log[-3000:]
  got, want = tiny.records(two), tiny.records(one)
  assert [r['round'] for r in got] == [1, 2, 3]
  assert {'personal_f1_macro', 'local_f1_macro'} <= want[-1].keys()
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in w:
      if not k.endswith('seconds'):
        assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-5), (g['round'], k)
