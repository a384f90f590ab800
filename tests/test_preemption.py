"""Runs that survive schedulers: SIGTERM saves the round and exits 75 (1 and
2 processes), one writer per workdir, divergence, unwritable workdirs and
failed checkpoint writes. Real `python -m experiments.train` subprocesses
of the tests' tiny run (tiny.py: programs shared through the XLA cache)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from fedrecon_jax import preemption, workdir
from fedrecon_jax import train as train_lib
from fedrecon_jax.config import Config

import tiny

# 6 generator + 3 task rounds; checkpoints at 5 and 9 only, so the round a
# SIGTERM stops (7) is not a checkpoint round.
SCHEDULE = dict(gen_rounds=6, rounds=3, checkpoint_every=5, eval_every=3)
TOTAL = 9
records, steps = tiny.records, tiny.steps


def cmd(workdir_, *extra):
  return tiny.train_cmd(workdir_, *extra, **SCHEDULE)


def train(env, workdir_, *extra):
  return tiny.run(cmd(workdir_, *extra), env, check=False)


def wait_for_round(procs, workdir_, round_):
  """Returns once metrics.jsonl holds `round_`. After the last generator
  round the run compiles the task stage's program (seconds), so a signal
  sent now stops it after round_ + 1."""
  deadline = time.time() + 400
  while tiny.rounds_logged(workdir_) < round_:
    assert all(p.poll() is None for p in procs), 'a run ended early'
    assert time.time() < deadline, 'timed out waiting for the run'
    time.sleep(0.005)


@pytest.fixture(scope='module')
def reference(env, tmp_path_factory):
  """An uninterrupted run, and what a second writer started on its workdir
  while it ran got: (workdir, first run's pid, second's process, seconds).
  (The default tier's test of a second writer holds the lock itself.)"""
  workdir_ = str(tmp_path_factory.mktemp('reference'))
  # Each metrics line held 0.5 s (experiments.fault_inject: same bytes,
  # later): the first run must outlive the second's start-up on a busy CPU.
  held = cmd(workdir_)
  held[1:3] = ['-m', 'experiments.fault_inject', 'experiments.train']
  first = tiny.popen(held, {**env, 'FAULT_INJECT': '{"append_seconds": 0.5}'})
  try:
    wait_for_round([first], workdir_, 1)   # it holds the lock by now
    t0 = time.time()
    second = train(env, workdir_)
    took = time.time() - t0
    assert first.poll() is None, 'the first run ended: nothing was tested'
    _, err = first.communicate(timeout=600)
  finally:
    first.kill()
  assert first.returncode == 0, err[-3000:]
  return workdir_, first.pid, second, took


# The default tier's short fault storm (test_fault_storm.py) sends a
# SIGTERM counted only if handled (exit 75) and compares every file with an
# uninterrupted run; this test's extra checks (the message, the saved round)
# run in the slow tier.
@pytest.mark.slow
def test_sigterm_saves_the_round_exits_75_and_resumes_exactly(env, reference,
                                                              tmp_path):
  workdir_ = str(tmp_path / 'run')
  proc = tiny.popen(cmd(workdir_), env)
  try:
    wait_for_round([proc], workdir_, 6)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
  finally:
    proc.kill()
  assert proc.returncode == preemption.EXIT_REQUEUE, err[-3000:]
  assert 'SIGTERM' in err and 'resume' in err
  # Round 7 as a rule (the signal lands while the task stage compiles);
  # 6 if it landed in the instant between logging round 6 and asking.
  stopped = records(workdir_)[-1]['round']
  assert stopped in (6, 7)
  assert [r['round'] for r in records(workdir_)] == list(range(1, stopped + 1))
  assert steps(workdir_) == [5, stopped]   # the interrupted round is saved
  assert not os.path.exists(os.path.join(workdir_, workdir.SUMMARY))

  proc = train(env, workdir_)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'round {stopped}/' not in proc.stdout
  assert f'round {stopped + 1}/' in proc.stdout
  # Bitwise on CPU: the resumed run continues from the exact state.
  assert records(workdir_) == records(reference[0])


def test_second_writer_exits_at_once_naming_the_holder(env, tmp_path):
  """A run started on a workdir that a live process holds (this one, as a
  running job would) exits 1 at once naming the holder, and writes
  nothing there."""
  holder = workdir.Lock(str(tmp_path))
  try:
    t0 = time.time()
    second = train(env, str(tmp_path))
    took = time.time() - t0
    written = sorted(os.listdir(tmp_path))
  finally:
    holder.release()
  assert second.returncode == 1, second.stderr[-3000:]
  assert f'pid {os.getpid()} on host {socket.gethostname()} since' in (
      second.stderr), second.stderr[-3000:]
  assert '--workdir' in second.stderr and 'in use' in second.stderr
  assert took < 30, took   # before building data or compiling anything
  assert written == [workdir.LOCK_FILE], written


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
  dead = subprocess.Popen([sys.executable, '-c', 'pass'])
  dead.wait()
  with open(tmp_path / workdir.LOCK_FILE, 'w') as f:
    json.dump({'host': 'h0', 'pid': dead.pid, 'since': '2026-01-01T00:00'}, f)
  lock = workdir.Lock(str(tmp_path))
  try:
    assert f'pid {dead.pid} on host h0' in caplog.text
    assert 'Taking over the lock' in caplog.text
    with open(tmp_path / workdir.LOCK_FILE) as f:
      assert json.load(f)['pid'] == os.getpid()
    with pytest.raises(workdir.WorkdirBusyError,
                       match=rf'--workdir=.*pid {os.getpid()} on host'):
      workdir.Lock(str(tmp_path))
  finally:
    lock.release()
  caplog.clear()
  workdir.Lock(str(tmp_path)).release()   # a clean release leaves no holder
  assert 'Taking over' not in caplog.text


def test_huge_learning_rate_stops_as_diverged(env, tmp_path):
  workdir_ = str(tmp_path / 'run')
  proc = train(env, workdir_, '--client_lr=1e30')
  assert proc.returncode == preemption.EXIT_DIVERGED, proc.stderr[-3000:]
  summary = workdir.read_summary(workdir_)
  # Every task-stage client update overflows at once: round 7 is the first.
  assert summary['diverged_at_round'] == 7, summary
  assert 'skipped' in summary['diverged_because']
  last = summary['last_finite_eval']
  # The generator stage's last evaluation: reconstruction only, no task F1
  # from a task model that had not trained.
  assert last['round'] == 6 and last['recon_mse'] > 0, summary
  assert 'f1_macro' not in last, summary
  assert 'f1_macro' not in summary   # nothing to average by mistake
  assert [r['round'] for r in records(workdir_)] == list(range(1, 8))
  assert steps(workdir_) == [5]      # no checkpoint of a diverged round


def test_unwritable_workdir_is_a_clear_error_before_anything(env, tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('')
  proc = train(env, str(blocker / 'run'))
  assert proc.returncode == 1
  assert f'--workdir={blocker}/run is not writable' in proc.stderr, (
      proc.stderr[-2000:])
  assert 'Traceback' not in proc.stderr


def _two_processes(env, workdir_):
  return tiny.two_processes(cmd(workdir_), env)


@pytest.mark.slow
def test_two_processes_stop_at_the_same_round_and_resume(env, reference,
                                                         tmp_path):
  """SIGTERM to process 1 only: JAX's preemption sync point makes both save
  the same round and exit 75; re-running both resumes to the 1-process
  result (up to the all-reduce's float order)."""
  workdir_ = str(tmp_path / 'run')
  procs = _two_processes(env, workdir_)
  try:
    wait_for_round(procs, workdir_, 6)
    procs[1].send_signal(signal.SIGTERM)
  finally:
    logs = tiny.finish(procs)
  for p, log in zip(procs, logs):
    assert p.returncode == preemption.EXIT_REQUEUE, log[-3000:]
  stopped = records(workdir_)[-1]['round']
  assert 6 <= stopped < TOTAL
  assert steps(workdir_) == [5, stopped]
  assert not os.path.exists(os.path.join(workdir_, workdir.SUMMARY))

  procs = _two_processes(env, workdir_)
  logs = tiny.finish(procs)
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert f'round {stopped + 1}/' in logs[0] and f'round {stopped}/' not in (
      logs[0]), logs[0][-3000:]
  got, want = records(workdir_), records(reference[0])
  assert [r['round'] for r in got] == list(range(1, TOTAL + 1))
  for g, w in zip(got, want):
    assert g.keys() == w.keys()
    for k in w:
      assert g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-5), (g['round'], k)


def test_full_disk_is_a_clear_error_before_anything(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir.shutil, 'disk_usage',
                      lambda path: types.SimpleNamespace(free=5 << 20))
  cfg = Config(workdir=str(tmp_path / 'run'), method='zero_fill', rounds=2,
               num_clients=6, clients_per_round=3,
               data_dir=os.environ.get('TFDS_DATA_DIR', str(tmp_path / 'tfds')))
  with pytest.raises(workdir.WorkdirError,
                     match=r'--workdir=.*: 5 MiB free, the run needs about'):
    train_lib.run(cfg)
  # Nothing written but the lock (released, empty).
  assert sorted(os.listdir(tmp_path / 'run')) == [workdir.LOCK_FILE]


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_asks_to_stop_and_a_second_ctrl_c_aborts(sig):
  # What was installed before (pytest-xdist workers ignore SIGINT).
  before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
  with preemption.StopSignal() as stop:
    assert not stop.requested(1)
    os.kill(os.getpid(), sig)
    assert stop.requested(2) and stop.signame == sig.name
    if sig == signal.SIGINT:
      with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
  # The handlers in place before are back.
  assert (signal.getsignal(signal.SIGTERM),
          signal.getsignal(signal.SIGINT)) == before
