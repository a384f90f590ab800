"""The registry of training methods: every module of this package (but
`base`) lists its `base.Method`s in `METHODS`; a new method is one new
module. --method's choices and the plans the engine runs come from here,
and nothing outside a method's own module compares its name."""

from __future__ import annotations

from fedrecon_jax import registry
from fedrecon_jax.methods.base import (GEN_STAGE, TASK_STAGE, ClientState,
                                       Method, StagePlan)

__all__ = ['ClientState', 'GEN_STAGE', 'Method', 'REGISTRY', 'StagePlan',
           'TASK_STAGE', 'get']

REGISTRY: dict[str, Method] = registry.discover(__name__, __path__, 'METHODS')


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f'--method={name!r} is not one of {tuple(REGISTRY)}.')
  return REGISTRY[name]
