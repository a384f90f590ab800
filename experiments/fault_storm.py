r"""A storm of faults on a small grouped sweep; nothing may be lost.

  python -m experiments.fault_storm --root=/tmp/storm --faults=100 --seed=0

Runs a sweep of 4 cells (seeds 0-3 of the tests' tiny run, short schedule:
3 + 5 rounds, checkpoints every 2; --runs_per_program=2, so two groups of
two runs) and hits it, again and again, with faults drawn from a seeded RNG,
restarting it until every cell is finished:
  sigkill          SIGKILL at a random time;
  sigkill_in_save  SIGKILL while a checkpoint is being committed (orbax's
                   <r>.orbax-checkpoint-tmp* folder exists);
  sigkill_in_append SIGKILL while a metrics.jsonl line is half written;
  sigterm          SIGTERM at a random time (the run saves its round and
                   exits 75; a restart resumes it);
  second_writer    a second sweep started on the same root while the first
                   runs: counted once one of the two is refused a cell the
                   other holds (then the second is killed).
Random times are uniform over an uninterrupted sweep's wall time, so many
land in start-up (imports, data, compiles) and the rest anywhere in the
rounds. The child processes run under experiments.fault_inject, which holds
each save's commit and each metrics line open for a moment so the timed
kills land inside them; it changes when bytes are written, not which.

When every cell is finished, each cell's metrics.jsonl and checkpoints are
compared with an uninterrupted sweep's (<root>/reference): every round once,
every value bitwise equal (timings aside), the final checkpoint and every
other step both keep bitwise equal, every checkpoint left in
checkpoints/ readable (an unreadable one must have been quarantined). If
faults remain, the finished storm root is set aside and a fresh pass starts.
The table of faults by kind, restarts, cells finished, rounds lost and values
differing goes to stdout and, with --results, to <results>.{md,json}.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

from experiments.paper import provenance

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ('sigkill', 'sigkill_in_save', 'sigkill_in_append', 'sigterm',
         'second_writer')
# The tests' tiny run (tests/tiny.py MODEL) and resume schedule, so the
# storm reuses their compiled programs.
MODEL = dict(dataset='uci_multifeature_small', num_clients=6,
             clients_per_round=3, latent_dim=8, gen_width=32, map_width=16,
             task_width=16, alpha=1e6)
SCHEDULE = dict(gen_rounds=3, rounds=5, checkpoint_every=2,
                keep_checkpoints=3)
SEEDS = (0, 1, 2, 3)
# How long a timed kill waits inside a save / a metrics line (injected).
INJECT = {'save_seconds': 0.3, 'append_seconds': 0.1}
_TIMING = 'seconds'   # record keys ending so are wall-clock, not results


def sweep_cmd(root: str) -> list[str]:
  model = {k: v for k, v in MODEL.items() if k not in ('alpha', 'dataset')}
  return [sys.executable, '-m', 'experiments.fault_inject',
          'experiments.sweep', f'--sweep_root={root}', '--methods=fedrecon',
          f'--alphas={MODEL["alpha"]}', f'--datasets={MODEL["dataset"]}',
          '--seeds=' + ','.join(map(str, SEEDS)), '--runs_per_program=2',
          '--report=false',
          *[f'--{k}={v}' for k, v in {**model, **SCHEDULE}.items()]]


def cells(root: str) -> list[str]:
  return sorted(p for p in glob.glob(os.path.join(root, '*=*'))
                if os.path.isdir(p))


def total_rounds() -> int:
  return SCHEDULE['gen_rounds'] + SCHEDULE['rounds']


def finished(root: str) -> int:
  """How many cells hold a summary.json."""
  return sum(os.path.exists(os.path.join(c, 'summary.json'))
             for c in cells(root))


# ---------------------------------------------------------------------------
# Comparison with an uninterrupted run (shared with the tests).


def _lines(workdir: str) -> list[dict | None]:
  """metrics.jsonl line by line: the record without timings, or None for a
  line that does not parse (a torn line left behind)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        out.append(None)
        continue
      out.append({k: v for k, v in r.items() if not k.endswith(_TIMING)})
  return out


