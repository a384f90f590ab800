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
# Cross-modal decoding of the mapping and MoE objectives: 'all' decodes every
# source latent with every other present decoder (M(M-1) decodes); 'one'
# decodes it with one target drawn per source and step, scaled by M - 1: an
# unbiased estimate of the same loss with M decodes (needs modalities of one
# kind and shape).
CROSS_DECODING = ('all', 'one')
# Inference-only kind: a mapping generator read without its T (T = identity),
# the paper's no-mapping baseline for reconstruction and retrieval.
RAW = 'raw'


def kl_std_normal(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mu, e^logvar) || N(0, I)) over the last axis."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)


def product_of_experts(mu, logvar, mask, prior=1.0):
  """mu, logvar: [E, B, d]; mask: [E, B] -> product (mu, logvar) [B, d].

  The product over the leading (expert) axis of the masked experts and
  `prior` times the N(0, I) expert (1: included, 0: left out; a scalar or
  [B, 1]). With the prior, an all-absent sample gets the prior.
  """
  precision = jnp.exp(-logvar) * mask[..., None]
  joint_precision = prior + precision.sum(0)
  joint_mu = (mu * precision).sum(0) / joint_precision
  return joint_mu, -jnp.log(joint_precision)


def _masked_mean(values, mask, axis):
  return (values * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def _reparam(mu, logvar, eps):
  return mu + eps * jnp.exp(0.5 * logvar)


def draw_noise(key: jax.Array, num_modalities: int, batch: int,
               latent_dim: int) -> dict:
  """All randomness of one objective evaluation, drawn up front so that a
  reference can replay it: 'eps' [M + 1, B, d] standard normals (the
  reparameterisation noise; each kind uses the rows it needs), 'u'
  [M + 1, B] uniforms (MoPoE's subset choice) and 'pick' [M] uniforms (the
  target of each source for cross_decoding='one').

  One draw of uniforms v on (-1, 1) for all of it (each draw is its own
  threefry code, ~0.3 s of XLA:CPU compile): normals sqrt(2) erfinv(v), as
  jax.random.normal makes them, and uniforms (v + 1) / 2 on (0, 1).
  """
  m1 = num_modalities + 1
  sizes = (m1 * batch * latent_dim, m1 * batch, num_modalities)
  v = jax.random.uniform(key, (sum(sizes),), minval=np.nextafter(
      np.float32(-1), np.float32(0)), maxval=1.0)
  eps, u, pick = jnp.split(v, np.cumsum(sizes)[:-1])
  return {'eps': np.sqrt(2) * jax.lax.erf_inv(eps).reshape(m1, batch,
                                                          latent_dim),
          'u': ((u + 1) / 2).reshape(m1, batch), 'pick': (pick + 1) / 2}


def _one_target(pick: jax.Array) -> jax.Array:
  """pick: [M] uniforms -> [M] targets, target m uniform over the n != m."""
  m = pick.shape[0]
  step = jnp.minimum(jnp.floor(pick * (m - 1)), m - 2).astype(jnp.int32)
  return (jnp.arange(m) + 1 + step) % m


def _nll_each(model: Model, gen, index, z, xs):
  """-log p(x_index[k] | Dec_index[k](z[k])) -> [K, B] (one kind and shape)."""
  x_hat = model.decode_each(gen, index, z)               # [K, B, ...]
  return model.nll(0, x_hat, jnp.stack(xs)[index], batch_ndim=2)


def _nll_own(model: Model, gen, z, xs):
  """-log p(x_n | Dec_n(z[n])) for z [M, K * B, d] (K latents per sample,
  B samples) -> [M, K, B]."""
  x_hat = model.decode_all(gen, z)
  return jnp.stack([model.nll(n, xh.reshape(-1, *x.shape), x[None], 2)
                    for n, (xh, x) in enumerate(zip(x_hat, xs))])


def _nll_all_decoders(model: Model, gen, z, xs):
  """Decode each latent z [K, B, d] with every decoder -> NLL [M, K, B]."""
  k, b, d = z.shape
  return _nll_own(model, gen, jnp.broadcast_to(z.reshape(1, k * b, d),
                                              (len(xs), k * b, d)), xs)


def _subsets(m: int) -> np.ndarray:
  """All non-empty subsets of m modalities as a [S, M] float mask."""
  rows = [s for s in itertools.product((0.0, 1.0), repeat=m) if any(s)]
  return np.array(rows, np.float32)


def objective(kind: str, model: Model, params: dict, xs: Sequence[jax.Array],
              present: jax.Array, key: jax.Array, *, beta: float,
              match_weight: float, cross_decoding: str = 'all'):
  """Per-sample generator loss [B] and a dict of per-sample terms.

  Every negative log-likelihood is the modality kind's (`Model.nll`): Laplace
  for images, unit-variance Gaussian for features, with their constants.
  cross_decoding: see CROSS_DECODING (mapping and moe only).
  """
  noise = draw_noise(key, len(xs), present.shape[0], model.latent_dim)
  return objective_from_noise(kind, model, params, xs, present, noise,
                              beta=beta, match_weight=match_weight,
                              cross_decoding=cross_decoding)


def objective_from_noise(kind: str, model: Model, params: dict, xs,
                         present: jax.Array, noise: dict, *, beta: float,
                         match_weight: float, cross_decoding: str = 'all'):
  """`objective` with its randomness given (`draw_noise`)."""
  if kind not in _OBJECTIVES:
    raise ValueError(f'generator kind {kind!r} is not one of {GENERATORS}.')
  if cross_decoding not in CROSS_DECODING:
    raise ValueError(f'--cross_decoding={cross_decoding!r} is not one of '
                     f'{CROSS_DECODING}.')
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(params['gen'], xs)            # [M, B, d]
  return _OBJECTIVES[kind](model, params, xs, pres, mu, logvar, noise,
                           beta=beta, match_weight=match_weight,
                           cross_decoding=cross_decoding)


def _poe_objective(model, params, xs, pres, mu, logvar, noise, *, beta,
                   **unused):
  """MVAE (Wu & Goodman 2018): ELBO of all present modalities under the joint
  PoE (prior + present experts), plus for each present m the ELBO of x_m alone
  under PoE(prior, expert m)."""
  gen = params['gen']
  jmu, jlv = product_of_experts(mu, logvar, pres)         # [B, d]
  jz = _reparam(jmu, jlv, noise['eps'][0])
  jnll = (_nll_all_decoders(model, gen, jz[None], xs)[:, 0] * pres).sum(0)
  jkl = kl_std_normal(jmu, jlv)                           # [B]
  # Unimodal: expert m alone with the prior, a product over an axis of size 1.
  umu, ulv = product_of_experts(mu[None], logvar[None],
                                jnp.ones_like(pres)[None])
  uz = _reparam(umu, ulv, noise['eps'][1:])               # [M, B, d]
  unll = _nll_own(model, gen, uz, xs)[:, 0]               # [M, B]
  ukl = kl_std_normal(umu, ulv)                           # [M, B]
  uni = ((unll + beta * ukl) * pres).sum(0)
  return jnll + beta * jkl + uni, {'nll': jnll + (unll * pres).sum(0),
                                   'kl': jkl + (ukl * pres).sum(0)}


def _moe_objective(model, params, xs, pres, mu, logvar, noise, *, beta,
                   cross_decoding, **unused):
  """MMVAE (Shi et al. 2019), naive ELBO: mean over present m of
  sum over present n of -log p(x_n | z_m) + beta KL(q(z | x_m) || p)."""
  num_m, gen = len(xs), params['gen']
  z = _reparam(mu, logvar, noise['eps'][:num_m])          # [M, B, d]
  if cross_decoding == 'one':
    self_nll = _nll_own(model, gen, z, xs)[:, 0]          # [M, B]
    t = _one_target(noise['pick'])                        # [M]
    rec = self_nll + (num_m - 1) * _nll_each(model, gen, t, z, xs) * pres[t]
  else:
    nll = _nll_all_decoders(model, gen, z, xs)            # [M(dst), M(src), B]
    rec = (nll * pres[:, None]).sum(0)                    # [M(src), B]
  kl = kl_std_normal(mu, logvar)                          # [M, B]
  return _masked_mean(rec + beta * kl, pres, 0), {
      'nll': _masked_mean(rec, pres, 0), 'kl': _masked_mean(kl, pres, 0)}


def _mopoe_objective(model, params, xs, pres, mu, logvar, noise, *, beta,
                     **unused):
  """MoPoE (Sutter et al. 2021, thomassutter/MoPoE utils/BaseMMVae.py).

  Subsets S of the present modalities; q_S = PoE of S's experts, with the
  prior expert only when S holds all M modalities (`poe_fusion`). KL = mean
  over usable S of KL(q_S || p). Reconstruction, as the reference's
  `mixture_component_selection`: one z per sample from one subset, here drawn
  uniformly among the sample's usable subsets (noise 'u'), decoded by every
  present decoder.
  """
  num_m, b = pres.shape
  subsets = jnp.asarray(_subsets(num_m))                  # [S, M]
  usable = jnp.all(subsets[:, :, None] <= pres[None], axis=1).astype(
      jnp.float32)                                        # [S, B]
  prior = (subsets.sum(1) == num_m).astype(jnp.float32)   # [S]
  # Each subset over all its experts (never empty, so finite); a subset a
  # sample cannot use gets weight 0 below, so absent experts add nothing.
  smu, slv = jax.vmap(lambda s, p: product_of_experts(
      mu, logvar, jnp.broadcast_to(s[:, None], pres.shape), p))(subsets, prior)
  kl = _masked_mean(kl_std_normal(smu, slv), usable, 0)   # [B]
  count = usable.sum(0)
  k = jnp.minimum(jnp.floor(noise['u'][0] * count), count - 1)
  chosen = jnp.argmax(jnp.cumsum(usable, 0) > k, axis=0)  # [B], k-th usable
  rows = jnp.arange(b)
  z = _reparam(smu[chosen, rows], slv[chosen, rows], noise['eps'][0])
  rec = (_nll_all_decoders(model, params['gen'], z[None], xs)[:, 0] *
         pres).sum(0)
  return rec + beta * kl, {'nll': rec, 'kl': kl}


def _mapping_objective(model, params, xs, pres, mu, logvar, noise, *, beta,
                       match_weight, cross_decoding):
  """FedRecon: mean over present m of the ELBO of z_m decoded by Dec_m and,
  through T(n<-m), by every other present Dec_n; plus L_match.

  Each network runs once per step on all its rows (it is row-wise, so the
  result is the same as separate passes, in fewer and larger matmuls): the
  mappings on the sampled z and on mu (for L_match) together, and decoder n
  on z_n and on the M - 1 latents mapped to n together.
  """
  gen, num_m = params['gen'], len(xs)
  b, d = mu.shape[1:]
  pairs = model.spec.pairs
  dst, src = pairs[:, 0], pairs[:, 1]
  z = _reparam(mu, logvar, noise['eps'][:num_m])         # [M, B, d]
  kl = kl_std_normal(mu, logvar)                          # [M, B]
  both = model.map_pairs(params['map'], jnp.concatenate([z, mu], 1))
  tz, tmu = both[:, :b], both[:, b:]                      # [P, B, d], by dst
  pair_mask = pres[dst] * pres[src]                       # [P, B]
  if cross_decoding == 'one':
    self_nll = _nll_own(model, gen, z, xs)[:, 0]          # [M, B]
    t, m = _one_target(noise['pick']), jnp.arange(num_m)  # [M]
    pair = t * (num_m - 1) + m - (m > t)                  # index of (t_m <- m)
    cross_by_src = ((num_m - 1) * _nll_each(model, gen, t, tz[pair], xs) *
                    pres[t] * pres)                       # [M, B]
  else:
    # Decoder n's rows: z_n, then T(n<-m)(z_m) for the M - 1 sources m.
    rows = jnp.concatenate([z[:, None], tz.reshape(num_m, num_m - 1, b, d)],
                           1)                             # [M, M, B, d]
    nll = _nll_own(model, gen, rows.reshape(num_m, -1, d), xs)  # [M(dst), M, B]
    self_nll, cross = nll[:, 0], nll[:, 1:].reshape(-1, b)  # [M, B], [P, B]
    cross_by_src = jnp.zeros_like(self_nll).at[src].add(cross * pair_mask)
  elbo = self_nll + cross_by_src + beta * kl              # [M, B]
  # L_match: T(n<-m)(mu_m) regresses onto the (fixed) target latent mu_n.
  match = jnp.sum(jnp.square(tmu - jax.lax.stop_gradient(mu[dst])), -1)
  match = _masked_mean(match, pair_mask, 0)               # [B]
  loss = _masked_mean(elbo, pres, 0) + match_weight * match
  return loss, {'nll': _masked_mean(self_nll + cross_by_src, pres, 0),
                'kl': _masked_mean(kl, pres, 0), 'match': match}


_OBJECTIVES = {'mapping': _mapping_objective, 'poe': _poe_objective,
               'moe': _moe_objective, 'mopoe': _mopoe_objective}


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
  poe: the joint PoE mean of the present experts and the prior. mopoe: the
  same, the prior included only when all M are present (as in training).
  moe: the mean of the present experts' means.
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
  if kind == 'poe':
    joint, _ = product_of_experts(mu, logvar, pres)
  elif kind == 'mopoe':
    # Prior when all are present, and when none is (so the product is proper).
    count = pres.sum(0)[:, None]                          # [B, 1]
    prior = ((count == len(xs)) | (count == 0)).astype(jnp.float32)
    joint, _ = product_of_experts(mu, logvar, pres, prior)
  elif kind == 'moe':
    joint = _masked_mean(mu, pres[..., None], 0)
  else:
    raise ValueError(f'generator kind {kind!r} is not one of '
                     f'{GENERATORS + (RAW,)}.')
  return jnp.broadcast_to(joint, mu.shape)


def reconstruct(kind: str, model: Model, params: dict, xs, present):
  """Reconstruction of every modality from the present ones: per modality [B, ...]."""
  z = infer_latents(kind, model, params, xs, present)
  return tuple(model.decode_all(params['gen'], z))


def complete(kind: str, model: Model, params: dict, xs, present):
  """Real data where present, Dec_n(T(n<-m)(mu_m)) (or the joint) where not."""
  x_hat = reconstruct(kind, model, jax.lax.stop_gradient(params), xs, present)
  return tuple(
      jnp.where(present[:, n].reshape(-1, *([1] * (x.ndim - 1))), x, xh)
      for n, (x, xh) in enumerate(zip(xs, x_hat)))
