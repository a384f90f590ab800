"""experiments.sweep and experiments.paper.report: a real tiny sweep end to
end, and the grid / sweep-root checks (fedrecon_jax.grid, fedrecon_jax.sweep) on
fakes."""

import json
import os
import sys

import matplotlib.image
import pytest

from experiments.paper import report
from fedrecon_jax import sweep, train, workdir
from fedrecon_jax import grid as grid_lib
from fedrecon_jax import recipe

import tiny

# The tests' tiny run (its alpha and dataset as the grid's one alpha and
# dataset): both seeds' cells reuse the programs of the other end-to-end
# tests.
TINY = (*tiny.flags(alpha=None, dataset=None, gen_rounds=2, rounds=2),
        '--checkpoint_every=2')
ALPHA = float(tiny.MODEL['alpha'])
GRID = ('--methods=fedrecon,zero_fill', f'--alphas={ALPHA}', '--seeds=0,1',
        f'--datasets={tiny.DATASET}')


def run_sweep_cli(env, root, *args, check=True):
  return tiny.run([sys.executable, '-m', 'experiments.sweep',
                   f'--sweep_root={root}', *args], env, check=check)


@pytest.fixture(scope='module')
def swept(env, tmp_path_factory):
  """2 methods x 2 seeds, tiny runs."""
  root = str(tmp_path_factory.mktemp('sweep'))
  run_sweep_cli(env, root, *GRID, *TINY)
  return root


def summary_mtimes(root):
  return {n: os.stat(os.path.join(root, n, 'summary.json')).st_mtime_ns
          for n in os.listdir(root) if '=' in n}


def test_sweep_writes_one_row_per_cell_and_plots(swept):
  names = sorted(n for n in os.listdir(swept) if '=' in n)
  assert names == [
      f'method={m},alpha={ALPHA},missing_rate=0.3,seed={s},'
      f'dataset={tiny.DATASET}'
      for m in ('fedrecon', 'zero_fill') for s in (0, 1)]
  with open(os.path.join(swept, 'results.md')) as f:
    text = f.read()
  rows = [line for line in text.splitlines()
          if line.startswith('| ') and 'seeds done' not in line]
  assert len(rows) == 2, text  # one per method; seeds are averaged
  for method, row in zip(('fedrecon', 'zero_fill'), rows):
    cols = [c.strip() for c in row.strip('|').split('|')]
    assert cols[0] == method and cols[5] == '2/2', row
    assert '±' in cols[6] and '±' in cols[7], row     # f1_macro, accuracy
  assert rows[1].rstrip(' |').endswith('-')             # zero_fill: no recon
  plots = os.listdir(os.path.join(swept, 'plots'))
  assert any(p.startswith('f1_vs_missing_rate') for p in plots)
  assert any(p.startswith('curves') for p in plots)
  for p in plots:
    path = os.path.join(swept, 'plots', p)
    with open(path, 'rb') as f:
      assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    assert f'plots/{p}' in text


def test_rerun_skips_finished_cells(env, swept):
  before = summary_mtimes(swept)
  out = run_sweep_cli(env, swept, *GRID, *TINY).stdout
  assert out.count('skipping') == 4 and 'running' not in out, out
  assert summary_mtimes(swept) == before


def test_different_grid_in_same_root_is_refused(env, swept):
  before = summary_mtimes(swept)
  proc = run_sweep_cli(env, swept, *GRID, '--alphas=0.1', *TINY, check=False)
  assert proc.returncode != 0
  assert '--alphas' in proc.stderr and 'different grid' in proc.stderr
  proc = run_sweep_cli(env, swept, *GRID, *TINY[:-1], '--checkpoint_every=3',
                       '--num_clients=7', check=False)
  assert proc.returncode != 0 and '--num_clients' in proc.stderr
  assert summary_mtimes(swept) == before


# The rest runs the sweep logic on fakes: no training.


def fake_run(calls, fail=()):
  def run(cfg):
    calls.append(os.path.basename(cfg.workdir))
    if cfg.seed in fail:
      raise RuntimeError('boom')
    os.makedirs(cfg.workdir, exist_ok=True)
    with open(os.path.join(cfg.workdir, 'summary.json'), 'w') as f:
      json.dump({'config': cfg.to_dict(),
                 'rounds': recipe.of(cfg).total_rounds,
                 'f1_macro': 0.5 + cfg.seed / 10,
                 'accuracy': 0.5}, f)
    return {}
  return run


