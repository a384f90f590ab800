r"""Privacy against utility: FedRecon under client-level DP-FedAvg.

  python -m experiments.privacy_utility --root=workdirs/privacy_utility \
      --noise_multipliers=0,0.3,1,3 --seeds=0,1,2 --runs_per_program=3

Trains FedRecon on uci_multifeature at each --noise_multipliers level z
(DP-FedAvg in both stages, clip --dp_clip; z = 0 clips without noise, which
separates what clipping costs from what noise costs) x --seeds, the same
schedule without DP, and the C = inf, z = 0 control (--control), as sweeps
(fedrecon_jax.sweep: cells that differ only in z and seed share one
program, --runs_per_program of them trained at a time on the runs axis)
under <root>/dp, <root>/no_dp and <root>/control. Each trained generator
is then scored (experiments.paper.table2_scoring: coherence judged by probes
trained once on real data per seed, cached in <root>/probes), and
<out>.md, <out>.json and <out>.png get the final macro-F1 and
reconstruction coherence against the final epsilon (dp-accounting's PLD
accountant of Poisson cohorts by default, both stages composed; the table
also gives epsilon at delta = 1e-5 and 1/K^1.1), mean ± std over seeds,
with the commit and command in the header.

The cross-device page (issue 37: K = 300, expected cohort 50; one run of
it took 3.4 min on 2 shared CPU cores, so 7 levels x 3 seeds is ~70 min
plus scoring):

  python -m experiments.privacy_utility --root=workdirs/pu_cross_device \
      --out=experiments/results/privacy_utility_cross_device_cpu \
      --num_clients=300 --min_client_size=2 --clients_per_round=50 \
      --dp_delta=1e-5 --noise_multipliers=0,0.5,1,2,4 --seeds=0,1,2

SETTINGS are the schedule's defaults (flags given on the command line win).
Re-running skips finished and scored cells.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time

from absl import app
from absl import flags
import matplotlib
matplotlib.use('Agg')  # files only; no display on servers
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import matplotlib.ticker  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.paper import provenance
from experiments import config_flags
from fedrecon_jax import grid as grid_lib
from fedrecon_jax.data import loader
from fedrecon_jax import recipe
from fedrecon_jax.config import Config

# The schedule's defaults where Config's are not this experiment's.
# 100 clients, 10 a round: a sampling rate of 0.1 (at Config's 20 clients
# and 10 a round, 0.5, epsilon is several times larger at every z). Networks
# of width 64: fewer params for the same noise per entry. The generator
# stage as table2_tuning found for images (client Adam 3e-3, 5 local
# epochs), 50 rounds: without DP its one-input coherence reaches ~70% on
# uci_multifeature (SGD-momentum at 20 rounds and 2 epochs stayed at chance,
# which made the coherence axis meaningless).
SETTINGS = {'dataset': 'uci_multifeature', 'method': 'fedrecon',
            'num_clients': 100, 'clients_per_round': 10, 'gen_rounds': 50,
            'rounds': 20, 'local_epochs': 5, 'gen_width': 64, 'map_width': 64,
            'gen_optimizer': 'adam', 'gen_lr': 3e-3, 'dp_clip': 1.0,
            'eval_every': 10,
            # The convention Opacus, TFF and most papers report (issue 37):
            # Poisson cohorts, add/remove, PLD. The page before 2026-12-06
            # used fixed cohorts under replace-one with RDP.
            'client_sampling': 'poisson', 'dp_accountant': 'pld'}
VARIANT = 'fedrecon'
# Flags that mean something only under DP (a run without DP refuses some):
# the no-DP cells leave them out.
_DP_ONLY = ('dp_clip_lr', 'dp_target_quantile', 'dp_clip_count_stddev',
            'dp_denominator', 'dp_group_count_multiplier')
# Set by this script per cell; every other training flag passes through.
_NOT_PASSED = ('workdir', 'seed', 'dp_noise_multiplier')
# The page's metrics: name -> (label, how it is read from a cell's
# summary.json and its table2.json row).
METRICS = {
    'f1_macro': ('macro-F1', lambda s, row: s['f1_macro']),
    'coherence_single': ('coherence, one input (n <- m)',
                         lambda s, row: np.mean(row['coherence_single_mean'])),
    'coherence_loo': ('coherence, all others (n <- rest)',
                      lambda s, row: np.mean(row['coherence_loo'])),
}


# Issue 37's bar: macro-F1 within TARGET_F1_GAP of no DP at an epsilon of at
# most TARGET_EPSILON (at a delta of at most 1/K).
TARGET_EPSILON = 8.0
TARGET_F1_GAP = 0.05


def _clip_text(s: dict) -> str:
  """The page's words for the clip: fixed, or adaptive (dp.next_clip)."""
  if not s.get('dp_clip_lr'):
    return f'clip C = {s["dp_clip"]}'
  return (f'an adaptive clip from C = {s["dp_clip"]} (Andrew et al. 2021: '
          f'target quantile {s["dp_target_quantile"]:g}, clip learning rate '
          f'{s["dp_clip_lr"]:g}, count noise std '
          f'{s["dp_clip_count_stddev"]:g}, accounted)')


