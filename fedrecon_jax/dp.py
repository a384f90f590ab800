"""Client-level DP-FedAvg (McMahan et al. 2018, "Learning Differentially
Private Recurrent Language Models", Algorithm 1 with the fixed-denominator
estimator and uniform client weights w_k = 1), written as FedAvg's sums.

Each client's update Delta_k = (local params - server params) over the
groups it trains this stage is clipped to L2 norm C as a whole (one norm
over all its leaves): Delta_k s_k with s_k = min(1, C / ||Delta_k||). The
server adds N(0, (z C)^2) to every entry of the sum of clipped updates and
divides by the expected cohort size D (fixed denominator: the sensitivity of
the estimate to one client is C / D whatever the sampled cohort):

  new = x + (sum_k s_k Delta_k + noise) / D
      = (sum_k s_k p_k + (D - sum_k s_k) x + noise) / D

The second form is what the round computes: server.client_sums with weight
s_k on every entry of client k's params p_k, the missing mass D - sum s_k on
the server params x, and D as every entry's denominator in
server.apply_sums. With C = inf and z = 0, s_k = 1 exactly, the mass and the
noise are exact zeros, and the round takes FedAvg's own operations with
uniform weights: bitwise the same model (tests/test_dp.py).

C and z may be traced (per-run numbers on the runs axis).

Adaptive clipping (Andrew, Thakkar, McMahan, Ramaswamy, NeurIPS 2021,
"Differentially Private Learning with Adaptive Clipping"): each client
also reports the bit b_k = [||Delta_k|| <= C]; the server releases the
centred count sum_k (b_k - 1/2) + N(0, sigma_b^2), estimates the unclipped
fraction b = (that + D/2) / D and moves the clip geometrically towards the
target quantile gamma: C <- C exp(-eta (b - gamma)). gamma, eta and sigma_b
are per-run numbers (h.dp_target_quantile, h.dp_clip_lr,
h.dp_clip_count_stddev); with eta = 0 the clip stays at --dp_clip exactly
and the count is not released (privacy.py accounts it only when eta > 0).
Centring halves the count's sensitivity under add/remove (1/2, not 1).

Sampling: a fixed-size cohort drawn without replacement (accounted under
replace-one) or a Poisson cohort (add/remove); D is the cohort size or the
expected cohort qK (rounds._cohort, privacy.py).

Per-group denominators (--dp_denominator=group, the default): a group only
some clients train (the mappings T(n<-m), a modality's encoder and decoder)
is divided by a noised count of the clients that trained it, not by D. One
D on every group shrinks such a group's step by its share of trainers, and
measured on the cross-device page that collapses the generator even with
C = inf, z = 0 (experiments/results/privacy_utility_cross_device_cpu.md).
Each client's update is first masked to the entries it trained (weight >
0) and then clipped. Which clients train an entry is read off a class of
the client's counts (param_groups.count_ids: e.g. "holds modality m",
"holds m and n"); each client also reports its R membership bits u_k, the
server releases sum_k (u_k - 1/2) + N(0, (mu sqrt(R) / 2)^2 I_R) (centred:
sensitivity sqrt(R) / 2 under add/remove; mu = h.dp_group_count_multiplier)
and an entry's denominator is its class's count + D/2; a count below 1
leaves the entry at its server value (as no trainer does without DP).
privacy.py composes the count's Gaussian with the update's.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from fedrecon_jax import server


def clip_scales(deltas, clip):
  """[c]: min(1, clip / ||delta_k||) per row of deltas [c, N] (clip a
  scalar, may be inf); 0 for a row that is not finite (that client is left
  out, as server.client_sums leaves it out)."""
  chex.assert_rank(deltas, 2)
  norm = jnp.sqrt(jnp.sum(jnp.square(deltas), axis=1))
  scale = jnp.minimum(1.0, clip / jnp.maximum(norm, 1e-30))
  return jnp.where(jnp.isfinite(norm), scale, 0.0)


def client_sums(local, weights, metrics, valid, trainable, clip,
                ids=None) -> dict:
  """server.client_sums with 'num' the sum of the clients' params each
  weighted by its clip scale s_k ([N], one client's trained params raveled),
  'mass' the sum of the scales and 'unclipped' the centred count
  sum_k (b_k - 1/2) of clients within the clip (adaptive clipping): all add
  up across chunks as the weighted sums do. The rest (participants,
  skipped, metrics) is counted from the clients' own `weights`.

  With ids (per-group denominators, module docstring; [S] static ints, the
  class of each entry of a client's weights raveled, -1 for none) each
  client's update counts only on the entries it trained (weight > 0): then
  'mass' is [S], sum_k s_k over the clients that trained each entry, and
  'members' [R] the centred count sum_k (u_k - 1/2) of each class.

  local: leaves [c, *shape]; trainable: the server's, leaves [*shape];
  valid: bool [c]; clip: scalar.
  """
  chex.assert_rank(valid, 1)
  sums = server.client_sums(local, weights, metrics, valid)
  flat = jax.vmap(lambda t: ravel_pytree(t)[0])(local)             # [c, N]
  deltas = flat - ravel_pytree(trainable)[0][None]
  if ids is None:
    trained = jax.tree.map(lambda w: jnp.ones(len(valid)), weights)
  else:
    trained = jax.tree.map(lambda w: (w > 0).astype(jnp.float32), weights)
    member = jax.vmap(lambda t: ravel_pytree(t)[0])(trained)        # [c, S]
    deltas = deltas * member[:, sums['den'].index(trainable)]
  scale = jnp.where(valid, clip_scales(deltas, clip), 0.0)        # [c]
  scaled = server.client_sums(
      local, jax.tree.map(lambda t: t * _expand_to(scale, t), trained), {},
      valid)
  norm = jnp.sqrt(jnp.sum(jnp.square(deltas), axis=1))
  # A non-finite update counts as clipped (b = 0), as it is left out.
  bit = (norm <= clip).astype(jnp.float32)
  out = {**sums, 'num': scaled['num'],
         'unclipped': jnp.sum(jnp.where(valid, bit - 0.5, 0.0))}
  if ids is None:
    return {**out, 'mass': jnp.sum(scale)}
  first = _class_entries(ids)
  return {**out, 'mass': scaled['den'].sums,
          'members': jnp.sum(jnp.where(valid[:, None],
                                       member[:, first] - 0.5, 0.0), 0)}


def _expand_to(scale, w):
  """scale [c] with trailing unit axes up to w's rank (w: [c, *prefix])."""
  return scale.reshape(scale.shape + (1,) * (w.ndim - 1))


def _class_entries(ids) -> np.ndarray:
  """[R] static: for each class 0..R-1 of `ids`, its first weight entry."""
  classes, first = np.unique(np.asarray(ids), return_index=True)
  return first[classes >= 0].astype(np.int32)


def next_clip(key, clip, unclipped, h, denominator):
  """The clip after this round (Andrew et al. 2021, Algorithm 1's
  geometric update): b = (unclipped + N(0, sigma_b^2)) / D + 1/2, the noised
  fraction of clients within `clip`; C exp(-eta (b - gamma)).

  unclipped: the centred count (client_sums); h: hparams.Hparams with
  dp_target_quantile (gamma), dp_clip_lr (eta), dp_clip_count_stddev
  (sigma_b); denominator: D. With eta = 0 the clip is returned unchanged
  (exp(0) = 1; inf stays inf)."""
  d = jnp.asarray(denominator, jnp.float32)
  noised = unclipped + h.dp_clip_count_stddev * jax.random.normal(
      key, (), jnp.float32)
  fraction = noised / d + 0.5
  step = jnp.exp(-h.dp_clip_lr * (fraction - h.dp_target_quantile))
  return jnp.where(h.dp_clip_lr == 0, clip, clip * step)


def finish_sums(key, trainable, sums, clip, noise_multiplier, denominator,
                ids=None, count_multiplier=0.0) -> dict:
  """Turns DP `client_sums` (added up over the cohort) into sums whose
  quotient server.apply_sums takes as the new params: num = sum s_k p_k +
  (den - mass) x + N(0, (zC)^2), with den = D on every entry (D =
  denominator, the fixed or expected cohort size; x = trainable raveled),
  or with ids each entry's class count members + N(0, (mu sqrt(R)/2)^2) +
  D/2, 0 where that is below 1 (mu = count_multiplier; module docstring).
  The update noise is one draw of shape [N] from `key`, the count noise
  one of shape [R] from fold_in(key, 1)."""
  base = ravel_pytree(trainable)[0]
  d = jnp.asarray(denominator, jnp.float32)
  # z = 0 with C = inf (no DP) must add nothing, not 0 * inf = nan.
  stddev = jnp.where(noise_multiplier == 0, 0.0, noise_multiplier * clip)
  noise = stddev * jax.random.normal(key, base.shape, jnp.float32)
  den = sums['den']
  if ids is None:
    per_weight = jnp.full_like(den.sums, d)
    mass = sums['mass']
  else:
    members = sums['members']
    count_std = count_multiplier * np.sqrt(members.shape[0]) / 2
    counts = members + d / 2 + count_std * jax.random.normal(
        jax.random.fold_in(key, 1), members.shape, jnp.float32)
    ids = np.asarray(ids)
    per_weight = jnp.where(ids >= 0, counts[np.maximum(ids, 0)], 0.0)
    per_weight = jnp.where(per_weight >= 1, per_weight, 0.0)
    # apply_sums leaves an entry whose den is 0 at its server value.
    mass = server.WeightSums(sums['mass'], den.shapes).spread(trainable)
  weight = server.WeightSums(per_weight, den.shapes)
  return {**sums, 'num': sums['num'] + (weight.spread(trainable) - mass)
          * base + noise, 'den': weight}