def test_failed_cell_costs_no_finished_cell(monkeypatch, tmp_path):
  root = str(tmp_path)
  grid = grid_lib.make_grid({'method': ['zero_fill'], 'seed': ['0', '1', '2']},
                         {'rounds': 3})
  calls = []
  monkeypatch.setattr(train, 'run', fake_run(calls, fail=(1,)))
  failed = sweep.run_sweep(grid, root)
  assert len(calls) == 3 and failed == [calls[1]]
  calls.clear()
  monkeypatch.setattr(train, 'run', fake_run(calls))
  assert sweep.run_sweep(grid, root) == []
  assert calls == [failed[0]]  # only the unfinished cell ran again
  # More rounds (a harmless flag): same sweep root, every cell goes on.
  calls.clear()
  more = grid_lib.make_grid({'method': ['zero_fill'], 'seed': ['0', '1', '2']},
                         {'rounds': 4})
  sweep.run_sweep(more, root)
  assert len(calls) == 3
  report.write_report(root)
  with open(os.path.join(root, 'results.md')) as f:
    assert '| zero_fill | fedopt | 5.0 | 0.3 | uci_multifeature | 3/3 |' in (
        f.read())


def test_shards_split_the_cells(monkeypatch, tmp_path):
  grid = grid_lib.make_grid({'method': ['zero_fill', 'unimodal'],
                          'seed': ['0', '1', '2']}, {})
  got = []
  for i in range(4):
    calls = []
    monkeypatch.setattr(train, 'run', fake_run(calls))
    sweep.run_sweep(grid, str(tmp_path), shard_index=i, num_shards=4)
    got += calls
  assert sorted(got) == sorted(c.name for c in grid.cells())
  with pytest.raises(grid_lib.GridError, match='--shard_index'):
    sweep.shard(grid.cells(), 4, 4)


def test_bad_grids_name_the_flag(tmp_path):
  with pytest.raises(grid_lib.GridError, match='--methods.*empty'):
    grid_lib.make_grid({'method': []}, {})
  with pytest.raises(grid_lib.GridError, match='--alphas.*not a valid float'):
    grid_lib.make_grid({'alpha': ['x']}, {})
  with pytest.raises(grid_lib.GridError, match='--seeds.*more than once'):
    grid_lib.make_grid({'seed': ['0', '0']}, {})
  config = tmp_path / 'bad.json'
  config.write_text(json.dumps({'grid': {'learning_rate': [0.1]}}))
  with pytest.raises(grid_lib.GridError, match="'learning_rate'"):
    grid_lib.make_grid({}, {}, str(config))
  config.write_text(json.dumps({'grid': {'alpha': []}}))
  with pytest.raises(grid_lib.GridError, match="alpha.*empty"):
    grid_lib.make_grid({}, {}, str(config))
  grid = grid_lib.make_grid({'alpha': ['-1']}, {})
  with pytest.raises(grid_lib.GridError, match='--alpha=-1.0'):
    grid_lib.validate_cells(grid, str(tmp_path))


def test_root_with_cells_of_another_grid_is_refused(tmp_path):
  os.makedirs(tmp_path / 'method=unimodal,seed=7')
  grid = grid_lib.make_grid({'method': ['zero_fill']}, {})
  with pytest.raises(grid_lib.GridError, match='method=unimodal,seed=7'):
    grid_lib.check_sweep_root(grid, str(tmp_path))


def test_config_files_in_experiments_configs_load():
  full = grid_lib.make_grid({}, {}, 'table1')
  assert len(full.cells()) == 5 * 2 * 2 * 3 * 3
  assert full.flags['eval_every'] == 1
  reduced = grid_lib.make_grid({}, {}, 'table1_reduced')
  assert len(reduced.cells()) == 5 * 2 * 3
  assert reduced.axes['method'] == full.axes['method']
  av = grid_lib.make_grid({}, {}, 'table1_av_mnist')
  assert len(av.cells()) == 3 * 2 * 3
  assert {c.values['dataset'] for c in av.cells()} == {'av_mnist'}
  smoke = grid_lib.make_grid({'seed': ['3']}, {'rounds': 2}, 'smoke')
  assert [c.values['seed'] for c in smoke.cells()] == [3, 3]
  assert smoke.flags['rounds'] == 2 and smoke.flags['num_clients'] == 6


def test_report_without_grid_is_a_clear_error(tmp_path):
  with pytest.raises(grid_lib.GridError, match='grid.json'):
    report.write_report(str(tmp_path))


