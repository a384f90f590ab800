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
after another) with fedrecon_jax.train.run; with --runs_per_program=R, cells
that share a program (they differ only in seed, missing_rate, alpha or
numeric settings) train R at a time as one (fedrecon_jax.train.run_group). Re-running the same command
skips finished cells (summary.json with the requested rounds), resumes
unfinished ones from their checkpoints, and refuses a sweep root whose
grid.json records another grid. The last step writes results.md and plots
(experiments.report). Set JAX_COMPILATION_CACHE_DIR to reuse compiled
programs across cells and shards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging

from experiments import train as train_flags
from fedrecon_jax import metrics_writer, preemption, progress, workdir
from fedrecon_jax.config import Config

GRID_FILE = 'grid.json'
CONFIGS_DIR = os.path.join(os.path.dirname(__file__), 'configs')
# Grid axes with their own comma-separated flag, in cell-name order.
AXIS_FLAGS = {'method': 'methods', 'server_opt': 'server_opts',
              'alpha': 'alphas', 'missing_rate': 'missing_rates',
              'seed': 'seeds', 'dataset': 'datasets'}
# Axes every grid has (the Config default when not given).
DEFAULT_AXES = ('method', 'alpha', 'missing_rate', 'seed', 'dataset')
_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Config fields a sweep sets itself or takes as axes: not pass-through flags.
_NOT_PASSED = ('workdir',) + tuple(AXIS_FLAGS)


class GridError(ValueError):
  """A bad grid, or a sweep root that holds another grid."""


@dataclasses.dataclass(frozen=True)
class Cell:
  name: str
  values: dict  # grid key -> value


@dataclasses.dataclass(frozen=True)
class Grid:
  axes: dict    # grid key -> list of values, in cell-name order
  flags: dict   # fixed training flags (Config fields) -> value

  def cells(self) -> list[Cell]:
    keys = list(self.axes)
    return [Cell(cell_name(dict(zip(keys, combo))), dict(zip(keys, combo)))
            for combo in itertools.product(*self.axes.values())]

  def config(self, cell: Cell, sweep_root: str) -> Config:
    return Config(**{**self.flags, **cell.values,
                     'workdir': os.path.join(sweep_root, cell.name)})

  def to_json(self) -> dict:
    return {'grid': self.axes, 'flags': self.flags,
            'cells': [c.name for c in self.cells()]}


def flag_name(key: str) -> str:
  """How the user spells grid key `key` (for error messages)."""
  if key in AXIS_FLAGS:
    return f'--{AXIS_FLAGS[key]}'
  return f'grid key {key!r}'


def cell_name(values: dict) -> str:
  """'method=fedrecon,alpha=0.1,...': readable and unique per cell."""
  def fmt(v):
    return str(v).replace(os.sep, '_').replace(',', '_')
  return ','.join(f'{k}={fmt(v)}' for k, v in values.items())


def coerce(key: str, value, where: str):
  """value (str from a flag, or a JSON/py value) as Config field `key`'s
  type; raises GridError naming `where` (the flag or file)."""
  kind = type(_FIELDS[key].default)
  try:
    if isinstance(value, str) and kind is not str:
      text = value.strip()
      if kind is bool:
        if text.lower() not in ('true', 'false', '1', '0'):
          raise ValueError(text)
        return text.lower() in ('true', '1')
      return kind(text)
    if kind is bool and not isinstance(value, bool):
      raise ValueError(value)
    if kind is int and (isinstance(value, bool) or value != int(value)):
      raise ValueError(value)
    if kind is float and isinstance(value, bool):
      raise ValueError(value)
    return kind(value)
  except (TypeError, ValueError):
    raise GridError(f'{where}: {value!r} is not a valid {kind.__name__} for '
                    f'--{key}.') from None


def _check_key(key: str, where: str) -> None:
  if key not in _FIELDS or key == 'workdir':
    known = ', '.join(sorted(k for k in _FIELDS if k != 'workdir'))
    raise GridError(f'Unknown grid key {key!r} in {where}: not a flag of '
                    f'experiments.train (known: {known}).')


def _axis(key: str, values, where: str) -> list:
  if not isinstance(values, (list, tuple)):
    values = [values]
  if not values:
    raise GridError(f'{where}: the grid axis {key!r} is empty; give at least '
                    'one value.')
  out = [coerce(key, v, where) for v in values]
  dups = sorted({str(v) for v in out if out.count(v) > 1})
  if dups:
    raise GridError(f'{where}: {key!r} lists {", ".join(dups)} more than '
                    'once.')
  return out


