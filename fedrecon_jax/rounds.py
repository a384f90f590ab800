"""Where a round happens: cohort sampling, all local updates, aggregation.

One round of one stage, for R runs at once, is one jitted program:

  mesh (runs, clients)       R runs       each run: its own key, h, partition
  state [R, ...]  --vmap over runs (spmd axis `runs`)-->  one run's round:
    ids = permutation(fold_in(round key, 0))[:C], or with Poisson sampling
    the members of one Bernoulli(q) draw per client in C static slots
    (sampling.py), padded with zero-weight clients to a multiple of the
    chunk; for each chunk of the cohort (a loop inside the program; one
    chunk = the whole cohort at once):
      gather the chunk's rows of the population  [chunk, max_n, ...]
      jax.vmap(client_update) over the chunk (spmd axis `clients`)
      server.client_sums: weighted sums over the chunk's clients, added up
    (with --dp_clip, dp.client_sums: each client weighted by its clip
    scale, and dp.finish_sums: noise from the round key, / each group's
    noised count of trainers, or the cohort size or qK; dp.next_clip moves
    an adaptive clip)
    server.apply_sums: the server step on the total
  -> state [R, ...]

Runs shard over devices when R fills them, clients otherwise (`make_mesh`).
Without a runs axis (runs=0) the arrays have no leading R: the solo run.
Everything a stage needs comes from its `plan.StagePlan`; the numbers that
may differ between runs (learning rates, ...) are the traced `h` argument.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fedrecon_jax import distributed, dp, sampling, server
from fedrecon_jax.methods.base import StagePlan
from fedrecon_jax.server import ServerState

RUNS, CLIENTS = 'runs', 'clients'

# XLA:CPU hands reductions and single dots to YNNPACK by default. This
# workload's dots (the mappings' batched small matmuls, the generator MLPs)
# run faster in XLA's own emitter, for the same CPU seconds (measured in
# experiments/results/profile_stage1_cpu.md and benchmark_cpu.md).
# Reductions stay in YNNPACK.
_CPU_COMPILER_OPTIONS = (
    ('xla_cpu_experimental_ynn_fusion_type', 'LIBRARY_FUSION_TYPE_REDUCE'),)


def compiler_options(platform: str) -> dict | None:
  """XLA options for the round programs on `platform` ('cpu', 'gpu', ...);
  None where XLA's defaults stand (other platforms, or XLA_FLAGS sets the
  option itself)."""
  if platform != 'cpu' or 'ynn_fusion_type' in os.environ.get('XLA_FLAGS', ''):
    return None
  return dict(_CPU_COMPILER_OPTIONS)


def make_mesh(num_devices: int = 0, runs: int = 0) -> jax.sharding.Mesh:
  """A (runs, clients) mesh over the first `num_devices` devices (0 = all,
  all hosts): runs spread over the devices when there are at least as many
  runs as devices (and they divide evenly), otherwise each run's clients."""
  devices = jax.devices()
  if num_devices > len(devices):
    raise ValueError(f'--num_devices={num_devices} exceeds the '
                     f'{len(devices)} available devices.')
  devices = devices[:num_devices or None]
  n = len(devices)
  shape = (n, 1) if runs >= n and runs % n == 0 else (1, n)
  return jax.make_mesh(shape, (RUNS, CLIENTS), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def place(tree, mesh: jax.sharding.Mesh, runs: bool):
  """Values -> arrays placed as a round's outputs are (replicated, or split
  over the runs axis), so every round reuses one program."""
  if not runs:
    return distributed.replicate(tree, mesh)
  sharding = NamedSharding(mesh, P(RUNS))
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


# fold_in indices of the DP noise's keys (on the update sum, and on the
# clipped-bit count of adaptive clipping): above every client's (id + 1).
_NOISE_STREAM = 2**32 - 1
_COUNT_STREAM = 2**32 - 2


def client_keys(key, ids):
  """A key per client from its id, independent of cohort order and devices."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(ids + 1)


# The fixed-size cohort (a permutation prefix); sampling.py has both kinds.
cohort_ids = sampling.fixed_ids


def _cohort(plan: StagePlan, rkey, cohort_size):
  """This round's cohort: (ids_at(positions [c]) -> (ids [c], valid [c]),
  the number of filled slots (int32, runtime), the DP denominator, the
  overflow count). Fixed: `cohort_size` clients, denominator the same.
  Poisson (plan.rate > 0): members of one Bernoulli(q) draw per client in
  plan.cohort slots; the denominator is the expected cohort qK, never the
  drawn size (so one client's presence moves the mean by at most C / qK)."""
  if not plan.rate:
    return (lambda pos: sampling.fixed_ids(rkey, plan.num_clients, pos,
                                           cohort_size),
            cohort_size, cohort_size, jnp.int32(0))
  count = sampling.poisson_ids(rkey, plan.num_clients, plan.rate,
                               plan.cohort, jnp.arange(1))[2]
  ids_at = lambda pos: sampling.poisson_ids(
      rkey, plan.num_clients, plan.rate, plan.cohort, pos)[:2]
  return (ids_at, jnp.minimum(count, plan.cohort),
          plan.rate * plan.num_clients,
          jnp.maximum(count - plan.cohort, 0))


def fill_population(plan: StagePlan, mesh, runs: int, params, population):
  """The population a stage's rounds read: `population` itself (as the
  caller placed it), or, when the stage's generator is frozen (plan.fill), a
  partition.FilledClientData computed here once per stage and placed as
  `place` places it.

  params: every group, with a leading [R] if runs; population likewise.
  """
  if plan.fill is None:
    return population
  return place(_fill_program(plan.fill, bool(runs))(params, population), mesh,
               bool(runs))


@functools.cache
def _fill_program(fill, runs: bool):
  return jax.jit(jax.vmap(fill) if runs else fill)


def split_params(params: dict, groups):
  return ({g: params[g] for g in groups},
          {g: v for g, v in params.items() if g not in groups})


def round_key(key, state: ServerState):
  """Round r (counted from 1) of a run uses fold_in(run key, r)."""
  return jax.random.fold_in(key, state.round + 1)


def one_round(plan: StagePlan, chunk: int, num_chunks: int | None,
              clients_spmd: str | None, state: ServerState, population, key,
              h, cohort_size):
  """One run's round (unjitted): see the module docstring.

  Args:
    plan: the stage.
    chunk: clients per chunk.
    num_chunks: chunks run (static), or None: as many as cohort_size needs
      (a loop whose length is a runtime value).
    clients_spmd: mesh axis the clients' vmap is sharded over, or None.
    state: the run's ServerState.
    population: partition.ClientData, leaves [K, max_n, ...].
    key: the run's key; h: its hparams.Hparams; cohort_size: int32 scalar.
  """
  trainable, frozen = split_params(state.params, plan.groups)
  rkey = round_key(key, state)
  ids_at, filled, denominator, overflow = _cohort(plan, rkey, cohort_size)
  # The clip this round uses: --dp_clip, or where adaptive clipping has
  # moved it (ServerState.dp).
  clip = state.dp['clip'] if plan.dp else None
  classes = plan.count_ids(trainable) if plan.dp_groups else None
  update = _with_client_state(plan, h)
  if chunk == 1:
    # One client at a time (the CPU default in stage 1) without a vmap: a
    # vmapped loop over each client's own step count selects between old and
    # new values of every carried param and optimizer state at every step.
    def run_chunk(trainable, frozen, data, keys, cstate):
      one = lambda x: x[0]
      out = update(trainable, frozen, jax.tree.map(one, data), keys[0],
                   jax.tree.map(one, cstate))
      return jax.tree.map(lambda x: x[None], out)
  else:
    # A sharding constraint needs a mesh axis; vmap's spmd_axis_name does
    # the rest.
    run_chunk = jax.vmap(update, in_axes=(None, None, 0, 0, 0),
                         spmd_axis_name=clients_spmd)

  def chunk_sums(c, clients):
    ids, valid = ids_at(c * chunk + jnp.arange(chunk))
    data = jax.tree.map(lambda x: x[ids], population)
    local, weights, metrics, cstate = run_chunk(
        trainable, frozen, data, client_keys(rkey, ids),
        jax.tree.map(lambda x: x[ids], clients))
    sums = (dp.client_sums(local, weights, metrics, valid, trainable, clip,
                           classes)
            if plan.dp else
            server.client_sums(local, weights, metrics, valid))
    return sums, _scatter(clients, ids, valid, cstate)

  if num_chunks == 1:
    sums, clients = chunk_sums(0, state.clients)
  else:
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         jax.eval_shape(chunk_sums, 0, state.clients)[0])
    # Chunks past the filled slots would hold only pads: not run.
    n = -(-filled // chunk) if num_chunks is None else num_chunks

    def body(c, carry):
      sums, clients = chunk_sums(c, carry[1])
      return jax.tree.map(jnp.add, carry[0], sums), clients

    sums, clients = jax.lax.fori_loop(0, n, body, (zeros, state.clients))
  dp_state, more = state.dp, {}
  if plan.dp:
    # The noise from the round key, so each run on a runs axis draws its
    # own; its streams are apart from the cohort's (0) and clients' (id + 1).
    sums = dp.finish_sums(jax.random.fold_in(rkey, _NOISE_STREAM), trainable,
                          sums, clip, h.dp_noise_multiplier, denominator,
                          classes, h.dp_group_count_multiplier)
    dp_state = {'clip': dp.next_clip(
        jax.random.fold_in(rkey, _COUNT_STREAM), clip, sums['unclipped'], h,
        denominator)}
    more['dp_clip'] = clip
  if plan.rate:
    more['cohort_overflow'] = overflow
  trained, opt_state, metrics = server.apply_sums(
      trainable, state.opt_state, sums, plan.server_tx(h))
  return ServerState({**state.params, **trained}, opt_state,
                     state.round + 1, clients, dp_state), {**metrics, **more}


def _with_client_state(plan: StagePlan, h):
  """(trainable, frozen, data, key, client state) -> (params, weights,
  metrics, client state): the plan's client update, plus its
  ClientState.update on the same inputs (state () when it has none)."""
  def update(trainable, frozen, data, key, cstate):
    local, weights, metrics = plan.client_update(h, trainable, frozen, data,
                                                 key)
    if plan.client_state is not None:
      cstate, more = plan.client_state.update(h, cstate, trainable, frozen,
                                              data, key)
      metrics = {**metrics, **more}
    return local, weights, metrics, cstate
  return update


def _scatter(clients, ids, valid, new):
  """The population's client states with the cohort's (valid) new ones
  written at their ids; pads (valid False) leave theirs as they were."""
  def put(all_, rows):
    keep = valid.reshape(-1, *[1] * (rows.ndim - 1))
    return all_.at[ids].set(jnp.where(keep, rows, all_[ids]))
  return jax.tree.map(put, clients, new)


@dataclasses.dataclass(frozen=True)
class Round:
  """A stage's round as one jitted program (see `make_round`).

  Call: round(state, population, key, h, cohort_size=None) -> (state,
  metrics), `population` as `fill` returns it for this stage. With runs > 0
  every argument has a leading [R] axis (population too: each run its own
  partition, padded to one [K, max_n]).
  """
  plan: StagePlan
  mesh: jax.sharding.Mesh
  runs: int                # 0 = no runs axis
  chunk: int               # clients per chunk (a multiple of the clients axis)
  chunked: bool            # False: one chunk, the whole (padded) cohort
  jitted: Any
  donate: bool = False     # the state's buffers become the next state's

  @property
  def padded_cohort(self) -> int:
    """Clients computed per round at the default cohort, pads included."""
    return -(-self.plan.cohort // self.chunk) * self.chunk

  def place(self, tree):
    return place(tree, self.mesh, bool(self.runs))

  def fill(self, params, population):
    """fill_population for this round's stage."""
    return fill_population(self.plan, self.mesh, self.runs, params,
                           population)

  def init(self, params, h, round_: int = 0) -> ServerState:
    """The stage's first server state after `round_` rounds (the server
    optimizer's state starts anew each stage)."""
    init = functools.partial(server.init_state, self.plan, round_=round_)
    if self.runs:
      init = jax.vmap(init)
    state = self.place(jax.jit(init)(params, h))
    # A donated buffer must be the state's own: jit hands params through
    # uncopied, and on CPU they may alias the caller's host arrays.
    return jax.tree.map(jnp.copy, state) if self.donate else state

  def args(self, state, population, key, h, cohort_size=None) -> tuple:
    n = cohort_size or self.plan.cohort
    if not self.chunked and n > self.chunk:
      raise ValueError(f'cohort_size={n} exceeds the {self.padded_cohort} '
                       'clients of this all-at-once round.')
    state, key, h = self.place((state, key, h))
    return state, population, key, h, np.int32(n)

  def lower(self, *args, **kwargs):
    return self.jitted.lower(*self.args(*args, **kwargs))

  def __call__(self, *args, **kwargs):
    return self.jitted(*self.args(*args, **kwargs))


@functools.cache   # one jitted program (and its trace cache) per plan
def make_round(plan: StagePlan, mesh: jax.sharding.Mesh, *, runs: int = 0,
               clients_per_chunk: int = 0, donate: bool = False) -> Round:
  """The round program of a stage.

  Args:
    plan: the stage (recipe.Recipe.plan).
    mesh: a (runs, clients) mesh (make_mesh).
    runs: R > 0 adds a leading runs axis to every argument; 0 = one run.
    clients_per_chunk: 0 = the whole cohort at once (its size fixed at
      plan.cohort); k > 0 = chunks of k clients (rounded up to a multiple
      of the clients axis) run one after another in a loop inside the
      program, so memory is O(chunk) and one program serves every cohort
      size.
    donate: donate the state's buffers (params, server optimizer and
      client states, [K, ...] for Ditto's) to the next state, so a round
      holds one copy of them, not two; the state passed in is then
      deleted (training's loop drops it anyway).
  """
  devices = mesh.shape[CLIENTS]
  if clients_per_chunk:
    chunk, num_chunks = -(-clients_per_chunk // devices) * devices, None
  else:
    chunk, num_chunks = -(-plan.cohort // devices) * devices, 1
  spmd = CLIENTS if mesh.devices.size > 1 else None
  fn = functools.partial(one_round, plan, chunk, num_chunks, spmd)
  if runs:
    fn = jax.vmap(fn, in_axes=(0, 0, 0, 0, None),
                  spmd_axis_name=RUNS if mesh.devices.size > 1 else None)
  out = NamedSharding(mesh, P(RUNS) if runs else P())
  # The state stays where it was placed; the population is read-only.
  jitted = jax.jit(fn, out_shardings=(out, out),
                   donate_argnums=(0,) if donate else (),
                   compiler_options=compiler_options(
                       mesh.devices.flat[0].platform))
  return Round(plan, mesh, runs, chunk, bool(clients_per_chunk), jitted,
               donate)


def sequential_round(plan: StagePlan, state: ServerState, population, key, h):
  """Reference/baseline: the same round with clients run one after another.

  Calls one jitted single-client update per client in a Python loop (how
  FedJAX runs clients), then the same aggregation. Used by tests and the
  benchmark; not by training.
  """
  if plan.dp:
    raise ValueError('sequential_round does not implement DP-FedAvg '
                     '(--dp_clip > 0); use make_round.')
  update, aggregate = _sequential_parts(plan)
  rkey = round_key(key, state)
  if plan.rate:
    # The members by numpy's nonzero, not the round's masked slots.
    member = np.asarray(sampling.poisson_members(rkey, plan.num_clients,
                                                 plan.rate))
    ids = jnp.asarray(np.flatnonzero(member)[:plan.cohort], jnp.int32)
  else:
    ids, _ = cohort_ids(rkey, plan.num_clients, jnp.arange(plan.cohort),
                        plan.cohort)
  trainable, frozen = split_params(state.params, plan.groups)
  clients = state.clients
  outs = []
  for i, k in zip(np.asarray(ids), client_keys(rkey, ids)):
    one = lambda x, i=i: x[i]
    outs.append(update(h, trainable, frozen, jax.tree.map(one, population), k,
                       jax.tree.map(one, clients)))
    clients = jax.tree.map(lambda a, v, i=i: a.at[i].set(v), clients,
                           outs[-1][3])
  stack = lambda *xs: jnp.stack(xs)
  local, weights = (jax.tree.map(stack, *[o[j] for o in outs]) for j in (0, 1))
  return aggregate(state._replace(clients=clients), local, weights, h)


@functools.cache
def _sequential_parts(plan: StagePlan):
  def aggregate(state, local, weights, h):
    trainable = split_params(state.params, plan.groups)[0]
    trained, opt_state, metrics = server.aggregate(
        trainable, state.opt_state, local, weights, plan.server_tx(h))
    return ServerState({**state.params, **trained}, opt_state,
                       state.round + 1, state.clients, state.dp), metrics
  options = compiler_options(jax.devices()[0].platform)
  update = lambda h, *args: _with_client_state(plan, h)(*args)
  return (jax.jit(update, compiler_options=options),
          jax.jit(aggregate, compiler_options=options))