def _denominator_text(s: dict) -> str:
  """The page's words for --dp_denominator (dp.py)."""
  if s.get('dp_denominator', 'fixed') == 'fixed':
    return 'the fixed denominator (the expected cohort on every group)'
  return ('per-group denominators (each group divided by the clients that '
          'trained it, counted with noise '
          f'{s["dp_group_count_multiplier"]:g} times its sensitivity, '
          'accounted)')


def grids(fixed: dict, noise_multipliers, seeds,
          control: bool = True) -> dict[str, grid_lib.Grid]:
  """{'no_dp': seed, 'dp': z x seed, 'control': seed} over the same fixed
  flags. The control is DP-FedAvg with C = inf and z = 0: FedAvg with
  uniform client weights and DP's denominators (--dp_denominator: noised
  trainer counts per group, or the cohort on every group), neither clipped
  nor noised, so the page separates what those cost (against no DP) from
  what clipping costs (z = 0) and what noise costs (z > 0)."""
  no_dp = {k: v for k, v in fixed.items() if k not in _DP_ONLY}
  out = {'no_dp': grid_lib.Grid({'seed': list(seeds)},
                                {**no_dp, 'dp_clip': 0.0}),
         'dp': grid_lib.Grid({'dp_noise_multiplier': list(noise_multipliers),
                              'seed': list(seeds)}, fixed)}
  if control:
    out['control'] = grid_lib.Grid(
        {'seed': list(seeds)}, {**fixed, 'dp_clip': float('inf'),
                                'dp_noise_multiplier': 0.0, 'dp_clip_lr': 0.0})
  return out


def kind(row: dict) -> str:
  """'no_dp', 'control' (C = inf, z = 0), 'clip_only' (z = 0) or 'dp'."""
  if row['noise_multiplier'] is None:
    return 'no_dp'
  if row['dp_clip'] == float('inf'):
    return 'control'
  return 'clip_only' if row['noise_multiplier'] == 0 else 'dp'


def train_and_score(root: str, grids_: dict, *, runs_per_program,
                    probe_steps: int) -> list[str]:
  """Trains every unfinished cell (a sweep per grid), then scores every
  unscored one. Returns the cells that failed."""
  # pylint: disable=g-import-not-at-top
  from experiments.paper import table2_scoring
  from fedrecon_jax import sweep, workdir
  failed = []
  for name, grid in grids_.items():
    sweep_root = os.path.join(root, name)
    failed += sweep.run_sweep(grid, sweep_root,
                              runs_per_program=runs_per_program)
    for cell in grid.cells():
      cfg = grid.config(cell, sweep_root)
      scored = table2_scoring.read_scored(cfg.workdir, VARIANT).scores
      if workdir.is_finished(cfg) and scored is None:
        # score fits the probes from the cell's seed: one cache per seed.
        table2_scoring.score(cfg, VARIANT,
                             os.path.join(root, 'probes', f'seed={cfg.seed}'),
                             probe_steps=probe_steps, started=time.time())
  return failed


