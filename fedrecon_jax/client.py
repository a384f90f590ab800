"""One client's local update, written once and vmapped over the cohort.

A client's data is one slice of `partition.ClientData` (no leading client
axis): every array is padded to the population's largest client. Local
training runs the client's own ceil(n / batch) steps per epoch over a
per-epoch shuffle that puts the real samples first, and padding rows are
masked out of every loss, so padding never changes a result.
"""

from __future__ import annotations

from typing import Callable

import chex
import jax
import jax.numpy as jnp
import optax

from fedrecon_jax import generator, param_groups, partition
from fedrecon_jax.models import Model

# loss_fn(params, batch, key) -> (per-sample loss [B], per-sample terms)
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


# Rows of the population reconstructed at once by make_fill's program.
_FILL_ROWS = 8192


def make_fill(gen, model: Model):
  """(params, population) -> partition.FilledClientData: every client's
  absent modalities reconstructed by generator `gen` (present ones kept),
  for one run. Clients go through in batches of ~_FILL_ROWS rows
  (jax.lax.map), so memory stays bounded for any population."""

  def fill(params, population: partition.ClientData):
    k, max_n = population.y.shape
    one = lambda a: generator.complete(gen, model, params, a[0], a[1])
    xs = jax.lax.map(one, (population.xs, population.modality_mask),
                     batch_size=max(1, min(k, _FILL_ROWS // max(max_n, 1))))
    return partition.FilledClientData(**{**population, 'xs': tuple(xs)})

  return fill


def contribution_weights(trainable: dict, data, model: Model, task_seen,
                         groups) -> dict:
  """How many samples trained each parameter group, shaped like `trainable`:
  each group's declared rule (param_groups.Group.weight) on this client's
  counts. task_seen [max_n, M]: the task inputs it saw (real,
  reconstructed or zero-filled); groups: the trained groups' declarations.
  """
  counts = param_groups.counts(data, model, task_seen)
  return {g.name: g.weight(counts, model, trainable[g.name]) for g in groups}


def _schedule(sample_mask, key, batch_size: int, local_epochs: int):
  """Each epoch's sample order, its real samples first ([E, steps, B]
  indices, -1 past max_n), and each step's key ([E, steps]).

  Three draws in all (each is its own threefry code to compile). Neither
  depends on how much padding follows the real samples: threefry is
  counter-based, so sample i's uniform is the same for any max_n, and a
  step's key is fold_in(its epoch's key, step).
  """
  max_n = sample_mask.shape[0]
  steps = -(-max_n // batch_size)
  order_keys, step_bases = jax.random.split(key, (2, local_epochs))
  u = jax.vmap(lambda k: jax.random.uniform(k, (max_n,)))(order_keys)
  orders = jnp.argsort(jnp.where(sample_mask, u, 2.0), axis=-1)  # [E, max_n]
  orders = jnp.pad(orders, ((0, 0), (0, steps * batch_size - max_n)),
                   constant_values=-1).reshape(local_epochs, steps, batch_size)
  step_keys = jax.vmap(lambda e: jax.vmap(
      lambda s: jax.random.fold_in(e, s))(jnp.arange(steps)))(step_bases)
  return orders, step_keys


def _batch(data, idx) -> dict:
  """The batch at sample indices idx [B] (-1: no sample; masked out)."""
  valid = idx >= 0
  safe = jnp.where(valid, idx, 0)
  mask = (data.sample_mask[safe] & valid).astype(jnp.float32)
  return {'xs': tuple(x[safe] for x in data.xs), 'y': data.y[safe],
          'mask': mask,
          'present': data.modality_mask[safe] & (mask[:, None] > 0)}


def local_update(trainable: dict, frozen: dict, data, key: jax.Array, *,
                 loss_fn: LossFn, tx: optax.GradientTransformation,
                 batch_size: int, local_epochs: int,
                 prox_mu=None) -> tuple[dict, dict]:
  """Runs local epochs on one client.

  Each epoch runs the client's own ceil(n / batch) steps (a loop with a traced
  trip count) over a shuffle that puts its n real samples first: the steps of
  the fixed ceil(max_n / batch) grid past those would see no real sample, so
  skipping them gives the same result as running them masked. Vmapped over a
  cohort the loop runs the cohort's largest count, the finished clients'
  state held by the batched loop's select.

  Args:
    trainable: the server's params for the groups trained this stage.
    frozen: the other groups (inputs only, never updated).
    data: one client's padded data (partition.ClientData without client axis).
    key: this client's key for the round.
  Returns:
    (trained params, metrics dict of scalars).
  """
  max_n = data.y.shape[0]
  steps = -(-max_n // batch_size)           # per epoch, for the largest client
  chex.assert_rank(data.sample_mask, 1)
  chex.assert_shape(data.modality_mask, (max_n, None))

  def objective(params, batch, step_key):
    per_sample, terms = loss_fn({**frozen, **params}, batch, step_key)
    weight = batch['mask'] / jnp.maximum(batch['mask'].sum(), 1.0)
    loss = jnp.sum(per_sample * weight)
    if prox_mu is not None:   # FedProx; None (not 0.0) compiles it out
      loss += 0.5 * prox_mu * optax.tree.norm(
          jax.tree.map(jnp.subtract, params, trainable), squared=True)
    return loss, {k: jnp.sum(v * weight) for k, v in terms.items()}

  grad_fn = jax.grad(objective, has_aux=True)

  orders, step_keys = _schedule(data.sample_mask, key, batch_size,
                                local_epochs)
  n = data.sample_mask.sum()
  own_steps = (n + batch_size - 1) // batch_size            # <= steps
  # Never 0 as a divisor: under vmap a finished (or empty) client still
  # evaluates the body, whose result the batched loop discards.
  per_epoch = jnp.maximum(own_steps, 1)

  def step(t, carry):
    params, opt_state, totals = carry
    epoch, s = t // per_epoch, t % per_epoch
    batch = _batch(data, orders[epoch, s])
    grads, terms = grad_fn(params, batch, step_keys[epoch, s])
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    real = batch['mask'].sum()         # >= 1: every step run holds a sample
    totals = {k: totals[k] + (terms[k] if k != 'count' else 1.0) * real
              for k in totals}
    return params, opt_state, totals

  # Term names come from one abstract evaluation of the loss.
  term_names = jax.eval_shape(lambda: objective(
      trainable, _batch(data, orders[0, 0]), key)[1])
  totals = {k: jnp.zeros(()) for k in term_names} | {'count': jnp.zeros(())}
  carry = (trainable, tx.init(trainable), totals)
  if local_epochs * steps == 1:
    # Every client fits one batch: one step or none (an empty client), no
    # loop. Vmapped, a loop would hold a carry per client: twice the memory
    # of a cohort of such clients (stage 1, 200 clients: 19.1 -> 6.5 GB).
    done = step(0, carry)
    params, _, totals = jax.tree.map(
        lambda new, old: jnp.where(own_steps > 0, new, old), done, carry)
  else:
    # A traced bound makes fori_loop a while loop (no reverse-mode through
    # it is needed: each step takes its own gradient).
    params, _, totals = jax.lax.fori_loop(0, local_epochs * own_steps, step,
                                          carry)
  count = jnp.maximum(totals.pop('count'), 1.0)
  return params, {k: v / count for k, v in totals.items()}


def make_client_update(loss, tx, weights, *, batch_size: int,
                       local_epochs: int, prox: bool, filled: bool,
                       what: str = 'This stage'):
  """(h, trainable, frozen, data, key) -> (params, weights, metrics) for one
  client; h is a hparams.Hparams (traced: one program for every value).

  loss: h -> LossFn; tx: h -> the client optimizer; weights: (trainable,
  data) -> contribution weights (contribution_weights). prox compiles in
  FedProx's term (h.fedprox_mu). filled: the client trains on the
  population filled once per stage (make_fill), and refuses the other one.
  """

  def client_update(h, trainable, frozen, data, key):
    if isinstance(data, partition.FilledClientData) != filled:
      raise ValueError(
          f'{what} trains on '
          + ('the population filled by rounds.fill_population (Round.fill)'
             if filled else 'the population as loaded, not a filled one')
          + f', got {type(data).__name__}.')
    params, metrics = local_update(
        trainable, frozen, data, key, loss_fn=loss(h), tx=tx(h),
        batch_size=batch_size, local_epochs=local_epochs,
        prox_mu=h.fedprox_mu if prox else None)
    return params, weights(trainable, data), metrics

  return client_update
