"""Privacy accounting for client-level DP-FedAvg (dp.py) with Google's
`dp-accounting` package (the accountant Flower wraps), and what a DP run's
metrics may say.

Two conventions, one per --client_sampling (sampling.py):
  * poisson: each client joins a round with probability q = cohort / K; a
    round is a PoissonSampledDpEvent of a Gaussian, under the add/remove
    neighbouring relation (one client's data added or removed). The sum of
    clipped updates moves by at most C, so the Gaussian's multiplier is z.
    This is what Opacus, TFF and most papers report.
  * fixed: `cohort` of the K clients drawn uniformly without replacement; a
    SampledWithoutReplacementDpEvent of a Gaussian under replace-one (one
    client's data replaced), which moves the sum by at most 2C: multiplier
    z / 2. Sound, but larger for the same noise (K = 100, 10 a round, 70
    rounds, z = 1: ~55 against Poisson's ~3 at delta = 1/K^1.1).
--dp_accountant picks PLD (privacy loss distributions; dp_accounting has
no PLD of sampling without replacement, so fixed sampling needs RDP) or
RDP.

Adaptive clipping (dp.next_clip) releases a second Gaussian each round, on
the centred count of unclipped clients (sensitivity 1/2 under add/remove,
1 under replace-one) with std sigma_b. Both Gaussians see the same cohort,
so together they are one Gaussian mechanism on the pair (update sum / its
sensitivity, count / its sensitivity) with multiplier
(z_1^-2 + z_2^-2)^-1/2 (Andrew et al. 2021, Section 3): that is the
round's event, so the PLD accountant (which takes a Poisson-sampled
Gaussian only) accounts it exactly. Per-group denominators
(--dp_denominator=group) release a third on the same cohort, the centred
trainer counts, with multiplier mu (--dp_group_count_multiplier) under
add/remove, mu / 2 under replace-one; it joins the sum the same way.

The two stages compose: the generator stage's rounds then the task stage's,
as one ComposedDpEvent.
"""

from __future__ import annotations

import functools
import importlib
import math
from typing import NamedTuple, Sequence

POISSON, FIXED = 'poisson', 'fixed'
ACCOUNTANTS = ('pld', 'rdp')
# Round metrics a DP run may log as they are: the clip (a function of
# --dp_clip and of noised counts) and the Poisson overflow (a function of
# the sampling draw, which does not read data). The rest of a round's
# metrics are computed from the cohort's data without noise.
PRIVATE_METRICS = ('dp_clip', 'cohort_overflow')
NONPRIVATE = 'nonprivate/'


def _dp_accounting():
  # Imported on first use: it pulls in scipy and mpmath, which would slow
  # every run's start-up (and a second writer's refusal) when DP is off.
  return importlib.import_module('dp_accounting')


class Stage(NamedTuple):
  """One stage's DP schedule. cohort: the fixed cohort, or under Poisson
  the expected one (q = cohort / num_clients). count_stddev: adaptive
  clipping's sigma_b, 0 when no count is released."""
  num_clients: int
  cohort: int
  rounds: int
  noise_multiplier: float
  sampling: str = FIXED
  count_stddev: float = 0.0
  # Per-group denominators' count noise over its sensitivity (dp.py), 0
  # when none is released.
  group_multiplier: float = 0.0


def default_delta(num_clients: int) -> float:
  """1 / K^1.1: below 1/K, as a delta must be to mean anything."""
  return 1.0 / num_clients ** 1.1


def gaussian_multiplier(stage: Stage) -> float:
  """The round's Gaussian noise multiplier relative to its sensitivity
  (module docstring): the update sum's alone, or with the adaptive clip's
  count composed in. 0 = not private."""
  poisson = stage.sampling == POISSON
  update = stage.noise_multiplier if poisson else stage.noise_multiplier / 2
  if update <= 0:
    return update
  # Replace-one moves each count twice as far as add/remove does.
  others = (stage.count_stddev / (0.5 if poisson else 1.0),
            stage.group_multiplier / (1.0 if poisson else 2.0))
  return (update ** -2 + sum(m ** -2 for m in others if m)) ** -0.5


