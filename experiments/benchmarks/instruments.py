"""Instruments of the benchmarks: memory high-water marks, best-of timings,
the device's matmul ceilings, XLA's cost and memory analyses."""

from __future__ import annotations

import os
import resource
import time

import jax
import jax.numpy as jnp

GB = 1e9


def reset_peak_rss() -> bool:
  """Resets the kernel's high-water mark of this process's RSS (VmHWM)."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
    return True
  except OSError:
    return False


def peak_rss_gb() -> float:
  """VmHWM: peak RSS since the last reset_peak_rss (or process start)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024 / GB
  except OSError:
    pass
  return max_rss_gb()


def max_rss_gb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def best_seconds(f, *args, repeats: int = 5) -> float:
  """Best-of-`repeats` wall time of a jitted f(*args), after one warm call."""
  f(*args).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(*args).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return best


def _fastest(f, *args) -> float:
  """Best seconds of f compiled with XLA's defaults and as the round
  programs are (rounds.compiler_options): on CPU the first is faster for a
  large matmul (YNNPACK), the second for small batched ones."""
  from fedrecon_jax import rounds  # pylint: disable=g-import-not-at-top
  options = rounds.compiler_options(jax.default_backend())
  return min(best_seconds(jax.jit(f, compiler_options=o), *args)
             for o in (None, options))


def matmul_peak_gflops(n: int = 4096) -> float:
  """f32 [n, n] @ [n, n] under jit on the default device."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  return 2 * n**3 / _fastest(jnp.matmul, a, a) / GB


def per_client_matmul_gflops(clients: int = 256, rows: int = 16,
                             width: int = 256) -> float:
  """Batched [C, rows, w] @ [C, w, w]: one small matmul per client, the
  shape stage 1's MLPs run on a vmapped cohort."""
  k1, k2 = jax.random.split(jax.random.key(1))
  a = jax.random.normal(k1, (clients, rows, width), jnp.float32)
  b = jax.random.normal(k2, (clients, width, width), jnp.float32)
  f = lambda a, b: jnp.einsum('cij,cjk->cik', a, b)
  return 2 * clients * rows * width**2 / _fastest(f, a, b) / GB


def memory_gb(compiled) -> float | None:
  """What XLA says the program needs live: arguments + outputs + temps."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return (m.argument_size_in_bytes + m.output_size_in_bytes
          + m.temp_size_in_bytes - m.alias_size_in_bytes) / GB


def save_program(compiled, path: str):
  """Optimized HLO text + memory analysis, to read where memory goes."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + '.hlo.txt', 'w') as f:
    f.write(compiled.as_text())
  with open(path + '.memory.txt', 'w') as f:
    f.write(str(compiled.memory_analysis()))


def xla_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):   # older jax: one dict per program
    cost = cost[0]
  return float(cost.get('flops', 0.0))
