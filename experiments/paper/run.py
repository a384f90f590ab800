r"""Regenerates the paper's tables and figures on shipped data in one command.

  python -m experiments.paper                  # reduced Table 1 + Table 2 + figures
  python -m experiments.paper --table1=full    # the 180-run Table 1 grid instead
  python -m experiments.paper --parts=report   # only rewrite the page

Parts (each skips finished runs, so re-running resumes where it stopped):
  table1  experiments.sweep --config=table1_reduced (or table1) in
          <root>/table1_reduced (or <root>/table1); with the reduced grid
          also --config=table1_fedavg (FedAvg rows) in <root>/table1_fedavg
          and the ablation sweeps (ABLATIONS) in <root>/<config name>.
          Shard big grids with experiments.sweep itself over the same root;
          this picks them up.
  table2  experiments.paper.table2 for --table2_datasets in <root>/table2.
  report  <out>/results.md: the command, commit, machines and compute time at
          the top; Table 1 with FedRecon's margins over the baselines next to
          the paper's, also on complete test samples (the same runs); the
          freezing figure (macro-F1 per task round, fedrecon vs
          fedrecon_no_freeze at alpha=0.1) with a fluctuation statistic
          (left as it was when root holds no Table 1 runs); <out>/table2.md:
          Table 2 per dataset with its run time and seconds per round, the
          one-input coherence curves, PolyMNIST reconstruction grids;
          <out>/table1_av_mnist.md when <root>/table1_av_mnist holds that
          sweep (run it with experiments.sweep --config=table1_av_mnist).
  --publish copies what the pages read of each Table 1 sweep (no
          checkpoints) into a folder to commit; --root=<it> rereads it.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments.paper import provenance, report, table2, table2_page
from experiments.paper.table1_page import ABLATIONS, FREEZE_ALPHA
from experiments.paper.table1_page import ablation_section, freezing_figure
from experiments.paper import table2_scoring
from experiments.paper.table1_page import table1_section
from fedrecon_jax import grid as grid_lib
from fedrecon_jax import checkpoint, metrics_writer, sweep, workdir

_ROOT = flags.DEFINE_string('root', 'workdirs',
                            'Where the runs go (<root>/table1_reduced, ...).')
_OUT = flags.DEFINE_string('out', 'experiments/results/paper',
                           'Where results.md and the figures go.')
_PARTS = flags.DEFINE_list('parts', ['table1', 'table2', 'report'],
                           'Parts to run, of table1, table2, report.')
_TABLE1 = flags.DEFINE_enum('table1', 'reduced', ['reduced', 'full'],
                            'Table 1 grid: table1_reduced (30 runs) or '
                            'table1 (180 runs).')
_PUBLISH = flags.DEFINE_string(
    'publish', '', 'After each Table 1 sweep, copy what its page reads (the '
    "grid, each cell's metrics, summary and config) to <publish>/<sweep "
    "name>, a tree --parts=report --root=<publish> reads as it reads <root> "
    '(e.g. experiments/results/paper/runs, to commit).')
_DATASETS = flags.DEFINE_list('table2_datasets',
                              ['uci_multifeature', 'polymnist_5k'],
                              'Datasets of Table 2.')

TABLE2_PAGE = 'table2.md'
# FedAvg rows of the reduced grid (config of the same name); the full grid
# has a server_opt axis of its own.
FEDAVG = 'table1_fedavg'
# Table 1 on AV-MNIST: its own sweep (a config of that name) and page.
AV_MNIST = 'table1_av_mnist'


def table1_root(root: str, grid: str) -> str:
  return os.path.join(root, 'table1' if grid == 'full' else 'table1_reduced')


def table1_sweeps(root: str, grid: str) -> list[tuple[str, str]]:
  """(config name, sweep root) of every sweep behind Table 1."""
  if grid == 'full':
    return [('table1', table1_root(root, grid))]
  return [('table1_reduced', table1_root(root, grid)),
          (FEDAVG, os.path.join(root, FEDAVG))]


def table1_runs(root: str, grid: str) -> list:
  """report.Run of every cell of Table 1's sweeps that exist."""
  runs = []
  for _, sweep_root in table1_sweeps(root, grid):
    if os.path.exists(os.path.join(sweep_root, grid_lib.GRID_FILE)):
      runs += report.load_runs(sweep_root)[1]
  return runs


# What a cell keeps for the committed results; checkpoints and logs stay.
PUBLISHED = (workdir.METRICS_FILE, workdir.SUMMARY, checkpoint.CONFIG_FILE)


