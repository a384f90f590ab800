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
import numpy as np
import optax

from fedrecon_jax import generator, partition
from fedrecon_jax.generators import mapping
from fedrecon_jax.config import Config, GEN_STAGE
from fedrecon_jax.models import Model

# loss_fn(params, batch, key) -> (per-sample loss [B], per-sample terms)
LossFn = Callable[[dict, dict, jax.Array], tuple[jax.Array, dict]]


def trainable_groups(cfg: Config, stage: int) -> tuple[str, ...]:
  """Parameter groups that clients train (and the server updates) in a stage."""
  method = cfg.method_spec
  if stage == GEN_STAGE:
    return method.gen_groups
  if (cfg.train_mapping_in_stage2 and 'map' in method.gen_groups
      and 'map' not in method.task_groups):
    return ('map',) + method.task_groups
  return method.task_groups


def generator_kind(cfg: Config) -> str:
  """The stage-1 objective (generator.GENERATORS) of cfg's method."""
  return cfg.generator.name if cfg.generator else None


def fills_once(cfg: Config, stage: int) -> bool:
  """Whether a stage's task inputs come from a generator it does not train.

  Then the reconstruction of a sample's absent modalities is the same at
  every step of the stage, so it is computed once per stage for the whole
  population (`fill_population`) rather than at every local step, where
  the frozen generator's forward pass was ~90% of a step's FLOPs.
  """
  return (stage != GEN_STAGE
          and cfg.method_spec.task_view == 'reconstructed'
          and not {'gen', 'map'} & set(trainable_groups(cfg, stage)))


# Rows of the population reconstructed at once by fill_population.
_FILL_ROWS = 8192


