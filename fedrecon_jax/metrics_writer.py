"""Per-round metrics: one JSON line each in metrics.jsonl, plus TensorBoard.

metrics.jsonl is the record of truth (the report and resumption read it); the
TensorBoard event files beside it (tb_events: protobuf only, no TensorFlow)
are for looking at curves while a run goes. Both are appended with `append`:
a SIGKILL can at worst tear the last line or record, which the readers skip
and a resume cuts off; a write that fails (a full disk) is cut back off, so
the files keep whole rounds, and the run stops with an error naming them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from typing import Iterable, Sequence

from absl import logging

from fedrecon_jax import tb_events, workdir
# Re-exported: callers write pages and JSON through metrics_writer.
from fedrecon_jax.atomic import write_json_atomic, write_text_atomic  # pylint: disable=unused-import

METRICS_FILE = workdir.METRICS_FILE
# Keys of a record that are coordinates, not metrics to plot.
_NOT_SCALARS = ('round', 'stage')


def read_metrics(path: str) -> list[dict]:
  """The records of a metrics.jsonl; lines that do not parse are skipped.

  A run killed mid-write leaves a torn last line; it is dropped with a
  warning rather than making the whole file unreadable.
  """
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        logging.warning('%s:%d: skipping a torn or unreadable line.', path, i)
        continue
      if isinstance(record, dict) and 'round' in record:
        records.append(record)
  return records


def _write_lines_atomic(path: str, records: Iterable[dict]) -> None:
  write_text_atomic(path, ''.join(json.dumps(r) + '\n' for r in records))


def truncate_metrics(path: str, last_round: int,
                     saved: Sequence[dict] = ()) -> list[dict]:
  """Rewrites path to hold exactly one record per round 1..last_round.

  Records of later rounds (written after the checkpoint being resumed) go;
  rounds missing from the file (a torn line, a lost file) are taken from
  `saved`, the copy of the metrics stored in the checkpoint. Returns the
  records kept, in round order.
  """
  by_round = {r['round']: r for r in saved if r['round'] <= last_round}
  # The file wins where both have a round: it is what the user already saw.
  by_round.update({r['round']: r for r in read_metrics(path)
                   if r['round'] <= last_round})
  records = [by_round[k] for k in sorted(by_round)]
  if records or os.path.exists(path):
    _write_lines_atomic(path, records)
  return records


def write_all(fd: int, data: bytes) -> None:
  """os.write until all of data is written (a nearly full disk may take
  part of it first). fault_inject tears and fails writes here."""
  while data:
    data = data[os.write(fd, data):]


def append(path: str, data: bytes) -> None:
  """Appends data to path whole, or not at all: on an error the file is cut
  back to its size before (cutting needs no room), then it is raised."""
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    size = os.fstat(fd).st_size
    try:
      write_all(fd, data)
    except OSError:
      os.ftruncate(fd, size)
      raise
  finally:
    os.close(fd)


class MetricsWriter:
  """Appends round records to <workdir>/metrics.jsonl and TensorBoard.

  Opening it truncates metrics.jsonl to `resume_round` (see
  `truncate_metrics`); `records` holds everything written so far, which the
  checkpointer stores with each checkpoint.
  """

  def __init__(self, workdir: str, resume_round: int = 0,
               saved: Sequence[dict] = (), tensorboard: bool = True,
               files: bool = True):
    """files=False keeps the records in memory only (the processes other
    than 0 of a multi-process run, which share the workdir)."""
    self.workdir = workdir
    self.path = os.path.join(workdir, METRICS_FILE)
    self.files = files
    self._tb = None
    if not files:
      self.records = [r for r in saved if r['round'] <= resume_round]
      return
    os.makedirs(workdir, exist_ok=True)
    self.records = truncate_metrics(self.path, resume_round, saved)
    if tensorboard:
      # purge_step hides the events of rounds >= it that a killed run left,
      # so a resumed run's curves have no doubled rounds in TensorBoard.
      self._tb = tb_events.ScalarWriter(workdir, resume_round + 1, append)

  def write(self, record: dict) -> None:
    """Appends round record's line, then its TensorBoard event; an OSError
    becomes workdir.AppendFailed, naming what the workdir keeps."""
    if not self.files:
      self.records.append(record)
      return
    round_ = record['round']
    with self._failing(f'appending round {round_} to {METRICS_FILE}'):
      append(self.path, (json.dumps(record) + '\n').encode())
    self.records.append(record)
    if self._tb is not None:
      with self._failing(f'writing round {round_} to {self._tb.path}'):
        self._tb.write(int(round_), {
            k: v for k, v in record.items() if k not in _NOT_SCALARS
            and isinstance(v, (int, float)) and math.isfinite(v)})

  @contextlib.contextmanager
  def _failing(self, what: str):
    try:
      yield
    except OSError as e:
      raise workdir.AppendFailed(self.workdir, what, e, [
          r['round'] for r in self.records]) from e

  def close(self) -> None:
    self._tb = None

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
