r"""Stage-1 round speed of two source trees, measured in one session.

  git worktree add /tmp/old <commit>
  python -m experiments.stage1_ab --trees=/tmp/old,. --repeats=2

Each tree runs in its own subprocess (its own `fedrecon_jax` on PYTHONPATH),
alternating, on the default config's stage-1 round (uci_multifeature, 10
clients per round, batch 16) as a run builds it (trees with
`memory_plan.speed_cap`: the program `--clients_per_device=auto` picks,
timed with its planning; older ones: all clients at once): compile time and the median of 5 rounds, in
wall and process CPU seconds. CPU seconds are the fairer comparison on a
shared machine. Prints a table and writes JSON (--out).
"""

import json
import os
import subprocess
import sys

from absl import app
from absl import flags

_TREES = flags.DEFINE_list('trees', None, 'Source trees to compare.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Alternating repeats.')
_OUT = flags.DEFINE_string('out', 'experiments/results/stage1_ab_cpu.json',
                           'Where the JSON goes.')

# Runs inside the measured tree's subprocess; prints one JSON line.
_PROBE = r'''
import json, resource, time
import jax
from fedrecon_jax import distributed, rounds, train
from fedrecon_jax.config import Config
cpu = lambda: sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
cfg = Config(workdir='/tmp/stage1_ab_unused')
mesh = rounds.make_mesh(1)
if hasattr(rounds, 'init_server_opt'):    # before the one round builder
  exp = train.build(cfg)
  params = jax.jit(exp.model.init)(jax.random.key(0))
  pop = distributed.replicate(exp.population, mesh)
  fn, tx = rounds.make_round(cfg, exp.model, 1, mesh, cfg.num_clients)
  p, o, k = distributed.replicate(
      (params, rounds.init_server_opt(tx, params, cfg, 1), jax.random.key(1)),
      mesh)
  args = lambda key: (p, o, pop, key)
else:
  from fedrecon_jax import experiment, memory_plan, plan
  exp = experiment.build(cfg)
  params = jax.jit(exp.model.init)(jax.random.key(0))
  h = cfg.hparams()
  stage_plan = plan.make_plan(cfg, exp.model, 1, cfg.num_clients)
  pop = rounds.place(exp.population, mesh, False)
  if hasattr(memory_plan, 'speed_cap'):
    # The program a run picks (--clients_per_device=auto), compiled by it.
    compile_ = lambda: memory_plan.make_round(stage_plan, mesh, params, pop,
                                              h, cfg=cfg).round
  else:
    compile_ = lambda: rounds.make_round(stage_plan, mesh)
  args = lambda key: rnd.args(state, pop, key, h)
k = jax.random.key(1)
t, c = time.perf_counter(), cpu()
if 'compile_' in globals():
  rnd = compile_()
  fn, state = rnd.jitted, rnd.init(params, h)
  if not hasattr(memory_plan, 'speed_cap'):
    fn.lower(*args(k)).compile()
else:
  fn.lower(*args(k)).compile()
out = {'compile_s': time.perf_counter() - t, 'compile_cpu_s': cpu() - c}
jax.block_until_ready(fn(*args(k)))
wall, cpus = [], []
for r in range(5):
  t, c = time.perf_counter(), cpu()
  jax.block_until_ready(fn(*args(jax.random.key(r))))
  wall.append(time.perf_counter() - t)
  cpus.append(cpu() - c)
steps = -(-exp.population.y.shape[1] // cfg.batch_size) * cfg.local_epochs
n = cfg.clients_per_round * steps
out.update(round_s=sorted(wall)[2], round_cpu_s=sorted(cpus)[2],
           client_steps_per_s=n / sorted(wall)[2],
           client_steps_per_cpu_s=n / sorted(cpus)[2])
print(json.dumps(out))
'''


def measure(tree: str) -> dict:
  env = {**os.environ, 'PYTHONPATH': os.path.abspath(tree),
         'JAX_COMPILATION_CACHE_DIR': '', 'JAX_ENABLE_COMPILATION_CACHE': '0'}
  proc = subprocess.run([sys.executable, '-c', _PROBE], env=env, check=True,
                        capture_output=True, text=True, cwd='/tmp')
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  return {'tree': tree, 'load': os.getloadavg()[0], **out}


def main(argv):
  del argv
  rows = [measure(t) for _ in range(_REPEATS.value) for t in _TREES.value]
  print('| tree | compile s (CPU s) | s/round (CPU s) | client-steps/s '
        '(per CPU s) | load |\n|---|---|---|---|---|')
  for r in rows:
    print(f'| {r["tree"]} | {r["compile_s"]:.1f} ({r["compile_cpu_s"]:.1f}) '
          f'| {r["round_s"]:.2f} ({r["round_cpu_s"]:.2f}) '
          f'| {r["client_steps_per_s"]:.1f} ({r["client_steps_per_cpu_s"]:.1f})'
          f' | {r["load"]:.1f} |')
  with open(_OUT.value, 'w') as f:
    json.dump(rows, f, indent=1)


if __name__ == '__main__':
  flags.mark_flag_as_required('trees')
  app.run(main)
