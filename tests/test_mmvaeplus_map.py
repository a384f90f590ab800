"""FedRecon over MMVAE+ latents against a transcription of its terms.

The reference adds to MMVAE+'s loss (checked on its own in
test_mmvaeplus.py) FedRecon's mapping terms over the unimodal latents
u_m = (w_m, z_m), one sample at a time in float64 with loops over the
present sources and targets: for each present source m, the cross decodes
-log p(x_n | Dec_n(T(n<-m)(u_m))) over present n != m, u_m the objective's
Laplace draw; their mean over sources; plus match_weight times L_match,
the mean over present pairs of |T(n<-m)(mu_m) - mu_n|^2. It shares with
ours only single network calls (one encoder pass, one decoder, one
mapping at a time) and the uniforms of the Laplace draw.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import generator, generators

# MMVAE+'s setup (the same latent sizes, groups and noise) and likelihoods.
from test_mmvaeplus import B, D, M, PRESENT, SPEC, SPEC_SAME
from test_mmvaeplus import make_setup, nll, softmax_scale

BETA, MATCH = 2.5, 0.7
GEN = generators.get('mmvaeplus_map')


def mapping_terms(model, params, xs, noise, i, one=False):
  """T's terms of sample i (see the module docstring)."""
  mu, raw = (np.float64(a[:, i]) for a in jax.jit(model.encode)(
      params['gen'], xs))
  decode = jax.jit(model.decode, static_argnums=1)
  pair = {(int(n), int(m)): p for p, (n, m) in enumerate(model.spec.pairs)}

  def t(n, m, u):
    p = jax.tree.map(lambda a: a[pair[n, m]], params['map'])
    return np.float64(model.mapping.apply({'params': p},
                                          jnp.float32(u)[None])[0])

  def dec_nll(n, u):
    x_hat = decode(params['gen'], n, jnp.float32(u)[None])[0]
    return nll(model.spec.kinds[n], np.float64(x_hat), np.float64(xs[n][i]))

  present = [m for m in range(M) if PRESENT[i, m]]
  cross = []
  for m in present:
    scale = np.concatenate([softmax_scale(raw[m, :D]),
                            softmax_scale(raw[m, D:])])
    v = np.float64(noise['u'][m, i])
    u = mu[m] - scale * np.sign(v) * np.log1p(-np.abs(v))
    if one:
      n = (m + 1 + int(np.floor(float(noise['pick'][m]) * (M - 1)))) % M
      cross.append((M - 1) * dec_nll(n, t(n, m, u)) if n in present else 0.)
    else:
      cross.append(sum(dec_nll(n, t(n, m, u)) for n in present if n != m))
  match = [np.sum((t(n, m, mu[m]) - mu[n])**2)
           for n in present for m in present if n != m]
  return np.mean(cross) + MATCH * (np.mean(match) if match else 0.0)


@functools.lru_cache(maxsize=None)
def loss_fn(model, kind, cross):
  return jax.jit(lambda params, xs, noise: generator.objective_from_noise(
      kind, model, params, xs, jnp.asarray(PRESENT), noise, beta=BETA,
      match_weight=MATCH, cross_decoding=cross)[0])


@pytest.mark.parametrize('spec,cross', [(SPEC, 'all'), (SPEC_SAME, 'one')])
def test_per_sample_loss_is_mmvaeplus_plus_the_mapping_terms(spec, cross):
  model, params, xs, noise = make_setup(spec)
  got = np.asarray(loss_fn(model, GEN, cross)(params, xs, noise))
  base = np.asarray(loss_fn(model, 'mmvaeplus', cross)(params, xs, noise))
  want = [mapping_terms(model, params, xs, noise, i, one=cross == 'one')
          for i in range(B)]
  np.testing.assert_allclose(got - base, want, rtol=1e-4, atol=1e-3)


def test_the_mappings_leave_the_mmvaeplus_untouched():
  """The MMVAE+ trains as mmvaeplus alone does: the same gradient on
  'gen' and on its prior 'prior_w'; and the mapping terms train 'map'."""
  model, params, xs, noise = make_setup(SPEC_SAME)
  grad = lambda kind: jax.grad(lambda p: loss_fn(model, kind, 'all')(
      p, xs, noise).mean())(params)
  ours, alone = grad(GEN), grad('mmvaeplus')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               (ours['gen'], ours['prior_w']),
               (alone['gen'], alone['prior_w']))
  assert all(np.abs(g).max() > 0 for g in jax.tree.leaves(ours['map']))
  assert all(np.abs(g).max() == 0 for g in jax.tree.leaves(alone['map']))
