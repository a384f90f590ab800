r"""Tables and plots of a sweep: <sweep_root>/results.md and plots/*.png.

  python -m experiments.paper.report --sweep_root=/tmp/sweep

results.md has one row per cell (method x server_opt x alpha x missing_rate x
dataset, plus any other grid axis): the mean +/- std over seeds of the final
f1_macro, accuracy and recon_mse of the finished runs (summary.json). The
plots are macro-F1 vs missing rate per method for each (dataset, alpha), and
the task-stage macro-F1 per round per method (mean over seeds) for each
(dataset, alpha, missing_rate). experiments.sweep calls this as its last step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from fedrecon_jax import metrics_writer, workdir
from fedrecon_jax.grid import Cell, Grid, GridError, read_grid
from fedrecon_jax.config import Config
from fedrecon_jax.methods import TASK_STAGE

RESULTS_FILE = 'results.md'
PLOTS_DIR = 'plots'
METRICS = ('f1_macro', 'accuracy', 'recon_mse')
# Columns that define a cell of the table; other non-seed axes are appended.
CELL_KEYS = ('method', 'server_opt', 'alpha', 'missing_rate', 'dataset')


@dataclasses.dataclass(frozen=True)
class Run:
  cell: Cell
  cfg: Config
  summary: dict | None       # None: not finished, or diverged
  records: list
  diverged: dict | None = None  # the summary of a diverged run

  def value(self, key: str):
    return getattr(self.cfg, key)


def load_runs(sweep_root: str) -> tuple[Grid, list[Run]]:
  grid = read_grid(sweep_root)
  runs = []
  for cell in grid.cells():
    cfg = grid.config(cell, sweep_root)
    summary = workdir.read_summary(cfg.workdir) if workdir.is_finished(
        cfg) else None
    # A diverged run has no final metrics: kept apart, never averaged.
    diverged = summary if summary and 'diverged_at_round' in summary else None
    records = metrics_writer.read_metrics(
        os.path.join(cfg.workdir, metrics_writer.METRICS_FILE))
    runs.append(Run(cell, cfg, None if diverged else summary, records,
                    diverged))
  return grid, runs


def cell_keys(grid: Grid) -> tuple[str, ...]:
  extra = tuple(k for k in grid.axes if k not in CELL_KEYS and k != 'seed')
  return CELL_KEYS + extra


def group(runs: list[Run], keys) -> dict[tuple, list[Run]]:
  out = {}
  for run in runs:
    out.setdefault(tuple(run.value(k) for k in keys), []).append(run)
  return out


def mean_std(values) -> str:
  values = [v for v in values if v is not None]
  if not values:
    return '-'
  return f'{np.mean(values):.4f} ± {np.std(values):.4f}'


def label(grid: Grid, run: Run) -> str:
  """A curve's name: the method plus the axes (other than those on the
  plot's axes and title) that vary in this grid."""
  parts = [run.cfg.method]
  for k in grid.axes:
    if (k not in ('method', 'seed', 'alpha', 'missing_rate', 'dataset')
        and len(grid.axes[k]) > 1):
      parts.append(f'{k}={run.value(k)}')
  return ' '.join(parts)


def _plot_name(prefix: str, **values) -> str:
  return prefix + ''.join(f'_{k}={v}' for k, v in values.items()) + '.png'


def plot_f1_vs_missing_rate(grid, runs, out_dir) -> list[str]:
  """One PNG per (dataset, alpha): mean +/- std macro-F1 per method."""
  paths = []
  done = [r for r in runs if r.summary is not None]
  for (dataset, alpha), panel in sorted(
      group(done, ('dataset', 'alpha')).items()):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, line in sorted(_by_label(grid, panel).items()):
      by_rate = {}
      for r in line:
        by_rate.setdefault(r.cfg.missing_rate, []).append(
            r.summary['f1_macro'])
      rates = sorted(by_rate)
      ax.errorbar(rates, [np.mean(by_rate[m]) for m in rates],
                  yerr=[np.std(by_rate[m]) for m in rates], marker='o',
                  capsize=3, label=name)
    ax.set(xlabel='missing rate', ylabel='macro-F1 (test)',
           title=f'{dataset}, alpha={alpha}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, _plot_name(
        'f1_vs_missing_rate', dataset=dataset, alpha=alpha)))
  return paths


