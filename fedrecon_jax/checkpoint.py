"""Orbax checkpoints of the server state, and exact resumption.

A checkpoint at round r holds the server params and optimizer state
('state', StandardSave) and a JSON 'meta' item with the round, the config, a
fingerprint of the partition and the metrics lines written so far. Every PRNG
key of the run is `fold_in(key(seed), round)`-derived, so seed + round restore
them all. Resuming truncates metrics.jsonl to the restored round, then the
loop appends the rest: no duplicated rounds.
"""

from __future__ import annotations

import hashlib
import json
import os

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from fedrecon_jax import config as config_lib
from fedrecon_jax import rounds, server


def partition_fingerprint(population) -> str:
  """sha256 of which samples/modalities each client holds."""
  h = hashlib.sha256()
  for x in (population.sample_mask, population.modality_mask, population.y):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def read_metrics(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(path: str, last_round: int) -> None:
  """Keeps the lines of rounds <= last_round (atomic rewrite)."""
  lines = [r for r in read_metrics(path) if r['round'] <= last_round]
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in lines)
  os.replace(tmp, path)


class Checkpointer:
  """Saves every cfg.checkpoint_every rounds, keeps cfg.keep_checkpoints."""

  def __init__(self, cfg: config_lib.Config):
    self.cfg = cfg
    self.dir = os.path.abspath(os.path.join(cfg.workdir, 'checkpoints'))
    self.mngr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, create=True))
    self.fingerprint = None

  def maybe_save(self, state: dict, round_: int) -> None:
    every = self.cfg.checkpoint_every
    if not every or (round_ % every and round_ != self.cfg.total_rounds):
      return
    meta = {'round': round_, 'config': self.cfg.to_dict(),
            'partition': self.fingerprint,
            'metrics': read_metrics(os.path.join(self.cfg.workdir,
                                                 'metrics.jsonl'))}
    tree = {'params': state['params'], 'opt_state': state['opt_state']}
    self.mngr.save(round_, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()

  def restore_or_none(self, exp, cfg: config_lib.Config):
    """Latest readable checkpoint as a state dict, or None for a fresh run.

    Raises ValueError if the checkpointed experiment differs from cfg in a
    flag that defines it. Unreadable checkpoints are skipped with a warning.
    """
    self.fingerprint = partition_fingerprint(exp.population)
    for step in sorted(self.mngr.all_steps(), reverse=True):
      try:
        meta = self.mngr.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Skipping unreadable checkpoint %d: %s', step, e)
        continue
      check_compatible(meta['config'], cfg)
      if meta['partition'] != self.fingerprint:
        raise ValueError('The partition in the workdir differs from the one '
                         'these flags produce; use a new --workdir.')
      template = _abstract_state(exp, cfg, meta['round'])
      try:
        tree = self.mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(template)))['state']
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Skipping unreadable checkpoint %d: %s', step, e)
        continue
      logging.info('Resuming from round %d (%s).', meta['round'], self.dir)
      return {**tree, 'round': meta['round']}
    return None


def check_compatible(saved: dict, cfg: config_lib.Config) -> None:
  now = cfg.to_dict()
  diff = sorted(k for k in now if k not in config_lib.RESUMABLE_OVERRIDES
                and saved.get(k) != now[k])
  if diff:
    details = ', '.join(f'--{k} (checkpoint {saved.get(k)!r}, now {now[k]!r})'
                        for k in diff)
    raise ValueError(f'Refusing to resume {cfg.workdir}: flags differ from the '
                     f'checkpointed run: {details}. Use a new --workdir.')


def _abstract_state(exp, cfg, round_: int):
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  stage = cfg.stage(round_)
  tx = server.server_optimizer(cfg, stage)
  opt = jax.eval_shape(lambda p: rounds.init_server_opt(tx, p, cfg, stage),
                       params)
  return {'params': params, 'opt_state': opt}
