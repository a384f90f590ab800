"""FedRecon over MMVAE+ latents: the mappings T(n<-m) between the unimodal
latents u_m = (w_m, z_m) of an MMVAE+ model, as FedRecon's release builds
them on CUB (Wings-Of-Disaster/FedRecon maps the mean of q(z, w | x_m) of a
trained MMVAE+; FEDRECON.md).

The release trains the MMVAE+ first and fits the mappings to its latents.
Here both train in the same rounds, with the MMVAE+ untouched by the
mappings: its objective is mmvaeplus.objective (its learned prior
mmvaeplus.PRIOR_W included), and the mapping terms
see its encoders and decoders through stop_gradient, so they train T
alone. T's terms are FedRecon's (mapping.objective): the cross decodes
-log p(x_n | Dec_n(T(n<-m)(u_m))), u_m ~ q(u | x_m) (the MMVAE+
objective's own draw), and L_match, T(n<-m)(mu_m) regressed onto mu_n,
weighted by match_weight. An absent modality n is rebuilt from the mean
over present m of T(n<-m)(u_m): T predicts the whole of u_n, its private
w_n included.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fedrecon_jax.generators import base, mapping, mmvaeplus
from fedrecon_jax.param_groups import GEN, MAP


def objective(model, params, xs, pres, mu, logvar, noise, *, beta,
              match_weight, cross_decoding):
  """MMVAE+'s per-sample loss [B] plus T's (see the module docstring)."""
  loss, terms = mmvaeplus.objective(model, params, xs, pres, mu, logvar,
                                    noise, beta=beta,
                                    cross_decoding=cross_decoding)
  gen, mu = jax.lax.stop_gradient((params['gen'], mu))
  scale = mmvaeplus.posterior_scale(jax.lax.stop_gradient(logvar))
  u = mmvaeplus.laplace_sample(mu, scale, noise['u'])    # [M, B, 2d]
  b = mu.shape[1]
  dst, src = model.spec.pairs[:, 0], model.spec.pairs[:, 1]
  both = model.map_pairs(params['map'], jnp.concatenate([u, mu], 1))
  tu, tmu = both[:, :b], both[:, b:]                      # [P, B, 2d]
  cross = mapping.cross_nll(model, gen, tu, xs, pres, noise['pick'],
                            cross_decoding)               # [M, B]
  match = mapping.l_match(tmu, mu, dst, pres[dst] * pres[src])
  map_loss = base.masked_mean(cross, pres, 0) + match_weight * match
  return loss + map_loss, {**terms, 'map_nll': base.masked_mean(cross, pres,
                                                                 0),
                           'match': match}


def sample_latents(model, params, xs, pres, mu, logvar, key):
  """u_m ~ q(u | x_m) for every modality; a present n keeps its u_n, an
  absent one gets the mean over present m of T(n<-m)(u_m) (the mapping
  receives the sample, as in training)."""
  del xs
  num_m, b, d2 = mu.shape
  noise = mmvaeplus.draw_noise(key, num_m, b, d2 // 2)   # as in training
  u = mmvaeplus.laplace_sample(mu, mmvaeplus.posterior_scale(logvar),
                               noise['u'])
  return mapping.mean_of_mapped(model.map_pairs(params['map'], u), u, pres,
                                model)


GENERATORS = (base.Generator(
    'mmvaeplus_map', objective, mapping.infer_latents, sample_latents,
    order=5, groups=(GEN, MAP, mmvaeplus.PRIOR_W),
    latent_sizes=lambda d: (2 * d, 2 * d), draw_noise=mmvaeplus.draw_noise,
    cross_decoding=True),)
