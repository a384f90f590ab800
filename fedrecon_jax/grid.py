"""A grid of runs: its cells, each cell's Config, and the sweep root that
records it.

A grid is axes (Config field -> values, in cell-name order) and fixed flags
(Config field -> value); each cell, one combination of the axes, trains in
<sweep_root>/<key=value,...>. Grids come from flags and from config files
(a JSON object {"grid": {...}, "flags": {...}}, or a .py module defining
GRID and optionally FLAGS: a path, or a name in experiments/configs/). The
sweep root's grid.json records its grid, and a root that holds another grid
is refused, unless the new grid only adds values to the recorded axes (its
cells include every recorded one: a sweep may grow). No JAX here.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os

from fedrecon_jax import metrics_writer, workdir
from fedrecon_jax.config import Config

GRID_FILE = 'grid.json'
# The configs shipped with the repository's experiments.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), 'experiments', 'configs')
# Grid axes with their own comma-separated flag, in cell-name order.
AXIS_FLAGS = {'method': 'methods', 'server_opt': 'server_opts',
              'alpha': 'alphas', 'missing_rate': 'missing_rates',
              'seed': 'seeds', 'dataset': 'datasets'}
# Axes every grid has (the Config default when not given).
DEFAULT_AXES = ('method', 'alpha', 'missing_rate', 'seed', 'dataset')
FIELDS = {f.name: f for f in dataclasses.fields(Config)}


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
  kind = type(FIELDS[key].default)
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
  if key not in FIELDS or key == 'workdir':
    known = ', '.join(sorted(k for k in FIELDS if k != 'workdir'))
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
      axes[key] = [FIELDS[key].default]
  order = list(AXIS_FLAGS) + sorted(k for k in axes if k not in AXIS_FLAGS)
  return Grid({k: axes[k] for k in order if k in axes}, fixed)


def validate_cells(grid: Grid, sweep_root: str,
                   check=Config.validate) -> list[Cell]:
  """The grid's cells, each cell's Config checked by `check` (cfg ->
  raises ValueError; recipe.validate adds the registries' checks)."""
  cells = grid.cells()
  for cell in cells:
    try:
      check(grid.config(cell, sweep_root))
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
    grows = key in h_axes and key in w_axes and all(
        v in w_axes[key] for v in h_axes[key])
    if not grows:
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


def read_grid(sweep_root: str) -> Grid:
  """The grid that sweep_root's grid.json records."""
  path = os.path.join(sweep_root, GRID_FILE)
  if not os.path.exists(path):
    raise GridError(f'--sweep_root={sweep_root}: no {GRID_FILE}; not a sweep '
                    'root (run experiments.sweep first).')
  with open(path) as f:
    data = json.load(f)
  return Grid(data['grid'], data['flags'])
