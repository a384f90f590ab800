"""The grouped generator networks (models.Group) against separate ones.

A group's members share one stacked, vmapped network on inputs padded to the
group's widest member. These tests rebuild each member as the plain network
of its own size (flax MLP, the padded rows and columns cut off) and check
that the group computes exactly that, that training keeps the padding zero,
and that each member's init has its own fan-in.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import rounds
from fedrecon_jax.hparams import Hparams
from fedrecon_jax.methods import GEN_STAGE
from fedrecon_jax.models import (AttentionFusion, ConvDecoder, ConvEncoder,
                                 DataSpec, Head, MLP, Model, PatchConv,
                                 TaskEncoder, depth_to_space)

import toy

SPEC = DataSpec(('a', 'b', 'c'), ('vector', 'sequence', 'vector'),
                ((5,), (3, 4), (9,)), 2)
D, WIDTH = 3, 8


def own_params(model, gen, part, i):
  """Member i's params cut to its own sizes: a plain MLP's params."""
  p = model.member(gen[part], i)
  size = int(np.prod(model.spec.shapes[i]))
  if part == 'enc':
    return {**p, 'Dense_0': {**p['Dense_0'],
                             'kernel': p['Dense_0']['kernel'][:size]}}
  return {**p, 'Dense_2': jax.tree.map(lambda a: a[..., :size], p['Dense_2'])}


def test_a_group_computes_each_member_as_its_own_network():
  model = Model(SPEC, latent_dim=D, gen_width=WIDTH, map_width=4,
                task_width=4)
  gen = model.init_params(jax.random.key(0))['gen']
  rng = np.random.default_rng(0)
  xs = tuple(rng.normal(size=(6, *s)).astype(np.float32) for s in SPEC.shapes)
  z = rng.normal(size=(6, D)).astype(np.float32)
  mu, logvar = model.encode(gen, xs)
  decoded = model.decode_all(gen, jnp.broadcast_to(z, (3, 6, D)))
  for i, (x, shape) in enumerate(zip(xs, SPEC.shapes)):
    size = int(np.prod(shape))
    out = MLP((WIDTH, WIDTH), 2 * D).apply(
        {'params': own_params(model, gen, 'enc', i)}, x)
    np.testing.assert_allclose(mu[i], out[:, :D], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(logvar[i], np.clip(out[:, D:], -10, 10),
                               rtol=1e-6, atol=1e-6)
    want = MLP((WIDTH, WIDTH), size).apply(
        {'params': own_params(model, gen, 'dec', i)}, z).reshape(6, *shape)
    np.testing.assert_allclose(decoded[i], want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(model.decode(gen, i, z), want, rtol=1e-6,
                               atol=1e-6)


def test_task_logits_equal_those_of_separate_task_encoders():
  """Task encoders of one shape are grouped too (not padded: a and c share
  'mlp', e and the sequence b are alone): the logits equal those of one
  plain encoder per modality feeding the same fusion and head."""
  spec = DataSpec(('a', 'b', 'c', 'e'), ('vector', 'sequence', 'vector',
                                         'vector'), ((5,), (3, 4), (5,), (9,)),
                  2)
  model = Model(spec, latent_dim=D, gen_width=WIDTH, map_width=4,
                task_width=4)
  task = model.init_params(jax.random.key(3))['task']
  assert [(g.name, g.members) for g in model.task_groups] == [
      ('mlp', (0, 2)), ('mlp_1', (3,)), ('seq', (1,))]
  rng = np.random.default_rng(1)
  xs = tuple(rng.normal(size=(6, *s)).astype(np.float32) for s in spec.shapes)
  attend = jnp.asarray(rng.uniform(size=(6, 4)) < 0.7)
  feats = [TaskEncoder('seq' if kind == 'sequence' else 'mlp', 4).apply(
      {'params': model.member(task['enc'], i, task=True)}, x)
           for i, (x, kind) in enumerate(zip(xs, spec.kinds))]
  fused = AttentionFusion().apply({'params': task['fuse']},
                                  jnp.stack(feats, 1), attend)
  want = Head(spec.num_classes).apply({'params': task['head']}, fused)
  np.testing.assert_allclose(model.logits(task, xs, attend), want, rtol=1e-5,
                             atol=1e-6)


def test_each_member_starts_with_its_own_fan_in():
  """lecun_normal: the first layer's std is 1 / sqrt(member's input size),
  not of the padded width (8 inputs padded to 200 would start 5x smaller)."""
  spec = DataSpec(('small', 'wide'), ('vector',) * 2, ((8,), (200,)), 2)
  model = Model(spec, latent_dim=4, gen_width=256, map_width=4, task_width=4)
  gen = model.init_params(jax.random.key(1))['gen']
  kernel = np.asarray(gen['enc']['mlp']['Dense_0']['kernel'])   # [2, 200, 256]
  for g, size in enumerate((8, 200)):
    std = kernel[g, :size].std()
    assert abs(std * np.sqrt(size) - 1) < 0.1, (size, std)
    assert not np.any(kernel[g, size:])
  last = np.asarray(gen['dec']['mlp']['Dense_2']['kernel'])     # [2, 256, 200]
  assert not np.any(last[0, :, 8:]) and np.all(np.any(last[0, :, :8], 0))


def test_training_keeps_the_padding_zero():
  """A client update with weight decay and FedProx leaves every padded row
  and column exactly zero (their gradients are zero)."""
  model = toy.small_model()       # sizes 5, 7, 4: padded to 7
  params = toy.init_params(model)
  cfg = toy.cfg_for(weight_decay=0.1, fedprox_mu=0.5)
  update = toy.stage_plan(cfg, GEN_STAGE).client_update
  trainable, frozen = rounds.split_params(params, ('gen', 'map'))
  data = jax.tree.map(lambda x: x[0], toy.make_population())
  trained = update(Hparams.of(cfg), trainable, frozen, data,
                   jax.random.key(2))[0]['gen']
  moved = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                       trained, trainable['gen'])
  assert all(jax.tree.leaves(moved))
  for i, shape in enumerate(toy.SHAPES):
    size = shape[0]
    enc = model.member(trained['enc'], i)
    dec = model.member(trained['dec'], i)
    assert not np.any(enc['Dense_0']['kernel'][size:])
    assert not np.any(dec['Dense_2']['kernel'][:, size:])
    assert not np.any(dec['Dense_2']['bias'][size:])


def test_patch_conv_is_nn_conv_with_the_same_kernel():
  # PatchConv is a matmul rewrite of nn.Conv(F, (3, 3), strides, 'SAME'):
  # nn.Conv with PatchConv's Dense kernel reshaped to [3, 3, C, F] is the
  # reference, odd and even sizes and both strides.

  for shape, stride in (((2, 7, 7, 4), 1), ((2, 28, 28, 3), 2),
                        ((1, 14, 9, 5), 2)):
    x = jax.random.normal(jax.random.key(0), shape)
    conv = PatchConv(6, stride=stride)
    params = conv.init(jax.random.key(1), x)['params']
    kernel = params['Dense_0']['kernel'].reshape(3, 3, shape[-1], 6)
    ref = nn.Conv(6, (3, 3), strides=stride, padding='SAME').apply(
        {'params': {'kernel': kernel, 'bias': params['Dense_0']['bias']}}, x)
    np.testing.assert_allclose(conv.apply({'params': params}, x), ref,
                               rtol=1e-5, atol=1e-5)


def test_depth_to_space_moves_each_channel_block_to_its_sub_pixel():
  x = np.random.default_rng(0).normal(size=(2, 3, 4, 2 * 2 * 5)).astype(
      np.float32)
  y = np.asarray(depth_to_space(jnp.asarray(x), 2))
  assert y.shape == (2, 6, 8, 5)
  for i in range(3):
    for j in range(4):
      for di in range(2):
        for dj in range(2):
          np.testing.assert_array_equal(
              y[:, 2 * i + di, 2 * j + dj], x[:, i, j, (2 * di + dj) * 5:
                                              (2 * di + dj + 1) * 5])


def test_image_networks_take_any_height_width_and_channels():
  for chw in ((3, 28, 28), (1, 30, 18)):
    x = jnp.ones((2, *chw))
    # Shapes only: traced, not compiled.
    enc = ConvEncoder(8)
    params = jax.eval_shape(enc.init, jax.random.key(0), x)
    assert jax.eval_shape(enc.apply, params, x).shape == (2, 8)
    dec = ConvDecoder(chw)
    z = jnp.ones((2, 4))
    params = jax.eval_shape(dec.init, jax.random.key(0), z)
    assert jax.eval_shape(dec.apply, params, z).shape == (2, *chw)
