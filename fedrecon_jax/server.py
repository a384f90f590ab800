"""Server aggregation: a pure function of (server params, optimizer state,
stacked client params, stacked weights).

FedAvg is the weighted mean of the client params. FedOpt (Reddi et al., 2021)
feeds the pseudo-gradient `params - weighted mean` to an optax optimizer; FedAvg
is the special case of plain SGD with learning rate 1.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import optax

from fedrecon_jax.config import Config, GEN_STAGE


def server_optimizer(cfg: Config, stage: int) -> optax.GradientTransformation:
  lr = cfg.gen_server_lr if stage == GEN_STAGE else cfg.server_lr
  if cfg.server_opt == 'fedavg':
    return optax.sgd(1.0)
  return {
      'sgdm': lambda: optax.sgd(lr, momentum=0.9),
      'adam': lambda: optax.adam(lr, eps=cfg.server_eps),
      'yogi': lambda: optax.yogi(lr, eps=cfg.server_eps),
      'adagrad': lambda: optax.adagrad(lr, eps=cfg.server_eps),
  }[cfg.server_optimizer]()


def _expand(w, leaf):
  """[C, *prefix] weights -> broadcastable against a [C, *leaf] leaf."""
  return w.reshape(w.shape + (1,) * (leaf.ndim - w.ndim))


def finite_clients(stacked_params) -> jax.Array:
  """[C] bool: True where every parameter a client returned is finite."""
  leaves = jax.tree.leaves(stacked_params)
  return jnp.stack([jnp.isfinite(x).reshape(x.shape[0], -1).all(1)
                    for x in leaves]).all(0)


def weighted_mean(server_params, stacked_params, stacked_weights):
  """Per-group weighted mean over clients with finite updates.

  Args:
    server_params: pytree of the current server params.
    stacked_params: same pytree, leaves [C, *shape].
    stacked_weights: same tree structure, leaves [C] or [C, *prefix of shape]
      (e.g. [C, P] for the stacked mappings): samples behind each group.
  Returns:
    (mean, trained, ok): the mean (the server value where nobody trained a
    group), a pytree of bool masks where some client trained, and [C] ok.
  """
  ok = finite_clients(stacked_params)

  def leaf_mean(server, local, w):
    chex.assert_equal(local.shape[1:], server.shape)
    w = _expand(w * _expand(ok, w), local)
    total = w.sum(0)
    mean = (jnp.where(w > 0, local, 0.0) * w).sum(0) / jnp.maximum(total, 1e-12)
    trained = jnp.broadcast_to(total > 0, server.shape)
    return jnp.where(trained, mean, server), trained

  out = jax.tree.map(leaf_mean, server_params, stacked_params, stacked_weights)
  is_pair = lambda x: isinstance(x, tuple)
  mean = jax.tree.map(lambda t: t[0], out, is_leaf=is_pair)
  trained = jax.tree.map(lambda t: t[1], out, is_leaf=is_pair)
  return mean, trained, ok


def aggregate(params, opt_state, stacked_params, stacked_weights,
              tx: optax.GradientTransformation):
  """One server step. Returns (params, opt_state, info).

  info['skipped_clients'] counts clients that had weight but returned a
  non-finite update: they are left out of the mean, so one bad client cannot
  poison the global model. Entries of a group no client trained this round
  are left exactly as they were (no momentum drift).
  """
  mean, trained, ok = weighted_mean(params, stacked_params, stacked_weights)
  pseudo_grad = jax.tree.map(jnp.subtract, params, mean)
  updates, opt_state = tx.update(pseudo_grad, opt_state, params)
  new = optax.apply_updates(params, updates)
  new = jax.tree.map(jnp.where, trained, new, params)
  participated = jnp.stack([
      w.reshape(w.shape[0], -1).sum(1) > 0
      for w in jax.tree.leaves(stacked_weights)]).any(0)
  skipped = jnp.sum(participated & ~ok)
  return new, opt_state, {'skipped_clients': skipped}
