"""Generator objectives (FedRecon's mapping MVAE, PoE, MoE, MoPoE) and the
completion of missing modalities.

Every function takes `present`, a [B, M] bool mask of the modalities a sample
really has. An absent modality's expert, decoder term or mapping pair is
masked out, never branched on, so one compiled program serves all clients.
Losses are returned per sample ([B]); the caller averages over real samples.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax.models import Model

GENERATORS = ('mapping', 'poe', 'moe', 'mopoe')
# Inference-only kind: a mapping generator read without its T (T = identity),
# the paper's no-mapping baseline for reconstruction and retrieval.
RAW = 'raw'


def gaussian_nll(x_hat: jax.Array, x: jax.Array, batch_ndim: int = 1):
  """Unit-variance Gaussian NLL (up to a constant), summed over all axes after
  the first `batch_ndim` (x and x_hat broadcast against each other)."""
  sq = jnp.square(x_hat - x)
  return 0.5 * sq.reshape(*sq.shape[:batch_ndim], -1).sum(-1)


def kl_std_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, e^logvar) || N(0, I)) over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)


def product_of_experts(mu, logvar, mask):
  """mu, logvar: [M, B, d]; mask: [M, B] -> joint (mu, logvar) [B, d].

  Includes the N(0, I) prior expert, so an all-absent sample gets the prior.
  """
  precision = jnp.exp(-logvar) * mask[..., None]
  joint_precision = 1.0 + precision.sum(0)
  joint_mu = (mu * precision).sum(0) / joint_precision
  return joint_mu, -jnp.log(joint_precision)


def _masked_mean(values, mask, axis):
  return (values * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def _sample(key, mu, logvar):
  return mu + jax.random.normal(key, mu.shape) * jnp.exp(0.5 * logvar)


def _nll_all_decoders(model: Model, gen, z, xs):
  """Decode each latent z [K, B, d] with every decoder -> NLL [M, K, B]."""
  k, b, d = z.shape
  out = []
  for n, x in enumerate(xs):
    x_hat = model.decode(gen, n, z.reshape(k * b, d)).reshape(k, b, *x.shape[1:])
    out.append(gaussian_nll(x_hat, x[None], batch_ndim=2))
  return jnp.stack(out)


def _subsets(m: int) -> np.ndarray:
  """All non-empty subsets of m modalities as a [S, M] float mask."""
  rows = [s for s in itertools.product((0.0, 1.0), repeat=m) if any(s)]
  return np.array(rows, np.float32)


def objective(kind: str, model: Model, params: dict, xs: Sequence[jax.Array],
              present: jax.Array, key: jax.Array, *, beta: float,
              match_weight: float):
  """Per-sample generator loss [B] and a dict of per-sample terms."""
  gen = params['gen']
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(gen, xs)                      # [M, B, d]
  kl = kl_std_normal(mu, logvar)                          # [M, B]
  if kind == 'mapping':
    return _mapping_objective(model, params, xs, pres, mu, logvar, kl, key,
                              beta, match_weight)
  if kind == 'poe':
    jmu, jlv = product_of_experts(mu, logvar, pres)
    z = _sample(key, jmu, jlv)[None]                      # [1, B, d]
    joint = (_nll_all_decoders(model, gen, z, xs)[:, 0] * pres).sum(0)
    joint += beta * kl_std_normal(jmu, jlv)
    # Wu & Goodman's unimodal ELBOs: each expert alone with the prior expert.
    umu, ulv = product_of_experts(mu[:, None], logvar[:, None],
                                  jnp.ones((mu.shape[0], 1, mu.shape[1])))
    uz = _sample(jax.random.fold_in(key, 1), umu, ulv)     # [M, B, d]
    self_nll = jnp.stack([gaussian_nll(model.decode(gen, m, uz[m]), x)
                          for m, x in enumerate(xs)])
    uni = ((self_nll + beta * kl_std_normal(umu, ulv)) * pres).sum(0)
    loss = joint + uni
    return loss, {'nll': joint, 'kl': kl_std_normal(jmu, jlv)}
  if kind == 'moe':
    z = _sample(key, mu, logvar)                          # [M, B, d]
    nll = _nll_all_decoders(model, gen, z, xs)            # [M(dst), M(src), B]
    per_src = (nll * pres[:, None]).sum(0) + beta * kl    # [M, B]
    return _masked_mean(per_src, pres, 0), {'nll': _masked_mean(
        (nll * pres[:, None]).sum(0), pres, 0), 'kl': _masked_mean(kl, pres, 0)}
  if kind == 'mopoe':
    subsets = jnp.asarray(_subsets(len(xs)))              # [S, M]
    # A subset is usable by a sample only if all its modalities are present.
    usable = jnp.all((subsets[:, :, None] <= pres[None]), axis=1)  # [S, B]
    smu, slv = jax.vmap(
        lambda s: product_of_experts(mu, logvar, s[:, None] * pres))(subsets)
    z = _sample(key, smu, slv)                            # [S, B, d]
    nll = (_nll_all_decoders(model, gen, z, xs) * pres[:, None]).sum(0)
    skl = kl_std_normal(smu, slv)
    per_subset = nll + beta * skl
    usable = usable.astype(jnp.float32)
    return _masked_mean(per_subset, usable, 0), {
        'nll': _masked_mean(nll, usable, 0), 'kl': _masked_mean(skl, usable, 0)}
  raise ValueError(f'generator kind {kind!r} is not one of {GENERATORS}.')


def _mapping_objective(model, params, xs, pres, mu, logvar, kl, key, beta,
                       match_weight):
  """FedRecon: mean over present m of the ELBO of z_m decoded by Dec_m and,
  through T(n<-m), by every other present Dec_n; plus L_match."""
  gen, num_m = params['gen'], len(xs)
  pairs = model.spec.pairs
  dst, src = pairs[:, 0], pairs[:, 1]
  z = _sample(key, mu, logvar)                            # [M, B, d]
  self_nll = jnp.stack([gaussian_nll(model.decode(gen, m, z[m]), x)
                        for m, x in enumerate(xs)])       # [M, B]
  tz = model.map_pairs(params['map'], z)                  # [P, B, d], by dst
  per_dst = tz.reshape(num_m, num_m - 1, *tz.shape[1:])
  cross = jnp.concatenate([
      gaussian_nll(model.decode(gen, n, per_dst[n].reshape(-1, tz.shape[-1]))
                   .reshape(num_m - 1, *xs[n].shape), xs[n][None], 2)
      for n in range(num_m)])                             # [P, B]
  pair_mask = pres[dst] * pres[src]                       # [P, B]
  cross_by_src = jnp.zeros_like(self_nll).at[src].add(cross * pair_mask)
  elbo = self_nll + cross_by_src + beta * kl              # [M, B]
  # L_match: T(n<-m)(mu_m) regresses onto the (fixed) target latent mu_n.
  tmu = model.map_pairs(params['map'], mu)
  match = jnp.sum(jnp.square(tmu - jax.lax.stop_gradient(mu[dst])), -1)
  match = _masked_mean(match, pair_mask, 0)               # [B]
  loss = _masked_mean(elbo, pres, 0) + match_weight * match
  return loss, {'nll': _masked_mean(self_nll + cross_by_src, pres, 0),
                'kl': _masked_mean(kl, pres, 0), 'match': match}


def match_loss(model: Model, params: dict, xs, present) -> jax.Array:
  """L_match alone (stage 2 with a trainable mapping), per sample [B]."""
  pres = present.T.astype(jnp.float32)
  mu, _ = model.encode(params['gen'], xs)
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  tmu = model.map_pairs(params['map'], jax.lax.stop_gradient(mu))
  match = jnp.sum(jnp.square(tmu - jax.lax.stop_gradient(mu[dst])), -1)
  return _masked_mean(match, pres[dst] * pres[src], 0)


def infer_latents(kind: str, model: Model, params: dict, xs, present):
  """Latent of every modality from the present ones -> [M, B, d].

  mapping: the mean over present m of T(n<-m)(mu_m) (the average of the mapped
  latents is this project's choice for several present modalities); a present
  modality keeps its own mu. raw: the same with T = identity (mu_m itself).
  poe / mopoe: the joint PoE mean of the present experts. moe: the mean of the
  present experts' means.
  """
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(params['gen'], xs)
  if kind in ('mapping', RAW):
    dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
    tmu = model.map_pairs(params['map'], mu) if kind == 'mapping' else mu[src]
    w = pres[src]                                         # [P, B]
    num = jnp.zeros_like(mu).at[dst].add(tmu * w[..., None])
    den = jnp.zeros_like(pres).at[dst].add(w)[..., None]
    mapped = num / jnp.maximum(den, 1.0)
    return jnp.where(pres[..., None] > 0, mu, mapped)
  if kind in ('poe', 'mopoe'):
    joint, _ = product_of_experts(mu, logvar, pres)
  elif kind == 'moe':
    joint = _masked_mean(mu, pres[..., None], 0)
  else:
    raise ValueError(f'generator kind {kind!r} is not one of '
                     f'{GENERATORS + (RAW,)}.')
  return jnp.broadcast_to(joint, mu.shape)


def reconstruct(kind: str, model: Model, params: dict, xs, present):
  """Reconstruction of every modality from the present ones: per modality [B, ...]."""
  z = infer_latents(kind, model, params, xs, present)
  return tuple(model.decode(params['gen'], n, z[n]) for n in range(len(xs)))


def complete(kind: str, model: Model, params: dict, xs, present):
  """Real data where present, Dec_n(T(n<-m)(mu_m)) (or the joint) where not."""
  x_hat = reconstruct(kind, model, jax.lax.stop_gradient(params), xs, present)
  return tuple(
      jnp.where(present[:, n].reshape(-1, *([1] * (x.ndim - 1))), x, xh)
      for n, (x, xh) in enumerate(zip(xs, x_hat)))
