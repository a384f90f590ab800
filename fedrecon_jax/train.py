"""The training loop: data -> partition -> stage 1 (generator) -> freeze ->
stage 2 (task), with evaluation, metrics.jsonl, checkpoints and summary.json.

The rounds themselves live in `rounds.py`; this file only sequences them,
holding the workdir's lock (workdir.py), stopping after a round on SIGTERM
(preemption.py) or when the run diverges (non-finite params, or every
sampled client skipped).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from fedrecon_jax import checkpoint, data, distributed, evaluation
from fedrecon_jax import memory_plan, metrics_writer, partition, preemption
from fedrecon_jax import progress, rounds, workdir
from fedrecon_jax.config import Config
from fedrecon_jax.models import DataSpec, Model


@dataclasses.dataclass(frozen=True)
class Experiment:
  """Everything a run derives from its Config before the first round."""
  cfg: Config
  spec: DataSpec
  model: Model
  population: partition.ClientData   # numpy, [K, max_n, ...]
  test_xs: tuple
  test_y: np.ndarray
  test_present: np.ndarray            # [N_test, M] bool
  test_complete: np.ndarray           # [N_test, M] bool, nothing missing
  unimodal_index: int | None


def _seed(cfg: Config, purpose: int) -> int:
  """Independent integer seeds for the numpy-side random choices."""
  return int(np.random.SeedSequence([cfg.seed, purpose]).generate_state(1)[0])


def build(cfg: Config) -> Experiment:
  cfg.validate()
  ds = data.load(cfg.dataset, data_dir=cfg.data_dir or None,
                 manual_dir=cfg.manual_dir or None)
  spec = DataSpec(ds.modalities, ds.kinds,
                  tuple(x.shape[1:] for x in ds.train.xs), ds.num_classes)
  m = spec.num_modalities
  if cfg.cross_decoding == 'one' and len(set(zip(spec.kinds, spec.shapes))) > 1:
    raise ValueError(f"--cross_decoding='one' needs modalities of one kind "
                     f'and shape; {cfg.dataset} has {spec.shapes}. Use '
                     "--cross_decoding='all'.")
  if cfg.natural_split and ds.train.group is None:
    raise ValueError(f'--natural_split needs a dataset with a grouping key; '
                     f'{cfg.dataset} has none.')
  indices, mmask = partition.make_partition(
      ds.train.y, num_clients=cfg.num_clients, num_modalities=m,
      alpha=cfg.alpha, missing_rate=cfg.missing_rate, seed=cfg.seed,
      min_client_size=cfg.min_client_size,
      per_sample_missing=cfg.per_sample_missing,
      groups=ds.train.group if cfg.natural_split else None)
  test_present = partition.sample_modality_mask(
      len(ds.test.y), m, cfg.missing_rate, seed=_seed(cfg, 1))
  test_complete = np.ones_like(test_present)
  uni = None
  if cfg.method_spec.task_view == 'one_modality':
    uni = _unimodal_index(cfg, ds)
    # The unimodal baseline sees only its modality: clients without it hold
    # no usable sample, and the fusion attends to that modality alone.
    keep = np.zeros(m, bool)
    keep[uni] = True
    mmask = mmask & keep
    test_present = test_present & keep
    test_complete = test_complete & keep
  population = partition.stack_clients(ds.train.xs, ds.train.y, indices, mmask,
                                       per_sample=cfg.per_sample_missing)
  if uni is not None:
    has = population.modality_mask[..., uni]
    population = population.replace(sample_mask=population.sample_mask & has,
                                    num_samples=has.sum(1).astype(np.int32))
  model = Model(spec, latent_dim=cfg.latent_dim, gen_width=cfg.gen_width,
                map_width=cfg.map_width, task_width=cfg.task_width)
  return Experiment(cfg, spec, model, population, ds.test.xs, ds.test.y,
                    test_present, test_complete, uni)


def _unimodal_index(cfg: Config, ds) -> int:
  if cfg.unimodal_modality != 'best':
    if cfg.unimodal_modality not in ds.modalities:
      raise ValueError(f'--unimodal_modality={cfg.unimodal_modality!r} is not '
                       f"one of {ds.modalities} or 'best'.")
    return ds.modalities.index(cfg.unimodal_modality)
  # 'best': a ridge probe per modality on a held-out fifth of the train split.
  n = len(ds.train.y)
  perm = np.random.default_rng(_seed(cfg, 2)).permutation(n)
  tr, va = perm[: 4 * n // 5], perm[4 * n // 5:]
  y = ds.train.y
  scores = [evaluation.ridge_probe_accuracy(x[tr], y[tr], x[va], y[va],
                                            ds.num_classes) for x in ds.train.xs]
  return int(np.argmax(scores))


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
  cfg.validate()
  use_compilation_cache(cfg.compilation_cache)
  # Every process of a multi-process run runs this same loop on the same
  # values; process 0 alone writes the workdir's files (orbax coordinates
  # the checkpoints itself), so it alone holds the lock.
  primary = jax.process_index() == 0
  with workdir.writer_lock(cfg.workdir, enabled=primary):
    return _run_locked(cfg, build(cfg), primary)


def _run_locked(cfg: Config, exp: Experiment, primary: bool) -> dict:
  mesh = rounds.make_mesh(cfg.num_devices)
  evaluate_local = evaluation.make_evaluator(
      cfg, exp.model, exp.test_xs, exp.test_y, exp.test_present,
      exp.test_complete)
  # The evaluator runs on this process's default device: replicated params
  # are fetched to the host first when the mesh spans processes.
  evaluate = (evaluate_local if jax.process_count() == 1 else
              lambda params: evaluate_local(jax.device_get(params)))
  if primary:  # before anything is written, not at the first save
    workdir.check_free_space(cfg.workdir, _checkpoint_bytes(exp, cfg),
                             cfg.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(cfg)
  state = ckpt.restore_or_none(exp, cfg)
  if state is None:
    params = jax.jit(exp.model.init)(
        jax.random.fold_in(jax.random.key(cfg.seed), 0))
    state = {'params': params, 'opt_state': None, 'round': 0}
  # Drops records of rounds after the restored one (a killed run wrote them)
  # and refills any lost ones from the checkpoint: no duplicated rounds.
  writer = metrics_writer.MetricsWriter(cfg.workdir, state['round'],
                                        state.get('metrics', ()), files=primary)
  t_start = time.time()
  try:
    with preemption.StopSignal() as stop:
      state, outcome = _rounds(cfg, exp, mesh, state, evaluate, ckpt, writer,
                               stop, primary)
  finally:
    ckpt.close()
    writer.close()
  if outcome.preempted_by:
    raise preemption.Preempted(state['round'], outcome.preempted_by)
  if outcome.diverged is not None:
    summary = _diverged_summary(cfg, outcome, time.time() - t_start)
  else:
    summary = _summary(cfg, exp, outcome.last_eval or evaluate(state['params']),
                       time.time() - t_start)
  if primary:
    workdir.write_summary(cfg.workdir, summary)
  return summary


@dataclasses.dataclass
class _Outcome:
  """How the loop ended."""
  last_eval: dict = dataclasses.field(default_factory=dict)
  last_finite_eval: dict | None = None   # with its 'round'
  diverged: tuple[int, str] | None = None  # (round, why)
  preempted_by: str | None = None          # signal name


# What JAX spends producing programs: tracing, lowering, XLA compiles and
# persistent-cache loads.
_COMPILE_EVENTS = frozenset({
    '/jax/core/compile/jaxpr_trace_duration',
    '/jax/core/compile/jaxpr_to_mlir_module_duration',
    '/jax/core/compile/backend_compile_duration',
    '/jax/compilation_cache/cache_retrieval_time_sec'})
_compile_seconds = [0.0]   # this process's total, summed by the listener


def _on_event(event: str, duration: float, **unused) -> None:
  if event in _COMPILE_EVENTS:
    _compile_seconds[0] += duration


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _rounds(cfg, exp, mesh, state, evaluate, ckpt, writer, stop, primary):
  """Runs rounds state['round'] + 1 .. total; returns (state, _Outcome)."""
  population = distributed.replicate(exp.population, mesh)
  num_clients = exp.population.y.shape[0]
  key = jax.random.key(cfg.seed)
  outcome = _Outcome(last_finite_eval=_last_eval(writer.records))
  progress_ = progress.RunProgress(cfg)
  round_fns = {}
  for r in range(state['round'] + 1, cfg.total_rounds + 1):
    stage = cfg.stage(r)
    compiled_before = _compile_seconds[0]
    if stage not in round_fns:
      round_fns[stage] = _make_round(cfg, exp, stage, mesh, num_clients,
                                     state['params'], population)
    round_fn, tx = round_fns[stage]
    if state['opt_state'] is None or cfg.stage(r - 1) != stage:
      state['opt_state'] = rounds.init_server_opt(tx, state['params'], cfg,
                                                  stage)
    # Same placement as the round's outputs (a no-op after the first round),
    # so every round of a stage reuses one compiled program.
    params, opt_state, round_key = distributed.replicate(
        (state['params'], state['opt_state'], jax.random.fold_in(key, r)),
        mesh)
    t0 = time.time()
    params, opt_state, metrics = round_fn(params, opt_state, population,
                                          round_key)
    state = {'params': params, 'opt_state': opt_state, 'round': r}
    record = {'round': r, 'stage': stage,
              **{k: float(v) for k, v in metrics.items()}}
    record['skipped_clients'] = int(metrics['skipped_clients'])
    record['participants'] = int(metrics['participants'])
    why = _divergence(params, record['skipped_clients'],
                      record['participants'])
    end_of_stage = r == cfg.total_rounds or cfg.stage(r + 1) != stage
    if why is None and (r % cfg.eval_every == 0 or end_of_stage):
      outcome.last_eval = evaluate(params)
      record.update(outcome.last_eval)
      if all(math.isfinite(v) for v in outcome.last_eval.values()):
        outcome.last_finite_eval = {'round': r, **outcome.last_eval}
    record['seconds'] = time.time() - t0
    if _compile_seconds[0] > compiled_before:   # a stage's first round
      record['compile_seconds'] = _compile_seconds[0] - compiled_before
    writer.write(record)
    if primary:
      print(f'round {r}/{cfg.total_rounds} stage {stage} '
            f'{progress_.round_done(r)} ' + ' '.join(
                f'{k}={v:.4g}' for k, v in record.items()
                if k not in ('round', 'stage')), flush=True)
    if why is not None:  # no checkpoint of non-finite params
      outcome.diverged = (r, why)
      break
    # Asked every round on every process: the multi-process sync point
    # counts the calls.
    stop_now = stop.requested(r) and r < cfg.total_rounds
    ckpt.maybe_save(state, r, writer.records, force=stop_now)
    if stop_now:
      outcome.preempted_by = stop.signame
      break
  return state, outcome


def _make_round(cfg, exp, stage, mesh, num_clients, params, population):
  """(round_fn, server tx) of a stage, chunked as --clients_per_device says."""
  plan = memory_plan.make_round(cfg, exp.model, stage, mesh, num_clients,
                                params, population)
  if cfg.chunk_setting == 'auto' and jax.process_index() == 0:
    print(f'stage {stage}: clients_per_device='
          f'{plan.clients_per_device or "all"} '
          f'({plan.program_bytes / 1e9:.3g} GB of '
          f'{plan.budget_bytes / 1e9:.3g} GB per device)', flush=True)
  return plan.round_fn, plan.tx


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.isfinite(x).all()
                            for x in jax.tree.leaves(tree)]))


def _divergence(params, skipped: int, participants: int) -> str | None:
  """Why the run cannot go on after this round, or None."""
  if not bool(_all_finite(params)):
    return 'the global params are non-finite'
  if participants and skipped >= participants:
    return (f'every client that trained this round ({participants}) was '
            'skipped for a non-finite update')
  return None


# What an evaluation adds to a round's record (see evaluation.make_evaluator).
_EVAL_KEYS = ('f1_macro', 'accuracy', 'f1_macro_complete', 'accuracy_complete',
              'recon_mse')


def _last_eval(records) -> dict | None:
  """The last finite evaluation among restored records, with its round."""
  for rec in reversed(records):
    found = {k: rec[k] for k in _EVAL_KEYS if k in rec}
    if found and all(math.isfinite(v) for v in found.values()):
      return {'round': rec['round'], **found}
  return None


def _summary(cfg: Config, exp: Experiment, last_eval: dict,
             seconds: float) -> dict:
  summary = {'config': cfg.to_dict(), 'rounds': cfg.total_rounds,
             'wall_seconds': seconds, 'devices': _devices(), **last_eval}
  if exp.unimodal_index is not None:
    summary['unimodal_modality'] = exp.spec.modalities[exp.unimodal_index]
  if cfg.uses_generator:
    summary['zero_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, [0.0] * len(exp.test_xs)).mean())
    summary['mean_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, _train_means(exp)).mean())
  return summary


def _diverged_summary(cfg: Config, outcome: _Outcome, seconds: float) -> dict:
  """No top-level metrics, so nothing averages a diverged run by mistake."""
  round_, why = outcome.diverged
  logging.warning('Run %s diverged at round %d: %s.', cfg.workdir, round_, why)
  return {'config': cfg.to_dict(), 'rounds': cfg.total_rounds,
          'diverged_at_round': round_, 'diverged_because': why,
          'last_finite_eval': outcome.last_finite_eval,
          'wall_seconds': seconds, 'devices': _devices()}


def _checkpoint_bytes(exp: Experiment, cfg: Config) -> int:
  """Size of one checkpoint: params plus the largest server state."""
  params = jax.eval_shape(exp.model.init, jax.random.key(0))
  n = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  # Adam-like server states hold two more copies; metrics ride in the meta.
  return 3 * n + 4096 * cfg.total_rounds


def _devices() -> str:
  """'1 x NVIDIA H100 80GB HBM3', '1 x cpu (2 cores)': where the run ran."""
  kind = jax.devices()[0].device_kind
  cores = f' ({os.cpu_count()} cores)' if jax.default_backend() == 'cpu' else ''
  return f'{jax.device_count()} x {kind}{cores}'


def _train_means(exp: Experiment):
  """Per-modality mean over the real, present training samples."""
  out = []
  for i, x in enumerate(exp.population.xs):
    w = (exp.population.sample_mask & exp.population.modality_mask[..., i])
    w = w.reshape(*w.shape, *[1] * (x.ndim - 2)).astype(np.float64)
    out.append((x * w).sum((0, 1)) / max(w.sum(), 1.0))
  return out
