"""Server aggregation: pure functions of (server params, optimizer state,
client updates, weights).

Aggregation is written once, as weighted sums over clients plus a server step
(the shape of drjax's `reduce_weighted_mean`): `client_sums` reduces any set of
clients (the whole cohort, or one chunk of it) to sums that add up across
chunks, and `apply_sums` turns the total into the new server state. FedAvg is
the weighted mean of the client params; FedOpt feeds the pseudo-gradient
`params - weighted mean` (= -Delta_t) to a server optimizer.

The FedOpt optimizers are Reddi et al. 2021, Algorithm 2 (`fedadam`,
`fedyogi`, `fedadagrad`): no bias correction, v starts at tau^2 and tau sits
outside the square root. optax's adam / yogi / adagrad differ on all three
counts (measured: steps 1.4-2.5x, 0.46-0.66x and 0.01-0.08x of Algorithm 2's);
they stay available as `optax_adam` / `optax_yogi` / `optax_adagrad`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree



class ServerState(NamedTuple):
  """What the server carries from round to round."""
  params: dict            # every group; those not trained this stage pass
  opt_state: Any          # the server optimizer's state (init_opt_state)
  round: jax.Array        # int32 scalar: rounds done (the last one's number)
  # The method's per-client state (StagePlan.client_state), leaves [K, ...];
  # () when it keeps none.
  clients: Any = ()
  # Client-level DP's server state (StagePlan.dp): {'clip': float32 [],
  # the clip norm the next round uses (adaptive clipping moves it; dp.py)};
  # () without DP.
  dp: Any = ()


def init_opt_state(tx: optax.GradientTransformation, trained: dict):
  """The server optimizer's state over `trained` raveled into one vector:
  `apply_sums` steps the raveled params (exact for an elementwise
  transformation, which `check_elementwise` makes sure of), a few compiled
  loops instead of a few per leaf."""
  return tx.init(ravel_pytree(trained)[0])


def init_state(plan, params: dict, h, round_=0) -> ServerState:
  """A stage's first state: `plan` (plan.StagePlan) names the trained
  groups, the server transformation of h (hparams.Hparams) and the
  method's per-client state, if any."""
  trained = {g: params[g] for g in plan.groups}
  clients = (() if plan.client_state is None else
             plan.client_state.init(params, plan.num_clients))
  # The clip starts at --dp_clip each stage, as the optimizer state starts
  # anew: the stages' updates (generator, task model) differ in scale.
  dp_state = ({'clip': jnp.asarray(h.dp_clip, jnp.float32)} if plan.dp
              else ())
  return ServerState(params, init_opt_state(plan.server_tx(h), trained),
                     jnp.asarray(round_, jnp.int32), clients, dp_state)


# A small tree with leaves of different shapes and scales: a transformation
# that reads a leaf as a whole (a per-leaf norm, trust ratio or RMS, a
# factored second moment) treats it differently from the same entries in one
# raveled vector.
_PROBE = {'a': [0.3, -2.0, 5.0], 'b': [[1e-3, 4.0], [-0.5, 0.02]], 'c': 70.0}


def check_elementwise(tx: optax.GradientTransformation, what: str) -> None:
  """Refuses (ValueError naming `what`) a server transformation whose steps
  on a tree differ from its steps on the tree raveled into one vector, the
  way apply_sums runs it. Per-entry optimizers (SGD, momentum, Adam, Yogi,
  Adagrad, FedOpt's) and ones that read the whole vector (global-norm
  clipping) pass; per-leaf ones do not."""
  probe = {k: jnp.asarray(v, jnp.float32) for k, v in _PROBE.items()}
  flat = ravel_pytree(probe)[0]
  tree_state, flat_state = tx.init(probe), tx.init(flat)
  tree_params, flat_params = probe, flat
  for scale in (1.0, -0.3):
    grads = jax.tree.map(lambda p, s=scale: s * p + 0.1, probe)
    tree_up, tree_state = tx.update(grads, tree_state, tree_params)
    flat_up, flat_state = tx.update(ravel_pytree(grads)[0], flat_state,
                                    flat_params)
    tree_params = optax.apply_updates(tree_params, tree_up)
    flat_params = optax.apply_updates(flat_params, flat_up)
    want = np.asarray(ravel_pytree(tree_up)[0])
    if not np.allclose(np.asarray(flat_up), want, rtol=1e-4, atol=1e-6):
      raise ValueError(
          f'{what}: the server transformation is not elementwise (its step '
          'on a tree of params differs from its step on the same params '
          'raveled into one vector, as server.apply_sums runs it); use a '
          'per-entry optimizer (sgd, adam, yogi, adagrad, ...).')


# ---------------------------------------------------------------- optimizers


class FedOptState(NamedTuple):
  m: optax.Updates      # first moment, m_{-1} = 0
  v: optax.Updates      # second moment, v_{-1} = tau^2