def metrics_differences(workdir: str, reference: str) -> dict:
  """rounds lost / duplicated, unparsable lines and values differing
  between two workdirs' metrics.jsonl (timings aside)."""
  got, want = _lines(workdir), _lines(reference)
  torn = sum(r is None for r in got)
  got = [r for r in got if r is not None]
  rounds = [r['round'] for r in got]
  by_round = {r['round']: r for r in got}
  differing = []
  for w in want:
    g = by_round.get(w['round'])
    if g is None:
      continue
    for k in sorted(set(g) | set(w)):
      # json floats round-trip exactly: equal text is equal bits.
      if json.dumps(g.get(k)) != json.dumps(w.get(k)):
        differing.append(f'round {w["round"]} {k}: {g.get(k)} != {w.get(k)}')
  return {'lost': sorted({w['round'] for w in want} - set(rounds)),
          'duplicated': len(rounds) - len(set(rounds)), 'torn_lines': torn,
          'extra': sorted(set(rounds) - {w['round'] for w in want}),
          'differing': differing}


def _steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if (
      os.path.isdir(d)) else []


def _read_checkpoint(workdir: str, step: int):
  """(state arrays as numpy, meta without timings and workdir)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step))
  state = ocp.StandardCheckpointer().restore(os.path.join(path, 'state'))
  with open(os.path.join(path, 'meta', 'metadata')) as f:
    meta = json.load(f)
  meta['config'].pop('workdir', None)
  meta['metrics'] = [{k: v for k, v in r.items() if not k.endswith(_TIMING)}
                     for r in meta['metrics']]
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}, meta


@functools.lru_cache(maxsize=None)
def _read_reference(reference: str, step: int):
  # Every pass is compared with the same reference: read it once.
  return _read_checkpoint(reference, step)


def checkpoint_differences(workdir: str, reference: str) -> list[str]:
  """What differs between two workdirs' checkpoints, as readable lines: the
  reference's final step missing, or any step both keep differing (every
  array bitwise, the meta item). The steps kept may differ: a SIGTERM saves
  its round off the schedule, and a kill between a save and orbax's removal
  of the oldest step leaves one more (`extra_steps`)."""
  final = _steps(reference)[-1]
  if final not in _steps(workdir):
    return [f'final step {final} missing (kept {_steps(workdir)})']
  out = []
  for step in sorted(set(_steps(workdir)) & set(_steps(reference))):
    got, got_meta = _read_checkpoint(workdir, step)
    want, want_meta = _read_reference(reference, step)
    out += [f'checkpoint {step} {k}: differs'
            for k in sorted(set(got) | set(want))
            if k not in got or k not in want or got[k].dtype != want[k].dtype
            or got[k].tobytes() != want[k].tobytes()]
    if json.dumps(got_meta, sort_keys=True) != json.dumps(want_meta,
                                                          sort_keys=True):
      out.append(f'checkpoint {step} meta differs')
  return out


def extra_steps(workdir: str, reference: str) -> int:
  """Checkpoints kept that the reference does not keep (not a loss)."""
  return len(set(_steps(workdir)) - set(_steps(reference)))


def unreadable_checkpoints(workdir: str) -> list[str]:
  """Unfinished saves or unreadable steps left in checkpoints/ (each must
  have been moved to checkpoints_corrupt/)."""
  d = os.path.join(workdir, 'checkpoints')
  out = [n for n in sorted(os.listdir(d)) if not n.isdigit()
         and n != 'descriptor'] if os.path.isdir(d) else []
  for step in _steps(workdir):
    try:
      _read_checkpoint(workdir, step)
    except Exception as e:  # pylint: disable=broad-except
      out.append(f'{step}: {type(e).__name__}: {str(e)[:200]}')
  return out


def compare(root: str, reference: str) -> dict:
  """Every cell of `root` against its namesake in `reference`."""
  out = {'cells': 0, 'rounds_lost': 0, 'rounds_duplicated': 0,
         'torn_lines': 0, 'values_differing': 0, 'unreadable_left': 0,
         'quarantined': 0, 'extra_steps_kept': 0, 'problems': []}
  for ref in cells(reference):
    name = os.path.basename(ref)
    mine = os.path.join(root, name)
    out['cells'] += 1
    m = metrics_differences(mine, ref)
    c = checkpoint_differences(mine, ref)
    bad = unreadable_checkpoints(mine)
    out['rounds_lost'] += len(m['lost'])
    out['rounds_duplicated'] += m['duplicated'] + len(m['extra'])
    out['torn_lines'] += m['torn_lines']
    out['values_differing'] += len(m['differing']) + len(c)
    out['unreadable_left'] += len(bad)
    out['extra_steps_kept'] += extra_steps(mine, ref)
    corrupt = os.path.join(mine, 'checkpoints_corrupt')
    out['quarantined'] += len(os.listdir(corrupt)) if os.path.isdir(
        corrupt) else 0
    for what, items in (('lost rounds', m['lost']), ('extra', m['extra']),
                        ('differing', m['differing'] + c),
                        ('unreadable', bad)):
      if items:
        out['problems'].append(f'{name}: {what}: {items[:5]}')
    if m['duplicated'] or m['torn_lines']:
      out['problems'].append(f'{name}: {m["duplicated"]} duplicated rounds, '
                             f'{m["torn_lines"]} torn lines')
  return out


# ---------------------------------------------------------------------------
# The storm.


@dataclasses.dataclass
class Storm:
  """One process of the sweep at a time, hit by faults from `rng`."""
  root: str
  rng: random.Random
  span: float            # seconds of an uninterrupted sweep
  env: dict
  log: str               # where the children's output goes
  injected: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  exits: collections.Counter = dataclasses.field(
      default_factory=collections.Counter)
  unopposed: int = 0
  starts: int = 0
  problems: list = dataclasses.field(default_factory=list)

  def start(self, inject: bool = True) -> subprocess.Popen:
    env = dict(self.env, FAULT_INJECT=json.dumps(INJECT if inject else {}))
    with open(self.log, 'a') as out:
      return subprocess.Popen(sweep_cmd(self.root), cwd=REPO, env=env,
                              stdout=out, stderr=subprocess.STDOUT)

  def wait(self, proc, seconds: float) -> bool:
    """Sleeps up to `seconds`; False if proc ended meanwhile."""
    end = time.time() + seconds
    while time.time() < end:
      if proc.poll() is not None:
        return False
      time.sleep(0.01)
    return proc.poll() is None

  def poll_for(self, proc, found) -> bool:
    """Polls found() every ms while proc runs; True once it holds."""
    while proc.poll() is None:
      if found():
        return True
      time.sleep(0.001)
    return False

  def _tmp_dirs(self) -> set:
    return set(glob.glob(os.path.join(self.root, '*', 'checkpoints',
                                      '*.orbax-checkpoint-tmp*')))

  def _sizes(self) -> dict:
    return {p: os.path.getsize(p) for p in glob.glob(
        os.path.join(self.root, '*', 'metrics.jsonl'))}

  def _half_line(self, before: dict) -> bool:
    for path, size in self._sizes().items():
      if size and size != before.get(path):
        with open(path, 'rb') as f:
          f.seek(size - 1)
          if f.read(1) != b'\n':
            return True
    return False

  def fault(self, kind: str, proc) -> bool:
    """Injects one fault of `kind` into proc; False if proc ended first."""
    if kind in ('sigkill', 'sigterm'):
      if not self.wait(proc, self.rng.uniform(0, self.span)):
        return False
      proc.send_signal(signal.SIGKILL if kind == 'sigkill' else
                       signal.SIGTERM)
      if kind == 'sigterm':   # it saves its round and exits on its own
        proc.wait(timeout=300)
      return True
    if kind == 'sigkill_in_save':
      before = self._tmp_dirs()
      if not self.poll_for(proc, lambda: self._tmp_dirs() - before):
        return False
      # Anywhere inside the held commit.
      time.sleep(self.rng.uniform(0, INJECT['save_seconds'] * 0.9))
    elif kind == 'sigkill_in_append':
      before = self._sizes()
      if not self.poll_for(proc, lambda: self._half_line(before)):
        return False
    elif kind == 'second_writer':
      return self.second_writer(proc)
    proc.send_signal(signal.SIGKILL)
    return True

  def second_writer(self, proc) -> bool:
    """Starts a second sweep on the root while proc runs; True once one of
    the two was refused a cell the other held (the second is killed then:
    else it would train the other group beside proc). A second writer that
    met no held cell (proc was between groups or done) is killed and
    counted as `second_writer_unopposed`, not as this fault."""
    if not self.wait(proc, self.rng.uniform(0, self.span)):
      return False
    start = os.path.getsize(self.log) if os.path.exists(self.log) else 0
    second = self.start(inject=False)
    refused = False
    try:
      end = time.time() + 120
      while not refused and second.poll() is None and time.time() < end:
        time.sleep(0.02)
        with open(self.log) as f:
          f.seek(start)
          refused = 'in use by another run' in f.read()
    finally:
      second.kill()
      second.wait()
    self.unopposed += not refused
    return refused

  def run(self, kinds: list[str]) -> list[str]:
    """Restarts the sweep, injecting kinds in order, until every cell is
    finished; returns the kinds not injected (the cells finished first)."""
    kinds = list(kinds)
    while finished(self.root) < len(SEEDS) or not cells(self.root):
      proc = self.start()
      self.starts += 1
      while kinds and proc.poll() is None:
        if self.fault(kinds[0], proc):
          self.injected[kinds.pop(0)] += 1
      code = proc.wait(timeout=600)
      self.exits[code] += 1
      if code not in (0, -signal.SIGKILL, -signal.SIGTERM, 75):
        raise RuntimeError(f'the sweep exited {code}; see {self.log}')
    return kinds


def run_reference(root: str, env: dict) -> float:
  """The uninterrupted sweep (once per root); its wall time."""
  t0 = time.time()
  if finished(root) < len(SEEDS):
    subprocess.run(sweep_cmd(root), cwd=REPO, check=True, env=dict(
        env, FAULT_INJECT='{}'), stdout=subprocess.DEVNULL)
  return time.time() - t0


def storm(root: str, faults: int, seed: int, env: dict | None = None,
          log=print, each_pass=None) -> dict:
  """Injects `faults` faults (kinds in turn, each round of kinds in a
  seeded order) over as many passes of the sweep as it takes; returns the
  totals (see the module docstring). each_pass(totals so far) is called
  after every pass."""
  env = dict(os.environ if env is None else env)
  env.setdefault('TFDS_DATA_DIR', os.path.join(root, 'tfds'))
  reference = os.path.join(root, 'reference')
  t0 = time.time()
  # A cold reference pays the compiles; time a second, warm sweep instead.
  run_reference(reference, env)
  span = run_reference(os.path.join(root, 'timing'), env)
  rng = random.Random(seed)
  plan = []
  while len(plan) < faults:
    plan += rng.sample(KINDS, len(KINDS))
  plan = plan[:faults]
  totals = collections.Counter()
  s = Storm(os.path.join(root, 'storm'), rng, span, env,
            os.path.join(root, 'storm.log'))
  passes, totals['planned'] = 0, faults
  while plan or not passes:
    if os.path.exists(s.root):   # a finished pass: keep it, start afresh
      os.replace(s.root, os.path.join(root, f'pass{passes}'))
    plan = s.run(plan)
    passes += 1
    got = compare(s.root, reference)
    for k, v in got.items():
      if k != 'problems':
        totals[k] += v
    for p in got['problems']:
      log(f'pass {passes}: {p}')
      s.problems.append(f'pass {passes}: {p}')
    log(f'pass {passes}: {sum(s.injected.values())} faults so far, '
        f'{s.starts} starts, {got["cells"]} cells compared')
    if each_pass is not None:
      each_pass(_totals(s, totals, passes, span, t0, seed))
  return _totals(s, totals, passes, span, t0, seed)


def rescore(root: str, result: dict) -> dict:
  """`result` (a storm's totals) with every pass kept under `root`
  compared again by this module's `compare`: for a storm whose passes were
  compared by an older harness."""
  passes = sorted(glob.glob(os.path.join(root, 'pass*')),
                  key=lambda p: int(p.rsplit('pass', 1)[1]))
  totals, problems = collections.Counter(), []
  for i, d in enumerate(passes + [os.path.join(root, 'storm')], 1):
    got = compare(d, os.path.join(root, 'reference'))
    totals.update({k: v for k, v in got.items() if k != 'problems'})
    problems += [f'pass {i}: {p}' for p in got['problems']]
  return {**result, 'cells_finished': totals['cells'],
          **{k: totals[k] for k in ('rounds_lost', 'rounds_duplicated',
                                    'torn_lines', 'values_differing',
                                    'unreadable_left', 'quarantined',
                                    'extra_steps_kept')},
          'problems': problems[:20], 'compared_at': provenance.commit()}


def _totals(s: Storm, totals, passes, span, t0, seed) -> dict:
  return {'faults': {k: s.injected[k] for k in KINDS},
          'faults_planned': totals['planned'],
          'faults_total': sum(s.injected.values()),
          'second_writer_unopposed': s.unopposed, 'starts': s.starts,
          'restarts': s.starts - passes, 'passes': passes,
          'exit_codes': {str(k): v for k, v in sorted(s.exits.items())},
          'cells_finished': totals['cells'], **{k: totals[k] for k in (
              'rounds_lost', 'rounds_duplicated', 'torn_lines',
              'values_differing', 'unreadable_left', 'quarantined',
              'extra_steps_kept')},
          'sweep_seconds': span, 'wall_seconds': time.time() - t0,
          'seed': seed, 'problems': s.problems[:20]}


def table(result: dict) -> str:
  f = result['faults']
  rows = [('faults injected', result['faults_total']),
          *((f'  {k}', f[k]) for k in KINDS),
          ('  (second writers that met no held cell, not counted)',
           result['second_writer_unopposed']),
          ('storm passes (4 cells each)', result['passes']),
          ('restarts', result['restarts']),
          ('cells finished', result['cells_finished']),
          ('rounds lost', result['rounds_lost']),
          ('rounds duplicated', result['rounds_duplicated']),
          ('torn lines left', result['torn_lines']),
          ('values differing', result['values_differing']),
          ('unreadable checkpoints left', result['unreadable_left']),
          ('saves quarantined', result['quarantined']),
          ('checkpoints kept off the schedule (not a loss)',
           result.get('extra_steps_kept', 0)),
          ('wall seconds', f'{result["wall_seconds"]:.0f}')]
  return '\n'.join(['| | |', '|---|---|'] +
                   [f'| {k} | {v} |' for k, v in rows])


def write_results(result: dict, path: str) -> None:
  # A rescored storm keeps the commit that injected its faults.
  result = {'commit': provenance.commit(), 'cpu_count': os.cpu_count(),
            **result}
  with open(path + '.json', 'w') as f:
    json.dump(result, f, indent=1)
  with open(path + '.md', 'w') as f:
    f.write(
        f'# Fault storm on CPU (commit {result["commit"]})\n\n'
        + (f'Passes compared again (`--rescore`) at commit '
           f'{result["compared_at"]}.\n\n' if 'compared_at' in result
           else '') +
        f'`python -m experiments.fault_storm --faults={result["faults_planned"]}'
        f' --seed={result["seed"]}` on {result["cpu_count"]} CPU cores '
        '(shared with other jobs, so times are upper bounds): 4 cells of '
        'the tests\' tiny run (3 + 5 rounds, checkpoints every 2), '
        '--runs_per_program=2. An uninterrupted sweep took '
        f'{result["sweep_seconds"]:.1f} s; the storm '
        f'{result["wall_seconds"] / 60:.1f} min'
        + ('' if result['faults_total'] >= result['faults_planned'] else
           f' so far (in progress: {result["faults_total"]} of '
           f'{result["faults_planned"]} faults)') + '.\n\n' + table(result)
        + '\n')


FLAGS = flags.FLAGS


def define_flags() -> None:
  # Not at import: the tests import this module beside other entry points.
  flags.DEFINE_string('root', None, 'Folder for the reference, the storm '
                      'passes and the children\'s log.')
  flags.DEFINE_integer('faults', 20, 'Faults to inject, kinds in turn.')
  flags.DEFINE_integer('seed', 0, 'Seed of the fault order and timing.')
  flags.DEFINE_string('results', None, 'Write <results>.md and .json (e.g. '
                      'experiments/results/fault_storm_cpu).')
  flags.DEFINE_bool('rescore', False, 'Inject nothing: compare the passes '
                    'kept under --root again and rewrite --results.')


def main(argv):
  del argv
  if not FLAGS.root:
    sys.exit('error: --root is required.')
  if FLAGS.faults < 1:
    sys.exit(f'error: --faults={FLAGS.faults} must be >= 1.')
  logging.set_verbosity(logging.WARNING)
  if FLAGS.rescore:
    if not FLAGS.results:
      sys.exit('error: --rescore needs --results (the storm\'s JSON).')
    with open(FLAGS.results + '.json') as f:
      result = json.load(f)
    result = rescore(FLAGS.root, result)
  else:
    result = storm(FLAGS.root, FLAGS.faults, FLAGS.seed, each_pass=(
        None if not FLAGS.results else
        lambda r: write_results(r, FLAGS.results)))
  print(table(result))
  if FLAGS.results:
    write_results(result, FLAGS.results)
  if result['rounds_lost'] or result['values_differing'] or (
      result['rounds_duplicated'] or result['unreadable_left']):
    sys.exit('error: the storm lost or changed results (see above).')


if __name__ == '__main__':
  define_flags()
  app.run(main)
