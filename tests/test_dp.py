"""DP-FedAvg (fedrecon_jax/dp.py) against a numpy transcription of McMahan
et al. 2018's server step and Andrew et al. 2021's adaptive clip; the
Poisson cohort (sampling.py) against numpy and a Python-loop round. The
accountant's tests are in test_privacy.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fedrecon_jax import dp, param_groups, rounds, sampling, server
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
from fedrecon_jax.hparams import Hparams
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


def test_group_denominators_mask_clip_and_divide_by_trainers():
  """--dp_denominator=group with exact counts (mu = 0, z = 0): a client's
  update counts only where its weight is > 0 (also in its norm), and each
  entry is divided by the clients that trained its class; numpy
  transcription. Leaf 'a' is class 0, 'b' class 1; client 1 leaves 'a'
  untrained and client 2 'b', though their local params moved there."""
  rng = np.random.default_rng(1)
  server_params, local = _tree(rng, 4)
  weights = {'a': jnp.array([1., 0., 3., 1.]), 'b': jnp.array([2., 1., 0., 1.])}
  valid = jnp.ones(4, bool)
  clip, ids = 2.0, np.array([0, 1], np.int32)
  tx = server.transformation('fedavg', 'sgdm', 1.0, None)
  sums = dp.client_sums(local, weights, {}, valid, server_params, clip, ids)
  sums = dp.finish_sums(jax.random.key(0), server_params, sums, clip, 0.0,
                        4.0, ids, 0.0)
  got = server.apply_sums(server_params,
                          server.init_opt_state(tx, server_params), sums,
                          tx)[0]
  trains = {k: np.asarray(w) > 0 for k, w in weights.items()}
  total = {k: np.zeros_like(v, np.float64) for k, v in server_params.items()}
  for i in range(4):
    delta = {k: (np.float64(local[k][i]) - server_params[k]) * trains[k][i]
             for k in server_params}
    norm = np.sqrt(sum((d ** 2).sum() for d in delta.values()))
    for k in total:
      total[k] += min(1.0, clip / norm) * delta[k]
  for k in total:
    np.testing.assert_allclose(
        np.asarray(got[k]), server_params[k] + total[k] / trains[k].sum(),
        rtol=1e-5, atol=1e-6)


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


# ------------------------------------------------ inside the compiled round


def _round(stage, **kw):
  cfg = toy.cfg_for(server_opt='fedavg', **kw)
  params = toy.init_params(toy.small_model())
  got, metrics = toy.one_round(cfg, stage, params, toy.make_population(),
                               jax.random.key(5))
  return params, got, metrics


def _uniform_weights(stage_plan, denominator):
  """The plan with every client's contribution weights set to 1 (FedAvg
  with McMahan et al. 2018's uniform w_k), or for per-group denominators
  to 1 where it trained and 0 where not."""
  def update(h, trainable, frozen, data, key):
    local, weights, metrics = stage_plan.client_update(h, trainable, frozen,
                                                       data, key)
    one = ((lambda w: (w > 0).astype(w.dtype)) if denominator == 'group'
           else jnp.ones_like)
    return local, jax.tree.map(one, weights), metrics
  return dataclasses.replace(stage_plan, client_update=update)


# One case in the default tier, the others in the slow tier (~15 s each).
@pytest.mark.parametrize('denominator', ['fixed', 'group'])
@pytest.mark.parametrize('stage, chunk', [
    pytest.param(GEN_STAGE, 1, marks=pytest.mark.slow), (TASK_STAGE, 0),
    pytest.param(TASK_STAGE, 3, marks=pytest.mark.slow)])
def test_round_inf_clip_zero_noise_is_uniform_fedavg_bitwise(
    stage, chunk, denominator):
  """Two rounds of DP-FedAvg with C = inf, z = 0 (cohort 4 of 6) equal
  FedAvg with uniform weights bit for bit: one client a chunk, the whole
  cohort at once, and chunks of 3 (so the second holds a padding client).
  With per-group denominators and exact counts, FedAvg weighting each
  client 1 on the entries it trained."""
  params = toy.init_params(toy.small_model())
  population, key = toy.make_population(), jax.random.key(5)
  got = []
  for cfg, change in (
      (toy.cfg_for(server_opt='fedavg', dp_clip=float('inf'),
                   dp_denominator=denominator, dp_group_count_multiplier=0.0),
       lambda p: p),
      (toy.cfg_for(server_opt='fedavg'),
       lambda p: _uniform_weights(p, denominator))):
    round_ = rounds.make_round(change(toy.stage_plan(cfg, stage)),
                               rounds.make_mesh(1), clients_per_chunk=chunk)
    h = Hparams.of(cfg)
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
  # The fixed denominator: every entry's noise is then z C / D.
  params, quiet, _ = _round(1, clients_per_round=cohort, dp_clip=clip,
                            dp_denominator='fixed')
  _, noisy, _ = _round(1, clients_per_round=cohort, dp_clip=clip,
                       dp_noise_multiplier=z, dp_denominator='fixed')
  diff = np.concatenate([
      (np.asarray(a, np.float64) - np.asarray(b, np.float64)).ravel()
      for a, b in zip(jax.tree.leaves(noisy), jax.tree.leaves(quiet))])
  moved = diff[diff != 0]
  assert moved.size > 1000
  np.testing.assert_allclose(moved.std(), z * clip / cohort, rtol=0.05)


def test_runs_axis_mixing_noise_levels_equals_each_run_alone():
  """3 DP runs with Poisson cohorts (own seed, clip C, noise multiplier z,
  adaptive clipping's eta and gamma, the trainer counts' noise; one run
  z = 0 and a fixed clip) as one
  program, two rounds, == each run's own solo rounds: each run draws its
  own cohort and noise from its own key at its own scale, and moves its own
  clip."""
  params = toy.init_params(toy.small_model())
  # (C, z, eta, gamma, the group counts' mu: small, as 6 clients give
  # counts of 0-3)
  settings = ((0.3, 0.5, 0.2, 0.5, 0.2), (1.0, 0.0, 0.0, 0.5, 0.0),
              (3.0, 2.0, 0.5, 0.9, 0.1))
  cfgs = [toy.cfg_for(seed=i, dp_clip=c, dp_noise_multiplier=z,
                      dp_clip_lr=lr, dp_target_quantile=gamma,
                      dp_clip_count_stddev=0.5, client_sampling='poisson',
                      dp_group_count_multiplier=mu)
          for i, (c, z, lr, gamma, mu) in enumerate(settings)]
  want, (state, metrics), _ = toy.solo_and_grouped(cfgs, GEN_STAGE, params)
  for i, w in enumerate(want):
    toy.leaves_close(jax.tree.map(lambda x, i=i: x[i], (state, metrics)), w)
  # The runs' moves differ in scale as their noise does (z C: 0.15, 0, 6).
  moved = [np.concatenate([np.ravel(np.asarray(a) - np.asarray(b)) for a, b in
                           zip(jax.tree.leaves(w[0].params['map']),
                               jax.tree.leaves(params['map']))]).std()
           for w in want]
  assert moved[1] < moved[0] < moved[2]
  clips = [float(w[0].dp['clip']) for w in want]
  assert clips[1] == 1.0                    # eta = 0: the clip stays
  assert clips[0] != 0.3 and clips[2] != 3.0


# ------------------------------------------------------- Poisson cohorts


def test_poisson_membership_is_independent_bernoulli_q():
  """Over 4000 round keys: each client's inclusion rate is q and the
  cohort size has the binomial variance Kq(1 - q) (a fixed-size cohort
  would have none)."""
  k, q = 40, 0.15
  keys = jax.random.split(jax.random.key(0), 4000)
  member = np.asarray(jax.vmap(
      lambda r: sampling.poisson_members(r, k, q))(keys))      # [4000, K]
  per_client = member.mean(0)
  se = np.sqrt(q * (1 - q) / 4000)
  assert np.abs(per_client - q).max() < 4.5 * se
  sizes = member.sum(1)
  assert sizes.mean() == pytest.approx(k * q, rel=0.02)
  assert sizes.var() == pytest.approx(k * q * (1 - q), rel=0.1)


@pytest.mark.parametrize('capacity', [20, 3])
def test_poisson_slots_are_the_members_in_id_order(capacity):
  """The masked slots (any chunking) hold numpy's flatnonzero of the
  membership, cut at the capacity; the count keeps the overflow."""
  k, q = 20, 0.3
  for seed in range(5):
    rkey = jax.random.key(seed)
    member = np.asarray(sampling.poisson_members(rkey, k, q))
    want = np.flatnonzero(member)[:capacity]
    got = []
    for start in range(0, capacity, 4):        # chunks of 4 slots
      ids, valid, count = sampling.poisson_ids(rkey, k, q, capacity,
                                               start + jnp.arange(4))
      got += list(np.asarray(ids)[np.asarray(valid)])
    assert got == list(want)
    assert int(count) == member.sum()


def test_poisson_capacity_bounds_the_binomial_tail():
  """The capacity s is the smallest with P(Binomial(K, q) > s) < 1e-9
  (scipy's survival function, computed its own way)."""
  from scipy import stats   # pylint: disable=g-import-not-at-top
  for k, q in ((100, 0.1), (300, 50 / 300), (6, 2 / 3), (1000, 0.001)):
    s = sampling.poisson_capacity(k, q)
    assert stats.binom.sf(s, k, q) < 1e-9
    assert s == k or stats.binom.sf(s - 1, k, q) >= 1e-9


def _reference_dp_rounds(cfg, stage, params, population, key, rounds_):
  """DP-FedAvg with Poisson cohorts and adaptive clipping, written
  directly: members from the round's uniforms, a Python loop of one
  jitted client update per member, numpy clipping, noise, the fixed
  denominator qK and Andrew et al.'s clip update; with
  --dp_denominator=group each member's delta kept only where its weight is
  > 0, and each entry divided by its trainers counted in the loop, moved
  as the centred count moves (|cohort| - qK) / 2, plus its class's noise
  (classes from param_groups.count_ids, checked here to hold clients that
  train all of a class's entries or none). Returns (trained params
  raveled, the clip after each round)."""
  plan = toy.stage_plan(cfg, stage)
  h = Hparams.of(cfg)
  update = jax.jit(plan.client_update)
  population = toy.filled(cfg, stage, params, population)
  trainable, frozen = rounds.split_params(params, plan.groups)
  x, unravel = ravel_pytree(trainable)
  x = np.asarray(x, np.float64)
  group = cfg.dp_denominator == 'group'
  classes = plan.count_ids(trainable)
  # The weights' leaf shapes (any client's).
  shapes = update(h, trainable, frozen,
                  jax.tree.map(lambda a: a[0], population),
                  jax.random.key(0))[1]
  clip, clips = cfg.dp_clip, []
  denom = cfg.clients_per_round
  for r in range(1, rounds_ + 1):
    rkey = jax.random.fold_in(key, r)
    member = np.asarray(jax.random.uniform(jax.random.fold_in(rkey, 0),
                                           (toy.K,)) < plan.rate)
    total, unclipped = np.zeros_like(x), 0.0
    class_trainers = np.zeros(classes.max() + 1)
    for i in np.flatnonzero(member):
      data = jax.tree.map(lambda a, i=i: a[i], population)
      local, weights, _ = update(h, unravel(x.astype(np.float32)), frozen,
                                 data, jax.random.fold_in(rkey, i + 1))
      delta = np.asarray(ravel_pytree(local)[0], np.float64) - x
      if group:
        per_weight = np.concatenate([np.ravel(np.asarray(w) > 0) for w in
                                     jax.tree.leaves(weights)])
        for c in range(classes.max() + 1):
          assert len(set(per_weight[classes == c])) == 1
          class_trainers[c] += per_weight[classes == c][0]
        delta = np.where(_to_entries(per_weight, weights, trainable), delta,
                         0.0)
      norm = np.sqrt((delta ** 2).sum())
      total += min(1.0, clip / norm) * delta
      unclipped += (norm <= clip) - 0.5
    stream = jax.random.fold_in(rkey, 2**32 - 1)
    noise = np.asarray(jax.random.normal(stream, x.shape))
    update_noise = cfg.dp_noise_multiplier * clip * noise
    if group:
      r_ = classes.max() + 1
      count_noise = np.asarray(jax.random.normal(jax.random.fold_in(stream, 1),
                                                 (r_,)))
      counts = (class_trainers - (member.sum() - denom) / 2
                + cfg.dp_group_count_multiplier * np.sqrt(r_) / 2
                * count_noise)
      den = counts[_to_entries(classes, shapes, trainable)]
      moved = den >= 1
      x = np.where(moved, x + (total + update_noise) / np.where(moved, den, 1),
                   x)
    else:
      x = x + (total + update_noise) / denom
    count_noise = float(jax.random.normal(
        jax.random.fold_in(rkey, 2**32 - 2), ()))
    fraction = (unclipped + cfg.dp_clip_count_stddev * count_noise) / denom
    clip *= np.exp(-cfg.dp_clip_lr * (fraction + 0.5
                                      - cfg.dp_target_quantile))
    clips.append(clip)
  return x, clips


def _to_entries(per_weight, weights, trainable):
  """[S] values, one per entry of a client's weights raveled -> [N], one
  per entry of its params raveled (each weight broadcast over the trailing
  axes of its param), written with numpy."""
  out, at = [], 0
  for w, p in zip(jax.tree.leaves(weights), jax.tree.leaves(trainable)):
    size = int(np.prod(np.shape(w)))
    part = np.reshape(per_weight[at:at + size], np.shape(w))
    at += size
    part = part.reshape(part.shape + (1,) * (np.ndim(p) - part.ndim))
    out.append(np.broadcast_to(part, np.shape(p)).ravel())
  return np.concatenate(out)


@pytest.mark.parametrize('denominator, stage, chunk', [
    ('fixed', TASK_STAGE, 0), ('fixed', TASK_STAGE, 2),
    ('group', GEN_STAGE, 2)])
def test_poisson_dp_round_equals_a_python_loop(denominator, stage, chunk):
  """Two rounds of the masked, vmapped round (all slots at once, and chunks
  of 2 run only as far as the members go) == the Python-loop reference:
  the same cohorts, params to float32 rounding, the same adaptive clip.
  Per-group denominators on the generator stage, where clients missing a
  modality leave its networks and mappings untrained."""
  cfg = toy.cfg_for(server_opt='fedavg', client_sampling='poisson',
                    clients_per_round=2, dp_clip=0.3, dp_noise_multiplier=0.7,
                    dp_clip_lr=0.4, dp_target_quantile=0.3,
                    dp_clip_count_stddev=0.6, dp_denominator=denominator,
                    dp_group_count_multiplier=0.8)
  params = toy.init_params(toy.small_model())
  population, key = toy.make_population(), jax.random.key(11)
  round_ = toy.make_round(cfg, stage, clients_per_chunk=chunk)
  assert round_.plan.rate == pytest.approx(2 / 6)
  h = Hparams.of(cfg)
  state = round_.init(params, h)
  pop = round_.fill(params, round_.place(population))
  clips = []
  for _ in range(2):
    state, metrics = round_(state, pop, key, h)
    clips.append(float(state.dp['clip']))
  assert int(metrics['cohort_overflow']) == 0
  want, want_clips = _reference_dp_rounds(cfg, stage, params,
                                          population, key, 2)
  got = ravel_pytree(rounds.split_params(state.params,
                                         round_.plan.groups)[0])[0]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(clips, want_clips, rtol=1e-5)
  assert clips[0] != cfg.dp_clip


def test_poisson_round_without_dp_equals_sequential_round():
  """FedAvg on a Poisson cohort: the round's masked slots and
  rounds.sequential_round's numpy-chosen members train the same clients."""
  cfg = toy.cfg_for(client_sampling='poisson', clients_per_round=3)
  params = toy.init_params(toy.small_model())
  population, key = toy.make_population(), jax.random.key(2)
  got, _ = toy.one_round(cfg, TASK_STAGE, params, population, key)
  want, _ = toy.sequential_round(cfg, TASK_STAGE, params, population, key)
  toy.leaves_close(got, want)
  assert any(not np.allclose(a, b) for a, b in
             zip(jax.tree.leaves(got), jax.tree.leaves(params)))


def test_next_clip_is_andrew_et_al_geometric_update():
  h = Hparams.of(toy.cfg_for(dp_clip_lr=0.2, dp_target_quantile=0.7,
                             dp_clip_count_stddev=1.5))
  key = jax.random.key(4)
  # 6 of 10 clients unclipped: the centred count 6 - 5 = 1.
  got = float(dp.next_clip(key, 2.0, 1.0, h, 10.0))
  z = float(jax.random.normal(key, ()))
  want = 2.0 * np.exp(-0.2 * ((6 - 5 + 1.5 * z) / 10 + 0.5 - 0.7))
  assert got == pytest.approx(want, rel=1e-6)
  fixed = h.replace(dp_clip_lr=np.float32(0))
  assert float(dp.next_clip(key, 2.0, 1.0, fixed, 10.0)) == 2.0


def test_count_ids_classes_of_the_toy_model():
  """param_groups.count_ids on the toy model (3 modalities), written out:
  the generator's encoder and decoder entries of member m are class m, a
  mapping T(n<-m) the class of its unordered pair {n, m} (3 + 0..2); the
  task model's encoder of modality m class m, fusion and head "holds a
  sample" (3). A rule that computes with counts is refused."""
  model = toy.small_model()
  params = toy.init_params(model)
  gen = toy.stage_plan(toy.cfg_for(dp_clip=1.0), GEN_STAGE)
  trainable = rounds.split_params(params, gen.groups)[0]
  ids = gen.count_ids(trainable)
  at = 0
  for path, w in jax.tree_util.tree_leaves_with_path(trainable):
    keys = [getattr(p, 'key', None) for p in path]
    n = w.shape[0]
    got = ids[at:at + (n if keys[0] != 'task' else 1)]
    if keys[0] == 'map':
      pairs = model.spec.pairs
      want = [3 + {(0, 1): 0, (0, 2): 1, (1, 2): 2}[tuple(sorted(p))]
              for p in pairs]
    else:
      members = {g.name: g.members for g in model.groups}[keys[2]]
      want = list(members)
    np.testing.assert_array_equal(got, want, err_msg=str(keys))
    at += len(got)
  assert at == len(ids)
  task = toy.stage_plan(toy.cfg_for(dp_clip=1.0), TASK_STAGE)
  task_ids = task.count_ids(rounds.split_params(params, task.groups)[0])
  assert sorted(set(task_ids.tolist())) == [0, 1, 2, 3]
  # Samples lacking modality m: under the plain ids its values happen to be
  # other classes' ids (the task inputs'), under the second encoding not.
  bad = param_groups.Group('map', lambda c, m, p: jax.tree.map(
      lambda _: c.total - c.modality, p))
  with pytest.raises(ValueError, match='dp_denominator=fixed'):
    param_groups.count_ids(model, (bad,), trainable)
