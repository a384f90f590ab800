"""The cohort benchmark's workload and one variant's round program at one
(stage, N): build, AOT compile, run (experiments.benchmarks.benchmark)."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from experiments.benchmarks.instruments import GB, memory_gb, save_program
from experiments.benchmarks.instruments import xla_flops


def tile_population(population, num_clients: int):
  """Client k <- base client k % K0: the padded store, K rows."""
  base = population.y.shape[0]
  rows = np.arange(num_clients) % base
  return jax.tree.map(lambda x: np.ascontiguousarray(x[rows]), population)


def workload(num_clients: int, base_clients: int, seed: int):
  """(model, host population [K, ...], base Config) of the canonical run:
  base_clients Dirichlet clients tiled to num_clients."""
  from fedrecon_jax import experiment  # pylint: disable=g-import-not-at-top
  from fedrecon_jax.config import Config  # pylint: disable=g-import-not-at-top
  base = Config(workdir='/tmp/fedrecon_benchmark_unused',
                num_clients=base_clients, seed=seed)
  exp = experiment.build(base)
  population = tile_population(exp.population, num_clients)
  return exp.model, population, base



class Runner:
  """One variant at one (stage, N): build + AOT compile, then rounds.

  clients_per_device: the chunked variants' chunk per device.
  """

  def __init__(self, variant, cfg, model, stage, mesh, num_clients,
               host_pop, device_pop, params, clients_per_device: int = 1):
    from fedrecon_jax import recipe, rounds  # pylint: disable=g-import-not-at-top
    self.variant = variant
    self.kind = variant.removesuffix('_donate')
    self.cfg, self.stage, self.mesh = cfg, stage, mesh
    self.h = recipe.of(cfg).hparams()
    self.plan = recipe.of(cfg).plan(model, stage, num_clients)
    self.save_hlo = ''
    self.note = ''
    self.params = params
    self.pop = device_pop
    self.round = None
    if self.kind == 'vmap':
      self.round = rounds.make_round(self.plan, mesh,
                                     donate=variant.endswith('_donate'))
    elif self.kind == 'chunked':
      # Built per N: the plan holds the population K its cohorts are drawn
      # from (reusing N=16's program ran 16 clients at every N).
      self.round = rounds.make_round(
          self.plan, mesh, clients_per_chunk=clients_per_device * mesh.size,
          donate=variant.endswith('_donate'))
      n = cfg.clients_per_round
      pads = -(-n // self.round.chunk) * self.round.chunk - n
      self.note = f'chunk={self.round.chunk}, {pads} pads'
    elif self.kind == 'sequential':
      self.pop = host_pop
    elif self.kind != 'auto':
      raise ValueError(f'unknown variant {variant!r}')
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    self.place = lambda tree: jax.device_put(tree, replicated)
    if self.kind == 'sequential':
      # The loop runs its jitted update on one device, like FedJAX does.
      one = jax.devices()[0]
      self.place = lambda tree: jax.device_put(tree, one)

  def compile(self):
    """AOT-compiles (which also fills the jit cache). -> info dict."""
    from fedrecon_jax import memory_plan, rounds, server  # pylint: disable=g-import-not-at-top
    key = self.place(jax.random.key(0))
    self.params = self.place(self.params)
    # The stage's population (filled once per stage by a frozen generator);
    # not timed: train.py does it once per stage, not per round.
    self.pop = rounds.fill_population(self.plan, self.mesh, 0, self.params,
                                      self.pop)
    if self.kind == 'auto':
      # What train.py runs: the plan compiles its candidates; the chosen
      # program's jit call below reuses that compile.
      t = time.perf_counter()
      plan = memory_plan.choose_round(
          self.plan, self.mesh, self.params, self.pop, self.h,
          cfg=dataclasses.replace(self.cfg, clients_per_device='auto'),
          donate=True)   # as train.py builds it
      self.round = plan.round
      self.state = self.round.init(self.params, self.h)
      self.note = (f'auto: {plan.clients_per_device or "all"} per device, '
                   f'{plan.program_bytes / GB:.2f} of '
                   f'{plan.budget_bytes / GB:.1f} GB budget')
      return {'compile_s': time.perf_counter() - t, 'xla_flops_program': None,
              'xla_memory_gb': plan.program_bytes / GB,
              'program': 'round (memory plan)',
              'auto_clients_per_device': plan.clients_per_device}
    self.state = self.place(server.init_state(self.plan, self.params, self.h))
    if self.kind == 'sequential':
      # The same jit object sequential_round calls (cached on the plan).
      update, _ = rounds._sequential_parts(self.plan)  # pylint: disable=protected-access
      trainable, frozen = rounds.split_params(self.params, self.plan.groups)
      one = jax.tree.map(lambda x: x[0], self.pop)
      t = time.perf_counter()
      compiled = update.lower(self.h, trainable, frozen, one, key,
                              ()).compile()
      return {'compile_s': time.perf_counter() - t,
              'xla_flops_program': xla_flops(compiled),
              'xla_memory_gb': memory_gb(compiled),
              'program': 'one client update'}
    if self.variant.endswith('_donate'):
      # Fresh buffers: a donated one may not alias the driver's numpy copy.
      self.state = jax.tree.map(lambda x: x.copy(), self.state)
    t = time.perf_counter()
    compiled = self.round.lower(self.state, self.pop, key, self.h).compile()
    compile_s = time.perf_counter() - t
    if self.save_hlo:
      save_program(compiled, self.save_hlo)
    return {'compile_s': compile_s,
            'xla_flops_program': xla_flops(compiled),
            'xla_memory_gb': memory_gb(compiled), 'program': 'round'}

  def run_round(self, r: int) -> float:
    from fedrecon_jax import rounds  # pylint: disable=g-import-not-at-top
    key = self.place(jax.random.key(1000 + r))
    t = time.perf_counter()
    if self.kind == 'sequential':
      out = rounds.sequential_round(self.plan, self.state, self.pop, key,
                                    self.h)
      jax.block_until_ready(out)
      # Keep the server state fixed: every timed round is the same work.
      return time.perf_counter() - t
    state, metrics = self.round(self.state, self.pop, key, self.h)
    jax.block_until_ready((state, metrics))
    self.state = state
    return time.perf_counter() - t



def client_flops(cfg, model, stage, host_pop, params) -> tuple[float, int]:
  """(FLOPs of one client's local update, its local steps)."""
  from fedrecon_jax import recipe, rounds  # pylint: disable=g-import-not-at-top
  stage_plan = recipe.of(cfg).plan(model, stage, host_pop.y.shape[0])
  update, _ = rounds._sequential_parts(stage_plan)  # pylint: disable=protected-access
  trainable, frozen = rounds.split_params(params, stage_plan.groups)
  pop = host_pop
  if stage_plan.fill is not None:   # what the round's clients read
    pop = jax.eval_shape(stage_plan.fill, params, host_pop)
  one = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), pop)
  # () : no per-client state (ClientState) in the benchmark's methods.
  compiled = update.lower(recipe.of(cfg).hparams(), trainable, frozen, one,
                          jax.random.key(0), ()).compile()
  steps = -(-host_pop.y.shape[1] // cfg.batch_size) * cfg.local_epochs
  # XLA's cost analysis counts the body of the step loop once.
  return xla_flops(compiled) * steps, steps