def _epsilons_at(cfg) -> dict[str, float]:
  """The run's final epsilon at delta = 1e-5 and at 1/K^1.1 (keys as
  printed), whichever delta it logged: a page can then be read in both
  conventions. inf without DP or noise."""
  # pylint: disable=g-import-not-at-top
  from fedrecon_jax import privacy
  k = cfg.num_clients
  out = {}
  for delta in (1e-5, privacy.default_delta(k)):
    out[f'{delta:.2g}'] = (privacy.epsilon(
        privacy.schedule(recipe.of(cfg), k), delta,
        accountant=cfg.dp_accountant) if recipe.of(cfg).dp else float('inf'))
  return out


def _mean_std(values) -> dict:
  return {'mean': float(np.mean(values)), 'std': float(np.std(values)),
          'values': [float(v) for v in values]}


def collect(root: str, grids_: dict) -> list[dict]:
  """One row per level (no DP first, then each z): epsilon, delta, and each
  METRICS entry's mean, std and per-seed values over the scored seeds."""
  # pylint: disable=g-import-not-at-top
  from experiments.paper import table2_scoring
  levels = {}
  for name, grid in grids_.items():
    for cell in grid.cells():
      cfg = grid.config(cell, os.path.join(root, name))
      scored = table2_scoring.read_scored(cfg.workdir, VARIANT)
      z = cfg.dp_noise_multiplier if recipe.of(cfg).dp else None
      level = levels.setdefault((z, cfg.dp_clip), {'noise_multiplier': z,
                                    'dp_clip': cfg.dp_clip or None,
                                    'seeds': [], 'diverged': [], 'cells': []})
      if scored.scores is None or scored.summary is None:
        continue
      row = scored.scores[VARIANT]
      if 'diverged_at_round' in row:
        level['diverged'].append(cfg.seed)
        continue
      level['seeds'].append(cfg.seed)
      level['epsilon'] = scored.summary.get('epsilon', float('inf'))
      level['delta'] = scored.summary.get('dp_delta')
      level['epsilon_at'] = _epsilons_at(cfg)
      level['cells'].append({k: fn(scored.summary, row)
                             for k, (_, fn) in METRICS.items()}
                            | {'train_seconds': scored.summary['wall_seconds']})
  rows = []
  for level in levels.values():
    cells = level.pop('cells')
    rows.append({**level, **{k: _mean_std([c[k] for c in cells])
                             for k in (*METRICS, 'train_seconds')
                             if cells}})
  return rows


def operating_points(rows: list[dict]) -> list[str]:
  """One line per delta in the rows' `epsilon_at`: the noised level of best
  macro-F1 among those with epsilon <= TARGET_EPSILON at that delta, its gap
  to no DP, and whether it is within TARGET_F1_GAP."""
  base = next((r for r in rows if kind(r) == 'no_dp' and 'f1_macro' in r),
              None)
  noised = [r for r in rows if kind(r) == 'dp' and 'f1_macro' in r]
  if base is None or not noised:
    return []
  f1 = base['f1_macro']['mean']
  lines = []
  for delta in noised[0]['epsilon_at']:
    ok = [r for r in noised if r['epsilon_at'][delta] <= TARGET_EPSILON]
    head = f'- At δ = {delta}, ε ≤ {TARGET_EPSILON:g}: '
    if not ok:
      lines.append(head + 'no level reaches it.')
      continue
    best = max(ok, key=lambda r: r['f1_macro']['mean'])
    gap = f1 - best['f1_macro']['mean']
    verdict = ('within' if gap <= TARGET_F1_GAP else 'not within')
    lines.append(
        head + f'best z = {best["noise_multiplier"]:g} '
        f'(ε {best["epsilon_at"][delta]:.3g}), macro-F1 '
        f'{_fmt(best["f1_macro"])}, {100 * gap:.1f} points below no DP '
        f'({f1:.3f}): {verdict} {100 * TARGET_F1_GAP:g} points.')
  return lines


def _fmt(x: dict) -> str:
  return f'{x["mean"]:.3f} ± {x["std"]:.3f}' if x else 'n/a'


