"""The runs axis: R experiments in one program equal each experiment alone."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from fedrecon_jax import sweep, train
from fedrecon_jax import grid as grid_lib
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE

import tiny
import toy

R = 3


# The task stage's case in the slow tier (~12 s each; CI runs both).
@pytest.mark.parametrize('stage', [
    GEN_STAGE, pytest.param(TASK_STAGE, marks=pytest.mark.slow)])
def test_runs_axis_equals_each_run_alone(stage):
  """3 runs (own seed key, partition and client learning rate) as one
  program, two rounds, == each run's own solo rounds; one trace of each
  program (the solo one and the group's), however many rounds run."""
  params = toy.init_params(toy.small_model())
  cfgs = [toy.cfg_for(seed=i, client_lr=0.05 * (i + 1), gen_lr=0.01 * (i + 1))
          for i in range(R)]
  with toy.max_round_traces(2):
    want, (state, metrics), _ = toy.solo_and_grouped(cfgs, stage, params)
  for i, w in enumerate(want):
    toy.leaves_close(jax.tree.map(lambda x, i=i: x[i], (state, metrics)), w)
  # The runs really differ (so equality per run is not vacuous).
  a, b = (jax.tree.leaves(w[0].params) for w in want[:2])
  assert any(not np.allclose(x, y) for x, y in zip(a, b))


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items()
             if not k.endswith('seconds')} for line in f]


@pytest.mark.slow   # ~90-110 s: a whole end-to-end check
def test_grouped_sweep_cells_equal_solo_runs(env, tmp_path):
  """A 2 seeds x 2 client learning rates grid with --runs_per_program=4
  trains as one group, stopped after round 3 with one cell's last checkpoint
  lost, and resumed from the round all cells hold; each cell's metrics.jsonl
  equals an uninterrupted solo run's."""
  schedule = dict(tiny.MODEL, gen_rounds=2, rounds=1, eval_every=2,
                  checkpoint_every=2, data_dir=env['TFDS_DATA_DIR'])
  axes = {'seed': [0, 1], 'client_lr': [0.05, 0.2]}
  root = str(tmp_path / 'sweep')
  grid = grid_lib.Grid(axes, schedule)
  assert len(sweep.groups([grid.config(c, root) for c in grid.cells()],
                          4)) == 1
  assert sweep.run_sweep(grid, root, runs_per_program=4) == []
  # As if killed between the runs' saves: one cell lacks its round-3
  # checkpoint, so the group goes back to round 2 for every run.
  first = grid.config(grid.cells()[0], root).workdir
  assert tiny.steps(first) == [2, 3]
  shutil.rmtree(os.path.join(first, 'checkpoints', '3'))
  # More rounds: the cells resume together, from round 2.
  grid = grid_lib.Grid(axes, {**schedule, 'rounds': 2})
  assert sweep.run_sweep(grid, root, runs_per_program=4) == []
  for cell in grid.cells()[::3]:     # (seed 0, lr 0.05) and (seed 1, lr 0.2)
    cfg = grid.config(cell, root)
    solo = str(tmp_path / 'solo' / cell.name)
    train.run(cfg.__class__(**{**cfg.to_dict(), 'workdir': solo}))
    got, want = _records(cfg.workdir), _records(solo)
    assert [r['round'] for r in got] == [1, 2, 3, 4]
    for g, w in zip(got, want):
      # (Round 3 ended the first, shorter schedule, so it was evaluated.)
      assert w.keys() <= g.keys()
      for k in w:
        np.testing.assert_allclose(g[k], w[k], rtol=1e-5, atol=1e-5,
                                   err_msg=f'{cell.name} {k}')
    with open(os.path.join(cfg.workdir, 'summary.json')) as f:
      assert json.load(f)['config']['workdir'] == cfg.workdir
  # The cells differ from each other (the grid is not one run four times).
  first, last = (_records(grid.config(c, root).workdir)[-1]
                 for c in (grid.cells()[0], grid.cells()[-1]))
  assert first['ce'] != last['ce']


def test_runs_per_program_flag():
  """--runs_per_program: an int >= 1 or 'auto' (one cell per program on
  CPU, where a round of R runs costs about R solo rounds); anything else
  names the flag."""
  assert sweep.parse_runs_per_program(' 4') == 4
  assert sweep.parse_runs_per_program('auto') == 'auto'
  for bad in ('0', '-2', 'all', '2.5'):
    with pytest.raises(grid_lib.GridError, match='--runs_per_program'):
      sweep.parse_runs_per_program(bad)
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  cfgs = [Config(workdir=f'/tmp/unused/{s}', seed=s) for s in range(3)]
  assert [len(g) for g in sweep.groups(cfgs, 2)] == [2, 1]
  assert [len(g) for g in sweep.groups(cfgs, 'auto')] == [1, 1, 1]
