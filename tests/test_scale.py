"""Scale: no recompiles, chunked rounds, 2 processes."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from fedrecon_jax import compile_stats, rounds
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
from fedrecon_jax.hparams import Hparams

import tiny
import toy

def _compile_count() -> int:
  return compile_stats.snapshot().compiles


# Every client takes part, so the NaN client below is always in the cohort.
CFG = toy.cfg_for(clients_per_round=toy.K)
# Chunk sizes under test by stage: both leave zero-weight pads in the last
# chunk (6 clients in chunks of 4, 5).
CHUNK = {GEN_STAGE: 4, TASK_STAGE: 5}


def _round(engine, stage):
  """The all-at-once ('make_round') or chunked round of a stage, built once
  (compiles dominate this file) and shared by the tests below."""
  return toy.make_round(CFG, stage, clients_per_chunk=(
      CHUNK[stage] if engine == 'chunked' else 0))


@pytest.fixture(scope='module')
def setup():
  return toy.init_params(toy.small_model()), toy.make_population()


def _train_like(engine, params, population, schedule):
  """Runs rounds the way train.run does (one run key, placed state, a
  fresh server state when the stage changes); compile count after each."""
  state, after, h = None, [], Hparams.of(CFG)
  key = jax.random.key(0)
  for r, stage in enumerate(schedule, 1):
    round_ = _round(engine, stage)
    if state is None or schedule[r - 2] != stage:
      state = round_.init(params if state is None else state.params, h, r - 1)
    state, m = round_(state, round_.fill(
        state.params, round_.place(population)), key, h)
    jax.block_until_ready((state, m))
    float(m['skipped_clients'])        # as train.run logs it
    after.append(_compile_count())
  return after


@pytest.mark.parametrize('engine', ['make_round', 'chunked'])
def test_no_compiles_after_warmup(setup, engine):
  """3 rounds of stage 1, then 3 of stage 2: nothing compiles after the first
  round of each stage (round program, server-state init, keys, transfers)."""
  params, population = setup
  start = _compile_count()
  jax.jit(lambda x: x * 3)(np.arange(start + 2.0))   # the counter is live
  assert _compile_count() == start + 1
  schedule = [GEN_STAGE] * 3 + [TASK_STAGE] * 3
  after = _train_like(engine, params, population, schedule)
  new = np.diff([start + 1] + after)
  assert list(new[[1, 2, 4, 5]]) == [0, 0, 0, 0], (
      new, compile_stats.snapshot().by_function)


def test_chunked_round_one_program_for_every_cohort_size(setup):
  params, population = setup
  round_, h = _round('chunked', GEN_STAGE), Hparams.of(CFG)
  state, pop = round_.init(params, h), round_.place(population)
  jax.block_until_ready(round_(state, pop, jax.random.key(0), h))
  start = _compile_count()
  for n in (1, 3, 5):
    jax.block_until_ready(round_(state, pop, jax.random.key(n), h,
                                 cohort_size=n))
  # (A jit's traces would not show a recompile for another argument
  # placement, so compiles are what is counted.)
  assert _compile_count() == start, compile_stats.snapshot().by_function


@pytest.mark.parametrize('stage', [GEN_STAGE, TASK_STAGE])
def test_chunked_round_equals_make_round(setup, stage):
  """Every client (one with a NaN sample); the last chunk holds pads."""
  params, _ = setup
  population = toy.with_nan_client()
  key, h = jax.random.key(3), Hparams.of(CFG)
  outs = []
  for engine in ('make_round', 'chunked'):
    round_ = _round(engine, stage)
    outs.append(round_(round_.init(params, h),
                       round_.fill(params, round_.place(population)), key, h))
  (want, want_m), (got, got_m) = outs
  assert -(-toy.K // CHUNK[stage]) * CHUNK[stage] > toy.K   # pads computed
  assert int(got_m['skipped_clients']) == int(want_m['skipped_clients']) == 1
  toy.leaves_close((got, got_m), (want, want_m))


def test_one_client_per_chunk_equals_make_round(setup):
  """Chunks of one client (the CPU default in stage 1) run the client update
  without a vmap; same round as all at once, NaN client skipped."""
  params, _ = setup
  population = toy.with_nan_client()
  key, h = jax.random.key(5), Hparams.of(CFG)
  outs = []
  for chunk in (0, 1):
    round_ = toy.make_round(CFG, GEN_STAGE, clients_per_chunk=chunk)
    outs.append(round_(round_.init(params, h), round_.place(population), key,
                       h))
  (want, want_m), (got, got_m) = outs
  assert int(got_m['skipped_clients']) == int(want_m['skipped_clients']) == 1
  toy.leaves_close((got, got_m), (want, want_m))


def test_cohort_is_a_prefix_of_one_permutation():
  """Every chunking draws the same cohort: the first C of one permutation,
  distinct ids, pads repeating the first."""
  key = jax.random.key(11)
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, 0), toy.K))
  ids, valid = rounds.cohort_ids(key, toy.K, np.arange(8), 4)
  np.testing.assert_array_equal(ids, list(perm[:4]) + [perm[0]] * 4)
  np.testing.assert_array_equal(valid, [True] * 4 + [False] * 4)


_TWO_PROCESS_SCRIPT = r'''
import sys
from fedrecon_jax import distributed
distributed.initialize({address!r}, 2, {pid}, local_device_count={local})
import jax, numpy as np
sys.path.insert(0, {tests!r})
import toy
from fedrecon_jax.methods import GEN_STAGE, TASK_STAGE
assert jax.process_count() == 2 and len(jax.devices()) == {total}
model = toy.small_model()
# The parent's initial params (an eager init would take longer than the
# rounds, and must be bitwise the same anyway).
shapes = jax.eval_shape(model.init, jax.random.key(0))
with np.load({params!r}) as f:
  leaves = [f[k] for k in sorted(f.files, key=lambda s: int(s[4:]))]
params = jax.tree.unflatten(jax.tree.structure(shapes), leaves)
pop = toy.make_population()
cfg = toy.cfg_for(clients_per_round=toy.K)
out = [toy.one_round(cfg, stage, params, pop, jax.random.key(seed),
                     num_devices=0, **kw)[0]     # every process's devices
       for stage, seed, kw in ((GEN_STAGE, 7, {{}}), (TASK_STAGE, 8, {{}}),
                               (TASK_STAGE, 8, {{'clients_per_chunk': 2}}))]
np.savez({out!r}, *[np.asarray(x) for x in jax.tree.leaves(out)])
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@pytest.mark.slow   # ~90-110 s: a whole end-to-end check
def test_two_processes_equal_one(setup, tmp_path):
  """2 CPU processes (gloo), one device each, one 2-device mesh: a round of
  each stage (and a chunked round) equals the single-process, single-device
  run."""
  params, population = setup
  local = 1
  want = [toy.one_round(CFG, stage, params, population,
                        jax.random.key(seed))[0]
          for stage, seed in ((GEN_STAGE, 7), (TASK_STAGE, 8))]
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


# ~3 min cold (two whole training runs under jax.distributed): slow, like
# the round-level 2-process test above.
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
