"""The flags every entry point shares: one absl flag per Config field.

experiments.train defines them all; the entry points that run many
configs (sweep, paper.table2, privacy_utility) define all but the fields
they set themselves, pass through the ones given on the command line
(`given`), and start the same way (`start`).
"""

import dataclasses

from absl import app
from absl import flags
from absl import logging

from fedrecon_jax import recipe
from fedrecon_jax.config import Config

_DEFINE = {bool: flags.DEFINE_boolean, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string}


def define_flags(exclude=(), help_prefix: str = '') -> None:
  """One absl flag per Config field (but `exclude`), same name, default and
  help (after `help_prefix`); a field with choices is an enum flag."""
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
  """The Config of every field's flag, checked (recipe.validate)."""
  return recipe.validate(Config(**{f.name: flags.FLAGS[f.name].value
                                   for f in dataclasses.fields(Config)}))


def given(exclude=()) -> dict:
  """{field: value} of the Config flags given on the command line (but
  `exclude`): what an entry point passes on to each of its runs, over its
  own settings."""
  fl = flags.FLAGS
  return {f.name: fl[f.name].value for f in dataclasses.fields(Config)
          if f.name not in exclude and fl[f.name].present}


def start(argv) -> None:
  """What every entry point's main does first: refuse stray arguments and,
  unless --verbosity is given, keep library INFO logs (orbax's per-save
  chatter) out of the console, where progress goes one line per round."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
