"""Where a results page came from: the commit and the command. No JAX."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


@functools.cache
def commit() -> str:
  """HEAD's short hash, '-dirty' when tracked files differ from it;
  'unknown' outside a git checkout. Read once per process: the state the
  code ran from, not one that the process's own first page made dirty."""
  try:
    sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'], cwd=REPO,
        capture_output=True, text=True).stdout
    return sha.strip() + ('-dirty' if dirty.strip() else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def command(module: str) -> str:
  """`python -m module` with this process's arguments."""
  return ' '.join(['python -m', module, *sys.argv[1:]])
