"""Modality groups: the per-modality networks of one architecture run as one.

A `Group`'s networks are one flax module with its params stacked on a
leading [G] axis (one slice per member modality), applied once with
`jax.vmap`. `models.Model` builds its generator and task encoders from the
groups here and reads a modality's slice with `Model.member`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax.spec import DataSpec


@dataclasses.dataclass(frozen=True)
class Group:
  """Modalities whose networks (generator encoders and decoders, or task
  encoders) share one architecture.

  A group's networks are one module with its params stacked on a leading
  [G] axis, applied once, vmapped, to the members' inputs: one batched
  network instead of G small ones, so a round traces and compiles about G
  times fewer ops. Members share a shape, except that the generator's 'mlp'
  members are flattened and padded to the widest (task encoders are not:
  the task stage's step is mostly their first layer, and padding
  uci_multifeature's 649 inputs to 6 x 240 doubled it on CPU). Padding is
  exact: member g reads its first sizes[g] inputs (and a
  decoder writes its first sizes[g] outputs); the kernel rows and columns
  past those start at zero, get zero gradients (and zero weight decay), and
  so stay zero.
  """
  name: str                    # key in params[...]['enc' | 'dec']
  arch: str                    # 'mlp' | 'conv' | 'seq' | 'masked_seq'
  members: tuple[int, ...]     # modality indices, increasing
  sizes: tuple[int, ...]       # each member's flattened size

  @property
  def width(self) -> int:
    return max(self.sizes)


GEN_ARCH = {'vector': 'mlp', 'sequence': 'mlp', 'image': 'conv',
            'masked_sequence': 'mlp'}
TASK_ARCH = {'vector': 'mlp', 'sequence': 'seq', 'image': 'conv',
             'masked_sequence': 'masked_seq'}


def group_modalities(spec: DataSpec, arch_of: dict,
                     pad: bool) -> tuple[Group, ...]:
  """The spec's modalities grouped by the architecture arch_of[kind] and
  shape, or (pad) 'mlp' ones whatever their shape. Names: the architecture,
  then arch_1, ... for more shapes of it."""
  groups = []
  for arch in dict.fromkeys(arch_of[k] for k in spec.kinds):
    parts = {}
    for i, kind in enumerate(spec.kinds):
      if arch_of[kind] == arch:
        shape = () if pad and arch == 'mlp' else spec.shapes[i]
        parts.setdefault(shape, []).append(i)
    for j, part in enumerate(parts.values()):
      groups.append(Group(f'{arch}_{j}' if j else arch, arch, tuple(part),
                          tuple(int(np.prod(spec.shapes[i])) for i in part)))
  return tuple(groups)


def own_fan_in(params: dict, path: tuple[str, ...], group: Group) -> dict:
  """Stacked params initialised at the padded width -> each member's own:
  the kernel at `path` (a first layer, [G, W, h]) gets the fan-in of the
  member's input size (lecun_normal's scale; init took the padded width's)
  and zero rows past it."""
  def fit(tree, keys):
    if not keys:
      w = group.width
      real = np.arange(w)[None] < np.asarray(group.sizes)[:, None]   # [G, W]
      scale = np.sqrt(w / np.asarray(group.sizes, np.float32))[:, None]
      return tree * (real * scale)[..., None]
    return {**tree, keys[0]: fit(tree[keys[0]], keys[1:])}
  return fit(params, path)


def own_outputs(dec: dict, group: Group) -> dict:
  """A stacked 'mlp' decoder with zero columns past each member's size."""
  last = f'Dense_{len(dec) - 1}'
  real = np.arange(group.width)[None] < np.asarray(group.sizes)[:, None]
  return {**dec, last: jax.tree.map(
      lambda a: a * real.reshape(len(group.members), *([1] * (a.ndim - 2)),
                                 group.width), dec[last])}


def pad_last(x: jax.Array, size: int) -> jax.Array:
  return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])])
