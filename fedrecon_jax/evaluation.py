"""Evaluation on the global test set: classification and reconstruction.

Metric functions are pure numpy/jax functions of arrays; `make_evaluator`
binds a model and the test set into one jitted program per method.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import client, recon_metrics
from fedrecon_jax.config import TASK_STAGE, Config, per_program
from fedrecon_jax.models import Model


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
  """Mean F1 over the labels present in y_true or y_pred (sklearn's macro)."""
  y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
  labels = np.union1d(y_true, y_pred)
  f1 = []
  for c in labels:
    tp = np.sum((y_true == c) & (y_pred == c))
    fp = np.sum((y_true != c) & (y_pred == c))
    fn = np.sum((y_true == c) & (y_pred != c))
    f1.append(2 * tp / max(2 * tp + fp + fn, 1))
  return float(np.mean(f1))


def accuracy(y_true, y_pred) -> float:
  return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def fill_mse(xs_test, fill_values) -> np.ndarray:
  """[M] MSE of filling each modality with a constant (zeros, train mean)."""
  return np.array([float(np.mean(np.square(x - f)))
                   for x, f in zip(xs_test, fill_values)])


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
  return accuracy(y_val, (v @ w).argmax(1))


@per_program
def _predictor(cfg: Config, model: Model):
  """(params, xs, present) -> predicted classes, jitted once per program."""
  @jax.jit
  def predict(params, xs, pres):
    xs, attend = client.task_inputs(cfg, model, params, xs, pres)
    return jnp.argmax(model.logits(params['task'], xs, attend), -1)
  return predict


def make_evaluator(cfg: Config, model: Model, xs_test, y_test, present_test,
                   present_complete=None, chunk: int = 500):
  """Returns evaluate(params, stage=TASK_STAGE) -> dict of floats.

  The task metrics (f1_macro, accuracy, ...) come only from a task-stage
  evaluation: in the generator stage the task model has not trained, and a
  generator-only run (--rounds=0) never trains it, so its records hold the
  generator's metrics alone.

  Args:
    xs_test: per modality [N, ...] float32, the full test set.
    y_test: [N] labels.
    present_test: [N, M] bool test-time missingness (absent inputs are zeroed
      before the model sees them; the method completes them as in training).
    present_complete: optional [N, M] bool, the modalities the method may see
      with nothing missing (all, or the unimodal baseline's one); adds
      'f1_macro_complete' and 'accuracy_complete', the metrics without
      test-time missingness (the paper's setting for its unimodal baseline).
  """
  n = len(y_test)
  pad = -n % chunk
  def pad_to(x):
    return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
  xs_in = [pad_to(np.where(present_test[:, i].reshape(-1, *[1] * (x.ndim - 1)),
                           x, 0)) for i, x in enumerate(xs_test)]
  present = pad_to(present_test)
  xs_true = [pad_to(x) for x in xs_test]
  if present_complete is not None:
    present_complete = pad_to(present_complete)
    xs_complete = [np.where(present_complete[:, i].reshape(
        -1, *[1] * (x.ndim - 1)), x, 0) for i, x in enumerate(xs_true)]
  chunks = lambda arrs: [tuple(a[i:i + chunk] for a in arrs)
                         for i in range(0, n + pad, chunk)]

  predict = _predictor(cfg, model)
  kind = client.generator_kind(cfg)

  def classify(params, xs, pres):
    return np.concatenate([np.asarray(predict(params, c[:-1], c[-1]))
                           for c in chunks([*xs, pres])])[:n]

  def evaluate(params, stage: int = TASK_STAGE) -> dict:
    out = {}
    if stage == TASK_STAGE:
      preds = classify(params, xs_in, present)
      out = {'f1_macro': macro_f1(y_test, preds),
             'accuracy': accuracy(y_test, preds)}
    if stage == TASK_STAGE and present_complete is not None:
      preds = classify(params, xs_complete, present_complete)
      out['f1_macro_complete'] = macro_f1(y_test, preds)
      out['accuracy_complete'] = accuracy(y_test, preds)
    if cfg.uses_generator:
      # Mean over modalities n of the MSE of n rebuilt from all the others.
      rebuild = recon_metrics.reconstructor(kind, model, params)
      out['recon_mse'] = float(np.mean([
          mse for _, _, mse in recon_metrics.leave_one_out(
              rebuild, xs_test, chunk=chunk)]))
    return out

  return evaluate
