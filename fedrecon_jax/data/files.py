"""--dataset=files: the user's own arrays, read from a folder, with no code.

Layout of the folder (`--manual_dir=DIR`):
  DIR/dataset.json   {"num_classes": 10,
                      "modalities": [{"name": "audio", "kind": "sequence",
                                      "shape": [100, 13]}, ...],
                      "group_key": "subject"}          (group_key optional)
  DIR/<name>_train.npy, DIR/<name>_test.npy   per modality, [N, *shape]
  DIR/labels_train.npy, DIR/labels_test.npy   integer [N], in [0, num_classes)
  DIR/groups_train.npy, DIR/groups_test.npy   integer [N]; only with group_key
Kinds (`FILE_KINDS`): 'vector' [d] and 'sequence' [T, C] of any real dtype
(stored float32, then standardised by the loader), 'image' [C, H, W] uint8.
A sample is a row: 'index' is its row number, which fixes the order. Every
problem is refused before anything is written, naming the file and field.

The prepared records live under <data_dir>/files/<config>/, where the config
name hashes dataset.json and each array file's name, size and mtime: another
folder's layout, or this folder changed, is prepared anew instead of reading
records of other data. (Size and mtime, not the bytes: hashing a large
folder's contents would cost a full read on every load.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from fedrecon_jax.data import base
from fedrecon_jax.data import validate

SPEC = 'dataset.json'
SPLITS = ('train', 'test')
FIELDS = ('num_classes', 'modalities', 'group_key')
MODALITY_FIELDS = ('name', 'kind', 'shape')
_NAME = re.compile(r'[A-Za-z][A-Za-z0-9_]*')
_RESERVED = ('label', 'index', 'labels', 'groups')
# base.KINDS but 'masked_sequence': its lengths would need a file of their
# own, which this layout does not define yet.
FILE_KINDS = ('vector', 'image', 'sequence')

LAYOUT_HELP = (
    'Expected layout: <manual_dir>/dataset.json = {"num_classes": int, '
    '"modalities": [{"name": str, "kind": "vector"|"image"|"sequence", '
    '"shape": [...]}, ...], "group_key": str (optional)}; per modality '
    '<name>_{train,test}.npy [N, *shape] (image: uint8 C,H,W; else real '
    'numbers), labels_{train,test}.npy integer [N], and with group_key '
    'groups_{train,test}.npy integer [N]. See WORKSPACE.md, "Your own data '
    'with no code".')


class LayoutError(ValueError):
  """The folder does not follow the layout; the message names file and field."""


@dataclasses.dataclass(frozen=True)
class Modality:
  name: str
  kind: str  # One of FILE_KINDS.
  shape: tuple[int, ...]  # Per sample.


@dataclasses.dataclass(frozen=True)
class Layout:
  """dataset.json, checked."""
  num_classes: int
  modalities: tuple[Modality, ...]
  group_key: str | None

  def files(self, split: str) -> dict[str, str]:
    """{field: file name} of one split's arrays."""
    out = {m.name: f'{m.name}_{split}.npy' for m in self.modalities}
    out['label'] = f'labels_{split}.npy'
    if self.group_key is not None:
      out[self.group_key] = f'groups_{split}.npy'
    return out


def _bad(path: pathlib.Path, field: str, problem: str) -> LayoutError:
  return LayoutError(f'{path}, field {field}: {problem}. {LAYOUT_HELP}')


def read_layout(folder: pathlib.Path) -> Layout:
  """Reads and checks DIR/dataset.json (not the arrays)."""
  path = folder / SPEC
  if not path.is_file():
    raise base.missing_files_error(folder, [path], LAYOUT_HELP)
  try:
    spec = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise LayoutError(f'{path}: not valid JSON ({e}). {LAYOUT_HELP}') from e
  if not isinstance(spec, dict):
    raise _bad(path, '(top level)', f'got {type(spec).__name__}, expected an '
               f'object with fields {FIELDS}')
  _check_keys(spec, path, '(top level)', FIELDS, required=FIELDS[:2])
  num_classes = spec['num_classes']
  if not _is_int(num_classes) or num_classes < 1:
    raise _bad(path, 'num_classes', f'{num_classes!r} is not an integer >= 1')
  mods = spec['modalities']
  if not isinstance(mods, list) or not mods:
    raise _bad(path, 'modalities', f'{mods!r} is not a non-empty list')
  modalities = tuple(_modality(m, path, f'modalities[{i}]')
                     for i, m in enumerate(mods))
  group_key = spec.get('group_key')
  if group_key is not None:
    _check_name(group_key, path, 'group_key')
  names = [m.name for m in modalities] + [group_key] * (group_key is not None)
  if len(set(names)) < len(names):
    raise _bad(path, 'modalities[].name / group_key',
               f'names {names} repeat; each must be unique')
  return Layout(num_classes, modalities, group_key)


