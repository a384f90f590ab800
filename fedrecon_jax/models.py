"""Flax modules: the MVAE generator, the mappings T(n<-m) and the task model.

Parameters are plain nested dicts with one entry per parameter group, because
the server averages each group only over the clients that trained it:

  params = {
    'gen':  {'enc': {group: ...}, 'dec': {group: ...}}, leaves with a
            leading axis [G], one slice per modality of the group (`Group`),
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



def _pad_last(x: jax.Array, size: int) -> jax.Array:
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])


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


@dataclasses.dataclass(frozen=True)
class Group:
  """Modalities whose generator networks share one architecture.

  A group's encoders (and decoders) are one module with its params stacked
  on a leading [G] axis, applied once, vmapped, to the members' inputs
  padded to the group's largest size: one batched network instead of G small
  ones, so a round traces and compiles about G times fewer ops. 'mlp' holds
  vectors and sequences (flattened), 'conv' images (of one shape). Padding
  is exact: member g reads its first sizes[g] inputs and writes its first
  sizes[g] outputs; the kernel rows and columns past those start at zero,
  get zero gradients (and zero weight decay), and so stay zero.
  """
  name: str                    # 'mlp' | 'conv': the key in params['gen'][part]
  members: tuple[int, ...]     # modality indices, increasing
  sizes: tuple[int, ...]       # each member's flattened size

  @property
  def width(self) -> int:
    return max(self.sizes)


def generator_groups(spec: DataSpec) -> tuple[Group, ...]:
  """The spec's modalities grouped by generator architecture."""
  groups = []
  for name in ('mlp', 'conv'):
    members = tuple(i for i, k in enumerate(spec.kinds)
                    if (k == 'image') == (name == 'conv'))
    if not members:
      continue
    if name == 'conv' and len({spec.shapes[i] for i in members}) > 1:
      raise ValueError('image modalities must share one shape, got '
                       f'{[spec.shapes[i] for i in members]}.')
    groups.append(Group(name, members, tuple(
        int(np.prod(spec.shapes[i])) for i in members)))
  return tuple(groups)


