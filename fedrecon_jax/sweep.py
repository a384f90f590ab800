"""Running a grid: this shard's unfinished cells, those that share a program
trained together.

Each cell trains in its own workdir with fedrecon_jax.train.run; with
runs_per_program=R, cells that share a program (they differ only in seed,
missing_rate, alpha or numeric settings: recipe.Recipe.program_key) train R at a
time as one (fedrecon_jax.train.run_group). Running the same grid again
skips finished cells (summary.json with the requested rounds) and resumes
unfinished ones from their checkpoints. experiments.sweep is the command;
experiments.paper.report writes the tables and plots.
"""

from __future__ import annotations

import os
import traceback

from fedrecon_jax import memory_plan, preemption, progress, recipe, train
from fedrecon_jax import workdir
from fedrecon_jax.config import Config
from fedrecon_jax.grid import Grid, GridError, check_sweep_root
from fedrecon_jax.grid import validate_cells


def shard(cells: list, shard_index: int, num_shards: int) -> list:
  if num_shards < 1:
    raise GridError(f'--num_shards={num_shards} must be >= 1.')
  if not 0 <= shard_index < num_shards:
    raise GridError(f'--shard_index={shard_index} must be in [0, '
                    f'{num_shards}).')
  return cells[shard_index::num_shards]


def groups(cfgs: list[Config], runs_per_program) -> list[list[Config]]:
  """Cells that share one program (recipe.Recipe.program_key), in grid order, in
  groups of at most runs_per_program (an int >= 1, or 'auto':
  memory_plan.runs_per_program per program): each group trains as one."""
  by_key = {}
  for cfg in cfgs:
    by_key.setdefault(recipe.of(cfg).program_key, []).append(cfg)
  out = []
  for same in by_key.values():
    size = (memory_plan.runs_per_program(same[0], len(same))
            if runs_per_program == 'auto' else runs_per_program)
    out += [same[i:i + size] for i in range(0, len(same), size)]
  return out


def parse_runs_per_program(value) -> int | str:
  """--runs_per_program: an int >= 1 or 'auto'."""
  value = str(value).strip()
  if value == 'auto':
    return value
  if not value.isdigit() or int(value) < 1:
    raise GridError(f"--runs_per_program={value!r} must be an integer >= 1 "
                    "or 'auto'.")
  return int(value)


def run_sweep(grid: Grid, sweep_root: str, shard_index: int = 0,
              num_shards: int = 1,
              runs_per_program: int | str = 1) -> list[str]:
  """Runs this shard's unfinished cells; returns the names that failed.

  Cells that share a program run runs_per_program at a time as one program
  (fedrecon_jax.train.run_group), each still in its own workdir. A group
  with a workdir another process writes (a second sweep on the same root)
  is left to it. A preempted group stops the sweep: Preempted goes up (exit
  75), and re-running resumes it.
  """
  cells = validate_cells(grid, sweep_root, check=recipe.validate)
  mine = shard(cells, shard_index, num_shards)
  check_sweep_root(grid, sweep_root)
  print(f'sweep: {len(cells)} cells, {len(mine)} in shard '
        f'{shard_index}/{num_shards}, root {sweep_root}', flush=True)
  cfgs = [grid.config(c, sweep_root) for c in mine]
  todo = [c for c in cfgs if not workdir.is_finished(c)]
  for c in cfgs:
    if workdir.is_finished(c):
      print(f'skipping {_name(c)}: finished', flush=True)
  failed, busy, rate, done = [], [], progress.Rate(), 0
  for group in groups(todo, parse_runs_per_program(runs_per_program)):
    names = ', '.join(_name(c) for c in group)
    verb = 'resuming' if any(os.path.isdir(c.workdir) for c in group) else (
        'running')
    # The ETA prices the cells left at the mean time of those run so far.
    left = len(todo) - done
    print(f'[{done + 1}-{done + len(group)}/{len(todo)}] {verb} {names} '
          f'({done} done, {left} left, ETA '
          f'{progress.duration(rate.eta(left))})', flush=True)
    try:
      summaries = ([train.run(group[0])] if len(group) == 1 else
                   train.run_group(group))
    except workdir.WorkdirBusyError as e:
      print(f'skipping {names}: {e}', flush=True)
      busy.extend(_name(c) for c in group)
      done += len(group)
      continue
    except preemption.Preempted:
      raise
    except Exception as e:  # pylint: disable=broad-except
      # One bad cell must not cost the others; its workdir keeps what it had.
      traceback.print_exc()
      print(f'FAILED {names}: {e}', flush=True)
      failed.extend(_name(c) for c in group)
    else:
      for cfg, summary in zip(group, summaries):
        if 'diverged_at_round' in summary:
          print(f'DIVERGED {_name(cfg)} at round '
                f'{summary["diverged_at_round"]}', flush=True)
    done += len(group)
    for _ in group:
      rate.tick()
  if busy:
    print(f'sweep: {len(busy)} cell(s) left to the processes writing them; '
          're-run when they finish for the full report.', flush=True)
  return failed


def _name(cfg: Config) -> str:
  return os.path.basename(cfg.workdir)
