"""Generator objectives against numpy transcriptions of the reference papers.

Each reference below is written from FEDRECON.md ("References to test
against") and the papers, one sample at a time in float64 with Python loops
over modalities and subsets; it shares nothing with `generator` except the
network outputs (`Model.encode` / `decode`, one mapping slice at a time) and
the noise, which `generator.draw_noise` draws up front so both sides use the
same draws. Modalities: two feature vectors (Gaussian) and one image
(Laplace, scale 0.75), with samples that lack some of them.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import generator
from fedrecon_jax.models import DataSpec, Model

SPEC = DataSpec(('a', 'img', 'c'), ('vector', 'image', 'vector'),
                ((5,), (3, 28, 28), (4,)), 3)
# One kind and shape: what cross_decoding='one' needs.
SPEC_SAME = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((4,),) * 3, 3)
M, B, D = 3, 4, 4
PRESENT = np.array([[1, 1, 1], [0, 1, 0], [1, 0, 1], [0, 1, 1]], bool)
BETA, MATCH = 1.7, 0.6


def make_setup(spec):
  model = Model(spec, latent_dim=D, gen_width=8, map_width=8, task_width=4)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  # Absent modalities hold random values too: a leak into their encoder would
  # then show up as a non-zero gradient (zero inputs would hide it).
  xs = tuple((rng.uniform(size=(B, *shape)) if kind == 'image' else
              rng.normal(size=(B, *shape))).astype(np.float32)
             for kind, shape in zip(spec.kinds, spec.shapes))
  noise = generator.draw_noise(jax.random.key(1), M, B, D)
  return model, params, xs, noise


@pytest.fixture(scope='module')
def setup():
  return make_setup(SPEC)


@pytest.fixture(scope='module')
def setup_same():
  return make_setup(SPEC_SAME)


# ------------------------------------------------------ reference transcription


def nll(kind, x_hat, x):
  """-log p(x | x_hat), summed over the sample's elements."""
  x_hat, x = np.float64(x_hat), np.float64(x)
  if kind == 'image':    # Laplace(x_hat, 0.75) per pixel
    return np.sum(np.abs(x - x_hat) / 0.75 + np.log(2 * 0.75))
  return np.sum(0.5 * (x - x_hat)**2 + 0.5 * np.log(2 * np.pi))


def kl(mu, var):
  return 0.5 * np.sum(var + mu**2 - 1 - np.log(var))


@functools.lru_cache(maxsize=None)
def _networks(model):
  """Jitted network calls (one compile per shape), so the loops stay fast."""
  decode = jax.jit(model.decode, static_argnums=1)
  mapping = jax.jit(lambda p, z: model.mapping.apply({'params': p}, z))
  return jax.jit(model.encode), decode, mapping


class Ref:
  """Network outputs of one sample i, as float64 numpy."""

  def __init__(self, model, params, xs, noise, i):
    self.model, self.params = model, params
    self.encode, self.decode, self.apply_map = _networks(model)
    mu, logvar = self.encode(params['gen'], xs)
    self.mu = np.float64(mu[:, i])
    self.var = np.exp(np.float64(logvar[:, i]))
    self.x = [np.float64(x[i]) for x in xs]
    self.eps = np.float64(noise['eps'][:, i])
    self.u = float(noise['u'][0, i])
    self.spec = model.spec
    # cross_decoding='one': source m's target, uniform over the n != m.
    self.target = [(m + 1 + int(np.floor(p * (M - 1)))) % M
                   for m, p in enumerate(np.float64(noise['pick']))]
    self.present = [m for m in range(M) if PRESENT[i, m]]

  def nll(self, n, z):
    x_hat = self.decode(self.params['gen'], n, jnp.float32(z)[None])[0]
    return nll(self.spec.kinds[n], x_hat, self.x[n])

  def mapped(self, n, m, z):
    """T(n<-m)(z): the mapping slice of the ordered pair (n, m)."""
    p = [tuple(q) for q in self.spec.pairs.tolist()].index((n, m))
    slice_ = jax.tree.map(lambda a: a[p], self.params['map'])
    return np.float64(self.apply_map(slice_, jnp.float32(z)[None])[0])

  def poe(self, experts, prior):
    """Precision-weighted product of Gaussians (+ N(0, I) if prior)."""
    precision = float(prior) + sum(1 / self.var[m] for m in experts)
    mean = sum(self.mu[m] / self.var[m] for m in experts) / precision
    return mean, 1 / precision


def ref_poe(r):
  """Wu & Goodman 2018: ELBO(joint PoE of prior + present experts) + sum over
  present m of ELBO(x_m; PoE(prior, expert m))."""
  mean, var = r.poe(r.present, True)
  z = mean + r.eps[0] * np.sqrt(var)
  loss = sum(r.nll(n, z) for n in r.present) + BETA * kl(mean, var)
  for m in r.present:
    mean, var = r.poe([m], True)
    z = mean + r.eps[1 + m] * np.sqrt(var)
    loss += r.nll(m, z) + BETA * kl(mean, var)
  return loss


def cross_sum(r, m, decode_nll, one):
  """Sum over present n != m of decode_nll(n); with one=True, the estimate
  (M - 1) decode_nll(t_m) [t_m present] from source m's drawn target."""
  if one:
    t = r.target[m]
    return (M - 1) * decode_nll(t) if t in r.present else 0.0
  return sum(decode_nll(n) for n in r.present if n != m)


def ref_moe(r, one=False):
  """MMVAE naive ELBO: mean over present m of [sum over present n of
  -log p(x_n | z_m) + beta KL(q(z | x_m) || p)], z_m ~ q(z | x_m)."""
  terms = []
  for m in r.present:
    z = r.mu[m] + r.eps[m] * np.sqrt(r.var[m])
    terms.append(r.nll(m, z) + cross_sum(r, m, lambda n: r.nll(n, z), one) +
                 BETA * kl(r.mu[m], r.var[m]))
  return np.mean(terms)


