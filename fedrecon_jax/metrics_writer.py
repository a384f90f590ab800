"""Per-round metrics: one JSON line each in metrics.jsonl, plus TensorBoard.

metrics.jsonl is the record of truth (the report and resumption read it); the
TensorBoard event files beside it (tensorboardX: protobuf only, no TensorFlow)
are for looking at curves while a run goes. Each line is written with one
`write` and flushed, so a SIGKILL can at worst tear the last line, which
`read_metrics` skips.
"""

from __future__ import annotations

import json
import math
import os
from typing import Iterable, Sequence

from absl import logging

METRICS_FILE = 'metrics.jsonl'
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


def write_text_atomic(path: str, text: str) -> None:
  """Writes text to path via a temporary file and a rename, so a reader
  never sees half a file (summary.json marks a finished run). The
  temporary name is per process: several may write one file."""
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):  # a failed write (full disk) leaves no debris
      os.remove(tmp)


def write_json_atomic(path: str, obj, **kwargs) -> None:
  write_text_atomic(path, json.dumps(obj, **kwargs))


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


def _summary_writer(logdir: str, purge_step: int | None):
  try:
    import tensorboardX  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.warning('tensorboardX is not installed: metrics go to %s only.',
                    METRICS_FILE)
    return None
  # purge_step hides the events of rounds >= it that a killed run left, so
  # a resumed run's curves have no doubled rounds in TensorBoard either.
  return tensorboardX.SummaryWriter(logdir=logdir, purge_step=purge_step,
                                    flush_secs=10)


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
    self.path = os.path.join(workdir, METRICS_FILE)
    self.files = files
    self._tb = None
    if not files:
      self.records = [r for r in saved if r['round'] <= resume_round]
      return
    os.makedirs(workdir, exist_ok=True)
    self.records = truncate_metrics(self.path, resume_round, saved)
    if tensorboard:
      self._tb = _summary_writer(workdir, resume_round + 1)

  def write(self, record: dict) -> None:
    self.records.append(record)
    if not self.files:
      return
    line = json.dumps(record) + '\n'
    with open(self.path, 'a') as f:
      f.write(line)
      f.flush()
    if self._tb is not None:
      step = int(record['round'])
      for k, v in record.items():
        if (k not in _NOT_SCALARS and isinstance(v, (int, float))
            and math.isfinite(v)):
          self._tb.add_scalar(k, v, global_step=step)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricsWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