def _modality(spec: Any, path: pathlib.Path, field: str) -> Modality:
  if not isinstance(spec, dict):
    raise _bad(path, field, f'{spec!r} is not an object with fields '
               f'{MODALITY_FIELDS}')
  _check_keys(spec, path, field, MODALITY_FIELDS, required=MODALITY_FIELDS)
  _check_name(spec['name'], path, f'{field}.name')
  kind, shape = spec['kind'], spec['shape']
  if kind not in FILE_KINDS:
    raise _bad(path, f'{field}.kind', f'{kind!r} is not one of {FILE_KINDS}')
  ndim = validate.SAMPLE_NDIM[kind]
  if (not isinstance(shape, list) or len(shape) != ndim
      or not all(_is_int(s) and s >= 1 for s in shape)):
    raise _bad(path, f'{field}.shape', f'{shape!r} is not a list of {ndim} '
               f'integers >= 1, the per-sample shape of a {kind} '
               f'([{validate.LAYOUT[kind]}])')
  return Modality(spec['name'], kind, tuple(shape))


def _check_keys(spec: dict, path, field, allowed, required) -> None:
  unknown = sorted(set(spec) - set(allowed))
  if unknown:
    raise _bad(path, field, f'unknown field(s) {unknown}; allowed: {allowed}')
  missing = [k for k in required if k not in spec]
  if missing:
    raise _bad(path, field, f'missing field(s) {missing}; required: '
               f'{required}')


def _check_name(name: Any, path, field) -> None:
  if (not isinstance(name, str) or not _NAME.fullmatch(name)
      or name in _RESERVED):
    raise _bad(path, field, f'{name!r} must be a letter then letters, digits '
               f'or _ (it names files and features), not one of {_RESERVED}')


def _is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def check_arrays(folder: pathlib.Path, layout: Layout) -> None:
  """Checks every array file against the layout; reads headers, not data
  (memory-mapped), apart from the labels' range."""
  missing = [folder / f for s in SPLITS for f in layout.files(s).values()
             if not (folder / f).is_file()]
  if missing:
    raise base.missing_files_error(folder, missing, LAYOUT_HELP)
  for split in SPLITS:
    files = layout.files(split)
    arrays = {field: _open(folder / f) for field, f in files.items()}
    y = arrays['label']
    _check_ints(y, folder / files['label'], 'label', len(y) if y.ndim else -1)
    n = len(y)
    if n == 0 or y.min() < 0 or y.max() >= layout.num_classes:
      where = f'values in [{y.min()}, {y.max()}]' if n else 'no labels'
      raise _bad(folder / files['label'], 'label', f'{where}; expected at '
                 f'least one label, each in [0, num_classes='
                 f'{layout.num_classes}) of {SPEC}')
    for m in layout.modalities:
      _check_modality(arrays[m.name], m, folder / files[m.name], n)
    if layout.group_key is not None:
      _check_ints(arrays[layout.group_key], folder / files[layout.group_key],
                  layout.group_key, n)


def _open(path: pathlib.Path) -> np.ndarray:
  try:
    return np.load(path, mmap_mode='r', allow_pickle=False)
  except (ValueError, OSError) as e:
    raise LayoutError(f'{path}: not a numeric .npy array file ({e}). '
                      f'{LAYOUT_HELP}') from e


def _check_modality(x: np.ndarray, m: Modality, path, n: int) -> None:
  field = f'modality {m.name!r} ({m.kind})'
  if x.shape[1:] != m.shape:
    raise _bad(path, field, f'array shape {x.shape}, but {SPEC} declares '
               f'per-sample shape {list(m.shape)}: expected [N, '
               f'{", ".join(map(str, m.shape))}]')
  if len(x) != n:
    raise _bad(path, field, f'{len(x)} samples, but the labels file of its '
               f'split holds {n}; each row is one sample')
  if m.kind == 'image' and x.dtype != np.uint8:
    raise _bad(path, field, f'dtype {x.dtype}; images must be uint8 in '
               '[0, 255] (e.g. np.round(x * 255).astype(np.uint8))')
  if m.kind != 'image' and not (np.issubdtype(x.dtype, np.integer)
                                or np.issubdtype(x.dtype, np.floating)):
    raise _bad(path, field, f'dtype {x.dtype}; expected integers or floats')


