"""A run's recipe: what its Config makes of it, resolved once against the
method and generator registries.

Config holds settings; a `Recipe` (`of(cfg)`) holds what they mean: the
method and the generator it trains, the stages and their rounds, each
stage's plan, whether DP-FedAvg is on and the cohort. Flag choices read
from the registries (`CHOICES`) and the checks that need them (`validate`)
live here too, so that config.py imports neither JAX nor a registry. The
engine (rounds, train, checkpoint, evaluation) reads plans; nothing
outside this module and the methods asks a registry about a Config.
"""

from __future__ import annotations

import dataclasses
import functools

from fedrecon_jax import data, generators, hparams, methods, server
from fedrecon_jax.config import PER_RUN_FIELDS, Config, check, section
from fedrecon_jax.generators import Generator
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE, Method, StagePlan
from fedrecon_jax.models import Model

# Flag choices read from the registries (config.py's own fields list the
# static ones as metadata).
CHOICES = {'dataset': data.DATASETS, 'method': tuple(methods.REGISTRY),
           'joint_posterior': generators.JOINT,
           'server_opt': server.AGGREGATIONS,
           'server_optimizer': tuple(server.OPTIMIZERS)}


def choices(field: dataclasses.Field) -> tuple | None:
  """A Config field's allowed values (a registry's or its own), or None."""
  return CHOICES.get(field.name) or field.metadata.get('choices')


@dataclasses.dataclass(frozen=True)
class Recipe:
  """What a Config makes of a run (see the module docstring)."""
  cfg: Config
  method: Method
  # The generator the method trains; None: no generator stage.
  generator: Generator | None

  @property
  def knobs(self):
    """The method's own settings section (config.DittoSettings, ...), or
    None if it reads none."""
    return (None if self.method.settings is None
            else section(self.cfg, self.method.settings))

  @property
  def stages(self) -> tuple[int, ...]:
    return ((GEN_STAGE,) if self.generator else ()) + (TASK_STAGE,)

  @property
  def stage_rounds(self) -> tuple[int, ...]:
    """Rounds of each of `stages`."""
    return ((self.cfg.gen_rounds,) if self.generator else ()) + (
        self.cfg.rounds,)

  @property
  def stage1_rounds(self) -> int:
    return self.cfg.gen_rounds if self.generator else 0

  @property
  def total_rounds(self) -> int:
    return sum(self.stage_rounds)

  def stage(self, round_: int) -> int:
    """Rounds count from 1; the first stage1_rounds train the generator."""
    return GEN_STAGE if round_ <= self.stage1_rounds else TASK_STAGE

  @property
  def dp(self) -> bool:
    """Client-level DP-FedAvg is on (--dp_clip > 0)."""
    return self.cfg.dp_clip > 0

  @property
  def feature_stats(self) -> str:
    """The split whose statistics standardise the features ('train' or
    'test'; --feature_stats=auto: 'test' under DP)."""
    if self.cfg.feature_stats != 'auto':
      return self.cfg.feature_stats
    return 'test' if self.dp else 'train'

  def cohort_size(self, num_clients: int) -> int:
    """Clients per round, or the expected Poisson cohort, over K clients."""
    return min(self.cfg.clients_per_round, num_clients)

  @property
  def program_key(self) -> tuple:
    """Equal for configs whose runs can share a round program and a loop
    (and so run as one group): every field but PER_RUN_FIELDS (and where the
    compilation cache lives), plus whether FedProx's term is compiled in and
    whether DP is on."""
    skip = PER_RUN_FIELDS + ('compilation_cache',)
    fields = {k: v for k, v in self.cfg.to_dict().items() if k not in skip}
    return tuple(sorted(fields.items())) + (
        ('fedprox', self.cfg.fedprox_mu > 0), ('dp', self.dp))

  def hparams(self) -> hparams.Hparams:
    """The HPARAMS as float32 scalars: the round programs' traced inputs."""
    return hparams.Hparams.of(self.cfg)

  def plan(self, model: Model, stage: int, num_clients: int) -> StagePlan:
    """Stage `stage`'s plan for a population of num_clients: the method's
    client update and groups, plus the cohort and DP the engine runs."""
    return _plan(self, model, stage, num_clients)


@functools.cache
def of(cfg: Config) -> Recipe:
  """The recipe of cfg (cached: built once per Config)."""
  method = methods.get(cfg.method)
  knobs = None if method.settings is None else section(cfg, method.settings)
  return Recipe(cfg, method, method.generator(knobs))


def validate(cfg: Config) -> Config:
  """cfg.validate() plus the checks that read the registries; raises
  ValueError naming the flag and its allowed values."""
  for f in dataclasses.fields(cfg):
    allowed, value = choices(f), getattr(cfg, f.name)
    if allowed and value not in allowed:
      raise ValueError(f'--{f.name}={value!r} is not one of {allowed}.')
  check(bool(cfg.manual_dir) or not data.needs_manual_dir(cfg.dataset),
        'manual_dir', cfg.manual_dir,
        f'the folder of your arrays for --dataset={cfg.dataset}')
  cfg.validate()
  recipe = of(cfg)
  check(cfg.local_test_fraction > 0 or not recipe.method.local_test,
        'local_test_fraction', cfg.local_test_fraction,
        f'> 0 for --method={cfg.method}, which scores personal models on '
        "each client's local test split (e.g. 0.2)")
  check(recipe.total_rounds >= 1, 'rounds', cfg.rounds,
        '>= 1 in total with --gen_rounds')
  check(not (recipe.dp and cfg.feature_stats == 'train'), 'feature_stats',
        cfg.feature_stats, "'test' or 'auto' under DP (--dp_clip > 0): "
        "'train' standardises with every client's pooled data, outside the "
        'guarantee')
  if recipe.method.check is not None:
    recipe.method.check(cfg, recipe.dp)
  return cfg


# (program key, model, stage, K) -> StagePlan: runs that share a program
# (the cells of a sweep, in one process) share their plans, and with them
# JAX's traces and compiled programs, instead of re-tracing each run's.
_PLANS: dict = {}


def _plan(recipe: Recipe, model: Model, stage: int,
          num_clients: int) -> StagePlan:
  key = (recipe.program_key, model, stage, num_clients)
  if key not in _PLANS:
    if stage not in recipe.stages:
      raise ValueError(f'--method={recipe.cfg.method!r} has no stage {stage} '
                       f'(its stages: {recipe.stages}).')
    size = recipe.cohort_size(num_clients)
    plan = dataclasses.replace(
        recipe.method.plan(recipe, model, stage), num_clients=num_clients,
        dp=recipe.dp, dp_groups=recipe.cfg.dp_denominator == 'group',
        **methods.base.cohort(recipe.cfg.client_sampling, size, num_clients))
    server.check_elementwise(plan.server_tx(recipe.hparams()),
                             f'--method={recipe.cfg.method} stage {stage}')
    _PLANS[key] = plan
  return _PLANS[key]
