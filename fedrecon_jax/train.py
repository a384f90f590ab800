"""The training loop: data -> partition -> stage 1 (generator) -> freeze ->
stage 2 (task), with evaluation, metrics.jsonl, checkpoints and summary.json.

The rounds themselves live in `rounds.py`; this file only sequences them,
holding the workdir's lock (workdir.py), stopping after a round on SIGTERM
(preemption.py) or when the run diverges (non-finite params, or every
sampled client skipped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from typing import Any, Sequence

from absl import logging
import jax
import numpy as np

from fedrecon_jax import checkpoint, compile_stats, config, evaluation
from fedrecon_jax import experiment, memory_plan, metrics_writer, partition
from fedrecon_jax import preemption, privacy, progress, recipe, rounds, server
from fedrecon_jax import workdir
from fedrecon_jax.config import Config
from fedrecon_jax.methods import TASK_STAGE


def use_compilation_cache(setting: str) -> str:
  """Points JAX's persistent compilation cache at `setting` (see
  --compilation_cache); returns the directory in use ('' = off). Call before
  the process compiles anything: JAX opens the cache once."""
  if setting == 'default':
    setting = os.environ.get('JAX_COMPILATION_CACHE_DIR') or os.path.join(
        os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'),
        'fedrecon_jax', 'xla')
  jax.config.update('jax_compilation_cache_dir', setting or None)
  jax.config.update('jax_enable_compilation_cache', bool(setting))
  return setting


def run(cfg: Config) -> dict:
  """Trains (or resumes) the run in cfg.workdir; returns the summary.

  Raises workdir.WorkdirBusyError if another process writes cfg.workdir,
  workdir.WorkdirError if it cannot be written, preemption.Preempted after
  saving the round a SIGTERM / SIGINT interrupted. A diverged run returns
  (and writes) a summary with 'diverged_at_round'.
  """
  return run_group([cfg])[0]


def run_group(cfgs: Sequence[Config]) -> list[dict]:
  """Trains (or resumes) runs that share one program as one: every round of
  all of them is one compiled program (rounds.make_round's runs axis).

  The runs may differ only in the fields of config.PER_RUN_FIELDS (seed,
  missing_rate, alpha, the HPARAMS numbers, workdir); each keeps its own
  workdir, written as a solo run writes it (a cell of a group can be resumed
  alone, and the other way round). Returns the summaries in order; raises as
  `run` does. A run that diverges stops being logged; the others go on.
  """
  keys = {recipe.of(recipe.validate(cfg)).program_key for cfg in cfgs}
  if len(keys) > 1:
    raise ValueError('run_group: the runs differ in a setting that shapes '
                     'the program; only ' + ', '.join(config.PER_RUN_FIELDS)
                     + ' may differ.')
  if len({cfg.workdir for cfg in cfgs}) < len(cfgs):
    raise ValueError('run_group: two runs share a --workdir.')
  if len(cfgs) > 1 and jax.process_count() > 1:
    raise ValueError('A group of runs runs in one process; multi-process '
                     'runs train one run each.')
  use_compilation_cache(cfgs[0].compilation_cache)
  # Every process of a multi-process run runs this same loop on the same
  # values; process 0 alone writes the workdir's files (orbax coordinates
  # the checkpoints itself), so it alone holds the lock.
  primary = jax.process_index() == 0
  with contextlib.ExitStack() as locks:
    for cfg in cfgs:
      locks.enter_context(workdir.writer_lock(cfg.workdir, enabled=primary))
    runs = [_Run(cfg, experiment.build(cfg)) for cfg in cfgs]
    return _run_locked(runs, primary)


@dataclasses.dataclass
class _Run:
  """One run of a group and how it ended."""
  cfg: Config
  exp: experiment.Experiment
  evaluate: Any = None
  ckpt: Any = None
  writer: Any = None
  last_eval: dict = dataclasses.field(default_factory=dict)
  last_finite_eval: dict | None = None   # with its 'round'
  diverged: tuple[int, str] | None = None  # (round, why)


def _run_locked(runs: list[_Run], primary: bool) -> list[dict]:
  cfg = runs[0].cfg                 # what the runs share
  stacked = len(runs) > 1
  mesh = rounds.make_mesh(cfg.num_devices, runs=len(runs) if stacked else 0)
  t_start = time.time()
  try:
    state = _start(runs, primary)
    with preemption.StopSignal() as stop:
      state, preempted_by = _rounds(runs, mesh, state, stop, primary)
  finally:
    for run_ in runs:
      for closing in (run_.ckpt, run_.writer):
        if closing is not None:
          closing.close()
  if preempted_by:
    raise preemption.Preempted(int(_take(state, 0, stacked).round),
                               preempted_by)
  summaries = []
  for i, run_ in enumerate(runs):
    seconds = time.time() - t_start
    if run_.diverged is not None:
      summary = _diverged_summary(run_, seconds)
    else:
      final = _take(state, i, stacked)
      last = run_.exp.recipe.total_rounds
      summary = _summary(run_.cfg, run_.exp, run_.last_eval or run_.evaluate(
          final.params, run_.exp.recipe.stage(last), final.clients), seconds)
    if primary:
      workdir.write_summary(run_.cfg.workdir, summary)
    summaries.append(summary)
  return summaries


def _start(runs: list[_Run], primary: bool) -> server.ServerState:
  """Opens each run's evaluator, checkpoints and metrics; returns the state
  the group starts from (stacked over runs if several): the latest round
  every run has a checkpoint of, or fresh params."""
  for run_ in runs:
    cfg, exp = run_.cfg, run_.exp
    evaluate = evaluation.make_evaluator(
        exp.recipe.plan(exp.model, TASK_STAGE, exp.population.y.shape[0]),
        exp.model, exp.test_xs, exp.test_y, exp.test_present,
        exp.test_complete, local_test=exp.local_test)
    # The evaluator runs on this process's default device: replicated
    # params are fetched to the host first when the mesh spans processes.
    run_.evaluate = (evaluate if jax.process_count() == 1 else
                     lambda params, stage, clients, f=evaluate: f(
                         *jax.device_get((params, stage, clients))))
    if exp.recipe.dp:   # refuses an over-budget schedule, writing nothing
      privacy.check_run(exp.recipe, exp.population.y.shape[0])
    if primary:  # before anything is written, not at the first save
      workdir.check_free_space(cfg.workdir, _checkpoint_bytes(exp),
                               cfg.keep_checkpoints)
    run_.ckpt = checkpoint.Checkpointer(cfg)
  restored = [r.ckpt.restore_or_none(r.exp, r.cfg) for r in runs]
  common = min(0 if x is None else int(x[0].round) for x in restored)
  if any((0 if x is None else int(x[0].round)) != common for x in restored):
    # A group killed between its runs' saves: all go back to one round.
    restored = [r.ckpt.restore_or_none(r.exp, r.cfg, max_round=common)
                for r in runs]
  states = []
  for run_, got in zip(runs, restored):
    if got is None:
      params = run_.exp.model.init_params(
          jax.random.fold_in(jax.random.key(run_.cfg.seed), 0))
      # No server optimizer state yet: the loop starts the stage's.
      got = server.ServerState(params, (), np.int32(0)), ()
    states.append(got[0])
    # Drops records of rounds after the restored one (a killed run wrote
    # them) and refills lost ones from the checkpoint: no duplicated rounds.
    run_.writer = metrics_writer.MetricsWriter(
        run_.cfg.workdir, int(got[0].round), got[1], files=primary)
    run_.last_finite_eval = _last_eval(run_.writer.records)
  if len(runs) == 1:
    return states[0]
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *states)


def _take(tree, i: int, stacked: bool):
  """Run i's slice of a (stacked) pytree."""
  return jax.tree.map(lambda x: x[i], tree) if stacked else tree


def _stack(trees: list, stacked: bool):
  if not stacked:
    return trees[0]
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _rounds(runs: list[_Run], mesh, state, stop, primary):
  """Runs rounds state.round + 1 .. total of every run; returns (state,
  the signal that stopped it or None)."""
  cfg, stacked, recipe_ = runs[0].cfg, len(runs) > 1, runs[0].exp.recipe
  # Shapes bucketed: max_n rounded up to whole batches adds no local step,
  # so runs (and seeds) whose clients need as many steps share a program.
  max_n = max(r.exp.population.y.shape[1] for r in runs)
  max_n = -(-max_n // cfg.batch_size) * cfg.batch_size
  population = rounds.place(_stack(
      [partition.pad_clients(r.exp.population, max_n) for r in runs],
      stacked), mesh, stacked)
  key = _stack([jax.random.key_data(jax.random.key(r.cfg.seed)) for r in runs],
               stacked)
  key = jax.random.wrap_key_data(key)
  h = _stack([r.exp.recipe.hparams() for r in runs], stacked)
  progress_ = progress.RunProgress(recipe_)
  round_fns = {}   # stage -> (its round program, the population it reads)
  start = int(_take(state, 0, stacked).round)
  for r in range(start + 1, recipe_.total_rounds + 1):
    stage = recipe_.stage(r)
    compiled_before = compile_stats.snapshot()
    if stage not in round_fns:
      round_fns[stage] = _stage_round(runs, stage, mesh, state.params,
                                      population, h)
    round_fn, stage_population = round_fns[stage]
    # A fresh run (no optimizer or client state; re-starting an empty one,
    # as fedavg's, changes nothing), or a stage's first round.
    if (r == start + 1 and not jax.tree.leaves((state.opt_state,
                                                state.clients, state.dp))
        or recipe_.stage(r - 1) != stage):
      state = round_fn.init(state.params, h, r - 1)
    t0 = time.time()
    state, metrics = round_fn(state, stage_population, key, h)
    metrics = jax.device_get(metrics)
    compile_s = (compile_stats.snapshot()
                 - compiled_before).producing_seconds
    for i, run_ in enumerate(runs):
      if run_.diverged is None:
        _log_round(run_, r, stage, _take(metrics, i, stacked),
                   _take(state, i, stacked), t0, compile_s,
                   progress_.round_done(r) if i == 0 else None,
                   primary, stacked)
    if all(run_.diverged for run_ in runs):
      break
    # Asked every round on every process: the multi-process sync point
    # counts the calls.
    stop_now = stop.requested(r) and r < recipe_.total_rounds
    for i, run_ in enumerate(runs):
      if run_.diverged is None:   # no checkpoint of non-finite params
        run_.ckpt.maybe_save(_take(state, i, stacked), r,
                             run_.writer.records, force=stop_now)
    if stop_now:
      return state, stop.signame
  return state, None


def _log_round(run_: _Run, r: int, stage: int, metrics, state, t0: float,
               compile_s: float, progress_text: str | None, primary: bool,
               stacked: bool) -> None:
  """Evaluates if due, writes and prints round r's record of one run."""
  cfg, recipe_ = run_.cfg, run_.exp.recipe
  metrics = dict(metrics)
  params_finite = bool(metrics.pop('params_finite'))
  record = {'round': r, 'stage': stage,
            **{k: float(v) for k, v in metrics.items()}}
  for k in ('skipped_clients', 'participants', 'cohort_overflow'):
    if k in metrics:
      record[k] = int(metrics[k])
  why = _divergence(params_finite, record['skipped_clients'],
                    record['participants'])
  if record.get('cohort_overflow'):
    logging.warning('Round %d: %d Poisson-sampled clients past the cohort '
                    'capacity were left out.', r, record['cohort_overflow'])
  if recipe_.dp:
    record = privacy.private_record(record, cfg.dp_log_nonprivate)
    record['epsilon'] = privacy.epsilon_after(
        recipe_, run_.exp.population.y.shape[0], r)
  end_of_stage = (r == recipe_.total_rounds
                  or recipe_.stage(r + 1) != stage)
  if why is None and (r % cfg.eval_every == 0 or end_of_stage):
    run_.last_eval = run_.evaluate(state.params, stage, state.clients)
    record.update(run_.last_eval)
    if all(math.isfinite(v) for v in run_.last_eval.values()):
      run_.last_finite_eval = {'round': r, **run_.last_eval}
  record['seconds'] = time.time() - t0
  if compile_s > 0:   # a stage's first round
    record['compile_seconds'] = compile_s
  run_.writer.write(record)
  if primary:
    who = f'{os.path.basename(cfg.workdir.rstrip("/"))}: ' if stacked else ''
    print(f'{who}round {r}/{recipe_.total_rounds} stage {stage} '
          f'{progress_text or ""} ' + ' '.join(
              f'{k}={v:.4g}' for k, v in record.items()
              if k not in ('round', 'stage')), flush=True)
  if why is not None:
    run_.diverged = (r, why)


def _stage_round(runs, stage, mesh, params, population, h):
  """A stage's round program, chunked as --clients_per_device says, and
  the population it reads (filled by the frozen generator if it needs)."""
  cfg, exp = runs[0].cfg, runs[0].exp
  stage_plan = exp.recipe.plan(exp.model, stage, exp.population.y.shape[0])
  num_runs = len(runs) if len(runs) > 1 else 0   # 0: no runs axis
  population = rounds.fill_population(stage_plan, mesh, num_runs, params,
                                      population)
  # The state's buffers are donated to the next state: not held twice.
  chosen = memory_plan.choose_round(stage_plan, mesh, params, population, h,
                                    runs=num_runs, cfg=cfg, donate=True)
  if cfg.chunk_setting == 'auto' and jax.process_index() == 0:
    print(f'stage {stage}: clients_per_device='
          f'{chosen.clients_per_device or "all"} '
          f'({chosen.program_bytes / 1e9:.3g} GB of '
          f'{chosen.budget_bytes / 1e9:.3g} GB per device)', flush=True)
  return chosen.round, population


def _divergence(params_finite: bool, skipped: int,
                participants: int) -> str | None:
  """Why the run cannot go on after this round, or None."""
  if not params_finite:
    return 'the global params are non-finite'
  if participants and skipped >= participants:
    return (f'every client that trained this round ({participants}) was '
            'skipped for a non-finite update')
  return None


# What an evaluation adds to a round's record (see evaluation.make_evaluator).
_EVAL_KEYS = ('f1_macro', 'accuracy', 'f1_macro_complete', 'accuracy_complete',
              'local_f1_macro', 'personal_f1_macro', 'recon_mse')


def _last_eval(records) -> dict | None:
  """The last finite evaluation among restored records, with its round."""
  for rec in reversed(records):
    found = {k: rec[k] for k in _EVAL_KEYS if k in rec}
    if found and all(math.isfinite(v) for v in found.values()):
      return {'round': rec['round'], **found}
  return None


def _summary(cfg: Config, exp: experiment.Experiment, last_eval: dict,
             seconds: float) -> dict:
  total = exp.recipe.total_rounds
  summary = {'config': cfg.to_dict(), 'rounds': total,
             'wall_seconds': seconds, 'devices': _devices(), **last_eval}
  if exp.recipe.dp:
    k = exp.population.y.shape[0]
    summary['epsilon'] = privacy.epsilon_after(exp.recipe, k, total)
    summary['dp_delta'] = privacy.run_delta(cfg, k)
  if exp.kept is not None:
    summary['modalities_kept'] = [
        m for m, k in zip(exp.spec.modalities, exp.kept) if k]
  if exp.recipe.generator is not None:
    summary['zero_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, [0.0] * len(exp.test_xs)).mean())
    summary['mean_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, experiment.train_means(exp)).mean())
  return summary


def _diverged_summary(run_: _Run, seconds: float) -> dict:
  """No top-level metrics, so nothing averages a diverged run by mistake."""
  cfg, (round_, why) = run_.cfg, run_.diverged
  logging.warning('Run %s diverged at round %d: %s.', cfg.workdir, round_, why)
  return {'config': cfg.to_dict(), 'rounds': run_.exp.recipe.total_rounds,
          'diverged_at_round': round_, 'diverged_because': why,
          'last_finite_eval': run_.last_finite_eval,
          'wall_seconds': seconds, 'devices': _devices()}


def _checkpoint_bytes(exp: experiment.Experiment) -> int:
  """Size of one checkpoint: params plus the largest server state."""
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  n = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  # Adam-like server states hold two more copies; metrics ride in the meta.
  return 3 * n + 4096 * exp.recipe.total_rounds


def _devices() -> str:
  """'1 x NVIDIA H100 80GB HBM3', '1 x cpu (2 cores)': where the run ran."""
  kind = jax.devices()[0].device_kind
  cores = f' ({os.cpu_count()} cores)' if jax.default_backend() == 'cpu' else ''
  return f'{jax.device_count()} x {kind}{cores}'