def round_event(stage: Stage):
  """One round of `stage` as a dp_accounting event."""
  dp_accounting = _dp_accounting()
  gaussian = dp_accounting.GaussianDpEvent(gaussian_multiplier(stage))
  if stage.sampling == POISSON:
    return dp_accounting.PoissonSampledDpEvent(
        stage.cohort / stage.num_clients, gaussian)
  return dp_accounting.SampledWithoutReplacementDpEvent(
      source_dataset_size=stage.num_clients, sample_size=stage.cohort,
      event=gaussian)


def schedule_event(stages: Sequence[Stage],
                   done: Sequence[int] | None = None):
  """The stages composed in order (a dp_accounting event); done[i] = rounds
  of stage i counted (default: all of them)."""
  dp_accounting = _dp_accounting()
  done = [s.rounds for s in stages] if done is None else done
  return dp_accounting.ComposedDpEvent([
      dp_accounting.SelfComposedDpEvent(round_event(s), n)
      for s, n in zip(stages, done) if n > 0])


def make_accountant(sampling: str, accountant: str = 'pld'):
  """An empty dp_accounting accountant for `sampling`'s neighbouring
  relation; ValueError naming --dp_accountant for PLD of fixed sampling."""
  dp_accounting = _dp_accounting()
  relation = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
              if sampling == POISSON else
              dp_accounting.NeighboringRelation.REPLACE_ONE)
  if accountant == 'rdp':
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
  if accountant != 'pld':
    raise ValueError(f'--dp_accountant={accountant!r} is not one of '
                     f'{ACCOUNTANTS}.')
  if sampling != POISSON:
    raise ValueError("--dp_accountant='pld' cannot account "
                     '--client_sampling=fixed (dp_accounting has no PLD of '
                     "sampling without replacement): use --dp_accountant=rdp"
                     ' or --client_sampling=poisson.')
  return dp_accounting.pld.PLDAccountant(neighboring_relation=relation)


def epsilon(stages: Sequence[Stage], delta: float,
            done: Sequence[int] | None = None,
            accountant: str = 'pld') -> float:
  """epsilon at `delta` after done[i] rounds of stage i."""
  done = tuple(s.rounds for s in stages) if done is None else tuple(done)
  return _epsilon(tuple(stages), float(delta), done, accountant)


@functools.lru_cache(maxsize=4096)
def _epsilon(stages, delta, done, accountant) -> float:
  # Cached: a run asks after every round, and a group's runs ask alike.
  if any(gaussian_multiplier(s) <= 0 for s, n in zip(stages, done) if n):
    return math.inf
  if not any(done):
    return 0.0
  acc = make_accountant(stages[0].sampling, accountant)
  acc.compose(schedule_event(stages, done))
  return float(acc.get_epsilon(delta))


def check_target(stages: Sequence[Stage], delta: float,
                 target: float, accountant: str = 'pld') -> float:
  """The schedule's final epsilon; ValueError naming --dp_target_epsilon
  when it exceeds `target` (checked before the first round)."""
  eps = epsilon(stages, delta, accountant=accountant)
  if target > 0 and eps > target:
    raise ValueError(
        f'--dp_target_epsilon={target}: the schedule reaches epsilon={eps:.4g}'
        f' at delta={delta:.3g}; raise --dp_noise_multiplier or lower the '
        'rounds or cohort size.')
  return eps


def private_record(record: dict, keep_nonprivate: bool) -> dict:
  """A DP round's metrics.jsonl record: the round, stage and PRIVATE_METRICS
  as they are; every other value of the round's training metrics (computed
  from the cohort without noise) under NONPRIVATE, or dropped when not
  keep_nonprivate. Evaluations on the server's test set are added after."""
  out = {}
  for k, v in record.items():
    if k in ('round', 'stage') or k in PRIVATE_METRICS:
      out[k] = v
    elif keep_nonprivate:
      out[NONPRIVATE + k] = v
  return out


# ------------------------------------------------------------ a run's schedule


