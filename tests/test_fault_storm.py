"""A storm of ten seeded faults (two of each kind) on a grouped sweep of the
tests' tiny run: nothing lost, nothing changed (experiments.fault_storm)."""

import pytest

from experiments import fault_storm

import tiny


def test_the_storm_runs_the_tests_tiny_model():
  # Same programs as the other end-to-end tests: compiled once per suite.
  assert fault_storm.MODEL == tiny.MODEL


@pytest.mark.slow   # ~2 min: about 20 starts of a 4-cell sweep
def test_ten_faults_lose_and_change_nothing(env, tmp_path):
  result = fault_storm.storm(str(tmp_path), faults=10, seed=0, env=env)
  assert result['faults'] == {k: 2 for k in fault_storm.KINDS}, result
  assert result['cells_finished'] == 4 * result['passes'], result
  assert result['restarts'] >= 5, result   # kills cost starts
  for key in ('rounds_lost', 'rounds_duplicated', 'torn_lines',
              'values_differing', 'unreadable_left'):
    assert result[key] == 0, (key, result)
  assert not result['problems'], result
