"""Storms on the tests' tiny run (experiments/faults): faults of each kind
aimed at their phase, every file compared with an uninterrupted run."""

import pytest

from experiments.faults import compare, kinds, page, storm, targets

import tiny


def test_the_storm_runs_the_tests_tiny_model():
  # Same programs as the other end-to-end tests: compiled once per suite.
  assert targets.MODEL == tiny.MODEL


def _check(result, per_kind, chosen):
  assert result['effective'] == {k: per_kind for k in chosen}, result
  assert compare.clean(result) and not result['problems'], result


def test_a_short_seeded_storm_loses_and_changes_nothing(env, tmp_path):
  """Every CI run storms a little: one run of the tiny model hit by a
  SIGTERM in its rounds and a SIGKILL in a checkpoint commit (seeded), each
  counted only if it took its path, then every file compared with an
  uninterrupted run's (the slow tier storms every kind)."""
  chosen = ('sigterm', 'sigkill_in_save')
  result = storm.run_part(str(tmp_path), seed=0, per_kind=1, chosen=chosen,
                          target='run', env=env)
  _check(result, 1, chosen)
  assert result['starts'] >= 3, result   # each fault cost a start


@pytest.mark.slow   # references and passes of 3 targets: several minutes
def test_one_counted_fault_of_each_kind_loses_and_changes_nothing(
    env, tmp_path):
  result = storm.run_part(str(tmp_path), seed=1, per_kind=1, env=env)
  _check(result, 1, kinds.KINDS)
  assert result['passes'].keys() == {'sweep', 'distributed', 'shards'}


def test_the_page_adds_the_parts_up(tmp_path):
  folder = str(tmp_path)
  for seed, handled in ((0, 2), (1, 3)):
    page.write_part(folder, {
        'seed': seed, 'commit': 'abc', 'per_kind': 2, 'starts': 9,
        'wall_seconds': 60.0, 'overhead_seconds': 10.0,
        'faults': {'sigterm': {'handled': handled, 'outside_handler': 1}},
        'effective': {'sigterm': handled}, 'seconds': {'sigterm': 25.0},
        'workdirs': 4, 'rounds_lost': 0, 'quarantined': seed,
        'values_differing': {f: 0 for f in compare.FILES}, 'problems': []})
  text = page.render(page.read_parts(folder))
  # 5 counted, 2 not (outside the handler), 50 s / 5.
  assert '| sigterm | 5 | outside_handler: 2 | 10 |' in text, text
  assert '| saves quarantined | 1 |' in text
  assert 'Not reached yet: sigkill 0' in text
  assert 'Since the last fix' not in text   # no fix noted on any part


def _part(seed, counted, **extra):
  return {'seed': seed, 'commit': f'c{seed}', 'per_kind': counted,
          'starts': 9, 'wall_seconds': 60.0,
          'faults': {k: {sorted(counted_paths)[0]: counted}
                     for k, (_, _, counted_paths) in kinds.KINDS.items()},
          'effective': {k: counted for k in kinds.KINDS},
          'values_differing': {f: 0 for f in compare.FILES}, 'problems': [],
          **extra}


def test_the_page_counts_again_since_the_last_fix(tmp_path):
  folder = str(tmp_path)
  page.write_part(folder, _part(0, 60))
  page.write_part(folder, _part(1, 5, unreadable_left=1, problems=['torn'],
                                fixed='f00: fixed'))
  page.write_part(folder, _part(2, 50))
  page.write_part(folder, _part(3, 50))
  text = page.render(page.read_parts(folder))
  assert 'Goal: 100 counted faults of each kind. Reached.' in text
  assert ('Since the last fix (parts seeds 2-3, from c2): at least 100 '
          'counted faults of each kind (goal reached), nothing lost, '
          'differing or unreadable.') in text, text
  page.write_part(folder, _part(3, 40, rounds_lost=1))
  text = page.render(page.read_parts(folder))
  assert 'at least 90 counted faults of each kind (goal 100), with ' \
         'problems' in text, text
