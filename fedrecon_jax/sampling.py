"""Cohort sampling inside the compiled round: a fixed-size cohort (a prefix
of one permutation) or a Poisson cohort (each client in independently with
probability q), both as static-size id arrays plus a validity mask.

Poisson sampling is what the add/remove privacy accounting of Opacus, TFF
and most papers assumes (privacy.py). Its cohort size is random, so the
round computes a static `capacity` of cohort slots, sized so that a round
with more members than slots (an overflow) has probability below
OVERFLOW_TAIL; members past the capacity are dropped and counted
(`cohort_overflow` in the round's metrics), never silently.

Slots are filled with the members in id order. Any order would do for the
sums; id order makes the cohort one pure function of (round key, K, q), the
same for every chunking and for a Python-loop reference.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

FIXED, POISSON = 'fixed', 'poisson'
MODES = (FIXED, POISSON)
# P(Binomial(K, q) > capacity) per round stays below this: at 1e-9 a run of
# 10^4 rounds overflows with probability under 1e-5.
OVERFLOW_TAIL = 1e-9


@functools.cache
def poisson_capacity(num_clients: int, rate: float,
                     tail: float = OVERFLOW_TAIL) -> int:
  """The smallest s with P(Binomial(K, q) > s) < tail (at most K).

  Summed from the top in log space with exact binomial terms, so it holds
  for the small K and large q of tests as for K = 10^4.
  """
  k, q = num_clients, rate
  if q >= 1.0:
    return k
  if q <= 0.0:
    return 1
  log_pmf = [math.lgamma(k + 1) - math.lgamma(i + 1) - math.lgamma(k - i + 1)
             + i * math.log(q) + (k - i) * math.log1p(-q)
             for i in range(k + 1)]
  above = 0.0          # P(X > s), built from s = K downwards
  for s in range(k, -1, -1):
    if s < k:
      above += math.exp(log_pmf[s + 1])
    if above >= tail:
      return min(k, s + 1)
  return 1


def fixed_ids(round_key, num_clients: int, positions, cohort_size):
  """Client ids at cohort positions [c] and valid [c] (positions past the
  cohort are zero-weight pads repeating the first id). The cohort is a
  prefix of one permutation, so it is the same for every chunking."""
  perm = jax.random.permutation(jax.random.fold_in(round_key, 0), num_clients)
  valid = positions < cohort_size
  return jnp.where(valid, perm[jnp.minimum(positions, num_clients - 1)],
                   perm[0]), valid


def poisson_members(round_key, num_clients: int, rate) -> jax.Array:
  """[K] bool: client k is in this round's cohort, independently with
  probability `rate` (one uniform per client from the cohort's stream)."""
  return jax.random.uniform(jax.random.fold_in(round_key, 0),
                            (num_clients,)) < rate


def poisson_ids(round_key, num_clients: int, rate, capacity: int, positions):
  """Ids [c] and valid [c] at slot positions [c] of a Poisson cohort
  (members in id order; slots past min(members, capacity) are pads
  repeating the first slot's id), and the members' count (int32, may
  exceed capacity: the overflow)."""
  member = poisson_members(round_key, num_clients, rate)
  # Stable: members first, each group in id order.
  order = jnp.argsort(~member, stable=True)
  count = member.sum().astype(jnp.int32)
  valid = positions < jnp.minimum(count, capacity)
  ids = jnp.where(valid, order[jnp.minimum(positions, num_clients - 1)],
                  order[0])
  return ids, valid, count
