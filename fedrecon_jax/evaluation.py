"""Evaluation on the global test set: classification and reconstruction;
and on the clients' local test splits (local_split.py): the global model
and, for methods with personal models (ClientState.predict), each client's
own.

Metric functions are pure numpy/jax functions of arrays; `make_evaluator`
binds a task stage's plan, its model and the test set into one jitted
program per plan.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

import functools

from fedrecon_jax import recon_metrics
from fedrecon_jax.methods import TASK_STAGE, StagePlan
from fedrecon_jax.partition import ClientData
from fedrecon_jax.methods.unimodal import ridge_probe_accuracy
from fedrecon_jax.models import Model

__all__ = ['accuracy', 'fill_mse', 'macro_f1', 'make_evaluator',
           'make_local_evaluator', 'ridge_probe_accuracy']

# Clients whose local test splits one vmapped pass scores (lax.map's
# batch): bounds the evaluation's memory on large populations.
_CLIENT_BATCH = 32


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


@functools.cache
def _predictor(view, model: Model):
  """(params, xs, present) -> predicted classes, jitted once per plan."""
  @jax.jit
  def predict(params, xs, pres):
    xs, attend = view(params, xs, pres)
    return jnp.argmax(model.logits(params['task'], xs, attend), -1)
  return predict


@functools.cache
def _local_predictor(view, model: Model, personal):
  """(params, clients, xs, present) -> (global, personal) predicted
  classes [K, max_t] on each client's local test split: xs per modality
  [K, max_t, ...], present [K, max_t, M], clients the personal models'
  leaves [K, ...] (personal: ClientState.predict; None: global twice)."""
  def one(params, v, xs, pres):
    seen, attend = view(params, xs, pres)
    glob = jnp.argmax(model.logits(params['task'], seen, attend), -1)
    return glob, glob if personal is None else personal(params, v, xs, pres)

  @jax.jit
  def predict(params, clients, xs, pres):
    return jax.lax.map(lambda c: one(params, *c), (clients, xs, pres),
                       batch_size=min(_CLIENT_BATCH, pres.shape[0]))
  return predict


def make_local_evaluator(plan: StagePlan, model: Model, local: ClientData):
  """Returns evaluate(params, clients) -> {'local_f1_macro', and with a
  ClientState.predict 'personal_f1_macro'}: macro-F1 pooled over every
  client's real local test samples (local: numpy ClientData [K, max_t,
  ...]) of the global model and of each client's personal model (clients:
  the ServerState.clients of the task stage, leaves [K, ...])."""
  state = plan.client_state
  personal = None if state is None else state.predict
  predict = _local_predictor(plan.view, model, personal)
  real = np.asarray(local.sample_mask, bool)
  y_true = np.asarray(local.y)[real]
  xs, pres = jax.device_put((tuple(local.xs), local.modality_mask))

  def evaluate(params, clients) -> dict:
    glob, own = jax.device_get(predict(params, clients, xs, pres))
    out = {'local_f1_macro': macro_f1(y_true, glob[real])}
    if personal is not None:
      out['personal_f1_macro'] = macro_f1(y_true, own[real])
    return out

  return evaluate


def make_evaluator(plan: StagePlan, model: Model, xs_test, y_test,
                   present_test, present_complete=None, chunk: int = 500,
                   local_test: ClientData | None = None):
  """Returns evaluate(params, stage=TASK_STAGE, clients=()) -> dict of
  floats (clients: ServerState.clients, the personal models if any).

  The task metrics (f1_macro, accuracy, ...) come only from a task-stage
  evaluation: in the generator stage the task model has not trained, and a
  generator-only run (--rounds=0) never trains it, so its records hold the
  generator's metrics alone.

  Args:
    plan: the run's task stage (its view of a batch and its generator).
    xs_test: per modality [N, ...] float32, the full test set.
    y_test: [N] labels.
    present_test: [N, M] bool test-time missingness (absent inputs are zeroed
      before the model sees them; the method completes them as in training).
    present_complete: optional [N, M] bool, the modalities the method may see
      with nothing missing (all, or the unimodal baseline's one); adds
      'f1_macro_complete' and 'accuracy_complete', the metrics without
      test-time missingness (the paper's setting for its unimodal baseline).
    local_test: optional ClientData of the clients' local test splits; adds
      make_local_evaluator's metrics to task-stage evaluations.
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

  predict = _predictor(plan.view, model)
  gen = plan.generator

  def classify(params, xs, pres):
    return np.concatenate([np.asarray(predict(params, c[:-1], c[-1]))
                           for c in chunks([*xs, pres])])[:n]

  local = (None if local_test is None else
           make_local_evaluator(plan, model, local_test))

  def evaluate(params, stage: int = TASK_STAGE, clients=()) -> dict:
    out = {}
    if stage == TASK_STAGE:
      preds = classify(params, xs_in, present)
      out = {'f1_macro': macro_f1(y_test, preds),
             'accuracy': accuracy(y_test, preds)}
    if stage == TASK_STAGE and present_complete is not None:
      preds = classify(params, xs_complete, present_complete)
      out['f1_macro_complete'] = macro_f1(y_test, preds)
      out['accuracy_complete'] = accuracy(y_test, preds)
    if stage == TASK_STAGE and local is not None:
      out.update(local(params, clients))
    if gen is not None:
      # Mean over modalities n of the MSE of n rebuilt from all the others,
      # from posterior means: what the task stage fills with.
      rebuild = recon_metrics.reconstructor(gen.name, model, params,
                                            sample=False)
      out['recon_mse'] = float(np.mean([
          mse for _, _, mse in recon_metrics.leave_one_out(
              rebuild, xs_test, chunk=chunk)]))
    return out

  return evaluate