def publish_sweep(sweep_root: str, dest: str) -> list[str]:
  """Copies the sweep's grid and each finished cell's PUBLISHED files to
  dest (same layout); returns the copies. Unfinished cells stay behind: a
  sweep over a root seeded with the copy reruns them from the start and
  skips the rest, so a sweep can be committed in parts."""
  os.makedirs(dest, exist_ok=True)
  copied = [shutil.copy2(os.path.join(sweep_root, grid_lib.GRID_FILE), dest)]
  for cell in sorted(os.listdir(sweep_root)):
    src = os.path.join(sweep_root, cell)
    names = [n for n in PUBLISHED if os.path.exists(os.path.join(src, n))]
    if os.path.exists(os.path.join(src, workdir.SUMMARY)):
      os.makedirs(os.path.join(dest, cell), exist_ok=True)
      copied += [shutil.copy2(os.path.join(src, n), os.path.join(dest, cell))
                 for n in names]
  return copied


# ------------------------------------------------------------------- header


def _compute(summaries) -> str:
  by_device = {}
  for s in summaries:
    dev = s.get('devices', 'unrecorded device')
    by_device[dev] = by_device.get(dev, 0.0) + s['wall_seconds']
  return ', '.join(f'{sec / 60:.0f} min on {dev}'
                   for dev, sec in sorted(by_device.items())) or 'none yet'


def _training_time(variant: str, per_seed) -> dict | None:
  """{'devices', 'wall_seconds'} of a variant's seeds trained as one
  program: the longest seed's, from its scores where they have it."""
  times = [(s.scores or {}).get(variant, {}).get(
      'train_seconds', s.summary['wall_seconds'])
           for s in per_seed if s.summary is not None]
  if not times:
    return None
  return {'devices': per_seed[0].summary.get('devices', 'unrecorded device'),
          'wall_seconds': max(times)}


def _header(title: str) -> list[str]:
  return [f'# {title}', '',
          f'Generated {datetime.date.today()} by `'
          + ' '.join(['python -m experiments.paper', *sys.argv[1:]])
          + f'` at commit {provenance.commit()}.', '']


def write_page(root: str, grid: str, datasets, out: str) -> str | None:
  """results.md: Table 1, the freezing figure, ablations, and a link to the
  Table 2 page. None (nothing written) without Table 1 runs in root, so a
  Table-2-only rerun leaves the page of an earlier Table 1 as it was."""
  os.makedirs(out, exist_ok=True)
  runs = table1_runs(root, grid)
  if not runs:
    return None
  done = [r.summary for r in runs if r.summary is not None]
  names = ' + '.join(name for name, _ in table1_sweeps(root, grid))
  lines = _header('FedRecon on shipped data: Table 1 and figures') + [
      f'- Table 1 ({names}): {len(done)} of {len(runs)} '
      f'runs finished; run time {_compute(done)}.',
      f'- Table 2 ({", ".join(datasets)}): [{TABLE2_PAGE}]({TABLE2_PAGE}).']
  if os.path.exists(os.path.join(out, 'reading.md')):
    lines += ['', 'How to read these numbers, and where they differ from the '
              'paper: [reading.md](reading.md) (written by hand).']
  lines += ['', '## Table 1: macro-F1, UCI Multiple Features', '']
  lines += table1_section(runs)
  lines += ['', f'## Figure: freezing the generator (α={FREEZE_ALPHA})', '']
  lines += freezing_figure(runs, out) or ['No runs of fedrecon / '
                                          'fedrecon_no_freeze at α=0.1.']
  lines += ['', '## Table 1 on complete test samples', '',
            'The same runs, scored on the test set with nothing missing '
            '(`f1_macro_complete`), as the paper scores its unimodal '
            'baseline.', '']
  lines += table1_section(runs, 'f1_macro_complete')
  ablations = ablation_section(root, runs) if grid == 'reduced' else []
  if ablations:
    lines += ['', '## Ablations', ''] + ablations
  path = os.path.join(out, 'results.md')
  metrics_writer.write_text_atomic(path, '\n'.join(lines) + '\n')
  return path


def write_av_mnist_page(root: str, out: str) -> str | None:
  """table1_av_mnist.md: Table 1 on AV-MNIST from the sweep
  <root>/table1_av_mnist (`python -m experiments.sweep
  --config=table1_av_mnist`); None (nothing written) without it."""
  sweep_root = os.path.join(root, AV_MNIST)
  if not os.path.exists(os.path.join(sweep_root, grid_lib.GRID_FILE)):
    return None
  runs = report.load_runs(sweep_root)[1]
  done = [r.summary for r in runs if r.summary is not None]
  lines = _header('FedRecon on AV-MNIST: Table 1, an image and a spoken '
                  'digit') + [
      f'- {len(done)} of {len(runs)} runs finished (sweep config '
      f'`{AV_MNIST}`); run time {_compute(done)}, summed over runs '
      '(runs trained together as one program, --runs_per_program, each '
      'count its wall time).', '',
      '## Table 1: macro-F1, av_mnist', ''] + table1_section(runs) + [
          '', '## On complete test samples', '',
          'The same runs scored with nothing missing (`f1_macro_complete`).',
          ''] + table1_section(runs, 'f1_macro_complete')
  path = os.path.join(out, f'{AV_MNIST}.md')
  metrics_writer.write_text_atomic(path, '\n'.join(lines) + '\n')
  return path


