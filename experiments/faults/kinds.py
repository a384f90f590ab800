"""The fault kinds: how each is aimed at the phase it means to hit, and the
path it took, of which only some count (`KINDS`: target, counted paths).

  sigkill            SIGKILL in the rounds: once a round >= r (drawn) is
                     printed, within SPREAD seconds.
  sigkill_in_save    SIGKILL inside a checkpoint commit (orbax's
                     <r>.orbax-checkpoint-tmp* folder exists). Counted if
                     the folder is still there after the kill.
  sigkill_in_append  SIGKILL while a metrics.jsonl line is half written.
                     Counted if the line is still torn after the kill.
  sigterm            SIGTERM once a round in [r, last - 2] is printed (the
                     handler is installed and a round is left to stop at).
                     Counted if handled: the run saved its round and exited
                     75. Exit -15 (landed outside the handler) and exit 0
                     (no effect) are shown, not counted.
  second_writer      a second process on the same root while the first is
                     in its rounds. Counted if one of the two is refused a
                     workdir the other holds (then the second is killed: it
                     would train the other group beside the first).
  distributed        a 2-process run, one of two faults (a fair draw each
                     time): SIGKILL to one process in the rounds (a lost
                     node; the survivor is killed after SURVIVOR_SECONDS if
                     it has not ended, as a scheduler restarts the job), or
                     SIGTERM to both (counted if both exit 75).
  shards             two shards of the sweep on one root: SIGKILL to one,
                     drawn, in its rounds; it restarts while the other runs.

A fault function returns its path, or None if the processes ended before it
could land (nothing is counted then).
"""

from __future__ import annotations

import glob
import os
import random
import signal
import time

from experiments.faults import live as live_lib
from experiments.faults import targets

TOTAL = targets.TOTAL_ROUNDS
SPREAD = 1.0            # a timed kill lands within this after its round
SURVIVOR_SECONDS = 5.0
SECOND_WRITER_SECONDS = 120.0


def _kill(live, i: int, sig=signal.SIGKILL, timeout: float = 300) -> int:
  p = live.procs[i]
  p.send_signal(sig)
  return p.wait(timeout=timeout)


def sigkill(rng: random.Random, live) -> str | None:
  if not live.wait_for_round(0, rng.randint(1, TOTAL)):
    return None
  if not live.sleep(rng.uniform(0, SPREAD)):
    return None
  _kill(live, 0)
  return 'in_rounds'


def _tmp_dirs(root: str) -> set:
  return set(glob.glob(os.path.join(root, '**', 'checkpoints',
                                    '*.orbax-checkpoint-tmp*'),
                       recursive=True))


def sigkill_in_save(rng: random.Random, live) -> str | None:
  before = _tmp_dirs(live.root)
  new = set()
  while not new and live.running():
    new = _tmp_dirs(live.root) - before
    time.sleep(0.001)
  if not new:
    return None
  # Anywhere inside the held commit.
  time.sleep(rng.uniform(0, live_lib.INJECT['save_seconds'] * 0.9))
  _kill(live, 0)
  return 'in_commit' if any(os.path.exists(d) for d in new) else (
      'after_commit')


def _metrics_files(root: str) -> dict:
  return {p: os.path.getsize(p) for p in glob.glob(
      os.path.join(root, '**', 'metrics.jsonl'), recursive=True)}


def _torn(path: str) -> bool:
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    f.seek(max(size - 1, 0))
    return size > 0 and f.read(1) != b'\n'


def sigkill_in_append(rng: random.Random, live) -> str | None:
  del rng
  before = _metrics_files(live.root)
  torn = None
  while torn is None and live.running():
    torn = next((p for p, size in _metrics_files(live.root).items()
                 if size != before.get(p) and _torn(p)), None)
    time.sleep(0.001)
  if torn is None:
    return None
  _kill(live, 0)
  return 'torn_line' if _torn(torn) else 'whole_line'


def _sigterm_path(codes: list[int]) -> str:
  if all(c == 75 for c in codes):
    return 'handled'
  if -signal.SIGTERM in codes:
    return 'outside_handler'
  if all(c == 0 for c in codes):
    return 'no_effect'
  return 'exits_' + '_'.join(map(str, codes))


def sigterm(rng: random.Random, live) -> str | None:
  if not live.wait_for_round(0, rng.randint(1, TOTAL - 2), TOTAL - 2):
    return None
  return _sigterm_path([_kill(live, 0, signal.SIGTERM)])


def second_writer(rng: random.Random, live) -> str | None:
  if not live.wait_for_round(0, rng.randint(1, TOTAL)):
    return None
  log = live.logs[0] + '.second'
  start = os.path.getsize(log) if os.path.exists(log) else 0
  second = live.popen(live.target.commands(live.root)[0], log, inject=False)
  refused = False
  try:
    end = time.time() + SECOND_WRITER_SECONDS
    while not refused and second.poll() is None and time.time() < end:
      time.sleep(0.02)
      with open(log) as f:
        f.seek(start)
        refused = 'in use by another run' in f.read()
  finally:
    second.kill()
    second.wait()
  return 'refused' if refused else 'unopposed'


def distributed(rng: random.Random, live) -> str | None:
  if rng.random() < 0.5:
    if not live.wait_for_round(0, rng.randint(1, TOTAL - 2), TOTAL - 2):
      return None
    for p in live.procs:
      p.send_signal(signal.SIGTERM)
    return 'sigterm_both_' + _sigterm_path([p.wait(timeout=300)
                                            for p in live.procs])
  if not live.wait_for_round(0, rng.randint(1, TOTAL)):
    return None
  if not live.sleep(rng.uniform(0, SPREAD)) or len(live.running()) < 2:
    return None
  victim = rng.randrange(2)
  _kill(live, victim)
  survivor = live.procs[1 - victim]
  live.excused.add(1 - victim)   # its peer is gone: any status
  end = time.time() + SURVIVOR_SECONDS
  while survivor.poll() is None and time.time() < end:
    time.sleep(0.05)
  if survivor.poll() is None:
    survivor.kill()
    survivor.wait()
    return 'sigkill_one_survivor_killed'
  return 'sigkill_one_survivor_exited'


def shards(rng: random.Random, live) -> str | None:
  running = live.running()
  if not running:
    return None
  victim = rng.choice(running)
  if not live.wait_for_round(victim, rng.randint(1, TOTAL)):
    return None
  if not live.sleep(rng.uniform(0, SPREAD)):
    return None
  if live.procs[victim].poll() is not None:
    return None
  _kill(live, victim)
  return 'killed_in_rounds'


# kind: (its fault, the target it hits by default, the paths that count)
KINDS = {
    'sigkill': (sigkill, 'sweep', {'in_rounds'}),
    'sigkill_in_save': (sigkill_in_save, 'sweep', {'in_commit'}),
    'sigkill_in_append': (sigkill_in_append, 'sweep', {'torn_line'}),
    'sigterm': (sigterm, 'sweep', {'handled'}),
    'second_writer': (second_writer, 'sweep', {'refused'}),
    'distributed': (distributed, 'distributed', {
        'sigterm_both_handled', 'sigkill_one_survivor_killed',
        'sigkill_one_survivor_exited'}),
    'shards': (shards, 'shards', {'killed_in_rounds'}),
}
