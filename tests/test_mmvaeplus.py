"""MMVAE+ against a numpy transcription of its objective.

The reference is written from the paper (Palumbo et al., ICLR 2023, eq. 4)
and epalu/mmvaeplus (src/objectives.py `_m_iwae` with K = 1; src/models/
mmvae.py `forward`, variant 'mmvaeplus'; the encoders' softmax scales in
src/models/vae_polymnist.py), one sample at a time in float64 with loops over
sources and targets. It shares with ours only the network outputs (encoder,
one decoder at a time) and the uniforms that both turn into Laplace draws.
Simplifications (also ours, see the module): K = 1; absent modalities leave
the sources, targets and mixture. The prior r(w_d) the cross decodes draw w~_d
from is Laplace(0, softmax(a_d) * D + eta) with a learned raw log-scale a_d
(the reference's `pw_params`, src/models/vae_polyMNIST_single_modality.py),
zeros at the start (Laplace(0, 1 + eta)).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import generator, generators, recipe, rounds
from fedrecon_jax.hparams import Hparams
from fedrecon_jax.methods import GEN_STAGE
from fedrecon_jax.models import DataSpec, Model

import toy

SPEC = DataSpec(('a', 'img', 'c'), ('vector', 'image', 'vector'),
                ((5,), (3, 28, 28), (4,)), 3)
SPEC_SAME = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((4,),) * 3, 3)
M, B, D = 3, 4, 3
PRESENT = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]], bool)
BETA = 2.5
GEN = generators.get('mmvaeplus')


def make_setup(spec, learned_prior=True):
  """learned_prior: the prior's raw log-scales moved off their zeros."""
  model = Model(spec, latent_dim=D, gen_width=8, map_width=8, task_width=4,
                latent_sizes=GEN.latent_sizes(D),
                extra_groups=GEN.extra_groups)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  if learned_prior:
    params['prior_w'] = jnp.asarray(rng.normal(size=(M, D)), jnp.float32)
  xs = tuple((rng.uniform(size=(B, *shape)) if kind == 'image' else
              rng.normal(size=(B, *shape))).astype(np.float32)
             for kind, shape in zip(spec.kinds, spec.shapes))
  return model, params, xs, GEN.noise(jax.random.key(1), M, B, D)


# ------------------------------------------------------ reference transcription


def laplace_log(x, loc, scale):
  return float(np.sum(-np.abs(x - loc) / scale - np.log(2 * scale)))


def laplace_draw(loc, scale, v):
  """torch's Laplace.rsample from its uniform v on (-1, 1)."""
  return loc - scale * np.sign(v) * np.log1p(-np.abs(v))


def softmax_scale(raw):
  e = np.exp(raw - raw.max())
  return e / e.sum() * raw.size + 1e-6


def nll(kind, x_hat, x):
  if kind == 'image':    # Laplace(x_hat, 0.75) per pixel
    return float(np.sum(np.abs(x - x_hat) / 0.75 + np.log(2 * 0.75)))
  return float(np.sum(0.5 * (x - x_hat)**2 + 0.5 * np.log(2 * np.pi)))


def prior_scale(params, d):
  """r(w_d)'s Laplace scale [D]: the reference's pw_params, softmax of the
  learned raw log-scale times D plus eta."""
  return softmax_scale(np.float64(params['prior_w'][d]))


def reference(model, params, xs, noise, i, one=False, cross_weight=1.0):
  """-ELBO of sample i: the mean over present sources r of
  -[log p(x_r | u_r) + sum_{d != r} log p(x_d | w~_d, z_r)
    + beta (log p(u_r) - log q(w_r | x_r) - log mean_m q(z_r | x_m))],
  the cross sum times cross_weight (1: the reference's objective)."""
  mu, raw = (np.float64(a[:, i]) for a in jax.jit(model.encode)(
      params['gen'], xs))
  decode = jax.jit(model.decode, static_argnums=1)
  dec_nll = lambda n, u: nll(model.spec.kinds[n], np.float64(decode(
      params['gen'], n, jnp.float32(u)[None])[0]), np.float64(xs[n][i]))
  present = [m for m in range(M) if PRESENT[i, m]]
  scale = [np.concatenate([softmax_scale(raw[m, :D]),
                           softmax_scale(raw[m, D:])]) for m in present]
  scale = dict(zip(present, scale))
  terms = []
  for r in present:
    u = laplace_draw(mu[r], scale[r], np.float64(noise['u'][r, i]))
    w, z = u[:D], u[D:]
    lpu = laplace_log(u, 0.0, 1.0)
    lqw = laplace_log(w, mu[r, :D], scale[r][:D])
    lqz = np.log(np.mean([np.exp(laplace_log(z, mu[m, D:], scale[m][D:]))
                          for m in present]))
    lpx = -dec_nll(r, u)
    w_prior = lambda d: laplace_draw(0.0, prior_scale(params, d),
                                     np.float64(noise['w'][r, d, i]))
    if one:
      t = (r + 1 + int(np.floor(float(noise['pick'][r]) * (M - 1)))) % M
      if t in present:
        lpx -= cross_weight * (M - 1) * dec_nll(
            t, np.concatenate([w_prior(t), z]))
    else:
      lpx -= cross_weight * sum(dec_nll(d, np.concatenate([w_prior(d), z]))
                                for d in present if d != r)
    terms.append(-(lpx + BETA * (lpu - lqz - lqw)))
  return np.mean(terms)


