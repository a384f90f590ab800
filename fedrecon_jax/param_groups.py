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


def count_ids(model, groups, trainable: dict) -> np.ndarray:
  """[S] static ints: for each entry of a client's contribution weights
  raveled (client.contribution_weights of `groups`, as server.client_sums
  ravels them), the class of clients that train it, numbered 0..R-1 over
  the classes used; -1 for an entry no client trains. A class is one entry
  of Counts ("holds modality m", "holds m and n", "saw task input m",
  "holds a sample"); T(n<-m) and T(m<-n) share one, as their counts are
  equal. dp.py divides each entry by its class's noised count.

  Found by running the groups' rules on Counts whose entries are their own
  ids (twice, with two encodings): a rule must select Counts entries, as
  every rule here does; one that computes with them is refused."""
  m = model.spec.num_modalities
  undirected: dict = {}
  pair = [undirected.setdefault(tuple(sorted(p)), len(undirected))
          for p in map(tuple, np.asarray(model.spec.pairs))]
  ids = np.concatenate([np.arange(m), m + np.asarray(pair, int),
                        m + len(undirected) + np.arange(m),
                        [2 * m + len(undirected)]]) + 1
  sizes = np.cumsum([0, m, len(pair), m, 1])

  def probe(code):
    c = code(ids).astype(np.float64)
    counts_ = Counts(*(c[a:b] for a, b in zip(sizes[:-1], sizes[1:])))
    counts_ = counts_._replace(total=counts_.total[0])
    weights = {g.name: g.weight(counts_, model, trainable[g.name])
               for g in groups}
    return np.concatenate([np.ravel(w) for w in jax.tree.leaves(weights)])

  first, second = probe(lambda i: i), probe(lambda i: 1000 + 3 * i)
  known = np.isin(first, ids) & (second == 1000 + 3 * first)
  never = (first == 0) & (second == 0)
  if not (known | never).all():
    raise ValueError(
        f'parameter groups {[g.name for g in groups]}: a weight rule does '
        'not select entries of the client counts (param_groups.Counts), so '
        '--dp_denominator=group cannot tell which clients trained an entry; '
        "use --dp_denominator=fixed or a rule that selects counts.")
  used = np.unique(first[known])
  return np.where(known, np.searchsorted(used, first), -1).astype(np.int32)
