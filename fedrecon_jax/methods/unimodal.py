"""The unimodal FedOpt baseline: one modality (--unimodal_modality, or the
best ridge probe on train data); clients without it hold no usable sample
and the fusion attends to it alone."""

from __future__ import annotations

import numpy as np

from fedrecon_jax.config import UnimodalSettings, check
from fedrecon_jax.methods import base


def _view(params, xs, present):
  """The data hold only the chosen modality, so `present` masks the rest
  out of the fusion."""
  del params
  return xs, present


def plan(recipe, model, stage) -> base.StagePlan:
  del stage   # only the task stage
  return base.stage_plan(
      recipe.cfg, base.TASK_STAGE, groups=(base.TASK,),
      loss=base.task_loss(model, _view), model=model,
      seen_present=base.seen_present(recipe.cfg, True), view=_view)


def modalities(recipe, ds) -> np.ndarray:
  """[M] bool: only the run's one modality."""
  keep = np.zeros(len(ds.modalities), bool)
  keep[_index(recipe.knobs.unimodal_modality, recipe.cfg.seed, ds)] = True
  return keep


def check_settings(cfg, dp: bool) -> None:
  # A modality picked by a probe fitted on all clients' pooled training
  # data is a release DP does not cover.
  check(not dp or cfg.unimodal_modality != 'best', 'unimodal_modality',
        cfg.unimodal_modality,
        "a modality's name under DP (--dp_clip > 0): 'best' fits a probe "
        "on the clients' pooled training data, outside the guarantee")


def _index(modality: str, run_seed: int, ds) -> int:
  if modality != 'best':
    if modality not in ds.modalities:
      raise ValueError(f'--unimodal_modality={modality!r} is not '
                       f"one of {ds.modalities} or 'best'.")
    return ds.modalities.index(modality)
  # 'best': a ridge probe per modality on a held-out fifth of the train split.
  n = len(ds.train.y)
  seed = np.random.SeedSequence([run_seed, 2]).generate_state(1)[0]
  perm = np.random.default_rng(int(seed)).permutation(n)
  tr, va = perm[: 4 * n // 5], perm[4 * n // 5:]
  y = ds.train.y
  scores = [ridge_probe_accuracy(x[tr], y[tr], x[va], y[va], ds.num_classes)
            for x in ds.train.xs]
  return int(np.argmax(scores))


def ridge_probe_accuracy(x_train, y_train, x_val, y_val, num_classes: int,
                         l2: float = 1.0) -> float:
  """Accuracy of a closed-form ridge classifier (picks the best modality)."""
  a = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
  v = np.asarray(x_val, np.float64).reshape(len(x_val), -1)
  a = np.concatenate([a, np.ones((len(a), 1))], 1)
  v = np.concatenate([v, np.ones((len(v), 1))], 1)
  targets = np.eye(num_classes)[y_train]
  if a.shape[1] <= a.shape[0]:
    w = np.linalg.solve(a.T @ a + l2 * np.eye(a.shape[1]), a.T @ targets)
  else:  # dual form for wide inputs (images)
    w = a.T @ np.linalg.solve(a @ a.T + l2 * np.eye(len(a)), targets)
  return float(np.mean(np.asarray(y_val) == (v @ w).argmax(1)))


METHODS = (base.Method('unimodal', plan, settings=UnimodalSettings,
                       modalities=modalities, check=check_settings,
                       order=11),)
