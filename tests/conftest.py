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
# Only programs that take a second or more to compile (about 190 of the
# 4,300 a full run writes; the rest are op-by-op dispatches that compile in
# milliseconds): each cache hit deserializes an XLA:CPU executable, and CI
# once died in that deserialization (a segfault in a test worker).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '1')
# LLVM at -O0 without its expensive passes: a stage-1 round program of the
# tests' small models compiles in ~14 s instead of ~21 s and runs ~2x slower,
# a good trade for programs that run a few rounds (the expensive passes cost
# another ~10% of a compile-bound test). Subprocesses inherit it; tests that
# set XLA_FLAGS for fake devices replace it.
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
      ' --xla_llvm_disable_expensive_passes=true').strip()


@pytest.fixture(scope='session')
def env(tmp_path_factory):
  """Environment for `python -m experiments.*` subprocesses: the shared
  compilation cache (inherited from os.environ) and a fresh TFDS data_dir,
  prepared by the first run that needs it (one per pytest-xdist worker)."""
  return dict(os.environ, TFDS_DATA_DIR=str(tmp_path_factory.mktemp('tfds')))

