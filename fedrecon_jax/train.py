"""The training loop: data -> partition -> stage 1 (generator) -> freeze ->
stage 2 (task), with evaluation, metrics.jsonl, checkpoints and summary.json.

The rounds themselves live in `rounds.py`; this file only sequences them.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np

from fedrecon_jax import checkpoint, data, distributed, evaluation
from fedrecon_jax import memory_plan, metrics_writer, partition, rounds
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
  if cfg.method == 'unimodal':
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


def run(cfg: Config) -> dict:
  """Trains (or resumes) the run in cfg.workdir; returns the summary."""
  exp = build(cfg)
  # Every process of a multi-process run runs this same loop on the same
  # values; process 0 alone writes the workdir's files (orbax coordinates
  # the checkpoints itself).
  primary = jax.process_index() == 0
  if primary:
    os.makedirs(cfg.workdir, exist_ok=True)
  mesh = rounds.make_mesh(cfg.num_devices)
  population = distributed.replicate(exp.population, mesh)
  num_clients = exp.population.y.shape[0]
  key = jax.random.key(cfg.seed)
  evaluate_local = evaluation.make_evaluator(
      cfg, exp.model, exp.test_xs, exp.test_y, exp.test_present,
      exp.test_complete)
  # The evaluator runs on this process's default device: replicated params
  # are fetched to the host first when the mesh spans processes.
  evaluate = (evaluate_local if jax.process_count() == 1 else
              lambda params: evaluate_local(jax.device_get(params)))
  ckpt = checkpoint.Checkpointer(cfg)
  state = ckpt.restore_or_none(exp, cfg)
  if state is None:
    params = jax.jit(exp.model.init)(jax.random.fold_in(key, 0))
    state = {'params': params, 'opt_state': None, 'round': 0}
  # Drops records of rounds after the restored one (a killed run wrote them)
  # and refills any lost ones from the checkpoint: no duplicated rounds.
  writer = metrics_writer.MetricsWriter(cfg.workdir, state['round'],
                                        state.get('metrics', ()), files=primary)
  last_eval = {}
  round_fns = {}
  t_start = time.time()
  for r in range(state['round'] + 1, cfg.total_rounds + 1):
    stage = cfg.stage(r)
    if stage not in round_fns:
      plan = memory_plan.make_round(cfg, exp.model, stage, mesh, num_clients,
                                    state['params'], population)
      round_fns[stage] = (plan.round_fn, plan.tx)
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
    end_of_stage = r == cfg.total_rounds or cfg.stage(r + 1) != stage
    if r % cfg.eval_every == 0 or end_of_stage:
      last_eval = evaluate(params)
      record.update(last_eval)
    record['seconds'] = time.time() - t0
    writer.write(record)
    if primary:
      print(f'round {r}/{cfg.total_rounds} stage {stage} ' + ' '.join(
          f'{k}={v:.4g}' for k, v in record.items()
          if k not in ('round', 'stage')), flush=True)
    ckpt.maybe_save(state, r, writer.records)
  ckpt.close()
  writer.close()
  if not last_eval:
    last_eval = evaluate(state['params'])
  summary = {'config': cfg.to_dict(), 'rounds': cfg.total_rounds,
             'wall_seconds': time.time() - t_start,
             'devices': _devices(),
             **last_eval}
  if exp.unimodal_index is not None:
    summary['unimodal_modality'] = exp.spec.modalities[exp.unimodal_index]
  if cfg.uses_generator:
    summary['zero_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, [0.0] * len(exp.test_xs)).mean())
    summary['mean_fill_mse'] = float(evaluation.fill_mse(
        exp.test_xs, _train_means(exp)).mean())
  if primary:
    # Atomic: a sweep takes an existing summary.json to mean a finished run.
    metrics_writer.write_json_atomic(
        os.path.join(cfg.workdir, 'summary.json'), summary, indent=1)
  return summary


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
