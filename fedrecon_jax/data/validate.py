"""Refuses a loaded dataset that would train on garbage, before any round.

`check_dataset` runs once per load on the model-ready arrays (experiment
setup): non-finite values, arrays whose shape does not fit their modality
kind or the other split, labels outside [0, num_classes), and a modality or
split without samples are errors naming the dataset, split, modality (the
field) and where the data came from. Checking the preprocessed arrays is
enough: standardisation keeps a NaN or Inf in the feature it came from.

A client without samples is not an error (the unimodal baseline drops the
clients that lack its modality): it is never weighted into an aggregate, so
it is skipped; `report_empty_clients` counts and logs those clients.
"""

from __future__ import annotations

from absl import logging
import numpy as np

# Dimensions of one sample per modality kind: vector [d], sequence [T, C],
# image [C, H, W], masked_sequence [T, C + 1] (model-ready: C features, then
# the frame mask, 1 for the first `length` frames and 0 after).
SAMPLE_NDIM = {'vector': 1, 'sequence': 2, 'image': 3, 'masked_sequence': 2}


class BadDataError(ValueError):
  """The dataset's arrays cannot be trained on; the message says where."""


def check_dataset(ds, source: str = ''):
  """Returns `ds` (a data.Dataset) or raises BadDataError naming the field.

  source: where the arrays were read from (a file or folder), for the
  message; default the dataset's name only.
  """
  where = f'dataset {ds.name!r}' + (f' ({source})' if source else '')
  if not (len(ds.modalities) == len(ds.kinds) and ds.modalities):
    raise BadDataError(f'{where}: modalities {ds.modalities} and kinds '
                       f'{ds.kinds} must be non-empty and of equal length.')
  for name in ('train', 'test'):
    split = getattr(ds, name)
    _check_split(split, ds, f'{where}, split {name!r}')
  for m, (mod, kind) in enumerate(zip(ds.modalities, ds.kinds)):
    a, b = ds.train.xs[m].shape[1:], ds.test.xs[m].shape[1:]
    if a != b:
      raise BadDataError(
          f'{where}, modality {mod!r}: train samples have shape {a}, test '
          f'samples {b}; both splits must have the same per-sample shape.')
  return ds


def _check_split(split, ds, where: str) -> None:
  y = np.asarray(split.y)
  if y.ndim != 1:
    raise BadDataError(f'{where}, field label: shape {y.shape}, expected '
                       '[N] (one label per sample).')
  if len(split.xs) != len(ds.modalities):
    raise BadDataError(f'{where}: {len(split.xs)} modality arrays for the '
                       f'{len(ds.modalities)} modalities {ds.modalities}.')
  n = y.shape[0]
  if not n:
    raise BadDataError(f'{where}: no samples (field label is empty).')
  bad = (y < 0) | (y >= ds.num_classes)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise BadDataError(
        f'{where}, field label: {int(bad.sum())} label(s) outside [0, '
        f'num_classes={ds.num_classes}), e.g. sample {i} has {y[i]}.')
  if split.group is not None and np.shape(split.group) != (n,):
    raise BadDataError(f'{where}, field group: shape '
                       f'{np.shape(split.group)}, expected [N={n}].')
  for mod, kind, x in zip(ds.modalities, ds.kinds, split.xs):
    _check_modality(np.asarray(x), kind, n, f'{where}, modality {mod!r}')


def _check_modality(x: np.ndarray, kind: str, n: int, where: str) -> None:
  if kind not in SAMPLE_NDIM:
    raise BadDataError(f'{where}: unknown kind {kind!r}; expected one of '
                       f'{tuple(SAMPLE_NDIM)}.')
  if x.ndim and x.shape[0] == 0:
    raise BadDataError(f'{where}: no samples at all (shape {x.shape}).')
  if x.ndim != 1 + SAMPLE_NDIM[kind]:
    raise BadDataError(
        f'{where}: shape {x.shape} does not fit a {kind} modality, which '
        f'is [N, {LAYOUT[kind]}].')
  if x.shape[0] != n:
    raise BadDataError(f'{where}: {x.shape[0]} samples, but the split has '
                       f'{n} labels.')
  if 0 in x.shape[1:]:
    raise BadDataError(f'{where}: empty per-sample shape {x.shape[1:]}.')
  finite = np.isfinite(x)
  if not finite.all():
    rows = np.flatnonzero(~finite.reshape(n, -1).all(1))
    kinds = ', '.join(k for k, f in (('NaN', np.isnan), ('Inf', np.isinf))
                      if f(x).any())
    raise BadDataError(
        f'{where}: {kinds} values in {len(rows)} sample(s), first sample '
        f'{int(rows[0])}. Fix or drop those samples.')
  if kind == 'masked_sequence':
    _check_frame_mask(x, where)


