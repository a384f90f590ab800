"""FedMultimodal's zero-filling (Feng et al. 2023): the task model sees
absent modalities as zeros and attends to every modality."""

from __future__ import annotations

from fedrecon_jax.methods import base


def plan(recipe, model, stage) -> base.StagePlan:
  del stage   # only the task stage
  return base.stage_plan(
      recipe.cfg, base.TASK_STAGE, groups=(base.TASK,),
      loss=base.task_loss(model, base.zeros_view), model=model,
      # FedMultimodal averages every client by its sample count.
      seen_present=base.seen_present(recipe.cfg), view=base.zeros_view)


METHODS = (base.Method('zero_fill', plan, order=10),)
