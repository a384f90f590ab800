"""Every training method in one table.

A `Method` says, per stage, what a method's clients train, which objective
they minimise, how its task model sees a batch and what its task encoders are
weighted by on the server. The engine (client.py, train.py, evaluation.py)
reads these fields and never compares method names: a new baseline is a new
row here, plus code only where it needs a behaviour no row has yet.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Method:
  # Stage-1 objective: 'mapping' (FedRecon's MVAE with T(n<-m)), 'joint' (the
  # MVAE of --joint_posterior, no mappings) or None (no generator stage).
  generator: str | None
  # Parameter groups its clients train in the task stage.
  task_groups: tuple[str, ...]
  # How the task model sees absent modalities: 'reconstructed' by the
  # generator, 'zeros' (zero-filled, attended), or 'one_modality' (the run's
  # single modality, the rest masked out of the fusion).
  task_view: str
  # The generator's own objective joins the task loss (no freezing).
  task_trains_generator: bool = False
  # What a task encoder's server weight counts: 'all' the samples it saw an
  # input for (real, reconstructed or zero), or 'present' the real ones.
  task_seen: str = 'all'

  @property
  def uses_generator(self) -> bool:
    return self.generator is not None

  @property
  def gen_groups(self) -> tuple[str, ...]:
    return ('gen', 'map') if self.generator == 'mapping' else ('gen',)


METHODS = {
    # FedRecon (Wang et al. 2025): generator trained, frozen, then the task
    # model on real + reconstructed inputs.
    'fedrecon': Method('mapping', ('task',), 'reconstructed'),
    # Ablations: the generator keeps training in the task stage; no mappings
    # (a joint-posterior MVAE reconstructs instead).
    'fedrecon_no_freeze': Method('mapping', ('gen', 'map', 'task'),
                                 'reconstructed', task_trains_generator=True),
    'fedrecon_no_map': Method('joint', ('task',), 'reconstructed'),
    # FedMultimodal's zero-filling and the unimodal FedOpt baseline.
    'zero_fill': Method(None, ('task',), 'zeros'),
    'unimodal': Method(None, ('task',), 'one_modality', task_seen='present'),
}
