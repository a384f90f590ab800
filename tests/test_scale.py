"""Scale: no recompiles, cohort gathering, chunked rounds, 2 processes."""

import collections
import functools
import json
import os
import socket
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from fedrecon_jax import distributed, rounds
from fedrecon_jax.config import GEN_STAGE, TASK_STAGE

sys.path.insert(0, os.path.dirname(__file__))
import test_engine as te  # pylint: disable=g-import-not-at-top,wrong-import-position
import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position

_COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
_compiles = collections.Counter()


def _on_event(event, duration, **kwargs):
  del duration
  if event == _COMPILE_EVENT:
    _compiles[kwargs.get('fun_name', '?')] += 1


# jax.monitoring has no public unregister: one listener for the module.
jax.monitoring.register_event_duration_secs_listener(_on_event)


def _compile_count() -> int:
  return sum(_compiles.values())


# Every client takes part, so the NaN client below is always in the cohort.
CFG = te.cfg_for(clients_per_round=te.K)
# Chunked engines under test: (clients per device, host population) by stage;
# both leave zero-weight pads in the last chunk (6 clients in chunks of 4, 5).
CHUNKED = {GEN_STAGE: (4, False), TASK_STAGE: (5, True)}


@functools.cache
def _model():
  return te.small_model()


# Compiles dominate this file: each engine is built (and compiled) once and
# shared by the tests below.
@functools.cache
def _make_round(stage):
  return rounds.make_round(CFG, _model(), stage, rounds.make_mesh(1), te.K)


@functools.cache
def _chunked(stage):
  per_device, host = CHUNKED[stage]
  return distributed.make_chunked_round(
      CFG, _model(), stage, rounds.make_mesh(1), te.K,
      clients_per_device=per_device, host_population=host)


@pytest.fixture(scope='module')
def setup():
  return _model(), te.init_params(_model()), te.make_population()


def _with_nan_client():
  population = te.make_population()
  xs = list(population.xs)
  xs[1] = xs[1].copy()
  xs[1][3, 0, 0] = np.nan                        # one sample of client 3
  return population.replace(xs=tuple(xs))


def _placed(engine, stage, params, opt_state, population, key):
  """A round's arguments placed as train.run places them: replicated, the
  population kept on the host for a host-gathering chunked round. One
  placement, so the tests share each round program (test_engine.placed)."""
  mesh = rounds.make_mesh(1)
  if engine == 'chunked' and CHUNKED[stage][1]:
    return (*te.placed(mesh, params, opt_state), population,
            *te.placed(mesh, key))
  return te.placed(mesh, params, opt_state, population, key)


def _train_like(engine, params, population, schedule):
  """Runs rounds the way train.run does (per-round key, replicated state, a
  fresh server state when the stage changes); compile count after each."""
  state, after = None, []
  for r, stage in enumerate(schedule, 1):
    if engine == 'make_round':
      fn, tx = _make_round(stage)
    else:
      fn = _chunked(stage)
      tx = fn.tx
    if state is None or schedule[r - 2] != stage:
      state = (params if state is None else state[0],
               rounds.init_server_opt(tx, params, CFG, stage))
    key = jax.random.fold_in(jax.random.key(0), r)
    p, o, m = fn(*_placed(engine, stage, *state, population, key))
    jax.block_until_ready((p, o, m))
    float(m['skipped_clients'])        # as train.run logs it
    state = (p, o)
    after.append(_compile_count())
  return after


@pytest.mark.parametrize('engine', ['make_round', 'chunked'])
def test_no_compiles_after_warmup(setup, engine):
  """3 rounds of stage 1, then 3 of stage 2: nothing compiles after the first
  round of each stage (round program, server-state init, keys, transfers)."""
  _, params, population = setup
  start = _compile_count()
  jax.jit(lambda x: x * 3)(np.arange(start + 2.0))   # the counter is live
  assert _compile_count() == start + 1
  schedule = [GEN_STAGE] * 3 + [TASK_STAGE] * 3
  after = _train_like(engine, params, population, schedule)
  new = np.diff([start + 1] + after)
  assert list(new[[1, 2, 4, 5]]) == [0, 0, 0, 0], (new, dict(_compiles))


