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
    `write`s s seconds apart, so a kill timed on a line without its newline
    tears it.
  * enospc_in_append_at_round: r -> round r's metrics.jsonl line fails with
    ENOSPC after half of it is written (metrics_writer.append cuts it off).
  * enospc_in_tensorboard_at_round: r -> round r's TensorBoard record fails
    the same way.
  * kill_deleting_step: s -> the process SIGKILLs itself right after
    removing the first file of old checkpoint step s, wherever that step's
    folder lies under checkpoints/ (a node lost halfway through deleting
    a step that fell out of --keep_checkpoints).
The patches change when bytes reach the disk, never which bytes: an
uninjected run's results are the reference (a failed write stops the run).
"""

from __future__ import annotations

import errno
import json
import os
import re
import runpy
import signal
import sys
import time

ENV = 'FAULT_INJECT'
# Which appended file each disk-full key fails.
_ENOSPC_KEYS = {'enospc_in_append_at_round': 'metrics',
                'enospc_in_tensorboard_at_round': 'tensorboard'}


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


def _round_of(data: bytes) -> tuple[str, int | None]:
  """('metrics', round) for a metrics.jsonl line, ('tensorboard', step) for
  a round's TensorBoard record (None for its file's first records)."""
  if data.startswith(b'{'):
    return 'metrics', json.loads(data)['round']
  # pylint: disable-next=g-import-not-at-top
  from tensorboardX.proto import event_pb2
  event = event_pb2.Event.FromString(data[12:-4])   # TFRecord framing
  return 'tensorboard', event.step if event.HasField('summary') else None


def _patch_appends(seconds: float, enospc: dict[str, int]) -> None:
  """Tears appends (`seconds`) and fails those of enospc's {file: round}."""
  from fedrecon_jax import metrics_writer  # pylint: disable=g-import-not-at-top
  write_all = metrics_writer.write_all

  def torn(fd, data):
    file, round_ = _round_of(data)
    half = len(data) // 2
    if file in enospc and enospc[file] == round_:
      write_all(fd, data[:half])
      raise OSError(errno.ENOSPC, 'No space left on device (injected)')
    if seconds and file == 'metrics':
      write_all(fd, data[:half])
      time.sleep(seconds)
      data = data[half:]
    write_all(fd, data)

  metrics_writer.write_all = torn


def _patch_unlinks(step: int) -> None:
  """Kills the process once a file of checkpoints/[<folder>/]<step>/ is
  removed (shutil.rmtree unlinks by name relative to a dir_fd)."""
  pattern = re.compile(rf'/checkpoints/(?:[^/]*\D[^/]*/)?{step}/')

  def wrap(remove):
    def patched(path, *, dir_fd=None):
      remove(path, dir_fd=dir_fd)
      full = str(path) if dir_fd is None else os.path.join(
          os.readlink(f'/proc/self/fd/{dir_fd}'), str(path))
      if pattern.search(full):
        os.kill(os.getpid(), signal.SIGKILL)
    return patched

  os.unlink = wrap(os.unlink)
  os.remove = wrap(os.remove)


def install(spec: dict) -> None:
  """Applies the patches `spec` (see the module docstring) asks for."""
  enospc = {file: spec[k] for k, file in _ENOSPC_KEYS.items() if k in spec}
  unknown = set(spec) - {'enospc_at_round', 'save_seconds', 'append_seconds',
                         'kill_deleting_step', *_ENOSPC_KEYS}
  if unknown:
    raise ValueError(f'${ENV}: unknown keys {sorted(unknown)}.')
  if 'enospc_at_round' in spec or spec.get('save_seconds'):
    _patch_saves(spec.get('enospc_at_round'), spec.get('save_seconds', 0.0))
  if spec.get('append_seconds') or enospc:
    _patch_appends(spec.get('append_seconds', 0.0), enospc)
  if 'kill_deleting_step' in spec:
    _patch_unlinks(spec['kill_deleting_step'])


def main() -> None:
  install(json.loads(os.environ.get(ENV) or '{}'))
  module, sys.argv = sys.argv[1], sys.argv[1:]
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
