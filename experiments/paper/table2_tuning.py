r"""Table 2's settings, chosen on a validation split with one budget for all.

Every generator gets the same trials (`budget`), scored on a validation
split carved from the training data (--validation_fraction, its own fixed
key; the test set is never read):
  1. the shared grid, BETAS x LRS (KL weight x client learning rate), as one
     program (both are traced hyperparameters: the trials share the runs
     axis);
  2. at the best of those, its own knob (EXTRA_KNOB): FedRecon's L_match
     weight, every baseline's latent size (for MMVAE+ the size of w and of
     z), EXTRA_TRIALS more values.
A trial is scored by its sampled one-input coherence on the validation
split (recon_metrics, `DRAWS` draws); the best trial's settings are the
variant's. experiments.paper.table2's VARIANT_SETTINGS hold what this chose
(tests/test_table2_tuning.py checks they agree with the JSON).

  python -m experiments.paper.table2_tuning --root=workdirs/table2_tuning \
      --datasets=uci_multifeature --variants=fedrecon,poe

Writes <root>/<dataset>/<variant>/<trial>/ (ordinary workdirs; a rerun
skips scored trials) and, after each variant, --out (JSON, every trial's
settings and scores, committed as each variant finishes) and its page.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any

from absl import app
from absl import flags
import jax

from experiments.paper import provenance, table2, table2_scoring
from fedrecon_jax import metrics_writer, recipe, train, workdir

VALIDATION_FRACTION = 0.2
BETAS = (1.0, 2.5)
LRS = (1e-3, 3e-3)
# Each variant's own knob: name -> values tried beyond the shared grid's
# (where the grid's trials hold Config's or the dataset's value).
EXTRA_TRIALS = 2
LATENT_SIZES = (16, 64)    # around Config.latent_dim = 32


def extra_knob(dataset: str, variant: str) -> tuple[str, Any, tuple]:
  """(field, the grid's value, the values tried beyond it) of the
  variant's own knob: the L_match weight of a generator with mappings,
  every other one's latent size. The grid's value is the untuned one
  (table2.untuned_settings), not an earlier tuning's choice."""
  cfg = table2.variant_config(dataset, variant, '/unused', tuned=False)
  if recipe.of(cfg).generator.uses_mappings:
    return ('match_weight', cfg.match_weight,
            (cfg.match_weight / 3, cfg.match_weight * 3))
  return 'latent_dim', cfg.latent_dim, LATENT_SIZES


# Generator rounds of every trial, per dataset (the final runs train
# table2.DATASET_SETTINGS' gen_rounds; a trial stops sooner so that every
# variant's budget fits on 2 cores).
ROUNDS = {'uci_multifeature': 30, 'polymnist_5k': 40, 'av_mnist': 40}
DRAWS = 3


def _name(fields: dict) -> str:
  return ','.join(f'{k}={v:g}' for k, v in sorted(fields.items()))


def trial_config(dataset: str, variant: str, root: str, **fields):
  cfg = table2.variant_config(
      dataset, variant, root, seed=0, tuned=False,
      validation_fraction=VALIDATION_FRACTION,
      gen_rounds=ROUNDS.get(dataset, 30), **fields)
  return dataclasses.replace(cfg, workdir=os.path.join(
      root, dataset, variant, _name(fields)))


def _run_trials(cfgs: list, variant: str, probes_dir: str,
                probe_steps: int) -> list[dict]:
  """Trains the unfinished ones as one program where they share one, then
  scores each; returns one record per trial."""
  todo = [c for c in cfgs if not workdir.is_finished(c)]
  keys = {recipe.of(c).program_key for c in todo}
  t0 = time.time()
  if len(keys) == 1:
    train.run_group(todo)
  else:
    for c in todo:
      train.run(c)
  train_seconds = time.time() - t0
  out = []
  for cfg in cfgs:
    scores = table2_scoring.read_scored(cfg.workdir, variant).scores
    if scores is None:
      scores = table2_scoring.score(cfg, variant, probes_dir,
                                    probe_steps=probe_steps,
                                    started=time.time(), draws=DRAWS)
    row = scores[variant]
    out.append({'workdir': os.path.basename(cfg.workdir),
                'beta': cfg.beta, 'gen_lr': cfg.gen_lr,
                'match_weight': cfg.match_weight,
                'latent_dim': cfg.latent_dim,
                'diverged_at_round': row.get('diverged_at_round'),
                'one_input': row.get('one_input'),
                'all_others': row.get('all_others'),
                'one_input_means': row.get('posterior_mean', {}).get(
                    'one_input'),
                'train_seconds': (workdir.read_summary(cfg.workdir) or {}
                                  ).get('wall_seconds'),
                'group_seconds': train_seconds if cfg in todo else None})
  return out


def _best(trials: list[dict]) -> dict:
  ok = [t for t in trials if t['one_input'] is not None]
  if not ok:
    raise ValueError('every trial diverged')
  return max(ok, key=lambda t: t['one_input'])


def tune_variant(dataset: str, variant: str, root: str, *,
                 probe_steps: int = 1500) -> dict[str, Any]:
  """The variant's trials and choice: {'trials', 'chosen', 'knob'}."""
  probes_dir = os.path.join(root, dataset)
  knob, base, values = extra_knob(dataset, variant)
  shared = [trial_config(dataset, variant, root, beta=b, gen_lr=lr,
                         **{knob: base}) for b in BETAS for lr in LRS]
  trials = _run_trials(shared, variant, probes_dir, probe_steps)
  best = _best(trials)
  extra = [trial_config(dataset, variant, root, beta=best['beta'],
                        gen_lr=best['gen_lr'], **{knob: v}) for v in values]
  trials += _run_trials(extra, variant, probes_dir, probe_steps)
  chosen = _best(trials)
  return {'knob': knob, 'trials': trials,
          'chosen': {k: chosen[k] for k in ('beta', 'gen_lr', knob)}}


def write_page(results: dict, path_json: str, path_md: str) -> None:
  metrics_writer.write_text_atomic(path_json,
                                   json.dumps(results, indent=1) + '\n')
  lines = ['# Table 2 settings, chosen on a validation split', '',
           'Written by `python -m experiments.paper.table2_tuning` after '
           'each variant finishes; each section ends with the command, '
           'commit, machine and time of its variants\' runs.', '',
           f'Every generator gets the same budget: the {len(BETAS)} x '
           f'{len(LRS)} grid of beta {BETAS} x client learning rate {LRS} '
           f'(one program: both are traced), then {EXTRA_TRIALS} values of '
           "its own knob at the grid's best (FedRecon: the L_match weight "
           'at 1/3 and 3x its default; each baseline: the latent size '
           f'{LATENT_SIZES}, for MMVAE+ the size of w and of z). Trials '
           f'train seed 0 for the rounds below on the training data less a '
           f'{VALIDATION_FRACTION:.0%} per-class validation split (its own '
           'fixed key) and are scored on that split by sampled one-input '
           f'coherence ({DRAWS} draws). The test set is never read.', '']
  for dataset, per_variant in results.items():
    lines += [f'## {dataset} ({ROUNDS.get(dataset, 30)} rounds a trial)', '',
              '| generator | beta | lr | own knob | one input, sampled % | '
              'all others, sampled % | one input, means % | train s | '
              'chosen |', '|---|---|---|---|---|---|---|---|---|']
    for variant, res in per_variant.items():
      knob = res['knob']
      for t in res['trials']:
        mark = '**yes**' if all(t[k] == v for k, v in res['chosen'].items()
                                ) else ''
        score = lambda k, t=t: ('diverged' if t[k] is None  # pylint: disable=cell-var-from-loop
                                else f'{100 * t[k]:.1f}')
        lines.append(
            f'| {variant} | {t["beta"]:g} | {t["gen_lr"]:g} | '
            f'{knob} {t[knob]:g} | {score("one_input")} | '
            f'{score("all_others")} | {score("one_input_means")} | '
            f'{(t["train_seconds"] or 0):.0f} | {mark} |')
    lines += ['', '| generator | commit | machine | finished (UTC) | command |',
              '|---|---|---|---|---|']
    for variant, res in per_variant.items():
      run = res.get('run', {})
      lines.append(f'| {variant} | ' + ' | '.join(
          run.get(k, '-') for k in ('commit', 'machine', 'finished')) +
                   f' | `{run.get("command", "-")}` |')
    lines.append('')
  metrics_writer.write_text_atomic(path_md, '\n'.join(lines) + '\n')


def _machine() -> str:
  return f'{os.cpu_count()} CPU cores' if jax.default_backend() == 'cpu' \
      else jax.devices()[0].device_kind


def main(argv):
  del argv
  fl = flags.FLAGS
  try:
    with open(fl.out) as f:
      results = json.load(f)
  except FileNotFoundError:
    results = {}
  for dataset in fl.datasets:
    for variant in fl.variants:
      if variant not in table2.VARIANTS:
        sys.exit(f'error: --variants: {variant!r} is not one of '
                 f'{tuple(table2.VARIANTS)}.')
      res = tune_variant(dataset, variant, fl.root,
                         probe_steps=fl.probe_steps)
      res['run'] = {'commit': provenance.commit(), 'machine': _machine(),
                    'finished': time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
                    'command': provenance.command(
                        'experiments.paper.table2_tuning')}
      results.setdefault(dataset, {})[variant] = res
      write_page(results, fl.out, fl.out.replace('.json', '.md'))
      print(f'table2_tuning: {dataset}/{variant} chose {res["chosen"]}',
            flush=True)


if __name__ == '__main__':
  flags.DEFINE_string('root', 'workdirs/table2_tuning', 'Trials go here.')
  flags.DEFINE_list('datasets', ['uci_multifeature'], 'Datasets.')
  flags.DEFINE_list('variants', list(table2.VARIANTS), 'Generators.')
  flags.DEFINE_integer('probe_steps', 1500, 'Steps of each probe.')
  flags.DEFINE_string('out', 'experiments/results/paper/table2_tuning.json',
                      'The JSON (the .md page goes beside it).')
  app.run(main)
