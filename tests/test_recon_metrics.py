"""Reconstruction metrics (recon_metrics.py) on cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedrecon_jax import probes as probes_lib
from fedrecon_jax import recon_metrics as rm
from fedrecon_jax.models import DataSpec, Model


def _xs(n=10, dims=(3, 2, 4), seed=0):
  rng = np.random.default_rng(seed)
  return tuple(rng.normal(size=(n, d)).astype(np.float32) + i
               for i, d in enumerate(dims))


# ------------------------------------------------------------ MSE matrix


@pytest.mark.parametrize('chunk', [4, 256])
def test_mse_matrix_copying_inputs_sees_only_the_source(chunk):
  xs = _xs()                              # 10 rows: chunk 4 pads the last one
  copy = lambda held, present, key: held  # absent inputs arrive zeroed
  mse = rm.recon_mse_matrix(copy, xs, chunk=chunk)
  # Self-reconstruction is exact; a target rebuilt from another source is
  # the zeroed input, so its error is the target's mean square.
  expected = np.array([[0.0 if n == m else np.mean(xs[n]**2) for m in range(3)]
                       for n in range(3)])
  np.testing.assert_allclose(mse, expected, rtol=1e-5, atol=1e-7)


def test_mse_matrix_entry_depends_on_the_single_source():
  xs = _xs()
  # Every target is filled with (m + 1) where m is the one present source.
  src_value = lambda held, present, key: tuple(
      jnp.broadcast_to((present.astype(jnp.float32) @ jnp.arange(1.0, 4.0))
                       [:, None], x.shape) for x in held)
  mse = rm.recon_mse_matrix(src_value, xs, chunk=3)
  expected = np.array([[np.mean((xs[n] - (m + 1))**2) for m in range(3)]
                       for n in range(3)])
  np.testing.assert_allclose(mse, expected, rtol=1e-5)


# ----------------------------------------------------------------- probes


def _blobs(n, num_classes=3, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, n).astype(np.int32)
  centres = rng.normal(size=(num_classes, dim)) * 4
  return (centres[y] + rng.normal(size=(n, dim))).astype(np.float32), y


def _images(n, seed=0):
  """[n, 3, 8, 8] noise with a bright 4x4 quadrant chosen by the label."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, 4, n).astype(np.int32)
  x = rng.uniform(0, 0.5, (n, 3, 8, 8)).astype(np.float32)
  for i, c in enumerate(y):
    r, q = divmod(int(c), 2)
    x[i, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 0.5
  return x, y


@pytest.fixture(scope='module')
def vector_probe():
  x, y = _blobs(300)
  return probes_lib.train_probe(x[:200], y[:200], 3, key=jax.random.key(0), steps=150)


def test_mlp_probe_learns_and_coherence_of_real_data_is_its_accuracy(
    vector_probe):
  x, y = _blobs(300)
  assert vector_probe.arch == 'mlp'
  acc = float(np.mean(probes_lib.predict(vector_probe, x[200:]) == y[200:]))
  assert acc > 0.95
  # A perfect reconstruction (x_hat = x) scores exactly the probe's accuracy,
  # whatever the chunking (the padded rows must not count).
  assert probes_lib.coherence(vector_probe, x[200:], y[200:]) == acc
  assert probes_lib.coherence(vector_probe, x[200:], y[200:], chunk=7) == acc
  # A reconstruction that always yields one class is right on that class only.
  one = np.broadcast_to(x[y == 0][:1], (100, x.shape[1]))
  assert probes_lib.coherence(vector_probe, one, y[200:]) == pytest.approx(
      np.mean(y[200:] == probes_lib.predict(vector_probe, one[:1])[0]))


def test_probe_is_a_function_of_its_key(vector_probe):
  x, y = _blobs(300)
  again = probes_lib.train_probe(x[:200], y[:200], 3, key=jax.random.key(0), steps=150)
  jax.tree.map(np.testing.assert_array_equal, vector_probe.params,
               again.params)
  other = probes_lib.train_probe(x[:200], y[:200], 3, key=jax.random.key(1), steps=150)
  assert not np.array_equal(other.params['Dense_0']['kernel'],
                            again.params['Dense_0']['kernel'])


def test_cnn_probe_learns_images():
  x, y = _images(240)
  probe = probes_lib.train_probe(x[:160], y[:160], 4, key=jax.random.key(1), steps=80)
  assert probe.arch == 'cnn'
  assert probes_lib.coherence(probe, x[160:], y[160:]) > 0.9


def test_cached_probes_are_reused_and_refit_on_new_data(tmp_path, monkeypatch):
  x, y = _blobs(300)
  # Shapes and steps as in vector_probe and `tiny`, so no new compilation.
  xs, y, steps = (x[:200], x[:200, :4]), y[:200], 150
  key = jax.random.key(2)
  first = probes_lib.cached_probes(str(tmp_path), ('a', 'b'), xs, y, 3, key=key,
                           steps=steps)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['probe_a.npz',
                                                        'probe_b.npz']

  def no_training(*args, **kwargs):
    raise AssertionError('a cached probe was retrained')

  real_train = probes_lib.train_probe
  monkeypatch.setattr(probes_lib, 'train_probe', no_training)
  again = probes_lib.cached_probes(str(tmp_path), ('a', 'b'), xs, y, 3, key=key,
                           steps=steps)
  for p, q, x_m in zip(first, again, xs):
    assert (q.arch, q.num_classes) == (p.arch, p.num_classes)
    jax.tree.map(np.testing.assert_array_equal, p.params, q.params)
    np.testing.assert_array_equal(probes_lib.predict(q, x_m), probes_lib.predict(p, x_m))
  # Other settings, key or data invalidate the stored probe.
  with pytest.raises(AssertionError, match='retrained'):
    probes_lib.cached_probes(str(tmp_path), ('a', 'b'), xs, y, 3, key=key, steps=149)
  with pytest.raises(AssertionError, match='retrained'):
    probes_lib.cached_probes(str(tmp_path), ('a', 'b'), xs, y, 3,
                     key=jax.random.key(3), steps=steps)
  monkeypatch.setattr(probes_lib, 'train_probe', real_train)
  new_xs = (xs[0] + 1, xs[1])
  probes_lib.cached_probes(str(tmp_path), ('a', 'b'), new_xs, y, 3, key=key,
                   steps=steps)
  monkeypatch.setattr(probes_lib, 'train_probe', no_training)
  probes_lib.cached_probes(str(tmp_path), ('a', 'b'), new_xs, y, 3, key=key,
                   steps=steps)


# -------------------------------------------------------------- retrieval


def test_retrieval_identity_is_perfect():
  t = np.random.default_rng(0).normal(size=(50, 8))
  stats = rm.retrieval(t, t)
  assert stats == {'top1': 1.0, 'top5': 1.0, 'top10': 1.0,
                   'median_rank': 1.0, 'mean_rank': 1.0}
  # Cosine similarity ignores the scale of either side.
  assert rm.retrieval(3.0 * t, t)['top1'] == 1.0


def test_retrieval_known_ranks():
  n = 30
  ranks = np.array([1, 1, 2, 3, 5, 6, 10, 11, 20, 30] * 3)
  targets = np.eye(n)
  # Query i scores target j with n - ((j - i + r_i - 1) mod n): a cyclic
  # ordering of the targets in which its partner (j = i) comes r_i-th.
  j, i = np.meshgrid(np.arange(n), np.arange(n))
  queries = n - ((j - i + ranks[:, None] - 1) % n).astype(float)
  stats = rm.retrieval(queries, targets, chunk=7)
  assert stats['top1'] == pytest.approx(np.mean(ranks <= 1))
  assert stats['top5'] == pytest.approx(np.mean(ranks <= 5))
  assert stats['top10'] == pytest.approx(np.mean(ranks <= 10))
  assert stats['median_rank'] == np.median(ranks)
  assert stats['mean_rank'] == pytest.approx(ranks.mean())


def test_retrieval_of_a_collapsed_embedding_ranks_last():
  t = np.random.default_rng(0).normal(size=(20, 4))
  # All targets equal: every one ties with the partner, so ties must not be
  # resolved in the query's favour (that would give Top@1 = 1).
  stats = rm.retrieval(t, np.ones((20, 4)))
  assert stats['top10'] == 0.0
  assert stats['median_rank'] == stats['mean_rank'] == 20


def test_retrieval_of_random_latents_is_at_chance():
  rng = np.random.default_rng(0)
  n = 500
  stats = rm.retrieval(rng.normal(size=(n, 16)), rng.normal(size=(n, 16)))
  assert stats['top1'] < 0.02 and stats['top10'] < 0.05
  assert 0.4 * n < stats['mean_rank'] < 0.6 * n
  assert 0.35 * n < stats['median_rank'] < 0.65 * n


# -------------------------------------------------------------- table 2


@pytest.fixture(scope='module')
def tiny():
  # 200 samples, 6-d and 4-d probes trained for 150 steps: the shapes of the
  # probe tests above, so the probes reuse their compiled training program.
  dims = (6, 4, 6)
  spec = DataSpec(('a', 'b', 'c'), ('vector',) * 3, tuple((d,) for d in dims),
                  3)
  model = Model(spec, latent_dim=4, gen_width=8, map_width=8, task_width=4)
  params = model.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  y = rng.integers(0, 3, 200).astype(np.int32)
  xs = tuple((np.eye(3)[y] @ rng.normal(size=(3, d)) * 3
              + rng.normal(size=(200, d))).astype(np.float32) for d in dims)
  probes = [probes_lib.train_probe(x, y, 3, key=jax.random.key(i), steps=150)
            for i, x in enumerate(xs)]
  return model, params, xs, y, probes


def test_table2_metrics_mapping_end_to_end(tiny):
  model, params, xs, y, probes = tiny
  key = jax.random.key(3)
  out = rm.table2_metrics('mapping', model, params, xs, y, probes, key=key,
                          draws=2, chunk=64)
  assert out['modalities'] == ('a', 'b', 'c')
  assert out['mse'].shape == (3, 3) and np.all(np.isfinite(out['mse']))
  assert np.all(out['mse'] > 0)
  # The same numbers as the standalone reads, with the params traced: the
  # draws' mean of sampled reads, and the posterior-mean read.
  sampled = [rm.score_reads(rm.reconstructor('mapping', model, params,
                                             sample=True), xs, y, probes,
                            key=jax.random.fold_in(key, d), chunk=64)
             for d in range(2)]
  means = rm.score_reads(rm.reconstructor('mapping', model, params,
                                          sample=False), xs, y, probes,
                         chunk=64)
  for name in ('mse', 'coherence_single', 'coherence_loo'):
    np.testing.assert_allclose(
        out[name], np.mean([s[name] for s in sampled], 0), rtol=1e-6)
    np.testing.assert_allclose(out['posterior_mean'][name], means[name],
                               rtol=1e-6)
  np.testing.assert_allclose(
      out['posterior_mean']['mse'], rm.recon_mse_matrix(
          rm.reconstructor('mapping', model, params, sample=False), xs,
          chunk=64), rtol=1e-6)
  # Samples are not means, and two draws are not one.
  assert not np.allclose(out['mse'], out['posterior_mean']['mse'])
  assert not np.allclose(sampled[0]['mse'], sampled[1]['mse'])
  assert out['per_draw']['coherence_single'].shape == (2, 3, 3)
  assert out['mse_loo'].shape == (3,)
  for name in ('probe_accuracy', 'coherence_loo', 'coherence_single_mean'):
    assert out[name].shape == (3,)
    assert np.all((out[name] >= 0) & (out[name] <= 1))
  assert out['coherence_single'].shape == (3, 3)
  for n in range(3):
    assert out['probe_accuracy'][n] == probes_lib.coherence(probes[n], xs[n], y)
  ret = out['retrieval']
  assert set(ret) == {'mapping', 'raw'}
  pairs = {'a<-b', 'a<-c', 'b<-a', 'b<-c', 'c<-a', 'c<-b'}
  for method in ('mapping', 'raw'):
    assert set(ret[method]) == pairs | {'mean'}
    for stats in ret[method].values():
      assert set(stats) == {'top1', 'top5', 'top10', 'median_rank',
                            'mean_rank'}
      assert 0 <= stats['top1'] <= stats['top5'] <= stats['top10'] <= 1
      assert 1 <= stats['median_rank'] <= 200
      assert 1 <= stats['mean_rank'] <= 200
    assert ret[method]['mean']['mean_rank'] == pytest.approx(np.mean(
        [ret[method][p]['mean_rank'] for p in pairs]))


def test_table2_metrics_joint_posterior_has_no_retrieval(tiny):
  model, params, xs, y, _ = tiny
  out = rm.table2_metrics('moe', model, params, xs, y, None,
                          key=jax.random.key(0), draws=1)
  assert 'retrieval' not in out and 'coherence_loo' not in out
  assert out['mse'].shape == (3, 3) and np.all(np.isfinite(out['mse_loo']))
  # Each column comes from a different single source.
  assert not np.allclose(out['mse'][:, 0], out['mse'][:, 1])


# ------------------------------------------------------ coherence, pinned

# A generator and probes whose coherence is known exactly. C classes; each
# modality's sample is C * one_hot(label), then the sample's index (so the
# hand-made reads can tell samples apart). Samples come in blocks of C (one
# of each label); a read rebuilds target n from source m as the prototype of
# the true label for the samples of the first K[n, m] of the 10 blocks and
# of a wrong label for the others: coherence (n, m) is K[n, m] / 10.
C, BLOCKS = 4, 10
K_MEANS = np.array([[10, 6, 2], [8, 10, 4], [5, 3, 10]])
K_SAMPLED = np.array([[10, 4, 1], [7, 10, 2], [3, 2, 10]])
# Rebuilt from all the others: K_LOO[n] of the blocks right.
K_LOO_MEANS, K_LOO_SAMPLED = np.array([9, 7, 6]), np.array([8, 5, 1])


def _pinned_data():
  y = np.tile(np.arange(C), BLOCKS).astype(np.int32)
  idx = np.arange(C * BLOCKS, dtype=np.float32)[:, None]
  x = np.concatenate([C * np.eye(C, dtype=np.float32)[y], idx], 1)
  return (x, x.copy(), x.copy()), y


def _pinned_read(k_single, k_loo):
  k_single, k_loo = jnp.asarray(k_single), jnp.asarray(k_loo)

  def read(held, present, key):
    del key
    pres = present.astype(jnp.float32)                    # [B, M]
    count = pres.sum(1, keepdims=True)
    src = sum(x * pres[:, m:m + 1] for m, x in enumerate(held)) / count
    label, block = jnp.argmax(src[:, :C], 1), src[:, C] // C
    out = []
    for n in range(len(held)):
      k = jnp.where(count[:, 0] > 1, k_loo[n], pres @ k_single[n])
      cls = jnp.where(block < k, label, (label + 1) % C)
      out.append(jnp.concatenate([C * jax.nn.one_hot(cls, C), src[:, C:]], 1))
    return tuple(out)

  return read


def _identity_probe():
  """An MLP probe whose prediction is the argmax of the first C inputs
  (flax names the output layer, created first, Dense_0)."""
  hidden = 256
  w0 = np.zeros((C + 1, hidden), np.float32)
  w0[:C, :C] = np.eye(C)
  w1 = np.zeros((hidden, C), np.float32)
  w1[:C] = np.eye(C)
  return probes_lib.Probe('mlp', C, {
      'Dense_1': {'kernel': w0, 'bias': np.zeros(hidden, np.float32)},
      'Dense_0': {'kernel': w1, 'bias': np.zeros(C, np.float32)}})


def test_coherence_is_pinned_on_a_hand_built_generator():
  xs, y = _pinned_data()
  out = rm.score_generator(_pinned_read(K_SAMPLED, K_LOO_SAMPLED),
                           _pinned_read(K_MEANS, K_LOO_MEANS), xs, y,
                           [_identity_probe()] * 3, key=jax.random.key(0),
                           draws=2, chunk=16)
  np.testing.assert_array_equal(out['probe_accuracy'], [1.0, 1.0, 1.0])
  for read, k, k_loo in ((out, K_SAMPLED, K_LOO_SAMPLED),
                         (out['posterior_mean'], K_MEANS, K_LOO_MEANS)):
    np.testing.assert_allclose(read['coherence_single'], k / BLOCKS)
    # Row n: the mean over its sources m != n, the diagonal left out.
    off = [(k[n].sum() - k[n, n]) / (2 * BLOCKS) for n in range(3)]
    np.testing.assert_allclose(read['coherence_single_mean'], off)
    assert read['one_input'] == pytest.approx(np.mean(off))
    np.testing.assert_allclose(read['coherence_loo'], k_loo / BLOCKS)
    assert read['all_others'] == pytest.approx(k_loo.mean() / BLOCKS)
  # By hand: sampled one-input (4+1 + 7+2 + 3+2) / 60, means (6+2 + 8+4 +
  # 5+3) / 60.
  assert out['one_input'] == pytest.approx(19 / 60)
  assert out['posterior_mean']['one_input'] == pytest.approx(28 / 60)
  np.testing.assert_allclose(out['per_draw']['one_input'], [19 / 60] * 2)


# --------------------------------------------- sampled latents per kind


@pytest.mark.parametrize('kind', ['mapping', 'raw', 'poe', 'moe', 'mopoe',
                                  'mmvaeplus', 'mmvaeplus_map'])
def test_sampled_latents_follow_the_posterior(kind):
  """Only modality 0 is present. Over many draws, the latent of absent
  modality 1 has the moments of the reference's conditional: z ~ q(z | x_0)
  (MoE, MoPoE's one-modality subset, raw), PoE(prior, expert 0), T(1<-0)
  of a sample of q(z_0 | x_0) (mapping; over MMVAE+'s Laplace q(u | x_0)
  for mmvaeplus_map), or for MMVAE+ (Laplace) w from Laplace(0, 1) and z
  from q(z | x_0)."""
  from fedrecon_jax import generator, generators  # pylint: disable=g-import-not-at-top
  spec = DataSpec(('a', 'b', 'c'), ('vector',) * 3, ((5,), (4,), (3,)), 2)
  sizes = generators.get(kind).latent_sizes(4)
  model = Model(spec, latent_dim=4, gen_width=8, map_width=8, task_width=4,
                latent_sizes=sizes)
  params = model.init_params(jax.random.key(0))
  b, draws = 3, 4000
  xs = [jax.random.normal(jax.random.key(i), (b, *s))
        for i, s in enumerate(spec.shapes)]
  present = jnp.array([[True, False, False]] * b)
  keys = jax.random.split(jax.random.key(1), draws)
  z = jax.jit(jax.vmap(lambda k: generator.sample_latents(
      kind, model, params, xs, present, k)))(keys)        # [D, M, B, d]
  mu, logvar = model.encode(params['gen'], xs)
  mu0, lv0 = np.asarray(mu[0]), np.asarray(logvar[0])
  if kind == 'poe':
    prec = 1 + np.exp(-lv0)
    mean, var = mu0 * np.exp(-lv0) / prec, 1 / prec
  elif kind == 'mapping':
    eps = jax.random.normal(jax.random.key(2), (draws, b, mu0.shape[-1]))
    t = np.asarray(jax.vmap(lambda e: model.mapping.apply(
        {'params': jax.tree.map(lambda a: a[_pair(spec, 1, 0)],
                                params['map'])},
        mu0 + e * np.exp(0.5 * lv0)))(eps))
    mean, var = t.mean(0), t.var(0)
  elif kind == 'mmvaeplus_map':
    from fedrecon_jax.generators import mmvaeplus  # pylint: disable=g-import-not-at-top
    scale = np.asarray(mmvaeplus.posterior_scale(jnp.asarray(lv0)))
    u = np.random.default_rng(2).laplace(mu0, scale, (draws, *mu0.shape))
    t = np.asarray(model.mapping.apply(
        {'params': jax.tree.map(lambda a: a[_pair(spec, 1, 0)],
                                params['map'])}, jnp.float32(u)))
    mean, var = t.mean(0), t.var(0)
  elif kind == 'mmvaeplus':
    from fedrecon_jax.generators import mmvaeplus  # pylint: disable=g-import-not-at-top
    d = mu0.shape[-1] // 2
    scale = np.asarray(mmvaeplus.posterior_scale(jnp.asarray(lv0)))
    mean = np.concatenate([np.zeros_like(mu0[:, :d]), mu0[:, d:]], -1)
    var = 2 * np.concatenate([np.ones_like(scale[:, :d]), scale[:, d:]],
                             -1) ** 2
  else:
    mean, var = mu0, np.exp(lv0)
  got = np.asarray(z[:, 1])                               # [D, B, d]
  tol = 5 * np.sqrt(var / draws)
  assert np.all(np.abs(got.mean(0) - mean) < tol + 1e-6), kind
  np.testing.assert_allclose(got.var(0), var, rtol=0.15, atol=1e-6)


def _pair(spec, n, m):
  return [p for p, (dst, src) in enumerate(spec.pairs)
          if dst == n and src == m][0]


# ------------------------------------------------------------------ figure


def test_image_grid_shape_and_values():
  k, h, w = 3, 5, 4
  true = [np.ones((k, 3, h, w)), np.zeros((k, 1, h, w))]
  recon = [[np.full((k, 3, h, w), 2.0), np.full((k, 1, h, w), 0.5)]
           for _ in range(2)]
  grid = rm.image_grid(true, recon, pad=1)
  assert grid.dtype == np.uint8
  assert grid.shape == (3 * h + 2 * 2, 2 * (k * w + (k - 1)) + 2, 3)
  assert np.all(grid[:h, :w] == 255)                   # true image of target a
  assert np.all(grid[:h, w:w + 1] == 255)              # the white gap
  col_b = k * w + (k - 1) + 2
  assert np.all(grid[:h, col_b:col_b + w] == 0)        # grey expanded to RGB
  assert np.all(grid[h + 2:2 * h + 2, :w] == 255)      # 2.0 clipped to 1
  assert np.all(grid[h + 2:2 * h + 2, col_b:col_b + w] == 128)


def test_pictures_of_sequences_and_a_grid_of_mixed_sizes():
  """A masked sequence [k, T, C + 1] is a C x T heat map on the truth's
  scale, padded frames white; columns of different sizes share a row,
  shorter cells padded white below."""
  seq = np.zeros((1, 3, 2 + 1), np.float32)              # T = 3, C = 2
  seq[0, :, :2] = [[-1, 1], [0, 3], [9, 9]]
  seq[0, :, 2] = [1, 1, 0]                                # frame 2 padded
  lo_hi = rm.picture_range('masked_sequence', seq)
  assert lo_hi == (-1.0, 3.0)                             # real frames only
  pic = rm.as_picture('masked_sequence', seq, *lo_hi)
  np.testing.assert_allclose(pic[0, 0], [[0, 0.25, 1], [0.5, 1, 1]])
  img = np.zeros((1, 1, 4, 4), np.float32)
  grid = rm.image_grid([img, pic], [[img, pic], [img, pic]], pad=1)
  assert grid.shape == (3 * 4 + 2 * 2, 4 + 2 + 3, 3)
  np.testing.assert_array_equal(grid[0, 6:, 0], [0, 64, 255])  # row C=0
  assert np.all(grid[2:4, 6:] == 255)                     # below the map
