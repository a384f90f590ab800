"""Several processes, one mesh.

* `initialize`: joins a multi-process JAX run (CPU processes on one machine
  talking over gloo, or the hosts of a TPU pod slice). After it, `jax.devices()`
  lists every process's devices and `rounds.make_mesh()` spans all of them.
* `replicate`: host (or one-device) values -> arrays replicated over the
  global mesh, as a round's replicated outputs are.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fedrecon_jax.config import Config


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
