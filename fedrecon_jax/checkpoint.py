"""Orbax checkpoints of the server state, and exact resumption.

A checkpoint at round r (directory <workdir>/checkpoints/<r>) holds the
server params and optimizer state ('state', StandardSave) and a JSON 'meta'
item with the round, the config, fingerprints of the partition and of the
clients' features, and the metrics records written so far. Saves are
asynchronous (orbax writes in a background thread while the next rounds
run) and only the last --keep_checkpoints are kept; a preempted run also
saves the round it stopped at. A save that fails (full disk) raises
workdir.WorkdirError and leaves the checkpoints before it in place.

Every PRNG key of the run is `fold_in(key(seed), round)`-derived, so seed +
round restore them all: a resumed run repeats the uninterrupted one exactly.
Resuming truncates metrics.jsonl to the restored round, then the loop appends
the rest: no duplicated rounds.

Safety on resume:
  * <workdir>/config.json records the flags of the run from its first start,
    so changed flags are refused even before the first checkpoint (which
    would otherwise truncate metrics.jsonl written under other flags). Flags
    in config.RESUMABLE_OVERRIDES (--rounds, ...) may change.
  * The partition (who holds which samples and modalities) and the
    clients' features must hash as the checkpoint's did. --manual_dir may
    move, but files changed inside it (--dataset=files, a rebuilt
    polymnist) are refused rather than trained on under the old state.
  * A checkpoint that cannot be read (truncated or missing files, bad
    JSON) is skipped with a warning and the one before it is used. Once a
    readable one is found, the bad ones are moved, not deleted, to
    <workdir>/checkpoints_corrupt/: left in place, orbax would silently skip
    saving those steps again (`should_save` is False for steps <= the
    latest) and count them among the checkpoints kept. If none is readable
    the run refuses to start and changes nothing, since starting over would
    truncate metrics.jsonl.
  * Old steps are deleted in two moves: orbax renames a step that falls
    out of --keep_checkpoints into checkpoints/deleting/ (one atomic
    rename), and this module empties that folder before the next save, on
    close and at start. A kill inside orbax's own rmtree used to leave a
    half-deleted step listed among the checkpoints; a kill while emptying
    deleting/ leaves only what the next start removes.
  * Unfinished saves of a killed run (`<r>.orbax-checkpoint-tmp*`, which
    orbax does not list as checkpoints but would rmtree before saving step r
    again) are moved to checkpoints_corrupt/ too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from fedrecon_jax import config as config_lib
from fedrecon_jax import metrics_writer, recipe, server
from fedrecon_jax import workdir as workdir_lib

CONFIG_FILE = 'config.json'
CHECKPOINT_DIR = 'checkpoints'
CORRUPT_DIR = 'checkpoints_corrupt'
DELETING_DIR = 'deleting'   # inside CHECKPOINT_DIR


class IncompatibleRunError(ValueError):
  """The workdir holds a run of other flags or another partition."""


def partition_fingerprint(population) -> str:
  """sha256 of which samples/modalities each client holds."""
  h = hashlib.sha256()
  for x in (population.sample_mask, population.modality_mask, population.y):
    h.update(np.ascontiguousarray(x).tobytes())
  return h.hexdigest()


def data_fingerprint(population) -> str:
  """sha256 of the clients' feature arrays (padding included: it is zeros)."""
  h = hashlib.sha256()
  for x in population.xs:
    h.update(memoryview(np.ascontiguousarray(x)).cast('B'))
  return h.hexdigest()


