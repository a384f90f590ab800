"""Settings without JAX, and what the recipe and the declared parameter
groups make of them."""

import dataclasses
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import experiment, generator, generators, param_groups
from fedrecon_jax import partition
from fedrecon_jax import recipe, rounds
from fedrecon_jax.config import Config
from fedrecon_jax.generators import poe
from fedrecon_jax.hparams import Hparams
from fedrecon_jax.methods import GEN_STAGE, base
from fedrecon_jax.models import DataSpec, Model

import toy

_BLOCK_JAX = '''
import sys
class Block:
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax', 'chex',
                              'tensorflow_datasets', 'orbax'):
      raise ImportError('blocked: ' + name)
sys.meta_path.insert(0, Block())
import fedrecon_jax.config, fedrecon_jax.grid, fedrecon_jax.workdir
assert not any(m.split('.')[0] in ('jax', 'optax') for m in sys.modules)
'''


def test_settings_workdir_and_grid_import_without_jax():
  """config.py, workdir.py and grid.py: no JAX, no registry."""
  subprocess.run([sys.executable, '-c', _BLOCK_JAX], check=True)


def test_recipe_owns_what_the_settings_mean():
  fedrecon = recipe.of(toy.cfg_for(gen_rounds=3, rounds=4, dp_clip=1.0,
                                   dp_accountant='rdp'))
  assert fedrecon.generator is generators.get('mapping')
  assert fedrecon.stages == (1, 2) and fedrecon.total_rounds == 7
  assert [fedrecon.stage(r) for r in (1, 3, 4, 7)] == [1, 1, 2, 2]
  assert fedrecon.dp and fedrecon.cohort_size(3) == 3
  zero_fill = recipe.of(toy.cfg_for(method='zero_fill', gen_rounds=3))
  assert zero_fill.generator is None and zero_fill.total_rounds == 50
  no_map = recipe.of(toy.cfg_for(method='fedrecon_no_map',
                                 joint_posterior='mopoe'))
  assert no_map.generator.name == 'mopoe'
  assert recipe.of(toy.cfg_for(method='ditto')).knobs.ditto_lambda == 0.1
  # The plan gets the recipe's cohort and DP, and is built once per program.
  plan = fedrecon.plan(toy.small_model(), 2, toy.K)
  assert (plan.cohort, plan.num_clients, plan.dp) == (4, toy.K, True)
  assert fedrecon.plan(toy.small_model(), 2, toy.K) is plan


def test_registry_checks_name_the_flag():
  for flags, named in ((dict(method='nope'), '--method='),
                       (dict(joint_posterior='mapping'), '--joint_posterior='),
                       (dict(dataset='files'), '--manual_dir'),
                       (dict(method='unimodal', dp_clip=1.0,
                             dp_accountant='rdp'), '--unimodal_modality'),
                       (dict(gen_rounds=0, rounds=0), '--rounds'),
                       (dict(dp_clip=1.0, dp_accountant='rdp',
                             feature_stats='train'), '--feature_stats')):
    with pytest.raises(ValueError, match=named):
      recipe.validate(toy.cfg_for(**flags))


def test_dp_runs_standardise_with_the_test_split():
  """--feature_stats=auto: the pooled training data without DP, the test
  split (no client's data) under DP; load_data reads that split's stats."""
  plain = toy.cfg_for(dataset='uci_multifeature_small')
  dp = toy.cfg_for(dataset='uci_multifeature_small', dp_clip=1.0,
                   dp_accountant='rdp')
  assert recipe.of(plain).feature_stats == 'train'
  assert recipe.of(dp).feature_stats == 'test'
  for cfg, standard in ((plain, 'train'), (dp, 'test')):
    ds = experiment.load_data(cfg)
    for split in ('train', 'test'):
      mean = np.abs(np.concatenate([x.mean(0) for x in getattr(
          ds, split).xs])).max()
      assert (mean < 1e-4) == (split == standard), (cfg.dp_clip, split)


