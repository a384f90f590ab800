"""experiments.paper.table2 and experiments.paper on tiny real runs: the
scores land where the page reads them, re-runs do no training, and the
page's numbers are the runs' numbers."""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.paper import report, table1_page, table2, table2_page
from experiments.paper import table2_scoring
from experiments.paper import run as paper
from fedrecon_jax import generator, sweep
from fedrecon_jax import grid as grid_lib
from fedrecon_jax.models import DataSpec, Model

import tiny

# The tests' tiny run; alpha is the page test's grid axis, the dataset
# table2's argument.
TINY = dict(tiny.MODEL, gen_rounds=2, rounds=3, checkpoint_every=2)
del TINY['alpha']
DATASET = TINY.pop('dataset')
M = 3  # its modalities


@pytest.fixture(scope='module')
def root(tmp_path_factory):
  return str(tmp_path_factory.mktemp('paper'))


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  return {**TINY, 'data_dir': str(tmp_path_factory.mktemp('tfds'))}


def test_raw_kind_decodes_the_source_latent_itself():
  spec = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((5,), (4,), (3,)), 2)
  model = Model(spec, latent_dim=4, gen_width=8, map_width=8, task_width=4)
  # Jitted: a few programs instead of an eager run's hundreds of small ones.
  params = model.init_params(jax.random.key(0))
  xs = [jax.random.normal(jax.random.key(i), (6, *s))
        for i, s in enumerate(spec.shapes)]
  present = jnp.array([[True, False, False]] * 3 + [[False, True, True]] * 3)
  mu, _ = jax.jit(model.encode)(params['gen'], xs)
  infer = jax.jit(generator.infer_latents, static_argnums=(0, 1))
  z = infer('raw', model, params, xs, present)
  np.testing.assert_allclose(z[0, :3], mu[0, :3])     # present: its own mu
  np.testing.assert_allclose(z[1, :3], mu[0, :3])     # b <- a (T = identity)
  np.testing.assert_allclose(z[2, :3], mu[0, :3])
  np.testing.assert_allclose(z[0, 3:], (mu[1, 3:] + mu[2, 3:]) / 2, rtol=1e-6)
  mapped = infer('mapping', model, params, xs, present)
  assert not np.allclose(mapped[1, :3], mu[0, :3])    # T is not identity


# ~2-5 min cold (whole sweeps / table2 runs): slow.
@pytest.mark.slow
def test_table2_scores_each_variant_and_rerun_does_not_train(root, tiny):
  t2 = os.path.join(root, 'table2')
  for v in ('fedrecon', 'moe'):
    table2.run_variant(DATASET, v, t2, seeds=[0, 1], probe_steps=30, draws=2,
                       **tiny)
  rows, refs = table2.load_results(t2, DATASET)
  assert set(rows) == {'fedrecon', table2_scoring.NO_MAPPING, 'moe'}
  assert refs['zero_fill_mse'] > 0.9                  # standardised features
  for per_seed in rows.values():
    assert [r['seed'] for r in per_seed] == [0, 1]
    for r in per_seed:
      assert np.shape(r['mse']) == (M, M) and np.all(np.isfinite(r['mse']))
      assert np.shape(r['coherence_loo']) == (M,)
    # Seeds differ.
    assert per_seed[0]['mse'] != per_seed[1]['mse']
  # One probe set shared by the variants and seeds; T matters for the
  # mapping rows.
  accuracies = {tuple(r['probe_accuracy']) for per in rows.values()
                for r in per}
  assert len(accuracies) == 1
  assert rows['fedrecon'][0]['mse'] != rows[table2_scoring.NO_MAPPING][0]['mse']
  assert 'retrieval' in rows['fedrecon'][0]
  assert 'retrieval' not in rows['moe'][0]
  moe = os.path.join(t2, DATASET, 'moe', 'seed1')
  before = os.stat(os.path.join(moe, 'metrics.jsonl')).st_mtime_ns
  # Trained, not scored:
  os.remove(os.path.join(moe, table2_scoring.RESULTS_JSON))
  again = table2.run_variant(DATASET, 'moe', t2, seeds=[0, 1], probe_steps=30,
                             draws=2, **tiny)
  assert os.stat(os.path.join(moe, 'metrics.jsonl')).st_mtime_ns == before
  # Rescored, the same numbers (the draws come from the seed's key).
  assert again[1]['moe']['mse'] == rows['moe'][1]['mse']
  assert again[1]['moe']['coherence_single'] == rows['moe'][1][
      'coherence_single']


def test_fluctuation_is_measured_around_each_seeds_trend():
  """By hand: a straight line does not fluctuate, however steep; an
  alternation +-1 over 4 rounds leaves residuals (0.4, -1.2, 1.2, -0.4)
  around its fitted line (slope -0.4): mean |change| 5.6 / 3, std sqrt(0.8).
  Seeds are averaged."""
  line = 3.0 * np.arange(4) + 1.0
  zigzag = np.array([1.0, -1.0, 1.0, -1.0])
  np.testing.assert_allclose(table1_page.fluctuation(line[None]), (0, 0),
                             atol=1e-9)
  np.testing.assert_allclose(table1_page.fluctuation(
      np.stack([line + zigzag, line])), (5.6 / 3 / 2, np.sqrt(0.8) / 2))


