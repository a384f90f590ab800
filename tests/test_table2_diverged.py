"""A Table 2 variant whose training diverged is reported as such, not scored."""

import os

from experiments import paper, table2
from fedrecon_jax import workdir


def test_diverged_variant_is_a_row_not_a_crash(tmp_path):
  root = str(tmp_path)
  cfg = table2.variant_config('uci_multifeature', 'poe', root)
  os.makedirs(cfg.workdir)
  # What train.run writes when a run diverges (train._diverged_summary).
  workdir.write_summary(cfg.workdir, {
      'config': cfg.to_dict(), 'rounds': cfg.total_rounds,
      'diverged_at_round': 7, 'diverged_because': 'non-finite params',
      'last_finite_eval': None, 'wall_seconds': 1.0, 'devices': 'cpu'})
  # Finished, so run_variant does not train; it must not try to score.
  assert table2.run_variant('uci_multifeature', 'poe', root) == {
      'poe': {'diverged_at_round': 7}}
  rows, _ = table2.load_results(root, 'uci_multifeature')
  assert rows == {'poe': {'diverged_at_round': 7}}
  page = '\n'.join(paper.table2_section(
      root, 'uci_multifeature', root,
      table2.read_results(root, 'uci_multifeature')))
  assert '| poe | diverged at round 7 |' in page
