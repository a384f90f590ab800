"""Flax modules: the MVAE generator, the mappings T(n<-m) and the task model.

Parameters are plain nested dicts with one entry per parameter group, because
the server averages each group only over the clients that trained it:

  params = {
    'gen':  {'enc': {modality: ...}, 'dec': {modality: ...}},
    'map':  leaves with a leading axis [P], one slice per ordered pair (n<-m),
    'task': {'enc': {modality: ...}, 'fuse': ..., 'head': ...},
  }

`Model` holds the module definitions and exposes pure functions over those
dicts; it keeps no state. The decoder's likelihood is a property of the
modality kind (`LIKELIHOODS`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Static description of a dataset's modalities."""
  modalities: tuple[str, ...]
  kinds: tuple[str, ...]                    # 'vector' | 'image' | 'sequence'
  shapes: tuple[tuple[int, ...], ...]       # per-sample shape of each modality
  num_classes: int

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  @property
  def pairs(self) -> np.ndarray:
    """[P, 2] ordered pairs (dst n, src m), n != m, grouped by dst."""
    m = self.num_modalities
    return np.array([(n, s) for n in range(m) for s in range(m) if n != s],
                    np.int32).reshape(-1, 2)


# ----------------------------------------------------------------- generator

# Images in [0, 1]: Laplace with a fixed scale of 0.75, summed over all C x H x W
# pixels, as MoPoE / MMVAE+ / MMVM do for PolyMNIST. A unit-variance Gaussian on
# [0, 1] pixels (per-pixel variance ~0.085) makes the reconstruction term so weak
# that the KL wins and every generator collapses to the mean image.
LAPLACE_SCALE = 0.75


def laplace_nll(x_hat: jax.Array, x: jax.Array) -> jax.Array:
  """Elementwise -log Laplace(x | x_hat, LAPLACE_SCALE)."""
  return jnp.abs(x - x_hat) / LAPLACE_SCALE + np.log(2 * LAPLACE_SCALE)


def gaussian_nll(x_hat: jax.Array, x: jax.Array) -> jax.Array:
  """Elementwise -log N(x | x_hat, 1): features are standardised (unit var)."""
  return 0.5 * jnp.square(x - x_hat) + 0.5 * np.log(2 * np.pi)


LIKELIHOODS = {'image': laplace_nll, 'vector': gaussian_nll,
               'sequence': gaussian_nll}



class MLP(nn.Module):
  widths: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for w in self.widths:
      x = nn.gelu(nn.Dense(w)(x))
    return nn.Dense(self.out)(x)


# Small on purpose: the FedRecon objective decodes every latent with every
# other decoder, M(M-1) + M decoder passes per batch.


class ConvEncoder(nn.Module):
  """[B, 3, 28, 28] -> [B, out]."""
  out: int

  @nn.compact
  def __call__(self, x):
    x = jnp.transpose(x, (0, 2, 3, 1))
    x = nn.gelu(nn.Conv(16, (3, 3), strides=2)(x))   # 14x14
    x = nn.gelu(nn.Conv(32, (3, 3), strides=2)(x))   # 7x7
    x = nn.gelu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.out)(x)


class ConvDecoder(nn.Module):
  """[B, d] -> [B, 3, 28, 28] in [0, 1]."""

  @nn.compact
  def __call__(self, z):
    x = nn.gelu(nn.Dense(7 * 7 * 32)(z)).reshape(z.shape[0], 7, 7, 32)
    x = nn.gelu(nn.ConvTranspose(16, (3, 3), strides=(2, 2))(x))  # 14x14
    x = nn.sigmoid(nn.ConvTranspose(3, (3, 3), strides=(2, 2))(x))  # 28x28
    return jnp.transpose(x, (0, 3, 1, 2))


class Mapping(nn.Module):
  """T(n<-m): d -> width x3 (LayerNorm + GELU) -> d, as the paper's release."""
  width: int
  out: int

  @nn.compact
  def __call__(self, z):
    for _ in range(3):
      z = nn.gelu(nn.LayerNorm()(nn.Dense(self.width)(z)))
    return nn.Dense(self.out)(z)


# ---------------------------------------------------------------- task model


class SeqEncoder(nn.Module):
  """FedMultimodal's sequence encoder: Conv1d x3 [32,64,128], k=5, then GRU."""
  out: int

  @nn.compact
  def __call__(self, x):                          # [B, T, C]
    for c in (32, 64, 128):
      x = nn.relu(nn.Conv(c, (5,))(x))
    return nn.RNN(nn.GRUCell(self.out))(x)[:, -1]


class TaskEncoder(nn.Module):
  kind: str
  out: int

  @nn.compact
  def __call__(self, x):
    if self.kind == 'sequence':
      return SeqEncoder(self.out)(x)
    if self.kind == 'image':
      return nn.relu(ConvEncoder(self.out)(x))
    return nn.relu(MLP((128,), self.out)(x))


class AttentionFusion(nn.Module):
  """Masked attention pooling over modality features [B, M, H] -> [B, H]."""

  @nn.compact
  def __call__(self, h, mask):
    # No bias on the score: softmax ignores it, so its gradient is pure
    # rounding noise that an adaptive server optimizer would amplify.
    scores = nn.Dense(1, use_bias=False)(jnp.tanh(nn.Dense(h.shape[-1])(h)))
    scores = scores[..., 0]                                          # [B, M]
    scores = jnp.where(mask, scores, -1e9)
    weights = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum('bm,bmh->bh', weights, h)


class Head(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(64)(x)))


