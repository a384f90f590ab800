r"""A storm of faults on the tests' tiny run, in seeded parts; nothing may
be lost or changed.

  python -m experiments.fault_storm --root=/tmp/storm --seed=0 --per_kind=5 \
      --results=experiments/results/fault_storm

injects faults of each kind (experiments/faults/kinds.py: SIGKILL in the
rounds, in a save, in a metrics line; SIGTERM; second writers; a 2-process
run losing a process or getting SIGTERM; two sweep shards killed) until
--per_kind of each took the path it is aimed at, restarting each target
until it is finished and comparing every file it wrote with an
uninterrupted run (experiments/faults/compare.py). The part's JSON goes to
<results>/part-seed<seed>.json and the page (<results>_cpu.md) is rewritten
from every part there. --page_only rewrites the page alone.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from experiments.faults import compare, kinds, page, storm

FLAGS = flags.FLAGS


def define_flags() -> None:
  # Not at import: the tests import this module beside other entry points.
  flags.DEFINE_string('root', None, 'Folder for the references, the storm '
                      'passes and the processes\' logs.')
  flags.DEFINE_integer('seed', 0, 'Seed of the part: fault order, aim, '
                       'timing. One part per seed.')
  flags.DEFINE_integer('per_kind', 5, 'Counted faults of each kind.')
  flags.DEFINE_list('kinds', list(kinds.KINDS), 'Kinds to inject.')
  flags.DEFINE_string('results', None, 'Folder of the parts\' JSON (e.g. '
                      'experiments/results/fault_storm); the page is '
                      '<results>_cpu.md.')
  flags.DEFINE_bool('page_only', False, 'Inject nothing: rewrite the page '
                    'from the parts in --results.')


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)   # orbax's per-read warnings
  unknown = set(FLAGS.kinds) - set(kinds.KINDS)
  if unknown:
    sys.exit(f'error: --kinds: unknown {sorted(unknown)}; choose from '
             f'{", ".join(kinds.KINDS)}.')
  if FLAGS.page_only:
    if not FLAGS.results:
      sys.exit('error: --page_only needs --results.')
    page.write_page(FLAGS.results, FLAGS.results + '_cpu.md')
    return
  if not FLAGS.root:
    sys.exit('error: --root is required.')
  if FLAGS.per_kind < 1:
    sys.exit(f'error: --per_kind={FLAGS.per_kind} must be >= 1.')
  result = storm.run_part(FLAGS.root, FLAGS.seed, FLAGS.per_kind,
                          FLAGS.kinds)
  if FLAGS.results:
    print('part:', page.write_part(FLAGS.results, result))
    page.write_page(FLAGS.results, FLAGS.results + '_cpu.md')
  print(page.render([result]))
  if not compare.clean(result):
    sys.exit('error: the storm lost or changed results (see above).')


if __name__ == '__main__':
  define_flags()
  app.run(main)
