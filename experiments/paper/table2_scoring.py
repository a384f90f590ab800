"""Table 2's scores of one trained generator, and reading them back.

`score` reads a generator-stage run's last checkpoint and scores it on the
test set with `recon_metrics.table2_metrics` (cross-modal MSE, coherence
judged by probes trained once on real data and cached per dataset,
retrieval), adds the one-input coherence at every kept checkpoint (the
curve) and, for images, reconstruction grids, and writes it all to the
workdir's table2.json. `read_scored` and `rows_and_refs` read those files
back for the results page. experiments.paper.table2 trains the variants and
calls `score`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import jax
import numpy as np

from fedrecon_jax import checkpoint, experiment, generators, recipe
from fedrecon_jax import metrics_writer, probes, recon_metrics, workdir
from fedrecon_jax.config import Config

RESULTS_JSON = 'table2.json'
# The probes' key, the same for every run: one set of judges per dataset.
PROBE_SEED = 0
# fold_in of a run's seed key for its sampled reads (any fixed number would
# do: it keeps them apart from the training's own keys).
SCORING_STREAM = 35
NO_MAPPING = 'fedrecon_no_T'   # fedrecon's generator read with T = identity
# The run's fill references, stored beside the rows.
REFERENCES = ('zero_fill_mse', 'mean_fill_mse')
GRID_EXAMPLES = 6


def scoring_key(cfg: Config) -> jax.Array:
  """The key of a run's sampled reads: its seed's, on a stream of its own."""
  return jax.random.fold_in(jax.random.key(cfg.seed), SCORING_STREAM)


def score(cfg: Config, variant: str, probes_dir: str, *, probe_steps: int,
          started: float,
          draws: int = recon_metrics.DRAWS) -> dict[str, Any]:
  """Scores the generator that cfg.workdir trained; writes table2.json.

  Coherence decodes sampled latents, `draws` draws (recon_metrics.
  table2_metrics), from `scoring_key(cfg)`.
  Returns {row: metrics} with `recon_metrics.table2_metrics` for `variant`
  (plus its 'curve'), the NO_MAPPING row for a mapping generator, the
  run's REFERENCES and 'seconds' since `started` (a time.time(): training,
  probes and scoring). A diverged run gets one row saying where it
  stopped. Probes and image grids go to probes_dir.
  """
  path = os.path.join(cfg.workdir, RESULTS_JSON)
  summary = workdir.read_summary(cfg.workdir)
  if summary.get('diverged_at_round') is not None:
    # Nothing to score: the row says where training stopped.
    results = {variant: {'diverged_at_round': summary['diverged_at_round'],
                         'seed': cfg.seed}}
    metrics_writer.write_json_atomic(path, results, indent=1)
    return results
  exp = experiment.build(cfg)
  ckpt = checkpoint.Checkpointer(cfg)
  restored = ckpt.restore_or_none(exp, cfg)
  state = restored[0] if restored is not None else None
  if state is None or int(state.round) != exp.recipe.total_rounds:
    ckpt.close()
    raise ValueError(f'{cfg.workdir}: no checkpoint of round '
                     f'{exp.recipe.total_rounds}; use a new --root.')
  # Probes are central judges trained on every real training sample (the
  # validation samples held out when there are any), not part of the
  # federated method; cached per dataset and shared by the variants and
  # seeds (one fixed key), so every run is judged by the same probes.
  ds = experiment.load_data(cfg)
  judges = probes.cached_probes(
      probes_dir, ds.modalities, ds.train.xs, ds.train.y, ds.num_classes,
      key=jax.random.key(PROBE_SEED), steps=probe_steps)
  per_round = round_seconds(cfg)
  kinds = {variant: exp.recipe.generator.name}
  ablation = generators.get(kinds[variant]).ablation
  if ablation is not None:
    kinds[NO_MAPPING] = ablation
  results = {k: summary[k] for k in REFERENCES}
  for name, kind in kinds.items():
    metrics = recon_metrics.table2_metrics(
        kind, exp.model, state.params, exp.test_xs, exp.test_y, judges,
        key=scoring_key(cfg), draws=draws)
    results[name] = {**_jsonable(metrics), 'seed': cfg.seed,
                     # Every round's seconds from metrics.jsonl, so a run
                     # resumed after a stop counts all its parts.
                     'train_seconds': sum(sum(v) for v in per_round.values()),
                     'seconds_per_round': float(np.median(
                         [t for t, _ in per_round.values()]))}
    if 'image' in exp.spec.kinds:
      save_grid(os.path.join(probes_dir, f'grid_{name}_seed{cfg.seed}.png'),
                kind, exp, state.params, scoring_key(cfg))
  results[variant]['curve'] = coherence_curve(cfg, exp, ckpt, judges,
                                              per_round)
  ckpt.close()
  results['seconds'] = time.time() - started
  metrics_writer.write_json_atomic(path, results, indent=1)
  return results


def round_seconds(cfg: Config) -> dict[int, tuple[float, float]]:
  """Round -> (its training seconds, its compile seconds) from
  metrics.jsonl."""
  records = metrics_writer.read_metrics(
      os.path.join(cfg.workdir, metrics_writer.METRICS_FILE))
  return {r['round']: (r['seconds'], r.get('compile_seconds', 0.0))
          for r in records}


def coherence_curve(cfg: Config, exp: experiment.Experiment,
                    ckpt: checkpoint.Checkpointer, judges,
                    per_round: dict[int, tuple[float, float]]) -> list[dict]:
  """One-input coherence at every kept checkpoint, read back, not retrained.

  Sampled latents, one draw per checkpoint (the final scores average
  several). per_round: `round_seconds(cfg)`. Returns [{'round',
  'train_seconds' (cumulative, compile included), 'coherence_single_mean'
  (mean over ordered pairs n <- m, m != n)}].
  """
  kind = recipe.of(cfg).generator.name
  curve = []
  for step in sorted(ckpt.mngr.all_steps()):
    state, _ = ckpt.restore_or_none(exp, cfg, max_round=step)
    _, coh = recon_metrics.single_sources(
        recon_metrics.reconstructor(kind, exp.model, state.params,
                                    sample=True),
        exp.test_xs, exp.test_y, judges,
        key=jax.random.fold_in(scoring_key(cfg), step),
        ranges=recon_metrics.data_ranges(exp.spec.kinds))
    curve.append({
        'round': int(state.round),
        'train_seconds': sum(sum(v) for r, v in per_round.items()
                             if r <= step),
        'coherence_single_mean': float(
            recon_metrics.off_diagonal_mean(coh).mean())})
  return curve


def save_grid(path: str, kind: str, exp: experiment.Experiment,
              params, key: jax.Array) -> None:
  """True test images (row 0) and their rebuilds from each single source,
  one draw of sampled latents (what the scores average over)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  num = exp.spec.num_modalities
  # One example per class where possible (the first of each of the first
  # classes the test set holds), the same ones in every grid.
  classes = np.unique(exp.test_y)[:GRID_EXAMPLES]
  idx = [int(np.flatnonzero(exp.test_y == c)[0]) for c in classes]
  true_xs = [x[idx] for x in exp.test_xs]
  kinds = exp.spec.kinds
  scales = [recon_metrics.picture_range(k, x) for k, x in zip(kinds, true_xs)]
  picture = lambda xs: [recon_metrics.as_picture(k, x, *r)
                        for k, x, r in zip(kinds, xs, scales)]
  fn = recon_metrics.reconstructor(kind, exp.model, params, sample=True)
  rows = []
  for m in range(num):
    present = np.arange(num) == m
    x_hats, _ = recon_metrics.reconstruct_in_chunks(
        fn, true_xs, present, key=jax.random.fold_in(key, m),
        ranges=recon_metrics.data_ranges(kinds))
    rows.append(picture(x_hats))
  plt.imsave(path, recon_metrics.image_grid(picture(true_xs), rows))


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


@dataclasses.dataclass(frozen=True)
class Scored:
  """What one variant's workdir holds for the results page."""
  variant: str
  scores: dict | None    # its table2.json; None: not scored (yet)
  summary: dict | None   # its summary.json; None: not trained (yet)


def read_scored(variant_workdir: str, variant: str) -> Scored:
  """The variant's table2.json and summary.json, each None where absent."""
  try:
    with open(os.path.join(variant_workdir, RESULTS_JSON)) as f:
      scores = json.load(f)
  except FileNotFoundError:
    scores = None
  return Scored(variant, scores, workdir.read_summary(variant_workdir))


def rows_and_refs(scored: list[Scored]) -> tuple[dict, dict]:
  """(rows, refs): rows maps a row name to its list of metrics, one per
  scored seed, in the order given; refs holds the REFERENCES (the last
  scored run's)."""
  rows, refs = {}, {}
  for s in scored:
    if s.scores is None:
      continue
    refs = {k: s.scores[k] for k in REFERENCES if k in s.scores} or refs
    for k, v in s.scores.items():
      if isinstance(v, dict):
        rows.setdefault(k, []).append(v)
  return rows, refs