def make_fill(cfg: Config, model: Model):
  """(params, population) -> partition.FilledClientData: every client's
  absent modalities reconstructed as task_inputs reconstructs them (present
  ones kept), for one run. Clients go through in batches of ~_FILL_ROWS
  rows (jax.lax.map), so memory stays bounded for any population."""
  kind = generator_kind(cfg)

  def fill(params, population: partition.ClientData):
    k, max_n = population.y.shape
    one = lambda a: generator.complete(kind, model, params, a[0], a[1])
    xs = jax.lax.map(one, (population.xs, population.modality_mask),
                     batch_size=max(1, min(k, _FILL_ROWS // max(max_n, 1))))
    return partition.FilledClientData(**{**population, 'xs': tuple(xs)})

  return fill


def task_inputs(cfg: Config, model: Model, params: dict, xs, present,
                filled: bool = False):
  """The task model's view of a batch: (inputs, attention mask [B, M]).
  filled: xs already hold the reconstructions (fills_once)."""
  view = cfg.method_spec.task_view
  if view == 'reconstructed' and not filled:
    xs = generator.complete(generator_kind(cfg), model, params, xs, present)
  elif view == 'one_modality':
    return xs, present   # present holds only the chosen modality (train.py)
  return xs, jnp.ones_like(present)   # zeros: absent inputs are zeros


def make_loss(cfg: Config, model: Model, stage: int):
  """h -> the per-sample client objective (LossFn) of a method in a stage.

  h: Config.hparams(), possibly traced (beta, match_weight are read here).
  """
  kind = generator_kind(cfg) if cfg.uses_generator else None
  train_map = 'map' in trainable_groups(cfg, stage)
  filled = fills_once(cfg, stage)

  def with_hparams(h) -> LossFn:
    gen_kw = dict(beta=h['beta'], match_weight=h['match_weight'],
                  cross_decoding=cfg.cross_decoding)

    def gen_loss(params, batch, key):
      return generator.objective(kind, model, params, batch['xs'],
                                 batch['present'], key, **gen_kw)

    def task_loss(params, batch, key):
      xs, attend = task_inputs(cfg, model, params, batch['xs'],
                               batch['present'], filled)
      logits = model.logits(params['task'], xs, attend)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
      terms = {'ce': ce}
      loss = ce
      if cfg.method_spec.task_trains_generator:
        g, gterms = gen_loss(params, batch, key)
        loss, terms = loss + g, {**terms, **gterms}
      elif train_map:
        match = mapping.match_loss(model, params, batch['xs'],
                                     batch['present'])
        loss = loss + h['match_weight'] * match
        terms = {**terms, 'match': match}
      return loss, terms

    return gen_loss if stage == GEN_STAGE else task_loss

  return with_hparams


def client_optimizer(cfg: Config, stage: int,
                     h: dict) -> optax.GradientTransformation:
  """The client's optimizer; its numbers come from h (possibly traced)."""
  lr = h['gen_lr'] if stage == GEN_STAGE else h['client_lr']
  if stage == GEN_STAGE and cfg.gen_optimizer == 'adam':
    step = optax.adam(lr)
  else:
    step = optax.sgd(lr, momentum=h['momentum'])
  # Not optax.flatten: raveling params and grads every step costs more than
  # the per-leaf updates it fuses (CPU stage-1 round 3.9 -> 4.5 s).
  return optax.chain(optax.clip_by_global_norm(h['clip_norm']),
                     optax.add_decayed_weights(h['weight_decay']), step)


def contribution_weights(trainable: dict, data, model: Model,
                         task_seen) -> dict:
  """How many samples trained each parameter group, shaped like `trainable`.

  Each group's weight follows what it actually trained on:
  - a generator encoder/decoder ([G] per leaf, one per modality of its
    `Group`) counts the samples holding its modality, a mapping T(n<-m)
    ([P] per leaf) those holding both ends: an absent modality's generator
    saw nothing, and weight 0 keeps the server from averaging in untouched
    copies;
  - a task encoder ([G] per leaf) counts the samples whose input it saw,
    `task_seen` [max_n, M] (real, reconstructed or zero-filled; see
    `task_seen_mask`);
  - fusion and head count all samples.
  """
  pairs = model.spec.pairs
  members = {part: {g.name: np.asarray(g.members) for g in groups}
             for part, groups in (('gen', model.groups),
                                  ('task', model.task_groups))}
  as_float = lambda m: m.sum(0).astype(jnp.float32)
  mask = data.sample_mask[:, None] & data.modality_mask        # [max_n, M]
  per_modality = as_float(mask)                                # [M]
  per_pair = as_float(mask[:, pairs[:, 0]] & mask[:, pairs[:, 1]])  # [P]
  per_task_input = as_float(data.sample_mask[:, None] & task_seen)  # [M]
  total = as_float(data.sample_mask)

  def weight(path, leaf):
    del leaf
    keys = [getattr(k, 'key', None) for k in path]
    if keys[0] == 'map':
      return per_pair
    if keys[0] == 'gen':
      return per_modality[members['gen'][keys[2]]]
    if keys[1] == 'enc':
      return per_task_input[members['task'][keys[2]]]
    return total

  return jax.tree_util.tree_map_with_path(weight, trainable)


def task_seen_mask(cfg: Config, data) -> jax.Array:
  """[max_n, M] bool: the inputs each task encoder trains on.

  The task model of FedRecon sees every modality (reconstructed where absent)
  and zero_fill's sees zeros there (FedMultimodal averages every client by
  its sample count), so each task encoder trained on every sample; unimodal
  attends to its one modality only. --task_encoder_weights=present counts
  only real inputs (the ablation).
  """
  if (cfg.method_spec.task_seen == 'present'
      or cfg.task_encoder_weights == 'present'):
    return data.modality_mask
  return jnp.ones_like(data.modality_mask)


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


def make_client_update(cfg: Config, model: Model, stage: int):
  """(h, trainable, frozen, data, key) -> (params, weights, metrics) for one
  client; h is Config.hparams() (traced: one program for every value)."""
  loss = make_loss(cfg, model, stage)
  prox = cfg.fedprox_mu > 0
  filled = fills_once(cfg, stage)

  def client_update(h, trainable, frozen, data, key):
    if isinstance(data, partition.FilledClientData) != filled:
      raise ValueError(
          f'Stage {stage} of {cfg.method!r} trains on '
          + ('the population filled by rounds.fill_population (Round.fill)'
             if filled else 'the population as loaded, not a filled one')
          + f', got {type(data).__name__}.')
    params, metrics = local_update(
        trainable, frozen, data, key, loss_fn=loss(h),
        tx=client_optimizer(cfg, stage, h), batch_size=cfg.batch_size,
        local_epochs=cfg.local_epochs,
        prox_mu=h['fedprox_mu'] if prox else None)
    weights = contribution_weights(trainable, data, model,
                                   task_seen_mask(cfg, data))
    return params, weights, metrics

  return client_update
