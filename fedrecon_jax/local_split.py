"""Per-client local test splits (--local_test_fraction): each client holds
out a share of its own samples, on which personalised methods (Ditto) score
each client's personal model, and any method its global model.

The held-out samples come from their own jax.random stream of the seed, so
a run with --local_test_fraction=0 never draws it and trains exactly as
before the option existed. Host-side numpy after one draw; no loop over
clients.
"""

from __future__ import annotations

import jax
import numpy as np

from fedrecon_jax.partition import ClientData

# fold_in data of the split's stream: the run key's other streams fold in
# 0 (the initial params) and the round numbers r >= 1, which never reach it.
STREAM = 2**32 - 1


def holdout_mask(sample_mask: np.ndarray, fraction: float,
                 key: jax.Array) -> np.ndarray:
  """bool [K, max_n]: floor(fraction * n_k) of client k's n_k real samples
  (sample_mask [K, max_n]), uniformly at random without replacement: those
  with the smallest of iid uniform draws, one per slot, padding last."""
  if not 0 <= fraction < 1:
    raise ValueError(f'--local_test_fraction={fraction!r} is invalid: must '
                     'be in [0, 1).')
  sample_mask = np.asarray(sample_mask, bool)
  u = np.asarray(jax.random.uniform(key, sample_mask.shape))
  u = np.where(sample_mask, u, np.inf)
  rank = np.argsort(np.argsort(u, axis=1, kind='stable'), axis=1,
                    kind='stable')
  n_test = np.floor(fraction * sample_mask.sum(1)).astype(np.int64)
  return rank < n_test[:, None]


def _compact(population: ClientData, keep: np.ndarray) -> ClientData:
  """The samples where keep [K, max_n] is True, moved to the front of their
  client (order kept) and padded to the largest client's count; padding
  rows are zero, as partition.stack_clients leaves them."""
  n = keep.sum(1)
  width = max(int(n.max()), 1)
  order = np.argsort(~keep, axis=1, kind='stable')[:, :width]
  valid = np.arange(width)[None, :] < n[:, None]

  def take(x):
    idx = order.reshape(order.shape + (1,) * (x.ndim - 2))
    got = np.take_along_axis(x, idx, axis=1)
    return np.where(valid.reshape(valid.shape + (1,) * (x.ndim - 2)), got,
                    np.zeros((), x.dtype))

  return ClientData(xs=tuple(take(x) for x in population.xs),
                    y=take(population.y), sample_mask=valid,
                    modality_mask=take(population.modality_mask),
                    num_samples=n.astype(np.int32))


def split(population: ClientData, fraction: float,
          seed: int) -> tuple[ClientData, ClientData]:
  """(training clients, local test clients): client k's samples drawn by
  holdout_mask from the seed's split stream go to its local test split, the
  rest stay for training. Both keep the K clients in order and each
  client's modality mask (a client lacking a modality lacks it in its test
  data too). population: numpy ClientData [K, max_n, ...]."""
  key = jax.random.fold_in(jax.random.key(seed), STREAM)
  test = holdout_mask(population.sample_mask, fraction, key)
  train = np.asarray(population.sample_mask, bool) & ~test
  return _compact(population, train), _compact(population, test)
