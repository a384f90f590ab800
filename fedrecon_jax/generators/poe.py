"""PoE: the MVAE of Wu & Goodman 2018 (a product-of-experts joint posterior)."""

from __future__ import annotations

import jax.numpy as jnp

from fedrecon_jax.generators import base


def objective(model, params, xs, pres, mu, logvar, noise, *, beta, **unused):
  """ELBO of all present modalities under the joint PoE (prior + present
  experts), plus for each present m the ELBO of x_m alone under PoE(prior,
  expert m)."""
  gen = params['gen']
  jmu, jlv = base.product_of_experts(mu, logvar, pres)    # [B, d]
  jz = base.reparam(jmu, jlv, noise['eps'][0])
  jnll = (base.nll_all_decoders(model, gen, jz[None], xs)[:, 0] * pres).sum(0)
  jkl = base.kl_std_normal(jmu, jlv)                      # [B]
  # Unimodal: expert m alone with the prior, a product over an axis of size 1.
  umu, ulv = base.product_of_experts(mu[None], logvar[None],
                                     jnp.ones_like(pres)[None])
  uz = base.reparam(umu, ulv, noise['eps'][1:])           # [M, B, d]
  unll = base.nll_own(model, gen, uz, xs)[:, 0]           # [M, B]
  ukl = base.kl_std_normal(umu, ulv)                      # [M, B]
  uni = ((unll + beta * ukl) * pres).sum(0)
  return jnll + beta * jkl + uni, {'nll': jnll + (unll * pres).sum(0),
                                   'kl': jkl + (ukl * pres).sum(0)}


def infer_latents(model, params, xs, pres, mu, logvar):
  """The joint PoE mean of the present experts and the prior, for every
  modality."""
  del model, params, xs
  joint, _ = base.product_of_experts(mu, logvar, pres)
  return jnp.broadcast_to(joint, mu.shape)


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """One draw of the joint PoE of the present experts and the prior, the
  same z for every modality."""
  del model, params, xs
  jmu, jlv = base.product_of_experts(mu, logvar, pres)
  return jnp.broadcast_to(base.sample_gaussian(key, jmu, jlv), mu.shape)


GENERATORS = (base.Generator('poe', objective, infer_latents, sample_latents,
                             order=1),)
