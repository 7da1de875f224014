"""The flags that several programs share, each defined once, and flag parsing as a function.

Every definer takes the absl FlagValues to define into (absl's global FLAGS by default) and
returns {name: FlagHolder}. A program reads its holders once in `main` with `read` and passes
plain values on; a test calls `parse(define, argv)` instead and gets the same values without
a process or absl's global state.
"""

from absl import app
from absl import flags

import cifar10_config
import cifar10_env
import cifar10_records


def parse(define, argv, flag_values=None):
  """(values, given) from argv, as a program of these flags would read them.

  Args:
    define: callable(flag_values) -> {name: FlagHolder} (a program's define_flags).
    argv: the arguments after the program's name.
    flag_values: where to define them; default a fresh absl.flags.FlagValues.

  Raises:
    absl.flags.Error: a flag is unknown or refuses its value (what absl prints as
      `FATAL Flags parsing error`).
  """
  if flag_values is None:  # An empty FlagValues is false: `or` would replace the caller's.
    flag_values = flags.FlagValues()
  holders = define(flag_values)
  flag_values(['program'] + list(argv))
  return read(holders)


def read(holders):
  """({name: value}, {names given on the command line}) of the holders."""
  return ({name: holder.value for name, holder in holders.items()},
          {name for name, holder in holders.items() if holder.present})


def main_values(argv, holders):
  """What a program's main() reads: refuses stray arguments (absl prints the help then),
  quiets the logs unless -v was given, and returns read(holders)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  return read(holders)


def define_data_flags(flag_values=flags.FLAGS):
  """Where the data is: every program that reads CIFAR-10."""
  return dict(
      data_dir=flags.DEFINE_string(
          'data_dir', 'data', 'Folder with cifar-10-batches-bin/ or cifar-10-binary.tar.gz '
          '(or the archive path itself); the archive is downloaded here when absent.',
          flag_values=flag_values),
      extract_dir=flags.DEFINE_string(
          'extract_dir', None, 'Where to extract the archive; default --data_dir when it is '
          'writable, else ~/.cache/cifar10.', flag_values=flag_values),
      data_url=flags.DEFINE_string('data_url', cifar10_records.DATA_URL,
                                   'Where to download the archive from when it is absent.',
                                   flag_values=flag_values),
  )


def batches_dir(values):
  """cifar10_records.find_batches_dir from the values of the data flags."""
  return cifar10_records.find_batches_dir(values['data_dir'], values['extract_dir'],
                                          url=values['data_url'])


def define_config_flags(names, flag_values=flags.FLAGS, defaults=None):
  """A flag for each TrainConfig field of `names`: type, help and limits from the field.

  Args:
    names: TrainConfig field names.
    flag_values: where to define them.
    defaults: {name: default} where a program's default differs from TrainConfig's.
  """
  defaults = defaults or {}
  return {name: _config_flag(cifar10_config.FIELDS[name], defaults.get(name), flag_values)
          for name in names}


def _config_flag(field, default, flag_values):
  meta, name = field.metadata, field.name
  default = field.default if default is None else default
  text = cifar10_config.field_help(name)
  if name == 'image_size':  # None: chosen from --augment (cifar10_config.config_from_values).
    return flags.DEFINE_enum(name, None, [str(c) for c in meta['choices']], text,
                             flag_values=flag_values)
  if field.type is bool:
    return flags.DEFINE_boolean(name, default, text, flag_values=flag_values)
  if meta['choices'] is not None:
    return flags.DEFINE_enum(name, default, list(meta['choices']), text,
                             flag_values=flag_values)
  if field.type is str:
    return flags.DEFINE_string(name, default, text, flag_values=flag_values)
  define = flags.DEFINE_integer if field.type is int else flags.DEFINE_float
  return define(name, default, text, lower_bound=meta['low'], upper_bound=meta['high'],
                flag_values=flag_values)


TRAINING_FLAGS = tuple(cifar10_config.FIELDS)  # cifar10_train.py: every field is a flag


def define_run_flags(flag_values=flags.FLAGS, required=True, conv='auto', what='run'):
  """--checkpoint_dir, --ema and --conv: the programs that read a trained run.

  Args:
    flag_values: where to define them.
    required: --checkpoint_dir has no default (else TrainConfig's train_dir).
    conv: --conv's default (direct for the programs that export); None: no --conv.
    what: what the run is used for, in --ema's help ('evaluate', 'export', ...).
  """
  default = None if required else cifar10_config.TrainConfig.train_dir
  holders = dict(
      checkpoint_dir=flags.DEFINE_string('checkpoint_dir', default,
                                         f'The --train_dir of the run to {what}.',
                                         required=required, flag_values=flag_values),
      ema=flags.DEFINE_boolean('ema', True, f'{what.capitalize()} the EMA shadows (--noema: '
                               'the raw weights).', flag_values=flag_values))
  if conv is not None:
    holders.update(define_config_flags(['conv'], flag_values, defaults={'conv': conv}))
  return holders
