"""The tests' one tiny training run, on uci_multifeature_small.

Compilation dominates the end-to-end tests, and a program is compiled once
per distinct model and cohort. Every end-to-end test (in-process
`train.run`, `experiments.train` / `experiments.sweep` subprocesses) trains
this model with this cohort, so its round and evaluation programs compile
once per suite and every later run loads them from the persistent
compilation cache (conftest.py). Schedules (rounds, evaluations,
checkpoints) differ between tests and compile nothing new; a change to
MODEL, a seed or the method does.

The data is uci_multifeature_small, three of uci_multifeature's six views
(real data, same samples and split): tracing, which the persistent cache
does not skip, grows with the number of modalities, and a warm run of 2+2
rounds takes ~22 s of CPU on it against ~31 s on the six views.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What the compiled programs depend on: the data, model widths, the cohort,
# and the clients' padded size. A near-IID split (alpha 1e6) gives every
# seed the same client sizes (largest 270), so runs of several seeds share
# programs.
DATASET = 'uci_multifeature_small'
MODEL = dict(dataset=DATASET, num_clients=6, clients_per_round=3,
             latent_dim=8, gen_width=32, map_width=16, task_width=16,
             alpha=1e6)


def flags(**schedule) -> list[str]:
  """Command-line flags of the tiny run with `schedule` added (a None
  value leaves that flag out, e.g. alpha for a sweep's --alphas axis)."""
  return [f'--{k}={v}' for k, v in {**MODEL, **schedule}.items()
          if v is not None]


def train_cmd(workdir: str, *extra: str, **schedule) -> list[str]:
  return [sys.executable, '-m', 'experiments.train', f'--workdir={workdir}',
          *flags(**schedule), *extra]


def popen(cmd, env, **kwargs) -> subprocess.Popen:
  """Starts `cmd` (a list from train_cmd) in the repo with text pipes."""
  return subprocess.Popen(cmd, cwd=REPO, env=env, text=True,
                          **{'stdout': subprocess.PIPE,
                             'stderr': subprocess.PIPE, **kwargs})


def run(cmd, env, check=True) -> subprocess.CompletedProcess:
  """Runs `cmd` in the repo to the end; with check, asserts it exited 0."""
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc


def records(workdir: str) -> list[dict]:
  """metrics.jsonl as parsed records, without the wall-clock field."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  return [{k: v for k, v in r.items() if not k.endswith('seconds')}
          for r in lines]


def steps(workdir: str) -> list[int]:
  """The committed checkpoint steps ([] before the first)."""
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def kill_after_a_checkpoint(cmd, env, workdir: str) -> None:
  """Starts `cmd` and SIGKILLs it once a checkpoint is committed and later
  rounds are in metrics.jsonl, so resuming has rounds to drop and redo."""
  proc = popen(cmd, env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  try:
    while proc.poll() is None and time.time() < deadline:
      done = steps(workdir)
      if done and rounds_logged(workdir) > done[-1]:
        break
      time.sleep(0.01)
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.kill(proc.pid, signal.SIGKILL)
  finally:
    proc.kill()
    proc.wait()


def rounds_logged(workdir: str) -> int:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    return f.read().count('\n')


def two_processes(cmd, env) -> list[subprocess.Popen]:
  """`cmd` (a list from train_cmd) as processes 0 and 1 of one
  --distributed run on localhost, stdout and stderr together."""
  with socket.socket() as s:
    s.bind(('localhost', 0))
    address = f'localhost:{s.getsockname()[1]}'
  # LLVM -O0 halves these multi-device compiles (as in test_scale.py).
  env = {**env, 'XLA_FLAGS': '--xla_backend_optimization_level=0'}
  return [popen([*cmd, '--distributed', f'--coordinator_address={address}',
                 '--num_processes=2', f'--process_id={pid}'], env,
                stderr=subprocess.STDOUT) for pid in range(2)]


def finish(procs, timeout=600) -> list[str]:
  """Each process's output once all have ended (killed if still running
  after `timeout` s or on an error)."""
  try:
    return [p.communicate(timeout=timeout)[0] for p in procs]
  finally:
    for p in procs:
      p.kill()
