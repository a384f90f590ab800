"""MoPoE (Sutter et al. 2021): a mixture of the PoEs of every subset."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax.generators import base


def subsets(m: int) -> np.ndarray:
  """All non-empty subsets of m modalities as a [S, M] float mask."""
  rows = [s for s in itertools.product((0.0, 1.0), repeat=m) if any(s)]
  return np.array(rows, np.float32)


def objective(model, params, xs, pres, mu, logvar, noise, *, beta, **unused):
  """thomassutter/MoPoE utils/BaseMMVae.py.

  Subsets S of the present modalities; q_S = PoE of S's experts, with the
  prior expert only when S holds all M modalities (`poe_fusion`). KL = mean
  over usable S of KL(q_S || p). Reconstruction, as the reference's
  `mixture_component_selection`: one z per sample from one subset, here drawn
  uniformly among the sample's usable subsets (noise 'u'), decoded by every
  present decoder.
  """
  num_m, b = pres.shape
  subs = jnp.asarray(subsets(num_m))                      # [S, M]
  usable = jnp.all(subs[:, :, None] <= pres[None], axis=1).astype(
      jnp.float32)                                        # [S, B]
  prior = (subs.sum(1) == num_m).astype(jnp.float32)      # [S]
  # Each subset over all its experts (never empty, so finite); a subset a
  # sample cannot use gets weight 0 below, so absent experts add nothing.
  smu, slv = jax.vmap(lambda s, p: base.product_of_experts(
      mu, logvar, jnp.broadcast_to(s[:, None], pres.shape), p))(subs, prior)
  kl = base.masked_mean(base.kl_std_normal(smu, slv), usable, 0)   # [B]
  chosen = base.pick_present(noise['u'][0], usable)      # [B]
  rows = jnp.arange(b)
  z = base.reparam(smu[chosen, rows], slv[chosen, rows], noise['eps'][0])
  rec = (base.nll_all_decoders(model, params['gen'], z[None], xs)[:, 0] *
         pres).sum(0)
  return rec + beta * kl, {'nll': rec, 'kl': kl}


def infer_latents(model, params, xs, pres, mu, logvar):
  """The joint PoE mean of the present experts, the prior included only when
  all M are present (as in training) or none is (so the product is
  proper)."""
  del model, params
  joint, _ = _joint(xs, pres, mu, logvar)
  return jnp.broadcast_to(joint, mu.shape)


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """One draw of the joint posterior `infer_latents` reads the mean of
  (the subset of the present modalities), the same z for every modality."""
  del model, params
  return jnp.broadcast_to(
      base.sample_gaussian(key, *_joint(xs, pres, mu, logvar)), mu.shape)


def _joint(xs, pres, mu, logvar):
  count = pres.sum(0)[:, None]                            # [B, 1]
  prior = ((count == len(xs)) | (count == 0)).astype(jnp.float32)
  return base.product_of_experts(mu, logvar, pres, prior)


GENERATORS = (base.Generator('mopoe', objective, infer_latents,
                             sample_latents, order=3),)
