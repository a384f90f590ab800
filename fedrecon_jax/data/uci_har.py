"""UCI HAR (Human Activity Recognition Using Smartphones), read from manual_dir.

Two modalities, as in FedMultimodal: 'acc' (body acceleration) and 'gyro'
(body angular velocity), each float32 [128, 3]: 128 time steps (2.56 s at
50 Hz) x axes (x, y, z), time-major. Labels 1..6 in the files are stored as
0..5; 'subject' (1..30) is kept as the natural client key. The original
train/test split (by subject) is kept; 'index' is the row in the split's
files.

Expected files (the unzipped "UCI HAR Dataset" folder):
  <manual_dir>/UCI HAR Dataset/<split>/Inertial Signals/
      body_acc_{x,y,z}_<split>.txt, body_gyro_{x,y,z}_<split>.txt
  <manual_dir>/UCI HAR Dataset/<split>/y_<split>.txt, subject_<split>.txt
for <split> in train, test. manual_dir may also be that folder itself.
"""

from __future__ import annotations

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import base

MODALITIES = ('acc', 'gyro')
SIGNALS = {'acc': 'body_acc', 'gyro': 'body_gyro'}
AXES = ('x', 'y', 'z')
NUM_STEPS = 128
ACTIVITIES = ('WALKING', 'WALKING_UPSTAIRS', 'WALKING_DOWNSTAIRS', 'SITTING',
              'STANDING', 'LAYING')
ROOT = 'UCI HAR Dataset'

_HOMEPAGE = ('https://archive.ics.uci.edu/dataset/240/'
             'human+activity+recognition+using+smartphones')
_CITATION = """\
@inproceedings{anguita2013public,
  title = {A Public Domain Dataset for Human Activity Recognition Using
           Smartphones},
  author = {Anguita, Davide and Ghio, Alessandro and Oneto, Luca and
            Parra, Xavier and Reyes-Ortiz, Jorge Luis},
  booktitle = {21st European Symposium on Artificial Neural Networks,
               Computational Intelligence and Machine Learning (ESANN)},
  year = {2013}
}"""


def expected_files(root: pathlib.Path, split: str) -> dict[str, pathlib.Path]:
  """{key: path} of one split's files; keys 'acc_x'.., 'label', 'subject'."""
  signals = root / split / 'Inertial Signals'
  files = {f'{m}_{a}': signals / f'{SIGNALS[m]}_{a}_{split}.txt'
           for m in MODALITIES for a in AXES}
  files['label'] = root / split / f'y_{split}.txt'
  files['subject'] = root / split / f'subject_{split}.txt'
  return files


def dataset_root(manual_dir: pathlib.Path) -> pathlib.Path:
  """The "UCI HAR Dataset" folder: inside manual_dir, or manual_dir itself."""
  nested = manual_dir / ROOT
  flat = (manual_dir / 'train' / 'Inertial Signals').is_dir()
  if flat and not nested.is_dir():
    return manual_dir
  return nested


def read_split(root: pathlib.Path, split: str) -> dict[str, np.ndarray]:
  """Reads one split's files into arrays.

  Returns:
    'acc', 'gyro': float32 [N, 128, 3]; 'label': [N] in 0..5; 'subject': [N].
  """
  files = expected_files(root, split)
  out = {}
  for m in MODALITIES:
    axes = [np.loadtxt(files[f'{m}_{a}'], dtype=np.float32, ndmin=2)
            for a in AXES]
    for a, x in zip(AXES, axes):
      if x.shape[1] != NUM_STEPS:
        raise ValueError(f'{files[f"{m}_{a}"]}: {x.shape[1]} values per row, '
                         f'expected {NUM_STEPS}.')
    out[m] = np.stack(axes, axis=-1)  # [N, 128, 3]
  out['label'] = np.loadtxt(files['label'], dtype=np.int64, ndmin=1) - 1
  out['subject'] = np.loadtxt(files['subject'], dtype=np.int64, ndmin=1)
  rows = {k: len(v) for k, v in out.items()}
  if len(set(rows.values())) != 1:
    raise ValueError(f'{root / split}: files have different row counts {rows}.')
  if out['label'].min() < 0 or out['label'].max() >= len(ACTIVITIES):
    raise ValueError(
        f'{files["label"]}: labels must be in 1..{len(ACTIVITIES)}.')
  return out


class UciHar(base.Builder):
  """UCI HAR inertial signals: acc and gyro modalities, 6 activities."""
  name = 'uci_har'
  order = 5
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Download "UCI HAR Dataset.zip" from ' + _HOMEPAGE + ' and unzip it in '
      f'manual_dir, so that manual_dir/{ROOT}/train/Inertial Signals/'
      'body_acc_x_train.txt exists (and the other files listed in '
      'fedrecon_jax/data/uci_har.py).')
  MODALITIES = MODALITIES
  KINDS = ('sequence', 'sequence')
  NUM_CLASSES = len(ACTIVITIES)
  GROUP_KEY = 'subject'

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    root = (dataset_root(manual_dir) if manual_dir is not None
            else pathlib.Path('<manual_dir>', ROOT))
    missing = [p for split in ('train', 'test')
               for p in expected_files(root, split).values() if not p.is_file()]
    if missing:
      raise base.missing_files_error(
          manual_dir, missing, cls.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def _info(self) -> tfds.core.DatasetInfo:
    seq = tfds.features.Tensor(shape=(NUM_STEPS, len(AXES)), dtype=np.float32)
    return self.dataset_info_from_configs(
        description=(
            'UCI HAR: smartphone inertial signals of 30 subjects doing 6 '
            'activities. Modalities acc (body_acc) and gyro (body_gyro), '
            'float32 [128 steps, 3 axes]; label 0..5; subject 1..30.'),
        features=tfds.features.FeaturesDict({
            'acc': seq,
            'gyro': seq,
            'label': tfds.features.ClassLabel(names=ACTIVITIES),
            'subject': tfds.features.Scalar(dtype=np.int64),
            'index': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage=_HOMEPAGE,
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = base.manual_dir_or_none(dl_manager)
    self.check_manual_dir(manual)
    root = dataset_root(manual)
    return {split: self._generate_examples(root, split)
            for split in ('train', 'test')}

  def _generate_examples(self, root: pathlib.Path, split: str):
    data = read_split(root, split)
    for i in range(len(data['label'])):
      yield i, {'acc': data['acc'][i], 'gyro': data['gyro'][i],
                'label': int(data['label'][i]),
                'subject': int(data['subject'][i]), 'index': i}


BUILDERS = (UciHar,)
