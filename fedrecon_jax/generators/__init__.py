"""The registry of generator kinds: every module of this package (but
`base`) lists its `base.Generator`s in `GENERATORS`; a new kind is one new
module. Flags (--joint_posterior), Table 2 and the model builder read this
registry, never a copied list of names."""

from __future__ import annotations

from fedrecon_jax import registry
from fedrecon_jax.generators.base import Generator

REGISTRY: dict[str, Generator] = registry.discover(__name__, __path__,
                                                   'GENERATORS')
# Kinds with an objective (trainable), and those of them without mappings:
# the choices of --joint_posterior.
TRAINABLE = tuple(n for n, g in REGISTRY.items() if g.trainable)
JOINT = tuple(n for n in TRAINABLE if not REGISTRY[n].uses_mappings)


def get(kind: str | Generator) -> Generator:
  """The generator of a kind name (a Generator passes through)."""
  if isinstance(kind, Generator):
    return kind
  if kind not in REGISTRY:
    raise ValueError(f'generator kind {kind!r} is not one of '
                     f'{tuple(REGISTRY)}.')
  return REGISTRY[kind]