def resolve_config_path(path: str) -> str:
  """A path as given, or a name/file in experiments/configs/."""
  candidates = [path] + [os.path.join(CONFIGS_DIR, path + ext)
                         for ext in ('', '.json', '.py')]
  for p in candidates:
    if os.path.isfile(p):
      return p
  raise GridError(f'--config={path!r}: no such file (looked in . and '
                  f'{CONFIGS_DIR}).')


def load_config_file(path: str) -> tuple[dict, dict]:
  """(grid, flags) of a JSON or .py sweep config file."""
  path = resolve_config_path(path)
  if path.endswith('.py'):
    spec = importlib.util.spec_from_file_location('_sweep_config', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'GRID'):
      raise GridError(f'--config={path}: a .py config must define GRID.')
    data = {'grid': module.GRID, 'flags': getattr(module, 'FLAGS', {})}
  else:
    try:
      with open(path) as f:
        data = json.load(f)
    except json.JSONDecodeError as e:
      raise GridError(f'--config={path}: not valid JSON: {e}') from None
  if not isinstance(data, dict) or set(data) - {'grid', 'flags'}:
    raise GridError(f'--config={path}: expected an object with keys "grid" '
                    'and optionally "flags".')
  grid, fixed = data.get('grid') or {}, data.get('flags') or {}
  if not isinstance(grid, dict) or not isinstance(fixed, dict):
    raise GridError(f'--config={path}: "grid" and "flags" must be objects.')
  return grid, fixed


def make_grid(axis_flags: dict, fixed_flags: dict,
              config_path: str | None = None) -> Grid:
  """The grid from a config file (optional) overridden by flags.

  axis_flags: grid key -> list of strings (given --methods etc.).
  fixed_flags: Config field -> value (given pass-through flags).
  """
  file_grid, file_flags = ({}, {})
  where_file = ''
  if config_path:
    file_grid, file_flags = load_config_file(config_path)
    where_file = f'--config={config_path}'
  axes = {}
  for key, values in file_grid.items():
    _check_key(key, where_file)
    axes[key] = _axis(key, values, f'{where_file} grid[{key!r}]')
  for key, values in axis_flags.items():
    axes[key] = _axis(key, values, flag_name(key))
  fixed = {}
  for key, value in file_flags.items():
    _check_key(key, where_file)
    fixed[key] = coerce(key, value, f'{where_file} flags[{key!r}]')
  for key, value in fixed_flags.items():
    _check_key(key, 'the flags')
    fixed[key] = value
  both = sorted(set(fixed) & set(axes))
  if both:
    raise GridError(f'--{both[0]} is both a grid axis and a fixed flag; '
                    'give it once.')
  for key in DEFAULT_AXES:
    if key not in axes and key not in fixed:
      axes[key] = [_FIELDS[key].default]
  order = list(AXIS_FLAGS) + sorted(k for k in axes if k not in AXIS_FLAGS)
  return Grid({k: axes[k] for k in order if k in axes}, fixed)


def validate_cells(grid: Grid, sweep_root: str) -> list[Cell]:
  cells = grid.cells()
  for cell in cells:
    try:
      grid.config(cell, sweep_root).validate()
    except ValueError as e:
      hint = [flag_name(k) for k in grid.axes if f'--{k}=' in str(e)]
      raise GridError(f'Cell {cell.name}: {e}' + (
          f' (a value of {hint[0]})' if hint else '')) from None
  return cells


def check_sweep_root(grid: Grid, sweep_root: str) -> None:
  """Refuses a sweep root made for another grid; then records this one."""
  path = os.path.join(sweep_root, GRID_FILE)
  want = grid.to_json()
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    diff = _grid_diff(have, want)
    if diff:
      raise GridError(
          f'Refusing --sweep_root={sweep_root}: its {GRID_FILE} records a '
          f'different grid: {"; ".join(diff)}. Pass the same grid and flags, '
          'or use a new --sweep_root.')
  else:
    names = set(want['cells'])
    strays = sorted(n for n in _cell_dirs(sweep_root) if n not in names)
    if strays:
      raise GridError(
          f'Refusing --sweep_root={sweep_root}: it has no {GRID_FILE} but '
          f'holds cells of another grid: {", ".join(strays[:5])}'
          f'{" ..." if len(strays) > 5 else ""}. Use a new --sweep_root.')
  os.makedirs(sweep_root, exist_ok=True)
  metrics_writer.write_json_atomic(path, want, indent=1)