class Checkpointer:
  """Saves every cfg.checkpoint_every rounds, keeps cfg.keep_checkpoints."""

  def __init__(self, cfg: config_lib.Config):
    self.cfg = cfg
    self.total_rounds = recipe.of(cfg).total_rounds
    self.workdir = os.path.abspath(cfg.workdir)
    self.dir = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.mngr = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep_checkpoints, create=True,
            enable_async_checkpointing=True, todelete_subdir=DELETING_DIR))
    self.fingerprint = self.data = None

  def maybe_save(self, state: server.ServerState, round_: int, metrics=None,
                 force: bool = False) -> bool:
    """Starts an async save if round_ is due (or `force`: a preemption);
    True if it did.

    metrics: the records written so far (default: read metrics.jsonl).
    """
    every = self.cfg.checkpoint_every
    due = every and (round_ % every == 0 or round_ == self.total_rounds)
    if not (due or force) or round_ in self.mngr.all_steps():
      return False
    if metrics is None:
      metrics = metrics_writer.read_metrics(
          os.path.join(self.workdir, metrics_writer.METRICS_FILE))
    meta = {'round': round_, 'config': self.cfg.to_dict(),
            'partition': self.fingerprint, 'data': self.data,
            'metrics': list(metrics)}
    tree = _tree(state)
    # save() would wait for the previous async save anyway (which may
    # fail); waiting first lets the steps it set aside be emptied.
    with self._write_errors(round_):
      self.mngr.wait_until_finished()
      self._empty_deleting()
      return self.mngr.save(round_, force=force, args=ocp.args.Composite(
          state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    with self._write_errors(None):
      self.mngr.wait_until_finished()
      self._empty_deleting()
    self.mngr.close()

  @contextlib.contextmanager
  def _write_errors(self, round_: int | None):
    """OSError (full disk, lost mount) while saving -> WorkdirError. orbax
    writes into <r>.orbax-checkpoint-tmp and deletes old steps only after
    the new one is finalised, so the checkpoints before stay readable."""
    try:
      yield
    except OSError as e:
      kept = [s for s in _listed_steps(self.dir) if round_ is None or s < round_]
      raise workdir_lib.WorkdirError(
          f'--workdir={self.cfg.workdir}: writing a checkpoint failed: {e}. '
          f'Kept the earlier checkpoints {kept}; re-running the command '
          'resumes from the latest once the disk has room.') from e

  def restore_or_none(self, exp, cfg: config_lib.Config,
                      max_round: int | None = None):
    """Latest readable checkpoint as (server.ServerState, the metrics
    records stored with it), or None for a fresh run. With max_round, the
    latest at or before that round (a group resumes all its runs from one). Raises ValueError if the workdir's run
    differs from cfg in a flag that defines it, or if there are checkpoints
    but none can be read (then nothing is moved: starting over would
    truncate metrics.jsonl, so that is left to the user).
    """
    self.fingerprint = partition_fingerprint(exp.population)
    self.data = data_fingerprint(exp.population)
    self._check_config_file(cfg)
    self._empty_deleting()
    self._set_aside_unfinished_saves()
    bad = []
    state = None
    for step in sorted(self.mngr.all_steps(), reverse=True):
      if max_round is not None and step > max_round:
        continue
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
    total = recipe.of(cfg).total_rounds
    if state is not None and state[0].round > total:
      raise IncompatibleRunError(
          f'--rounds={cfg.rounds}: {cfg.workdir} already holds round '
          f'{state[0].round}, past the {total} rounds asked for; '
          'pass at least the rounds it was run with, or use a new --workdir.')
    self._write_config_file(cfg)
    if state is not None:
      logging.info('Resuming from round %d (%s).', state[0].round, self.dir)
    return state

  def _restore(self, step: int, exp, cfg: config_lib.Config):
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
    # Checkpoints written before the data was fingerprinted have none.
    if meta.get('data', self.data) != self.data:
      raise IncompatibleRunError(
          f'Refusing to resume {cfg.workdir}: the clients\' features differ '
          f'from those it was trained on (--dataset={cfg.dataset}, '
          f'--manual_dir={cfg.manual_dir or "(default)"}: were its files '
          'changed?). Restore them, or use a new --workdir.')
    tree = self.mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_abstract_state(exp, step))))
    got = tree['state']
    state = server.ServerState(got['params'], got['opt_state'],
                               np.int32(step), got.get('clients', ()),
                               got.get('dp', ()))
    return state, meta.get('metrics', [])

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
    metrics_writer.write_json_atomic(self._config_path(), cfg.to_dict(),
                                     indent=1)

  def _set_aside_unfinished_saves(self) -> None:
    if not os.path.isdir(self.dir):
      return
    suffix = ocp.path.step.TMP_DIR_SUFFIX
    for name in sorted(os.listdir(self.dir)):
      if suffix in name:
        logging.warning('Moving the unfinished save %s to %s/.', name,
                        CORRUPT_DIR)
        self._move_aside(name)

  def _empty_deleting(self) -> None:
    """Removes the steps orbax set aside for deletion, and the folder."""
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.dir, DELETING_DIR), ignore_errors=True)

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
  """Raises IncompatibleRunError listing every flag that differs from
  `saved` (see workdir.differing_flags)."""
  diff = workdir_lib.differing_flags(saved, cfg.to_dict())
  if diff:
    details = ', '.join(f'--{k} (workdir has {old!r}, now {new!r})'
                        for k, old, new in diff)
    raise IncompatibleRunError(
        f'Refusing to resume {cfg.workdir}: flags differ from the run it '
        f'holds: {details}. Pass the same values, or use a new --workdir.')


def _listed_steps(directory: str) -> list[int]:
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _tree(state: server.ServerState) -> dict:
  """What a checkpoint holds of a state (the per-client states only when
  the stage's method keeps some)."""
  tree = {'params': state.params, 'opt_state': state.opt_state}
  if jax.tree.leaves(state.clients):
    tree['clients'] = state.clients
  if jax.tree.leaves(state.dp):   # the (adaptive) clip: a resume goes on
    tree['dp'] = state.dp         # from where the clip was
  return tree


def _abstract_state(exp, round_: int):
  """The shapes of round_'s checkpoint, from the plan of its stage."""
  stage_plan = exp.recipe.plan(exp.model, exp.recipe.stage(round_),
                               exp.population.y.shape[0])
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  return _tree(jax.eval_shape(lambda p: server.init_state(
      stage_plan, p, exp.recipe.hparams()), params))
