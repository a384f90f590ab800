"""What a generator kind is (`Generator`) and the math its objectives share.

A generator kind is one `Generator` object, defined in its own module of
this package (mapping.py, poe.py, ...); the registry (`__init__.py`) finds
every module's `GENERATORS` and the flags, Table 2 and the model builder read
it. Every function takes `pres`, the [M, B] float mask of the modalities a
sample really has: an absent modality's expert, decoder term or mapping pair
is masked out, never branched on, so one compiled program serves all
clients. Losses are per sample ([B]); the caller averages over real samples.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import param_groups
from fedrecon_jax.param_groups import Group

# objective(model, params, xs, pres [M, B], mu, logvar [M, B, d], noise, *,
#   beta, match_weight, cross_decoding) -> (per-sample loss [B], terms [B]).
Objective = Callable[..., tuple[jax.Array, dict]]
# infer(model, params, xs, pres, mu, logvar) -> every modality's latent
#   [M, B, d_dec] from the present ones: the posterior-mean read.
Infer = Callable[..., jax.Array]
# sample(model, params, xs, pres, mu, logvar, key) -> the same [M, B, d_dec]
#   decoded from sampled latents, as the references score coherence
#   (FEDRECON.md, "Scoring reconstruction as the references do").
Sample = Callable[..., jax.Array]


def _same_size(latent_dim: int) -> tuple[int, int]:
  return latent_dim, latent_dim


@dataclasses.dataclass(frozen=True)
class Generator:
  """A generator kind: its objective, how it infers latents and what it
  needs from the model builder."""
  name: str
  # Its training objective; None: an inference-only read of the params of
  # another kind (e.g. 'raw', mapping's generator with T = identity).
  objective: Objective | None
  infer_latents: Infer
  sample_latents: Sample
  # Where it sits in flag choices and Table 2 (then by name).
  order: int
  # Parameter groups its objective trains (and clients send), each with
  # its aggregation weight: param_groups.GEN (the MVAE), plus MAP for the
  # mappings T(n<-m), or a group of its own (with an init).
  groups: tuple[Group, ...] = (param_groups.GEN,)
  # latent_dim -> (each encoder's latent size, each decoder's input size);
  # an encoder outputs a mean and a log-variance of its size.
  latent_sizes: Callable[[int], tuple[int, int]] = _same_size
  # (key, num_modalities, batch, latent_dim) -> the objective's noise dict.
  draw_noise: Callable[..., dict] | None = None
  # An inference-only kind scored beside this one in Table 2 (the
  # no-mapping read of FedRecon's generator), or None.
  ablation: str | None = None
  # Whether its objective reads --cross_decoding (generator.CROSS_DECODING:
  # 'one' decodes one target per source, which needs modalities of one
  # kind and shape); False: it ignores the flag.
  cross_decoding: bool = False

  @property
  def trainable(self) -> bool:
    return self.objective is not None

  @property
  def uses_mappings(self) -> bool:
    return param_groups.MAP in self.groups

  @property
  def extra_groups(self) -> tuple[Group, ...]:
    """Its groups the Model does not build (those with an init)."""
    return tuple(g for g in self.groups if g.init is not None)

  def noise(self, key: jax.Array, num_modalities: int, batch: int,
            latent_dim: int) -> dict:
    return (self.draw_noise or draw_noise)(key, num_modalities, batch,
                                           latent_dim)


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


def masked_mean(values, mask, axis):
  return (values * mask).sum(axis) / jnp.maximum(mask.sum(axis), 1.0)


def reparam(mu, logvar, eps):
  return mu + eps * jnp.exp(0.5 * logvar)


def pick_present(u: jax.Array, mask: jax.Array) -> jax.Array:
  """u: [B] uniforms on (0, 1); mask: [E, B] -> [B] ints, the
  floor(u * count)-th entry set in each column: one drawn uniformly (0 for
  a column with none)."""
  count = mask.sum(0)
  k = jnp.minimum(jnp.floor(u * count), count - 1)
  return jnp.argmax(jnp.cumsum(mask, 0) > k, axis=0)


def sample_gaussian(key: jax.Array, mu: jax.Array,
                    logvar: jax.Array) -> jax.Array:
  """One draw of N(mu, e^logvar), any shape."""
  return reparam(mu, logvar, jax.random.normal(key, mu.shape, mu.dtype))


def draw_noise(key: jax.Array, num_modalities: int, batch: int,
               latent_dim: int) -> dict:
  """All randomness of one objective evaluation, drawn up front so that a
  reference can replay it: 'eps' [M + 1, B, d] standard normals (the
  reparameterisation noise; each kind uses the rows it needs), 'u'
  [M + 1, B] uniforms (MoPoE's subset choice) and 'pick' [M] uniforms (the
  target of each source for cross_decoding='one').

  One draw of uniforms v on (-1, 1) for all of it (each draw is its own
  threefry code to compile): normals sqrt(2) erfinv(v), as
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


def one_target(pick: jax.Array) -> jax.Array:
  """pick: [M] uniforms -> [M] targets, target m uniform over the n != m."""
  m = pick.shape[0]
  step = jnp.minimum(jnp.floor(pick * (m - 1)), m - 2).astype(jnp.int32)
  return (jnp.arange(m) + 1 + step) % m


def nll_each(model, gen, index, z, xs):
  """-log p(x_index[k] | Dec_index[k](z[k])) -> [K, B] (one kind and shape)."""
  x_hat = model.decode_each(gen, index, z)               # [K, B, ...]
  return model.nll(0, x_hat, jnp.stack(xs)[index], batch_ndim=2)


def nll_own(model, gen, z, xs):
  """-log p(x_n | Dec_n(z[n])) for z [M, K * B, d] (K latents per sample,
  B samples) -> [M, K, B]."""
  x_hat = model.decode_all(gen, z)
  return jnp.stack([model.nll(n, xh.reshape(-1, *x.shape), x[None], 2)
                    for n, (xh, x) in enumerate(zip(x_hat, xs))])


def nll_all_decoders(model, gen, z, xs):
  """Decode each latent z [K, B, d] with every decoder -> NLL [M, K, B]."""
  k, b, d = z.shape
  return nll_own(model, gen, jnp.broadcast_to(z.reshape(1, k * b, d),
                                             (len(xs), k * b, d)), xs)
