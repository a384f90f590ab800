"""What a storm restarts until it is finished, each the tests' tiny run
(tests/tiny.py MODEL, so the storm reuses their compiled programs) with
the resume tests' schedule:

  run          one `experiments.train` workdir;
  sweep        a grouped sweep of 4 cells (seeds 0-3, --runs_per_program=2:
               two groups of two runs), one process;
  distributed  one run as 2 processes under jax.distributed (--distributed
               on localhost); one ended process restarts both, as a job
               scheduler restarts a multi-host job;
  shards       the sweep as 2 processes on one root (--num_shards=2), each
               restarted on its own.

Every process runs under experiments.fault_inject, which holds saves and
metrics lines open so timed kills land inside them.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
MODEL = dict(dataset='uci_multifeature_small', num_clients=6,
             clients_per_round=3, latent_dim=8, gen_width=32, map_width=16,
             task_width=16, alpha=1e6)
SCHEDULE = dict(gen_rounds=3, rounds=5, checkpoint_every=2,
                keep_checkpoints=3)
TOTAL_ROUNDS = SCHEDULE['gen_rounds'] + SCHEDULE['rounds']
SEEDS = (0, 1, 2, 3)


def _flags(settings: dict) -> list[str]:
  return [f'--{k}={v}' for k, v in settings.items()]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  processes: int = 1
  sweep: bool = False        # cells of a sweep root, else one run's workdir
  together: bool = False     # one ended process restarts them all

  def commands(self, root: str) -> list[list[str]]:
    """One command per process, writing under root (a fresh port for a
    multi-process run)."""
    inject = [sys.executable, '-m', 'experiments.fault_inject']
    if self.sweep:
      model = {k: v for k, v in MODEL.items() if k not in ('alpha', 'dataset')}
      cmd = [*inject, 'experiments.sweep', f'--sweep_root={root}',
             '--methods=fedrecon', f'--alphas={MODEL["alpha"]}',
             f'--datasets={MODEL["dataset"]}',
             '--seeds=' + ','.join(map(str, SEEDS)), '--runs_per_program=2',
             '--report=false', *_flags({**model, **SCHEDULE})]
      if self.processes == 1:
        return [cmd]
      return [[*cmd, f'--num_shards={self.processes}', f'--shard_index={i}']
              for i in range(self.processes)]
    workdir = os.path.join(root, 'run')
    cmd = [*inject, 'experiments.train', f'--workdir={workdir}',
           *_flags({**MODEL, **SCHEDULE})]
    if self.processes == 1:
      return [cmd]
    address = f'localhost:{_free_port()}'
    return [[*cmd, '--distributed', f'--coordinator_address={address}',
             f'--num_processes={self.processes}', f'--process_id={i}']
            for i in range(self.processes)]

  def workdirs(self, root: str) -> list[str]:
    if self.sweep:
      return sorted(p for p in glob.glob(os.path.join(root, '*=*'))
                    if os.path.isdir(p))
    return [os.path.join(root, 'run')]

  def finished(self, root: str) -> bool:
    done = [w for w in self.workdirs(root)
            if os.path.exists(os.path.join(w, 'summary.json'))]
    return len(done) == (len(SEEDS) if self.sweep else 1)


TARGETS = {t.name: t for t in (
    Target('run'), Target('sweep', sweep=True),
    Target('distributed', processes=2, together=True),
    Target('shards', processes=2, sweep=True))}
