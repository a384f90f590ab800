"""Whole-file writes a reader never sees half of: a temporary file, fsync,
then a rename. No JAX; workdir and metrics_writer both write through it."""

from __future__ import annotations

import json
import os


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
