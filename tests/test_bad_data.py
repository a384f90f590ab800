"""Bad data is refused before training, naming the field and where it came
from, and leaves a workdir's files as they were."""

import logging
import os

import numpy as np
import pytest

from fedrecon_jax import train
from fedrecon_jax.config import Config
from fedrecon_jax.data import loader, validate


def dataset(**changes) -> loader.Dataset:
  """A small valid dataset: vector 'v' [N, 3], sequence 's' [N, 4, 2], image
  'img' [N, 1, 2, 2]; 6 train / 4 test samples, 3 classes. `changes` maps
  '<split>.<modality>' or '<split>.label' to a replacement array."""
  rng = np.random.default_rng(0)
  shapes = {'v': (3,), 's': (4, 2), 'img': (1, 2, 2)}

  def split(name, n):
    xs = [changes.get(f'{name}.{m}',
                      rng.normal(size=(n, *s)).astype(np.float32))
          for m, s in shapes.items()]
    y = changes.get(f'{name}.label', np.arange(n, dtype=np.int32) % 3)
    return loader.Split(xs=tuple(xs), y=y, group=None)

  return loader.Dataset('toy', tuple(shapes), ('vector', 'sequence', 'image'),
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
            (('v', (3,)), ('s', (4, 2)), ('img', (1, 2, 2)))}},
        r"split 'test': no samples \(field label is empty\)"),
}


@pytest.mark.parametrize('case', sorted(CASES))
def test_bad_data_is_refused_naming_the_field(case):
  changes, message = CASES[case]
  with pytest.raises(validate.BadDataError,
                     match=r"dataset 'toy' \(/data/toy\), " + message):
    validate.check_dataset(dataset(**changes), source='/data/toy')


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

  def poisoned(kind, train_x, test_x):
    a, b = preprocess(kind, train_x, test_x)
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