def figure(rows: list[dict], path: str, chance: float) -> None:
  """Each METRICS entry against epsilon (log axis); no DP as a band, chance
  (1 / classes) and TARGET_EPSILON as lines."""
  fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 3.4))
  dp_rows = sorted((r for r in rows if kind(r) == 'dp'
                    and 'f1_macro' in r), key=lambda r: r['epsilon'])
  # Epsilon is infinite without noise: no DP, the control and clipping
  # alone are bands.
  bands = {'no_dp': ('--', 'no DP (ε = ∞)'),
           'control': ('-.', 'C = ∞, z = 0 (uniform weights, / D)'),
           'clip_only': (':', 'clip only, z = 0')}
  for ax, (key, (label, _)) in zip(axes, METRICS.items()):
    eps = [r['epsilon'] for r in dp_rows]
    ax.errorbar(eps, [r[key]['mean'] for r in dp_rows],
                yerr=[r[key]['std'] for r in dp_rows], marker='o',
                capsize=3, label='DP-FedAvg')
    for r in dp_rows:
      ax.annotate(f'z={r["noise_multiplier"]:g}', (r['epsilon'],
                                                   r[key]['mean']),
                  textcoords='offset points', xytext=(4, 4), fontsize=8)
    for r in rows:
      if kind(r) in bands and key in r:
        m, s = r[key]['mean'], r[key]['std']
        ls, name = bands[kind(r)]
        ax.axhline(m, color='k', ls=ls, lw=1, label=name)
        ax.axhspan(m - s, m + s, color='k', alpha=0.1)
    ax.axhline(chance, color='tab:red', ls=':', lw=1,
               label=f'chance (1/{round(1 / chance)})')
    ax.axvline(TARGET_EPSILON, color='tab:gray', lw=0.8,
               label=f'ε = {TARGET_EPSILON:g}')
    ax.set_xscale('log')
    # Labels on the epsilons drawn only: a log axis under two decades
    # otherwise labels its minor ticks on top of each other.
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks([r['epsilon'] for r in dp_rows],
                  [f'{r["epsilon"]:.3g}' for r in dp_rows])
    ax.set_ylabel(label)
    ax.set_xlabel(f'final ε at δ = {dp_rows[0]["delta"]:.2g}' if dp_rows
                  else 'final ε')
    ax.set_title(label, fontsize=10)
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _sampling_text(s: dict) -> str:
  if s.get('client_sampling') == 'poisson':
    return (f'each client in a round with probability '
            f'{s["clients_per_round"]}/{s["num_clients"]} (Poisson; '
            'add/remove neighbours), ')
  return (f'{s["clients_per_round"]} a round without replacement '
          '(replace-one neighbours), ')


