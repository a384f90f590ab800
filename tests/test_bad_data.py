"""Bad data is refused before training, naming the field and where it came
from, and leaves a workdir's files as they were."""

import logging
import os

import numpy as np
import pytest

from fedrecon_jax import train
from fedrecon_jax.config import Config
from fedrecon_jax.data import loader, validate


def masked(n: int, t: int = 4, lengths=None) -> np.ndarray:
  """A valid masked sequence [n, t, 2 + 1]: lengths 1, 2, ... (mod t)."""
  lengths = np.arange(n) % t + 1 if lengths is None else np.asarray(lengths)
  x = np.random.default_rng(n).normal(size=(n, t, 2)).astype(np.float32)
  return validate.with_frame_mask(x, lengths, 'toy', 'a_length')


def dataset(**changes) -> loader.Dataset:
  """A small valid dataset: vector 'v' [N, 3], sequence 's' [N, 4, 2], image
  'img' [N, 1, 2, 2], masked sequence 'a' [N, 4, 2 + 1]; 6 train / 4 test
  samples, 3 classes. `changes` maps '<split>.<modality>' or
  '<split>.label' to a replacement array."""
  rng = np.random.default_rng(0)
  shapes = {'v': (3,), 's': (4, 2), 'img': (1, 2, 2)}

  def split(name, n):
    xs = [changes.get(f'{name}.{m}',
                      rng.normal(size=(n, *s)).astype(np.float32))
          for m, s in shapes.items()]
    xs.append(changes.get(f'{name}.a', masked(n)))
    y = changes.get(f'{name}.label', np.arange(n, dtype=np.int32) % 3)
    return loader.Split(xs=tuple(xs), y=y, group=None)

  return loader.Dataset('toy', (*shapes, 'a'),
                        ('vector', 'sequence', 'image', 'masked_sequence'),
                        3, split('train', 6), split('test', 4))


def test_a_valid_dataset_passes():
  ds = dataset()
  assert validate.check_dataset(ds) is ds


def _with(x, index, value):
  x = np.array(x, np.float32)
  x[index] = value
  return x


