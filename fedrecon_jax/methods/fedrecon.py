"""FedRecon (Wang et al. 2025) and its ablations: a generator trained in
stage 1, then frozen, reconstructs the task model's absent modalities."""

from __future__ import annotations

from fedrecon_jax import client, generators
from fedrecon_jax.config import FedReconSettings
from fedrecon_jax.generators import mapping
from fedrecon_jax.methods import base
from fedrecon_jax.param_groups import MAP


def task_stage(recipe, model, *, train_generator: bool,
               fill_once: bool = True) -> base.StagePlan:
  """The task model on real + reconstructed inputs. train_generator: the
  generator's own objective joins the task loss and its groups train on
  (no freezing); --train_mapping_in_stage2 keeps T training with L_match.
  A generator the stage does not train reconstructs the same inputs at
  every step, so (fill_once) they are computed once per stage for the
  whole population (the frozen forward pass was most of a step's FLOPs)."""
  cfg, gen = recipe.cfg, recipe.generator
  view = base.completing_view(model, gen)
  if train_generator:
    groups = gen.groups + (base.TASK,)
    gen_loss = base.generator_loss(cfg, model, gen)
    extra = lambda h, params, batch, key: gen_loss(h)(params, batch, key)
  elif recipe.knobs.train_mapping_in_stage2 and gen.uses_mappings:
    groups = (MAP, base.TASK)
    extra = lambda h, params, batch, key: _match_term(h, model, params, batch)
  else:
    groups, extra = (base.TASK,), None
  # Frozen: the stage trains none of the generator's groups.
  filled = fill_once and not set(gen.groups) & set(groups)
  return base.stage_plan(
      cfg, base.TASK_STAGE, groups=groups,
      loss=base.task_loss(model, base.zeros_view if filled else view, extra),
      model=model, seen_present=base.seen_present(cfg), filled=filled,
      fill=client.make_fill(gen, model) if filled else None, view=view,
      generator=gen)


def _match_term(h, model, params, batch):
  match = mapping.match_loss(model, params, batch['xs'], batch['present'])
  return h.match_weight * match, {'match': match}


def _plan(train_generator: bool):
  def plan(recipe, model, stage):
    if stage == base.GEN_STAGE:
      return base.generator_stage(recipe, model)
    return task_stage(recipe, model, train_generator=train_generator)
  return plan


def _method(name: str, train_generator: bool, generator, order: int):
  return base.Method(name, _plan(train_generator), generator,
                     settings=FedReconSettings, order=order)


METHODS = (
    # The generator trained, frozen, then the task model on real +
    # reconstructed inputs.
    _method('fedrecon', False, lambda knobs: mapping.MAPPING, 0),
    # Ablations: the generator keeps training in the task stage; no mappings
    # (the joint-posterior MVAE of --joint_posterior reconstructs instead).
    _method('fedrecon_no_freeze', True, lambda knobs: mapping.MAPPING, 1),
    _method('fedrecon_no_map', False,
            lambda knobs: generators.get(knobs.joint_posterior), 2),
    # The mappings over an MMVAE+ model's unimodal latents (what FedRecon's
    # release evaluates on CUB; generators/mmvaeplus_map.py).
    _method('fedrecon_mmvaeplus', False,
            lambda knobs: generators.get('mmvaeplus_map'), 3),
)
