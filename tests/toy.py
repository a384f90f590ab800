"""The round tests' toy federation: 6 synthetic clients, 3 small vector
modalities, a small model, and helpers that build and run its rounds.

Rounds are built through the same `Recipe.plan` -> `rounds.make_round` path as
train.run and their arguments placed as it places them (`Round.place`), so a
test's round compiles the program other tests (and later runs, through the
persistent compilation cache) reuse.
"""

import contextlib
import functools

import chex
import jax
import numpy as np

from fedrecon_jax import partition, recipe, rounds
from fedrecon_jax.config import Config
from fedrecon_jax.models import DataSpec, Model
from fedrecon_jax.hparams import Hparams

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


def with_nan_client():
  """The population with one NaN input sample on client 3."""
  population = make_population()
  xs = list(population.xs)
  xs[1] = xs[1].copy()
  xs[1][3, 0, 0] = np.nan
  return population.replace(xs=tuple(xs))


@functools.cache
def small_model():
  return Model(SPEC, latent_dim=4, gen_width=16, map_width=16, task_width=8)


def cfg_for(**kw):
  base = dict(workdir='/tmp/unused', num_clients=K, clients_per_round=4,
              batch_size=8, gen_lr=0.01, client_lr=0.05)
  return Config(**{**base, **kw})


def init_params(model):
  # The one compiled init every caller (train.run included) shares.
  return model.init_params(jax.random.key(0))


@functools.cache
def stage_plan(cfg, stage):
  return recipe.of(cfg).plan(small_model(), stage, K)


@functools.cache
def make_round(cfg, stage, num_devices=1, runs=0, clients_per_chunk=0):
  mesh = rounds.make_mesh(num_devices, runs=runs)
  return rounds.make_round(stage_plan(cfg, stage), mesh, runs=runs,
                           clients_per_chunk=clients_per_chunk)


@contextlib.contextmanager
def max_round_traces(n: int):
  """Round programs built inside may trace their round function at most n
  times in all (chex.assert_max_traces raises on the next): a retrace, for
  a new shape or placement, would be a recompile. They are fresh programs
  (the caches of built rounds are cleared before and after)."""
  original = rounds.one_round
  chex.clear_trace_counter()   # counted per function, across tests
  make_round.cache_clear()
  rounds.make_round.cache_clear()
  rounds.one_round = chex.assert_max_traces(original, n=n)
  try:
    yield
  finally:
    rounds.one_round = original
    make_round.cache_clear()
    rounds.make_round.cache_clear()


def one_round(cfg, stage, params, population, key, num_devices=1, **kw):
  """(params, metrics) after one round from a fresh server state."""
  round_ = make_round(cfg, stage, num_devices, **kw)
  h = Hparams.of(cfg)
  state, metrics = round_(round_.init(params, h),
                          round_.fill(params, round_.place(population)), key, h)
  return state.params, metrics


def stacked(*trees):
  """Trees -> one tree with a leading runs axis."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *trees)


def runs_round(r, stage, params, num_devices=1):
  """Params [r, ...] after one round of r runs in one program: run i has
  seed i (key and partition) and client_lr 0.05 (i + 1)."""
  cfgs = [cfg_for(seed=i, client_lr=0.05 * (i + 1)) for i in range(r)]
  round_ = make_round(cfgs[0], stage, num_devices, runs=r)
  h = stacked(*[Hparams.of(c) for c in cfgs])
  key = jax.random.wrap_key_data(
      stacked(*[jax.random.key_data(jax.random.key(i)) for i in range(r)]))
  params = stacked(*[params] * r)
  pop = round_.fill(params, round_.place(
      stacked(*[make_population(seed=i) for i in range(r)])))
  state = round_.init(params, h)
  return round_(state, pop, key, h)[0].params


def solo_and_grouped(cfgs, stage, params, rounds=2):
  """Run i (cfgs[i]'s hparams, population and key of seed i) alone, and all
  of them as one program on a runs axis, `rounds` rounds each.

  Returns (solo: [(state, metrics)] per run, grouped: (state, metrics) with
  a leading runs axis, the grouped Round).
  """
  r = len(cfgs)
  pops = [make_population(seed=i) for i in range(r)]
  keys = [jax.random.key(i) for i in range(r)]
  solo = []
  for cfg, pop, key in zip(cfgs, pops, keys):
    round_, h = make_round(cfgs[0], stage), Hparams.of(cfg)
    state = round_.init(params, h)
    for _ in range(rounds):
      state, metrics = round_(state, round_.fill(params, round_.place(pop)),
                              key, h)
    solo.append((state, metrics))
  group = make_round(cfgs[0], stage, runs=r)
  h = stacked(*[Hparams.of(c) for c in cfgs])
  key = jax.random.wrap_key_data(stacked(*map(jax.random.key_data, keys)))
  stacked_params = stacked(*[params] * r)
  pop = group.fill(stacked_params, group.place(stacked(*pops)))
  state = group.init(stacked_params, h)
  for _ in range(rounds):
    state, metrics = group(state, pop, key, h)
  return solo, (state, metrics), group


def sequential_round(cfg, stage, params, population, key):
  """The same round, clients one after another (rounds.sequential_round)."""
  h = Hparams.of(cfg)
  sp = stage_plan(cfg, stage)
  state = make_round(cfg, stage).init(params, h)
  population = rounds.fill_population(sp, rounds.make_mesh(1), 0, params,
                                      population)
  state, metrics = rounds.sequential_round(sp, state, population, key, h)
  return state.params, metrics


def filled(cfg, stage, params, population):
  """The population a stage's clients train on (rounds.fill_population)."""
  return rounds.fill_population(stage_plan(cfg, stage), rounds.make_mesh(1),
                                0, params, population)


def leaves_close(got, want, tol=1e-5):
  got, want = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=tol,
                               rtol=tol)
