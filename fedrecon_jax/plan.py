"""A stage's plan: what a round of it computes, built once from a Config.

The round engine (rounds.py) reads only the plan: which parameter groups the
clients train, one client's update, and the server's transformation. Both
take `h`, the run's Config.hparams(), as a traced input, so runs that differ
in those numbers share one program (and can run as one, on a runs axis).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import optax

from fedrecon_jax import client, server
from fedrecon_jax.config import Config, per_program
from fedrecon_jax.models import Model


@dataclasses.dataclass(frozen=True)
class StagePlan:
  stage: int
  groups: tuple[str, ...]     # parameter groups the clients train
  # (h, trainable, frozen, data, key) -> (params, weights, metrics): one
  # client, its data without a client axis (client.make_client_update).
  client_update: Callable
  server_tx: Callable[[dict], optax.GradientTransformation]   # h -> tx
  num_clients: int            # K, the population the cohort is drawn from
  cohort: int                 # clients sampled per round
  # (params, population) -> the population the stage's rounds read, filled
  # once per stage by the frozen generator (client.make_fill); None: as is.
  fill: Callable | None = None


@per_program
def make_plan(cfg: Config, model: Model, stage: int,
              num_clients: int) -> StagePlan:
  return StagePlan(
      stage=stage, groups=client.trainable_groups(cfg, stage),
      # Jitted, so the round's second trace of it (its sums' shapes, then
      # the loop body) hits jit's trace cache instead of tracing it again.
      client_update=jax.jit(client.make_client_update(cfg, model, stage)),
      server_tx=lambda h: server.server_optimizer(cfg, stage, h),
      num_clients=num_clients,
      cohort=min(cfg.clients_per_round, num_clients),
      fill=(client.make_fill(cfg, model) if client.fills_once(cfg, stage)
            else None))