def _fit_members(enc: dict, dec: dict, group: Group):
  """Stacked 'mlp' params initialised at the padded width -> each member's
  own: the first layer's fan-in is the member's input size (lecun_normal's
  scale, which init took from the padded width), and the rows past it, and
  the last layer's columns past its output size, are zero."""
  g, w = len(group.members), group.width
  real = jnp.arange(w)[None] < jnp.asarray(group.sizes)[:, None]      # [G, W]
  scale = jnp.sqrt(w / jnp.asarray(group.sizes, jnp.float32))[:, None]
  first = enc['Dense_0']['kernel']                                     # [G, W, h]
  enc = {**enc, 'Dense_0': {**enc['Dense_0'], 'kernel': first * (
      real * scale).reshape(g, w, 1)}}
  last = f'Dense_{len(dec) - 1}'
  dec = {**dec, last: jax.tree.map(
      lambda a: a * real.reshape(g, *([1] * (a.ndim - 2)), w), dec[last])}
  return enc, dec


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
    self.groups = generator_groups(spec)
    # Modality index -> (its group, its slot in the group's stack).
    self.slot = {i: (g, j) for g in self.groups
                 for j, i in enumerate(g.members)}
    self.gen_enc, self.gen_dec = {}, {}
    for g in self.groups:
      if g.name == 'conv':
        self.gen_enc[g.name], self.gen_dec[g.name] = (ConvEncoder(2 * d),
                                                      ConvDecoder())
      else:
        self.gen_enc[g.name] = MLP((gen_width, gen_width), 2 * d)
        self.gen_dec[g.name] = MLP((gen_width, gen_width), g.width)
    self.task_enc = {name: TaskEncoder(kind, task_width)
                     for name, kind in zip(spec.modalities, spec.kinds)}
    self.mapping = Mapping(map_width, d)
    self.fusion = AttentionFusion()
    self.head = Head(spec.num_classes)
    self.task_width = task_width

  def _group_input_shape(self, g: Group) -> tuple[int, ...]:
    return self.spec.shapes[g.members[0]] if g.name == 'conv' else (g.width,)

  def init(self, key: chex.PRNGKey) -> dict:
    """Initial params of every group. Shapes depend only on the spec."""
    spec, d = self.spec, self.latent_dim
    keys = iter(jax.random.split(key, 2 * len(self.groups)
                                 + spec.num_modalities + 3))
    gen = {'enc': {}, 'dec': {}}
    for g in self.groups:
      x = jnp.zeros((1, *self._group_input_shape(g)))
      init = lambda module, x: jax.vmap(lambda k: module.init(k, x)['params'])
      enc = init(self.gen_enc[g.name], x)(
          jax.random.split(next(keys), len(g.members)))
      dec = init(self.gen_dec[g.name], jnp.zeros((1, d)))(
          jax.random.split(next(keys), len(g.members)))
      if g.name == 'mlp':
        enc, dec = _fit_members(enc, dec, g)
      gen['enc'][g.name], gen['dec'][g.name] = enc, dec
    task = {'enc': {}}
    for name, shape in zip(spec.modalities, spec.shapes):
      task['enc'][name] = self.task_enc[name].init(
          next(keys), jnp.zeros((1, *shape)))['params']
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

  def modality_params(self, gen: dict, part: str, index: int) -> dict:
    """Modality `index`'s slice of gen[part] ('enc' | 'dec')."""
    g, j = self.slot[index]
    return jax.tree.map(lambda a: a[j], gen[part][g.name])

  def _per_modality(self, per_group: dict, unpad) -> list:
    """{group name: [G, ...]} -> per modality, in modality order."""
    out = [None] * self.spec.num_modalities
    for g in self.groups:
      for j, i in enumerate(g.members):
        out[i] = unpad(i, per_group[g.name][j])
    return out

  def _unpad(self, i: int, y: jax.Array) -> jax.Array:
    """A decoder's [K, width] (or image) output -> [K, *shape of i]."""
    shape = self.spec.shapes[i]
    return y[:, :int(np.prod(shape))].reshape(y.shape[0], *shape)

  def encode(self, gen: dict, xs: Sequence[jax.Array]):
    """xs: per modality [B, ...] -> (mu, logvar), each [M, B, d]."""
    outs = {}
    for g in self.groups:
      x = jnp.stack([xs[i] if g.name == 'conv' else _pad_last(
          xs[i].reshape(xs[i].shape[0], -1), g.width) for i in g.members])
      outs[g.name] = jax.vmap(lambda p, x, m=self.gen_enc[g.name]: m.apply(
          {'params': p}, x))(gen['enc'][g.name], x)
    out = jnp.stack(self._per_modality(outs, lambda i, y: y))
    mu, logvar = jnp.split(out, 2, axis=-1)
    return mu, jnp.clip(logvar, -10.0, 10.0)

  def decode_all(self, gen: dict, z: jax.Array) -> list:
    """z: [M, K, d] -> per modality n, Dec_n(z[n]) [K, *shape of n]."""
    outs = {}
    for g in self.groups:
      zg = z[np.asarray(g.members)] if len(g.members) < len(z) else z
      outs[g.name] = jax.vmap(lambda p, x, m=self.gen_dec[g.name]: m.apply(
          {'params': p}, x))(gen['dec'][g.name], zg)
    return self._per_modality(outs, self._unpad)

  def decode(self, gen: dict, index: int, z: jax.Array) -> jax.Array:
    """z: [B, d] -> modality `index` reconstruction [B, *shape]."""
    g, _ = self.slot[index]
    out = self.gen_dec[g.name].apply(
        {'params': self.modality_params(gen, 'dec', index)}, z)
    return self._unpad(index, out)

  def decode_each(self, gen: dict, index: jax.Array, z: jax.Array) -> jax.Array:
    """z: [K, B, d]; index: [K] ints, traced -> [K, B, *shape]: decoder
    index[k] applied to z[k]. Needs modalities of one kind and shape (one
    group, whose stacked params are gathered)."""
    if len(set(zip(self.spec.kinds, self.spec.shapes))) != 1:
      raise ValueError('decoding with a traced modality index needs '
                       f'modalities of one kind and shape, not {self.spec}.')
    (g,) = self.groups
    params = jax.tree.map(lambda a: a[index], gen['dec'][g.name])
    out = jax.vmap(lambda p, zk: self._unpad(0, self.gen_dec[g.name].apply(
        {'params': p}, zk)))(params, z)
    return out

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
