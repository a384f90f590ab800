r"""Runs a grid of experiments, one workdir per cell, then writes the report.

  python -m experiments.sweep --sweep_root=/tmp/sweep \
      --methods=fedrecon,zero_fill --alphas=0.1,5.0 --missing_rates=0.1,0.3,0.5 \
      --seeds=0,1,2 --rounds=50 --gen_rounds=30
  python -m experiments.sweep --sweep_root=/tmp/paper --config=table1
  python -m experiments.sweep --sweep_root=/tmp/paper --config=table1 \
      --num_shards=4 --shard_index=1          # a quarter of the cells

Grid axes: --methods, --server_opts, --alphas, --missing_rates, --seeds,
--datasets (comma-separated), or a config file (--config: a path, or a name
in experiments/configs/) with a JSON object {"grid": {...}, "flags": {...}}
or a .py module defining GRID (and optionally FLAGS); a config file's grid
may use any training flag as a key. Every other flag of experiments.train
(--rounds, --num_clients, ...) is passed through to every cell. Flags on the
command line override the config file.

Each cell trains in <sweep_root>/<key=value,...> (in this process, one cell
after another; fedrecon_jax.sweep): with --runs_per_program=R, cells that
share a program (they differ only in seed, missing_rate, alpha or numeric
settings) train R at a time as one. Re-running the same command skips
finished cells (summary.json with the requested rounds), resumes unfinished
ones from their checkpoints, and refuses a sweep root whose grid.json
records another grid (fedrecon_jax.grid). The last step writes results.md
and plots (experiments.paper.report). Set JAX_COMPILATION_CACHE_DIR to reuse
compiled programs across cells and shards.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags

from experiments import config_flags
from fedrecon_jax import grid as grid_lib
from fedrecon_jax import preemption

# Config fields a sweep sets itself or takes as axes: not pass-through flags.
_NOT_PASSED = ('workdir',) + tuple(grid_lib.AXIS_FLAGS)


def define_flags() -> None:
  flags.DEFINE_string('sweep_root', None, 'Folder of the sweep: grid.json, '
                      'one workdir per cell, results.md, plots/.')
  flags.DEFINE_string('config', None, 'Sweep config: a .json/.py path or a '
                      'name in experiments/configs/.')
  flags.DEFINE_integer('shard_index', 0, 'Which shard of the cells to run.')
  flags.DEFINE_integer('num_shards', 1, 'Cells are dealt round-robin to this '
                       'many shards.')
  flags.DEFINE_boolean('report', True, 'Write results.md and plots at the end.')
  flags.DEFINE_string(
      'runs_per_program', '1', 'Cells that differ only in seed, missing_rate, '
      'alpha or numeric settings (learning rates, ...) train this many at a '
      'time as one compiled program (a runs axis), each in its own workdir. '
      "1 = one cell after another; 'auto' = 1 on CPU, else as many as "
      "--memory_fraction of the devices' memory holds (a solo run's compiled "
      'round, XLA memory analysis).')
  for key, name in grid_lib.AXIS_FLAGS.items():
    axis = '' if key in grid_lib.DEFAULT_AXES else ', not an axis'
    flags.DEFINE_list(name, None, f'Grid axis: comma-separated values of '
                      f'--{key} (default: {grid_lib.FIELDS[key].default!r}'
                      f'{axis}).')
  config_flags.define_flags(exclude=_NOT_PASSED,
                           help_prefix='Passed to every cell: ')


def grid_from_flags() -> grid_lib.Grid:
  fl = flags.FLAGS
  axis_flags = {key: fl[name].value
                for key, name in grid_lib.AXIS_FLAGS.items()
                if fl[name].present}
  fixed = config_flags.given(exclude=_NOT_PASSED)
  return grid_lib.make_grid(axis_flags, fixed, fl.config)


def main(argv):
  config_flags.start(argv)
  fl = flags.FLAGS
  try:
    if not fl.sweep_root:
      raise grid_lib.GridError('--sweep_root is required.')
    grid = grid_from_flags()
    # Imported here, so that --help works without touching jax.
    from fedrecon_jax import sweep  # pylint: disable=g-import-not-at-top
    failed = sweep.run_sweep(grid, fl.sweep_root, fl.shard_index,
                             fl.num_shards,
                             runs_per_program=fl.runs_per_program)
    if fl.report:
      # Imported here: matplotlib is only needed once the cells are done.
      # pylint: disable-next=g-import-not-at-top
      from experiments.paper import report
      print(f'report: {report.write_report(fl.sweep_root)}', flush=True)
  except grid_lib.GridError as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_REQUEUE)
  if failed:
    sys.exit(f'error: {len(failed)} cell(s) failed: {", ".join(failed)}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
