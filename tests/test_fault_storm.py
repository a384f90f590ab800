"""Storms on the tests' tiny run (experiments/faults): faults of each kind
aimed at their phase, every file compared with an uninterrupted run."""

import pytest

from experiments.faults import compare, kinds, page, storm, targets

import tiny

_CLEAN = ('rounds_lost', 'rounds_duplicated', 'torn_lines', 'unreadable_left')


def test_the_storm_runs_the_tests_tiny_model():
  # Same programs as the other end-to-end tests: compiled once per suite.
  assert targets.MODEL == tiny.MODEL


def _check(result, per_kind, chosen):
  assert result['effective'] == {k: per_kind for k in chosen}, result
  for key in _CLEAN:
    assert result[key] == 0, (key, result)
  assert result['values_differing'] == {f: 0 for f in compare.FILES}, result
  assert not result['problems'], result


def test_a_short_seeded_storm_loses_and_changes_nothing(env, tmp_path):
  """Every CI run storms a little: one run of the tiny model hit by a
  SIGTERM in its rounds, a SIGKILL in a metrics line and one in a
  checkpoint commit (seeded), each counted only if it took its path, then
  every file compared with an uninterrupted run's."""
  chosen = ('sigterm', 'sigkill_in_append', 'sigkill_in_save')
  result = storm.run_part(str(tmp_path), seed=0, per_kind=1, chosen=chosen,
                          target='run', env=env)
  _check(result, 1, chosen)
  assert result['faults']['sigterm'] == {'handled': 1}, result
  assert result['starts'] == 4, result   # each fault cost a start


@pytest.mark.slow   # references and passes of 4 targets: several minutes
def test_one_counted_fault_of_each_kind_loses_and_changes_nothing(
    env, tmp_path):
  result = storm.run_part(str(tmp_path), seed=1, per_kind=1, env=env)
  _check(result, 1, kinds.KINDS)
  assert result['passes'].keys() == {'sweep', 'distributed', 'shards'}
  # The page adds parts up.
  folder = str(tmp_path / 'parts')
  page.write_part(folder, result)
  page.write_part(folder, {**result, 'seed': 2})
  total = page.add_up(page.read_parts(folder))
  assert total['effective'] == {k: 2 for k in kinds.KINDS}
  assert '| sigterm | 2 |' in page.render(page.read_parts(folder))
