"""Where a round happens: cohort sampling, all local updates, aggregation.

One round of one stage is one jitted program:

  population [K, max_n, ...] (replicated)  --gather cohort ids-->  cohort [C, ...]
  cohort sharded over the `clients` mesh axis; jax.vmap(client_update) runs on
  every device over its slice of clients; the weighted mean in `aggregate`
  reduces over the clients axis (an all-reduce), and the server step runs
  replicated. The cohort is padded with zero-weight clients to a multiple of the
  device count.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fedrecon_jax import client, server
from fedrecon_jax.config import Config
from fedrecon_jax.models import Model

CLIENTS = 'clients'


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """A 1-D mesh over the first `num_devices` devices (0 = all, all hosts)."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise ValueError(f'--num_devices={num_devices} exceeds the '
                     f'{len(devices)} available devices.')
  devices = devices[:num_devices or None]
  return jax.make_mesh((len(devices),), (CLIENTS,), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,))


def padded_cohort_size(cfg: Config, mesh) -> int:
  n = mesh.devices.size
  return -(-cfg.clients_per_round // n) * n


def sample_cohort(key, num_clients: int, cohort: int, padded: int):
  """Cohort ids [padded] (distinct, then repeats of the first) and valid [padded]."""
  ids = jax.random.choice(key, num_clients, (cohort,), replace=False)
  ids = jnp.concatenate([ids, jnp.full((padded - cohort,), ids[0])])
  return ids, jnp.arange(padded) < cohort


def client_keys(key, ids):
  """A key per client from its id, independent of cohort order and devices."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids + 1)


def split_params(params: dict, groups):
  return ({g: params[g] for g in groups},
          {g: v for g, v in params.items() if g not in groups})


def run_cohort(client_update, trainable, frozen, cohort, keys, mesh=None):
  """vmap of one client's update over the cohort axis (sharded if mesh)."""
  if mesh is not None:
    cohort = jax.lax.with_sharding_constraint(
        cohort, NamedSharding(mesh, P(CLIENTS)))
  return jax.vmap(client_update, in_axes=(None, None, 0, 0),
                  spmd_axis_name=CLIENTS if mesh is not None else None)(
                      trainable, frozen, cohort, keys)


def make_round(cfg: Config, model: Model, stage: int, mesh, num_clients: int):
  """Returns (jitted round_fn, server tx).

  round_fn(params, opt_state, population, key) -> (params, opt_state, metrics)
  where `population` is the stacked partition.ClientData of all K clients and
  `params` holds every group; groups not trained in `stage` pass through.
  """
  groups = client.trainable_groups(cfg, stage)
  client_update = client.make_client_update(cfg, model, stage)
  tx = server.server_optimizer(cfg, stage)
  padded = padded_cohort_size(cfg, mesh)
  replicated = NamedSharding(mesh, P())

  def round_fn(params, opt_state, population, key):
    ids, valid = sample_cohort(jax.random.fold_in(key, 0), num_clients,
                               cfg.clients_per_round, padded)
    cohort = jax.tree.map(lambda x: x[ids], population)
    trainable, frozen = split_params(params, groups)
    local, weights, metrics = run_cohort(
        client_update, trainable, frozen, cohort, client_keys(key, ids), mesh)
    trained, opt_state, metrics = server.aggregate(
        trainable, opt_state, local, weights, tx, metrics, valid)
    return {**params, **trained}, opt_state, metrics

  return jax.jit(round_fn, out_shardings=replicated), tx


def init_server_opt(tx, params: dict, cfg: Config, stage: int):
  return tx.init(split_params(params, client.trainable_groups(cfg, stage))[0])


def sequential_round(cfg: Config, model: Model, stage: int, params, opt_state,
                     population, key, num_clients: int):
  """Reference/baseline: the same round with clients run one after another.

  Calls one jitted single-client update per client in a Python loop (how
  FedJAX runs clients), then the same aggregation. Used by tests and the
  benchmark; not by training.
  """
  groups = client.trainable_groups(cfg, stage)
  update, aggregate = _sequential_parts(cfg, model, stage)
  ids, _ = sample_cohort(jax.random.fold_in(key, 0), num_clients,
                         cfg.clients_per_round, cfg.clients_per_round)
  keys = client_keys(key, ids)
  trainable, frozen = split_params(params, groups)
  outs = []
  for i, k in zip(np.asarray(ids), keys):
    data = jax.tree.map(lambda x: x[i], population)
    outs.append(update(trainable, frozen, data, k))
  stack = lambda *xs: jnp.stack(xs)
  local = jax.tree.map(stack, *[o[0] for o in outs])
  weights = jax.tree.map(stack, *[o[1] for o in outs])
  trained, opt_state, metrics = aggregate(trainable, opt_state, local, weights)
  return {**params, **trained}, opt_state, metrics


@functools.cache
def _sequential_parts(cfg: Config, model: Model, stage: int):
  tx = server.server_optimizer(cfg, stage)
  return (jax.jit(client.make_client_update(cfg, model, stage)),
          jax.jit(functools.partial(server.aggregate, tx=tx)))