def test_chunked_round_one_program_for_every_cohort_size(setup):
  _, params, population = setup
  cr = _chunked(GEN_STAGE)
  opt = rounds.init_server_opt(cr.tx, params, CFG, GEN_STAGE)
  args = lambda key: _placed('chunked', GEN_STAGE, params, opt, population,
                             key)
  jax.block_until_ready(cr(*args(jax.random.key(0))))
  start = _compile_count()
  for n in (1, 3, 5):
    jax.block_until_ready(cr(*args(jax.random.key(n)), cohort_size=n))
  # (jit's _cache_size() would also count the same executable once per
  # argument placement, so compiles are what is counted.)
  assert _compile_count() == start, dict(_compiles)


@pytest.mark.parametrize('stage', [GEN_STAGE, TASK_STAGE])
def test_chunked_round_equals_make_round(setup, stage):
  """Every client (one with a NaN sample); the last chunk holds pads."""
  _, params, _ = setup
  population = _with_nan_client()
  key = jax.random.key(3)
  fn, tx = _make_round(stage)
  opt = rounds.init_server_opt(tx, params, CFG, stage)
  want = fn(*_placed('make_round', stage, params, opt, population, key))
  cr = _chunked(stage)
  assert cr.padded() > te.K
  got = cr(*_placed('chunked', stage, params, opt, population, key))
  assert int(got[2]['skipped_clients']) == int(want[2]['skipped_clients']) == 1
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-5)


def test_gather_cohort_gives_exactly_those_clients():
  population = te.make_population(seed=1)
  mesh = rounds.make_mesh(1)
  ids = np.array([4, 0, 4, 2, 5, 1])             # repeats, any order
  stacked = jax.tree.map(lambda x: x[ids], population)   # numpy indexing
  # On the host, flat and in the chunked layout ...
  flat = distributed.gather_cohort(population, ids, mesh)
  chex.assert_trees_all_equal(jax.device_get(flat), stacked)
  chunked = distributed.gather_cohort(population, ids, mesh, chunk=2)
  chex.assert_trees_all_equal(
      jax.device_get(chunked),
      jax.tree.map(lambda x: x.reshape(3, 2, *x.shape[1:]), stacked))
  # ... and inside a jitted program from the device-resident store, as
  # rounds.make_round does.
  store = distributed.replicate(population, mesh)
  on_device = jax.jit(lambda pop, i: jax.tree.map(lambda x: x[i], pop))(
      store, ids)
  chex.assert_trees_all_equal(jax.device_get(on_device), stacked)
  # And the host-gathering round draws rounds.sample_cohort's ids.
  key = jax.random.key(11)
  cr = _chunked(TASK_STAGE)                       # chunks of 5
  want, _ = rounds.sample_cohort(jax.random.fold_in(key, 0), te.K, 4, 5)
  np.testing.assert_array_equal(cr.sample_ids(key, 4), want)


