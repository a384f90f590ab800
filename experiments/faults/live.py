"""A target's processes while a storm pass runs: starting and restarting
them, their output, and the markers faults are aimed by (the rounds each
process has printed since it started)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

from experiments.faults import targets

# How long a timed kill waits inside a save / a metrics line (injected).
INJECT = {'save_seconds': 0.3, 'append_seconds': 0.1}
# Exit statuses a stormed process may end with: finished, requeue after a
# SIGTERM (preemption.EXIT_REQUEUE), killed by SIGKILL / SIGTERM.
EXPECTED_EXITS = (0, 75, -signal.SIGKILL, -signal.SIGTERM)
_ROUND = re.compile(r'round (\d+)/\d+ stage')


class Live:
  """The processes of one target writing `root`, each with its own log."""

  def __init__(self, target: targets.Target, root: str, env: dict,
               log_prefix: str, inject: bool = True):
    self.target, self.root, self.inject = target, root, inject
    self.env = env
    self.logs = [f'{log_prefix}.{i}.log' for i in range(target.processes)]
    self.procs: list[subprocess.Popen | None] = [None] * target.processes
    self.offsets = [0] * target.processes
    self.done: set[int] = set()     # exited 0
    self.excused: set[int] = set()  # ended by a peer's fault: any status
    self.starts = 0
    self.exits: dict[str, int] = {}

  def popen(self, cmd: list[str], log: str, inject: bool):
    env = dict(self.env, FAULT_INJECT=json.dumps(INJECT if inject else {}))
    with open(log, 'a') as out:
      return subprocess.Popen(cmd, cwd=targets.REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT)

  def start_missing(self) -> None:
    """Starts every process that is not running and not done (all of them
    if the target restarts together and one is missing)."""
    missing = [i for i, p in enumerate(self.procs)
               if (p is None or p.poll() is not None) and i not in self.done]
    if self.target.together and missing:
      self.kill_all()
      missing = list(range(self.target.processes))
      self.done.clear()
    cmds = self.target.commands(self.root)
    for i in missing:
      self.offsets[i] = (os.path.getsize(self.logs[i])
                         if os.path.exists(self.logs[i]) else 0)
      self.procs[i] = self.popen(cmds[i], self.logs[i], self.inject)
      self.starts += 1

  def running(self) -> list[int]:
    return [i for i, p in enumerate(self.procs)
            if p is not None and p.poll() is None]

  def reap(self) -> None:
    """Records the status of each ended process; exit 0 is done. Raises on
    a status no fault explains."""
    for i, p in enumerate(self.procs):
      if p is None or p.poll() is None:
        continue
      code = p.returncode
      self.exits[str(code)] = self.exits.get(str(code), 0) + 1
      if code not in EXPECTED_EXITS and i not in self.excused:
        raise RuntimeError(f'{self.target.name} process {i} exited {code}; '
                           f'see {self.logs[i]}')
      if code == 0:
        self.done.add(i)
      self.procs[i] = None
    self.excused.clear()

  def wait_all(self, timeout: float = 900) -> None:
    for p in self.procs:
      if p is not None:
        p.wait(timeout=timeout)

  def kill_all(self) -> None:
    for p in self.procs:
      if p is not None and p.poll() is None:
        p.kill()
        p.wait()

  def rounds(self, i: int) -> list[int]:
    """The rounds process i has printed since it (re)started."""
    with open(self.logs[i], 'rb') as f:
      f.seek(self.offsets[i])
      text = f.read().decode(errors='replace')
    return [int(r) for r in _ROUND.findall(text)]

  def wait_for_round(self, i: int, lo: int, hi: int | None = None) -> bool:
    """Waits until process i's last printed round is in [lo, hi]; False if
    it ended first."""
    p = self.procs[i]
    while p is not None and p.poll() is None:
      printed = self.rounds(i)
      if printed and lo <= printed[-1] <= (hi or printed[-1]):
        return True
      time.sleep(0.005)
    return False

  def sleep(self, seconds: float) -> bool:
    """Sleeps up to `seconds`; False if every process ended meanwhile."""
    end = time.time() + seconds
    while time.time() < end and self.running():
      time.sleep(0.005)
    return bool(self.running())
