"""The paper pipeline end to end on tiny real runs: in the default tier a
Table 1 grid, Table 2 on vectors (uci_multifeature_small), then the page;
an API change anywhere along it (the engine, checkpoints, scoring, the page)
fails there, in CI's first tier. Table 2 on images (polymnist_5k_small:
conv networks and five probes to train, ~2 min) is the slow tier's."""

import json
import os
import shutil

import numpy as np
import pytest

from experiments.paper import report, table2, table2_scoring
from experiments.paper import run as paper
from fedrecon_jax import sweep, workdir
from fedrecon_jax import grid as grid_lib

import tiny

TINY = dict(tiny.MODEL, gen_rounds=2, rounds=2, checkpoint_every=1)
del TINY['alpha']
VECTORS = TINY.pop('dataset')
IMAGES = 'polymnist_5k_small'
# The smallest image run: 2 clients, one generator round of one step each.
IMAGE_RUN = dict(num_clients=2, clients_per_round=2, latent_dim=8,
                 batch_size=200, gen_rounds=2, checkpoint_every=1,
                 alpha=1e6, missing_rate=0.0, cross_decoding='one')


def test_table1_table2_on_vectors_and_page(tmp_path):
  root, data_dir = str(tmp_path / 'runs'), str(tmp_path / 'tfds')
  t1 = paper.table1_root(root, 'reduced')
  grid = grid_lib.make_grid(
      {'method': ['fedrecon', 'unimodal'], 'alpha': ['0.1'], 'seed': ['0'],
       'dataset': [VECTORS]},
      {**TINY, 'data_dir': data_dir, 'eval_every': 1, 'checkpoint_every': 0})
  assert sweep.run_sweep(grid, t1) == []
  t2 = os.path.join(root, 'table2')
  # One variant: the slow tier's test_paper scores the others. Two seeds as
  # one program, so the page has a std to show.
  table2.run_variant(VECTORS, 'fedrecon', t2, seeds=[0, 1], probe_steps=20,
                     draws=2, data_dir=data_dir, **TINY)

  out = os.path.join(root, 'out')
  text = open(paper.write_page(root, 'reduced', [VECTORS], out)).read()
  assert f']({paper.TABLE2_PAGE})' in text
  # What is committed of a sweep (--publish) gives the same page; a cell
  # still running (no summary yet) is left behind.
  published = str(tmp_path / 'published')
  name = os.path.basename(t1)
  cells = sorted(c for c in os.listdir(t1) if c.startswith('method='))
  running = str(tmp_path / 'running')
  shutil.copytree(t1, running)
  os.remove(os.path.join(running, cells[1], workdir.SUMMARY))
  paper.publish_sweep(running, os.path.join(published, name))
  assert sorted(os.listdir(os.path.join(published, name))) == sorted([
      cells[0], grid_lib.GRID_FILE])
  paper.publish_sweep(t1, os.path.join(published, name))
  files = {os.path.relpath(os.path.join(d, f), published)
           for d, _, fs in os.walk(published) for f in fs}
  assert len(cells) == 2 and files == {
      os.path.join(name, grid_lib.GRID_FILE),
      *(os.path.join(name, c, n) for c in cells for n in paper.PUBLISHED)}
  again = open(paper.write_page(published, 'reduced', [VECTORS],
                                str(tmp_path / 'out2'))).read()
  assert again == text
  page2 = open(paper.write_table2_page(root, [VECTORS], out)).read()
  _, runs = report.load_runs(t1)
  f1 = {r.cfg.method: 100 * r.summary['f1_macro'] for r in runs}
  row = next(l for l in text.splitlines() if l.startswith('| fedopt 0.1 0.3'))
  margin = f1['fedrecon'] - f1['unimodal']
  assert row.split('|')[2].strip().startswith(f'{margin:+.1f}'), row
  assert f'## Table 2: reconstruction, {VECTORS}' in page2
  assert '| fedrecon_no_T | 2 |' in page2
  assert 'No Table 2 results' not in page2
  assert 'median seconds per generator round: fedrecon' in page2
  assert 'min (probes, draws, curves)' in page2
  assert '; no scores yet: poe, moe, mopoe, mmvaeplus' in page2, page2
  # The page's numbers are the runs': mean ± std (ddof 1) over the seeds.
  vec_rows, _ = table2.load_results(t2, VECTORS)
  one = [100 * r['one_input'] for r in vec_rows['fedrecon']]
  expected = f'| fedrecon | 2 | {np.mean(one):.1f} ± {np.std(one, ddof=1):.1f} |'
  assert expected in page2, expected
  assert 'fedrecon − fedrecon_no_T:' in page2
  with open(os.path.join(out, f'table2_{VECTORS}.json')) as f:
    matrices = json.load(f)
  assert [r['seed'] for r in matrices['fedrecon']] == [0, 1]
  m = len(matrices['fedrecon'][0]['modalities'])
  assert np.shape(matrices['fedrecon'][0]['coherence_single_per_draw']) == (
      2, m, m)


@pytest.mark.slow
def test_table2_on_images_and_its_page(tmp_path):
  root, data_dir = str(tmp_path / 'runs'), str(tmp_path / 'tfds')
  t2 = os.path.join(root, 'table2')
  table2.run_variant(IMAGES, 'fedrecon', t2, seeds=[0], probe_steps=100,
                     draws=2, data_dir=data_dir, **IMAGE_RUN)

  # Generator-only runs log generator metrics, never a task score.
  workdir_ = os.path.join(t2, IMAGES, 'fedrecon', 'seed0')
  with open(os.path.join(workdir_, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert [r['round'] for r in records] == [1, 2]
  assert all('f1_macro' not in r for r in records), records
  assert records[-1]['recon_mse'] > 0
  rows, refs = table2.load_results(t2, IMAGES)
  assert set(rows) == {'fedrecon', table2_scoring.NO_MAPPING}
  (image_row,) = rows['fedrecon']
  # The curve reads each kept checkpoint: rounds 1 and 2.
  curve = image_row['curve']
  assert [c['round'] for c in curve] == [1, 2]
  assert 0 < curve[0]['train_seconds'] < curve[1]['train_seconds']
  # The probes judge real images far above chance (10%).
  assert np.mean(image_row['probe_accuracy']) > 0.3
  # Sampled draws were scored, and the posterior-mean read beside them.
  m = len(image_row['modalities'])
  assert np.shape(image_row['per_draw']['coherence_single']) == (2, m, m)
  assert 0 <= image_row['posterior_mean']['one_input'] <= 1
  assert 0 < refs['mean_fill_mse'] < refs['zero_fill_mse']

  out = os.path.join(root, 'out')
  page2 = open(paper.write_table2_page(root, [IMAGES], out)).read()
  assert f'## Table 2: reconstruction, {IMAGES}' in page2
  assert '| fedrecon_no_T | 1 |' in page2
  assert os.path.exists(os.path.join(out, f'grid_{IMAGES}_fedrecon.png'))
  assert os.path.exists(os.path.join(out, f'coherence_{IMAGES}.png'))