def _grid_diff(have: dict, want: dict) -> list[str]:
  out = []
  h_axes, w_axes = have.get('grid', {}), want['grid']
  for key in sorted(set(h_axes) | set(w_axes)):
    if h_axes.get(key) != w_axes.get(key):
      out.append(f'{flag_name(key)}: {h_axes.get(key, "(not an axis)")} there, '
                 f'{w_axes.get(key, "(not an axis)")} now')
  # Resumable flags (e.g. more --rounds) may differ: the cells go on.
  for key, h, w in workdir.differing_flags(have.get('flags', {}),
                                           want['flags']):
    out.append(f'--{key}: {h!r} there, {w!r} now')
  return out


def _cell_dirs(sweep_root: str) -> list[str]:
  if not os.path.isdir(sweep_root):
    return []
  return [n for n in os.listdir(sweep_root)
          if '=' in n and os.path.isdir(os.path.join(sweep_root, n))]


# Kept importable from here (table2 asks the sweep whether a cell is done).
is_finished = workdir.is_finished


def shard(cells: list, shard_index: int, num_shards: int) -> list:
  if num_shards < 1:
    raise GridError(f'--num_shards={num_shards} must be >= 1.')
  if not 0 <= shard_index < num_shards:
    raise GridError(f'--shard_index={shard_index} must be in [0, '
                    f'{num_shards}).')
  return cells[shard_index::num_shards]


def groups(cfgs: list[Config], runs_per_program) -> list[list[Config]]:
  """Cells that share one program (Config.program_key), in grid order, in
  groups of at most runs_per_program (an int >= 1, or 'auto':
  memory_plan.runs_per_program per program): each group trains as one."""
  from fedrecon_jax import memory_plan  # pylint: disable=g-import-not-at-top
  by_key = {}
  for cfg in cfgs:
    by_key.setdefault(cfg.program_key(), []).append(cfg)
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
              num_shards: int = 1, report: bool = True,
              runs_per_program: int | str = 1) -> list[str]:
  """Runs this shard's unfinished cells; returns the names that failed.

  Cells that share a program run runs_per_program at a time as one program
  (fedrecon_jax.train.run_group), each still in its own workdir. A group
  with a workdir another process writes (a second sweep on the same root)
  is left to it. A preempted group stops the sweep: Preempted goes up (exit
  75), and re-running resumes it.
  """
  from fedrecon_jax import train  # pylint: disable=g-import-not-at-top
  cells = validate_cells(grid, sweep_root)
  mine = shard(cells, shard_index, num_shards)
  check_sweep_root(grid, sweep_root)
  print(f'sweep: {len(cells)} cells, {len(mine)} in shard '
        f'{shard_index}/{num_shards}, root {sweep_root}', flush=True)
  cfgs = [grid.config(c, sweep_root) for c in mine]
  todo = [c for c in cfgs if not is_finished(c)]
  for c in cfgs:
    if is_finished(c):
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
  if report:
    # Imported here: matplotlib is only needed once the cells are done.
    from experiments import report as report_lib  # pylint: disable=g-import-not-at-top
    path = report_lib.write_report(sweep_root)
    print(f'report: {path}', flush=True)
  return failed


def _name(cfg: Config) -> str:
  return os.path.basename(cfg.workdir)


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
  for key, name in AXIS_FLAGS.items():
    flags.DEFINE_list(name, None, f'Grid axis: comma-separated values of '
                      f'--{key} (default: {_FIELDS[key].default!r}'
                      f'{"" if key in DEFAULT_AXES else ", not an axis"}).')
  train_flags.define_flags(exclude=_NOT_PASSED,
                           help_prefix='Passed to every cell: ')


def grid_from_flags() -> Grid:
  fl = flags.FLAGS
  axis_flags = {key: fl[name].value for key, name in AXIS_FLAGS.items()
                if fl[name].present}
  fixed = {f.name: fl[f.name].value for f in dataclasses.fields(Config)
           if f.name not in _NOT_PASSED and fl[f.name].present}
  return make_grid(axis_flags, fixed, fl.config)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  fl = flags.FLAGS
  try:
    if not fl.sweep_root:
      raise GridError('--sweep_root is required.')
    grid = grid_from_flags()
    failed = run_sweep(grid, fl.sweep_root, fl.shard_index, fl.num_shards,
                       report=fl.report,
                       runs_per_program=fl.runs_per_program)
  except GridError as e:
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_REQUEUE)
  if failed:
    sys.exit(f'error: {len(failed)} cell(s) failed: {", ".join(failed)}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
