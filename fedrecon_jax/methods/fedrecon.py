"""FedRecon (Wang et al. 2025) and its ablations: a generator trained in
stage 1, then frozen, reconstructs the task model's absent modalities."""

from __future__ import annotations

from fedrecon_jax import client, generators
from fedrecon_jax.generators import mapping
from fedrecon_jax.methods import base


def task_stage(cfg, model, num_clients, *, train_generator: bool,
                fill_once: bool = True) -> base.StagePlan:
  """The task model on real + reconstructed inputs. train_generator: the
  generator's own objective joins the task loss and its groups train on
  (no freezing); --train_mapping_in_stage2 keeps T training with L_match.
  A generator the stage does not train reconstructs the same inputs at
  every step, so (fill_once) they are computed once per stage for the
  whole population (the frozen forward pass was most of a step's FLOPs)."""
  gen = cfg.generator
  view = base.completing_view(model, gen)
  if train_generator:
    groups = gen.groups + ('task',)
    gen_loss = base.generator_loss(cfg, model, gen)
    extra = lambda h, params, batch, key: gen_loss(h)(params, batch, key)
  elif cfg.train_mapping_in_stage2 and gen.uses_mappings:
    groups = ('map', 'task')
    extra = lambda h, params, batch, key: _match_term(h, model, params, batch)
  else:
    groups, extra = ('task',), None
  filled = fill_once and not {'gen', 'map'} & set(groups)
  return base.stage_plan(
      cfg, base.TASK_STAGE, num_clients, groups=groups,
      loss=base.task_loss(model, base.zeros_view if filled else view, extra),
      weights=base.weights_fn(model, base.seen_present(cfg)), filled=filled,
      fill=client.make_fill(gen, model) if filled else None, view=view,
      generator=gen)


def _match_term(h, model, params, batch):
  match = mapping.match_loss(model, params, batch['xs'], batch['present'])
  return h.match_weight * match, {'match': match}


def _plan(train_generator: bool):
  def plan(cfg, model, stage, num_clients):
    if stage == base.GEN_STAGE:
      return base.generator_stage(cfg, model, num_clients)
    return task_stage(cfg, model, num_clients,
                       train_generator=train_generator)
  return plan


METHODS = (
    # The generator trained, frozen, then the task model on real +
    # reconstructed inputs.
    base.Method('fedrecon', _plan(False), lambda cfg: mapping.MAPPING,
                order=0),
    # Ablations: the generator keeps training in the task stage; no mappings
    # (the joint-posterior MVAE of --joint_posterior reconstructs instead).
    base.Method('fedrecon_no_freeze', _plan(True),
                lambda cfg: mapping.MAPPING, order=1),
    base.Method('fedrecon_no_map', _plan(False),
                lambda cfg: generators.get(cfg.joint_posterior), order=2),
    # The mappings over an MMVAE+ model's unimodal latents (what FedRecon's
    # release evaluates on CUB; generators/mmvaeplus_map.py).
    base.Method('fedrecon_mmvaeplus', _plan(False),
                lambda cfg: generators.get('mmvaeplus_map'), order=3),
)
