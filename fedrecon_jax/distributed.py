"""How a cohort is spread over hosts, devices and time.

Three pieces that `rounds.make_round` does not cover on its own:

* `initialize`: joins a multi-process JAX run (CPU processes on one machine
  talking over gloo, or the hosts of a TPU pod slice). After it, `jax.devices()`
  lists every process's devices and `rounds.make_mesh()` spans all of them.
* `gather_cohort` / `replicate`: placing host values on the global mesh. The
  population store stays on the host; each process materialises only the
  cohort rows of its own devices.
* `make_chunked_round`: the round of `rounds.make_round` with the cohort run
  in chunks of `clients_per_device x devices` clients, one after another in a
  loop inside the one program, the aggregation's weighted sums accumulated
  chunk by chunk. A vmapped cohort holds every client's params, momentum and
  gradients at once (~95 MB per client in the FedRecon generator stage on
  uci_multifeature, so ~24 GB at 256 clients); here memory is
  O(chunk x model), a chunk's working set can stay in cache, and the cohort
  size is a runtime value (one compiled program for every cohort size).

The chunked round equals `rounds.make_round` up to float summation order:
same cohort ids, same per-client keys, same masked weighted mean, same server
step.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from fedrecon_jax import client, rounds, server
from fedrecon_jax.config import Config
from fedrecon_jax.models import Model

CLIENTS = rounds.CLIENTS


# ------------------------------------------------------------------ processes


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               local_device_count: int = 0) -> None:
  """Joins a multi-process run; call before any other JAX call.

  On a TPU pod slice (or SLURM / Open MPI) pass nothing: JAX finds the
  coordinator itself. On CPU (e.g. N processes on one machine) pass all three;
  process 0 serves the coordinator at `coordinator_address` ('host:port').

  Args:
    coordinator_address: 'host:port' of process 0, or None to auto-detect.
    num_processes: total processes, or None to auto-detect.
    process_id: this process's rank in [0, num_processes), or None.
    local_device_count: CPU only: devices this process exposes (0 = leave the
      default of one). Sets `jax_num_cpu_devices`, so it must precede backend
      initialisation too.
  """
  if local_device_count:
    jax.config.update('jax_num_cpu_devices', local_device_count)
  # gloo is the default cross-process CPU collective in jax 0.10 but was
  # opt-in before; name it so older versions do not silently run without.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes,
                             process_id=process_id)


def initialize_from_config(cfg: Config) -> bool:
  """`initialize` from the Config's multi-host fields; False if not asked.

  Config fields: distributed (bool), coordinator_address ('' = auto-detect),
  num_processes (0 = auto), process_id (-1 = auto).
  """
  if not getattr(cfg, 'distributed', False):
    return False
  address = getattr(cfg, 'coordinator_address', '') or None
  processes = getattr(cfg, 'num_processes', 0) or None
  rank = getattr(cfg, 'process_id', -1)
  initialize(address, processes, None if rank < 0 else rank)
  return True


def replicate(tree, mesh: jax.sharding.Mesh):
  """Host (or single-device) values -> arrays replicated over the whole mesh.

  Every process must pass the same values. Unlike a plain `jax.device_put`,
  this also works across processes for arrays that live on one local device
  (e.g. `model.init(...)` outputs, `jax.random.key(...)`): device_put refuses
  to send those to devices of other processes, so they go through the host.
  The result has the same type (mesh included) as a jitted round's
  replicated outputs, so feeding either to the round compiles once.
  """
  sharding = NamedSharding(mesh, P())

  def one(x):
    if isinstance(x, jax.Array):
      if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        data = one(jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
      # Equal, not just equivalent: a 1-device NamedSharding is equivalent to
      # the SingleDeviceSharding of a plain array, but jit keys on the mesh.
      if x.sharding == sharding:
        return x                               # e.g. last round's outputs
      if x.is_fully_addressable and not sharding.is_fully_addressable:
        x = np.asarray(x)                      # local array -> other hosts
    return jax.device_put(x, sharding)

  return jax.tree.map(one, tree)


def gather_cohort(population, ids: np.ndarray, mesh: jax.sharding.Mesh,
                  chunk: int = 0):
  """Gathers the cohort's rows of a host population into sharded arrays.

  Args:
    population: partition.ClientData of numpy arrays, leaves [K, ...].
    ids: [C] int cohort ids (host), C a multiple of the mesh size (and of
      `chunk` when given).
    mesh: the 1-D `clients` mesh.
    chunk: 0 -> leaves [C, ...] sharded over clients; else leaves
      [C // chunk, chunk, ...] with the chunk axis sharded, the layout that
      `make_chunked_round(..., host_population=True)` scans over.
  Returns:
    The cohort as global jax.Arrays. Each process reads only the rows of its
    addressable shards, so no host ever holds more than its share.
  """
  ids = np.asarray(ids)
  if chunk:
    ids = ids.reshape(-1, chunk)
    spec = P(None, CLIENTS)
  else:
    spec = P(CLIENTS)
  sharding = NamedSharding(mesh, spec)

  def one(leaf):
    leaf = np.asarray(leaf)
    shape = ids.shape + leaf.shape[1:]
    return jax.make_array_from_callback(
        shape, sharding, lambda index: leaf[ids[index[:ids.ndim]]])

  return jax.tree.map(one, population)


# ------------------------------------------------------------ chunked rounds


@dataclasses.dataclass(frozen=True)
class ChunkedRound:
  """A round as one jitted program looping over chunks of the cohort.

  Call it like `rounds.make_round`'s round_fn,
  `(params, opt_state, population, key) -> (params, opt_state, metrics)`,
  optionally with `cohort_size=` (default cfg.clients_per_round). With the
  population on device the cohort size is a runtime value: one compiled
  program serves every cohort size. With host_population the population is
  host numpy, the cohort's rows are gathered outside the program
  (`gather_cohort`), and each cohort size compiles once.
  """
  jitted: Any            # the program; `args` builds its arguments.
  tx: optax.GradientTransformation
  chunk: int             # clients per chunk (a multiple of the mesh size)
  cohort_size: int       # default clients per round
  host_population: bool
  mesh: jax.sharding.Mesh
  sample_ids: Callable   # (key, cohort size) -> padded ids, host gathering

  def padded(self, cohort_size: int | None = None) -> int:
    """Clients computed per round, zero-weight pads included."""
    n = cohort_size or self.cohort_size
    return -(-n // self.chunk) * self.chunk

  def args(self, params, opt_state, population, key,
           cohort_size: int | None = None) -> tuple:
    """The arguments of `jitted` (for .lower(...) and cost analysis)."""
    n = cohort_size or self.cohort_size
    if self.host_population:
      ids = np.asarray(self.sample_ids(key, n))
      population = gather_cohort(population, ids, self.mesh, self.chunk)
    return params, opt_state, population, key, np.int32(n)

  def lower(self, params, opt_state, population, key,
            cohort_size: int | None = None):
    """The jax `Lowered` program, like a jitted function's `.lower`."""
    return self.jitted.lower(*self.args(params, opt_state, population, key,
                                        cohort_size))

  def __call__(self, params, opt_state, population, key,
               cohort_size: int | None = None):
    return self.jitted(*self.args(params, opt_state, population, key,
                                  cohort_size))


def make_chunked_round(cfg: Config, model: Model, stage: int,
                       mesh: jax.sharding.Mesh, num_clients: int, *,
                       clients_per_device: int = 1,
                       host_population: bool = False,
                       donate: bool = False) -> ChunkedRound:
  """`rounds.make_round` with the cohort run chunk by chunk.

  Args:
    cfg, model, stage, mesh, num_clients: as for rounds.make_round.
    clients_per_device: clients each device trains at once (vmapped); the
      chunks run one after another in a loop inside the program.
    host_population: the population stays host numpy; each round one small
      jitted call draws the ids and the host gathers the cohort's rows.
    donate: donate the params and opt_state buffers to the outputs.
  """
  groups = client.trainable_groups(cfg, stage)
  client_update = client.make_client_update(cfg, model, stage)
  tx = server.server_optimizer(cfg, stage)
  chunk = max(clients_per_device, 1) * mesh.devices.size
  replicated = NamedSharding(mesh, P())

  def permutation(key):
    # rounds.sample_cohort draws jax.random.choice(replace=False), which is
    # this permutation's prefix: the same cohort, for any cohort size.
    return jax.random.permutation(jax.random.fold_in(key, 0), num_clients)

  def cohort_ids(perm, positions, cohort_size):
    """Ids at cohort positions [c] (pads -> the first id) and valid [c]."""
    valid = positions < cohort_size
    return jnp.where(valid, perm[jnp.minimum(positions, num_clients - 1)],
                     perm[0]), valid

  def round_fn(params, opt_state, data, key, cohort_size):
    trainable, frozen = rounds.split_params(params, groups)
    perm = permutation(key)

    def chunk_sums(c):
      ids, valid = cohort_ids(perm, c * chunk + jnp.arange(chunk), cohort_size)
      if host_population:
        batch = jax.tree.map(lambda x: x[c], data)
      else:
        batch = jax.tree.map(lambda x: x[ids], data)
      local, weights, metrics = rounds.run_cohort(
          client_update, trainable, frozen, batch,
          rounds.client_keys(key, ids), mesh)
      return server.client_sums(local, weights, metrics, valid)

    shapes = jax.eval_shape(chunk_sums, 0)
    acc = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    num_chunks = (cohort_size + chunk - 1) // chunk
    acc = jax.lax.fori_loop(
        0, num_chunks, lambda c, a: jax.tree.map(jnp.add, a, chunk_sums(c)),
        acc)
    trained, opt_state, metrics = server.apply_sums(trainable, opt_state, acc,
                                                    tx)
    return {**params, **trained}, opt_state, metrics

  jitted = jax.jit(round_fn, out_shardings=replicated,
                   donate_argnums=(0, 1) if donate else ())
  sample_ids = jax.jit(
      lambda key, n: cohort_ids(permutation(key),
                                jnp.arange(-(-n // chunk) * chunk), n)[0],
      static_argnums=1)
  return ChunkedRound(jitted, tx, chunk, cfg.clients_per_round,
                      host_population, mesh, sample_ids)