def ref_mopoe(r):
  """MoPoE: subsets S of the present modalities, q_S = PoE(S) with the prior
  only when S holds all M; KL averaged over S; reconstruction from the z of
  one subset, the k-th (k = floor(u * #S)) in binary order, modality 0 the
  most significant bit."""
  subsets = [s for s in itertools.product((0, 1), repeat=M)
             if any(s) and all(r.present.count(m) for m in range(M) if s[m])]
  dists = [r.poe([m for m in range(M) if s[m]], sum(s) == M) for s in subsets]
  mean_kl = np.mean([kl(mean, var) for mean, var in dists])
  mean, var = dists[int(np.floor(r.u * len(subsets)))]
  z = mean + r.eps[0] * np.sqrt(var)
  return sum(r.nll(n, z) for n in r.present) + BETA * mean_kl


def ref_mapping(r, one=False):
  """FedRecon (FEDRECON.md): mean over present m of -log p(x_m | z_m) - sum
  over present n != m of log p(x_n | T(n<-m)(z_m)) + beta KL(q(z | x_m) || p);
  plus L_match, the mean over present pairs of |T(n<-m)(mu_m) - mu_n|^2."""
  elbos, matches = [], []
  for m in r.present:
    z = r.mu[m] + r.eps[m] * np.sqrt(r.var[m])
    cross = cross_sum(r, m, lambda n: r.nll(n, r.mapped(n, m, z)), one)
    elbos.append(r.nll(m, z) + cross + BETA * kl(r.mu[m], r.var[m]))
    matches += [np.sum((r.mapped(n, m, r.mu[m]) - r.mu[n])**2)
                for n in r.present if n != m]
  return np.mean(elbos) + MATCH * (np.mean(matches) if matches else 0.0)


REFERENCES = {'poe': ref_poe, 'moe': ref_moe, 'mopoe': ref_mopoe,
              'mapping': ref_mapping}


def ours(kind, model, params, xs, noise, cross='all'):
  return generator.objective_from_noise(
      kind, model, params, xs, jnp.asarray(PRESENT), noise, beta=BETA,
      match_weight=MATCH, cross_decoding=cross)[0]


@functools.lru_cache(maxsize=None)
def jitted(kind, model, cross='all'):
  """(loss [B], grad of one sample's loss) of our objective, compiled once."""
  loss = jax.jit(functools.partial(ours, kind, model, cross=cross))

  def sample_loss(trained, params, xs, noise, onehot):
    return jnp.sum(loss({**params, **trained}, xs, noise) * onehot)

  return loss, jax.jit(jax.grad(sample_loss))


@pytest.mark.parametrize('kind', sorted(REFERENCES))
def test_per_sample_loss_matches_reference(setup, kind):
  model, params, xs, noise = setup
  got = np.asarray(jitted(kind, model)[0](params, xs, noise))
  want = [REFERENCES[kind](Ref(model, params, xs, noise, i)) for i in range(B)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize('kind', sorted(REFERENCES))
def test_no_gradient_into_absent_modalities(setup, kind):
  """A sample's loss trains nothing of a modality it lacks: neither that
  modality's encoder and decoder nor a mapping from or to it."""
  model, params, xs, noise = setup
  trained = {'gen': params['gen'], 'map': params['map']}
  grad = jitted(kind, model)[1]
  size = lambda tree: sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(tree))
  for i in range(B):
    grads = grad(trained, params, xs, noise, jnp.eye(B)[i])
    for m, name in enumerate(SPEC.modalities):
      for part in ('enc', 'dec'):
        g = size(model.member(grads['gen'][part], m))
        assert (g > 0) == PRESENT[i, m], (i, name, part, g)
    for p, (n, m) in enumerate(SPEC.pairs):
      g = size(jax.tree.map(lambda leaf: leaf[p], grads['map']))
      assert (g > 0) == (kind == 'mapping' and PRESENT[i, n] and
                         PRESENT[i, m]), (i, n, m, g)


def test_objective_draws_its_noise_with_draw_noise(setup):
  model, params, xs, _ = setup
  key = jax.random.key(5)
  got = generator.objective('mopoe', model, params, xs, jnp.asarray(PRESENT),
                            key, beta=BETA, match_weight=MATCH)[0]
  want = ours('mopoe', model, params, xs, generator.draw_noise(key, M, B, D))
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize('kind', ['mapping', 'moe'])
def test_one_target_cross_decoding(setup_same, kind):
  """cross_decoding='one' equals its transcription for the drawn targets, and
  averaged over every target choice equals the exact ('all') loss."""
  model, params, xs, noise = setup_same
  loss_one, grad_one = jitted(kind, model, 'one')
  got = np.asarray(loss_one(params, xs, noise))
  want = [REFERENCES[kind](Ref(model, params, xs, noise, i), one=True)
          for i in range(B)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # Every source takes its k-th other modality as target, for each k.
  mean = np.mean([loss_one(params, xs, {**noise, 'pick': jnp.full(
      M, (k + 0.5) / (M - 1))}) for k in range(M - 1)], axis=0)
  np.testing.assert_allclose(mean, jitted(kind, model)[0](params, xs, noise),
                             rtol=1e-5)
  # Still nothing into the modalities a sample lacks (sample 1 has only b).
  grads = grad_one({'gen': params['gen'], 'map': params['map']}, params, xs,
                   noise, jnp.eye(B)[1])
  for m in (0, 2):   # a, c
    assert not any(np.any(g) for g in jax.tree.leaves(
        [model.member(grads['gen'][part], m)
         for part in ('enc', 'dec')]))
