"""What every dataset builder shares: the `Builder` base and small helpers.

A dataset is one module of this package listing its builders in `BUILDERS`
(each with its TFDS `name` and an `order` for the flag's choices); the
loader finds them (`registry.discover`), so nothing else names a dataset.
"""

from __future__ import annotations

import pathlib
from typing import Any, ClassVar, Sequence

import numpy as np
import tensorflow_datasets as tfds

KINDS = ('vector', 'image', 'sequence', 'masked_sequence')


def length_key(modality: str) -> str:
  """The feature holding a 'masked_sequence' modality's true frame counts:
  the builder stores [T, C] frames zero-padded past the length, and the
  loader turns the length into the frame mask (loader.py)."""
  return f'{modality}_length'


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of this package's builders: array_record files plus metadata.

  Subclasses set the class attributes below; their FeaturesDict holds one
  feature per modality (named as in MODALITIES), 'label' and 'index' (a unique
  int that fixes the sample order), plus GROUP_KEY if not None, plus
  length_key(m) (int, in [1, T]) for each 'masked_sequence' modality m.
  """
  MODALITIES: ClassVar[tuple[str, ...]] = ()
  KINDS: ClassVar[tuple[str, ...]] = ()
  NUM_CLASSES: ClassVar[int] = 0
  GROUP_KEY: ClassVar[str | None] = None
  # Where it sits in --dataset's choices (then by name).
  order: ClassVar[int] = 100
  # True: the builder is made from the user's folder (its __init__ takes
  # manual_dir, which then has no default) and sets the attributes above
  # per instance from it (files.py).
  NEEDS_MANUAL_DIR: ClassVar[bool] = False

  def __init__(self, **kwargs: Any):
    # array_record is the only random-access format TFDS reads without TF.
    kwargs.setdefault('file_format', 'array_record')
    super().__init__(**kwargs)

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    """Raises FileNotFoundError if `manual_dir` lacks files the build needs."""
    del manual_dir  # Builders that read only shipped files need nothing.


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
      + more + f'\n{how}\nPass the folder as --manual_dir (load(..., '
      'manual_dir=...)).')
