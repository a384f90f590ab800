"""FedMultimodal's zero-filling (Feng et al. 2023): the task model sees
absent modalities as zeros and attends to every modality."""

from __future__ import annotations

from fedrecon_jax.methods import base


def plan(cfg, model, stage, num_clients) -> base.StagePlan:
  del stage   # only the task stage
  return base.stage_plan(
      cfg, base.TASK_STAGE, num_clients, groups=('task',),
      loss=base.task_loss(model, base.zeros_view),
      # FedMultimodal averages every client by its sample count.
      weights=base.weights_fn(model, base.seen_present(cfg)),
      view=base.zeros_view)


METHODS = (base.Method('zero_fill', plan, order=10),)
