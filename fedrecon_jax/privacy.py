"""Privacy accounting for client-level DP-FedAvg (dp.py) with Google's
`dp-accounting` package (the accountant Flower wraps): a well-kept RDP
accountant rather than our own.

Sampling: each round's cohort is `cohort` of the `num_clients` clients drawn
uniformly without replacement (rounds.cohort_ids), so a round is a
SampledWithoutReplacementDpEvent of a Gaussian mechanism, accounted under the
replace-one neighbouring relation that event is defined for. Replacing one
client moves the sum of clipped updates by at most 2C, so the Gaussian event's
noise multiplier relative to that sensitivity is z / 2.

The two stages compose: the generator stage's rounds (its own cohort and
round count) then the task stage's, as one ComposedDpEvent.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, Sequence


def _dp_accounting():
  # Imported on first use: it pulls in scipy and mpmath, which would slow
  # every run's start-up (and a second writer's refusal) when DP is off.
  return importlib.import_module('dp_accounting')


class Stage(NamedTuple):
  """One stage's DP schedule."""
  num_clients: int
  cohort: int
  rounds: int
  noise_multiplier: float


def default_delta(num_clients: int) -> float:
  """1 / K^1.1: below 1/K, as a delta must be to mean anything."""
  return 1.0 / num_clients ** 1.1


def round_event(stage: Stage):
  """One round of `stage` as a dp_accounting event."""
  dp_accounting = _dp_accounting()
  return dp_accounting.SampledWithoutReplacementDpEvent(
      source_dataset_size=stage.num_clients, sample_size=stage.cohort,
      event=dp_accounting.GaussianDpEvent(stage.noise_multiplier / 2.0))


def schedule_event(stages: Sequence[Stage],
                   done: Sequence[int] | None = None):
  """The stages composed in order (a dp_accounting event); done[i] = rounds
  of stage i counted (default: all of them)."""
  dp_accounting = _dp_accounting()
  done = [s.rounds for s in stages] if done is None else done
  return dp_accounting.ComposedDpEvent([
      dp_accounting.SelfComposedDpEvent(round_event(s), n)
      for s, n in zip(stages, done) if n > 0])


def epsilon(stages: Sequence[Stage], delta: float,
            done: Sequence[int] | None = None) -> float:
  """epsilon at `delta` after done[i] rounds of stage i."""
  for s in stages:
    if s.noise_multiplier <= 0:
      return float('inf')
  dp_accounting = _dp_accounting()
  acc = dp_accounting.rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  acc.compose(schedule_event(stages, done))
  return float(acc.get_epsilon(delta))


def check_target(stages: Sequence[Stage], delta: float,
                 target: float) -> float:
  """The schedule's final epsilon; ValueError naming --dp_target_epsilon
  when it exceeds `target` (checked before the first round)."""
  eps = epsilon(stages, delta)
  if target > 0 and eps > target:
    raise ValueError(
        f'--dp_target_epsilon={target}: the schedule reaches epsilon={eps:.4g}'
        f' at delta={delta:.3g}; raise --dp_noise_multiplier or lower the '
        'rounds or cohort size.')
  return eps


# ------------------------------------------------------------ a run's schedule


def schedule(cfg, num_clients: int) -> list[Stage]:
  """A Config's DP schedule over K = num_clients: the generator stage (if
  the method has one) then the task stage, each with its cohort
  (min(--clients_per_round, K)) and its rounds."""
  cohort = min(cfg.clients_per_round, num_clients)
  rounds = ((cfg.stage1_rounds,) if cfg.stage1_rounds else ()) + (cfg.rounds,)
  return [Stage(num_clients, cohort, n, cfg.dp_noise_multiplier)
          for n in rounds]


def run_delta(cfg, num_clients: int) -> float:
  """--dp_delta, or 1/K^1.1 when it is 0."""
  return cfg.dp_delta or default_delta(num_clients)


def epsilon_after(cfg, num_clients: int, round_: int) -> float:
  """epsilon at the run's delta after its rounds 1..round_ (both stages)."""
  stages = schedule(cfg, num_clients)
  done, left = [], round_
  for s in stages:
    done.append(min(left, s.rounds))
    left -= done[-1]
  return epsilon(stages, run_delta(cfg, num_clients), done)


def check_run(cfg, num_clients: int) -> float:
  """The run's final epsilon; refuses one over --dp_target_epsilon."""
  return check_target(schedule(cfg, num_clients),
                      run_delta(cfg, num_clients), cfg.dp_target_epsilon)
