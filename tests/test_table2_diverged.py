"""A Table 2 variant whose training diverged is reported as such, not scored."""

import os
import subprocess
import sys

from experiments.paper import table2, table2_page
from fedrecon_jax import workdir
from fedrecon_jax import recipe


def test_diverged_variant_is_a_row_not_a_crash(tmp_path):
  root = str(tmp_path)
  cfg = table2.variant_config('uci_multifeature', 'poe', root, seed=4)
  os.makedirs(cfg.workdir)
  # What train.run writes when a run diverges (train._diverged_summary).
  workdir.write_summary(cfg.workdir, {
      'config': cfg.to_dict(), 'rounds': recipe.of(cfg).total_rounds,
      'diverged_at_round': 7, 'diverged_because': 'non-finite params',
      'last_finite_eval': None, 'wall_seconds': 1.0, 'devices': 'cpu'})
  # Finished, so run_variant does not train; it must not try to score.
  assert table2.run_variant('uci_multifeature', 'poe', root, seeds=[4]) == [{
      'poe': {'diverged_at_round': 7, 'seed': 4}}]
  rows, _ = table2.load_results(root, 'uci_multifeature')
  assert rows == {'poe': [{'diverged_at_round': 7, 'seed': 4}]}
  page = '\n'.join(table2_page.section(
      root, 'uci_multifeature', root,
      table2.read_results(root, 'uci_multifeature')))
  assert '| poe | 0 (1 diverged, at rounds 7) |' in page


def test_cli_names_a_bad_variant(tmp_path):
  """The entry point (its shared flags passed through: --gen_rounds)
  refuses an unknown --variants value by name, before training."""
  out = subprocess.run(
      [sys.executable, '-m', 'experiments.paper.table2', '--variants=nope',
       '--datasets=uci_multifeature', f'--root={tmp_path}', '--gen_rounds=2'],
      capture_output=True, text=True, check=False)
  assert out.returncode == 1
  assert "--variants: 'nope' is not one of" in out.stderr, out.stderr
  assert not list(tmp_path.iterdir())


def test_publish_copies_scored_seeds_small_files_and_grids(tmp_path):
  root, dest = tmp_path / 'runs', tmp_path / 'results'
  for seed, files in ((0, ('table2.json', 'summary.json', 'config.json',
                           'metrics.jsonl')), (1, ('summary.json',))):
    d = root / 'ds' / 'moe' / f'seed{seed}'
    d.mkdir(parents=True)
    for name in files:
      (d / name).write_text(name)
  (root / 'ds' / 'grid_moe_seed0.png').write_text('png')
  table2.publish(str(root), 'ds', 'moe', [0, 1], str(dest))
  got = sorted(str(p.relative_to(dest)) for p in dest.rglob('*')
               if p.is_file())
  assert got == ['ds/grid_moe_seed0.png', 'ds/moe/seed0/config.json',
                 'ds/moe/seed0/summary.json', 'ds/moe/seed0/table2.json']
