"""DP-FedAvg (fedrecon_jax/dp.py) against a numpy transcription of McMahan
et al. 2018's server step, and the accountant (privacy.py) against a direct
dp_accounting computation."""

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import rdp

from fedrecon_jax import dp, privacy
import toy


def _numpy_dp_fedavg(server, local, valid, clip, z, denom, noise):
  """Per client: delta, its global norm over all leaves, scale min(1,
  C/norm); sum the valid ones; add z*C*noise; divide by denom."""
  keys = sorted(server)
  total = {k: np.zeros_like(server[k], np.float64) for k in keys}
  for i in range(len(valid)):
    delta = {k: np.float64(local[k][i]) - server[k] for k in keys}
    norm = np.sqrt(sum((d ** 2).sum() for d in delta.values()))
    scale = min(1.0, clip / norm) if norm > 0 else 1.0
    if valid[i]:
      for k in keys:
        total[k] += scale * delta[k]
  return {k: server[k] + (total[k] + z * clip * noise[k]) / denom
          for k in keys}


def _tree(rng, c):
  server = {'a': rng.normal(size=(3, 4)).astype(np.float32),
            'b': rng.normal(size=(5,)).astype(np.float32)}
  local = {k: (v[None] + rng.normal(size=(c,) + v.shape) *
               rng.uniform(0.1, 3.0, size=(c,) + (1,) * v.ndim)
               ).astype(np.float32) for k, v in server.items()}
  return server, local


def dp_fedavg_step(key, server_params, local_params, valid, clip,
                   noise_multiplier, denominator):
  """The server's new params: server + noisy mean of clipped deltas (dp's
  pieces as the round composes them, on whole pytrees).

  server_params: pytree [...]; local_params: same tree, leaves [c, ...].
  """
  deltas = jax.tree.map(lambda l, s: l - s[None], local_params,
                        server_params)
  mean = dp.noisy_mean(key, dp.clipped_sum(deltas, valid, clip), clip,
                    noise_multiplier, denominator)
  return jax.tree.map(lambda s, m: (s + m).astype(s.dtype), server_params,
                      mean)


# ------------------------------------------------- the round's server path


def test_clip_and_noise_match_numpy():
  rng = np.random.default_rng(0)
  server, local = _tree(rng, 6)
  valid = np.array([1, 1, 1, 1, 1, 0], bool)
  key = jax.random.key(3)
  clip, z, denom = 1.5, 0.7, 4.0
  got = dp_fedavg_step(key, server, local, jnp.asarray(valid), clip, z,
                          denom)
  # The same standard normals, drawn the documented way: one key per leaf,
  # split from the round key in leaf order.
  ks = jax.random.split(key, 2)
  noise = {'a': np.asarray(jax.random.normal(ks[0], (3, 4))),
           'b': np.asarray(jax.random.normal(ks[1], (5,)))}
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


def test_inf_clip_zero_noise_is_unweighted_mean():
  rng = np.random.default_rng(1)
  server, local = _tree(rng, 4)
  got = dp_fedavg_step(jax.random.key(0), server, local,
                          jnp.ones(4, bool), jnp.inf, 0.0, 4.0)
  for k in server:
    np.testing.assert_allclose(np.asarray(got[k]), local[k].mean(0),
                               rtol=1e-5, atol=1e-6)


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


def test_round_no_clip_no_noise_is_fedavg_of_one_client():
  # One client a round: FedAvg's weighted mean is that client's params, and
  # so is server + (its delta) / 1 with C = inf, z = 0.
  _, fedavg, _ = _round(1, clients_per_round=1)
  _, dpavg, _ = _round(1, clients_per_round=1, dp_clip=float('inf'))
  for a, b in zip(jax.tree.leaves(fedavg), jax.tree.leaves(dpavg)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                               atol=1e-6)


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