def write_table2_page(root: str, datasets, out: str) -> str | None:
  """table2.md: per dataset, the run time and seconds per generator round,
  Table 2, the coherence curve and the reconstruction grids. None (nothing
  written) without <root>/table2, so a report of other parts leaves it."""
  t2 = os.path.join(root, 'table2')
  if not os.path.isdir(t2):
    return None
  os.makedirs(out, exist_ok=True)
  lines = _header('FedRecon on shipped data: Table 2, reconstruction')
  scored = {d: table2.read_results(t2, d) for d in datasets}
  for d in datasets:
    rows, _ = table2_scoring.rows_and_refs(
        [s for per in scored[d].values() for s in per])
    per_round = ', '.join(
        f'{name} {np.median([r["seconds_per_round"] for r in per]):.1f}'
        for name, per in rows.items()
        if all('seconds_per_round' in r for r in per))
    # The seeds of a variant train as one group: count its time once. The
    # scores' train_seconds sums every round in metrics.jsonl, so a run
    # resumed after a stop counts all its parts (the summary's wall_seconds
    # holds only the last part's).
    summaries = [_training_time(v, per) for v, per in scored[d].items()]
    scoring = sum(s.scores.get('seconds', 0.0) for per in scored[d].values()
                  for s in per if s.scores)
    missing = [v for v, per in scored[d].items()
               if not any(s.scores for s in per)]
    lines.append(f'- {d}: training time {_compute([s for s in summaries if s])}'
                 ' (each variant\'s seeds as one program)'
                 + (f'; scoring {scoring / 60:.1f} min (probes, draws, '
                    'curves)' if scoring else '')
                 + (f'; median seconds per generator round: {per_round}'
                    if per_round else '')
                 + (f'; no scores yet: {", ".join(missing)}' if missing else '')
                 + '.')
  if os.path.exists(os.path.join(out, 'reading.md')):
    lines += ['', 'How to read these numbers: [reading.md](reading.md).']
  for d in datasets:
    lines += ['', f'## Table 2: reconstruction, {d}', '']
    lines += table2_page.section(t2, d, out, scored[d])
  path = os.path.join(out, TABLE2_PAGE)
  metrics_writer.write_text_atomic(path, '\n'.join(lines) + '\n')
  return path


def main(argv):
  del argv
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  unknown = set(_PARTS.value) - {'table1', 'table2', 'report'}
  if unknown:
    sys.exit(f'error: --parts: {sorted(unknown)} not among table1, table2, '
             'report.')
  t0 = time.time()
  try:
    if 'table1' in _PARTS.value:
      sweeps = table1_sweeps(_ROOT.value, _TABLE1.value)
      if _TABLE1.value == 'reduced':
        sweeps += [(name, os.path.join(_ROOT.value, name))
                   for name in ABLATIONS]
      for name, sweep_root in sweeps:
        failed = sweep.run_sweep(grid_lib.make_grid({}, {}, name), sweep_root)
        print(f'report: {report.write_report(sweep_root)}', flush=True)
        if _PUBLISH.value:
          dest = os.path.join(_PUBLISH.value, os.path.basename(sweep_root))
          n = len(publish_sweep(sweep_root, dest))
          print(f'{name}: {n} files to {dest}', flush=True)
        if failed:
          print(f'{name}: {len(failed)} cell(s) failed: {failed}', flush=True)
    if 'table2' in _PARTS.value:
      for d in _DATASETS.value:
        for v in table2.VARIANTS:
          table2.run_variant(d, v, os.path.join(_ROOT.value, 'table2'))
    if 'report' in _PARTS.value:
      page = write_page(_ROOT.value, _TABLE1.value, _DATASETS.value,
                        _OUT.value)
      print(page or f'No Table 1 runs in {_ROOT.value}: results.md left as '
            'it was.')
      print(write_av_mnist_page(_ROOT.value, _OUT.value)
            or f'No {AV_MNIST} sweep in {_ROOT.value}.')
      print(write_table2_page(_ROOT.value, _DATASETS.value, _OUT.value)
            or f'No Table 2 runs in {_ROOT.value}: table2.md left as it was.')
  except grid_lib.GridError as e:
    sys.exit(f'error: {e}')
  print(f'paper: done in {time.time() - t0:.0f} s', flush=True)


if __name__ == '__main__':
  app.run(main)
