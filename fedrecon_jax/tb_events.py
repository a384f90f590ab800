"""TensorBoard event files: each round's scalars appended as one record in
the loop's own thread, and read back as TensorBoard reads them.

tensorboardX's SummaryWriter queues events for a background thread that
flushes every flush_secs: a SIGKILL lost the rounds not yet flushed, which a
resume never wrote again (they were already checkpointed), and a write
error (a full disk) was raised in that thread, not in the loop. Here a
round is one TFRecord of one Event, appended with `append`
(metrics_writer's: the whole record or, on an error, nothing) before the
round's checkpoint is saved, so an error stops the loop.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Callable

from tensorboardX.proto import event_pb2, summary_pb2
from tensorboardX.record_writer import masked_crc32c

PREFIX = 'events.out.tfevents'


def _record(event: event_pb2.Event) -> bytes:
  """TFRecord framing: length, its masked CRC32C, data, the data's."""
  data = event.SerializeToString()
  header = struct.pack('<Q', len(data))
  return (header + struct.pack('<I', masked_crc32c(header)) + data
          + struct.pack('<I', masked_crc32c(data)))


class ScalarWriter:
  """A new event file in logdir, hiding from TensorBoard the steps >=
  purge_step of the files before it (a resumed run redoes those)."""

  def __init__(self, logdir: str, purge_step: int,
               append: Callable[[str, bytes], None]):
    self.path = os.path.join(logdir, f'{PREFIX}.{int(time.time())}.'
                             f'{socket.gethostname()}.{os.getpid()}')
    self._append = append
    # What SummaryWriter(purge_step=...) writes first: TensorBoard drops
    # every step >= purge_step read so far when it meets this START.
    self._write(event_pb2.Event(file_version='brain.Event:2'))
    self._write(event_pb2.Event(step=purge_step, session_log=(
        event_pb2.SessionLog(status=event_pb2.SessionLog.START))))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._append(self.path, _record(event))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self._write(event_pb2.Event(step=step, summary=summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=k, simple_value=v)
        for k, v in scalars.items()])))


def _events(path: str):
  """The events of one file, up to a torn or corrupt record (a killed
  writer's last)."""
  with open(path, 'rb') as f:
    data = f.read()
  pos = 0
  while pos + 12 <= len(data):
    header = data[pos:pos + 8]
    (n,) = struct.unpack('<Q', header)
    body = data[pos + 12:pos + 12 + n]
    crcs = data[pos + 8:pos + 12], data[pos + 12 + n:pos + 16 + n]
    if len(body) < n or crcs != (struct.pack('<I', masked_crc32c(header)),
                                 struct.pack('<I', masked_crc32c(body))):
      return
    yield event_pb2.Event.FromString(body)
    pos += 16 + n


def read_scalars(logdir: str) -> dict[tuple[str, int], list[float]]:
  """{(tag, step): values} of every event file in logdir, as TensorBoard
  shows them: files in the order they were started, a START event
  dropping the steps >= its own read before. More than one value under a
  key is a step TensorBoard would show twice."""
  files = []
  for name in os.listdir(logdir):
    if name.startswith(PREFIX):
      events = list(_events(os.path.join(logdir, name)))
      files.append((events[0].wall_time if events else 0.0, name, events))
  out: dict[tuple[str, int], list[float]] = {}
  for _, _, events in sorted(files):
    for e in events:
      if (e.HasField('session_log')
          and e.session_log.status == event_pb2.SessionLog.START):
        out = {k: v for k, v in out.items() if k[1] < e.step}
      for v in e.summary.value:
        out.setdefault((v.tag, e.step), []).append(v.simple_value)
  return out
