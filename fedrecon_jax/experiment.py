"""A run's experiment: everything derived from its Config before the first
round (its recipe, data, partition, model, test set)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from fedrecon_jax import data, local_split, partition, recipe
from fedrecon_jax.data import base, validate
from fedrecon_jax.config import Config
from fedrecon_jax.models import DataSpec, Model


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run derives from its Config before the first round."""
  cfg: Config
  recipe: recipe.Recipe
  spec: DataSpec
  model: Model
  population: partition.ClientData   # numpy, [K, max_n, ...]
  test_xs: tuple
  test_y: np.ndarray
  test_present: np.ndarray            # [N_test, M] bool
  test_complete: np.ndarray           # [N_test, M] bool, nothing missing
  # [M] bool: the modalities the method keeps (Method.modalities), or None.
  kept: np.ndarray | None
  # Each client's held-out samples (--local_test_fraction > 0), numpy
  # [K, max_t, ...]; None when off.
  local_test: partition.ClientData | None = None


def _seed(cfg: Config, purpose: int) -> int:
  """Independent integer seeds for the numpy-side random choices."""
  return int(np.random.SeedSequence([cfg.seed, purpose]).generate_state(1)[0])


# The runs of a group (and a sweep's cells) read one dataset once; build
# only reads the arrays it returns.
_load = functools.lru_cache(maxsize=2)(data.load)
# The validation split's own key: fixed, so that every seed and every
# tuning trial holds out the same samples.
VALIDATION_SEED = 20261206


def load_data(cfg: Config) -> data.Dataset:
  """The run's dataset, standardised with the statistics of
  recipe.feature_stats' split: as loaded, or, with --validation_fraction >
  0, with its validation samples (per class, from VALIDATION_SEED) taken
  out of `train` and put in place of `test` (the test split is then never
  read, but for those statistics under --feature_stats=test)."""
  ds = _load(cfg.dataset, data_dir=cfg.data_dir or None,
             manual_dir=cfg.manual_dir or None,
             stats_from=recipe.of(cfg).feature_stats)
  if cfg.validation_fraction == 0:
    return ds
  keep, held = base.stratified_split(ds.train.y,
                                     test_fraction=cfg.validation_fraction,
                                     seed=VALIDATION_SEED)
  if len(held) == 0 or len(keep) == 0:
    raise ValueError(f'--validation_fraction={cfg.validation_fraction} holds '
                     f'out {len(held)} of {len(ds.train.y)} training samples; '
                     'pick a fraction that leaves both parts non-empty.')
  take = lambda ids: data.Split(
      tuple(x[ids] for x in ds.train.xs), ds.train.y[ids],
      None if ds.train.group is None else ds.train.group[ids])
  return dataclasses.replace(ds, train=take(keep), test=take(held))


@functools.cache
def _model(spec: DataSpec, latent_dim, gen_width, map_width, task_width,
           latent_sizes, extra_groups):
  # One Model per architecture: the programs built from it (Recipe.plan,
  # the evaluator) are then shared by every run of it in a process.
  return Model(spec, latent_dim=latent_dim, gen_width=gen_width,
               map_width=map_width, task_width=task_width,
               latent_sizes=latent_sizes, extra_groups=extra_groups)


def build(cfg: Config) -> Experiment:
  recipe_ = recipe.of(recipe.validate(cfg))
  ds = load_data(cfg)
  spec = DataSpec(ds.modalities, ds.kinds,
                  tuple(x.shape[1:] for x in ds.train.xs), ds.num_classes)
  m = spec.num_modalities
  if cfg.cross_decoding == 'one' and len(set(zip(spec.kinds, spec.shapes))) > 1:
    raise ValueError(f"--cross_decoding='one' needs modalities of one kind "
                     f'and shape; {cfg.dataset} has {spec.shapes}. Use '
                     "--cross_decoding='all'.")
  if cfg.natural_split and ds.train.group is None:
    raise ValueError(f'--natural_split needs a dataset with a grouping key; '
                     f'{cfg.dataset} has none.')
  indices, mmask = partition.make_partition(
      ds.train.y, num_clients=cfg.num_clients, num_modalities=m,
      alpha=cfg.alpha, missing_rate=cfg.missing_rate, seed=cfg.seed,
      min_client_size=cfg.min_client_size,
      per_sample_missing=cfg.per_sample_missing,
      groups=ds.train.group if cfg.natural_split else None)
  test_present = partition.sample_modality_mask(
      len(ds.test.y), m, cfg.missing_rate, seed=_seed(cfg, 1))
  test_complete = np.ones_like(test_present)
  modalities = recipe_.method.modalities
  keep = None if modalities is None else modalities(recipe_, ds)
  if keep is not None:
    # Modalities the method does not see are dropped from its clients and
    # its test set; a client sample without a kept one holds nothing usable.
    mmask, test_present = mmask & keep, test_present & keep
    test_complete = test_complete & keep
  population = partition.stack_clients(ds.train.xs, ds.train.y, indices, mmask,
                                       per_sample=cfg.per_sample_missing)
  if keep is not None:
    has = population.modality_mask.any(-1)
    population = population.replace(sample_mask=population.sample_mask & has,
                                    num_samples=has.sum(1).astype(np.int32))
  local_test = None
  if cfg.local_test_fraction > 0:
    population, local_test = local_split.split(
        population, cfg.local_test_fraction, cfg.seed)
  validate.report_empty_clients(population.num_samples, cfg.workdir)
  gen = recipe_.generator
  model = _model(spec, cfg.latent_dim, cfg.gen_width, cfg.map_width,
                 cfg.task_width, gen.latent_sizes(cfg.latent_dim) if gen
                 else None, gen.extra_groups if gen else ())
  return Experiment(cfg, recipe_, spec, model, population, ds.test.xs, ds.test.y,
                    test_present, test_complete, keep, local_test)


def train_means(exp: Experiment):
  """Per-modality mean over the real, present training samples."""
  out = []
  for i, x in enumerate(exp.population.xs):
    w = (exp.population.sample_mask & exp.population.modality_mask[..., i])
    w = w.reshape(*w.shape, *[1] * (x.ndim - 2)).astype(np.float64)
    out.append((x * w).sum((0, 1)) / max(w.sum(), 1.0))
  return out
