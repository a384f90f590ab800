r"""Trains FedRecon or a baseline. Every field of fedrecon_jax.config.Config is a flag.

  python -m experiments.train --workdir=/tmp/fedrecon            # FedRecon, uci_multifeature
  python -m experiments.train --workdir=/tmp/zf --method=zero_fill --alpha=0.1
  python -m experiments.train --helpfull                          # every flag

Re-running the same command resumes from the latest checkpoint in --workdir.

Exit status: 0 finished; 1 an error (bad flag, workdir in use or not
writable; the message names the flag); 3 diverged (summary.json has
diverged_at_round); 75 stopped by SIGTERM/SIGINT after saving the round
(EX_TEMPFAIL: requeue and re-run to resume). See fedrecon_jax/preemption.py.
"""

import json
import sys

from absl import app
from absl import logging

from experiments import config_flags


def main(argv):
  config_flags.start(argv)
  # pylint: disable=g-import-not-at-top
  from fedrecon_jax import distributed
  from fedrecon_jax import preemption
  from fedrecon_jax import train
  try:
    cfg = config_flags.config_from_flags()
    distributed.initialize_from_config(cfg)
    summary = train.run(cfg)
  # Bad flags, a workdir in use or unwritable, bad data, missing data files.
  except (ValueError, FileNotFoundError) as e:
    logging.debug('', exc_info=True)
    sys.exit(f'error: {e}')
  except preemption.Preempted as e:
    print(f'preempted: {e}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_REQUEUE)
  print('summary:', json.dumps(
      {k: v for k, v in summary.items() if k != 'config'}), flush=True)
  if 'diverged_at_round' in summary:
    print(f'diverged at round {summary["diverged_at_round"]}: '
          f'{summary["diverged_because"]}', file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_DIVERGED)


if __name__ == '__main__':
  config_flags.define_flags()
  app.run(main)