def _fedopt(learning_rate: float, second_moment, b1: float, tau: float):
  """Algorithm 2 as an optax transformation of the pseudo-gradient g = -Delta.

  m_t = b1 m + (1 - b1) g;  v_t = second_moment(v, g^2);
  update = -lr m_t / (sqrt(v_t) + tau), i.e. x + lr m(Delta) / (sqrt(v) + tau).
  """

  def init(params):
    return FedOptState(
        m=jax.tree.map(jnp.zeros_like, params),
        v=jax.tree.map(lambda p: jnp.full_like(p, tau**2), params))

  def update(grads, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
    v = jax.tree.map(lambda v, g: second_moment(v, g * g), state.v, grads)
    updates = jax.tree.map(
        lambda m, v: -learning_rate * m / (jnp.sqrt(v) + tau), m, v)
    return updates, FedOptState(m, v)

  return optax.GradientTransformation(init, update)


def fedadam(learning_rate, *, b1=0.9, b2=0.99, tau=1e-3):
  """FedAdam: v_t = b2 v + (1 - b2) Delta^2."""
  return _fedopt(learning_rate, lambda v, g2: b2 * v + (1 - b2) * g2, b1, tau)


def fedyogi(learning_rate, *, b1=0.9, b2=0.99, tau=1e-3):
  """FedYogi: v_t = v - (1 - b2) Delta^2 sign(v - Delta^2)."""
  return _fedopt(learning_rate,
                 lambda v, g2: v - (1 - b2) * g2 * jnp.sign(v - g2), b1, tau)


def fedadagrad(learning_rate, *, b1=0.9, tau=1e-3):
  """FedAdagrad: v_t = v + Delta^2."""
  return _fedopt(learning_rate, lambda v, g2: v + g2, b1, tau)


# --server_optimizer: name -> (lr, b1, b2, tau) -> transformation. adam /
# yogi / adagrad are Reddi et al. 2021, Algorithm 2; the optax_* versions
# (bias-corrected, eps inside) are kept for comparison.
OPTIMIZERS = {
    'sgdm': lambda lr, b1, b2, tau: optax.sgd(lr, momentum=0.9),
    'adam': lambda lr, b1, b2, tau: fedadam(lr, b1=b1, b2=b2, tau=tau),
    'yogi': lambda lr, b1, b2, tau: fedyogi(lr, b1=b1, b2=b2, tau=tau),
    'adagrad': lambda lr, b1, b2, tau: fedadagrad(lr, b1=b1, tau=tau),
    'optax_adam': lambda lr, b1, b2, tau: optax.adam(lr, b1=b1, b2=b2,
                                                     eps=tau),
    'optax_yogi': lambda lr, b1, b2, tau: optax.yogi(lr, b1=b1, b2=b2,
                                                     eps=tau),
    'optax_adagrad': lambda lr, b1, b2, tau: optax.adagrad(lr, eps=tau),
}
# --server_opt: 'fedavg' takes the weighted mean; 'fedopt' feeds the
# pseudo-gradient to one of OPTIMIZERS.
AGGREGATIONS = ('fedavg', 'fedopt')


def transformation(aggregation: str, optimizer: str, lr,
                   h) -> optax.GradientTransformation:
  """The server's transformation of the pseudo-gradient.

  lr and h (hparams.Hparams: b1, b2, tau) may be traced: they are inputs of
  the round program, not constants.
  """
  if aggregation == 'fedavg':
    return optax.sgd(1.0)       # params - (params - mean) = mean
  return OPTIMIZERS[optimizer](lr, h.server_b1, h.server_b2, h.server_eps)


# --------------------------------------------------------------- aggregation


def _sum_clients(x):
  """[C, N] -> [N]: the sum over clients as a matrix-vector product; XLA:CPU
  runs x.sum(0) as a column reduction, several times slower
  (experiments/results/benchmark_cpu.md)."""
  return jnp.matmul(jnp.ones(x.shape[0], x.dtype), x,
                    precision=jax.lax.Precision.HIGHEST)


def _expand(w, ndim: int):
  """A weight [*prefix] with trailing unit axes up to a param's ndim."""
  return w.reshape(w.shape + (1,) * (ndim - w.ndim))


@functools.partial(jax.tree_util.register_dataclass, data_fields=['sums'],
                   meta_fields=['shapes'])
@dataclasses.dataclass(frozen=True)
class WeightSums:
  """Summed contribution weights, one per entry of a client's weights."""
  sums: jax.Array                  # [S]: the weights raveled
  shapes: tuple[tuple[int, ...]]   # their leaf shapes (prefixes of params')

  def spread(self, params) -> jax.Array:
    """[N]: each entry of `params` raveled with its weight's sum."""
    return self.sums[self.index(params)]

  def index(self, params) -> np.ndarray:
    """[N] static ints: the weight entry of each entry of `params`
    raveled."""
    return _weight_index([p.shape for p in jax.tree.leaves(params)],
                         self.shapes)


def _weight_index(param_shapes, weight_shapes) -> np.ndarray:
  """[N] static ints: for each entry of one client's params raveled, the
  entry of its weights raveled (each weight's shape a prefix of its
  param's)."""
  index, offset = [], 0
  for p, w in zip(param_shapes, weight_shapes, strict=True):
    ids = np.arange(offset, offset + np.prod(w, dtype=int)).reshape(w)
    index.append(np.broadcast_to(_expand(ids, len(p)), p).ravel())
    offset += ids.size
  return np.concatenate(index)


def client_sums(local, weights, metrics, valid) -> dict:
  """Sums over a set of clients that add up across chunks of a cohort.

  Args:
    local: trained params, leaves [C, *shape].
    weights: contribution weights, same structure, leaves [C] or
      [C, *prefix of shape] (e.g. [C, P] for the stacked mappings).
    metrics: dict of per-client scalars [C].
    valid: [C] bool, False for padding clients.
  Returns:
    num (sum of w * params, [N] over one client's params raveled), den (sum
    of w, a WeightSums over one client's weights raveled), participants
    (clients with some weight), skipped (those whose update is non-finite:
    left out, so one bad client cannot poison the model), metric sums over
    counted clients and their count.
  """
  # Raveled: a handful of compiled loops instead of a few per leaf, which
  # XLA:CPU compiles much faster. Weights stay [C, S] (one
  # per prefix entry) until the gather inside the product needs [C, N].
  chex.assert_trees_all_equal_structs(local, weights)
  shapes = tuple(x.shape[1:] for x in jax.tree.leaves(weights))
  index = _weight_index([x.shape[1:] for x in jax.tree.leaves(local)], shapes)
  flat = jax.vmap(lambda t: ravel_pytree(t)[0])(local)            # [C, N]
  w = jax.vmap(lambda t: ravel_pytree(t)[0])(weights)             # [C, S]
  # One sum per client over everything: finite only if every term is (a
  # total past 3e38 also reads as non-finite: such a client has diverged).
  ok = jnp.isfinite(flat.sum(1))                                   # [C]
  w = w * valid[:, None]
  use = w * ok[:, None]
  participated = (w > 0).any(1)
  counted = valid & ok
  # where() first: a skipped client (w = 0) must not turn 0 * nan into nan.
  num = jnp.where(use[:, index] > 0, flat, 0.0) * use[:, index]
  return {
      # One client (the CPU default in stage 1) needs no sum over clients;
      # the den stays one per weight ([S], not [N]) until apply_sums spreads
      # it. Both shrink a client's share of the chunk loop's aggregation
      # (experiments/results/benchmark_cpu.md).
      'num': num[0] if len(valid) == 1 else _sum_clients(num),
      'den': WeightSums(_sum_clients(use), shapes),
      'skipped': jnp.sum(participated & ~ok),
      'participants': jnp.sum(participated),
      'metrics': {k: jnp.sum(jnp.where(counted, v, 0.0))
                  for k, v in metrics.items()},
      'count': counted.sum().astype(jnp.float32),
  }


def apply_sums(params, opt_state, sums, tx: optax.GradientTransformation):
  """The server step from (accumulated) `client_sums`.

  Returns (params, opt_state, metrics: the clients' mean metrics, skipped and
  participating client counts, and params_finite). Entries of a group no
  client trained this round keep their server value exactly. The step runs
  on the params raveled into one vector (see init_opt_state).
  """
  flat, unravel = ravel_pytree(params)
  num = sums['num']
  den = sums['den'].spread(params)
  chex.assert_shape([num, den], flat.shape)
  avg = jnp.where(den > 0, num / jnp.maximum(den, 1e-12), flat)
  updates, opt_state = tx.update(flat - avg, opt_state, flat)
  new = jnp.where(den > 0, optax.apply_updates(flat, updates), flat)
  count = jnp.maximum(sums['count'], 1.0)
  metrics = {k: v / count for k, v in sums['metrics'].items()}
  # Finite only if every trained param is (a total past 3e38 reads as
  # non-finite too: such params have diverged); the rest did not change.
  return unravel(new), opt_state, {
      **metrics, 'skipped_clients': sums['skipped'],
      'participants': sums['participants'],
      'params_finite': jnp.isfinite(new.sum())}


def aggregate(params, opt_state, stacked_params, stacked_weights,
              tx: optax.GradientTransformation, metrics=None, valid=None):
  """One server step over a stack of client updates (every client valid
  unless `valid` [C] says otherwise). Returns (params, opt_state, metrics)."""
  num_clients = jax.tree.leaves(stacked_params)[0].shape[0]
  valid = jnp.ones(num_clients, bool) if valid is None else valid
  sums = client_sums(stacked_params, stacked_weights, metrics or {}, valid)
  return apply_sums(params, opt_state, sums, tx)
