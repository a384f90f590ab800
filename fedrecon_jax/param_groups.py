"""Parameter groups as declarations: a top-level key of the params, how a
client's update of it is weighted in aggregation, and (for a group a
generator adds) how it is initialised.

Generators declare the groups their objective trains (`Generator.groups`:
`GEN`, plus `MAP` for the mappings T(n<-m)); methods add the task model's
(`methods.base.TASK`). A client's weights are each trained group's rule
applied to that client's sample counts (client.contribution_weights), so
no aggregation code branches on a group's name, and a generator that needs
a group of its own (e.g. a learned prior) declares it in its own module
with a `weight` rule and an `init`.

Weights are leaves [] or [prefix of the leaf's shape] (server.client_sums):
e.g. [G] for a stack of G per-modality networks, [P] for the P mappings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Counts(NamedTuple):
  """One client's real samples that could train each part of the model."""
  modality: jax.Array     # [M] samples holding modality m
  pair: jax.Array         # [P] samples holding both ends of pair p
  task_input: jax.Array   # [M] samples whose task input m was seen
  total: jax.Array        # [] every real sample


# (counts, model, the group's params) -> weights shaped like the params
# (leaves [] or [prefix]).
WeightRule = Callable[[Counts, Any, Any], Any]
# (model, key) -> the group's initial params.
Init = Callable[[Any, jax.Array], Any]


@dataclasses.dataclass(frozen=True)
class Group:
  """A top-level parameter group: params[name]."""
  name: str
  weight: WeightRule
  # The group's initial params, for a group the Model does not build
  # itself (one a generator adds: models.Model.init calls it); None: the
  # Model's own ('gen', 'map', 'task').
  init: Init | None = None


def counts(data, model, task_seen) -> Counts:
  """Counts of one client's data (partition.ClientData without a client
  axis); task_seen [max_n, M]: the task inputs it trains on (real,
  reconstructed or zero-filled)."""
  pairs = model.spec.pairs
  as_float = lambda m: m.sum(0).astype(jnp.float32)
  mask = data.sample_mask[:, None] & data.modality_mask        # [max_n, M]
  return Counts(as_float(mask),
                as_float(mask[:, pairs[:, 0]] & mask[:, pairs[:, 1]]),
                as_float(data.sample_mask[:, None] & task_seen),
                as_float(data.sample_mask))


def per_member(per_modality: jax.Array, groups, stacked: dict) -> dict:
  """{group name: params [G, ...]} -> {group name: each leaf [G], its
  members' per_modality entries} (modality_groups.Group stacks)."""
  members = {g.name: np.asarray(g.members) for g in groups}
  return {name: jax.tree.map(lambda _, n=name: per_modality[members[n]], sub)
          for name, sub in stacked.items()}


def modality_weights(counts_: Counts, model, params: dict) -> dict:
  """The generator's encoders and decoders ({'enc' | 'dec': {group: [G,
  ...]}}): each member counts the samples holding its modality (an absent
  modality's networks saw nothing: weight 0, never averaged in untouched)."""
  return {part: per_member(counts_.modality, model.groups, stacked)
          for part, stacked in params.items()}


def pair_weights(counts_: Counts, model, params) -> Any:
  """The mappings ([P, ...] leaves): T(n<-m) counts the samples holding
  both n and m."""
  del model
  return jax.tree.map(lambda _: counts_.pair, params)


def task_weights(counts_: Counts, model, params: dict) -> dict:
  """The task model: each encoder ({'enc': {group: [G, ...]}}) counts the
  samples whose input it saw, fusion and head every sample."""
  out = jax.tree.map(lambda _: counts_.total, params)
  out['enc'] = per_member(counts_.task_input, model.task_groups,
                          params['enc'])
  return out


GEN = Group('gen', modality_weights)
MAP = Group('map', pair_weights)