def _check_ints(x: np.ndarray, path, field: str, n: int) -> None:
  if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
    raise _bad(path, field, f'shape {x.shape}, dtype {x.dtype}; expected '
               'integers [N], one per sample')
  if len(x) != n:
    raise _bad(path, field, f'{len(x)} entries, but the labels file of its '
               f'split holds {n}')


def config_name(folder: pathlib.Path, layout: Layout) -> str:
  """'layout_<hash>' of dataset.json's bytes and the arrays' names, sizes
  and mtimes (a missing file hashes as absent; check_arrays refuses it)."""
  h = hashlib.sha256((folder / SPEC).read_bytes())
  for f in sorted(f for s in SPLITS for f in layout.files(s).values()):
    path = folder / f
    st = path.stat() if path.is_file() else None
    h.update(f'{f}:{st and (st.st_size, st.st_mtime_ns)};'.encode())
  return 'layout_' + h.hexdigest()[:16]


class FilesBuilder(base.Builder):
  """The arrays of a user's folder (--manual_dir), as described above."""
  name = 'files'
  order = 50
  NEEDS_MANUAL_DIR = True
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = LAYOUT_HELP

  def __init__(self, *, manual_dir: str | pathlib.Path, **kwargs: Any):
    self.folder = pathlib.Path(manual_dir).expanduser().resolve()
    self.layout = read_layout(self.folder)
    # Per instance: the loader reads these as it reads a built-in's.
    self.MODALITIES = tuple(m.name for m in self.layout.modalities)
    self.KINDS = tuple(m.kind for m in self.layout.modalities)
    self.NUM_CLASSES = self.layout.num_classes
    self.GROUP_KEY = self.layout.group_key
    kwargs.setdefault('config', tfds.core.BuilderConfig(
        name=config_name(self.folder, self.layout),
        description=f'The arrays of {self.folder}.'))
    super().__init__(**kwargs)
    # tfds re-creates a builder from this when it is unpickled.
    self._original_state['manual_dir'] = str(self.folder)

  @classmethod
  def check_manual_dir(cls, manual_dir: pathlib.Path | None) -> None:
    folder = manual_dir or pathlib.Path('<manual_dir>')
    check_arrays(folder, read_layout(folder))

  def _info(self) -> tfds.core.DatasetInfo:
    features = {m.name: tfds.features.Tensor(
        shape=m.shape, dtype=np.uint8 if m.kind == 'image' else np.float32)
                for m in self.layout.modalities}
    features['label'] = tfds.features.ClassLabel(
        num_classes=self.layout.num_classes)
    features['index'] = tfds.features.Scalar(dtype=np.int64)
    if self.GROUP_KEY is not None:
      features[self.GROUP_KEY] = tfds.features.Scalar(dtype=np.int64)
    return self.dataset_info_from_configs(
        description=f'The user\'s arrays read from {self.folder} ({SPEC}: '
        + ', '.join(f'{m.name} {m.kind} {list(m.shape)}'
                    for m in self.layout.modalities) + ').',
        features=tfds.features.FeaturesDict(features))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The folder was given at construction.
    check_arrays(self.folder, self.layout)
    return {split: self._generate_examples(split) for split in SPLITS}

  def _generate_examples(self, split: str):
    files = self.layout.files(split)
    arrays = {field: np.load(self.folder / f, mmap_mode='r')
              for field, f in files.items()}
    dtypes = {m.name: np.uint8 if m.kind == 'image' else np.float32
              for m in self.layout.modalities}
    for i in range(len(arrays['label'])):
      example = {m: np.asarray(arrays[m][i], dtype=d)
                 for m, d in dtypes.items()}
      example['label'] = int(arrays['label'][i])
      example['index'] = i
      if self.GROUP_KEY is not None:
        example[self.GROUP_KEY] = int(arrays[self.GROUP_KEY][i])
      yield i, example


BUILDERS = (FilesBuilder,)
