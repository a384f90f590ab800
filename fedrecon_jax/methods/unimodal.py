"""The unimodal FedOpt baseline: one modality (--unimodal_modality, or the
best ridge probe on train data); clients without it hold no usable sample
and the fusion attends to it alone."""

from __future__ import annotations

import numpy as np

from fedrecon_jax.methods import base


def _view(params, xs, present):
  """The data hold only the chosen modality, so `present` masks the rest
  out of the fusion."""
  del params
  return xs, present


def plan(cfg, model, stage, num_clients) -> base.StagePlan:
  del stage   # only the task stage
  return base.stage_plan(
      cfg, base.TASK_STAGE, num_clients, groups=('task',),
      loss=base.task_loss(model, _view),
      weights=base.weights_fn(model, base.seen_present(cfg, True)),
      view=_view)


def modalities(cfg, ds) -> np.ndarray:
  """[M] bool: only the run's one modality."""
  keep = np.zeros(len(ds.modalities), bool)
  keep[_index(cfg, ds)] = True
  return keep


def _index(cfg, ds) -> int:
  if cfg.unimodal_modality != 'best':
    if cfg.unimodal_modality not in ds.modalities:
      raise ValueError(f'--unimodal_modality={cfg.unimodal_modality!r} is not '
                       f"one of {ds.modalities} or 'best'.")
    return ds.modalities.index(cfg.unimodal_modality)
  # 'best': a ridge probe per modality on a held-out fifth of the train split.
  n = len(ds.train.y)
  seed = np.random.SeedSequence([cfg.seed, 2]).generate_state(1)[0]
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


METHODS = (base.Method('unimodal', plan, modalities=modalities, order=11),)
