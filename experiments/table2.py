r"""Table 2: reconstruction quality of FedRecon's generator vs the alternatives.

For each dataset, trains the generator stage (only) of FedRecon (mapping MVAE)
and of the joint-posterior generators PoE, MoE and MoPoE (`--method=
fedrecon_no_map --joint_posterior=...`), federated with the same partition and
schedule, then scores each on the test set with `fedrecon_jax.recon_metrics`:
cross-modal MSE, coherence (per-modality probes trained once on real data and
cached) and, for FedRecon, retrieval with T(n<-m) vs raw latents. FedRecon's
generator read with T = identity is the "no mapping" row.

  python -m experiments.table2 --root=workdirs/table2 \
      --datasets=uci_multifeature,polymnist_5k

Writes <root>/<dataset>/<variant>/ (an ordinary training workdir; re-running
skips scored ones, scores trained ones and resumes the others) with the scores
in its table2.json, the cached probes in <root>/<dataset>/, and for image data
<root>/<dataset>/grid_<row>.png. Variants may run in separate processes
(`--variants=poe`) sharing a root. `experiments.paper` turns the JSONs into
the results page.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from experiments import train as train_flags
from fedrecon_jax import checkpoint, data, generators, probes
from fedrecon_jax import recon_metrics
from fedrecon_jax import experiment, train, workdir
from fedrecon_jax.config import Config
from fedrecon_jax import metrics_writer
from fedrecon_jax.metrics_writer import write_json_atomic

# Variant name -> the Config fields that make it.
# FedRecon's own generator, then each joint-posterior kind of the registry.
VARIANTS = {'fedrecon': {'method': 'fedrecon'}} | {
    kind: {'method': 'fedrecon_no_map', 'joint_posterior': kind}
    for kind in generators.JOINT}
NO_MAPPING = 'fedrecon_no_T'   # fedrecon's generator read with T = identity
# Generator settings per dataset where Config's defaults (tuned on feature
# vectors) are not the references'. Flags given on the command line win.
# Images, each setting with its source:
# - beta 2.5, Adam at 1e-3: MoPoE's and MMVAE+'s PolyMNIST settings;
# - cross_decoding 'one': an unbiased estimate of the mapping and MoE
#   objectives (generator.CROSS_DECODING) at a fifth of their decodes;
# - 2 clients a round (FedMultimodal samples 10% of the clients) of 5 local
#   epochs, averaged by FedAvg (McMahan et al.): on 2 CPU cores, steps in a
#   row are what the generators lack, and a FedAdam server at
#   --gen_server_lr=0.01 moves a weight at most ~0.01 a round, a fraction of
#   what 65 local Adam steps at 1e-3 do;
# - 80 rounds, so that the four generators train in about 45 minutes on 2
#   cores (experiments/results/paper), scored every 10.
_IMAGE_SETTINGS = {'beta': 2.5, 'gen_optimizer': 'adam', 'gen_lr': 1e-3,
                   'cross_decoding': 'one', 'clients_per_round': 2,
                   'local_epochs': 5, 'server_opt': 'fedavg',
                   'gen_rounds': 80, 'checkpoint_every': 10,
                   'eval_every': 10}
DATASET_SETTINGS = {'polymnist_5k': _IMAGE_SETTINGS,
                    'polymnist_5k_small': _IMAGE_SETTINGS,
                    'polymnist': _IMAGE_SETTINGS}
RESULTS_JSON = 'table2.json'
# Generator rounds between the checkpoints the coherence curve scores.
CURVE_EVERY = 5
GRID_EXAMPLES = 6


def variant_config(dataset: str, variant: str, root: str,
                   **overrides) -> Config:
  """Generator stage only (rounds=0); checkpointed at its last round.

  Fields: Config's defaults, then DATASET_SETTINGS[dataset], then overrides.
  """
  if variant not in VARIANTS:
    raise ValueError(f'--variants: {variant!r} is not one of '
                     f'{tuple(VARIANTS)}.')
  fields = {'checkpoint_every': CURVE_EVERY,
            **DATASET_SETTINGS.get(dataset, {}), **overrides,
            **VARIANTS[variant], 'dataset': dataset, 'rounds': 0,
            'workdir': os.path.join(root, dataset, variant)}
  # The scoring reads the last round's checkpoint, the coherence curve every
  # checkpoint: keep them all.
  fields['checkpoint_every'] = fields['checkpoint_every'] or CURVE_EVERY
  fields['keep_checkpoints'] = max(
      fields.get('keep_checkpoints', 1),
      -(-fields.get('gen_rounds', Config.gen_rounds) //
        fields['checkpoint_every']) + 1)
  return Config(**fields).validate()


def _jsonable(x):
  if isinstance(x, dict):
    return {k: _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, np.generic):
    return x.item()
  return x


def run_variant(dataset: str, variant: str, root: str,
                probe_steps: int = 1500, **overrides) -> dict[str, Any]:
  """Trains (or resumes) one variant on `dataset`, then scores it.

  Returns (and writes to <workdir>/table2.json) {row: metrics} with
  `recon_metrics.table2_metrics` for the variant, plus the NO_MAPPING row for
  'fedrecon', and the run's 'zero_fill_mse' / 'mean_fill_mse' references.
  """
  # Imported here so that --help works without touching jax.
  import jax  # pylint: disable=g-import-not-at-top
  from experiments import sweep  # pylint: disable=g-import-not-at-top
  cfg = variant_config(dataset, variant, root, **overrides)
  t0 = time.time()
  scores = os.path.join(cfg.workdir, RESULTS_JSON)
  if sweep.is_finished(cfg) and os.path.exists(scores):
    with open(scores) as f:
      return json.load(f)
  if not sweep.is_finished(cfg):
    print(f'table2: training {dataset}/{variant}', flush=True)
    train.run(cfg)
  diverged = workdir.read_summary(cfg.workdir).get('diverged_at_round')
  if diverged is not None:
    # Nothing to score: the row says where training stopped.
    results = {variant: {'diverged_at_round': diverged}}
    write_json_atomic(scores, results, indent=1)
    print(f'table2: {dataset}/{variant} diverged at round {diverged}',
          flush=True)
    return results
  exp = experiment.build(cfg)
  ckpt = checkpoint.Checkpointer(cfg)
  restored = ckpt.restore_or_none(exp, cfg)
  state = restored[0] if restored is not None else None
  if state is None or int(state.round) != cfg.total_rounds:
    ckpt.close()
    raise ValueError(f'{cfg.workdir}: no checkpoint of round '
                     f'{cfg.total_rounds}; use a new --root.')
  summary = workdir.read_summary(cfg.workdir)
  # Probes are central judges trained on every real training sample, not part
  # of the federated method; cached per dataset and shared by the variants.
  ds = data.load(dataset, data_dir=cfg.data_dir or None,
                 manual_dir=cfg.manual_dir or None)
  judges = probes.cached_probes(
      os.path.join(root, dataset), ds.modalities, ds.train.xs, ds.train.y,
      ds.num_classes, key=jax.random.key(cfg.seed), steps=probe_steps)
  kinds = {variant: cfg.generator.name}
  ablation = generators.get(kinds[variant]).ablation
  if ablation is not None:
    kinds[NO_MAPPING] = ablation
  results = {'zero_fill_mse': summary['zero_fill_mse'],
             'mean_fill_mse': summary['mean_fill_mse']}
  for name, kind in kinds.items():
    metrics = recon_metrics.table2_metrics(
        kind, exp.model, state.params, exp.test_xs, exp.test_y, judges)
    results[name] = {**_jsonable(metrics),
                     'train_seconds': summary['wall_seconds'],
                     'seconds_per_round': float(np.median(
                         [t for t, _ in _round_seconds(cfg).values()]))}
    if exp.spec.kinds[0] == 'image':
      _save_grid(os.path.join(root, dataset, f'grid_{name}.png'), kind, exp,
                 state.params)
  results[variant]['curve'] = coherence_curve(cfg, exp, ckpt, judges)
  ckpt.close()
  # This call's wall time: training (if it trained), probes, scoring.
  results['seconds'] = time.time() - t0
  write_json_atomic(scores, results, indent=1)
  print(f'table2: {dataset}/{variant} done in {time.time() - t0:.0f} s',
        flush=True)
  return results


def _round_seconds(cfg: Config) -> dict[int, tuple[float, float]]:
  """Round -> (its training seconds, its compile seconds) from
  metrics.jsonl."""
  records = metrics_writer.read_metrics(
      os.path.join(cfg.workdir, metrics_writer.METRICS_FILE))
  return {r['round']: (r['seconds'], r.get('compile_seconds', 0.0))
          for r in records}


def coherence_curve(cfg: Config, exp: experiment.Experiment,
                    ckpt: checkpoint.Checkpointer, judges) -> list[dict]:
  """One-input coherence at every kept checkpoint, read back, not retrained.

  Returns [{'round', 'train_seconds' (cumulative, compile included),
  'coherence_single_mean' (mean over ordered pairs n <- m, m != n)}].
  """
  per_round = _round_seconds(cfg)
  kind = cfg.generator.name
  curve = []
  for step in sorted(ckpt.mngr.all_steps()):
    state, _ = ckpt.restore_or_none(exp, cfg, max_round=step)
    _, coh = recon_metrics.single_sources(
        recon_metrics.reconstructor(kind, exp.model, state.params),
        exp.test_xs, exp.test_y, judges)
    curve.append({
        'round': int(state.round),
        'train_seconds': sum(sum(v) for r, v in per_round.items()
                             if r <= step),
        'coherence_single_mean': float(
            recon_metrics.off_diagonal_mean(coh).mean())})
  return curve


def load_results(root: str, dataset: str) -> tuple[dict, dict]:
  """(rows, refs) of `dataset` scored so far: rows maps a row name to its
  metrics; refs holds the zero-fill / mean-fill MSE references."""
  rows, refs = {}, {}
  for variant in VARIANTS:
    path = os.path.join(root, dataset, variant, RESULTS_JSON)
    if os.path.exists(path):
      with open(path) as f:
        result = json.load(f)
      refs = {k: result[k] for k in ('zero_fill_mse', 'mean_fill_mse')
              if k in result} or refs
      rows.update({k: v for k, v in result.items() if isinstance(v, dict)})
  return rows, refs


def _save_grid(path: str, kind: str, exp: experiment.Experiment, params) -> None:
  """True test images (row 0) and their rebuilds from each single source."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  num = exp.spec.num_modalities
  # One example per class where possible (the first of each of the first
  # classes the test set holds), the same ones in every grid.
  classes = np.unique(exp.test_y)[:GRID_EXAMPLES]
  idx = [int(np.flatnonzero(exp.test_y == c)[0]) for c in classes]
  true_xs = [x[idx] for x in exp.test_xs]
  fn = recon_metrics.reconstructor(kind, exp.model, params)
  rows = []
  for m in range(num):
    present = np.arange(num) == m
    x_hats, _ = recon_metrics.reconstruct_in_chunks(fn, true_xs, present)
    rows.append([np.asarray(x) for x in x_hats])
  plt.imsave(path, recon_metrics.image_grid(true_xs, rows))


