"""Tests for fedrecon_jax.partition."""

import jax
import numpy as np
import pytest

from fedrecon_jax import partition

N, C = 2000, 10


@pytest.fixture(scope='module')
def labels() -> np.ndarray:
  """2000 labels, 200 per class, in shuffled order."""
  return np.random.default_rng(123).permutation(np.repeat(np.arange(C), N // C))


def _entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
  """Mean over clients of the label entropy (nats) of each client."""
  hs = []
  for ix in parts:
    q = np.bincount(labels[ix], minlength=C) / len(ix)
    q = q[q > 0]
    hs.append(float(-(q * np.log(q)).sum()))
  return float(np.mean(hs))


# --- dirichlet_partition ----------------------------------------------------


@pytest.mark.parametrize('alpha', [0.1, 5.0])
@pytest.mark.parametrize('k', [10, 50])
def test_dirichlet_is_an_exact_cover_with_min_size(labels, alpha, k):
  parts = partition.dirichlet_partition(labels, k, alpha, seed=7,
                                        min_client_size=5)
  assert len(parts) == k
  for ix in parts:
    assert ix.dtype == np.int64
    assert np.all(np.diff(ix) > 0)       # sorted, no duplicates within
    assert len(ix) >= 5
  allix = np.concatenate(parts)
  assert len(allix) == N                 # no overlaps across clients...
  np.testing.assert_array_equal(np.sort(allix), np.arange(N))   # ...full cover


def test_dirichlet_alpha_controls_label_skew(labels):
  # Measured over seeds 0..4: alpha=0.1 gives 0.6-1.0 nats (K=10, K=50),
  # alpha=5.0 gives 2.15-2.22 nats (max possible ln 10 = 2.30).
  for k in (10, 50):
    for seed in range(3):
      low, high = (_entropy(labels, partition.dirichlet_partition(
          labels, k, alpha, seed)) for alpha in (0.1, 5.0))
      assert low < 1.4, (k, seed, low)
      assert high > 1.9, (k, seed, high)
      assert high - low > 0.8, (k, seed, low, high)


@pytest.mark.parametrize('alpha', [0.1, 1.0, 5.0])
def test_dirichlet_cap_on_clients_above_average(labels, alpha):
  k = 10
  cap = N / k
  for seed in range(5):
    parts = partition.dirichlet_partition(labels, k, alpha, seed)
    counts = np.stack([np.bincount(labels[ix], minlength=C) for ix in parts])
    # Classes are dealt in increasing label order: once a client holds
    # >= N/K samples it must receive nothing from later classes.
    before = np.cumsum(counts, axis=1) - counts            # [K, C]
    assert np.all(counts[before >= cap] == 0), seed
    # Hence a client overshoots N/K by at most one class share.
    largest_class = np.bincount(labels).max()
    assert counts.sum(1).max() < cap + largest_class


def test_dirichlet_failure_to_reach_min_size_names_argument(labels):
  with pytest.raises(ValueError, match='min_client_size'):
    partition.dirichlet_partition(labels, 50, 0.01, seed=0,
                                  min_client_size=30, max_tries=3)


def test_dirichlet_labels_need_not_be_contiguous():
  y = np.random.default_rng(0).choice(np.array([-3, 7, 100]), size=300)
  parts = partition.dirichlet_partition(y, 6, 1.0, seed=0)
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(300))


def test_dirichlet_seeding(labels):
  a = partition.dirichlet_partition(labels, 20, 0.5, seed=3)
  b = partition.dirichlet_partition(labels, 20, 0.5, seed=3)
  c = partition.dirichlet_partition(labels, 20, 0.5, seed=4)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_leaves_global_rng_alone(labels):
  np.random.seed(0)
  expected = np.random.random()
  np.random.seed(0)
  partition.dirichlet_partition(labels, 10, 0.5, seed=0)
  partition.client_modality_mask(10, 3, 0.3, seed=0)
  assert np.random.random() == expected


# --- natural_partition ------------------------------------------------------


def test_natural_partition_one_client_per_group():
  groups = np.array([5, 2, 5, 9, 2, 2, 9])
  parts = partition.natural_partition(groups)
  assert [p.tolist() for p in parts] == [[1, 4, 5], [0, 2], [3, 6]]
  assert all(p.dtype == np.int64 for p in parts)


# --- modality masks ---------------------------------------------------------


@pytest.mark.parametrize('m,p', [(6, 0.3), (2, 0.9), (3, 0.5)])
def test_client_mask_absent_rate_matches_p(m, p):
  k = 2000
  present = partition.client_modality_mask(k, m, p, seed=11)
  assert present.shape == (k, m) and present.dtype == bool
  assert present.any(axis=1).all()
  # Keep-one rule: a row loses all M w.p. p^M and then gets one back, so the
  # expected absent fraction is p - p^M / M (0.495 for M=2, p=0.9).
  expected = p - p**m / m
  assert abs((~present).mean() - expected) < 0.02


def test_masks_keep_one_modality_even_at_high_rate():
  for seed in range(3):
    assert partition.client_modality_mask(500, 4, 0.9, seed).any(1).all()
    assert partition.sample_modality_mask(5000, 2, 0.99, seed).any(1).all()
  # The rescued modality is spread over all M, not always the first one.
  rescued = partition.client_modality_mask(3000, 3, 0.999, seed=0)
  assert np.all(rescued.sum(1) == 1)
  assert np.all(np.bincount(rescued.argmax(1), minlength=3) > 800)


def test_masks_zero_rate_is_all_present_and_masks_nest():
  assert partition.sample_modality_mask(100, 3, 0.0, seed=0).all()
  lo = partition.client_modality_mask(1000, 4, 0.1, seed=5)
  hi = partition.client_modality_mask(1000, 4, 0.4, seed=5)
  # Same seed: raising p can only remove modalities (apart from rescues).
  multi = hi.sum(1) > 1
  assert np.all(hi[multi] <= lo[multi])


def test_sample_mask_rate_and_seeding():
  a = partition.sample_modality_mask(20000, 3, 0.3, seed=1)
  b = partition.sample_modality_mask(20000, 3, 0.3, seed=1)
  c = partition.sample_modality_mask(20000, 3, 0.3, seed=2)
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert abs((~a).mean() - (0.3 - 0.3**3 / 3)) < 0.01


# --- make_partition ---------------------------------------------------------


def test_make_partition_seeding_and_independence(labels):
  kw = dict(num_clients=20, num_modalities=4, alpha=0.5, seed=9)
  i1, m1 = partition.make_partition(labels, missing_rate=0.3, **kw)
  i2, m2 = partition.make_partition(labels, missing_rate=0.3, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(i1, i2))
  np.testing.assert_array_equal(m1, m2)
  assert m1.shape == (20, 4)
  # Another missing rate: same label split, different mask.
  i3, m3 = partition.make_partition(labels, missing_rate=0.5, **kw)
  assert all(np.array_equal(a, b) for a, b in zip(i1, i3))
  assert not np.array_equal(m1, m3)
  # Another seed: a different split.
  i4, _ = partition.make_partition(labels, missing_rate=0.3,
                                   **{**kw, 'seed': 10})
  assert not all(np.array_equal(a, b) for a, b in zip(i1, i4))
  # Another alpha: same mask draw.
  _, m5 = partition.make_partition(labels, missing_rate=0.3,
                                   **{**kw, 'alpha': 5.0})
  np.testing.assert_array_equal(m1, m5)


def test_make_partition_per_sample_and_natural(labels):
  groups = np.arange(N) % 7
  idx, mask = partition.make_partition(
      labels, num_clients=999, num_modalities=3, alpha=0.1, missing_rate=0.2,
      seed=0, per_sample_missing=True, groups=groups)
  assert len(idx) == 7                    # num_clients ignored for groups
  assert mask.shape == (N, 3)
  idx, mask = partition.make_partition(
      labels, num_clients=999, num_modalities=3, alpha=0.1, missing_rate=0.2,
      seed=0, groups=groups)
  assert mask.shape == (7, 3)


# --- stack_clients ----------------------------------------------------------


def _toy():
  n = 30
  rng = np.random.default_rng(0)
  xs = (rng.normal(size=(n, 4)).astype(np.float32) + 10.0,
        rng.integers(1, 255, size=(n, 2, 3), dtype=np.uint8))
  y = rng.integers(1, 5, size=n)
  idx = [np.array([3, 1, 7]), np.arange(10, 30), np.array([0, 2, 4, 5, 6])]
  return xs, y, idx


def test_stack_clients_per_client_mask():
  xs, y, idx = _toy()
  mmask = np.array([[True, False], [True, True], [False, True]])
  d = partition.stack_clients(xs, y, idx, mmask)
  k, max_n = 3, 20
  assert d.xs[0].shape == (k, max_n, 4) and d.xs[0].dtype == np.float32
  assert d.xs[1].shape == (k, max_n, 2, 3) and d.xs[1].dtype == np.uint8
  assert d.y.shape == (k, max_n) and d.y.dtype == np.int32
  assert d.sample_mask.shape == (k, max_n) and d.sample_mask.dtype == bool
  assert d.modality_mask.shape == (k, max_n, 2)
  sizes = [len(i) for i in idx]
  np.testing.assert_array_equal(d.sample_mask.sum(1), sizes)
  np.testing.assert_array_equal(d.num_samples, sizes)
  assert d.num_samples.dtype == np.int32
  for c, ix in enumerate(idx):
    n_c = len(ix)
    np.testing.assert_array_equal(d.y[c, :n_c], y[ix])
    assert np.all(d.y[c, n_c:] == 0)
    for m in range(2):
      if mmask[c, m]:
        np.testing.assert_array_equal(d.xs[m][c, :n_c], xs[m][ix])
      else:                               # absent: zeroed and masked
        assert np.all(d.xs[m][c] == 0)
      assert np.all(d.xs[m][c, n_c:] == 0)  # padding zero
      np.testing.assert_array_equal(d.modality_mask[c, :n_c, m], mmask[c, m])
      assert not d.modality_mask[c, n_c:, m].any()


def test_stack_clients_per_sample_mask_and_max_n():
  xs, y, idx = _toy()
  n = len(y)
  smask = partition.sample_modality_mask(n, 2, 0.5, seed=3)
  d = partition.pad_clients(partition.stack_clients(xs, y, idx, smask), 25)
  assert d.y.shape == (3, 25)
  for c, ix in enumerate(idx):
    n_c = len(ix)
    np.testing.assert_array_equal(d.modality_mask[c, :n_c], smask[ix])
    assert not d.modality_mask[c, n_c:].any()
    for m in range(2):
      got = d.xs[m][c, :n_c]
      keep = smask[ix, m]
      np.testing.assert_array_equal(got[keep], xs[m][ix][keep])
      assert np.all(got[~keep] == 0)
      assert np.all(d.xs[m][c, n_c:] == 0)


def test_stack_clients_is_a_vmappable_pytree():
  xs, y, idx = _toy()
  d = partition.stack_clients(xs, y, idx, np.ones((3, 2), bool))
  assert len(jax.tree.leaves(d)) == 6
  counts = jax.vmap(lambda c: c.sample_mask.sum())(d)
  np.testing.assert_array_equal(np.asarray(counts), [3, 20, 5])
  d2 = d.replace(num_samples=d.num_samples * 0)
  assert d2.num_samples.sum() == 0


# --- validation -------------------------------------------------------------


_RATE_MSG = r'missing_rate must be in \[0, 1\)'


def _bad_calls(labels):
  mk = lambda **kw: partition.make_partition(  # noqa: E731
      labels, **{**dict(num_clients=10, num_modalities=2, alpha=1.0,
                        missing_rate=0.3, seed=0), **kw})
  xs, y, idx = _toy()
  return {
      'alpha=0': (lambda: mk(alpha=0.0), r'alpha must be > 0'),
      'alpha<0': (lambda: mk(alpha=-1.0), r'alpha must be > 0'),
      'alpha=nan': (lambda: mk(alpha=float('nan')), r'alpha must be > 0'),
      'alpha=inf': (lambda: mk(alpha=float('inf')), r'alpha must be > 0'),
      'p=1': (lambda: mk(missing_rate=1.0), _RATE_MSG),
      'p<0': (lambda: mk(missing_rate=-0.1), _RATE_MSG),
      'K=0': (lambda: mk(num_clients=0), 'num_clients must be'),
      'M=0': (lambda: mk(num_modalities=0), 'num_modalities must be'),
      'K*min>N': (lambda: mk(num_clients=500, min_client_size=5),
                  r'num_clients=500 x min_client_size=5 exceeds the N=2000'),
      'groups len': (lambda: mk(groups=np.zeros(N - 1)), 'groups has length'),
      'mask shape': (lambda: partition.stack_clients(
          xs, y, idx, np.ones((4, 2), bool)), 'modality_mask has shape'),
      'mask M': (lambda: partition.stack_clients(
          xs, y, idx, np.ones((3, 3), bool)), 'modality_mask has shape'),
      'max_n small': (lambda: partition.pad_clients(partition.stack_clients(
          xs, y, idx, np.ones((3, 2), bool)), 5), 'max_n must be'),
      'sample p': (lambda: partition.sample_modality_mask(10, 2, 1.5, 0),
                   'missing_rate must be'),
  }


@pytest.mark.parametrize('case', list(_bad_calls(np.zeros(N, int))))
def test_bad_input_raises_naming_argument(labels, case):
  fn, pattern = _bad_calls(labels)[case]
  with pytest.raises(ValueError, match=pattern):
    fn()
