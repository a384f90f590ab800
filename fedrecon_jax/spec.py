"""`DataSpec`: the static description of a dataset's modalities, which the
model builder and the modality groups read."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """Static description of a dataset's modalities."""
  modalities: tuple[str, ...]
  kinds: tuple[str, ...]                    # 'vector' | 'image' | 'sequence'
  shapes: tuple[tuple[int, ...], ...]       # per-sample shape of each modality
  num_classes: int

  @property
  def num_modalities(self) -> int:
    return len(self.modalities)

  @property
  def pairs(self) -> np.ndarray:
    """[P, 2] ordered pairs (dst n, src m), n != m, grouped by dst."""
    m = self.num_modalities
    return np.array([(n, s) for n in range(m) for s in range(m) if n != s],
                    np.int32).reshape(-1, 2)
