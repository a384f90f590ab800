"""Flax modules: the MVAE generator, the mappings T(n<-m) and the task model.

Parameters are plain nested dicts with one entry per parameter group, because
the server averages each group only over the clients that trained it:

  params = {
    'gen':  {'enc': {group: ...}, 'dec': {group: ...}},
    'map':  leaves with a leading axis [P], one slice per ordered pair (n<-m),
    'task': {'enc': {group: ...}, 'fuse': ..., 'head': ...}}

with a leading axis [G] on a group's leaves, one slice per modality of the
group (`Group`, `Model.member`). `Model` holds the module definitions and
exposes pure functions over those dicts; it keeps no state. The decoder's likelihood is a property of the
modality kind (`LIKELIHOODS`).
"""

from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax.modality_groups import (GEN_ARCH, TASK_ARCH, Group,
                                          group_modalities, own_fan_in,
                                          own_outputs, pad_last)
from fedrecon_jax.spec import DataSpec


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


def masked_sequence_nll(x_hat: jax.Array, x: jax.Array) -> jax.Array:
  """Elementwise -log p of a masked sequence [..., T, C + 1] whose last
  channel is the frame mask m_t (1 for real frames, a prefix).

  x_hat's first C channels are the frames' means, its last a logit of m_t:
  a unit-variance Gaussian on the standardised features of the real frames
  only (padded frames add 0: their zeros are not data) and a Bernoulli
  on every frame's mask, so a decoder also says how long the sequence is.
  """
  mask = x[..., -1:]
  frames = gaussian_nll(x_hat[..., :-1], x[..., :-1]) * mask
  logit = x_hat[..., -1:]
  flags = jax.nn.softplus(logit) - mask * logit      # -log Bern(m | sig(l))
  *lead, channels = jnp.broadcast_shapes(x_hat.shape, x.shape)
  return jnp.concatenate(
      [jnp.broadcast_to(frames, (*lead, channels - 1)),
       jnp.broadcast_to(flags, (*lead, 1))], -1)


def masked_sequence_data(x_hat: jax.Array) -> jax.Array:
  """A masked sequence decoder's output [..., T, C + 1] -> a sample in the
  data's own form: the mask a prefix of the frames whose logit is > 0 (the
  first frame always: lengths are >= 1), features 0 past it."""
  on = (x_hat[..., 1:, -1] > 0).astype(x_hat.dtype)
  mask = jnp.cumprod(jnp.concatenate([jnp.ones_like(x_hat[..., :1, -1]), on],
                                     -1), -1)[..., None]
  return jnp.concatenate([x_hat[..., :-1] * mask, mask], -1)


LIKELIHOODS = {'image': laplace_nll, 'vector': gaussian_nll,
               'sequence': gaussian_nll,
               'masked_sequence': masked_sequence_nll}
# A decoder's output as a sample of its kind (a reconstruction), where it is
# not the likelihood's mean itself.
AS_DATA = {'masked_sequence': masked_sequence_data}


class MLP(nn.Module):
  """[B, ...] -> [B, out]. Small on purpose: the FedRecon objective decodes
  every latent with every other decoder, M(M-1) + M decoder passes a batch."""
  widths: Sequence[int]
  out: int

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for w in self.widths:
      x = nn.gelu(nn.Dense(w)(x))
    return nn.Dense(self.out)(x)


def patches(x: jax.Array, size: int, stride: int) -> jax.Array:
  """[B, H, W, C] -> [B, ceil(H/s), ceil(W/s), size * size * C]: each output
  position's size x size window ('SAME' padding, as nn.Conv pads), the
  window's rows, then columns, then channels on the last axis."""
  _, h, w, _ = x.shape
  ho, wo = -(-h // stride), -(-w // stride)
  ph = max((ho - 1) * stride + size - h, 0)
  pw = max((wo - 1) * stride + size - w, 0)
  x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2),
                  (0, 0)))
  return jnp.concatenate(
      [x[:, i:i + (ho - 1) * stride + 1:stride, j:j + (wo - 1) * stride + 1:
         stride] for i in range(size) for j in range(size)], axis=-1)


class PatchConv(nn.Module):
  """nn.Conv(features, (3, 3), strides, 'SAME') as patches and one Dense.

  The same function as nn.Conv (its kernel [3, 3, C, F] is this Dense's
  [9 C, F], row-major), computed as a matmul: the generator's convolutions
  are vmapped over modalities and clients, and XLA:CPU runs a vmapped
  nn.Conv as a grouped convolution whose backward pass is many times slower
  than the batched matmuls this becomes (experiments/results/conv_cpu.md).
  """
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.features)(patches(x, 3, self.stride))


