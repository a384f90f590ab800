"""--dataset=files: built-in datasets written to the documented layout load
and train exactly as their builders do; bad layouts are refused, naming the
file and the field."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import pytest

from fedrecon_jax import checkpoint, data, train
from fedrecon_jax.config import Config
from fedrecon_jax.data import files, loader
from fedrecon_jax import recipe

import tiny


@pytest.fixture(scope='module')
def data_dir(env) -> str:
  return env['TFDS_DATA_DIR']  # Shared: the built-ins prepare once.


def write_layout(folder: pathlib.Path, modalities, kinds, splits,
                 num_classes: int, **extra) -> pathlib.Path:
  """Writes the layout by hand (not with files.py's code): dataset.json and
  one .npy per modality, labels and groups of each split. splits:
  {split: {field: array}}."""
  folder.mkdir(parents=True, exist_ok=True)
  shapes = [splits['train'][m].shape[1:] for m in modalities]
  spec = dict(num_classes=num_classes, modalities=[
      dict(name=m, kind=k, shape=list(s))
      for m, k, s in zip(modalities, kinds, shapes)], **extra)
  (folder / 'dataset.json').write_text(json.dumps(spec))
  for split, arrays in splits.items():
    for field, a in arrays.items():
      name = {'label': 'labels', 'group': 'groups'}.get(field, field)
      np.save(folder / f'{name}_{split}.npy', a)
  return folder


def write_builtin(name: str, data_dir: str, folder: pathlib.Path,
                  every: int = 1) -> pathlib.Path:
  """Writes the stored arrays of built-in `name` (every `every`-th sample)."""
  data.load(name, data_dir=data_dir)  # Prepares it.
  b = loader.builder(name, data_dir=data_dir)
  sources = b.as_data_source()
  splits = {}
  for split in ('train', 'test'):
    raw = loader.read_split(sources[split])
    splits[split] = {f: raw[f][::every] for f in (*b.MODALITIES, 'label')}
  return write_layout(folder, b.MODALITIES, b.KINDS, splits, b.NUM_CLASSES)


def assert_same_dataset(a: data.Dataset, b: data.Dataset) -> None:
  assert (a.modalities, a.kinds, a.num_classes) == (
      b.modalities, b.kinds, b.num_classes)
  for split in ('train', 'test'):
    sa, sb = getattr(a, split), getattr(b, split)
    np.testing.assert_array_equal(sa.y, sb.y)
    assert len(sa.xs) == len(sb.xs)
    for x, y in zip(sa.xs, sb.xs):
      assert x.dtype == y.dtype == np.float32
      np.testing.assert_array_equal(x, y)


def test_uci_multifeature_small_as_files_loads_equal(data_dir, tmp_path):
  folder = write_builtin(tiny.DATASET, data_dir, tmp_path)
  assert_same_dataset(
      data.load('files', data_dir=data_dir, manual_dir=str(folder)),
      data.load(tiny.DATASET, data_dir=data_dir))


def test_polymnist_5k_images_as_files_load_equal(data_dir, tmp_path):
  """polymnist_5k_small (uint8 CHW images), every 2nd sample: 200 + 50."""
  folder = write_builtin('polymnist_5k_small', data_dir, tmp_path, every=2)
  ours = data.load('files', data_dir=data_dir, manual_dir=str(folder))
  whole = data.load('polymnist_5k_small', data_dir=data_dir)
  assert len(ours.train) == 200 and len(ours.test) == 50
  assert ours.kinds == ('image',) * 3
  for split in ('train', 'test'):
    a, b = getattr(ours, split), getattr(whole, split)
    np.testing.assert_array_equal(a.y, b.y[::2])
    for x, y in zip(a.xs, b.xs):
      np.testing.assert_array_equal(x, y[::2])


# Two runs each (~25 s for vectors, 30-50 s for images): slow; the default
# tier reads files in test_resume_refuses_changed_files_and_follows_a_moved_folder.
@pytest.mark.slow
@pytest.mark.parametrize('name', [tiny.DATASET, 'polymnist_5k_small'])
def test_training_on_files_equals_training_on_the_builtin(name, data_dir,
                                                         tmp_path):
  """tests/tiny.py's model, 2 + 2 rounds (1 + 1 on images: a conv round
  costs more), on the layout and on the builder, to 1e-6."""
  rounds = 1 if name.startswith('polymnist') else 2
  folder = write_builtin(name, data_dir, tmp_path / 'layout')
  schedule = dict(tiny.MODEL, dataset=name, gen_rounds=rounds, rounds=rounds,
                  eval_every=1, checkpoint_every=0, data_dir=data_dir)
  runs = {}
  for run, extra in (('builtin', {}), ('files', dict(
      dataset='files', manual_dir=str(folder)))):
    workdir = str(tmp_path / run)
    runs[run] = (train.run(Config(**{**schedule, **extra}, workdir=workdir)),
                 tiny.records(workdir))
  (s_ref, r_ref), (s_files, r_files) = runs['builtin'], runs['files']
  assert len(r_ref) == len(r_files) == 2 * rounds
  for ref, got in [*zip(r_ref, r_files), (s_ref, s_files)]:
    numbers = {k for k, v in ref.items() if isinstance(v, (int, float))
               and not k.endswith('seconds')}
    assert numbers and numbers == {
        k for k, v in got.items() if isinstance(v, (int, float))
        and not k.endswith('seconds')}
    for k in sorted(numbers):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-6, atol=1e-6,
                                 err_msg=k)


def small_splits(rng, n_train=8, n_test=4, groups=False):
  out = {}
  for split, n in (('train', n_train), ('test', n_test)):
    out[split] = {
        'v': rng.normal(size=(n, 3)).astype(np.float64),
        'img': rng.integers(0, 256, size=(n, 1, 4, 5), dtype=np.uint8),
        'seq': rng.normal(size=(n, 6, 2)).astype(np.float32),
        'label': np.arange(n) % 3}
    if groups:
      out[split]['group'] = np.arange(n) // 2 + 100
  return out


def test_group_key_and_kinds_read_from_the_layout(tmp_path):
  splits = small_splits(np.random.default_rng(0), groups=True)
  folder = write_layout(tmp_path / 'd', ('v', 'img', 'seq'),
                        ('vector', 'image', 'sequence'), splits, 3,
                        group_key='subject')
  ds = data.load('files', data_dir=str(tmp_path / 'tfds'),
                 manual_dir=str(folder))
  assert ds.kinds == ('vector', 'image', 'sequence') and ds.num_classes == 3
  for split in ('train', 'test'):
    got, want = getattr(ds, split), splits[split]
    np.testing.assert_array_equal(got.group, want['group'])
    np.testing.assert_array_equal(got.y, want['label'])
    np.testing.assert_array_equal(got.xs[1], want['img'] / np.float32(255))
    assert got.xs[1].shape[1:] == (1, 4, 5)
    assert got.xs[2].shape[1:] == (6, 2)
  # Standardised with the train split's statistics (float32 storage).
  v = splits['train']['v'].astype(np.float32).astype(np.float64)
  np.testing.assert_allclose(ds.train.xs[0], (v - v.mean(0)) / v.std(0),
                             rtol=1e-5, atol=1e-5)


def test_two_layouts_in_one_data_dir_do_not_collide(tmp_path):
  """Each folder, and a folder whose arrays changed, is its own dataset."""
  rng = np.random.default_rng(1)
  data_dir = str(tmp_path / 'tfds')
  a, b = small_splits(rng), small_splits(rng, n_train=10)
  folder_a = write_layout(tmp_path / 'a', ('v',), ('vector',),
                          {s: {k: d[k] for k in ('v', 'label')}
                           for s, d in a.items()}, 3)
  folder_b = write_layout(tmp_path / 'b', ('img', 'seq'), ('image', 'sequence'),
                          {s: {k: d[k] for k in ('img', 'seq', 'label')}
                           for s, d in b.items()}, 3)
  got_a = data.load('files', data_dir=data_dir, manual_dir=str(folder_a))
  got_b = data.load('files', data_dir=data_dir, manual_dir=str(folder_b))
  assert got_a.modalities == ('v',) and len(got_a.train) == 8
  assert got_b.modalities == ('img', 'seq') and len(got_b.train) == 10
  np.testing.assert_array_equal(got_b.train.xs[0],
                                b['train']['img'] / np.float32(255))
  # Rewritten labels: prepared anew, not read from the first records (int32:
  # another size, so a file system's coarse mtime cannot hide the change).
  np.save(folder_a / 'labels_train.npy',
          ((a['train']['label'] + 1) % 3).astype(np.int32))
  again = data.load('files', data_dir=data_dir, manual_dir=str(folder_a))
  np.testing.assert_array_equal(again.train.y, (a['train']['label'] + 1) % 3)


def _edit_json(folder, change):
  spec = json.loads((folder / 'dataset.json').read_text())
  change(spec)
  (folder / 'dataset.json').write_text(json.dumps(spec))


def _set(*path_value):
  *path, value = path_value

  def change(spec):
    node = spec
    for p in path[:-1]:
      node = node[p]
    if value is KeyError:
      del node[path[-1]]
    else:
      node[path[-1]] = value
  return change


# (what is broken, edit of the folder, error type, words the error names).
BAD_LAYOUTS = {
    'no dataset.json': (lambda f: (f / 'dataset.json').unlink(),
                        FileNotFoundError, ['dataset.json']),
    'bad json': (lambda f: (f / 'dataset.json').write_text('{"num_classes": 3,'),
                 ValueError, ['dataset.json', 'not valid JSON']),
    'missing num_classes': (lambda f: _edit_json(f, _set('num_classes',
                                                         KeyError)),
                            ValueError, ['dataset.json', "['num_classes']",
                                         'required']),
    'unknown field': (lambda f: _edit_json(f, _set('colour', 'red')),
                      ValueError, ['dataset.json', "['colour']", 'allowed',
                                   'group_key']),
    'missing modality field': (
        lambda f: _edit_json(f, _set('modalities', 1, 'shape', KeyError)),
        ValueError, ['dataset.json', 'modalities[1]', "['shape']"]),
    'unknown kind': (lambda f: _edit_json(f, _set('modalities', 0, 'kind',
                                                  'audio')),
                     ValueError, ['dataset.json', 'modalities[0].kind',
                                  "'audio'", "'vector', 'image', 'sequence'"]),
    'shape of the wrong rank': (
        lambda f: _edit_json(f, _set('modalities', 1, 'shape', [4, 5])),
        ValueError, ['dataset.json', 'modalities[1].shape', 'C, H, W']),
    'name clash': (lambda f: _edit_json(f, _set('modalities', 1, 'name', 'v')),
                   ValueError, ['dataset.json', 'unique']),
    'missing npy': (lambda f: (f / 'img_test.npy').unlink(),
                    FileNotFoundError, ['img_test.npy', 'Missing input files']),
    'not an npy': (lambda f: (f / 'seq_train.npy').write_text('1,2,3'),
                   ValueError, ['seq_train.npy', '.npy']),
    'declared shape differs': (
        lambda f: _edit_json(f, _set('modalities', 0, 'shape', [4])),
        ValueError, ['v_train.npy', "modality 'v'", '[N, 4]', '(8, 3)']),
    'label out of range': (
        lambda f: np.save(f / 'labels_test.npy', np.array([0, 1, 2, 3])),
        ValueError, ['labels_test.npy', 'field label', 'num_classes=3']),
    'negative label': (
        lambda f: np.save(f / 'labels_train.npy', np.arange(8) % 3 - 1),
        ValueError, ['labels_train.npy', 'num_classes=3']),
    'float labels': (
        lambda f: np.save(f / 'labels_train.npy', np.zeros(8)),
        ValueError, ['labels_train.npy', 'field label', 'integers']),
    'fewer rows than labels': (
        lambda f: np.save(f / 'seq_test.npy', np.zeros((3, 6, 2), np.float32)),
        ValueError, ['seq_test.npy', "modality 'seq'", '3 samples', 'holds 4']),
    'image not uint8': (
        lambda f: np.save(f / 'img_train.npy', np.zeros((8, 1, 4, 5))),
        ValueError, ['img_train.npy', "modality 'img'", 'uint8']),
    'group_key without groups': (
        lambda f: _edit_json(f, _set('group_key', 'subject')),
        FileNotFoundError, ['groups_train.npy', 'groups_test.npy']),
}


@pytest.mark.parametrize('broken', BAD_LAYOUTS)
def test_bad_layout_names_file_and_field(tmp_path, broken):
  edit, error, words = BAD_LAYOUTS[broken]
  folder = write_layout(tmp_path / 'd', ('v', 'img', 'seq'),
                        ('vector', 'image', 'sequence'),
                        small_splits(np.random.default_rng(2)), 3)
  edit(folder)
  with pytest.raises(error) as e:
    data.load('files', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(folder))
  for w in words:
    assert w in str(e.value), (w, str(e.value))
  assert not (tmp_path / 'tfds' / 'files').exists() or not any(
      (tmp_path / 'tfds' / 'files').rglob('*.array_record*'))


def test_files_without_manual_dir_is_refused():
  with pytest.raises(ValueError, match='--manual_dir'):
    recipe.validate(Config(dataset='files', workdir='/tmp/unused'))
  with pytest.raises(ValueError, match='--manual_dir'):
    loader.builder('files', data_dir='/tmp/unused')
  assert data.needs_manual_dir('files')
  assert not data.needs_manual_dir(tiny.DATASET)
  assert files.FilesBuilder.name in data.DATASETS


def test_resume_refuses_changed_files_and_follows_a_moved_folder(data_dir,
                                                                tmp_path):
  """A workdir trained on a layout resumes from a copy of the folder
  elsewhere, and refuses the folder once an array's values changed."""
  folder = write_builtin(tiny.DATASET, data_dir, tmp_path / 'a')
  schedule = dict(tiny.MODEL, dataset='files', gen_rounds=1, eval_every=1,
                  checkpoint_every=1, data_dir=data_dir,
                  workdir=str(tmp_path / 'run'))
  train.run(Config(**schedule, rounds=1, manual_dir=str(folder)))
  moved = tmp_path / 'b'
  shutil.copytree(folder, moved)
  summary = train.run(Config(**schedule, rounds=2, manual_dir=str(moved)))
  assert summary['rounds'] == 3
  changed = tmp_path / 'c'  # (A new path: a process reads a folder once.)
  shutil.copytree(folder, changed)
  name = f'{loader.builder(tiny.DATASET).MODALITIES[0]}_train.npy'
  np.save(changed / name, np.load(changed / name)[::-1])  # Not a rescale:
  # vectors are standardised, so x * 2 would load as x.
  with pytest.raises(checkpoint.IncompatibleRunError,
                     match=r"features differ.*--manual_dir="):
    train.run(Config(**schedule, rounds=3, manual_dir=str(changed)))
  assert tiny.records(schedule['workdir'])[-1]['round'] == 3
