"""What a training method is (`Method`), what it builds for each of its
stages (`StagePlan`, with the optional per-client state `ClientState`), and
the pieces the methods here share.

A method, like fedjax's FederatedAlgorithm, is a value holding pure
functions: `plan(recipe, model, stage)` builds a stage's plan, the only
thing the engine (rounds, train, checkpoint, evaluation) reads; the run's
`recipe.Recipe` adds the cohort and DP to it. The Config stops there: a
plan reads its settings, its method's own knobs (`Method.settings`,
`recipe.knobs`) and the generator (`recipe.generator`). A new method is one
module of this package listing its `Method`s in `METHODS` (see
WORKSPACE.md, "Adding a method").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fedrecon_jax import client, generator, param_groups, sampling, server
from fedrecon_jax.generators import Generator
from fedrecon_jax.hparams import Hparams
from fedrecon_jax.param_groups import Group

# A method's stages: an optional generator stage (--gen_rounds), then the
# task stage (--rounds).
GEN_STAGE, TASK_STAGE = 1, 2
# (h) -> (params, batch, key) -> (per-sample loss [B], per-sample terms).
LossFn = Callable[[Hparams], client.LossFn]
# (params, xs, present [B, M]) -> (task model inputs, attend [B, M] bool).
View = Callable[..., tuple[Any, jax.Array]]


@dataclasses.dataclass(frozen=True)
class ClientState:
  """Per-client state a method keeps across rounds (a personal model, as
  Ditto's). It lives in ServerState.clients with leaves [K, ...] along the
  population's clients axis, starts anew with its stage (as the server
  optimizer's state does) and is saved with every checkpoint. Each round,
  every cohort client runs `update` beside the plan's client_update, on the
  same server params, data and key; padding clients' results are dropped."""
  # (params, num_clients) -> the population's states, leaves [K, ...].
  init: Callable[[dict, int], Any]
  # (h, state, trainable, frozen, data, key) -> (state, metrics): one client
  # (no client axis); metrics are scalars, averaged over clients as the
  # client_update's are.
  update: Callable[..., tuple[Any, dict]]
  # (params, state, xs, present [B, M]) -> [B] predicted classes: one
  # client's personal model on its inputs (absent ones zeroed), given the
  # server params (the generator completing them); evaluation vmaps it over
  # the clients' local test splits (personal_f1_macro). None: no personal
  # model to score.
  predict: Callable[..., Any] | None = None


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """What a round of one stage computes; built once per program."""
  stage: int
  groups: tuple[str, ...]     # names of the parameter groups clients train
  # (h, trainable, frozen, data, key) -> (params, weights, metrics): one
  # client, its data without a client axis (client.make_client_update).
  client_update: Callable
  server_tx: Callable[[Hparams], optax.GradientTransformation]
  # Set by the run's recipe (Recipe.plan), not by the method:
  num_clients: int = 0        # K, the population the cohort is drawn from
  cohort: int = 0             # clients sampled per round
  # (params, population) -> the population the stage's rounds read, filled
  # once per stage by the frozen generator (client.make_fill); None: as is.
  fill: Callable | None = None
  # How the task model sees a test batch (evaluation), raw inputs with
  # absent modalities zeroed.
  view: View | None = None
  # The generator whose params the run trains (evaluation's recon_mse).
  generator: Generator | None = None
  client_state: ClientState | None = None
  # Client-level DP-FedAvg (dp.py) instead of the weighted mean: the
  # server adds noise to the sum of clipped deltas (h.dp_clip, h.dp_noise_
  # multiplier) and divides by the cohort size.
  dp: bool = False
  # Poisson sampling's inclusion probability q (sampling.py); `cohort` is
  # then the static slot count the round computes. 0: a fixed-size cohort.
  rate: float = 0.0
  # trainable -> param_groups.count_ids of the trained groups: DP's
  # per-group denominators (dp.py); set by stage_plan.
  count_ids: Callable | None = None
  # DP divides each entry by its class's noised count (count_ids), not by
  # the cohort (--dp_denominator=group); set by the recipe.
  dp_groups: bool = False


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: a name (--method) and how it builds its plans."""
  name: str
  # (recipe, model, stage) -> StagePlan, for each of the recipe's stages.
  plan: Callable[..., StagePlan]
  # knobs -> the generator its generator stage trains; None: no such stage.
  generator: Callable[[Any], Generator | None] = lambda knobs: None
  # Its own settings section of the Config (config.DittoSettings, ...):
  # what `generator` and the plans read as `knobs`; None: none.
  settings: type | None = None
  # (recipe, dataset) -> [M] bool, the modalities its clients and test set
  # may hold (the rest are dropped from the data); None: all of them.
  modalities: Callable | None = None
  # Whether its evaluation needs each client's local test split (recipe
  # then requires --local_test_fraction > 0).
  local_test: bool = False
  # (cfg, dp on) -> None, raising ValueError for settings it refuses.
  check: Callable[[Any, bool], None] | None = None
  order: int = 0              # position in --method's choices (then name)


# ------------------------------------------------------ shared plan pieces


def client_tx(cfg, stage: int) -> Callable[[Hparams], Any]:
  """h -> the client's optimizer in a stage (its numbers from h)."""
  adam = stage == GEN_STAGE and cfg.gen_optimizer == 'adam'

  def tx(h: Hparams) -> optax.GradientTransformation:
    lr = h.gen_lr if stage == GEN_STAGE else h.client_lr
    step = optax.adam(lr) if adam else optax.sgd(lr, momentum=h.momentum)
    # Not optax.flatten: raveling params and grads every step costs more
    # than the per-leaf updates it fuses.
    return optax.chain(optax.clip_by_global_norm(h.clip_norm),
                       optax.add_decayed_weights(h.weight_decay), step)

  return tx


def server_tx(cfg, stage: int) -> Callable[[Hparams], Any]:
  """h -> the server's transformation of the pseudo-gradient in a stage."""
  def tx(h: Hparams) -> optax.GradientTransformation:
    lr = h.gen_server_lr if stage == GEN_STAGE else h.server_lr
    return server.transformation(cfg.server_opt, cfg.server_optimizer, lr, h)
  return tx


# The task model's group: its encoders count the samples whose input they
# saw (client.Counts.task_input), fusion and head every sample.
TASK = Group('task', param_groups.task_weights)


def weights_fn(model, seen_present: bool, groups: tuple[Group, ...]):
  """(trainable, data) -> client.contribution_weights of `groups`: a task
  encoder counts every sample it saw an input for (real, reconstructed or
  zero), or with seen_present only the real ones."""
  def weights(trainable, data):
    seen = (data.modality_mask if seen_present
            else jnp.ones_like(data.modality_mask))
    return client.contribution_weights(trainable, data, model, seen, groups)
  return weights


def stage_plan(cfg, stage: int, *, groups: tuple[Group, ...], loss: LossFn,
               model, seen_present: bool, filled: bool = False,
               **fields) -> StagePlan:
  """A StagePlan whose clients train `groups` to minimise `loss` with the
  stage's client optimizer (and FedProx's term when --fedprox_mu > 0), each
  group weighted by its declared rule (seen_present: see weights_fn)."""
  update = client.make_client_update(
      loss, client_tx(cfg, stage), weights_fn(model, seen_present, groups),
      batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
      prox=cfg.fedprox_mu > 0, filled=filled,
      what=f'Stage {stage} of {cfg.method!r}')
  # Jitted, so the round's second trace of it (its sums' shapes, then the
  # loop body) hits jit's trace cache instead of tracing it again.
  return StagePlan(stage=stage, groups=tuple(g.name for g in groups),
                   client_update=jax.jit(update),
                   server_tx=server_tx(cfg, stage),
                   count_ids=functools.partial(param_groups.count_ids, model,
                                               groups), **fields)


def cohort(client_sampling: str, size: int, num_clients: int) -> dict:
  """StagePlan's cohort (and rate) for --client_sampling: `size` clients
  per round (or expected, Poisson) of K = num_clients."""
  if client_sampling == sampling.FIXED:
    return {'cohort': size}
  rate = size / num_clients
  return {'cohort': sampling.poisson_capacity(num_clients, rate),
          'rate': rate}


def generator_loss(cfg, model, gen: Generator) -> LossFn:
  """h -> the generator objective of `gen` as a client loss."""
  def with_h(h: Hparams):
    def loss(params, batch, key):
      return generator.objective(gen, model, params, batch['xs'],
                                 batch['present'], key, beta=h.beta,
                                 match_weight=h.match_weight,
                                 cross_decoding=cfg.cross_decoding)
    return loss
  return with_h


def generator_stage(recipe, model) -> StagePlan:
  """The generator stage of a method with a generator: clients train the
  generator's groups on its objective."""
  gen = recipe.generator
  return stage_plan(recipe.cfg, GEN_STAGE, groups=gen.groups,
                    loss=generator_loss(recipe.cfg, model, gen), model=model,
                    seen_present=False, generator=gen)


def task_loss(model, view: View, extra=None) -> LossFn:
  """h -> cross-entropy of the task model on view(params, xs, present),
  plus extra(h, params, batch, key) -> (loss [B], terms) if given."""
  def with_h(h: Hparams):
    def loss(params, batch, key):
      xs, attend = view(params, batch['xs'], batch['present'])
      logits = model.logits(params['task'], xs, attend)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['y'])
      if extra is None:
        return ce, {'ce': ce}
      more, terms = extra(h, params, batch, key)
      return ce + more, {'ce': ce, **terms}
    return loss
  return with_h


def completing_view(model, gen: Generator) -> View:
  """Absent modalities reconstructed by the generator (present ones kept);
  every modality attended."""
  def view(params, xs, present):
    return (generator.complete(gen, model, params, xs, present),
            jnp.ones_like(present))
  return view


def zeros_view(params, xs, present):
  """Inputs as they come (absent ones hold zeros), every modality attended."""
  del params
  return xs, jnp.ones_like(present)


def seen_present(cfg, method_says: bool = False) -> bool:
  """Whether a task encoder's weight counts only real inputs: the method's
  rule, or the --task_encoder_weights=present ablation."""
  return method_says or cfg.task_encoder_weights == 'present'
