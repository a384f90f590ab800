"""MoE: MMVAE (Shi et al. 2019), a mixture-of-experts joint posterior."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrecon_jax.generators import base


def objective(model, params, xs, pres, mu, logvar, noise, *, beta,
              cross_decoding, **unused):
  """Naive ELBO: mean over present m of sum over present n of
  -log p(x_n | z_m) + beta KL(q(z | x_m) || p). cross_decoding='one'
  decodes z_m with one target drawn per source and step, scaled by M - 1."""
  num_m, gen = len(xs), params['gen']
  z = base.reparam(mu, logvar, noise['eps'][:num_m])      # [M, B, d]
  if cross_decoding == 'one':
    self_nll = base.nll_own(model, gen, z, xs)[:, 0]      # [M, B]
    t = base.one_target(noise['pick'])                    # [M]
    rec = self_nll + (num_m - 1) * base.nll_each(model, gen, t, z,
                                                 xs) * pres[t]
  else:
    nll = base.nll_all_decoders(model, gen, z, xs)        # [M(dst), M(src), B]
    rec = (nll * pres[:, None]).sum(0)                    # [M(src), B]
  kl = base.kl_std_normal(mu, logvar)                     # [M, B]
  return base.masked_mean(rec + beta * kl, pres, 0), {
      'nll': base.masked_mean(rec, pres, 0),
      'kl': base.masked_mean(kl, pres, 0)}


def infer_latents(model, params, xs, pres, mu, logvar):
  """The mean of the present experts' means, for every modality."""
  del model, params, xs
  return jnp.broadcast_to(base.masked_mean(mu, pres[..., None], 0), mu.shape)


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """One draw of the mixture: a present expert m picked uniformly per
  sample, then z ~ q(z | x_m), the same z for every modality."""
  del model, params, xs
  pick_key, eps_key = jax.random.split(key)
  src = base.pick_present(jax.random.uniform(pick_key, pres.shape[1:]),
                          pres)                           # [B]
  rows = jnp.arange(mu.shape[1])
  z = base.sample_gaussian(eps_key, mu[src, rows], logvar[src, rows])
  return jnp.broadcast_to(z, mu.shape)


GENERATORS = (base.Generator('moe', objective, infer_latents, sample_latents,
                             order=2, cross_decoding=True),)