_TWO_PROCESS_SCRIPT = r'''
import sys
from fedrecon_jax import distributed
distributed.initialize({address!r}, 2, {pid}, local_device_count={local})
import jax, numpy as np
sys.path.insert(0, {tests!r})
import test_engine as t
from fedrecon_jax import rounds
from fedrecon_jax.config import GEN_STAGE, TASK_STAGE
assert jax.process_count() == 2 and len(jax.devices()) == {total}
mesh = rounds.make_mesh()                      # every process's devices
model = t.small_model()
# The parent's initial params (an eager init would take longer than the
# rounds, and must be bitwise the same anyway).
shapes = jax.eval_shape(model.init, jax.random.key(0))
with np.load({params!r}) as f:
  leaves = [f[k] for k in sorted(f.files, key=lambda s: int(s[4:]))]
params = jax.tree.unflatten(jax.tree.structure(shapes), leaves)
pop = t.make_population()
cfg = t.cfg_for(clients_per_round=t.K)
rep = lambda x: distributed.replicate(x, mesh)
out = []
for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8)):
  fn, tx = rounds.make_round(cfg, model, stage, mesh, t.K)
  opt = rounds.init_server_opt(tx, params, cfg, stage)
  p, _, _ = fn(rep(params), rep(opt), rep(pop), rep(jax.random.key(seed)))
  out.append(p)
# The chunked round with the store on the host: each process gathers only
# the cohort rows of its own devices.
cr = distributed.make_chunked_round(cfg, model, TASK_STAGE, mesh, t.K,
                                    clients_per_device=1,
                                    host_population=True)
opt = rounds.init_server_opt(cr.tx, params, cfg, TASK_STAGE)
p, _, _ = cr(rep(params), rep(opt), pop, rep(jax.random.key(8)))
out.append(p)
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(out)])
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(setup, tmp_path):
  """2 CPU processes (gloo), one device each, one 2-device mesh: a round of
  each stage (and a host-gathered chunked round) equals the single-process,
  single-device run."""
  _, params, population = setup
  local = 1
  want = []
  for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8)):
    fn, tx = _make_round(stage)
    opt = rounds.init_server_opt(tx, params, CFG, stage)
    want.append(fn(*_placed('make_round', stage, params, opt, population,
                            jax.random.key(seed)))[0])
  want.append(want[-1])
  want = [np.asarray(x) for x in jax.tree.leaves(want)]
  params_file = str(tmp_path / 'params.npz')
  np.savez(params_file, *[np.asarray(x) for x in jax.tree.leaves(params)])

  address = f'localhost:{_free_port()}'
  # LLVM -O0 halves the compile of these multi-device programs (~20 s each
  # here); the test checks sharding and collectives, not codegen.
  env = {**os.environ, 'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  procs, outs = [], []
  for pid in range(2):
    outs.append(str(tmp_path / f'{pid}.npz'))
    script = _TWO_PROCESS_SCRIPT.format(
        address=address, pid=pid, local=local, total=2 * local,
        tests=os.path.dirname(__file__), out=outs[-1], params=params_file)
    procs.append(subprocess.Popen([sys.executable, '-c', script], env=env,
                                  stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  logs = []
  for proc in procs:
    try:
      logs.append(proc.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for proc, log in zip(procs, logs):
    assert proc.returncode == 0, log[-3000:]
  for out in outs:              # both processes hold the replicated result
    with np.load(out) as f:
      got = [f[k] for k in sorted(f.files, key=lambda s: int(s[4:]))]
    assert len(got) == len(want)
    for a, b in zip(got, want):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


# ~3 min cold (two whole training runs under jax.distributed; the round-level
# 2-process test above stays in the default suite): slow.
@pytest.mark.slow
def test_two_process_training_run_equals_one_process(env, tmp_path):
  """The whole training loop under jax.distributed (2 CPU processes sharing
  one workdir, checkpoints on) logs the rounds a 1-process run logs; only
  process 0 writes the workdir's files."""
  schedule = dict(clients_per_round=4, gen_rounds=2, rounds=2, eval_every=2,
                  checkpoint_every=2)
  one = tmp_path / 'one'
  tiny.run(tiny.train_cmd(str(one), **schedule), env)
  two = tmp_path / 'two'
  address = f'localhost:{_free_port()}'
  env2 = {**env, 'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  procs = [tiny.popen(tiny.train_cmd(
      str(two), '--distributed', f'--coordinator_address={address}',
      '--num_processes=2', f'--process_id={pid}', **schedule), env2,
                      stderr=subprocess.STDOUT) for pid in range(2)]
  try:
    logs = [p.communicate(timeout=300)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert 'round 4/4' in logs[0] and 'round 4/4' not in logs[1]

  def records(workdir):
    with open(workdir / 'metrics.jsonl') as f:
      return [json.loads(line) for line in f]
  got, want = records(two), records(one)
  assert [r['round'] for r in got] == [1, 2, 3, 4]
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in w:
      if not k.endswith('seconds'):
        np.testing.assert_allclose(g[k], w[k], rtol=1e-4, atol=1e-5,
                                   err_msg=k)
  assert os.path.exists(two / 'summary.json')
  assert sorted(os.listdir(two / 'checkpoints')) == ['2', '4']
