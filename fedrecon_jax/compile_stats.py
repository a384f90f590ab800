"""What this process has spent producing programs, from jax.monitoring.

One listener for the whole process (JAX keeps listeners for the process's
life, so registering one per caller would count each event once per
caller): it tallies XLA compiles by function and the seconds of tracing,
lowering, compiling and loading from the persistent compilation cache.
Callers take a `snapshot()` before and after what they measure and
subtract: `after - before`.
"""

from __future__ import annotations

import collections
import dataclasses
import threading

import jax

TRACE = '/jax/core/compile/jaxpr_trace_duration'
LOWER = '/jax/core/compile/jaxpr_to_mlir_module_duration'
COMPILE = '/jax/core/compile/backend_compile_duration'
CACHE_LOAD = '/jax/compilation_cache/cache_retrieval_time_sec'


@dataclasses.dataclass(frozen=True)
class Stats:
  """Totals since the listener started, or a difference of two snapshots."""
  compiles: int = 0                  # XLA backend compiles
  compile_seconds: float = 0.0       # their seconds
  trace_lower_seconds: float = 0.0   # jaxpr tracing + lowering to MLIR
  cache_load_seconds: float = 0.0    # persistent compilation cache reads
  by_function: dict = dataclasses.field(default_factory=dict)  # name -> n

  @property
  def program_seconds(self) -> float:
    """Trace + lower + XLA compile."""
    return self.trace_lower_seconds + self.compile_seconds

  @property
  def producing_seconds(self) -> float:
    """Everything JAX spent producing programs, cache loads included."""
    return self.program_seconds + self.cache_load_seconds

  def __sub__(self, other: Stats) -> Stats:
    by_function = collections.Counter(self.by_function)
    by_function.subtract(other.by_function)
    return Stats(self.compiles - other.compiles,
                 self.compile_seconds - other.compile_seconds,
                 self.trace_lower_seconds - other.trace_lower_seconds,
                 self.cache_load_seconds - other.cache_load_seconds,
                 {k: n for k, n in by_function.items() if n})


_lock = threading.Lock()
_totals = {'compiles': 0, 'compile_seconds': 0.0, 'trace_lower_seconds': 0.0,
           'cache_load_seconds': 0.0}
_by_function = collections.Counter()
_listening = []


def _on_event(event: str, duration: float, **kwargs) -> None:
  with _lock:
    if event == COMPILE:
      _totals['compiles'] += 1
      _totals['compile_seconds'] += duration
      _by_function[kwargs.get('fun_name', '?')] += 1
    elif event in (TRACE, LOWER):
      _totals['trace_lower_seconds'] += duration
    elif event == CACHE_LOAD:
      _totals['cache_load_seconds'] += duration


def start() -> None:
  """Starts counting (once per process; later calls do nothing)."""
  with _lock:
    if not _listening:
      jax.monitoring.register_event_duration_secs_listener(_on_event)
      _listening.append(True)


def snapshot() -> Stats:
  """This process's totals since `start()` (which it calls)."""
  start()
  with _lock:
    return Stats(**_totals, by_function=dict(_by_function))
