"""A stage's plan: what a round of it computes, built once from a Config.

The round engine (rounds.py), train, checkpoint and evaluation read only
plans (methods.StagePlan): which parameter groups the clients train, one
client's update, the server's transformation, the once-per-stage fill, how
the task model sees a test batch, the per-client state. The Config stops
here: the run's method builds its plans (methods/). Updates and
transformations take `h`, the run's hparams.Hparams, as a traced input, so
runs that differ in those numbers share one program (and can run as one,
on a runs axis).
"""

from __future__ import annotations

from fedrecon_jax import server
from fedrecon_jax.config import Config, per_program
from fedrecon_jax.methods import ClientState, StagePlan
from fedrecon_jax.models import Model

__all__ = ['ClientState', 'StagePlan', 'make_plan']


@per_program
def make_plan(cfg: Config, model: Model, stage: int,
              num_clients: int) -> StagePlan:
  """Stage `stage`'s plan of cfg's method, for a population of num_clients."""
  method = cfg.method_spec
  if stage not in method.stages(cfg):
    raise ValueError(f'--method={cfg.method!r} has no stage {stage} (its '
                     f'stages: {method.stages(cfg)}).')
  stage_plan = method.plan(cfg, model, stage, num_clients)
  server.check_elementwise(stage_plan.server_tx(cfg.hparams()),
                           f'--method={cfg.method} stage {stage}')
  return stage_plan
