"""experiments.privacy_utility end to end on the tests' tiny run: two noise
levels trained as one group on the runs axis, the no-DP baseline, scoring
and the page, whose numbers are read back against the cells' own files."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny

ZS = (0.0, 1.0, 2.0)  # 0: clipped, no noise


# Three sweeps, scoring and a page in a subprocess (~35-55 s): slow.
@pytest.mark.slow
def test_privacy_utility_page(env, tmp_path):
  root, out = str(tmp_path / 'runs'), str(tmp_path / 'out' / 'pu')
  cmd = [sys.executable, '-m', 'experiments.privacy_utility',
         f'--root={root}', f'--out={out}', '--seeds=0', '--probe_steps=20',
         '--noise_multipliers=' + ','.join(map(str, ZS)),
         '--runs_per_program=3',
         *tiny.flags(gen_rounds=1, rounds=1, dp_clip=0.5)]
  proc = tiny.run(cmd, env)
  # The noise levels trained as one program (a runs axis of 3).
  assert ('[1-3/3] running dp_noise_multiplier=0.0,seed=0, '
          'dp_noise_multiplier=1.0,seed=0, dp_noise_multiplier=2.0,seed=0'
          ) in proc.stdout, proc.stdout
  with open(out + '.json') as f:
    page = json.load(f)
  sha = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=tiny.REPO,
                       capture_output=True, text=True).stdout.strip()
  assert page['commit'].startswith(sha)
  text = open(out + '.md').read()
  assert 'python -m experiments.privacy_utility' in text
  assert page['commit'] in text and os.path.getsize(out + '.png') > 1000
  # The C = inf, z = 0 control is a row of its own, apart from z = 0.
  rows = {('control' if r['dp_clip'] == math.inf else r['noise_multiplier']):
          r for r in page['rows']}
  assert set(rows) == {None, 'control', *ZS}
  assert math.isinf(rows[None]['epsilon'])
  for z, cell in [(None, 'no_dp/seed=0'), ('control', 'control/seed=0')] + [
      (z, f'dp/dp_noise_multiplier={z},seed=0') for z in ZS]:
    with open(os.path.join(root, cell, 'summary.json')) as f:
      summary = json.load(f)
    with open(os.path.join(root, cell, 'table2.json')) as f:
      scored = json.load(f)['fedrecon']
    row = rows[z]
    assert row['seeds'] == [0]
    assert row['epsilon'] == summary.get('epsilon', math.inf)
    assert row['f1_macro']['values'] == [summary['f1_macro']]
    np.testing.assert_allclose(
        row['coherence_single']['values'],
        [np.mean(scored['coherence_single_mean'])], rtol=1e-12)
  # More noise, less epsilon.
  assert rows[2.0]['epsilon'] < rows[1.0]['epsilon'] < math.inf
  assert math.isinf(rows[0.0]['epsilon']) and '0 (clip only)' in text
  assert math.isinf(rows['control']['epsilon']) and '(C = ∞' in text
