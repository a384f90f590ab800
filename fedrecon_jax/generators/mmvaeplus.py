"""MMVAE+ (Palumbo, Daunhawer, Vogt, ICLR 2023; epalu/mmvaeplus).

Each modality m has a latent u_m = (w_m, z_m): w_m modality-specific, z_m
shared. The encoders output, for u_m's two halves, a Laplace location and a
raw scale; the scale is softmax(raw) * size + eta over each half, as the
reference's encoders make it (so an encoder's 'log-variance' output is read
as that raw scale here). With latent_dim d, w and z have d entries each; the
decoders read the 2d of u.

The objective is the reference's mixture ELBO (`_m_iwae` with K = 1), averaged
over the present sources r, with u_r = (w_r, z_r) ~ q(u | x_r):
  log p(x_r | u_r) + sum_{n != r present} log p(x_n | (w~_n, z_r))
  + beta (log p(u_r) - log q(w_r | x_r) - log (1/|S|) sum_{m in S} q(z_r | x_m)),
with w~_n drawn from the prior r(w_n) and S the present modalities; p(u) is
Laplace(0, 1). r(w_n) is Laplace(0, softmax(a_n) * d + eta) with a learned
raw log-scale a_n, params['prior_w'] [M, d], zeros at the start: the
reference's per-modality `pw_params`, "important that [it] is learnable"
(src/models/vae_polyMNIST_single_modality.py). It is this kind's own
parameter group (`PRIOR_W`): the Model builds it, and a client's update of
row n is weighted by its samples holding modality n, the targets whose
cross decodes train it. The raw scales are the encoders' clipped
log-variance outputs (clip +-10). Absent modalities are left out of the
sources, the targets and the mixture over S. Coherence samples
(`sample_latents`) draw an absent target's w_n from p(u)'s w part,
Laplace(0, 1), as the reference's scoring does, not from r(w_n).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import param_groups
from fedrecon_jax.generators import base

ETA = 1e-6   # the reference's Constants.eta, the floor of a posterior scale


def _open_uniform(key, shape):
  """Uniforms on (-1, 1), both ends excluded (log1p(-|v|) stays finite)."""
  return jax.random.uniform(key, shape, minval=np.nextafter(
      np.float32(-1), np.float32(0)), maxval=1.0)


def draw_noise(key: jax.Array, num_modalities: int, batch: int,
               latent_dim: int) -> dict:
  """'u' [M, B, 2d] and 'w' [M (source), M (target), B, d] uniforms on
  (-1, 1): the reparameterised Laplace draws of each posterior u_m and of
  each cross decode's prior w~; 'pick' [M] uniforms on (0, 1) (the target of
  each source for cross_decoding='one')."""
  m, d = num_modalities, latent_dim
  ku, kw, kp = jax.random.split(key, 3)
  return {'u': _open_uniform(ku, (m, batch, 2 * d)),
          'w': _open_uniform(kw, (m, m, batch, d)),
          'pick': jax.random.uniform(kp, (m,))}


def laplace_sample(loc, scale, v):
  """The Laplace(loc, scale) draw of uniforms v on (-1, 1)."""
  return loc - scale * jnp.sign(v) * jnp.log1p(-jnp.abs(v))


def laplace_logpdf(x, loc, scale):
  """log Laplace(x | loc, scale), summed over the last axis."""
  return jnp.sum(-jnp.abs(x - loc) / scale - jnp.log(2 * scale), axis=-1)


def posterior_scale(raw: jax.Array) -> jax.Array:
  """[..., 2d] raw outputs -> scales, softmax * d + eta over each half."""
  d = raw.shape[-1] // 2
  return jnp.concatenate([jax.nn.softmax(h, axis=-1) * d + ETA
                          for h in (raw[..., :d], raw[..., d:])], -1)


def prior_w_scale(params: dict, num_modalities: int, d: int) -> jax.Array:
  """[M, d] scales of the priors r(w_n) the cross decodes draw w~_n from:
  softmax(params['prior_w'][n]) * d + eta."""
  chex.assert_shape(params['prior_w'], (num_modalities, d))
  return jax.nn.softmax(params['prior_w'], axis=-1) * d + ETA


def _prior_init(model, key: jax.Array) -> jax.Array:
  del key   # zeros, as the reference initialises its raw log-scales
  return jnp.zeros((model.spec.num_modalities, model.latent_dim))


def _prior_weights(counts: param_groups.Counts, model, prior) -> jax.Array:
  """[M]: r(w_n) learns from the cross decodes into n, which only samples
  holding modality n make."""
  del model, prior
  return counts.modality


PRIOR_W = param_groups.Group('prior_w', _prior_weights, init=_prior_init)


def objective(model, params, xs, pres, mu, logvar, noise, *, beta,
              cross_decoding, cross_weight=1.0, **unused):
  """Per-sample negative mixture ELBO [B] (see the module docstring).

  cross_weight scales the cross decodes' NLL: 1 is the reference's objective
  and every run's; other values are a diagnostic ablation
  (experiments.benchmarks.central_generator --cross_weight)."""
  num_m, gen = len(xs), params['gen']
  d = mu.shape[-1] // 2
  scale = posterior_scale(logvar)                         # [M, B, 2d]
  u = laplace_sample(mu, scale, noise['u'])               # [M, B, 2d]
  w, z = u[..., :d], u[..., d:]
  # w~ for target n from r(w_n) (axis 1 of noise['w'] is the target).
  w_prior = laplace_sample(0.0, prior_w_scale(params, num_m, d)[None, :, None],
                           noise['w'])                    # [M, M, B, d]
  lpu = laplace_logpdf(u, 0.0, 1.0)                       # [M, B]
  lqw = laplace_logpdf(w, mu[..., :d], scale[..., :d])    # [M, B]
  # q(z_r | x_m) for every source r (axis 0) and expert m (axis 1).
  lq_all = laplace_logpdf(z[:, None], mu[None, ..., d:], scale[None, ..., d:])
  lqz = (jax.nn.logsumexp(lq_all, axis=1, b=pres[None])
         - jnp.log(jnp.maximum(pres.sum(0), 1.0)))        # [M, B]
  self_nll = base.nll_own(model, gen, u, xs)[:, 0]        # [M, B]
  if cross_decoding == 'one':
    t = base.one_target(noise['pick'])                    # [M]
    cross_u = jnp.concatenate([w_prior[jnp.arange(num_m), t], z], -1)
    cross = ((num_m - 1) * base.nll_each(model, gen, t, cross_u, xs)
             * pres[t])                                   # [M, B]
  else:
    # Decoder n's rows: (w~_n, z_r) for every source r (r = n masked out).
    cross_u = jnp.concatenate(
        [jnp.swapaxes(w_prior, 0, 1),
         jnp.broadcast_to(z[None], (num_m, *z.shape))], -1)  # [M(n), M(r), B, 2d]
    nll = base.nll_own(model, gen, cross_u.reshape(num_m, -1, 2 * d), xs)
    off = 1.0 - np.eye(num_m, dtype=np.float32)[..., None]
    cross = (nll * pres[:, None] * off).sum(0)            # [M(r), B]
  rec = self_nll + cross_weight * cross
  reg = lqz + lqw - lpu
  return base.masked_mean(rec + beta * reg, pres, 0), {
      'nll': base.masked_mean(rec, pres, 0),
      'kl': base.masked_mean(reg, pres, 0)}


def infer_latents(model, params, xs, pres, mu, logvar):
  """A present modality keeps its own posterior mean (w_m, z_m); an absent
  one gets the prior's mean w = 0 and the mean of the present z means."""
  del model, params, xs, logvar
  d = mu.shape[-1] // 2
  z = base.masked_mean(mu[..., d:], pres[..., None], 0)   # [B, d]
  fill = jnp.concatenate([jnp.zeros_like(z), z], -1)
  return jnp.where(pres[..., None] > 0, mu, fill[None])


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """Sampled latents as the reference scores cross-modal coherence
  (`reconstruct_and_cross_reconstruct_forw`): every u_m = (w_m, z_m) ~
  q(u | x_m); a present modality keeps its own; an absent n gets the z of
  one present source drawn uniformly per sample and a w_n drawn from the
  prior p(u)'s w part, Laplace(0, 1) (the reference draws it from p(u),
  not from the learned r(w))."""
  del model, params, xs
  num_m, b, d2 = mu.shape
  d = d2 // 2
  ku, kw, kp = jax.random.split(key, 3)
  u = laplace_sample(mu, posterior_scale(logvar), _open_uniform(ku, mu.shape))
  src = base.pick_present(jax.random.uniform(kp, (b,)), pres)  # [B]
  z = u[src, jnp.arange(b), d:]                            # [B, d]
  w = laplace_sample(0.0, 1.0, _open_uniform(kw, (num_m, b, d)))
  fill = jnp.concatenate([w, jnp.broadcast_to(z, w.shape)], -1)
  return jnp.where(pres[..., None] > 0, u, fill)


GENERATORS = (base.Generator(
    'mmvaeplus', objective, infer_latents, sample_latents, order=4,
    groups=(param_groups.GEN, PRIOR_W),
    latent_sizes=lambda d: (2 * d, 2 * d), draw_noise=draw_noise,
    cross_decoding=True),)
