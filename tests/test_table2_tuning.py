"""Table 2's settings are the ones the validation tuning chose, and the
tuning never reads the test set."""

import collections
import dataclasses
import json
import os

import numpy as np
import pytest

from experiments.paper import table2, table2_tuning
from fedrecon_jax import experiment

TUNING_JSON = os.path.join(os.path.dirname(__file__), '..', 'experiments',
                           'results', 'paper', 'table2_tuning.json')


def test_variant_settings_are_the_tuning_choices():
  with open(TUNING_JSON) as f:
    tuned = json.load(f)
  assert tuned, 'no tuned dataset'
  for dataset, per_variant in tuned.items():
    for variant, res in per_variant.items():
      cfg = table2.variant_config(dataset, variant, '/unused')
      for field, value in res['chosen'].items():
        assert getattr(cfg, field) == pytest.approx(value), (
            dataset, variant, field)
      # The chosen trial is the best by validation coherence.
      best = max((t for t in res['trials'] if t['one_input'] is not None),
                 key=lambda t: t['one_input'])
      assert {k: best[k] for k in res['chosen']} == res['chosen']
      # Every variant had the same number of trials.
      assert len(res['trials']) == (len(table2_tuning.BETAS)
                                    * len(table2_tuning.LRS)
                                    + table2_tuning.EXTRA_TRIALS)


def test_trials_evaluate_on_a_validation_split_carved_from_train():
  cfg = table2_tuning.trial_config('uci_multifeature_small', 'moe', '/tmp/x',
                                   beta=1.0, gen_lr=1e-3)
  assert cfg.validation_fraction == table2_tuning.VALIDATION_FRACTION
  full = experiment.load_data(dataclasses.replace(cfg,
                                                  validation_fraction=0.0))
  val = experiment.load_data(cfg)
  n = len(full.train.y)
  # Validation samples come out of train, and the test split is not read.
  assert len(val.train.y) + len(val.test.y) == n
  assert len(val.test.y) == pytest.approx(0.2 * n, abs=10)
  # A partition of train (as multisets: the data may repeat a row).
  rows = lambda split: collections.Counter(
      r.tobytes() for r in np.concatenate(split.xs, 1))
  assert rows(val.train) + rows(val.test) == rows(full.train)
  # The same samples for every seed (its own fixed key).
  other = experiment.load_data(dataclasses.replace(cfg, seed=7))
  np.testing.assert_array_equal(other.test.y, val.test.y)
  np.testing.assert_array_equal(other.test.xs[0], val.test.xs[0])


def test_page_marks_the_choice_and_says_how_each_variant_ran(tmp_path):
  """A hand-built result: the chosen trial is marked, a diverged one says
  so, and each variant's command and commit (or '-' for a record written
  before they were kept) close its dataset's section."""
  trial = lambda lat, one: {'beta': 1.0, 'gen_lr': 1e-3, 'latent_dim': lat,
                            'one_input': one, 'all_others': one,
                            'one_input_means': one, 'train_seconds': 7.0}
  results = {'toy': {
      'moe': {'knob': 'latent_dim', 'trials': [trial(16, 0.25),
                                               trial(32, 0.5)],
              'chosen': {'beta': 1.0, 'gen_lr': 1e-3, 'latent_dim': 32},
              'run': {'commit': 'abc1234', 'machine': '2 CPU cores',
                      'finished': '2026-12-07 03:00',
                      'command': 'python -m x --variants=moe'}},
      'poe': {'knob': 'latent_dim', 'trials': [trial(16, None)],
              'chosen': {'beta': 1.0, 'gen_lr': 1e-3, 'latent_dim': 8}}}}
  path = str(tmp_path / 't.json')
  table2_tuning.write_page(results, path, path.replace('.json', '.md'))
  lines = open(path.replace('.json', '.md')).read().splitlines()
  rows = [l for l in lines if l.startswith('| moe | 1 |')]
  assert rows == ['| moe | 1 | 0.001 | latent_dim 16 | 25.0 | 25.0 | 25.0 '
                  '| 7 |  |',
                  '| moe | 1 | 0.001 | latent_dim 32 | 50.0 | 50.0 | 50.0 '
                  '| 7 | **yes** |']
  assert '| poe | 1 | 0.001 | latent_dim 16 | diverged | diverged | ' \
         'diverged | 7 |  |' in lines
  assert ('| moe | abc1234 | 2 CPU cores | 2026-12-07 03:00 | '
          '`python -m x --variants=moe` |') in lines
  assert '| poe | - | - | - | `-` |' in lines
  assert json.load(open(path)) == results


def test_the_grid_starts_from_untuned_values_not_an_earlier_choice():
  """A rerun tunes from the same start: VARIANT_SETTINGS' choices (MMVAE+'s
  latent 16 on UCI, FedRecon's L_match 30 on polymnist_5k) do not leak
  into the grid; fedrecon_mmvaeplus keeps the latent of the MMVAE+ it maps
  over."""
  assert table2.VARIANT_SETTINGS['uci_multifeature']['mmvaeplus'][
      'latent_dim'] != table2.Config.latent_dim
  assert table2_tuning.extra_knob('uci_multifeature', 'mmvaeplus') == (
      'latent_dim', table2.Config.latent_dim, table2_tuning.LATENT_SIZES)
  knob, base, values = table2_tuning.extra_knob('polymnist_5k', 'fedrecon')
  assert (knob, base) == ('match_weight', 10.0)
  assert values == pytest.approx((10 / 3, 30.0))
  cfg = table2_tuning.trial_config('polymnist_5k', 'fedrecon_mmvaeplus', '/x',
                                   beta=1.0, gen_lr=1e-3, match_weight=10.0)
  assert cfg.latent_dim == table2.VARIANT_SETTINGS['polymnist_5k'][
      'mmvaeplus']['latent_dim']
  assert cfg.workdir.endswith('beta=1,gen_lr=0.001,match_weight=10')
