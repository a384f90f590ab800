"""Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", Algorithm 1 with the fixed-denominator
estimator): pure functions over pytrees.

Each client's update Delta_k = (local params - server params) over the
groups it trains this stage is clipped to L2 norm C as a whole (one norm
over all its leaves); the server sums the clipped updates of the cohort,
adds N(0, (z C)^2) to every entry of the sum and divides by the expected
cohort size q K (fixed denominator: the sensitivity of the estimate to one
client is C / (q K) whatever the sampled cohort). C and z may be traced
(per-run numbers on the runs axis); C = inf and z = 0 give the unweighted
mean of the updates.

Sampling assumption: the cohort is a fixed-size sample without replacement
(rounds.cohort_ids), and privacy.py accounts for exactly that
(dp_accounting's SampledWithoutReplacementDpEvent under RDP).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from fedrecon_jax import server


def clip_update(update, clip):
  """An update pytree scaled to global L2 norm <= clip (scalar, may be
  inf): update * min(1, clip / ||update||)."""
  leaves = jax.tree.leaves(update)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in leaves))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
  return jax.tree.map(lambda x: (x * scale).astype(x.dtype), update)


def clipped_sum(updates, valid, clip):
  """Sum over clients of the clipped updates.

  updates: pytree with leaves [c, ...] (one row per cohort position);
  valid: bool [c] (pads contribute nothing); clip: scalar.
  Returns a pytree of leaves [...].
  """
  chex.assert_rank(valid, 1)
  clipped = jax.vmap(clip_update, in_axes=(0, None))(updates, clip)
  w = valid.astype(jnp.float32)
  return jax.tree.map(
      lambda x: jnp.tensordot(w, x.astype(jnp.float32), axes=1), clipped)


def noise_like(key, tree, stddev):
  """Gaussian noise N(0, stddev^2) with `tree`'s structure: one key per
  leaf split from `key` in leaf order."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([
      stddev * jax.random.normal(k, x.shape, jnp.float32)
      for k, x in zip(keys, leaves)])


def noisy_mean(key, summed, clip, noise_multiplier, denominator):
  """(sum + N(0, (z C)^2)) / denominator, leafwise; denominator = the
  expected cohort size."""
  # z = 0 with C = inf (no DP) must add nothing, not 0 * inf = nan.
  stddev = jnp.where(noise_multiplier == 0, 0.0, noise_multiplier * clip)
  noise = noise_like(key, summed, stddev)
  return jax.tree.map(lambda s, n: (s + n) / denominator, summed, noise)


def client_sums(local, weights, metrics, valid, trainable, clip) -> dict:
  """server.client_sums with 'num' the sum of the clients' clipped deltas
  ([N], over one client's trained params raveled) instead of their weighted
  params: these add up across chunks as the weighted sums do. A client with
  a non-finite update is left out, as server.client_sums leaves it out.

  local: leaves [c, *shape]; trainable: the server's, leaves [*shape].
  """
  sums = server.client_sums(local, weights, metrics, valid)
  deltas = (jax.vmap(lambda t: ravel_pytree(t)[0])(local)
            - ravel_pytree(trainable)[0][None])                   # [c, N]
  ok = jnp.isfinite(deltas.sum(1))
  deltas = jnp.where(ok[:, None], deltas, 0.0)
  return {**sums, 'num': clipped_sum(deltas, valid & ok, clip)}


def finish_sums(key, trainable, sums, clip, noise_multiplier,
                denominator) -> dict:
  """Turns DP `client_sums` (added up over the cohort) into sums whose
  quotient server.apply_sums takes as the mean: num = D * server + clipped
  sum + N(0, (zC)^2), den = D on every entry, so num / den = server +
  noisy_mean (D = denominator, the expected cohort size)."""
  base = ravel_pytree(trainable)[0]
  d = jnp.asarray(denominator, jnp.float32)
  mean = noisy_mean(key, sums['num'], clip, noise_multiplier, d)
  den = sums['den']
  return {**sums, 'num': (base + mean) * d,
          'den': server.WeightSums(jnp.full_like(den.sums, d), den.shapes)}