def write_page(rows: list[dict], out: str, meta: dict) -> str:
  """<out>.md, <out>.json and <out>.png; returns the .md path."""
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump({**meta, 'rows': rows}, f, indent=1)
  figure(rows, out + '.png', meta['chance'])
  s = meta['settings']
  lines = [
      '# FedRecon under client-level DP-FedAvg: privacy against utility', '',
      f'`{meta["command"]}` at commit {meta["commit"]}, '
      f'{meta["started"]} to {meta["finished"]} UTC, '
      f'{meta["wall_seconds"] / 60:.1f} min wall on {meta["machine"]}.', '',
      f'{s["dataset"]}, {s["method"]}, {s["num_clients"]} clients '
      f'(alpha {s["alpha"]}, missing rate {s["missing_rate"]}), '
      + _sampling_text(s) +
      f'{s["gen_rounds"]} generator + {s["rounds"]} task rounds; DP-FedAvg '
      f'(McMahan et al. 2018) in both stages with {_clip_text(s)} '
      f'and {_denominator_text(s)}; epsilon from dp-accounting\'s '
      f'{s.get("dp_accountant", "rdp").upper()} accountant '
      'at the delta shown, both stages composed. Coherence: the probes '
      'trained on real data judge reconstructions of the test set '
      '(table2_scoring); mean ± std over seeds.', '',
      f'![privacy-utility]({os.path.basename(out)}.png)', '',
      f'Noise on the mean update: std z C / D per coordinate, D = '
      f'{s["clients_per_round"]} (the expected cohort; with per-group '
      'denominators a group divides by its trainers, so its noise is '
      f'larger by D over their number); chance is {meta["chance"]:.2g}.',
      '',
      f'Issue 37\'s bar, macro-F1 within {100 * TARGET_F1_GAP:g} points of no '
      f'DP at ε ≤ {TARGET_EPSILON:g}:', '', *operating_points(rows), '',
      '| noise z | z C / D | final ε | δ | ε at 1e-5 / 1/K^1.1 | seeds | '
      + ' | '.join(
          label for label, _ in METRICS.values()) + ' | train s per run |',
      '|---' * (len(METRICS) + 7) + '|']
  for r in rows:
    z = {'no_dp': 'no DP', 'control': '0 (C = ∞: no clip, no noise)',
         'clip_only': '0 (clip only)'}.get(kind(r))
    z = z or f'{r["noise_multiplier"]:g}'
    eps = r.get('epsilon', float('nan'))
    delta = f'{r["delta"]:.2g}' if r.get('delta') else '-'
    seeds = ','.join(map(str, r['seeds'])) + (
        f' ({len(r["diverged"])} diverged)' if r['diverged'] else '')
    cols = [_fmt(r.get(k)) for k in (*METRICS, 'train_seconds')]
    both = ' / '.join(f'{v:.3g}' for v in r.get('epsilon_at', {}).values())
    sigma = (r['noise_multiplier'] * r['dp_clip'] / s['clients_per_round']
             if kind(r) == 'dp' else 0)
    lines.append(f'| {z} | {sigma:.3g} | {eps:.3g} | {delta} | {both or "-"} '
                 f'| {seeds} | '
                 + ' | '.join(cols) + ' |')
  with open(out + '.md', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  return out + '.md'


def _fixed_flags() -> dict:
  """SETTINGS, then every training flag given on the command line."""
  return {**SETTINGS, **config_flags.given(exclude=_NOT_PASSED)}


def main(argv):
  config_flags.start(argv)
  fl = flags.FLAGS
  started = datetime.datetime.now(datetime.timezone.utc)
  fixed = _fixed_flags()
  try:
    grids_ = grids(fixed, [float(z) for z in fl.noise_multipliers],
                   [int(s) for s in fl.seeds], fl.control)
    failed = train_and_score(fl.root, grids_,
                             runs_per_program=fl.runs_per_program,
                             probe_steps=fl.probe_steps)
  except (ValueError, grid_lib.GridError) as e:
    sys.exit(f'error: {e}')
  finished = datetime.datetime.now(datetime.timezone.utc)
  meta = {'commit': provenance.commit(),
          'command': provenance.command('experiments.privacy_utility'),
          'started': started.strftime('%Y-%m-%d %H:%M'),
          'finished': finished.strftime('%Y-%m-%d %H:%M'),
          'wall_seconds': (finished - started).total_seconds(),
          'machine': fl.machine,
          'chance': 1 / loader.builder(
              fixed['dataset'], data_dir=fixed.get('data_dir') or None,
              manual_dir=fixed.get('manual_dir') or None).NUM_CLASSES,
          'settings': {**Config(workdir='-', **fixed).to_dict(),
                       'workdir': fl.root}}
  page = write_page(collect(fl.root, grids_), fl.out, meta)
  print(f'privacy_utility: {page}', flush=True)
  if failed:
    sys.exit(f'error: {len(failed)} cell(s) failed: {", ".join(failed)}')


def define_flags() -> None:
  flags.DEFINE_string('root', 'workdirs/privacy_utility',
                      'Folder of the runs (dp/, no_dp/) and probes/.')
  flags.DEFINE_list('noise_multipliers', ['0', '0.3', '1', '3'],
                    'DP noise multipliers z, one level each.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of every level.')
  flags.DEFINE_bool('control', True, 'Also train the C = inf, z = 0 control '
                    '(uniform weights and the denominators alone).')
  flags.DEFINE_string('runs_per_program', '3', 'Cells trained at a time as '
                      'one program (a runs axis); see experiments.sweep.')
  flags.DEFINE_integer('probe_steps', 1500,
                       'Training steps of each coherence probe.')
  flags.DEFINE_string('out', 'experiments/results/privacy_utility_cpu',
                      'Results path without extension (.md, .json, .png).')
  flags.DEFINE_string('machine', 'this machine',
                      'What ran it, for the page header.')
  config_flags.define_flags(exclude=_NOT_PASSED,
                           help_prefix='Passed to every run: ')


if __name__ == '__main__':
  define_flags()
  app.run(main)
