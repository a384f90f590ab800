"""The registry of training methods: every module of this package (but
`base`) lists its `base.Method`s in `METHODS`; a new method is one new
module. --method's choices and the plans the engine runs come from here,
and nothing outside a method's own module compares its name."""

from __future__ import annotations

import importlib
import pkgutil

from fedrecon_jax.methods.base import (GEN_STAGE, TASK_STAGE, ClientState,
                                       Method, StagePlan)

__all__ = ['ClientState', 'GEN_STAGE', 'Method', 'REGISTRY', 'StagePlan',
           'TASK_STAGE', 'get']


def _discover() -> dict[str, Method]:
  found = {}
  for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
    if info.name == 'base':
      continue
    module = importlib.import_module(f'{__name__}.{info.name}')
    for method in getattr(module, 'METHODS', ()):
      if method.name in found:
        raise ValueError(f'method {method.name!r} is defined twice '
                         f'(fedrecon_jax/methods/{info.name}.py).')
      found[method.name] = method
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


REGISTRY: dict[str, Method] = _discover()


def get(name: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f'--method={name!r} is not one of {tuple(REGISTRY)}.')
  return REGISTRY[name]
