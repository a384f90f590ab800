"""The storm's page: every part's JSON in a folder, added up.

Each part (storm.run_part, one seed) is committed as it finishes; the page
is rewritten from all of them, so a storm of any size runs in parts.
"""

from __future__ import annotations

import collections
import glob
import json
import os

from experiments.faults import compare, kinds

# The bar: effective faults of each kind, summed over the parts.
GOAL = 100
_COUNTS = ('workdirs', 'rounds_lost', 'rounds_duplicated', 'torn_lines',
           'unreadable_left', 'quarantined', 'extra_steps_kept')


def part_path(folder: str, seed: int) -> str:
  return os.path.join(folder, f'part-seed{seed}.json')


def write_part(folder: str, result: dict) -> str:
  os.makedirs(folder, exist_ok=True)
  path = part_path(folder, result['seed'])
  with open(path, 'w') as f:
    json.dump(result, f, indent=1)
  return path


def read_parts(folder: str) -> list[dict]:
  parts = []
  for path in sorted(glob.glob(os.path.join(folder, 'part-seed*.json'))):
    with open(path) as f:
      parts.append(json.load(f))
  return sorted(parts, key=lambda p: p['seed'])


def add_up(parts: list[dict]) -> dict:
  paths = {k: collections.Counter() for k in kinds.KINDS}
  seconds, counts = collections.Counter(), collections.Counter()
  differing = collections.Counter({f: 0 for f in compare.FILES})
  problems = []
  for p in parts:
    for k, v in p.get('faults', {}).items():
      paths[k].update(v)
    seconds.update(p.get('seconds', {}))
    counts.update({k: p.get(k, 0) for k in _COUNTS})
    differing.update(p.get('values_differing', {}))
    # 'fixed' is added to a part's JSON by hand once a fix has landed: the
    # part's result stays as it was measured.
    fixed = f' (fixed since: {p["fixed"]})' if p.get('fixed') else ''
    problems += [f'seed {p["seed"]}: {x}{fixed}'
                 for x in p.get('problems', [])]
  effective = {k: sum(n for path, n in paths[k].items()
                      if path in kinds.KINDS[k][2]) for k in kinds.KINDS}
  return {'paths': paths, 'effective': effective, 'seconds': seconds,
          'counts': counts, 'differing': differing, 'problems': problems,
          'wall_seconds': sum(p['wall_seconds'] for p in parts),
          'overhead_seconds': sum(p.get('overhead_seconds', 0)
                                  for p in parts)}


def since_last_fix(parts: list[dict]) -> list[str]:
  """The goal counted again over the parts after the last one a fix was
  noted on (they ran with every fix in), so a reader need not trust it."""
  fixed = [p['seed'] for p in parts if p.get('fixed')]
  if not fixed:
    return []
  after = [p for p in parts if p['seed'] > max(fixed)]
  if not after:
    return ['No part has run since the last fix.']
  total = add_up(after)
  least = min(total['effective'].values())
  clean = not total['problems'] and not any(total['differing'].values()) and (
      not any(total['counts'][k] for k in ('rounds_lost', 'rounds_duplicated',
                                           'torn_lines', 'unreadable_left')))
  return [f'Since the last fix (parts seeds {after[0]["seed"]}-'
          f'{after[-1]["seed"]}, from {after[0]["commit"]}): at least '
          f'{least} counted faults of each kind ('
          + ('goal reached' if least >= GOAL else f'goal {GOAL}') + '), '
          + ('nothing lost, differing or unreadable.' if clean
             else 'with problems: see below.')]


def _kind_rows(total: dict) -> list[str]:
  rows = ['| kind | counted | not counted (path: n) | s per counted fault |',
          '|---|---|---|---|']
  for k, (_, _, counted) in kinds.KINDS.items():
    n = total['effective'][k]
    other = ', '.join(f'{p}: {c}' for p, c in sorted(total['paths'][k].items())
                      if p not in counted) or '-'
    by_path = ', '.join(f'{p}: {c}' for p, c in sorted(
        total['paths'][k].items()) if p in counted)
    per = f'{total["seconds"][k] / n:.0f}' if n else '-'
    rows.append(f'| {k} | {n}' + (f' ({by_path})' if len(counted) > 1
                                    and n else '') + f' | {other} | {per} |')
  return rows


def render(parts: list[dict]) -> str:
  total = add_up(parts)
  c, d = total['counts'], total['differing']
  short = {k: n for k, n in total['effective'].items() if n < GOAL}
  lines = [
      '# Fault storm on CPU, in seeded parts',
      '',
      'Written by `python -m experiments.fault_storm` from '
      '`experiments/results/fault_storm/part-seed*.json`, one part per '
      'seed, each committed as it finished. Each fault kind, the phase it '
      'is aimed at and which paths count: `experiments/faults/kinds.py`; '
      'what is compared with an uninterrupted run and what is left out '
      '(timings, the launch\'s workdir path and port): '
      '`experiments/faults/compare.py`. Seconds are wall time on a '
      'machine shared with other jobs (upper bounds), charged to a kind '
      'from when the storm starts aiming one of its faults (waiting for '
      'its phase, which after a kill includes the restart) until it starts '
      'aiming the next. The page before '
      '(500 faults at d0f0d3e: every fault sent counted, metrics and '
      'checkpoints compared) is in git history.',
      '',
      f'Goal: {GOAL} counted faults of each kind. ' + (
          'Reached.' if not short else 'Not reached yet: ' + ', '.join(
              f'{k} {n}' for k, n in short.items()) + '.'),
      '',
      *since_last_fix(parts),
      '',
      *_kind_rows(total),
      '',
      '| compared | |', '|---|---|',
      f'| workdirs compared | {c["workdirs"]} |',
      f'| rounds lost | {c["rounds_lost"]} |',
      f'| rounds duplicated | {c["rounds_duplicated"]} |',
      f'| torn lines left | {c["torn_lines"]} |',
      *(f'| values differing: {f} | {d[f]} |' for f in compare.FILES),
      f'| unreadable checkpoints left | {c["unreadable_left"]} |',
      f'| saves quarantined | {c["quarantined"]} |',
      f'| checkpoints kept off the schedule (not a loss) | '
      f'{c["extra_steps_kept"]} |',
      f'| references, last starts of passes, comparisons (s) | '
      f'{total["overhead_seconds"]:.0f} |',
      '',
      '| part (seed) | commit | faults a kind | counted | starts | wall min |',
      '|---|---|---|---|---|---|',
      *(f'| {p["seed"]} | {p["commit"]} | {p["per_kind"]} | '
        f'{sum(p["effective"].values())} | {p["starts"]} | '
        f'{p["wall_seconds"] / 60:.1f} |' for p in parts),
  ]
  if total['problems']:
    lines += ['', 'Problems:', '', *(f'- {p}' for p in total['problems'][:20])]
  return '\n'.join(lines) + '\n'


def write_page(folder: str, page: str) -> None:
  with open(page, 'w') as f:
    f.write(render(read_parts(folder)))