@functools.lru_cache(maxsize=None)
def ours(model, cross):
  return jax.jit(lambda params, xs, noise: generator.objective_from_noise(
      GEN, model, params, xs, jnp.asarray(PRESENT), noise, beta=BETA,
      match_weight=0.0, cross_decoding=cross)[0])


@pytest.mark.parametrize('spec,cross,learned', [
    (SPEC, 'all', False), (SPEC_SAME, 'one', False), (SPEC, 'all', True),
    (SPEC_SAME, 'one', True)])
def test_per_sample_loss_matches_reference(spec, cross, learned):
  model, params, xs, noise = make_setup(spec, learned)
  got = np.asarray(ours(model, cross)(params, xs, noise))
  want = [reference(model, params, xs, noise, i, one=cross == 'one')
          for i in range(B)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_cross_weight_scales_only_the_cross_decodes():
  """The diagnostic ablation of central_generator --cross_weight: the
  cross decodes' NLL times the weight, every other term as the reference."""
  model, params, xs, noise = make_setup(SPEC_SAME)
  got = jax.jit(lambda p: generator.objective_from_noise(
      GEN, model, p, xs, jnp.asarray(PRESENT), noise, beta=BETA,
      match_weight=0.0, cross_decoding='all', cross_weight=0.5)[0])(params)
  want = [reference(model, params, xs, noise, i, cross_weight=0.5)
          for i in range(B)]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_no_gradient_into_absent_modalities():
  model, params, xs, noise = make_setup(SPEC)
  # Sample 1 holds modality 1 only: nothing of modalities 0 and 2 may move it.
  grads = jax.grad(lambda x0, x2: ours(model, 'all')(
      params, (x0, xs[1], x2), noise)[1])(xs[0], xs[2])
  for g in grads:
    np.testing.assert_array_equal(g[1], 0.0)


def test_reconstruction_latents():
  """Present modalities keep their own (w, z) mean; absent ones get w = 0
  and the mean of the present z means."""
  model, params, xs, _ = make_setup(SPEC)
  mu, _ = model.encode(params['gen'], xs)
  got = np.asarray(generator.infer_latents(GEN, model, params, xs,
                                           jnp.asarray(PRESENT)))
  for i in range(B):
    present = np.flatnonzero(PRESENT[i])
    z = np.mean([mu[m, i, D:] for m in present], 0)
    for n in range(M):
      want = mu[n, i] if PRESENT[i, n] else np.concatenate([np.zeros(D), z])
      np.testing.assert_allclose(got[n, i], want, rtol=1e-6, atol=1e-7)


# ------------------------------------------------ the learned prior's group


@pytest.mark.slow   # a client update and a round compiled (~25 s)
def test_learned_prior_is_a_declared_group_trained_federatedly():
  """MMVAE+ declares PRIOR_W: the Model builds it (zeros, [M, d]); a
  client's update moves only the rows of the modalities it holds, and its
  aggregation weight per row counts its samples holding that modality; a
  federated round moves the server's prior."""
  assert [g.name for g in GEN.groups] == ['gen', 'prior_w']
  model = Model(toy.SPEC, latent_dim=D, gen_width=8, map_width=8,
                task_width=4, latent_sizes=GEN.latent_sizes(D),
                extra_groups=GEN.extra_groups)
  params = model.init_params(jax.random.key(0))
  np.testing.assert_array_equal(params['prior_w'], np.zeros((M, D)))
  # The other groups' params are those of a Model without it.
  plain = Model(toy.SPEC, latent_dim=D, gen_width=8, map_width=8,
                task_width=4, latent_sizes=GEN.latent_sizes(D))
  jax.tree.map(np.testing.assert_array_equal,
               {k: v for k, v in params.items() if k != 'prior_w'},
               plain.init_params(jax.random.key(0)))
  cfg = toy.cfg_for(method='fedrecon_no_map', joint_posterior='mmvaeplus',
                    gen_optimizer='adam', gen_lr=0.05, local_epochs=2)
  plan = recipe.of(cfg).plan(model, GEN_STAGE, toy.K)
  assert plan.groups == ('gen', 'prior_w')
  population = toy.make_population()     # client 1 lacks modality 0
  h = Hparams.of(cfg)
  trainable, frozen = rounds.split_params(params, plan.groups)
  client = jax.tree.map(lambda x: x[1], population)
  trained, weights, _ = plan.client_update(h, trainable, frozen, client,
                                           jax.random.key(1))
  np.testing.assert_array_equal(weights['prior_w'], [0, 30, 30])
  moved = np.abs(np.asarray(trained['prior_w'])).max(-1)
  assert moved[0] == 0 and (moved[1:] > 1e-4).all(), moved
  round_ = rounds.make_round(plan, rounds.make_mesh(1))
  state, _ = round_(round_.init(params, h), round_.place(population),
                    jax.random.key(2), h)
  assert (np.abs(np.asarray(state.params['prior_w'])).max(-1) > 1e-4).all()