def plot_curves(grid, runs, out_dir) -> list[str]:
  """One PNG per (dataset, alpha, missing_rate): macro-F1 per task round."""
  paths = []
  done = [r for r in runs if r.summary is not None]
  for (dataset, alpha, rate), panel in sorted(
      group(done, ('dataset', 'alpha', 'missing_rate')).items()):
    fig, ax = plt.subplots(figsize=(5, 3.5))
    drawn = False
    for name, line in sorted(_by_label(grid, panel).items()):
      curves = [task_curve(r) for r in line]
      common = sorted(set.intersection(*(set(c) for c in curves)))
      if not common:  # e.g. metrics.jsonl missing
        continue
      ys = np.array([[c[t] for t in common] for c in curves])
      mean, std = ys.mean(0), ys.std(0)
      ax.plot(common, mean, marker='.', label=name)
      ax.fill_between(common, mean - std, mean + std, alpha=0.2)
      drawn = True
    if not drawn:
      plt.close(fig)
      continue
    ax.set(xlabel='task-stage round', ylabel='macro-F1 (test)',
           title=f'{dataset}, alpha={alpha}, missing rate={rate}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir, _plot_name(
        'curves', dataset=dataset, alpha=alpha, missing_rate=rate)))
  return paths


def _by_label(grid, runs) -> dict[str, list[Run]]:
  out = {}
  for r in runs:
    out.setdefault(label(grid, r), []).append(r)
  return out


def task_curve(run: Run) -> dict[int, float]:
  # Rounds counted from the start of the task stage, so methods with and
  # without a generator stage line up.
  task = [r for r in run.records if r.get('stage') == TASK_STAGE]
  first = min((r['round'] for r in task), default=1)
  return {r['round'] - first + 1: r['f1_macro'] for r in task
          if 'f1_macro' in r}


def _save(fig, out_dir: str, name: str) -> str:
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def results_table(grid: Grid, runs: list[Run]) -> list[str]:
  keys = cell_keys(grid)
  head = list(keys) + ['seeds done'] + list(METRICS)
  lines = ['| ' + ' | '.join(head) + ' |',
           '|' + '---|' * len(head)]
  for values, cell_runs in sorted(group(runs, keys).items(),
                                  key=lambda kv: [str(v) for v in kv[0]]):
    done = [r.summary for r in cell_runs if r.summary is not None]
    diverged = sum(r.diverged is not None for r in cell_runs)
    row = [str(v) for v in values]
    row.append(f'{len(done)}/{len(cell_runs)}' +
               (f' ({diverged} diverged)' if diverged else ''))
    row += [mean_std([s.get(m) for s in done]) if done or not diverged
            else 'diverged' for m in METRICS]
    lines.append('| ' + ' | '.join(row) + ' |')
  return lines


def write_report(sweep_root: str) -> str:
  """Writes results.md and plots/; returns the path of results.md."""
  grid, runs = load_runs(sweep_root)
  out_dir = os.path.join(sweep_root, PLOTS_DIR)
  plots = (plot_f1_vs_missing_rate(grid, runs, out_dir) +
           plot_curves(grid, runs, out_dir))
  done = sum(r.summary is not None for r in runs)
  diverged = [r for r in runs if r.diverged is not None]
  lines = [f'# Sweep results: {os.path.abspath(sweep_root)}', '',
           f'{done} of {len(runs)} runs finished, {len(diverged)} diverged. '
           'Final test metrics, mean ± std (numpy, ddof=0) over the finished '
           'seeds (diverged runs are not averaged in); "-" where a method '
           'has no such metric.', '',
           'Grid: ' + ', '.join(f'{k}={v}' for k, v in grid.axes.items()),
           '', 'Fixed flags: ' + (', '.join(
               f'--{k}={v}' for k, v in sorted(grid.flags.items()))
                                  or '(defaults)'), '']
  lines += results_table(grid, runs)
  if diverged:
    lines += ['', 'Diverged (not averaged):', '']
    lines += [f'- `{r.cell.name}`: at round {r.diverged["diverged_at_round"]}'
              f' ({r.diverged.get("diverged_because", "?")})'
              for r in diverged]
  missing = [r.cell.name for r in runs
             if r.summary is None and r.diverged is None]
  if missing:
    lines += ['', 'Not finished:', ''] + [f'- `{n}`' for n in missing]
  if plots:
    lines += ['', '## Plots', '']
    lines += [f'![{os.path.basename(p)}]({PLOTS_DIR}/{os.path.basename(p)})'
              for p in plots]
  path = os.path.join(sweep_root, RESULTS_FILE)
  metrics_writer.write_text_atomic(path, '\n'.join(lines) + '\n')
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    if not flags.FLAGS.sweep_root:
      raise GridError('--sweep_root is required.')
    print(write_report(flags.FLAGS.sweep_root))
  except GridError as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  flags.DEFINE_string('sweep_root', None,
                      'Folder written by experiments.sweep.')
  app.run(main)
