"""Client partitions: label-skewed splits, modality masks and padded stacking.

Everything here is host-side numpy. Each random function takes its own seed
and builds a private `np.random.default_rng(seed)`, so no global RNG state is
read or written and a partition is a pure function of its arguments.

Conventions:
  N: number of training samples, K: number of clients, M: number of
  modalities, max_n: the padded per-client length.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import chex
import numpy as np

# np.random.default_rng accepts ints and SeedSequences alike; make_partition
# passes spawned SeedSequences so that its sub-draws are independent.
Seed = int | np.random.SeedSequence


def _check_alpha(alpha: float) -> None:
  if not (isinstance(alpha, (int, float, np.floating, np.integer))
          and math.isfinite(alpha) and alpha > 0):
    raise ValueError(f'alpha must be > 0 and finite, got {alpha!r}.')


def _check_missing_rate(missing_rate: float) -> None:
  if not (isinstance(missing_rate, (int, float, np.floating, np.integer))
          and 0 <= missing_rate < 1):
    raise ValueError(f'missing_rate must be in [0, 1), got {missing_rate!r}.')


def _check_positive_int(value: int, name: str) -> None:
  if not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be an integer >= 1, got {value!r}.')


def _as_1d(x: np.ndarray, name: str) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim != 1:
    raise ValueError(f'{name} must be 1-D, got shape {x.shape}.')
  return x


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float,
                        seed: Seed, min_client_size: int = 5,
                        max_tries: int = 1000) -> list[np.ndarray]:
  """Label-skewed split, following FedMultimodal's `dirichlet_partition`.

  For each class (in sorted order of label value): shuffle the class's
  indices, draw client shares p ~ Dir(alpha * 1_K), zero the share of every
  client that already holds >= N/K samples, renormalise, and cut the class at
  floor(cumsum(p) * n_c). The whole draw is repeated (continuing the same RNG
  stream) until every client holds >= min_client_size samples. One deviation:
  the cut points are pinned so float rounding cannot hand a capped client a
  sample (FedMultimodal's floor(cumsum) can leak one to the last client).

  Args:
    labels: [N] integer class labels.
    num_clients: K >= 1.
    alpha: Dirichlet concentration (> 0); 0.1 = high skew, 5.0 = low skew.
    seed: seed for np.random.default_rng.
    min_client_size: smallest admissible client (>= 0).
    max_tries: number of full draws before giving up.

  Returns:
    K sorted int64 index arrays into labels; together they cover range(N)
    exactly once.

  Raises:
    ValueError: on invalid arguments or when min_client_size is not reached
      within max_tries draws.
  """
  labels = _as_1d(labels, 'labels')
  n = labels.shape[0]
  _check_positive_int(num_clients, 'num_clients')
  _check_alpha(alpha)
  _check_positive_int(max_tries, 'max_tries')
  if not isinstance(min_client_size, (int, np.integer)) or min_client_size < 0:
    raise ValueError(f'min_client_size must be an integer >= 0, got '
                     f'{min_client_size!r}.')
  if num_clients * min_client_size > n:
    raise ValueError(f'num_clients={num_clients} x min_client_size='
                     f'{min_client_size} exceeds the N={n} training samples.')

  rng = np.random.default_rng(seed)
  class_members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  cap = n / num_clients
  concentration = np.full(num_clients, float(alpha))
  for _ in range(max_tries):
    parts = [[] for _ in range(num_clients)]
    sizes = np.zeros(num_clients, np.int64)
    ok = True
    for members in class_members:
      idx = rng.permutation(members)
      p = rng.dirichlet(concentration)
      # The cap keeps any client from growing far beyond the average size;
      # a client can overshoot N/K only by the class share it got last.
      p = np.where(sizes < cap, p, 0.0)
      total = p.sum()
      if not total > 0:
        # All eligible shares underflowed to 0 (only for tiny alpha): there
        # is no way to renormalise, so count it as a failed draw.
        ok = False
        break
      # Pin the cumulative share to exactly 1 from the last positive share
      # on: otherwise rounding (e.g. 0.9999999 * n_c floored to n_c - 1) can
      # leak one sample to a trailing client whose share was zeroed by the
      # cap, as happens in FedMultimodal's version.
      edges = np.cumsum(p / total)
      edges[np.flatnonzero(p)[-1]:] = 1.0
      cuts = (edges * len(idx)).astype(np.int64)[:-1]
      for k, chunk in enumerate(np.split(idx, cuts)):
        parts[k].append(chunk)
        sizes[k] += len(chunk)
    if ok and sizes.min() >= min_client_size:
      return [np.sort(np.concatenate(ps)).astype(np.int64) if ps
              else np.zeros(0, np.int64) for ps in parts]
  raise ValueError(
      f'No split with every client >= min_client_size={min_client_size} '
      f'samples in max_tries={max_tries} draws (N={n}, '
      f'num_clients={num_clients}, alpha={alpha}); lower min_client_size or '
      f'num_clients, raise alpha, or raise max_tries.')


def natural_partition(groups: np.ndarray) -> list[np.ndarray]:
  """One client per distinct group value, e.g. a UCI-HAR subject.

  Args:
    groups: [N] group key per sample (any sortable dtype).

  Returns:
    One sorted int64 index array per distinct value, ordered by value.
  """
  groups = _as_1d(groups, 'groups')
  if groups.shape[0] == 0:
    raise ValueError('groups must be non-empty.')
  _, inverse, counts = np.unique(groups, return_inverse=True,
                                 return_counts=True)
  # A stable sort keeps each client's indices in increasing order.
  order = np.argsort(inverse.reshape(-1), kind='stable').astype(np.int64)
  return np.split(order, np.cumsum(counts)[:-1])


def _presence_mask(rows: int, num_modalities: int, missing_rate: float,
                   seed: Seed) -> np.ndarray:
  """bool [rows, M]: each entry absent w.p. missing_rate, >= 1 kept per row."""
  if not isinstance(rows, (int, np.integer)) or rows < 0:
    raise ValueError(f'the number of rows must be an integer >= 0, got '
                     f'{rows!r}.')
  _check_positive_int(num_modalities, 'num_modalities')
  _check_missing_rate(missing_rate)
  rng = np.random.default_rng(seed)
  # Both draws are made whatever the outcome, so for a fixed seed the masks
  # are nested in missing_rate: raising p only removes modalities.
  u = rng.random((rows, num_modalities))
  rescue = rng.integers(num_modalities, size=rows)
  present = u >= missing_rate
  # Keep-one rule (our choice; FedMultimodal drops such clients instead): a
  # row that lost every modality gets one back, chosen uniformly at random,
  # so K stays as configured and every client can train something.
  empty = ~present.any(axis=1)
  present[np.flatnonzero(empty), rescue[empty]] = True
  return present


def client_modality_mask(num_clients: int, num_modalities: int,
                         missing_rate: float, seed: Seed) -> np.ndarray:
  """Per-client missingness.

  Each (client, modality) is absent with probability missing_rate; a client
  that would lose all modalities keeps one chosen uniformly at random. The
  expected absent fraction is therefore p - p^M / M.

  Returns:
    bool [K, M], True = present.
  """
  _check_positive_int(num_clients, 'num_clients')
  return _presence_mask(num_clients, num_modalities, missing_rate, seed)


def sample_modality_mask(num_samples: int, num_modalities: int,
                         missing_rate: float, seed: Seed) -> np.ndarray:
  """Per-sample missingness with the same keep-one rule.

  Used for per-sample missingness on the training set and for the test set.

  Returns:
    bool [N, M], True = present.
  """
  if not isinstance(num_samples, (int, np.integer)) or num_samples < 0:
    raise ValueError(f'num_samples must be an integer >= 0, got '
                     f'{num_samples!r}.')
  return _presence_mask(num_samples, num_modalities, missing_rate, seed)


@chex.dataclass(frozen=True)
class ClientData:
  """All K clients padded to a common length; a pytree (vmap over axis 0).

  Attributes:
    xs: per modality m, [K, max_n, *shape_m], the input dtype. Padding rows
      and absent modalities are zero.
    y: [K, max_n] int32 labels (0 on padding).
    sample_mask: [K, max_n] bool, True for real samples.
    modality_mask: [K, max_n, M] bool, True where the modality is present for
      that sample; False on padding rows.
    num_samples: [K] int32 real samples per client.
  """
  xs: tuple
  y: Any
  sample_mask: Any
  modality_mask: Any
  num_samples: Any


@chex.dataclass(frozen=True)
class FilledClientData(ClientData):
  """ClientData whose absent modalities hold the frozen generator's
  reconstructions (`rounds.fill_population`): what a task stage trains on
  when its generator is frozen, computed once per stage instead of every
  local step. Its own type, so a round is never fed the wrong one."""


def pad_clients(population: ClientData, max_n: int) -> ClientData:
  """The same clients padded to max_n (>= theirs) samples each: padding rows
  are masked out, so they change no result."""
  extra = max_n - population.y.shape[1]
  if extra < 0:
    raise ValueError(f'max_n must be an integer >= the largest client '
                     f'({population.y.shape[1]}), got {max_n!r}.')
  pad = lambda x: np.pad(x, [(0, 0), (0, extra)] + [(0, 0)] * (x.ndim - 2))
  return population.replace(
      xs=tuple(pad(x) for x in population.xs), y=pad(population.y),
      sample_mask=pad(population.sample_mask),
      modality_mask=pad(population.modality_mask))


def _check_modality_mask(modality_mask, per_sample, n: int, num_clients: int,
                         num_modalities: int) -> tuple[np.ndarray, bool]:
  """stack_clients' modality_mask as a bool array, and whether per sample."""
  modality_mask = np.asarray(modality_mask)
  if modality_mask.dtype != bool:
    raise ValueError(f'modality_mask must be bool, got {modality_mask.dtype}.')
  if per_sample is None:
    if num_clients == n and modality_mask.shape[:1] == (n,):
      raise ValueError('modality_mask is ambiguous when K == N; pass '
                       'per_sample=True or False.')
    per_sample = modality_mask.shape[:1] == (n,)
  rows = n if per_sample else num_clients
  if modality_mask.shape != (rows, num_modalities):
    raise ValueError(
        f'modality_mask has shape {modality_mask.shape}; expected '
        f'[K={num_clients}, M={num_modalities}] (per client) or '
        f'[N={n}, M={num_modalities}] (per sample).')
  return modality_mask, per_sample


def stack_clients(xs: Sequence[np.ndarray], y: np.ndarray,
                  client_indices: Sequence[np.ndarray],
                  modality_mask: np.ndarray,
                  per_sample: bool | None = None) -> ClientData:
  """Gathers and pads every client's samples into one ClientData.

  A client never holds data of a modality it lacks, so absent modalities are
  zeroed in xs (not just masked); the masks say what is present.

  Args:
    xs: per modality, [N, *shape_m] arrays.
    y: [N] integer labels.
    client_indices: K index arrays into range(N) (client order is kept).
    modality_mask: bool [K, M] (per client) or [N, M] (per sample, indexed by
      global sample index).
    per_sample: whether modality_mask is per sample; by default inferred from
      its first dimension (must be given when K == N).

  Returns:
    ClientData of numpy arrays padded to the largest client (`pad_clients`
    pads further); the caller moves it to device.
  """
  xs = tuple(np.asarray(x) for x in xs)
  y = _as_1d(y, 'y')
  n = y.shape[0]
  num_modalities = len(xs)
  if num_modalities < 1:
    raise ValueError('xs must hold at least one modality.')
  for m, x in enumerate(xs):
    if x.ndim < 1 or x.shape[0] != n:
      raise ValueError(f'xs[{m}] has shape {x.shape}; its first dimension '
                       f'must be N={n} (the length of y).')
  num_clients = len(client_indices)
  _check_positive_int(num_clients, 'len(client_indices)')
  indices = [np.asarray(ix, np.int64).reshape(-1) for ix in client_indices]
  for k, ix in enumerate(indices):
    if ix.size and (ix.min() < 0 or ix.max() >= n):
      raise ValueError(f'client_indices[{k}] holds indices outside '
                       f'[0, N={n}).')
  sizes = np.array([len(ix) for ix in indices], np.int64)

  modality_mask, per_sample = _check_modality_mask(
      modality_mask, per_sample, n, num_clients, num_modalities)
  max_n = int(sizes.max())

  # One gather index per padded slot; padding slots point at sample 0 and
  # are zeroed below.
  gather = np.zeros((num_clients, max_n), np.int64)
  valid = np.arange(max_n)[None, :] < sizes[:, None]        # [K, max_n]
  for k, ix in enumerate(indices):
    gather[k, :len(ix)] = ix
  if per_sample:
    present = modality_mask[gather]                         # [K, max_n, M]
  else:
    present = np.broadcast_to(modality_mask[:, None, :],
                              (num_clients, max_n, num_modalities))
  present = present & valid[..., None]

  out_xs = []
  for m, x in enumerate(xs):
    xm = x[gather]                                          # fresh copy
    xm[~present[..., m]] = 0
    out_xs.append(xm)
  out_y = np.where(valid, y[gather], 0).astype(np.int32)
  return ClientData(xs=tuple(out_xs), y=out_y, sample_mask=valid,
                    modality_mask=np.ascontiguousarray(present),
                    num_samples=sizes.astype(np.int32))


def make_partition(labels: np.ndarray, *, num_clients: int,
                   num_modalities: int, alpha: float, missing_rate: float,
                   seed: int, min_client_size: int = 5,
                   per_sample_missing: bool = False,
                   groups: np.ndarray | None = None,
                   max_tries: int = 1000) -> tuple[list[np.ndarray],
                                                   np.ndarray]:
  """Client indices plus modality mask, each from its own derived seed.

  The label split and the mask come from independent children of
  np.random.SeedSequence(seed), so changing missing_rate never changes the
  label split (and changing alpha never changes the mask draw).

  Args:
    labels: [N] training labels.
    num_clients: K for the Dirichlet split (ignored when groups is given).
    num_modalities: M.
    alpha: Dirichlet concentration (ignored when groups is given).
    missing_rate: p in [0, 1).
    seed: integer seed.
    min_client_size: see dirichlet_partition (ignored when groups is given).
    per_sample_missing: draw the mask per sample ([N, M]) instead of per
      client ([K, M]).
    groups: [N] natural client key; if given, one client per distinct value.
    max_tries: see dirichlet_partition.

  Returns:
    (client index arrays, bool modality mask [K, M] or [N, M]).
  """
  labels = _as_1d(labels, 'labels')
  n = labels.shape[0]
  _check_positive_int(num_modalities, 'num_modalities')
  _check_missing_rate(missing_rate)
  split_seed, mask_seed = np.random.SeedSequence(seed).spawn(2)
  if groups is None:
    indices = dirichlet_partition(labels, num_clients, alpha, split_seed,
                                  min_client_size=min_client_size,
                                  max_tries=max_tries)
  else:
    groups = _as_1d(groups, 'groups')
    if groups.shape[0] != n:
      raise ValueError(f'groups has length {groups.shape[0]} but labels has '
                       f'length {n}; they must match.')
    indices = natural_partition(groups)
  if per_sample_missing:
    mask = sample_modality_mask(n, num_modalities, missing_rate, mask_seed)
  else:
    mask = client_modality_mask(len(indices), num_modalities, missing_rate,
                                mask_seed)
  return indices, mask
