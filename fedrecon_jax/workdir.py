"""A run's workdir: one writer at a time, checked writable, and whether the
run it holds is finished. Light on purpose (no JAX): sweeps and reports
import it.

The lock is an fcntl.flock on <workdir>/writer.lock, which holds JSON naming
the holder (host, pid, start time) for the error a second writer gets. The
kernel drops a flock when its process dies, however it dies, so a lock file
whose lock is free was left by a dead process: it is taken over with a
warning, and no pid liveness guessing (pid reuse, other hosts) is needed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket

from absl import logging

from fedrecon_jax import config as config_lib
from fedrecon_jax import atomic

SUMMARY = 'summary.json'
LOCK_FILE = 'writer.lock'
METRICS_FILE = 'metrics.jsonl'   # written by metrics_writer
# Room kept free beyond the checkpoints: metrics.jsonl, TensorBoard, summary.
_SLACK_BYTES = 64 << 20


class WorkdirError(ValueError):
  """The workdir cannot be written, or has no room for the run."""


class AppendFailed(WorkdirError):
  """Appending a round to metrics.jsonl or TensorBoard failed (a full disk).
  The message names the checkpoints when it is shown, which is after the
  loop has closed its checkpointer: a save still in flight at the failure
  has committed by then, and is kept."""

  def __init__(self, workdir: str, what: str, error: OSError,
               rounds: list[int]):
    super().__init__(workdir, what, error, rounds)

  def __str__(self) -> str:
    workdir, what, error, rounds = self.args
    ckpts = os.path.join(workdir, 'checkpoints')
    steps = sorted(int(n) for n in os.listdir(ckpts) if n.isdigit()) if (
        os.path.isdir(ckpts)) else []
    span = f'rounds {rounds[0]}-{rounds[-1]}' if rounds else 'no round'
    return (f'--workdir={workdir}: {what} failed: {error}. Kept '
            f'{METRICS_FILE} {span} and the checkpoints '
            f'{steps}; re-running the command resumes from the latest once '
            'the disk has room.')


class WorkdirBusyError(ValueError):
  """Another live process holds the workdir's lock."""


def _holder_text(info: dict) -> str:
  return (f'pid {info.get("pid", "?")} on host {info.get("host", "?")} '
          f'since {info.get("since", "?")}')


def _read_holder(f) -> dict:
  f.seek(0)
  try:
    info = json.loads(f.read() or '{}')
  except json.JSONDecodeError:
    return {}
  return info if isinstance(info, dict) else {}


class Lock:
  """Holds <workdir>/writer.lock until `release` (or process exit)."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    check_writable(workdir)
    self._f = open(self.path, 'a+')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = _read_holder(self._f)
      self._f.close()
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise WorkdirError(f'--workdir={workdir}: cannot lock {self.path}: '
                           f'{e}') from None
      raise WorkdirBusyError(
          f'--workdir={workdir} is in use by another run: '
          f'{_holder_text(holder)} ({self.path}). One process writes a '
          'workdir at a time; wait for it, stop it, or use another '
          '--workdir.') from None
    old = _read_holder(self._f)
    if old:
      logging.warning('Taking over the lock of %s left by %s, which no '
                      'longer holds it (it died).', workdir, _holder_text(old))
    self.info = {'host': socket.gethostname(), 'pid': os.getpid(),
                 'since': datetime.datetime.now().isoformat(timespec='seconds')}
    self._f.seek(0)
    self._f.truncate()
    self._f.write(json.dumps(self.info))
    self._f.flush()

  def release(self) -> None:
    """Empties the file (a clean exit leaves no holder) and unlocks."""
    if self._f is None:
      return
    self._f.truncate(0)
    self._f.flush()
    fcntl.flock(self._f, fcntl.LOCK_UN)
    self._f.close()
    self._f = None


@contextlib.contextmanager
def writer_lock(workdir: str, enabled: bool = True):
  """The workdir's lock for the block; enabled=False (processes other than
  0 of a multi-process run, which write nothing) takes none."""
  lock = Lock(workdir) if enabled else None
  try:
    yield lock
  finally:
    if lock is not None:
      lock.release()


def check_writable(workdir: str) -> None:
  """Creates workdir and writes a probe file; WorkdirError naming --workdir
  if either fails (read-only mount, permissions, full disk)."""
  probe = os.path.join(workdir, f'.write_probe.{os.getpid()}')
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, 'w') as f:
      f.write('x' * 4096)
      f.flush()
      os.fsync(f.fileno())
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f'--workdir={workdir} is not writable: {e}. Pass a '
                       'folder this user can write to.') from None


def check_free_space(workdir: str, checkpoint_bytes: int,
                     keep_checkpoints: int) -> None:
  """WorkdirError if the disk lacks room for the checkpoints kept plus one
  being written (orbax writes the new one before deleting the oldest)."""
  need = (keep_checkpoints + 1) * checkpoint_bytes + _SLACK_BYTES
  free = shutil.disk_usage(workdir).free
  if free < need:
    raise WorkdirError(
        f'--workdir={workdir}: {free / 2**20:.0f} MiB free, the run needs '
        f'about {need / 2**20:.0f} MiB ((--keep_checkpoints + 1) x '
        f'{checkpoint_bytes / 2**20:.1f} MiB checkpoints + '
        f'{_SLACK_BYTES >> 20} MiB). Free space, lower --keep_checkpoints, '
        'or use another --workdir.')


def read_summary(workdir: str) -> dict | None:
  """summary.json of workdir, or None if missing or unreadable."""
  try:
    with open(os.path.join(workdir, SUMMARY)) as f:
      summary = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return summary if isinstance(summary, dict) else None


def write_summary(workdir: str, summary: dict) -> None:
  # Atomic: an existing summary.json means a finished run to sweeps.
  atomic.write_json_atomic(os.path.join(workdir, SUMMARY), summary,
                                   indent=1)


def is_finished(cfg: config_lib.Config) -> bool:
  """summary.json exists, parses and covers all of cfg's rounds (a diverged
  run is finished too: rerunning it would diverge again). --rounds is the
  only round count a resume may change, so the summary of a run with cfg's
  --rounds covers them all."""
  summary = read_summary(cfg.workdir)
  return (summary is not None
          and summary.get('config', {}).get('rounds') == cfg.rounds)


def differing_flags(saved: dict, now: dict) -> list[tuple[str, object, object]]:
  """(flag, saved value, value now) for each Config field that differs and
  defines the experiment (not in config.RESUMABLE_OVERRIDES). A field
  missing from either side (added to Config since) counts as its default."""
  defaults = {f.name: f.default
              for f in dataclasses.fields(config_lib.Config)}
  out = []
  for key in sorted(set(saved) | set(now)):
    if key in config_lib.RESUMABLE_OVERRIDES:
      continue
    old, new = saved.get(key, defaults.get(key)), now.get(key, defaults.get(key))
    if old != new:
      out.append((key, old, new))
  return out
