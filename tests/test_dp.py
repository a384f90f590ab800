"""DP-FedAvg (fedrecon_jax/dp.py) against a numpy transcription of McMahan
et al. 2018's server step, and the accountant (privacy.py) against a direct
dp_accounting computation."""

import dataclasses

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import rdp

from fedrecon_jax import dp, privacy, rounds, server
from fedrecon_jax.config import GEN_STAGE, TASK_STAGE
import toy


def _numpy_dp_fedavg(server_params, local, valid, clip, z, denom, noise):
  """Per client: delta, its global norm over all leaves, scale min(1,
  C/norm); sum the valid ones; add z*C*noise; divide by denom."""
  keys = sorted(server_params)
  total = {k: np.zeros_like(server_params[k], np.float64) for k in keys}
  for i in range(len(valid)):
    delta = {k: np.float64(local[k][i]) - server_params[k] for k in keys}
    norm = np.sqrt(sum((d ** 2).sum() for d in delta.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    if valid[i]:
      for k in keys:
        total[k] += scale * delta[k]
  return {k: server_params[k] + (total[k] + z * clip * noise[k]) / denom
          for k in keys}


def _tree(rng, c):
  server_params = {'a': rng.normal(size=(3, 4)).astype(np.float32),
                   'b': rng.normal(size=(5,)).astype(np.float32)}
  local = {k: (v[None] + rng.normal(size=(c,) + v.shape) *
               rng.uniform(0.1, 3.0, size=(c,) + (1,) * v.ndim)
               ).astype(np.float32) for k, v in server_params.items()}
  return server_params, local


def _ones(local):
  """Uniform contribution weights (w_k = 1), leaves [c]."""
  return jax.tree.map(lambda x: jnp.ones(x.shape[:1], jnp.float32), local)


def dp_fedavg_step(key, server_params, local_params, valid, clip,
                   noise_multiplier, denominator):
  """The server's new params through the round's own DP server path
  (dp.client_sums, dp.finish_sums, server.apply_sums with FedAvg's step).

  server_params: pytree [...]; local_params: same tree, leaves [c, ...].
  """
  tx = server.transformation('fedavg', 'sgdm', 1.0, None)
  sums = dp.client_sums(local_params, _ones(local_params), {}, valid,
                        server_params, clip)
  sums = dp.finish_sums(key, server_params, sums, clip, noise_multiplier,
                        denominator)
  return server.apply_sums(server_params,
                           server.init_opt_state(tx, server_params), sums,
                           tx)[0]


# ------------------------------------------------- the round's server path


def test_clip_and_noise_match_numpy():
  rng = np.random.default_rng(0)
  server, local = _tree(rng, 6)
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  key = jax.random.key(3)
  clip, z, denom = 1.5, 0.7, 4.0
  got = dp_fedavg_step(key, server, local, jnp.asarray(valid), clip, z,
                          denom)
  # The same standard normals, drawn the documented way: one vector from
  # the round key over the params raveled (leaves in key order).
  flat = np.asarray(jax.random.normal(key, (17,)))
  noise = {'a': flat[:12].reshape(3, 4), 'b': flat[12:]}
  want = _numpy_dp_fedavg(server, local, valid, clip, z, denom, noise)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5,
                               atol=1e-5)


def test_clipping_is_per_client_not_after_aggregation():
  # A cohort whose mean is small but whose clients are large: clipping after
  # summing would leave the sum nearly untouched.
  server = {'w': np.zeros(2, np.float32)}
  local = {'w': np.array([[10., 0.], [-9., 0.]], np.float32)}
  got = dp_fedavg_step(jax.random.key(0), server, local,
                          jnp.ones(2, bool), 1.0, 0.0, 2.0)
  np.testing.assert_allclose(np.asarray(got['w']), [0.0, 0.0], atol=1e-6)


def test_noise_std_is_zc_over_denominator():
  server = {'w': np.zeros((50,), np.float32)}
  local = {'w': np.zeros((3, 50), np.float32)}
  clip, z, denom = 2.0, 1.3, 7.0
  step = jax.jit(jax.vmap(
      lambda k: dp_fedavg_step(k, server, local, jnp.ones(3, bool), clip,
                                  z, denom)['w']))
  out = np.asarray(step(jax.random.split(jax.random.key(1), 2000)))
  np.testing.assert_allclose(out.std(), z * clip / denom, rtol=0.02)


def test_inf_clip_zero_noise_is_uniform_fedavg_bitwise():
  """C = inf, z = 0: FedAvg's weighted mean with uniform weights (McMahan
  et al. 2018's w_k = 1), bit for bit, with and without a padding client;
  and the plain mean of the clients' params (numpy) to float32 rounding."""
  rng = np.random.default_rng(1)
  server_params, local = _tree(rng, 5)
  tx = server.transformation('fedavg', 'sgdm', 1.0, None)
  for valid in (np.ones(5, bool), np.array([1, 1, 0, 1, 1], bool)):
    got = dp_fedavg_step(jax.random.key(0), server_params, local,
                         jnp.asarray(valid), jnp.inf, 0.0, valid.sum())
    want = server.aggregate(server_params,
                            server.init_opt_state(tx, server_params), local,
                            _ones(local), tx, valid=jnp.asarray(valid))[0]
    for k in server_params:
      np.testing.assert_array_equal(np.asarray(got[k]), np.asarray(want[k]))
      np.testing.assert_allclose(np.asarray(got[k]),
                                 local[k][valid].mean(0), rtol=1e-5,
                                 atol=1e-6)


def test_epsilon_matches_direct_dp_accounting():
  stages = [privacy.Stage(200, 20, 15, 1.1), privacy.Stage(200, 10, 40, 0.9)]
  delta = privacy.default_delta(200)
  acc = rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  for n, k, z in ((15, 20, 1.1), (40, 10, 0.9)):
    acc.compose(dp_accounting.SampledWithoutReplacementDpEvent(
        200, k, dp_accounting.GaussianDpEvent(z / 2)), n)
  assert privacy.epsilon(stages, delta) == pytest.approx(
      acc.get_epsilon(delta), rel=1e-9)
  assert delta == pytest.approx(200 ** -1.1)
  # Monotone in rounds done.
  assert privacy.epsilon(stages, delta, [15, 0]) < privacy.epsilon(
      stages, delta)


def test_target_epsilon_refuses_naming_flag():
  stages = [privacy.Stage(100, 50, 500, 0.5)]
  with pytest.raises(ValueError, match='--dp_target_epsilon=1.0'):
    privacy.check_target(stages, 1e-5, 1.0)


# ------------------------------------------------ inside the compiled round


def _round(stage, **kw):
  cfg = toy.cfg_for(server_opt='fedavg', **kw)
  params = toy.init_params(toy.small_model())
  got, metrics = toy.one_round(cfg, stage, params, toy.make_population(),
                               jax.random.key(5))
  return params, got, metrics


def _uniform_weights(stage_plan):
  """The plan with every client's contribution weights set to 1 (FedAvg
  with McMahan et al. 2018's uniform w_k)."""
  def update(h, trainable, frozen, data, key):
    local, weights, metrics = stage_plan.client_update(h, trainable, frozen,
                                                       data, key)
    return local, jax.tree.map(jnp.ones_like, weights), metrics
  return dataclasses.replace(stage_plan, client_update=update)


@pytest.mark.parametrize('stage, chunk', [(GEN_STAGE, 1), (TASK_STAGE, 0),
                                          (TASK_STAGE, 3)])
def test_round_inf_clip_zero_noise_is_uniform_fedavg_bitwise(stage, chunk):
  """Two rounds of DP-FedAvg with C = inf, z = 0 (cohort 4 of 6) equal
  FedAvg with uniform weights bit for bit: one client a chunk, the whole
  cohort at once, and chunks of 3 (so the second holds a padding client)."""
  params = toy.init_params(toy.small_model())
  population, key = toy.make_population(), jax.random.key(5)
  got = []
  for cfg, change in (
      (toy.cfg_for(server_opt='fedavg', dp_clip=float('inf')), lambda p: p),
      (toy.cfg_for(server_opt='fedavg'), _uniform_weights)):
    round_ = rounds.make_round(change(toy.stage_plan(cfg, stage)),
                               rounds.make_mesh(1), clients_per_chunk=chunk)
    h = cfg.hparams()
    state = round_.init(params, h)
    pop = round_.fill(params, round_.place(population))
    for _ in range(2):
      state, _ = round_(state, pop, key, h)
    got.append(state.params)
  dpavg, fedavg = (jax.tree.leaves(g) for g in got)
  for a, b in zip(dpavg, fedavg):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The rounds trained something (equality is not of untouched params).
  assert any(not np.array_equal(a, b)
             for a, b in zip(dpavg, jax.tree.leaves(params)))


def test_round_noise_is_zc_over_cohort():
  clip, z, cohort = 0.5, 2.0, 4
  params, quiet, _ = _round(1, clients_per_round=cohort, dp_clip=clip)
  _, noisy, _ = _round(1, clients_per_round=cohort, dp_clip=clip,
                       dp_noise_multiplier=z)
  diff = np.concatenate([
      (np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
      for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(quiet))])
  moved = diff[diff != 0]
  assert moved.size > 1000
  np.testing.assert_allclose(moved.std(), z * clip / cohort, rtol=0.05)


def test_runs_axis_mixing_noise_levels_equals_each_run_alone():
  """3 DP runs (own seed, clip C and noise multiplier z, one of them z = 0)
  as one program, two rounds, == each run's own solo rounds: each run draws
  its own noise from its own key at its own scale."""
  params = toy.init_params(toy.small_model())
  cfgs = [toy.cfg_for(seed=i, dp_clip=c, dp_noise_multiplier=z)
          for i, (c, z) in enumerate(((0.3, 0.5), (1.0, 0.0), (3.0, 2.0)))]
  want, (state, metrics), _ = toy.solo_and_grouped(cfgs, GEN_STAGE, params)
  for i, w in enumerate(want):
    toy.leaves_close(jax.tree.map(lambda x, i=i: x[i], (state, metrics)), w)
  # The runs' moves differ in scale as their noise does (z C: 0.15, 0, 6).
  moved = [np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in
                           zip(jax.tree.leaves(w[0].params['map']),
                               jax.tree.leaves(params['map']))]).std()
           for w in want]
  assert moved[1] < moved[0] < moved[2]
