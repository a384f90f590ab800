"""Settings without JAX, and what the recipe and the declared parameter
groups make of them."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import experiment, generator, generators, recipe
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


# A generator's own parameter group (MMVAE+'s learned prior):
# test_mmvaeplus.test_learned_prior_is_a_declared_group_trained_federatedly.

SPEC = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((4,),) * 3, 3)
D = 4


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
