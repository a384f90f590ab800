"""FedRecon's generator: per-modality VAEs with mappings T(n<-m) between
their latents (Wang et al. 2025), and 'raw', its inference-only read with
T = identity (the paper's no-mapping baseline for reconstruction and
retrieval)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrecon_jax.generators import base
from fedrecon_jax.param_groups import GEN, MAP


def objective(model, params, xs, pres, mu, logvar, noise, *, beta,
              match_weight, cross_decoding):
  """Mean over present m of the ELBO of z_m decoded by Dec_m and, through
  T(n<-m), by every other present Dec_n; plus L_match.

  The mappings run once per step on all their rows (row-wise, so the same
  as separate passes, in fewer and larger matmuls): on the sampled z and
  on mu (for L_match) together.
  """
  gen = params['gen']
  b = mu.shape[1]
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  z = base.reparam(mu, logvar, noise['eps'][:len(xs)])   # [M, B, d]
  kl = base.kl_std_normal(mu, logvar)                     # [M, B]
  both = model.map_pairs(params['map'], jnp.concatenate([z, mu], 1))
  tz, tmu = both[:, :b], both[:, b:]                      # [P, B, d], by dst
  self_nll = base.nll_own(model, gen, z, xs)[:, 0]        # [M, B]
  cross_by_src = cross_nll(model, gen, tz, xs, pres, noise['pick'],
                           cross_decoding)
  elbo = self_nll + cross_by_src + beta * kl              # [M, B]
  match = l_match(tmu, mu, dst, pres[dst] * pres[src])
  loss = base.masked_mean(elbo, pres, 0) + match_weight * match
  return loss, {'nll': base.masked_mean(self_nll + cross_by_src, pres, 0),
                'kl': base.masked_mean(kl, pres, 0), 'match': match}


def cross_nll(model, gen, tz, xs, pres, pick, cross_decoding):
  """tz: [P, B, d] mapped latents T(n<-m)(z_m), by pair -> [M, B], per
  source m the sum over present n != m of -log p(x_n | Dec_n(T(n<-m)(z_m)))
  (cross_decoding='one': one target n drawn per source from `pick` [M],
  scaled by M - 1; generator.CROSS_DECODING)."""
  num_m, b = len(xs), tz.shape[1]
  if cross_decoding == 'one':
    t, m = base.one_target(pick), jnp.arange(num_m)       # [M]
    pair = t * (num_m - 1) + m - (m > t)                  # index of (t_m <- m)
    return ((num_m - 1) * base.nll_each(model, gen, t, tz[pair], xs)
            * pres[t] * pres)
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  # Pairs are ordered by dst: decoder n's rows are its M - 1 sources.
  nll = base.nll_own(model, gen, tz.reshape(num_m, -1, tz.shape[-1]), xs)
  cross = nll.reshape(-1, b) * pres[dst] * pres[src]      # [P, B]
  return jnp.zeros((num_m, b), tz.dtype).at[src].add(cross)


def l_match(tmu, mu, dst, pair_mask):
  """L_match per sample [B]: T(n<-m)(mu_m) regresses onto the (fixed)
  target latent mu_n."""
  match = jnp.sum(jnp.square(tmu - jax.lax.stop_gradient(mu[dst])), -1)
  return base.masked_mean(match, pair_mask, 0)


def match_loss(model, params: dict, xs, present) -> jax.Array:
  """L_match alone (a task stage that trains the mappings), per sample [B]."""
  pres = present.T.astype(jnp.float32)
  mu, _ = model.encode(params['gen'], xs)
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  tmu = model.map_pairs(params['map'], jax.lax.stop_gradient(mu))
  return l_match(tmu, mu, dst, pres[dst] * pres[src])


def mean_of_mapped(tmu, mu, pres, model):
  """The mean over present m of tmu (by pair), a present modality keeping
  its own mu (the average of the mapped latents is this project's choice
  for several present modalities)."""
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  w = pres[src]                                           # [P, B]
  num = jnp.zeros_like(mu).at[dst].add(tmu * w[..., None])
  den = jnp.zeros_like(pres).at[dst].add(w)[..., None]
  mapped = num / jnp.maximum(den, 1.0)
  return jnp.where(pres[..., None] > 0, mu, mapped)


def infer_latents(model, params, xs, pres, mu, logvar):
  """Modality n's latent: the mean over present m of T(n<-m)(mu_m)."""
  del xs, logvar
  return mean_of_mapped(model.map_pairs(params['map'], mu), mu, pres, model)


def infer_raw(model, params, xs, pres, mu, logvar):
  """As infer_latents with T = identity: the mean of the present mu_m."""
  del params, xs, logvar
  return mean_of_mapped(mu[model.spec.pairs[:, 1]], mu, pres, model)


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """As infer_latents on sampled latents: z_m ~ q(z_m | x_m) for every
  modality; a present n keeps its z_n, an absent one gets the mean over
  present m of T(n<-m)(z_m). The mapping receives the sample, as it does
  in training (the cross decodes of `objective`)."""
  del xs
  z = base.sample_gaussian(key, mu, logvar)
  return mean_of_mapped(model.map_pairs(params['map'], z), z, pres, model)


def sample_raw(model, params, xs, pres, mu, logvar, key):
  """As sample_latents with T = identity."""
  z = base.sample_gaussian(key, mu, logvar)
  return infer_raw(model, params, xs, pres, z, logvar)


MAPPING = base.Generator('mapping', objective, infer_latents, sample_latents,
                         order=0, groups=(GEN, MAP), ablation='raw',
                         cross_decoding=True)
RAW = base.Generator('raw', None, infer_raw, sample_raw, order=100)
GENERATORS = (MAPPING, RAW)
