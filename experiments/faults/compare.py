"""Every file a stormed run writes, compared with an uninterrupted run's.

Per workdir: metrics.jsonl (every round once, no torn line), summary.json,
config.json, the TensorBoard scalars as TensorBoard reads them back
(tb_events.read_scalars: every step once) and the checkpoints (every step
both keep, each array bitwise, the meta item). Values are compared as
written, with two things left out because they differ between any two
runs: wall-clock timings (keys and tags ending in 'seconds': metrics'
`seconds` / `compile_seconds`, summary's `wall_seconds`) and, in each
copy of the config (config.json, summary.json, checkpoint meta), where
the run was launched (`workdir`; `coordinator_address`, a free port per
start).
"""

from __future__ import annotations

import collections
import functools
import json
import os

from fedrecon_jax import tb_events

_TIMING = 'seconds'
# Where a run was launched: its path (a sweep cell's settings are in the
# other fields too) and process 0's free port.
_LAUNCH = ('workdir', 'coordinator_address')
FILES = ('metrics', 'summary', 'config', 'tensorboard', 'checkpoints')


def _untimed(record: dict) -> dict:
  return {k: v for k, v in record.items() if not k.endswith(_TIMING)}


def _config(cfg: dict) -> dict:
  return {k: v for k, v in cfg.items() if k not in _LAUNCH}


def _json(workdir: str, name: str):
  try:
    with open(os.path.join(workdir, name)) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    return f'unreadable: {type(e).__name__}'


def _dict_differences(what: str, got, want) -> list[str]:
  if not isinstance(got, dict) or not isinstance(want, dict):
    return [] if got == want else [f'{what}: {got!r:.80} != {want!r:.80}']
  # json floats round-trip exactly: equal text is equal bits.
  return [f'{what} {k}: {got.get(k)!r:.80} != {want.get(k)!r:.80}'
          for k in sorted(set(got) | set(want))
          if json.dumps(got.get(k), sort_keys=True)
          != json.dumps(want.get(k), sort_keys=True)]


def _lines(workdir: str) -> list[dict | None]:
  """metrics.jsonl line by line, untimed; None for a line that does not
  parse (a torn line left behind)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(_untimed(json.loads(line)))
      except json.JSONDecodeError:
        out.append(None)
  return out


def metrics_differences(workdir: str, reference: str) -> dict:
  """rounds lost / duplicated / extra, torn lines and values differing
  between two workdirs' metrics.jsonl."""
  got, want = _lines(workdir), _lines(reference)
  torn = sum(r is None for r in got)
  got = [r for r in got if r is not None]
  rounds = [r['round'] for r in got]
  by_round = {r['round']: r for r in got}
  differing = []
  for w in want:
    if w['round'] in by_round:
      differing += _dict_differences(f'round {w["round"]}',
                                     by_round[w['round']], w)
  wanted = {w['round'] for w in want}
  return {'lost': sorted(wanted - set(rounds)),
          'duplicated': len(rounds) - len(set(rounds)), 'torn_lines': torn,
          'extra': sorted(set(rounds) - wanted), 'differing': differing}


def summary_differences(workdir: str, reference: str) -> list[str]:
  got, want = (_json(d, 'summary.json') for d in (workdir, reference))
  if isinstance(got, dict) and isinstance(want, dict):
    got, want = ({**_untimed(s), 'config': _config(s.get('config', {}))}
                 for s in (got, want))
  return _dict_differences('summary.json', got, want)


def config_differences(workdir: str, reference: str) -> list[str]:
  got, want = (_json(d, 'config.json') for d in (workdir, reference))
  if isinstance(got, dict) and isinstance(want, dict):
    got, want = _config(got), _config(want)
  return _dict_differences('config.json', got, want)


def tensorboard_differences(workdir: str, reference: str) -> list[str]:
  """(tag, step)s missing, extra or shown more than once, and values not
  bitwise equal (both are float32 read into Python floats)."""
  def scalars(d):
    return {k: v for k, v in tb_events.read_scalars(d).items()
            if not k[0].endswith(_TIMING)}
  got, want = scalars(workdir), scalars(reference)
  out = [f'tensorboard {k}: {got.get(k)} != {want.get(k)}'
         for k in sorted(set(got) | set(want)) if got.get(k) != want.get(k)]
  return out


def _steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if (
      os.path.isdir(d)) else []


