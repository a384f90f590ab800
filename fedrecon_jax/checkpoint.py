"""Orbax checkpoints of the server state, and exact resumption.

A checkpoint at round r (directory <workdir>/checkpoints/<r>) holds the
server params and optimizer state ('state', StandardSave) and a JSON 'meta'
item with the round, the config, a fingerprint of the partition and the
metrics records written so far. Saves are asynchronous (orbax writes in a
background thread while the next rounds run) and only the last
--keep_checkpoints are kept.

Every PRNG key of the run is `fold_in(key(seed), round)`-derived, so seed +
round restore them all: a resumed run repeats the uninterrupted one exactly.
Resuming truncates metrics.jsonl to the restored round, then the loop appends
the rest: no duplicated rounds.

Safety on resume:
  * <workdir>/config.json records the flags of the run from its first start,
    so changed flags are refused even before the first checkpoint (which
    would otherwise truncate metrics.jsonl written under other flags). Flags
    in config.RESUMABLE_OVERRIDES (--rounds, ...) may change.
  * A checkpoint that cannot be read (truncated or missing files, bad
    JSON) is skipped with a warning and the one before it is used. Once a
    readable one is found, the bad ones are moved, not deleted, to
    <workdir>/checkpoints_corrupt/: left in place, orbax would silently skip
    saving those steps again (`should_save` is False for steps <= the
    latest) and count them among the checkpoints kept. If none is readable
    the run refuses to start and changes nothing, since starting over would
    truncate metrics.jsonl.
  * Unfinished saves of a killed run (`<r>.orbax-checkpoint-tmp*`, which
    orbax does not list as checkpoints but would rmtree before saving step r
    again) are moved to checkpoints_corrupt/ too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from fedrecon_jax import config as config_lib
from fedrecon_jax import metrics_writer, rounds, server

# Kept importable from here for callers that read metrics with checkpoints.
read_metrics = metrics_writer.read_metrics
truncate_metrics = metrics_writer.truncate_metrics

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'checkpoints_corrupt'


class IncompatibleRunError(ValueError):
  """The workdir holds a run of other flags or another partition."""


def partition_fingerprint(population) -> str:
  """sha256 of which samples/modalities each client holds."""
  h = hashlib.sha256()
  for x in (population.sample_mask, population.modality_mask, population.y):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


class Checkpointer:
  """Saves every cfg.checkpoint_every rounds, keeps cfg.keep_checkpoints."""

  def __init__(self, cfg: config_lib.Config):
    self.cfg = cfg
    self.workdir = os.path.abspath(cfg.workdir)
    self.dir = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.mngr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, create=True,
            enable_async_checkpointing=True))
    self.fingerprint = None

  def maybe_save(self, state: dict, round_: int, metrics=None) -> bool:
    """Starts an async save if round_ is due; True if it did.

    metrics: the records written so far (default: read metrics.jsonl).
    """
    every = self.cfg.checkpoint_every
    if not every or (round_ % every and round_ != self.cfg.total_rounds):
      return False
    if metrics is None:
      metrics = read_metrics(
          os.path.join(self.workdir, metrics_writer.METRICS_FILE))
    meta = {'round': round_, 'config': self.cfg.to_dict(),
            'partition': self.fingerprint, 'metrics': list(metrics)}
    tree = {'params': state['params'], 'opt_state': state['opt_state']}
    return self.mngr.save(round_, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()

  def restore_or_none(self, exp, cfg: config_lib.Config):
    """Latest readable checkpoint as a state dict, or None for a fresh run.

    The dict has 'params', 'opt_state', 'round' and 'metrics' (the records
    stored with the checkpoint). Raises ValueError if the workdir's run
    differs from cfg in a flag that defines it, or if there are checkpoints
    but none can be read (then nothing is moved: starting over would
    truncate metrics.jsonl, so that is left to the user).
    """
    self.fingerprint = partition_fingerprint(exp.population)
    self._check_config_file(cfg)
    self._set_aside_unfinished_saves()
    bad = []
    state = None
    for step in sorted(self.mngr.all_steps(), reverse=True):
      try:
        state = self._restore(step, exp, cfg)
        break
      except IncompatibleRunError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Skipping unreadable checkpoint %d in %s: %s: %s',
                        step, self.dir, type(e).__name__, str(e)[:500])
        bad.append((step, e))
    if bad and state is None:
      raise ValueError(
          f'No readable checkpoint in {self.dir} (' + '; '.join(
              f'{s}: {type(e).__name__}: {str(e)[:200]}' for s, e in bad) +
          '). Nothing was changed; move them away to start over, or use a '
          'new --workdir.')
    for step, _ in bad:
      logging.warning('Moving unreadable checkpoint %d to %s/.', step,
                      CORRUPT_DIR)
      self._move_aside(str(step))
    if bad:
      self.mngr.reload()
    if state is not None and state['round'] > cfg.total_rounds:
      raise IncompatibleRunError(
          f'--rounds={cfg.rounds}: {cfg.workdir} already holds round '
          f'{state["round"]}, past the {cfg.total_rounds} rounds asked for; '
          'pass at least the rounds it was run with, or use a new --workdir.')
    self._write_config_file(cfg)
    if state is not None:
      logging.info('Resuming from round %d (%s).', state['round'], self.dir)
    return state

  def _restore(self, step: int, exp, cfg: config_lib.Config) -> dict:
    meta = self.mngr.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))['meta']
    if not isinstance(meta, dict) or meta.get('round') != step:
      raise ValueError(f'bad meta item: {str(meta)[:200]}')
    check_compatible(meta['config'], cfg)
    if meta['partition'] != self.fingerprint:
      raise IncompatibleRunError(
          f'Refusing to resume {cfg.workdir}: its partition differs from the '
          'one these flags produce (a changed dataset or partition code?). '
          'Use a new --workdir.')
    tree = self.mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_state(exp, cfg, step))))
    return {**tree['state'], 'round': step,
            'metrics': meta.get('metrics', [])}

  def _config_path(self) -> str:
    return os.path.join(self.workdir, CONFIG_FILE)

  def _check_config_file(self, cfg: config_lib.Config) -> None:
    """Refuses flags that differ from those the workdir was started with."""
    path = self._config_path()
    if not os.path.exists(path):
      return
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      # The checkpoints' own copies of the config still get checked.
      logging.warning('Ignoring unreadable %s: %s', path, e)
      return
    check_compatible(saved, cfg)

  def _write_config_file(self, cfg: config_lib.Config) -> None:
    if jax.process_index() != 0:
      return
    os.makedirs(self.workdir, exist_ok=True)
    path = self._config_path()
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
      json.dump(cfg.to_dict(), f, indent=1)
    os.replace(tmp, path)

  def _set_aside_unfinished_saves(self) -> None:
    if not os.path.isdir(self.dir):
      return
    suffix = ocp.path.step.TMP_DIR_SUFFIX
    for name in sorted(os.listdir(self.dir)):
      if suffix in name:
        logging.warning('Moving the unfinished save %s to %s/.', name,
                        CORRUPT_DIR)
        self._move_aside(name)

  def _move_aside(self, name: str) -> None:
    if jax.process_index() != 0:
      return
    src = os.path.join(self.dir, name)
    if not os.path.exists(src):
      return
    dst_dir = os.path.join(self.workdir, CORRUPT_DIR)
    os.makedirs(dst_dir, exist_ok=True)
    dst = os.path.join(dst_dir, name)
    if os.path.exists(dst):  # set aside before: keep both
      dst = f'{dst}.{time.strftime("%Y%m%d-%H%M%S")}.{os.getpid()}'
    os.replace(src, dst)


def check_compatible(saved: dict, cfg: config_lib.Config) -> None:
  """Raises ValueError listing every flag that differs from `saved` and is
  not in config.RESUMABLE_OVERRIDES. A flag missing from `saved` (added to
  Config since) counts as its default."""
  now = cfg.to_dict()
  defaults = {f.name: f.default for f in dataclasses.fields(config_lib.Config)}
  diff = sorted(k for k in now if k not in config_lib.RESUMABLE_OVERRIDES
                and saved.get(k, defaults[k]) != now[k])
  if diff:
    details = ', '.join(
        f'--{k} (workdir has {saved.get(k, defaults[k])!r}, now {now[k]!r})'
        for k in diff)
    raise IncompatibleRunError(
        f'Refusing to resume {cfg.workdir}: flags differ from the run it '
        f'holds: {details}. Pass the same values, or use a new --workdir.')


def _abstract_state(exp, cfg, round_: int):
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  stage = cfg.stage(round_)
  tx = server.server_optimizer(cfg, stage)
  opt = jax.eval_shape(lambda p: rounds.init_server_opt(tx, p, cfg, stage),
                       params)
  return {'params': params, 'opt_state': opt}
