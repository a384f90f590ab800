"""`Hparams`: the numbers a run may differ in and still share its round
programs with other runs (they enter those programs as traced inputs, not
constants: rounds.make_round's runs axis stacks them)."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import struct

from fedrecon_jax import config


@struct.dataclass
class Hparams:
  """A run's per-run numbers, each a float32 scalar ([R] on a runs axis)."""
  client_lr: jax.Array        # client learning rate, task stage
  gen_lr: jax.Array           # client learning rate, generator stage
  momentum: jax.Array
  weight_decay: jax.Array
  clip_norm: jax.Array
  fedprox_mu: jax.Array
  server_lr: jax.Array
  gen_server_lr: jax.Array
  server_eps: jax.Array
  server_b1: jax.Array
  server_b2: jax.Array
  beta: jax.Array             # KL weight of the generator ELBOs
  match_weight: jax.Array     # weight of L_match
  dp_clip: jax.Array          # DP-FedAvg's C (used when the plan's dp is on)
  dp_noise_multiplier: jax.Array  # DP-FedAvg's z
  dp_target_quantile: jax.Array   # adaptive clipping's gamma (dp.next_clip)
  dp_clip_lr: jax.Array           # its eta (0 = the clip stays at dp_clip)
  dp_clip_count_stddev: jax.Array  # its sigma_b, noise on the clipped count
  # noise on the per-group trainer counts, / their sensitivity (dp.py)
  dp_group_count_multiplier: jax.Array

  @classmethod
  def of(cls, source) -> 'Hparams':
    """Each field read from `source`'s attribute of the same name (a
    Config), as a float32 scalar."""
    return cls(**{k: np.float32(getattr(source, k)) for k in NAMES})


# config.HPARAMS names them for the settings that do not import JAX.
NAMES = tuple(f.name for f in dataclasses.fields(Hparams))
if NAMES != config.HPARAMS:
  raise ImportError(f'hparams.Hparams {NAMES} != config.HPARAMS '
                    f'{config.HPARAMS}: keep them one list.')
