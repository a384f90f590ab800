"""Rates and time left, for the per-round line of a run and the per-cell
line of a sweep."""

from __future__ import annotations

import time

from fedrecon_jax.methods import GEN_STAGE


def duration(seconds: float | None) -> str:
  """'42s', '3m05s', '2h07m', or '?' when unknown."""
  if seconds is None:
    return '?'
  s = int(round(seconds))
  if s < 60:
    return f'{s}s'
  if s < 3600:
    return f'{s // 60}m{s % 60:02d}s'
  return f'{s // 3600}h{s % 3600 // 60:02d}m'


class Rate:
  """Items per second since the first `tick`.

  The first item of a stage or sweep pays for compilation, so the clock
  starts when it ends: the rate is that of the items after it (until there
  is one, the first item's own time stands in).
  """

  def __init__(self, start: float | None = None):
    self._start = time.time() if start is None else start
    self._first_end = self._first_seconds = self._last = None
    self.count = 0

  def tick(self) -> None:
    now = time.time()
    self.count += 1
    if self._first_end is None:
      self._first_end, self._first_seconds = now, now - self._start
    self._last = now

  def per_second(self) -> float | None:
    if self.count == 0:
      return None
    if self.count == 1:
      return 1.0 / max(self._first_seconds, 1e-9)
    return (self.count - 1) / max(self._last - self._first_end, 1e-9)

  def eta(self, left: int) -> float | None:
    rate = self.per_second()
    return None if rate is None else left / rate


class RunProgress:
  """The '[0.85 rounds/s, stage ETA 12s, run ETA 1m30s]' part of a round's
  line. The run's ETA prices the later stage's rounds at the current rate
  (its program is not compiled yet, so it is a rough lower bound)."""

  def __init__(self, recipe):
    self.recipe = recipe   # recipe.Recipe: the run's stages and rounds
    self._stage, self._rate, self._last = None, None, time.time()

  def round_done(self, round_: int) -> str:
    stage = self.recipe.stage(round_)
    if stage != self._stage:
      self._stage, self._rate = stage, Rate(start=self._last)
    self._rate.tick()
    self._last = time.time()
    stage_end = (self.recipe.stage1_rounds if stage == GEN_STAGE
                 else self.recipe.total_rounds)
    return (f'[{self._rate.per_second():.3g} rounds/s, stage ETA '
            f'{duration(self._rate.eta(stage_end - round_))}, run ETA '
            f'{duration(self._rate.eta(self.recipe.total_rounds - round_))}]')
