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


def _level(z, f1, eps_at):
  return {'noise_multiplier': z, 'dp_clip': 1.0 if z is not None else None,
          'f1_macro': {'mean': f1, 'std': 0.01}, 'epsilon_at': eps_at}


def test_operating_points_pick_the_best_level_under_the_epsilon_bar():
  """A hand-built page: at delta 1e-05 only z = 2 is under epsilon 8 (37
  points below no DP), at 0.0019 z = 1 is too and is the better (19 below);
  a third delta where z = 0.5 gets under the bar, 4 points below: within."""
  from experiments import privacy_utility as pu
  rows = [_level(None, 0.93, {}),
          _level(0.5, 0.89, {'1e-05': 40.0, '0.0019': 28.0, '0.1': 7.5}),
          _level(1.0, 0.74, {'1e-05': 9.97, '0.0019': 6.5, '0.1': 3.0}),
          _level(2.0, 0.56, {'1e-05': 3.4, '0.0019': 2.1, '0.1': 1.0})]
  lines = pu.operating_points(rows)
  assert lines == [
      '- At δ = 1e-05, ε ≤ 8: best z = 2 (ε 3.4), macro-F1 0.560 ± 0.010, '
      '37.0 points below no DP (0.930): not within 5 points.',
      '- At δ = 0.0019, ε ≤ 8: best z = 1 (ε 6.5), macro-F1 0.740 ± 0.010, '
      '19.0 points below no DP (0.930): not within 5 points.',
      '- At δ = 0.1, ε ≤ 8: best z = 0.5 (ε 7.5), macro-F1 0.890 ± 0.010, '
      '4.0 points below no DP (0.930): within 5 points.']
  # Nothing noised under the bar says so.
  assert pu.operating_points([rows[0], _level(0.5, 0.9, {'1e-05': 9.0})]) == [
      '- At δ = 1e-05, ε ≤ 8: no level reaches it.']


def test_no_dp_cells_leave_out_the_dp_only_flags():
  """Adaptive clipping's flags passed to the page reach the DP cells and not
  the no-DP ones, which would refuse them (--dp_clip_lr needs DP)."""
  from experiments import privacy_utility  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  fixed = {**privacy_utility.SETTINGS, 'dp_clip_lr': 0.2,
           'dp_clip_count_stddev': 2.5}
  grids = privacy_utility.grids(fixed, [1.0], [0])
  assert grids['dp'].flags['dp_clip_lr'] == 0.2
  assert 'dp_clip_lr' not in grids['no_dp'].flags
  Config(workdir='/tmp/unused', seed=0, **grids['no_dp'].flags).validate()


def test_page_says_which_clip_and_denominator():
  from experiments import privacy_utility  # pylint: disable=g-import-not-at-top
  fixed = {'dp_clip': 1.0, 'dp_clip_lr': 0.0, 'dp_denominator': 'fixed'}
  assert privacy_utility._clip_text(fixed) == 'clip C = 1.0'
  assert 'fixed denominator' in privacy_utility._denominator_text(fixed)
  adaptive = {'dp_clip': 1.0, 'dp_clip_lr': 0.2, 'dp_target_quantile': 0.5,
              'dp_clip_count_stddev': 2.5, 'dp_denominator': 'group',
              'dp_group_count_multiplier': 5.0}
  assert 'adaptive clip from C = 1.0' in privacy_utility._clip_text(adaptive)
  assert 'quantile 0.5' in privacy_utility._clip_text(adaptive)
  assert 'noise 5 times' in privacy_utility._denominator_text(adaptive)
