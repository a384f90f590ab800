"""Registries found by discovery: every module of a package (but `base`)
lists its entries in one module-level tuple; a new entry is one new module."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Sequence


def discover(package: str, path: Sequence[str], attr: str) -> dict[str, Any]:
  """{entry.name: entry} over the modules of `package` (at `path`), each
  module's `attr` tuple, sorted by (entry.order, name). A name defined twice
  is refused, naming the module."""
  found = {}
  for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
    if info.name == 'base':
      continue
    module = importlib.import_module(f'{package}.{info.name}')
    for entry in getattr(module, attr, ()):
      if entry.name in found:
        raise ValueError(f'{entry.name!r} is defined twice '
                         f'({package.replace(".", "/")}/{info.name}.py).')
      found[entry.name] = entry
  return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))
