"""Server steps against transcriptions of the papers' equations.

The references below are written in numpy (float64) from Reddi et al. 2021,
"Adaptive Federated Optimization", Algorithm 2, from McMahan et al. 2017
(FedAvg) and from Hsu et al. 2019 (FedAvgM): never from fedrecon_jax code.
They drive `server.aggregate` with 5 rounds of stacked client params and
per-client sample weights, as the round engine does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedrecon_jax import server
from fedrecon_jax.methods import base
from fedrecon_jax.config import Config
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
from fedrecon_jax.hparams import Hparams

ETA, B1, B2, TAU = 0.01, 0.9, 0.99, 1e-3
ROUNDS, CLIENTS = 5, 4


def reddi_algorithm2(variant, x, client_params, weights):
  """Algorithm 2, written from the paper: returns x after every round."""
  m = np.zeros_like(x)
  v = np.full_like(x, TAU**2)               # v_{-1} >= tau^2
  out = []
  for ys, w in zip(client_params, weights):
    delta = sum(wi * (yi - x) for yi, wi in zip(ys, w)) / sum(w)
    m = B1 * m + (1 - B1) * delta
    if variant == 'adagrad':
      v = v + delta**2
    elif variant == 'yogi':
      v = v - (1 - B2) * delta**2 * np.sign(v - delta**2)
    else:  # adam
      v = B2 * v + (1 - B2) * delta**2
    x = x + ETA * m / (np.sqrt(v) + TAU)
    out.append(x)
  return out


def fedavg_reference(x, client_params, weights):
  out = []
  for ys, w in zip(client_params, weights):
    x = sum(wi * yi for yi, wi in zip(ys, w)) / sum(w)
    out.append(x)
  return out


def fedavgm_reference(x, client_params, weights, beta=0.9):
  """Hsu et al. 2019: v = beta v + Delta; x = x + eta v (server lr eta)."""
  mom = np.zeros_like(x)
  out = []
  for ys, w in zip(client_params, weights):
    delta = sum(wi * (yi - x) for yi, wi in zip(ys, w)) / sum(w)
    mom = beta * mom + delta
    x = x + ETA * mom
    out.append(x)
  return out


def run_server(cfg, stage, x0, client_params, weights):
  """5 rounds through server.aggregate, params as a small pytree."""
  tx = base.server_tx(cfg, stage)(Hparams.of(cfg))
  unflat = lambda a: {'w': jnp.asarray(a[:6].reshape(2, 3), jnp.float32),
                      'b': jnp.asarray(a[6:], jnp.float32)}
  params = unflat(x0)
  state = server.init_opt_state(tx, params)
  step = jax.jit(lambda p, s, ys, w: server.aggregate(
      p, s, ys, {'w': w, 'b': w}, tx)[:2])
  out = []
  for ys, w in zip(client_params, weights):
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *[unflat(y) for y in ys])
    params, state = step(params, state, stacked, jnp.asarray(w, jnp.float32))
    out.append(np.concatenate([np.asarray(params['w']).ravel(),
                               np.asarray(params['b'])]))
  return out


@pytest.fixture(scope='module')
def rounds_data():
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=8)
  # Client params scattered around a drifting target, varied step sizes.
  client_params = [[x0 + rng.normal(scale=s, size=8) for s in (0.01, 0.1, 0.5,
                                                               1.0)]
                   for _ in range(ROUNDS)]
  weights = [rng.integers(1, 40, CLIENTS).astype(float) for _ in range(ROUNDS)]
  return x0, client_params, weights


def cfg(**kw):
  base = dict(workdir='/tmp/unused', server_lr=ETA, gen_server_lr=ETA,
              server_b1=B1, server_b2=B2, server_eps=TAU)
  return Config(**{**base, **kw})


@pytest.mark.parametrize('variant', ['adam', 'yogi', 'adagrad'])
@pytest.mark.parametrize('stage', [GEN_STAGE, TASK_STAGE])
def test_fedopt_is_reddi_algorithm_2(rounds_data, variant, stage):
  x0, ys, w = rounds_data
  got = run_server(cfg(server_opt='fedopt', server_optimizer=variant), stage,
                   x0, ys, w)
  want = reddi_algorithm2(variant, x0, ys, w)
  np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=0, atol=1e-6)
  # Not vacuous: the server moved by much more than the tolerance.
  assert np.abs(want[-1] - x0).max() > 1e-3


def test_optax_adam_is_not_algorithm_2(rounds_data):
  """The kept optax variant really differs (bias correction, eps placement)."""
  x0, ys, w = rounds_data
  got = run_server(cfg(server_opt='fedopt', server_optimizer='optax_adam'),
                   TASK_STAGE, x0, ys, w)
  want = reddi_algorithm2('adam', x0, ys, w)
  assert np.abs(np.stack(got) - np.stack(want)).max() > 1e-3


def test_fedavg_is_weighted_mean(rounds_data):
  x0, ys, w = rounds_data
  got = run_server(cfg(server_opt='fedavg'), TASK_STAGE, x0, ys, w)
  np.testing.assert_allclose(np.stack(got), np.stack(fedavg_reference(x0, ys, w)),
                             rtol=0, atol=1e-6)


def test_sgdm_is_fedavgm(rounds_data):
  x0, ys, w = rounds_data
  got = run_server(cfg(server_opt='fedopt', server_optimizer='sgdm'),
                   TASK_STAGE, x0, ys, w)
  np.testing.assert_allclose(np.stack(got),
                             np.stack(fedavgm_reference(x0, ys, w)),
                             rtol=0, atol=1e-6)


@pytest.mark.parametrize('chunked', [False, True])
def test_fedavg_weights_each_entry_by_its_own_weight(chunked):
  """McMahan et al.'s weighted mean, entry by entry, when each leaf (and each
  row of a stacked leaf) has its own per-client weight, some of them zero:
  as a Python loop over entries and clients. chunked: the clients' sums
  taken one client at a time and added up, as the chunked round does."""
  rng = np.random.default_rng(1)
  shapes = {'a': ((3, 4), (3,)), 'b': ((5,), ()), 'c': ((2, 3, 2), (2, 3)),
            'd': ((2,), (2,))}                 # param shape, weight shape
  x = {k: rng.normal(size=p) for k, (p, _) in shapes.items()}
  ys = [{k: rng.normal(size=p) for k, (p, _) in shapes.items()}
        for _ in range(3)]
  ws = [{k: rng.integers(0, 3, size=w).astype(float) for k, (_, w) in
         shapes.items()} for _ in range(3)]
  ws[0]['c'][0, 1] = ws[1]['c'][0, 1] = ws[2]['c'][0, 1] = 0.0  # nobody
  want = {}
  for k, (p, w_shape) in shapes.items():
    want[k] = x[k].copy()
    for idx in np.ndindex(*p):
      prefix = idx[:len(w_shape)]
      den = sum(w[k][prefix] for w in ws)
      if den > 0:
        want[k][idx] = sum(w[k][prefix] * y[k][idx]
                           for w, y in zip(ws, ys)) / den

  f32 = lambda t: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), t)
  stack = lambda ts: f32(jax.tree.map(lambda *a: np.stack(a), *ts))
  tx = base.server_tx(cfg(server_opt='fedavg'), TASK_STAGE)(Hparams.of(cfg()))
  params = f32(x)
  opt_state = server.init_opt_state(tx, params)
  if chunked:
    parts = [server.client_sums(stack([y]), stack([w]), {}, jnp.ones(1, bool))
             for y, w in zip(ys, ws)]
    sums = jax.tree.map(lambda *a: sum(a), *parts)
    got = server.apply_sums(params, opt_state, sums, tx)[0]
  else:
    got = server.aggregate(params, opt_state, stack(ys), stack(ws), tx)[0]
  for k in shapes:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  assert got['c'][0, 1].tolist() == f32(x)['c'][0, 1].tolist()


@pytest.mark.parametrize('name', sorted(server.OPTIMIZERS))
def test_every_server_optimizer_is_elementwise(name):
  """apply_sums steps the params raveled: each --server_optimizer (and a
  global-norm clip, which reads all entries as one vector either way)
  passes the check."""
  h = Hparams.of(cfg())
  server.check_elementwise(server.transformation('fedopt', name, 0.1, h), name)
  server.check_elementwise(optax.chain(optax.clip_by_global_norm(0.5),
                                       optax.sgd(0.1)), 'clip')


@pytest.mark.parametrize('tx', [
    optax.chain(optax.clip_by_block_rms(0.5), optax.sgd(0.1)),
    optax.lars(0.1),
    optax.chain(optax.scale_by_trust_ratio(), optax.sgd(0.1)),
], ids=['block_rms', 'lars', 'trust_ratio'])
def test_a_per_leaf_server_transformation_is_refused(tx, monkeypatch):
  """A per-leaf transformation would step the raveled params differently
  from the tree: refused with an error naming the method and stage, both by
  the check and when a plan is built with it."""
  with pytest.raises(ValueError, match='not elementwise'):
    server.check_elementwise(tx, 'probe')
  from fedrecon_jax import recipe  # pylint: disable=g-import-not-at-top
  import toy  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(server.OPTIMIZERS, 'sgdm', lambda *a: tx)
  # A batch size no other test uses: a plan of its own (plans are cached).
  c = toy.cfg_for(server_optimizer='sgdm', batch_size=11)
  with pytest.raises(ValueError, match='--method=fedrecon stage 2.*not '
                     'elementwise'):
    recipe.of(c).plan(toy.small_model(), TASK_STAGE, toy.K)