# --------------------------------------------- a generator's own group

SPEC = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((4,),) * 3, 3)
D = 4


def _prior_weights(counts, model, prior):
  """[M, d]: row m counts the samples holding modality m."""
  del model
  return counts.modality


# A learned per-modality prior mean, [M, d], initialised by the generator.
PRIOR = param_groups.Group(
    'prior', _prior_weights,
    init=lambda model, key: jax.random.normal(
        key, (model.spec.num_modalities, model.latent_dim)))


def _objective(model, params, xs, pres, mu, logvar, noise, **kw):
  loss, terms = poe.objective(model, params, xs, pres, mu, logvar, noise,
                              **kw)
  pull = ((mu - params['prior'][:, None]) ** 2).sum(-1)        # [M, B]
  return loss + (pull * pres).sum(0), terms


TOY = dataclasses.replace(generators.get('poe'), name='poe_prior',
                          objective=_objective,
                          groups=(param_groups.GEN, PRIOR))


def test_a_generator_declares_its_own_parameter_group():
  """A group declared in the generator's module alone: the Model builds it
  (the other groups' params unchanged), clients weigh it by its rule, the
  server averages and steps it."""
  assert TOY.extra_groups == (PRIOR,)
  model = Model(SPEC, latent_dim=D, gen_width=8, map_width=8, task_width=4,
                extra_groups=TOY.extra_groups)
  plain = Model(SPEC, latent_dim=D, gen_width=8, map_width=8, task_width=4)
  key = jax.random.key(0)
  params = model.init_params(key)
  assert params['prior'].shape == (3, D)
  jax.tree.map(np.testing.assert_array_equal,
               {k: v for k, v in params.items() if k != 'prior'},
               plain.init_params(key))
  cfg = toy.cfg_for(gen_lr=0.1)
  plan = dataclasses.replace(
      base.stage_plan(cfg, GEN_STAGE, groups=TOY.groups,
                      loss=base.generator_loss(cfg, model, TOY), model=model,
                      seen_present=False, generator=TOY),
      num_clients=toy.K, cohort=toy.K)
  assert plan.groups == ('gen', 'prior')
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(60, 4)).astype(np.float32) for _ in range(3)]
  y = rng.integers(0, 3, 60).astype(np.int32)
  present = np.ones((toy.K, 3), bool)
  present[1, 0] = present[3, 2] = False
  population = partition.stack_clients(
      xs, y, np.array_split(np.arange(60), toy.K), present)
  h = Hparams.of(cfg)
  trainable, frozen = rounds.split_params(params, plan.groups)
  one = jax.tree.map(lambda x: x[1], population)
  _, weights, _ = plan.client_update(h, trainable, frozen, one,
                                     jax.random.key(1))
  np.testing.assert_array_equal(weights['prior'], [0, 10, 10])
  round_ = rounds.make_round(plan, rounds.make_mesh(1))
  state, _ = round_(round_.init(params, h), round_.place(population),
                    jax.random.key(2), h)
  assert not np.allclose(state.params['prior'], params['prior'])


# ------------------------------------------------ declared cross-decoding

@pytest.mark.parametrize('kind', generators.TRAINABLE)
def test_cross_decoding_is_declared_by_the_kinds_that_read_it(kind):
  gen = generators.get(kind)
  model = Model(SPEC, latent_dim=D, gen_width=8, map_width=8, task_width=4,
                latent_sizes=gen.latent_sizes(D),
                extra_groups=gen.extra_groups)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(1)
  xs = tuple(rng.normal(size=(5, 4)).astype(np.float32) for _ in range(3))
  present = jnp.ones((5, 3), bool)
  loss = {mode: generator.objective(kind, model, params, xs, present,
                                    jax.random.key(3), beta=1.0,
                                    match_weight=1.0, cross_decoding=mode)[0]
          for mode in generator.CROSS_DECODING}
  assert gen.cross_decoding == (not np.allclose(loss['all'], loss['one']))
