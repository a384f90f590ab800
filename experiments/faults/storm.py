"""A seeded part of the storm: faults of each kind until `per_kind` of each
took a path that counts (kinds.KINDS), over as many passes of each target
as it takes; each finished pass compared file by file with the target's
uninterrupted reference (compare.py).

The seed draws the order of the kinds, the rounds kills are aimed at and
their delays; a part's result is a JSON object (`run_part`) that
page.py adds up with the other parts'. Seconds are charged to a kind from
when the storm starts aiming one of its faults (waiting for the phase,
which after a kill includes the restart) until it starts aiming the next.
The references, the passes' last rounds and the comparisons are
`overhead_seconds`.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import time

from experiments.faults import compare, kinds, live as live_lib, targets
from experiments.paper import provenance

# An ineffective path this many times in a row: the kind cannot land here.
MAX_MISSES = 20


def reference(target: targets.Target, root: str, env: dict) -> None:
  """The target's uninterrupted run in root (once per root)."""
  if target.finished(root):
    return
  os.makedirs(root, exist_ok=True)
  live = live_lib.Live(target, root, env, os.path.join(root, 'log'),
                       inject=False)
  live.start_missing()
  live.wait_all()
  live.reap()
  if not target.finished(root):
    raise RuntimeError(f'the reference {target.name} did not finish; see '
                       f'{live.logs}')


class Part:
  """Counts and seconds of one part."""

  def __init__(self, seed: int, per_kind: int):
    self.rng = random.Random(seed)
    self.seed, self.per_kind = seed, per_kind
    self.paths = {k: collections.Counter() for k in kinds.KINDS}
    self.seconds = collections.Counter()
    self.totals = None
    self.problems: list[str] = []
    self.passes = collections.Counter()
    self.starts = 0
    self.exits = collections.Counter()
    self.t0 = time.time()
    self.commit = provenance.commit()   # the code the faults hit

  def effective(self, kind: str) -> int:
    counted = kinds.KINDS[kind][2]
    return sum(n for p, n in self.paths[kind].items() if p in counted)

  def add(self, got: dict) -> None:
    if self.totals is None:
      self.totals = {k: v for k, v in got.items() if k != 'problems'}
    else:
      for k, v in got.items():
        if k == 'values_differing':
          for f, n in v.items():
            self.totals[k][f] += n
        elif k != 'problems':
          self.totals[k] += v
    self.problems += got['problems']

  def storm_pass(self, target: targets.Target, root: str, plan: list,
                 env: dict, log) -> None:
    """A fresh root of target restarted until finished, hit by plan's kinds
    in turn (popped once one counts)."""
    live = live_lib.Live(target, root, env, root + '.out')
    try:
      self._hit(live, target, root, plan)
    finally:   # no process outlives a pass that raised
      live.kill_all()
    self.starts += live.starts
    self.exits.update(live.exits)
    log(f'{target.name} pass {self.passes[target.name]}: '
        f'{live.starts} starts, faults so far '
        f'{ {k: self.effective(k) for k in kinds.KINDS} }')

  def _hit(self, live, target, root: str, plan: list) -> None:
    misses, last = 0, None
    while True:
      live.reap()
      if target.finished(root) and not live.running():
        break
      if len(live.done) == target.processes:   # a shard left cells busy
        live.done.clear()
      live.start_missing()
      if not plan:
        live.wait_all()
        continue
      kind, now = plan[0], time.time()
      if last is not None:
        self.seconds[last[0]] += now - last[1]
      last = (kind, now)
      path = kinds.KINDS[kind][0](self.rng, live)
      if path is None:
        continue
      self.paths[kind][path] += 1
      if path in kinds.KINDS[kind][2]:
        plan.pop(0)
        misses = 0
        if not plan:   # the rest of the pass is overhead
          self.seconds[kind] += time.time() - last[1]
          last = None
      else:
        misses += 1
        if misses >= MAX_MISSES:
          raise RuntimeError(f'{kind}: {misses} faults in a row took no '
                             f'counted path ({dict(self.paths[kind])})')
    if last is not None:
      self.seconds[last[0]] += time.time() - last[1]

  def run_target(self, target: targets.Target, plan: list, root: str,
                 env: dict, log) -> None:
    ref = os.path.join(root, f'reference-{target.name}')
    reference(target, ref, env)
    while plan:
      self.passes[target.name] += 1
      mine = os.path.join(root, f'{target.name}-pass')
      if os.path.exists(mine):
        shutil.rmtree(mine)
      self.storm_pass(target, mine, plan, env, log)
      got = compare.compare([(os.path.join(mine, os.path.basename(w)), w)
                             for w in target.workdirs(ref)])
      self.add(got)
      for p in got['problems']:
        log(f'{target.name} pass {self.passes[target.name]}: {p}')
      if got['problems'] or not compare.clean(got):
        # Kept for a look; a clean pass is deleted (disk).
        os.replace(mine, f'{mine}{self.passes[target.name]}-problem')

  def result(self) -> dict:
    return {
        'commit': self.commit, 'seed': self.seed,
        'per_kind': self.per_kind, 'cpu_count': os.cpu_count(),
        'faults': {k: dict(v) for k, v in self.paths.items() if v},
        'effective': {k: self.effective(k) for k in kinds.KINDS
                      if self.paths[k]},
        'seconds': dict(self.seconds),
        'wall_seconds': time.time() - self.t0,
        'passes': dict(self.passes), 'starts': self.starts,
        'exit_codes': dict(sorted(self.exits.items())),
        **(self.totals or {}), 'problems': self.problems[:20]}


def plan_for(rng: random.Random, chosen: list[str], per_kind: int) -> list:
  """per_kind of each kind, in seeded order, a round of all at a time."""
  plan = []
  for _ in range(per_kind):
    plan += rng.sample(chosen, len(chosen))
  return plan


def run_part(root: str, seed: int, per_kind: int, chosen=None,
             target: str | None = None, env: dict | None = None,
             log=print) -> dict:
  """Storms root with per_kind counted faults of each kind in `chosen`
  (default: all); `target` puts the single-process kinds on another target
  than the sweep (the tests' `run`). Returns the part's result."""
  env = dict(os.environ if env is None else env)
  env.setdefault('TFDS_DATA_DIR', os.path.join(root, 'tfds'))
  # As the tests (conftest.py): LLVM -O0 halves the compiles of programs
  # that run a few rounds, and the programs are the tests' own.
  if '--xla_backend_optimization_level' not in env.get('XLA_FLAGS', ''):
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '')
                        + ' --xla_backend_optimization_level=0').strip()
  part = Part(seed, per_kind)
  chosen = list(chosen or kinds.KINDS)
  by_target = collections.defaultdict(list)
  for kind in chosen:
    name = kinds.KINDS[kind][1]
    by_target[target if target and name == 'sweep' else name].append(kind)
  overhead = time.time()
  for name, its_kinds in by_target.items():
    plan = plan_for(part.rng, its_kinds, per_kind)
    part.run_target(targets.TARGETS[name], plan, root, env, log)
  result = part.result()
  result['overhead_seconds'] = (time.time() - overhead
                                - sum(part.seconds.values()))
  return result
