"""Ditto (Li, Hu, Beirami, Smith, ICML 2021): each client k keeps a personal
task model v_k near the global one, min F_k(v_k) + lambda/2 ||v_k - w||^2.

Built on FedRecon's pipeline, as the personalisation of this repository's
method: stage 1 (the generator) and the global task model w are FedRecon's
unchanged (the paper's Algorithm 1 leaves the global update as FedAvg's).
Every cohort client also takes --local_epochs steps of proximal gradient
descent on its own v_k (lr --client_lr), on the same inputs the task stage
gives w (real + reconstructed, filled once per stage), with the prox term
towards w^t, the global model the round starts from. Unselected clients'
v_k are untouched; v_k starts as the stage's initial task model.
Simplification: each personal step is full-batch on the client's real
samples (the paper's s steps are minibatch SGD): one step per epoch.
As in the paper, each v_k is scored on its own client's local test split
(--local_test_fraction > 0, required), its absent inputs completed as the
task stage's view completes them: personal_f1_macro, beside the global w's
local_f1_macro on the same splits (evaluation.make_local_evaluator).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from fedrecon_jax.config import DittoSettings
from fedrecon_jax.generators import mapping
from fedrecon_jax.methods import base, fedrecon


def personal_loss(model, v, w, data, lam):
  """Mean cross-entropy of task model v on the client's real samples, plus
  lam/2 ||v - w||^2. data: one client's (filled) ClientData, [max_n, ...]."""
  logits = model.logits(v, data.xs, jnp.ones_like(data.modality_mask))
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, data.y)
  real = data.sample_mask.astype(jnp.float32)
  mean_ce = (ce * real).sum() / jnp.maximum(real.sum(), 1.0)
  sq = sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(v),
                                                  jax.tree.leaves(w)))
  return mean_ce + 0.5 * lam * sq, mean_ce


def client_state(model, lam: float, steps: int,
                 view: base.View) -> base.ClientState:
  """The personal models, leaves [K, ...], their proximal update, and
  their predictions on inputs the task stage's view completes."""
  def init(params, num_clients):
    return jax.tree.map(
        lambda x: jnp.broadcast_to(x, (num_clients, *x.shape)),
        params['task'])

  def update(h, v, trainable, frozen, data, key):
    del frozen, key
    w = trainable['task']
    grad = jax.grad(lambda v: personal_loss(model, v, w, data, lam),
                    has_aux=True)
    def step(v, _):
      g, _ = grad(v)
      return jax.tree.map(lambda a, b: a - h.client_lr * b, v, g), None
    v, _ = jax.lax.scan(step, v, None, length=steps)
    _, ce = personal_loss(model, v, w, data, lam)
    return v, {'personal_ce': ce}

  def predict(params, v, xs, present):
    xs, attend = view(params, xs, present)
    return jnp.argmax(model.logits(v, xs, attend), -1)

  return base.ClientState(init, update, predict)


def plan(recipe, model, stage) -> base.StagePlan:
  if stage == base.GEN_STAGE:
    return base.generator_stage(recipe, model)
  task = fedrecon.task_stage(recipe, model, train_generator=False)
  return dataclasses.replace(task, client_state=client_state(
      model, recipe.knobs.ditto_lambda, recipe.cfg.local_epochs, task.view))


# Scored on each client's local test split (--local_test_fraction > 0):
# personal_f1_macro (the v_k) beside local_f1_macro (the global w).
METHODS = (base.Method('ditto', plan, lambda knobs: mapping.MAPPING,
                       settings=DittoSettings, local_test=True, order=20),)
