"""--compilation_cache: programs compiled by one process are found by the next."""

import os
import subprocess
import sys

import pytest

# Compiles one small program with the cache set as train.run sets it.
PROGRAM = """
import sys, jax, jax.numpy as jnp
from fedrecon_jax import train
print("cache:", train.use_compilation_cache(sys.argv[1]))
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
"""


def _run(setting, **env):
  base = {k: v for k, v in os.environ.items()
          if k != 'JAX_COMPILATION_CACHE_DIR'}
  proc = subprocess.run([sys.executable, '-c', PROGRAM, setting],
                        env={**base, **env, 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'},
                        capture_output=True, text=True, check=True)
  return proc.stdout.splitlines()[-1].removeprefix('cache: ')


def _entries(path):
  return [f for f in os.listdir(path)] if os.path.isdir(path) else []


def test_a_directory_fills_and_empty_turns_it_off(tmp_path):
  cache = tmp_path / 'xla'
  assert _run(str(cache)) == str(cache)
  assert _entries(cache), 'the compiled program was not written to the cache'
  assert _run('', XDG_CACHE_HOME=str(tmp_path / 'xdg')) == ''
  assert not _entries(tmp_path / 'xdg')


@pytest.mark.parametrize('from_env', [True, False])
def test_default_is_the_env_variable_else_the_user_cache(tmp_path, from_env):
  env = {'XDG_CACHE_HOME': str(tmp_path / 'xdg')}
  want = tmp_path / 'xdg' / 'fedrecon_jax' / 'xla'
  if from_env:
    want = tmp_path / 'env'
    env['JAX_COMPILATION_CACHE_DIR'] = str(want)
  assert _run('default', **env) == str(want)
  assert _entries(want)
