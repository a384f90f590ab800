"""A generator kind's objective and the completion of missing modalities,
for any kind of the registry (fedrecon_jax/generators/: mapping, poe, moe,
mopoe, ...). `kind` is a registered name or a `generators.Generator`.

Every function takes `present`, a [B, M] bool mask of the modalities a sample
really has (see generators/base.py for how absent ones are masked out).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from fedrecon_jax import generators
from fedrecon_jax.generators.base import (draw_noise, kl_std_normal,
                                          product_of_experts)
from fedrecon_jax.models import Model

__all__ = ['CROSS_DECODING', 'complete', 'draw_noise', 'infer_latents',
           'kl_std_normal', 'objective', 'objective_from_noise',
           'product_of_experts', 'reconstruct', 'sample_latents']

# Cross-modal decoding of the objectives that read it (those whose
# Generator declares cross_decoding): 'all' decodes every source latent with
# every other present decoder (M(M-1) decodes); 'one' decodes it with one
# target drawn per source and step, scaled by M - 1: an unbiased estimate of
# the same loss with M decodes (needs modalities of one kind and shape).
CROSS_DECODING = ('all', 'one')


def objective(kind, model: Model, params: dict, xs: Sequence[jax.Array],
              present: jax.Array, key: jax.Array, *, beta: float,
              match_weight: float, cross_decoding: str = 'all', **options):
  """Per-sample generator loss [B] and a dict of per-sample terms.

  Every negative log-likelihood is the modality kind's (`Model.nll`): Laplace
  for images, unit-variance Gaussian for features, with their constants.
  cross_decoding: see CROSS_DECODING (read by the kinds that declare it,
  Generator.cross_decoding). options: a kind's own keyword arguments
  (diagnostic ablations, e.g. MMVAE+'s cross_weight).
  """
  noise = generators.get(kind).noise(key, len(xs), present.shape[0],
                                     model.latent_dim)
  return objective_from_noise(kind, model, params, xs, present, noise,
                              beta=beta, match_weight=match_weight,
                              cross_decoding=cross_decoding, **options)


def objective_from_noise(kind, model: Model, params: dict, xs,
                         present: jax.Array, noise: dict, *, beta: float,
                         match_weight: float, cross_decoding: str = 'all',
                         **options):
  """`objective` with its randomness given (`draw_noise`)."""
  gen = generators.get(kind)
  if not gen.trainable:
    raise ValueError(f'generator kind {gen.name!r} has no objective; '
                     f'trainable kinds: {generators.TRAINABLE}.')
  if cross_decoding not in CROSS_DECODING:
    raise ValueError(f'--cross_decoding={cross_decoding!r} is not one of '
                     f'{CROSS_DECODING}.')
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(params['gen'], xs)            # [M, B, d]
  return gen.objective(model, params, xs, pres, mu, logvar, noise,
                       beta=beta, match_weight=match_weight,
                       cross_decoding=cross_decoding, **options)


def infer_latents(kind, model: Model, params: dict, xs, present):
  """Latent of every modality from the present ones -> [M, B, d] (each
  kind's `infer_latents` says how)."""
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(params['gen'], xs)
  return generators.get(kind).infer_latents(model, params, xs, pres, mu,
                                            logvar)


def sample_latents(kind, model: Model, params: dict, xs, present,
                   key: jax.Array):
  """As `infer_latents`, from sampled latents (each kind's
  `sample_latents` says how) -> [M, B, d]."""
  pres = present.T.astype(jnp.float32)                    # [M, B]
  mu, logvar = model.encode(params['gen'], xs)
  return generators.get(kind).sample_latents(model, params, xs, pres, mu,
                                             logvar, key)


def reconstruct(kind, model: Model, params: dict, xs, present,
                key: jax.Array | None = None):
  """Reconstruction of every modality from the present ones: per modality
  [B, ...], each in its data's form (`Model.as_data`: a masked sequence's
  mask logits become its 0/1 frame mask). key=None decodes the
  posterior-mean latents (`infer_latents`: what the task stage fills
  with); a key decodes one draw of `sample_latents` (how the references
  score coherence)."""
  z = (infer_latents(kind, model, params, xs, present) if key is None
       else sample_latents(kind, model, params, xs, present, key))
  return tuple(model.as_data(n, x_hat) for n, x_hat in
               enumerate(model.decode_all(params['gen'], z)))


def complete(kind, model: Model, params: dict, xs, present):
  """Real data where present, the reconstruction where not."""
  x_hat = reconstruct(kind, model, jax.lax.stop_gradient(params), xs, present)
  return tuple(
      jnp.where(present[:, n].reshape(-1, *([1] * (x.ndim - 1))), x, xh)
      for n, (x, xh) in enumerate(zip(xs, x_hat)))