def test_report_marks_diverged_cells_and_does_not_average_them(
    monkeypatch, tmp_path, capsys):
  root = str(tmp_path)
  grid = grid_lib.make_grid({'method': ['zero_fill', 'unimodal'],
                          'seed': ['0', '1']}, {'rounds': 3})
  calls = []
  finish = fake_run(calls)

  def run(cfg):   # unimodal seed 1 and both zero_fill seeds diverge
    if cfg.method == 'unimodal' and cfg.seed == 0:
      return finish(cfg)
    summary = {'config': cfg.to_dict(),
               'rounds': recipe.of(cfg).total_rounds, 'diverged_at_round': 2,
               'diverged_because': 'the global params are non-finite',
               'last_finite_eval': None}
    os.makedirs(cfg.workdir, exist_ok=True)
    workdir.write_summary(cfg.workdir, summary)
    return summary

  monkeypatch.setattr(train, 'run', run)
  assert sweep.run_sweep(grid, root) == []
  assert capsys.readouterr().out.count('DIVERGED') == 3
  report.write_report(root)
  with open(os.path.join(root, 'results.md')) as f:
    text = f.read()
  assert ('| unimodal | fedopt | 5.0 | 0.3 | uci_multifeature | 1/2 '
          '(1 diverged) | 0.5000 ± 0.0000 |') in text, text
  assert ('| zero_fill | fedopt | 5.0 | 0.3 | uci_multifeature | 0/2 '
          '(2 diverged) | diverged | diverged | diverged |') in text, text
  assert 'Diverged (not averaged):' in text
  assert text.count('at round 2 (the global params are non-finite)') == 3
  # A diverged run is finished: a re-run does not train it again.
  calls.clear()
  sweep.run_sweep(grid, root)
  assert not calls


def test_cell_written_by_another_process_is_left_to_it(monkeypatch, tmp_path,
                                                       capsys):
  grid = grid_lib.make_grid({'method': ['zero_fill'], 'seed': ['0', '1']}, {})
  busy_cell = grid.config(grid.cells()[0], str(tmp_path)).workdir
  lock = workdir.Lock(busy_cell)   # as another sweep's run would hold it
  calls = []
  finish = fake_run(calls)

  def run(cfg):
    with workdir.writer_lock(cfg.workdir):
      return finish(cfg)

  monkeypatch.setattr(train, 'run', run)
  try:
    assert sweep.run_sweep(grid, str(tmp_path)) == []
  finally:
    lock.release()
  out = capsys.readouterr().out
  assert calls == [grid.cells()[1].name]
  assert f'skipping {grid.cells()[0].name}: --workdir=' in out
  assert 'in use' in out and '(1 done, 1 left, ETA' in out


def test_a_root_accepts_a_grid_that_only_adds_values(tmp_path):
  """More values on a recorded axis keep every recorded cell: accepted, and
  grid.json records the larger grid. Fewer values, or a new axis, is
  another grid: refused."""
  root = str(tmp_path)
  small = grid_lib.make_grid({'method': ['zero_fill'], 'alpha': ['0.1']}, {})
  grid_lib.check_sweep_root(small, root)
  large = grid_lib.make_grid({'method': ['zero_fill'],
                              'alpha': ['0.1', '5.0']}, {})
  grid_lib.check_sweep_root(large, root)
  assert grid_lib.read_grid(root).axes['alpha'] == [0.1, 5.0]
  with pytest.raises(grid_lib.GridError, match='--alphas: \\[0.1, 5.0\\] '
                     'there, \\[0.1\\] now'):
    grid_lib.check_sweep_root(small, root)
  other = grid_lib.make_grid({'method': ['zero_fill'], 'alpha': ['0.1', '5.0'],
                              'seed': ['0', '1']}, {})
  grid_lib.check_sweep_root(other, root)   # seed was an axis of [0]: grows
  with pytest.raises(grid_lib.GridError, match='--alphas'):
    grid_lib.check_sweep_root(
        grid_lib.make_grid({'method': ['zero_fill'], 'alpha': ['1.0']}, {}),
        root)
  with pytest.raises(grid_lib.GridError, match=r'\(not an axis\) there'):
    grid_lib.check_sweep_root(grid_lib.make_grid(
        {'method': ['zero_fill'], 'alpha': ['0.1', '5.0'], 'seed': ['0', '1'],
         'server_opt': ['fedavg']}, {}), root)
