r"""Faults injected into a training process from inside it, for
experiments.fault_storm and the tests.

  FAULT_INJECT='{"enospc_at_round": 6}' \
      python -m experiments.fault_inject experiments.train --workdir=...

patches what $FAULT_INJECT (a JSON object) asks, then runs the module named
first (experiments.train or experiments.sweep) as __main__ with the other
arguments:
  * enospc_at_round: r -> the checkpoint save of round r fails with ENOSPC
    after its files are written into orbax's tmp folder, in the background
    commit (a disk that fills up halfway through a save).
  * save_seconds: s -> every save's background commit waits s seconds with
    its files in orbax's tmp folder, so a kill timed on that folder lands
    inside the save.
  * append_seconds: s -> every metrics.jsonl line is written as two
    `write`s s seconds apart (flushed in between), so a kill timed on a line
    without its newline tears it.
The patches change when bytes reach the disk, never which bytes: an
uninjected run's results are the reference.
"""

from __future__ import annotations

import errno
import json
import os
import re
import runpy
import sys
import time

ENV = 'FAULT_INJECT'


class _Failed:
  """A commit future that fails as a full disk would."""

  def result(self, timeout=None):
    del timeout
    raise OSError(errno.ENOSPC, 'No space left on device (injected)')


class _Sleep:
  def __init__(self, seconds: float):
    self.seconds = seconds

  def result(self, timeout=None):
    del timeout
    time.sleep(self.seconds)


def _save_round(directory) -> int | None:
  """The round whose orbax tmp folder `directory` lies in."""
  match = re.search(r'/(\d+)\.orbax-checkpoint-tmp',
                    str(getattr(directory, 'path', directory)))
  return int(match.group(1)) if match else None


def _patch_saves(enospc_at_round: int | None, save_seconds: float) -> None:
  # pylint: disable=g-import-not-at-top
  from orbax.checkpoint._src.handlers import standard_checkpoint_handler
  handler = standard_checkpoint_handler.StandardCheckpointHandler
  save = handler.async_save

  async def async_save(self, directory, *args, **kwargs):
    futures = list(await save(self, directory, *args, **kwargs) or [])
    if save_seconds:
      futures.append(_Sleep(save_seconds))
    if enospc_at_round is not None and (
        _save_round(directory) == enospc_at_round):
      futures.append(_Failed())
    return futures

  handler.async_save = async_save


def _patch_appends(seconds: float) -> None:
  from fedrecon_jax import metrics_writer  # pylint: disable=g-import-not-at-top
  writer = metrics_writer.MetricsWriter
  write = writer.write

  def torn_write(self, record):
    if not self.files:
      return write(self, record)
    line = json.dumps(record) + '\n'
    half = len(line) // 2
    with open(self.path, 'a') as f:
      f.write(line[:half])
      f.flush()
      time.sleep(seconds)
    # The real write appends the whole line; cut the first half back off
    # first, so the file ends up as the uninjected run writes it.
    with open(self.path, 'r+') as f:
      f.truncate(os.path.getsize(self.path) - half)
    return write(self, record)

  writer.write = torn_write


def install(spec: dict) -> None:
  """Applies the patches `spec` (see the module docstring) asks for."""
  unknown = set(spec) - {'enospc_at_round', 'save_seconds', 'append_seconds'}
  if unknown:
    raise ValueError(f'${ENV}: unknown keys {sorted(unknown)}.')
  if 'enospc_at_round' in spec or spec.get('save_seconds'):
    _patch_saves(spec.get('enospc_at_round'), spec.get('save_seconds', 0.0))
  if spec.get('append_seconds'):
    _patch_appends(spec['append_seconds'])


def main() -> None:
  install(json.loads(os.environ.get(ENV) or '{}'))
  module, sys.argv = sys.argv[1], sys.argv[1:]
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