# -------------------------------------------------------------- the container


class Model:
  """Module definitions for one dataset and pure functions over their params."""

  def __init__(self, spec: DataSpec, *, latent_dim: int, gen_width: int,
               map_width: int, task_width: int):
    self.spec = spec
    self.latent_dim = latent_dim
    d = latent_dim
    self.gen_enc, self.gen_dec, self.task_enc = {}, {}, {}
    for name, kind, shape in zip(spec.modalities, spec.kinds, spec.shapes):
      if kind == 'image':
        self.gen_enc[name] = ConvEncoder(2 * d)
        self.gen_dec[name] = ConvDecoder()
      else:  # vectors and (flattened) sequences
        self.gen_enc[name] = MLP((gen_width, gen_width), 2 * d)
        self.gen_dec[name] = MLP((gen_width, gen_width), int(np.prod(shape)))
      self.task_enc[name] = TaskEncoder(kind, task_width)
    self.mapping = Mapping(map_width, d)
    self.fusion = AttentionFusion()
    self.head = Head(spec.num_classes)
    self.task_width = task_width

  def init(self, key: chex.PRNGKey) -> dict:
    """Initial params of every group. Shapes depend only on the spec."""
    spec, d = self.spec, self.latent_dim
    keys = iter(jax.random.split(key, 3 * spec.num_modalities + 3))
    gen = {'enc': {}, 'dec': {}}
    task = {'enc': {}}
    for name, shape in zip(spec.modalities, spec.shapes):
      x = jnp.zeros((1, *shape))
      gen['enc'][name] = self.gen_enc[name].init(next(keys), x)['params']
      gen['dec'][name] = self.gen_dec[name].init(
          next(keys), jnp.zeros((1, d)))['params']
      task['enc'][name] = self.task_enc[name].init(next(keys), x)['params']
    num_pairs = len(spec.pairs)
    pair_keys = jax.random.split(next(keys), num_pairs)
    mapping = jax.vmap(lambda k: self.mapping.init(k, jnp.zeros((1, d))))(
        pair_keys)['params']
    h = jnp.zeros((1, spec.num_modalities, self.task_width))
    task['fuse'] = self.fusion.init(next(keys), h, jnp.ones((1, 1), bool))[
        'params']
    task['head'] = self.head.init(next(keys), h[:, 0])['params']
    return {'gen': gen, 'map': mapping, 'task': task}

  # Generator ---------------------------------------------------------------

  def encode(self, gen: dict, xs: Sequence[jax.Array]):
    """xs: per modality [B, ...] -> (mu, logvar), each [M, B, d]."""
    out = jnp.stack([self.gen_enc[n].apply({'params': gen['enc'][n]}, x)
                     for n, x in zip(self.spec.modalities, xs)])
    mu, logvar = jnp.split(out, 2, axis=-1)
    return mu, jnp.clip(logvar, -10.0, 10.0)

  def decode(self, gen: dict, index: int, z: jax.Array) -> jax.Array:
    """z: [B, d] -> modality `index` reconstruction [B, *shape]."""
    name = self.spec.modalities[index]
    out = self.gen_dec[name].apply({'params': gen['dec'][name]}, z)
    return out.reshape(z.shape[0], *self.spec.shapes[index])

  def decode_each(self, gen: dict, index: jax.Array, z: jax.Array) -> jax.Array:
    """z: [K, B, d]; index: [K] ints, traced -> [K, B, *shape]: decoder
    index[k] applied to z[k]. Needs modalities of one kind and shape, whose
    decoders share a structure (their params are stacked and gathered)."""
    if len(set(zip(self.spec.kinds, self.spec.shapes))) != 1:
      raise ValueError('decoding with a traced modality index needs '
                       f'modalities of one kind and shape, not {self.spec}.')
    names = self.spec.modalities
    stacked = jax.tree.map(lambda *a: jnp.stack(a),
                           *[gen['dec'][n] for n in names])
    dec = self.gen_dec[names[0]]
    out = jax.vmap(lambda i, zk: dec.apply(
        {'params': jax.tree.map(lambda a: a[i], stacked)}, zk))(index, z)
    return out.reshape(*z.shape[:2], *self.spec.shapes[0])

  def nll(self, index: int, x_hat: jax.Array, x: jax.Array,
          batch_ndim: int = 1) -> jax.Array:
    """-log p(x | x_hat) of modality `index` under its kind's likelihood,
    summed over every axis after the first `batch_ndim` (x and x_hat
    broadcast against each other): [*batch]."""
    e = LIKELIHOODS[self.spec.kinds[index]](x_hat, x)
    return e.reshape(*e.shape[:batch_ndim], -1).sum(-1)

  def map_pairs(self, mapping: dict, z: jax.Array) -> jax.Array:
    """z: [M, B, d] latents -> [P, B, d], slice p = T(dst_p <- src_p)(z[src_p])."""
    src = self.spec.pairs[:, 1]
    return jax.vmap(lambda p, x: self.mapping.apply({'params': p}, x))(
        mapping, z[src])

  # Task --------------------------------------------------------------------

  def logits(self, task: dict, xs: Sequence[jax.Array], attend: jax.Array):
    """xs: per modality [B, ...]; attend: [B, M] bool -> [B, classes]."""
    h = jnp.stack([self.task_enc[n].apply({'params': task['enc'][n]}, x)
                   for n, x in zip(self.spec.modalities, xs)], axis=1)
    fused = self.fusion.apply({'params': task['fuse']}, h, attend)
    return self.head.apply({'params': task['head']}, fused)