# ~2-5 min cold (whole sweeps / table2 runs): slow.
@pytest.mark.slow
def test_page_reports_the_runs_margins_and_freezing(root, tiny):
  t1 = paper.table1_root(root, 'reduced')
  grid = grid_lib.make_grid(
      {'method': ['fedrecon', 'fedrecon_no_freeze', 'unimodal'],
       'alpha': ['0.1'], 'seed': ['0', '1'], 'dataset': [DATASET]},
      {**tiny, 'eval_every': 1, 'checkpoint_every': 0})
  assert sweep.run_sweep(grid, t1) == []
  path = paper.write_page(root, 'reduced', [DATASET],
                          os.path.join(root, 'out'))
  text = open(path).read()
  _, runs = report.load_runs(t1)
  f1 = {(r.cfg.method, r.cfg.seed): 100 * r.summary['f1_macro'] for r in runs}
  margin = np.mean([f1['fedrecon', s] - f1['unimodal', s] for s in (0, 1)])
  row = next(l for l in text.splitlines() if l.startswith('| fedopt 0.1 0.3'))
  assert row.split('|')[2].strip().startswith(f'{margin:+.1f}'), row
  assert os.path.exists(os.path.join(root, 'out', 'freezing.png'))
  assert '| fedopt 0.3 | fedrecon_no_freeze | 2 |' in text
  # The AV-MNIST page reads its own sweep root the same way (here the same
  # runs): margins over the baselines it holds, no paper column off UCI.
  assert paper.write_av_mnist_page(root, os.path.join(root, 'out')) is None
  shutil.copytree(t1, os.path.join(root, paper.AV_MNIST))
  av = open(paper.write_av_mnist_page(root, os.path.join(root, 'out'))).read()
  assert '| server α p | vs unimodal | vs fedrecon_no_freeze |' in av
  assert next(l for l in av.splitlines() if l.startswith('| fedopt 0.1 0.3')
              ) == row
  text = open(paper.write_table2_page(root, [DATASET],
                                      os.path.join(root, 'out'))).read()
  assert '| fedrecon_no_T | 2 |' in text             # Table 2 from the runs
  assert 'No Table 2 results' not in text


def test_a_report_without_table2_runs_leaves_table2_md(tmp_path):
  """--parts=report on a root of other parts (say an av_mnist Table 1
  sweep) must not overwrite the committed table2.md with an empty page."""
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'table2.md').write_text('kept')
  assert paper.write_table2_page(str(tmp_path), [DATASET], str(out)) is None
  assert (out / 'table2.md').read_text() == 'kept'


def test_directions_table_reads_target_row_source_column():
  """coherence_single[n][m] is n rebuilt from m: with two modalities the
  page shows both directions, mean ± std over seeds."""
  seeds = [{'modalities': ['image', 'audio'],
            'coherence_single': [[0.9, 0.2], [0.6, 0.8]]},
           {'modalities': ['image', 'audio'],
            'coherence_single': [[0.9, 0.4], [0.8, 0.8]]}]
  lines = table2_page._directions({'fedrecon': seeds})
  assert lines[3] == '| generator | image ← audio | audio ← image |'
  assert lines[5] == '| fedrecon | 30.0 ± 14.1 | 70.0 ± 14.1 |'
  six = {'x': [{'modalities': list('abcd'),
                'coherence_single': np.eye(4).tolist()}]}
  assert table2_page._directions(six) == []     # 12 pairs: the JSON has them


def test_a_resumed_variant_counts_every_part_of_its_training():
  """By hand: a run stopped and resumed has a summary holding only its last
  part (100 s) while its scores sum every round (300 s); the seeds of a
  variant train as one program, so the longest seed counts once; an
  unscored seed falls back to its summary."""
  part = {'devices': '1 x cpu', 'wall_seconds': 100.0}
  seeds = [table2_scoring.Scored('moe', {'moe': {'train_seconds': 300.0}},
                                 part),
           table2_scoring.Scored('moe', {'moe': {'train_seconds': 290.0}},
                                 part),
           table2_scoring.Scored('moe', None, part)]
  assert paper._training_time('moe', seeds) == {'devices': '1 x cpu',
                                                'wall_seconds': 300.0}
  assert paper._training_time('moe', seeds[2:]) == part
  assert paper._training_time('moe', []) is None


def test_targets_name_the_generators_that_fall_short():
  """Means over seeds against the bars (30%, 45% on polymnist_5k);
  fedrecon_no_T reads FedRecon's generator, so it is not judged."""
  rows = {'fedrecon': [{'one_input': 0.40}, {'one_input': 0.44}],
          'fedrecon_no_T': [{'one_input': 0.10}],
          'moe': [{'one_input': 0.33}, {'one_input': 0.29}],   # mean 31
          'mmvaeplus': [{'one_input': 0.12}, {'one_input': 0.14}]}
  assert table2_page.targets(rows, 'uci_multifeature') == []
  text = table2_page.targets(rows, 'polymnist_5k')[1]
  assert 'Best: fedrecon 42.0% (short).' in text, text
  assert 'Below 30.0%: mmvaeplus 13.0.' in text, text
  rows['fedrecon'] = [{'one_input': 0.46}]
  rows['mmvaeplus'] = [{'one_input': 0.30}]
  text = table2_page.targets(rows, 'polymnist_5k')[1]
  assert 'Best: fedrecon 46.0% (reached). Every generator reaches' in text