# Set per variant and dataset; every other training flag passes through.
_NOT_PASSED = ('dataset', 'method', 'joint_posterior', 'rounds', 'workdir')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  fl = flags.FLAGS
  # Only flags given explicitly, so DATASET_SETTINGS fill in the rest.
  overrides = {f.name: fl[f.name].value for f in dataclasses.fields(Config)
               if f.name not in _NOT_PASSED and fl[f.name].present}
  try:
    for dataset in fl.datasets:
      for variant in fl.variants:
        run_variant(dataset, variant, fl.root, probe_steps=fl.probe_steps,
                    **overrides)
  except ValueError as e:
    sys.exit(f'error: {e}')


def define_flags() -> None:
  flags.DEFINE_string('root', 'workdirs/table2',
                      'Folder of the runs, probes and grids.')
  flags.DEFINE_list('datasets', ['uci_multifeature', 'polymnist_5k'],
                    'Datasets to score.')
  flags.DEFINE_list('variants', list(VARIANTS),
                    f'Generators, from {tuple(VARIANTS)}.')
  flags.DEFINE_integer('probe_steps', 1500,
                       'Training steps of each coherence probe.')
  train_flags.define_flags(exclude=_NOT_PASSED,
                           help_prefix='Passed to every run: ')


if __name__ == '__main__':
  define_flags()
  app.run(main)
