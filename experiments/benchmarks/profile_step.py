r"""Where one client update's time goes, op by op (jax.profiler).

  python -m experiments.benchmarks.profile_step --stage=1 \
      --out=experiments/results/profile_stage1_cpu.json

Compiles one client's local update of the default config (uci_multifeature,
batch 16, 1 epoch: the benchmark's workload) alone, runs it under
jax.profiler, and sums each XLA op's time over --repeats runs. Ops are
grouped by the network their HLO metadata names (Mapping, MLP, ...), by pass
(forward / backward / optimizer and the rest) and by kind (library dot
fusions, XLA dots, elementwise loops), and the top ops are listed with the
shape each produces. On CPU the op times sum over the intra-op threads, so
they exceed the wall time. Prints markdown tables; writes JSON.
"""

import collections
import glob
import re
import tempfile
import time

from absl import app
from absl import flags
import jax
from jax.profiler import ProfileData

from fedrecon_jax import experiment, metrics_writer, recipe, rounds
from fedrecon_jax.config import Config

_STAGE = flags.DEFINE_integer('stage', 1, 'Stage whose client update runs.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Profiled runs.')
_TOP = flags.DEFINE_integer('top', 12, 'Ops listed.')
_OUT = flags.DEFINE_string('out', '', 'JSON output path ("" = none).')


def _where(metadata: str) -> tuple[str, str]:
  """(network, pass) of an op from its op_name metadata."""
  net = re.findall(r'vmap\((\w+)\)', metadata)
  net = net[-1] if net else ('other' if metadata else 'unnamed')
  pass_ = ('backward' if 'transpose(' in metadata
           else 'forward' if 'jvp(' in metadata else 'optimizer & rest')
  return net, pass_


def main(argv):
  del argv
  cfg = Config(workdir=tempfile.mkdtemp())
  exp = experiment.build(cfg)
  params = exp.model.init_params(jax.random.key(0))
  stage_plan = recipe.of(cfg).plan(exp.model, _STAGE.value, cfg.num_clients)
  h = recipe.of(cfg).hparams()
  trainable, frozen = rounds.split_params(params, stage_plan.groups)
  round_ = rounds.make_round(stage_plan, rounds.make_mesh(1))
  population = round_.fill(params, round_.place(exp.population))
  data = jax.tree.map(lambda x: x[0], population)   # client 0
  args = (h, trainable, frozen, data, jax.random.key(1))
  # Compiled as the round programs are (rounds.compiler_options).
  options = rounds.compiler_options(jax.default_backend())
  compiled = jax.jit(stage_plan.client_update,
                     compiler_options=options).lower(*args).compile()
  hlo = compiled.as_text()
  run = lambda: jax.block_until_ready(compiled(*args))
  run()
  t0 = time.perf_counter()
  run()
  wall = time.perf_counter() - t0
  logdir = tempfile.mkdtemp()
  with jax.profiler.trace(logdir):
    for _ in range(_REPEATS.value):
      run()
  (path,) = glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True)
  op_ns, op_calls = collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      if 'XLA' not in line.name and 'Eigen' not in line.name:
        continue
      for event in line.events:
        if event.name != 'ThunkExecutor::Execute' and '::' not in event.name:
          op_ns[event.name] += event.duration_ns
          op_calls[event.name] += 1
  per_run = {k: v / 1e6 / _REPEATS.value for k, v in op_ns.items()}   # ms
  total = sum(per_run.values())
  by = {'network': collections.Counter(), 'pass': collections.Counter(),
        'kind': collections.Counter()}
  top = []
  for name, ms in sorted(per_run.items(), key=lambda kv: -kv[1]):
    found = re.search(r'\n\s*(?:ROOT )?%?' + re.escape(name)
                      + r' = (\S+) ([^\n]*)', hlo)
    shape = found.group(1) if found else '?'
    metadata = found and re.search(r'op_name="([^"]*)"', found.group(2))
    metadata = metadata.group(1) if metadata else ''
    net, pass_ = _where(metadata)
    by['network'][net] += ms
    by['pass'][pass_] += ms
    by['kind'][name.split('.')[0]] += ms
    if len(top) < _TOP.value:
      top.append({'op': name, 'ms': round(ms, 2),
                  'calls': op_calls[name] // _REPEATS.value, 'shape': shape,
                  'network': net, 'pass': pass_})
  print(f'Stage {_STAGE.value} client update on {jax.devices()[0].platform}: '
        f'{wall * 1e3:.0f} ms wall a run, ops {total:.0f} ms summed over '
        f'threads, {len(per_run)} ops.\n')
  for what, counts in by.items():
    print(f'| {what} | ms | share |\n|---|---|---|')
    for k, ms in counts.most_common(8):
      print(f'| {k} | {ms:.1f} | {ms / total:.0%} |')
    print()
  print('| op | ms | calls | shape | network | pass |\n'
        '|---|---|---|---|---|---|')
  for t in top:
    print(f"| {t['op']} | {t['ms']} | {t['calls']} | {t['shape']} | "
          f"{t['network']} | {t['pass']} |")
  if _OUT.value:
    metrics_writer.write_json_atomic(_OUT.value, {
        'date': time.strftime('%Y-%m-%d %H:%M'), 'stage': _STAGE.value,
        'platform': jax.devices()[0].platform, 'wall_ms': wall * 1e3,
        'ops_ms': total, 'by': {k: dict(v) for k, v in by.items()},
        'top': top}, indent=1)


if __name__ == '__main__':
  app.run(main)