LAYOUT = {'vector': 'd', 'sequence': 'T, C', 'image': 'C, H, W',
          'masked_sequence': 'T, C + 1 (the last channel the frame mask)'}


def _check_frame_mask(x: np.ndarray, where: str) -> None:
  """A model-ready masked sequence [N, T, C + 1]: its last channel is a
  prefix mask of at least one frame, and padded frames' features are 0."""
  field = f'{where}, field mask (last channel)'
  if x.shape[-1] < 2:
    raise BadDataError(f'{field}: {x.shape[-1]} channel(s); a masked '
                       'sequence has at least one feature and the mask.')
  mask = x[..., -1]
  bad = ~((mask == 0) | (mask == 1)).all(1)
  bad |= (np.diff(mask, axis=1) > 0).any(1)     # a 0 before a 1: not a prefix
  if bad.any():
    raise BadDataError(f'{field}: sample {int(np.flatnonzero(bad)[0])} is '
                       'not 1 for its first frames and 0 after; the mask '
                       'must be a prefix of ones.')
  empty = mask[:, 0] == 0
  if empty.any():
    raise BadDataError(f'{field}: {int(empty.sum())} sample(s) of length 0, '
                       f'first sample {int(np.flatnonzero(empty)[0])}; '
                       f'lengths must be in [1, T={x.shape[1]}].')
  leak = ((x[..., :-1] != 0).any(-1) & (mask == 0)).any(1)
  if leak.any():
    raise BadDataError(f'{field}: sample {int(np.flatnonzero(leak)[0])} has '
                       'non-zero features on padded frames (mask 0).')


def with_frame_mask(x: np.ndarray, lengths: np.ndarray, where: str,
                    field: str) -> np.ndarray:
  """Raw frames [N, T, C] and true lengths [N] -> [N, T, C + 1]: frames past
  each length zeroed, the frame mask appended as the last channel. Lengths
  that are not integers in [1, T], or not one per sample, are a BadDataError
  naming `field` (the builder's length feature)."""
  lengths = np.asarray(lengths)
  name = f'{where}, field {field}'
  if x.ndim != 3:
    raise BadDataError(f'{where}: frames of shape {x.shape}, expected '
                       '[N, T, C].')
  n, t = x.shape[:2]
  if lengths.shape != (n,):
    raise BadDataError(f'{name}: shape {lengths.shape}, expected [N={n}] '
                       '(one length per sample).')
  if not np.issubdtype(lengths.dtype, np.integer):
    raise BadDataError(f'{name}: dtype {lengths.dtype}; lengths are integer '
                       'frame counts.')
  bad = (lengths < 1) | (lengths > t)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise BadDataError(f'{name}: {int(bad.sum())} length(s) outside [1, '
                       f'T={t}], e.g. sample {i} has {int(lengths[i])}.')
  mask = (np.arange(t)[None] < lengths[:, None]).astype(x.dtype)   # [N, T]
  return np.concatenate([x * mask[..., None], mask[..., None]], axis=-1)


def report_empty_clients(num_samples: np.ndarray, where: str) -> int:
  """Logs the clients holding no sample (they are skipped: weight 0 in
  every aggregate); returns how many there are. num_samples: [K] ints."""
  empty = np.flatnonzero(np.asarray(num_samples) == 0)
  if empty.size:
    shown = ', '.join(str(k) for k in empty[:20])
    logging.warning(
        '%s: %d of %d clients hold no samples (%s%s); they are skipped: '
        'sampled into a cohort, they train nothing and weigh 0.', where,
        empty.size, len(num_samples), shown, ' ...' if empty.size > 20 else '')
  return int(empty.size)