CASES = {
    'nan': ({'train.v': _with(np.zeros((6, 3)), (4, 1), np.nan)},
            r"split 'train', modality 'v': NaN values in 1 sample\(s\), "
            'first sample 4'),
    'inf': ({'test.s': _with(np.zeros((4, 4, 2)), (2, 3, 0), -np.inf)},
            r"split 'test', modality 's': Inf values in 1 sample"),
    'wrong_ndim': ({'train.img': np.zeros((6, 4), np.float32)},
                   r"split 'train', modality 'img': shape \(6, 4\) does not "
                   r'fit a image modality, which is \[N, C, H, W\]'),
    'shape_differs_between_splits': (
        {'test.v': np.zeros((4, 5), np.float32)},
        r"modality 'v': train samples have shape \(3,\), test samples "
        r'\(5,\)'),
    'fewer_samples_than_labels': (
        {'train.s': np.zeros((5, 4, 2), np.float32)},
        r"split 'train', modality 's': 5 samples, but the split has 6"),
    'label_too_large': ({'train.label': np.array([0, 1, 2, 3, 0, 1])},
                        r"split 'train', field label: 1 label\(s\) outside "
                        r'\[0, num_classes=3\), e.g. sample 3 has 3'),
    'negative_label': ({'test.label': np.array([0, -1, 2, 1])},
                       r"split 'test', field label: .*sample 1 has -1"),
    'modality_without_samples': (
        {'train.img': np.zeros((0, 1, 2, 2), np.float32)},
        r"split 'train', modality 'img': no samples at all"),
    'split_without_samples': (
        {'test.label': np.zeros((0,), np.int32),
         **{f'test.{m}': np.zeros((0, *s), np.float32) for m, s in
            (('v', (3,)), ('s', (4, 2)), ('img', (1, 2, 2)), ('a', (4, 3)))}},
        r"split 'test': no samples \(field label is empty\)"),
    # Masked sequences: features, then the frame mask as the last channel.
    'masked_nan': ({'train.a': _with(masked(6), (2, 0, 1), np.nan)},
                   r"split 'train', modality 'a': NaN values in 1 sample\(s\), "
                   'first sample 2'),
    'masked_wrong_T': ({'test.a': masked(4, t=5)},
                       r"modality 'a': train samples have shape \(4, 3\), "
                       r'test samples \(5, 3\)'),
    'masked_length_0': ({'test.a': _with(masked(4), (3, slice(None)), 0)},
                        r"split 'test', modality 'a', field mask \(last "
                        r'channel\): 1 sample\(s\) of length 0, first sample '
                        r'3; lengths must be in \[1, T=4\]'),
    'masked_mask_not_a_prefix': (
        {'train.a': _with(masked(6, lengths=[4] * 6), (1, 2, 2), 0)},
        r"split 'train', modality 'a', field mask \(last channel\): sample 1 "
        'is not 1 for its first frames and 0 after'),
    'masked_features_on_padding': (
        {'train.a': _with(masked(6), (0, 3, 0), 1.5)},
        r"split 'train', modality 'a', field mask \(last channel\): sample 0 "
        r'has non-zero features on padded frames'),
    'masked_without_features': (
        {'train.a': np.ones((6, 4, 1), np.float32),
         'test.a': np.ones((4, 4, 1), np.float32)},
        r"split 'train', modality 'a', field mask \(last channel\): 1 "
        'channel'),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_data_is_refused_naming_the_field(case):
  changes, message = CASES[case]
  with pytest.raises(validate.BadDataError,
                     match=r"dataset 'toy' \(/data/toy\), " + message):
    validate.check_dataset(dataset(**changes), source='/data/toy')


LENGTH_CASES = {
    'beyond_T': ([1, 5, 2], r'1 length\(s\) outside \[1, T=4\], e.g. sample '
                 '1 has 5'),
    'zero': ([1, 0, 2], r'1 length\(s\) outside \[1, T=4\], e.g. sample 1 '
             'has 0'),
    'negative': ([-1, 1, 2], r'1 length\(s\) outside .*sample 0 has -1'),
    'not_one_per_sample': ([1, 2], r'shape \(2,\), expected \[N=3\]'),
    'not_integers': ([1.0, 2.5, 3.0], r'dtype float64; lengths are integer'),
}


@pytest.mark.parametrize('case', sorted(LENGTH_CASES))
def test_bad_lengths_are_refused_naming_the_field(case):
  lengths, message = LENGTH_CASES[case]
  with pytest.raises(validate.BadDataError,
                     match=r"^where, field audio_length: " + message):
    validate.with_frame_mask(np.zeros((3, 4, 2), np.float32),
                             np.array(lengths), 'where', 'audio_length')


def test_load_refuses_av_mnist_lengths_beyond_T(monkeypatch, tmp_path):
  """Through the loader: a stored length past the padded frames is named
  with its dataset, split, modality and field."""
  read = loader.read_split

  def tampered(source):
    raw = read(source)
    raw['audio_length'][4] = 49
    return raw

  monkeypatch.setattr(loader, 'read_split', tampered)
  data_dir = os.environ.get('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  with pytest.raises(validate.BadDataError,
                     match=r"dataset 'av_mnist_small' \(.*\), split 'train', "
                     r"modality 'audio', field audio_length: 1 length\(s\) "
                     r'outside \[1, T=48\], e.g. sample 4 has 49'):
    loader.load('av_mnist_small', data_dir=data_dir)


def test_empty_clients_are_counted_and_logged(caplog):
  caplog.set_level(logging.WARNING)
  assert validate.report_empty_clients(np.array([3, 0, 5, 0]), '/w') == 2
  assert '/w: 2 of 4 clients hold no samples (1, 3)' in caplog.text
  caplog.clear()
  assert validate.report_empty_clients(np.array([3, 1]), '/w') == 0
  assert not caplog.text


def _snapshot(root):
  out = {}
  for d, _, files in os.walk(root):
    for name in files:
      path = os.path.join(d, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = (f.read(), os.stat(path).st_mtime_ns)
  return out


def test_load_refuses_nan_before_training_and_touches_no_file(
    monkeypatch, tmp_path):
  """A NaN in one feature of the real data (injected where load reads the
  arrays): train.run stops naming the modality and the prepared folder, and
  the workdir of an earlier run keeps every file byte for byte."""
  workdir = tmp_path / 'run'
  (workdir / 'checkpoints' / '4').mkdir(parents=True)
  (workdir / 'checkpoints' / '4' / 'state').write_bytes(b'\0' * 64)
  (workdir / 'metrics.jsonl').write_text('{"round": 1}\n{"round": 2}\n')
  (workdir / 'config.json').write_text('{}')
  before = _snapshot(workdir)
  preprocess = loader._preprocess

  def poisoned(kind, train_x, test_x, stats_from):
    a, b = preprocess(kind, train_x, test_x, stats_from)
    if a.shape[1] == 64:   # the 'kar' view
      a[7, 5] = np.nan
    return a, b

  monkeypatch.setattr(loader, '_preprocess', poisoned)
  data_dir = os.environ.get('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  cfg = Config(workdir=str(workdir), dataset='uci_multifeature_small',
               data_dir=data_dir, num_clients=6, clients_per_round=3)
  with pytest.raises(validate.BadDataError) as e:
    train.run(cfg)
  assert ("dataset 'uci_multifeature_small' (" in str(e.value)
          and "uci_multifeature_small/" in str(e.value)), e.value
  assert ("split 'train', modality 'kar': NaN values in 1 sample(s), first "
          'sample 7') in str(e.value)
  after = _snapshot(workdir)
  after.pop('writer.lock')
  assert after == before