def _read_checkpoint(workdir: str, step: int):
  """(state arrays as numpy by path, meta without timings and launch)."""
  # pylint: disable=g-import-not-at-top
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  path = os.path.join(workdir, 'checkpoints', str(step))
  item = os.path.join(path, 'state')
  ckptr = ocp.StandardCheckpointer()
  # Onto this process's device, whatever mesh saved it (a 2-process run's
  # spans devices this process does not have).
  here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  state = ckptr.restore(item, jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
      ckptr.metadata(item).item_metadata))
  with open(os.path.join(path, 'meta', 'metadata')) as f:
    meta = json.load(f)
  meta['config'] = _config(meta['config'])
  meta['metrics'] = [_untimed(r) for r in meta['metrics']]
  leaves = jax.tree_util.tree_leaves_with_path(state)
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in leaves}, meta


@functools.lru_cache(maxsize=None)
def _read_reference(reference: str, step: int):
  # Every pass is compared with the same reference: read it once.
  return _read_checkpoint(reference, step)


def checkpoint_differences(workdir: str, reference: str) -> list[str]:
  """The reference's final step missing, or any step both keep differing
  (every array bitwise, the meta item). The steps kept may differ: a
  SIGTERM saves its round off the schedule, and a kill between a save and
  orbax's removal of the oldest step leaves one more (`extra_steps`)."""
  final = _steps(reference)[-1]
  if final not in _steps(workdir):
    return [f'final step {final} missing (kept {_steps(workdir)})']
  out = []
  for step in sorted(set(_steps(workdir)) & set(_steps(reference))):
    got, got_meta = _read_checkpoint(workdir, step)
    want, want_meta = _read_reference(reference, step)
    out += [f'checkpoint {step} {k}: differs'
            for k in sorted(set(got) | set(want))
            if k not in got or k not in want or got[k].dtype != want[k].dtype
            or got[k].tobytes() != want[k].tobytes()]
    out += _dict_differences(f'checkpoint {step} meta', got_meta, want_meta)
  return out


def unreadable_checkpoints(workdir: str) -> list[str]:
  """Unfinished saves or unreadable steps left in checkpoints/ (each must
  have been moved to checkpoints_corrupt/)."""
  d = os.path.join(workdir, 'checkpoints')
  out = [n for n in sorted(os.listdir(d)) if not n.isdigit()
         and n != 'descriptor'] if os.path.isdir(d) else []
  for step in _steps(workdir):
    try:
      _read_checkpoint(workdir, step)
    except Exception as e:  # pylint: disable=broad-except
      out.append(f'{step}: {type(e).__name__}: {str(e)[:200]}')
  return out


def compare(pairs: list[tuple[str, str]]) -> dict:
  """Totals over (stormed workdir, reference workdir) pairs: workdirs,
  rounds lost / duplicated, torn lines, values differing by file,
  unreadable checkpoints left, saves quarantined, steps kept off the
  schedule, and the first problems as readable lines."""
  out = collections.Counter({k: 0 for k in (
      'workdirs', 'rounds_lost', 'rounds_duplicated', 'torn_lines',
      'unreadable_left', 'extra_steps_kept', 'quarantined')})
  differing = collections.Counter({f: 0 for f in FILES})
  problems = []
  for mine, ref in pairs:
    name = os.path.basename(mine)
    out['workdirs'] += 1
    m = metrics_differences(mine, ref)
    by_file = {'metrics': m['differing'],
               'summary': summary_differences(mine, ref),
               'config': config_differences(mine, ref),
               'tensorboard': tensorboard_differences(mine, ref),
               'checkpoints': checkpoint_differences(mine, ref)}
    bad = unreadable_checkpoints(mine)
    out['rounds_lost'] += len(m['lost'])
    out['rounds_duplicated'] += m['duplicated'] + len(m['extra'])
    out['torn_lines'] += m['torn_lines']
    out['unreadable_left'] += len(bad)
    out['extra_steps_kept'] += len(set(_steps(mine)) - set(_steps(ref)))
    corrupt = os.path.join(mine, 'checkpoints_corrupt')
    out['quarantined'] += len(os.listdir(corrupt)) if os.path.isdir(
        corrupt) else 0
    for f, items in by_file.items():
      differing[f] += len(items)
    for what, items in (('lost rounds', m['lost']), ('extra', m['extra']),
                        ('unreadable', bad), *by_file.items()):
      if items:
        problems.append(f'{name}: {what}: {items[:5]}')
    if m['duplicated'] or m['torn_lines']:
      problems.append(f'{name}: {m["duplicated"]} duplicated rounds, '
                      f'{m["torn_lines"]} torn lines')
  return {**out, 'values_differing': dict(differing), 'problems': problems}


def clean(result: dict) -> bool:
  """Nothing lost, duplicated, torn, changed or left unreadable."""
  return not (result['rounds_lost'] or result['rounds_duplicated']
              or result['torn_lines'] or result['unreadable_left']
              or sum(result['values_differing'].values()))