def schedule(recipe, num_clients: int) -> list[Stage]:
  """A run's DP schedule over K = num_clients (recipe: its recipe.Recipe):
  each of its stages (the generator stage if the method has one, then the
  task stage) with its (expected) cohort and its rounds."""
  cfg, cohort = recipe.cfg, recipe.cohort_size(num_clients)
  first = recipe.stage1_rounds
  rounds = ((first,) if first else ()) + (cfg.rounds,)
  count = cfg.dp_clip_count_stddev if cfg.dp_clip_lr > 0 else 0.0
  group = (cfg.dp_group_count_multiplier if cfg.dp_denominator == 'group'
           else 0.0)
  return [Stage(num_clients, cohort, n, cfg.dp_noise_multiplier,
                cfg.client_sampling, count, group) for n in rounds]


def run_delta(cfg, num_clients: int) -> float:
  """--dp_delta, or 1/K^1.1 when it is 0."""
  return cfg.dp_delta or default_delta(num_clients)


def epsilon_after(recipe, num_clients: int, round_: int) -> float:
  """epsilon at the run's delta after its rounds 1..round_ (both stages)."""
  stages, cfg = schedule(recipe, num_clients), recipe.cfg
  done, left = [], round_
  for s in stages:
    done.append(min(left, s.rounds))
    left -= done[-1]
  delta = run_delta(cfg, num_clients)
  if cfg.dp_accountant == 'pld' and all(gaussian_multiplier(s) > 0
                                        for s in stages):
    return _running_pld(tuple(stages), tuple(done)).get_epsilon_for_delta(
        delta)
  return epsilon(stages, delta, done, cfg.dp_accountant)


# stages -> (done, PLD after done): the last schedule position each run
# asked for. A run asks after every round; composing one round onto the
# last PLD (~0.05-0.4 s) instead of all of them again (~2-6 s at 70 rounds)
# keeps per-round epsilons cheap. Equal to PLDAccountant's to ~1e-10
# (tests/test_privacy.py); a resume recomposes its rounds once.
_PLD_CACHE: dict = {}


def _running_pld(stages: tuple, done: tuple):
  """The PLD of rounds done[i] of each stage i, in order (stage 0's
  first), composed one round at a time onto the cached PLD when that is a
  prefix of `done`, else from the first round. Always one round at a time:
  a resumed process then computes each round's epsilon bit for bit as the
  uninterrupted one did (self_compose(n) differs in the 10th digit)."""
  order = [i for i, n in enumerate(done) for _ in range(n)]
  have, pld = _PLD_CACHE.pop(stages, ((0,) * len(stages), None))
  have_order = [i for i, n in enumerate(have) for _ in range(n)]
  if pld is None or order[:len(have_order)] != have_order:
    have_order, pld = [], None
  for i in order[len(have_order):]:
    one = _one_round_pld(stages[i])
    pld = one if pld is None else pld.compose(one)
  if pld is None:
    pld = _dp_accounting().pld.privacy_loss_distribution.identity(
        value_discretization_interval=_PLD_INTERVAL)
  while len(_PLD_CACHE) >= 16:     # a group's runs, one schedule each
    _PLD_CACHE.pop(next(iter(_PLD_CACHE)))
  _PLD_CACHE[stages] = (done, pld)
  return pld


# dp_accounting's PLDAccountant default.
_PLD_INTERVAL = 1e-4


@functools.lru_cache(maxsize=8)
def _one_round_pld(stage: Stage):
  """One Poisson-sampled round's PLD, as PLDAccountant builds it."""
  dp_accounting = _dp_accounting()
  return dp_accounting.pld.privacy_loss_distribution.from_gaussian_mechanism(
      standard_deviation=gaussian_multiplier(stage),
      value_discretization_interval=_PLD_INTERVAL,
      sampling_prob=stage.cohort / stage.num_clients,
      neighboring_relation=(
          dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE))


def check_run(recipe, num_clients: int) -> float:
  """The run's final epsilon; refuses one over --dp_target_epsilon."""
  cfg = recipe.cfg
  return check_target(schedule(recipe, num_clients),
                      run_delta(cfg, num_clients), cfg.dp_target_epsilon,
                      cfg.dp_accountant)
