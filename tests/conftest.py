"""Test-session setup: a persistent XLA compilation cache.

Compilation dominates these tests (many small programs, several compiled in
subprocesses too); the cache lets a program compiled once be reused by later
tests and by subprocesses, which inherit the environment.
"""

import os
import tempfile

import pytest

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'fedrecon_jax_xla_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Environment for `python -m experiments.*` subprocesses: the shared
  compilation cache (inherited from os.environ) and a fresh TFDS data_dir."""
  return dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp('tfds')))