class PatchConv1D(nn.Module):
  """nn.Conv(features, (size,), padding='SAME') on [B, T, C] as shifted
  copies and one Dense (its kernel [size, C, F] is this Dense's
  [size C, F]). The kernel gradient of XLA:CPU's 1-D convolution took 86%
  of an av_mnist task-stage step (profile_step); as a matmul it is cheap."""
  features: int
  size: int = 5

  @nn.compact
  def __call__(self, x):
    t, lo = x.shape[1], (self.size - 1) // 2
    x = jnp.pad(x, ((0, 0), (lo, self.size - 1 - lo), (0, 0)))
    return nn.Dense(self.features)(jnp.concatenate(
        [x[:, i:i + t] for i in range(self.size)], -1))


def depth_to_space(x: jax.Array, r: int = 2) -> jax.Array:
  """[B, H, W, r * r * C] -> [B, r H, r W, C] (sub-pixel upsampling)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h, w, r, r, c // (r * r)).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, c // (r * r))


# Channels of the image encoder's two stride-2 convolutions (the decoder
# mirrors them).
CONV_CHANNELS = (16, 32)


class ConvEncoder(nn.Module):
  """[B, C, H, W] -> [B, out]: two stride-2 3x3 convolutions, a hidden
  layer."""
  out: int

  @nn.compact
  def __call__(self, x):
    x = jnp.transpose(x, (0, 2, 3, 1))
    for c in CONV_CHANNELS:
      x = nn.gelu(PatchConv(c, stride=2)(x))
    x = nn.gelu(nn.Dense(128)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.out)(x)


class ConvDecoder(nn.Module):
  """[B, d] -> [B, C, H, W]: a Dense onto a (H/4, W/4) grid, then two 2x
  sub-pixel upsamplings (a 3x3 convolution to 4x the channels, then
  depth_to_space: a stride-2 transposed convolution's function, as matmuls).

  The output is the Laplace mean itself, unbounded, as MoPoE's and MMVAE+'s
  PolyMNIST decoders leave it: a sigmoid saturates on the backgrounds'
  near-0 and near-1 pixels, where the Laplace gradient keeps pushing."""
  shape: tuple[int, int, int]       # C, H, W

  @nn.compact
  def __call__(self, z):
    c, h, w = self.shape
    gh, gw = -(-h // 4), -(-w // 4)
    top = CONV_CHANNELS[-1]
    x = nn.gelu(nn.Dense(gh * gw * top)(z)).reshape(z.shape[0], gh, gw, top)
    x = nn.gelu(depth_to_space(PatchConv(4 * CONV_CHANNELS[0])(x)))
    x = depth_to_space(PatchConv(4 * c)(x))[:, :h, :w]
    return jnp.transpose(x, (0, 3, 1, 2))


class Mapping(nn.Module):
  """T(n<-m): d -> width x3 (LayerNorm + GELU) -> d, as the paper's release
  (d: the unimodal latent's size)."""
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


class MaskedSeqEncoder(nn.Module):
  """SeqEncoder on a masked sequence [B, T, C + 1] (last channel the frame
  mask, read as an input too; convolutions as `PatchConv1D`): padded
  frames are zeroed after each convolution (a 'SAME' convolution spills real frames into them), and the
  GRU's output is read at each sample's last real frame, not at frame T.
  A sample of length 0 (an absent, zero-filled modality) gives zeros."""
  out: int

  @nn.compact
  def __call__(self, x):                          # [B, T, C + 1]
    mask = x[..., -1:]
    for c in (32, 64, 128):
      x = nn.relu(PatchConv1D(c)(x)) * mask
    outputs = nn.RNN(nn.GRUCell(self.out))(x)     # [B, T, out]
    length = mask[..., 0].sum(-1).astype(jnp.int32)
    last = jnp.arange(x.shape[1])[None] == length[:, None] - 1   # [B, T]
    return jnp.einsum('bt,bto->bo', last.astype(outputs.dtype), outputs)


class TaskEncoder(nn.Module):
  """A task encoder by architecture (TASK_ARCH): [B, ...] -> [B, out]."""
  arch: str
  out: int

  @nn.compact
  def __call__(self, x):
    if self.arch == 'seq':
      return SeqEncoder(self.out)(x)
    if self.arch == 'masked_seq':
      return MaskedSeqEncoder(self.out)(x)
    if self.arch == 'conv':
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


# fold_in index of the first extra group's init key.
_EXTRA_KEYS = 2**31 - 1024


class Model:
  """Module definitions for one dataset and pure functions over their params."""

  def __init__(self, spec: DataSpec, *, latent_dim: int, gen_width: int,
               map_width: int, task_width: int, latent_sizes=None,
               extra_groups=()):
    # latent_sizes: Generator.latent_sizes (default both latent_dim);
    # extra_groups: Generator.extra_groups, the param_groups.Group
    # declarations of groups a generator adds (each builds its params).
    self.spec, self.latent_dim, d = spec, latent_dim, latent_dim
    self.extra_groups = tuple(extra_groups)
    enc, self.dec_latent = latent_sizes or (d, d)
    self.groups = group_modalities(spec, GEN_ARCH, pad=True)
    self.task_groups = group_modalities(spec, TASK_ARCH, pad=False)
    self.gen_enc, self.gen_dec = {}, {}
    for g in self.groups:
      if g.arch == 'conv':
        self.gen_enc[g.name], self.gen_dec[g.name] = (
            ConvEncoder(2 * enc), ConvDecoder(spec.shapes[g.members[0]]))
      else:
        self.gen_enc[g.name] = MLP((gen_width, gen_width), 2 * enc)
        self.gen_dec[g.name] = MLP((gen_width, gen_width), g.width)
    self.task_enc = {g.name: TaskEncoder(g.arch, task_width)
                     for g in self.task_groups}
    # T(n<-m) maps a decoder's input, the whole unimodal latent (for
    # MMVAE+ latents, (w, z)).
    self.mapping = Mapping(map_width, self.dec_latent)
    self.fusion = AttentionFusion()
    self.head = Head(spec.num_classes)
    self.task_width = task_width

  def init(self, key: chex.PRNGKey) -> dict:
    """Initial params of every group. Shapes depend only on the spec."""
    spec = self.spec
    keys = iter(jax.random.split(key, 2 * len(self.groups)
                                 + len(self.task_groups) + 3))
    stacked = lambda module, x, g: jax.vmap(
        lambda k: module.init(k, x)['params'])(
            jax.random.split(next(keys), len(g.members)))
    gen = {'enc': {}, 'dec': {}}
    for g in self.groups:
      enc = stacked(self.gen_enc[g.name], self._group_input(g, None), g)
      dec = stacked(self.gen_dec[g.name], jnp.zeros((1, self.dec_latent)),
                    g)
      if g.arch == 'mlp':
        enc = own_fan_in(enc, ('Dense_0', 'kernel'), g)
        dec = own_outputs(dec, g)
      gen['enc'][g.name], gen['dec'][g.name] = enc, dec
    task = {'enc': {}}
    for g in self.task_groups:
      task['enc'][g.name] = stacked(self.task_enc[g.name],
                                    self._group_input(g, None), g)
    num_pairs = len(spec.pairs)
    pair_keys = jax.random.split(next(keys), num_pairs)
    mapping = jax.vmap(lambda k: self.mapping.init(
        k, jnp.zeros((1, self.dec_latent))))(pair_keys)['params']
    h = jnp.zeros((1, spec.num_modalities, self.task_width))
    task['fuse'] = self.fusion.init(next(keys), h, jnp.ones((1, 1), bool))[
        'params']
    task['head'] = self.head.init(next(keys), h[:, 0])['params']
    # Keys of their own, so that the other groups' do not change.
    extra = {g.name: g.init(self, jax.random.fold_in(key, _EXTRA_KEYS + i))
             for i, g in enumerate(self.extra_groups)}
    return {'gen': gen, 'map': mapping, 'task': task, **extra}

  def init_params(self, key: chex.PRNGKey) -> dict:
    """`init`, jitted and compiled once per Model; on CPU without LLVM
    optimisation: it runs once per run, so its compile costs more than its
    run, and -O0 shortens the compile far more than it slows the run
    (experiments/results/benchmark_cpu.md). Every caller that
    needs a run's initial params uses this, so they agree bitwise."""
    if not hasattr(self, '_init_compiled'):
      options = ({'xla_backend_optimization_level': 0}
                 if jax.default_backend() == 'cpu' else None)
      self._init_compiled = jax.jit(self.init).lower(key).compile(
          compiler_options=options)
    return self._init_compiled(key)

  # Groups ------------------------------------------------------------------

  def member(self, stacked: dict, index: int, task: bool = False) -> dict:
    """Modality `index`'s slice of a {group name: stacked params} dict:
    gen['enc'], gen['dec'], or (task=True) task['enc']."""
    (g, j), = [(g, j) for g in (self.task_groups if task else self.groups)
               for j, i in enumerate(g.members) if i == index]
    return jax.tree.map(lambda a: a[j], stacked[g.name])

  def _group_input(self, g: Group, xs) -> jax.Array:
    """The members' inputs stacked [G, B, ...] ('mlp': flattened, padded);
    xs=None: a zero input of batch 1 for init."""
    if xs is None:
      shape = (g.width,) if g.arch == 'mlp' else self.spec.shapes[g.members[0]]
      return jnp.zeros((1, *shape))
    if g.arch != 'mlp':
      return jnp.stack([xs[i] for i in g.members])
    return jnp.stack([pad_last(xs[i].reshape(xs[i].shape[0], -1), g.width)
                      for i in g.members])

  def _apply(self, modules: dict, params: dict, groups, inputs, unpad=None):
    """Each group's stacked module on its stacked input -> per modality, in
    modality order. inputs(g): [G, B, ...]; unpad(i, y) cuts member i's
    output."""
    out = [None] * self.spec.num_modalities
    for g in groups:
      apply = lambda p, x, m=modules[g.name]: m.apply({'params': p}, x)
      if len(g.members) == 1:   # a vmap over one member costs time here
        y = apply(jax.tree.map(lambda a: a[0], params[g.name]),
                  inputs(g)[0])[None]
      else:
        y = jax.vmap(apply)(params[g.name], inputs(g))
      for j, i in enumerate(g.members):
        out[i] = unpad(i, y[j]) if unpad else y[j]
    return out

  def _unpad(self, i: int, y: jax.Array) -> jax.Array:
    """A decoder's [K, width] (or image) output -> [K, *shape of i]."""
    shape = self.spec.shapes[i]
    return y[:, :int(np.prod(shape))].reshape(y.shape[0], *shape)

  # Generator ---------------------------------------------------------------

  def encode(self, gen: dict, xs: Sequence[jax.Array]):
    """xs: per modality [B, ...] -> (mu, logvar), each [M, B, d]."""
    out = jnp.stack(self._apply(self.gen_enc, gen['enc'], self.groups,
                                lambda g: self._group_input(g, xs)))
    mu, logvar = jnp.split(out, 2, axis=-1)
    return mu, jnp.clip(logvar, -10.0, 10.0)

  def decode_all(self, gen: dict, z: jax.Array) -> list:
    """z: [M, K, d] -> per modality n, Dec_n(z[n]) [K, *shape of n]."""
    members = lambda g: (z[np.asarray(g.members)] if len(g.members) < len(z)
                         else z)
    return self._apply(self.gen_dec, gen['dec'], self.groups, members,
                       self._unpad)

  def decode(self, gen: dict, index: int, z: jax.Array) -> jax.Array:
    """z: [B, d] -> modality `index` reconstruction [B, *shape]."""
    (g,) = [g for g in self.groups if index in g.members]
    out = self.gen_dec[g.name].apply(
        {'params': self.member(gen['dec'], index)}, z)
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
    return jax.vmap(lambda p, zk: self._unpad(0, self.gen_dec[g.name].apply(
        {'params': p}, zk)))(params, z)

  def nll(self, index: int, x_hat: jax.Array, x: jax.Array,
          batch_ndim: int = 1) -> jax.Array:
    """-log p(x | x_hat) of modality `index` under its kind's likelihood,
    summed over every axis after the first `batch_ndim` (x and x_hat
    broadcast against each other): [*batch]."""
    e = LIKELIHOODS[self.spec.kinds[index]](x_hat, x)
    return e.reshape(*e.shape[:batch_ndim], -1).sum(-1)

  def as_data(self, index: int, x_hat: jax.Array) -> jax.Array:
    """Decoder `index`'s output -> a reconstruction in the data's form
    (`AS_DATA`; the output itself for kinds whose mean is one)."""
    return AS_DATA.get(self.spec.kinds[index], lambda a: a)(x_hat)

  def map_pairs(self, mapping: dict, z: jax.Array) -> jax.Array:
    """z: [M, B, d] latents -> [P, B, d], slice p = T(dst_p <- src_p)(z[src_p])."""
    src = self.spec.pairs[:, 1]
    return jax.vmap(lambda p, x: self.mapping.apply({'params': p}, x))(
        mapping, z[src])

  # Task --------------------------------------------------------------------

  def logits(self, task: dict, xs: Sequence[jax.Array], attend: jax.Array):
    """xs: per modality [B, ...]; attend: [B, M] bool -> [B, classes]."""
    h = jnp.stack(self._apply(self.task_enc, task['enc'], self.task_groups,
                              lambda g: self._group_input(g, xs)), axis=1)
    fused = self.fusion.apply({'params': task['fuse']}, h, attend)
    return self.head.apply({'params': task['head']}, fused)
