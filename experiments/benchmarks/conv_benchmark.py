r"""Image generator on XLA:CPU: nn.Conv vs models.PatchConv, vmapped as rounds run it.

A round vmaps each client's update over the cohort, and a client's image
encoders and decoders over its modalities (modality_groups.Group), so a
plain nn.Conv becomes a grouped convolution. This times one gradient step
of an encoder + decoder pair written both ways, with the same layer shapes
(nn.Conv / nn.ConvTranspose at stride 2 vs PatchConv + depth_to_space), the
two alternating so that a busy machine slows both alike.

  python -m experiments.benchmarks.conv_benchmark --clients=1,10 --repeats=5

Writes experiments/results/conv_cpu.{json,md}.
"""

import json
import os
import time

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from experiments.paper import provenance
from fedrecon_jax import models

_CLIENTS = flags.DEFINE_list('clients', ['1', '10'], 'Cohort sizes.')
_MODALITIES = flags.DEFINE_integer('modalities', 5, 'Modalities G.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Client batch.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed steps per variant.')
_OUT = flags.DEFINE_string('out', 'experiments/results/conv_cpu',
                           'Output path without extension.')
C1, C2 = models.CONV_CHANNELS


class _ConvEncoder(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.gelu(nn.Conv(C1, (3, 3), strides=2)(x))
    x = nn.gelu(nn.Conv(C2, (3, 3), strides=2)(x))
    return nn.Dense(32)(nn.gelu(nn.Dense(128)(x.reshape(x.shape[0], -1))))


class _ConvDecoder(nn.Module):
  @nn.compact
  def __call__(self, z):
    x = nn.gelu(nn.Dense(7 * 7 * C2)(z)).reshape(z.shape[0], 7, 7, C2)
    x = nn.gelu(nn.ConvTranspose(C1, (3, 3), strides=(2, 2))(x))
    return nn.ConvTranspose(3, (3, 3), strides=(2, 2))(x)


def _step(enc, dec, clients):
  """A jitted gradient of |Dec(Enc(x))- x| over [clients, G] networks."""
  g, b = _MODALITIES.value, _BATCH.value
  x = jax.random.uniform(jax.random.key(0), (clients, g, b, 28, 28, 3))
  keys = jax.random.split(jax.random.key(1), (clients, g))
  init = lambda m, a: jax.vmap(jax.vmap(lambda k: m.init(k, a)))(keys)
  pe = init(enc, x[0, 0])
  pd = init(dec, jnp.zeros((b, 32)))
  apply2 = lambda m: jax.vmap(jax.vmap(m.apply))

  def loss(pe, pd):
    y = apply2(dec)(pd, apply2(enc)(pe, x))
    return jnp.abs(y - x).sum()
  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  t = time.perf_counter()
  jax.block_until_ready(grad(pe, pd))
  compile_s = time.perf_counter() - t
  return lambda: jax.block_until_ready(grad(pe, pd)), compile_s


def main(argv):
  del argv
  patch_enc = models.ConvEncoder(32)
  patch_dec = models.ConvDecoder((3, 28, 28))
  # models' networks read and write CHW; the nn.Conv ones HWC: a transpose
  # either way, not timed apart.
  rows = []
  for clients in map(int, _CLIENTS.value):
    variants = {
        'nn.Conv (grouped when vmapped)': _step(_ConvEncoder(),
                                                _ConvDecoder(), clients),
        'PatchConv (batched matmuls)': _step(_Chw(patch_enc), _Chw(patch_dec,
                                                                  out=True),
                                             clients)}
    times = {name: [] for name in variants}
    for _ in range(_REPEATS.value):
      for name, (fn, _) in variants.items():
        t = time.perf_counter()
        fn()
        times[name].append(time.perf_counter() - t)
    for name, (_, compile_s) in variants.items():
      rows.append({'clients': clients, 'modalities': _MODALITIES.value,
                   'batch': _BATCH.value, 'variant': name,
                   'median_s': float(np.median(times[name])),
                   'min_s': float(np.min(times[name])),
                   'compile_s': compile_s})
  base = {r['clients']: r['median_s'] for r in rows
          if r['variant'].startswith('nn.Conv')}
  lines = ['# Image generator step on XLA:CPU: nn.Conv vs PatchConv', '',
           '`python -m experiments.benchmarks.conv_benchmark` at commit '
           f'{provenance.commit()} '
           f'on {jax.devices()[0]}, {time.strftime("%Y-%m-%d")}, '
           f'{_REPEATS.value} alternating steps each; one gradient step of '
           'encoder + decoder over clients x modalities x batch.', '',
           '| clients | variant | median s | min s | compile s | speed-up |',
           '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["clients"]} | {r["variant"]} | {r["median_s"]:.3f} '
                 f'| {r["min_s"]:.3f} | {r["compile_s"]:.1f} | '
                 f'{base[r["clients"]] / r["median_s"]:.1f}x |')
  text = '\n'.join(lines) + '\n'
  print(text)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  with open(_OUT.value + '.json', 'w') as f:
    json.dump(rows, f, indent=1)
  with open(_OUT.value + '.md', 'w') as f:
    f.write(text)


class _Chw(nn.Module):
  """models' CHW networks on the benchmark's HWC arrays."""
  inner: nn.Module
  out: bool = False

  @nn.compact
  def __call__(self, x):
    if self.out:
      return jnp.transpose(self.inner(x), (0, 2, 3, 1))
    return self.inner(jnp.transpose(x, (0, 3, 1, 2)))


if __name__ == '__main__':
  app.run(main)
