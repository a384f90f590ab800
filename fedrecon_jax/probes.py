"""Probes: classifiers trained on real data that judge reconstructions.

A probe for modality n is fitted on the real training samples of n; its
accuracy on reconstructions x_n-hat is their coherence (FEDRECON.md,
"Evaluation of reconstruction"). Probes are central judges, not part of any
federated method, so they are cached per dataset (`cached_probes`) and
refitted only when their data or settings change. Also the fixed-size
chunking that every pass over a whole test set uses.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import os
from typing import Any, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from fedrecon_jax.models import PatchConv

DEFAULT_CHUNK = 256
# Part of every cached probe's fingerprint: bump it when the probe modules or
# their training change, so probes stored by older code are refitted.
PROBE_VERSION = 2   # 2: convolutions as PatchConv (new param names)


def pad_rows(x: np.ndarray, size: int) -> np.ndarray:
  """Zero-pads the leading axis of x up to `size` rows."""
  pad = size - x.shape[0]
  if pad == 0:
    return x
  return np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])


def chunk_slices(n: int, chunk: int):
  """(start, stop) of consecutive chunks covering n rows."""
  return [(i, min(i + chunk, n)) for i in range(0, n, chunk)]




class _ProbeMLP(nn.Module):
  """Flattened input -> hidden (ReLU) -> logits."""
  num_classes: int
  hidden: int = 256

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(self.num_classes)(nn.relu(nn.Dense(self.hidden)(x)))


class _ProbeCNN(nn.Module):
  """[B, C, H, W] images -> logits: two conv + max-pool blocks, one hidden
  layer. (A cheaper variant with three stride-2 convs and no pooling underfit
  polymnist_5k's cluttered backgrounds at lr 1e-3: train accuracy 0.86, test
  0.77-0.81.) Its convolutions are `models.PatchConv`: nn.Conv's function
  as matmuls, which XLA:CPU trains several times faster."""
  num_classes: int

  @nn.compact
  def __call__(self, x):
    x = jnp.transpose(x, (0, 2, 3, 1))
    for c in (16, 32):
      x = nn.relu(PatchConv(c)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Dense(64)(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes)(x)


def _module(arch: str, num_classes: int) -> nn.Module:
  if arch == 'mlp':
    return _ProbeMLP(num_classes)
  if arch == 'cnn':
    return _ProbeCNN(num_classes)
  raise ValueError(f"probe arch {arch!r} is not one of ('mlp', 'cnn').")


@dataclasses.dataclass(frozen=True)
class Probe:
  """A classifier of one modality's real samples.

  arch: 'cnn' for [C, H, W] images, 'mlp' for anything else (flattened).
  """
  arch: str
  num_classes: int
  params: Any


def default_arch(sample_shape: Sequence[int]) -> str:
  """'cnn' for CHW images, 'mlp' otherwise."""
  return 'cnn' if len(sample_shape) == 3 else 'mlp'


@functools.partial(jax.jit, static_argnames=('arch', 'num_classes', 'steps',
                                             'batch_size'))
def _fit(key, x, y, *, arch, num_classes, steps, batch_size, learning_rate,
         weight_decay):
  """Adam-W on cross-entropy for a fixed number of steps; minibatches drawn
  with replacement from `key`, so the result is a function of the key."""
  module = _module(arch, num_classes)
  init_key, batch_key = jax.random.split(key)
  params = module.init(init_key, x[:1])['params']
  tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps),
                   weight_decay=weight_decay)

  def loss_fn(p, xb, yb):
    logits = module.apply({'params': p}, xb)
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def step(carry, i):
    p, opt = carry
    idx = jax.random.randint(jax.random.fold_in(batch_key, i), (batch_size,),
                             0, x.shape[0])
    loss, g = jax.value_and_grad(loss_fn)(p, x[idx], y[idx])
    upd, opt = tx.update(g, opt, p)
    return (optax.apply_updates(p, upd), opt), loss

  (params, _), losses = jax.lax.scan(step, (params, tx.init(params)),
                                     jnp.arange(steps))
  return params, losses


def train_probe(x: np.ndarray, y: np.ndarray, num_classes: int, *,
                key: jax.Array, arch: str | None = None, steps: int = 1500,
                batch_size: int = 64, learning_rate: float = 3e-3,
                weight_decay: float = 1e-4) -> Probe:
  """Trains a probe on real samples of one modality.

  Args:
    x: [N, ...] real training samples of one modality.
    y: [N] int labels in [0, num_classes).
    num_classes: number of classes.
    key: PRNG key; the probe is a deterministic function of it and the data.
    arch: 'mlp' | 'cnn'; default `default_arch(x.shape[1:])`.
    steps, batch_size, learning_rate, weight_decay: the optimisation.

  Returns:
    The fitted Probe.
  """
  chex.assert_rank(y, 1)
  chex.assert_axis_dimension(x, 0, y.shape[0])
  arch = arch or default_arch(x.shape[1:])
  params, _ = _fit(key, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                   arch=arch, num_classes=num_classes, steps=steps,
                   batch_size=batch_size, learning_rate=learning_rate,
                   weight_decay=weight_decay)
  return Probe(arch, num_classes, jax.device_get(params))


_TRAIN_DEFAULTS = {k: p.default for k, p in
                   inspect.signature(train_probe).parameters.items()
                   if p.kind == p.KEYWORD_ONLY and k != 'key'}


@functools.partial(jax.jit, static_argnames=('arch', 'num_classes'))
def _predict_chunk(params, x, *, arch, num_classes):
  logits = _module(arch, num_classes).apply({'params': params}, x)
  return jnp.argmax(logits, -1)


def predict(probe: Probe, x: np.ndarray, *,
            chunk: int = DEFAULT_CHUNK) -> np.ndarray:
  """[N, ...] samples -> [N] predicted labels."""
  n = x.shape[0]
  size = min(chunk, n)
  out = [np.asarray(_predict_chunk(
      probe.params, pad_rows(np.asarray(x[lo:hi], np.float32), size),
      arch=probe.arch, num_classes=probe.num_classes))[:hi - lo]
         for lo, hi in chunk_slices(n, size)]
  return np.concatenate(out)


def coherence(probe: Probe, x_hat: np.ndarray, y: np.ndarray, *,
              chunk: int = DEFAULT_CHUNK) -> float:
  """Accuracy of `probe` (trained on real data) on reconstructions x_hat
  [N, ...] of samples labelled y [N]: the PolyMNIST coherence."""
  chex.assert_rank(y, 1)
  chex.assert_axis_dimension(x_hat, 0, y.shape[0])
  return float(np.mean(predict(probe, x_hat, chunk=chunk) == np.asarray(y)))


def _fingerprint(x, y, num_classes, key, settings) -> str:
  """Hash of everything a fitted probe depends on (data, key, settings)."""
  h = hashlib.sha256()
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):   # else a raw uint32 key
    key = jax.random.key_data(key)
  for part in (np.ascontiguousarray(x, np.float32), np.asarray(y, np.int64),
               np.asarray(key)):
    h.update(str(part.shape).encode())
    h.update(part.tobytes())
  h.update(repr((PROBE_VERSION, num_classes, sorted(settings.items())))
           .encode())
  return h.hexdigest()


def save_probe(path: str, probe: Probe, fingerprint: str = '') -> None:
  """Writes the probe to an .npz (atomically: write then rename)."""
  flat = traverse_util.flatten_dict(probe.params, sep='/')
  arrays = {f'params/{k}': np.asarray(v) for k, v in flat.items()}
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  tmp = f'{path}.tmp{os.getpid()}.npz'   # processes may share a cache
  np.savez(tmp, arch=np.array(probe.arch), num_classes=probe.num_classes,
           fingerprint=np.array(fingerprint), **arrays)
  os.replace(tmp, path)


def load_probe(path: str) -> tuple[Probe, str]:
  """Reads a probe written by `save_probe` -> (probe, fingerprint)."""
  with np.load(path, allow_pickle=False) as f:
    prefix = 'params/'
    flat = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
    probe = Probe(str(f['arch']), int(f['num_classes']),
                  traverse_util.unflatten_dict(flat, sep='/'))
    return probe, str(f['fingerprint'])


def cached_probe(path: str, x: np.ndarray, y: np.ndarray, num_classes: int, *,
                 key: jax.Array, arch: str | None = None,
                 **train_kwargs) -> Probe:
  """`train_probe`, reusing the probe stored at `path` when it was fitted on
  the same data, key and settings (else refits and overwrites it)."""
  # Resolved defaults are hashed too, so a changed default refits the probe.
  settings = {**_TRAIN_DEFAULTS, **train_kwargs,
              'arch': arch or default_arch(x.shape[1:])}
  fp = _fingerprint(x, y, num_classes, key, settings)
  if os.path.exists(path):
    probe, stored = load_probe(path)
    if stored == fp:
      return probe
  probe = train_probe(x, y, num_classes, key=key, **settings)
  save_probe(path, probe, fp)
  return probe


def cached_probes(workdir: str, names: Sequence[str],
                  xs: Sequence[np.ndarray], y: np.ndarray, num_classes: int, *,
                  key: jax.Array, **train_kwargs) -> list[Probe]:
  """One cached probe per modality, stored as <workdir>/probe_<name>.npz.

  Modality i trains from fold_in(key, i).
  """
  chex.assert_equal(len(names), len(xs))
  return [cached_probe(os.path.join(workdir, f'probe_{name}.npz'), x, y,
                       num_classes, key=jax.random.fold_in(key, i),
                       **train_kwargs)
          for i, (name, x) in enumerate(zip(names, xs))]
