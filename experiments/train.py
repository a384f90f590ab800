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

import dataclasses
import json
import sys

from absl import app
from absl import flags
from absl import logging

from fedrecon_jax import recipe
from fedrecon_jax.config import Config

_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_flags(exclude=(), help_prefix: str = '') -> None:
  """One absl flag per Config field (but `exclude`), same name, default and
  help (after `help_prefix`)."""
  for f in dataclasses.fields(Config):
    if f.name in exclude:
      continue
    help_ = help_prefix + f.metadata['help']
    choices = recipe.choices(f)
    if choices:
      flags.DEFINE_enum(f.name, f.default, choices, help_)
    else:
      _DEFINE[type(f.default)](f.name, f.default, help_)


def config_from_flags() -> Config:
  return recipe.validate(Config(**{f.name: flags.FLAGS[f.name].value
                                   for f in dataclasses.fields(Config)}))


def start(argv) -> None:
  """What every entry point's main does first: refuse stray arguments and,
  unless --verbosity is given, keep library INFO logs (orbax's per-save
  chatter) out of the console, where progress goes one line per round."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  start(argv)
  # pylint: disable=g-import-not-at-top
  from fedrecon_jax import distributed
  from fedrecon_jax import preemption
  from fedrecon_jax import train
  try:
    cfg = config_from_flags()
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
  define_flags()
  app.run(main)
