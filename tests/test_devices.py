"""Sharding over devices changes nothing: 8 CPU devices == 1."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE

import toy

_EIGHT_DEVICE_SCRIPT = r'''
import sys, numpy as np, jax
sys.path.insert(0, {tests!r})
import toy
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
assert len(jax.devices()) == 8, jax.devices()
params = toy.init_params(toy.small_model())
pop = toy.make_population()
out = [toy.one_round(toy.cfg_for(), stage, params, pop, jax.random.key(seed),
                     num_devices=8)[0]
       for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8))]
out.append(toy.runs_round(8, TASK_STAGE, params, num_devices=8))
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(out)])
'''


# A subprocess with 8 fake devices compiles every round program anew
# (~25 s): slow (CI runs both tiers).
@pytest.mark.slow
def test_8_devices_match_1_device(tmp_path):
  """4 clients on 8 CPU devices (4 zero-weight pads) == 4 clients on 1, and
  8 runs split over 8 devices (a (runs 8, clients 1) mesh) == on 1."""
  out = str(tmp_path / '8.npz')
  # Keeps conftest's XLA flags (-O0; a shared compilation cache key).
  flags = os.environ.get('XLA_FLAGS', '')
  env = {**os.environ,
         'XLA_FLAGS': f'{flags} --xla_force_host_platform_device_count=8'}
  script = _EIGHT_DEVICE_SCRIPT.format(tests=os.path.dirname(__file__),
                                       out=out)
  # Started first: its compiles overlap the 1-device ones below.
  proc = subprocess.Popen([sys.executable, '-c', script], env=env)
  params, population = toy.init_params(toy.small_model()), toy.make_population()
  want = [toy.one_round(toy.cfg_for(), stage, params, population,
                        jax.random.key(seed))[0]
          for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8))]
  want.append(toy.runs_round(8, TASK_STAGE, params))
  assert proc.wait(timeout=600) == 0
  with np.load(out) as f:
    got = [f[k] for k in sorted(f.files, key=lambda s: int(s[4:]))]
  toy.leaves_close(got, want)
