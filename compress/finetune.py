"""The fine-tuning of a compressed model: its learning-rate schedule, its own by default.

compress/prune.py and compress/slim.py fine-tune from a trained run's last step. By default
the rate falls along a line from FINETUNE_LEARNING_RATE to 0 at the last fine-tuning step,
whatever the source's schedule was; --lr_schedule=continue instead runs the source's schedule
on, stretched to the new last step, and --lr_schedule=rewind replays the rates of the source's
last --finetune_steps steps (learning-rate rewinding, Renda et al. 2020; docs/compression.md).
"""

import dataclasses
import datetime
import json
import os

from absl import flags

import cifar10_config
import cifar10_flags
import cifar10_optim
import cifar10_run

FINETUNE_STEPS = 5000  # steps after the source checkpoint (90 % costs 0.6 point at 5k here)
# The fine-tuning's own learning-rate schedule (docs/compression.md), whatever the source's:
# from FINETUNE_LEARNING_RATE down to 0 at the last fine-tuning step along a line. 'continue'
# instead runs the source's schedule on, stretched to the new last step.
FINETUNE_SCHEDULE = 'warmup_linear'
FINETUNE_LEARNING_RATE = 0.02
CONTINUE = 'continue'
REWIND = 'rewind'
SOURCE_SCHEDULES = (CONTINUE, REWIND)  # the source's schedule, run on or replayed


# The training fields every fine-tuning may set on its config, beyond its schedule's: the
# kernel and distillation (cifar10_distill.py; the source run itself is the natural teacher
# of its compressed form). A tool adds its own (prune: the devices and precision).
CONFIG_FIELDS = ('conv', 'teacher_dir', 'distill_alpha', 'distill_temperature')


def define_config_flags(extra=(), flag_values=flags.FLAGS):
  """The flags of CONFIG_FIELDS + `extra` and --warmup_steps (the fine-tuning schedule's),
  from TrainConfig's fields; {name: FlagHolder}."""
  return cifar10_flags.define_config_flags(CONFIG_FIELDS + tuple(extra) + ('warmup_steps',),
                                           flag_values)


def config_fields(values, extra=()):
  """{field: value} of CONFIG_FIELDS + `extra` from the flag values, for the fine-tuning's
  config: each field named once, for its flag and for the config alike."""
  return {name: values[name] for name in CONFIG_FIELDS + tuple(extra)}


def schedule_record(schedule):
  """The fine-tuning's schedule as pruning.json holds it: its last step only where the rates
  depend on it (a constant or staircase fine-tuning may be resumed with more steps)."""
  record = {'lr_schedule': schedule.name, 'learning_rate': schedule.rate,
            'warmup_steps': schedule.warmup_steps, 'first_step': schedule.first_step}
  if schedule.name in cifar10_optim.SCHEDULES_TO_LAST_STEP:
    record['last_step'] = schedule.last_step
  return record


def finetune_schedule(values, source_config, start, last):
  """(the fine-tuning's TrainConfig learning-rate fields, its Schedule) from the flags.

  --lr_schedule=continue: the source's schedule and rate (--learning_rate if given), run on
  to the new last step, as if the source had been trained that long. Any other: that
  schedule from --learning_rate (default FINETUNE_LEARNING_RATE), starting at the source's
  step and ending at the last fine-tuning step.
  """
  name, rate = values['lr_schedule'], values['learning_rate']
  if name in SOURCE_SCHEDULES and values['warmup_steps']:
    raise cifar10_config.ConfigError(
        f'--warmup_steps={values["warmup_steps"]} belongs to the fine-tuning\'s own schedules: '
        f'with --lr_schedule={name} the source\'s schedule is used, warm-up included.')
  if name == CONTINUE:
    fields = dict(learning_rate=source_config.learning_rate if rate is None else rate)
    return fields, dataclasses.replace(source_config, max_steps=last, **fields).schedule()
  if name == REWIND:  # step s gets the source's rate of step s - start + (its end - steps)
    fields = dict(learning_rate=source_config.learning_rate if rate is None else rate)
    shift = last - source_config.max_steps
    return fields, dataclasses.replace(source_config, max_steps=last, **fields).schedule(shift)
  fields = dict(lr_schedule=name, warmup_steps=values['warmup_steps'],
                learning_rate=FINETUNE_LEARNING_RATE if rate is None else rate)
  return fields, dataclasses.replace(source_config, max_steps=last, **fields).schedule(start)


def describe(schedule, values):
  """The log line that states the fine-tuning's schedule at start."""
  own = {CONTINUE: " (the source's schedule run on)",
         REWIND: " (the source's last steps replayed)"}.get(values['lr_schedule'], '')
  return f'fine-tuning learning rate: {schedule!r}{own}'


def define_flags(flag_values=flags.FLAGS):
  """--finetune_steps, --lr_schedule and --learning_rate of a fine-tuning; {name: FlagHolder}
  (its --warmup_steps is the training flag's)."""
  return dict(
      finetune_steps=flags.DEFINE_integer('finetune_steps', FINETUNE_STEPS, 'Steps of '
                                          'fine-tuning after the source checkpoint.',
                                          lower_bound=1, flag_values=flag_values),
      lr_schedule=flags.DEFINE_enum(
          'lr_schedule', FINETUNE_SCHEDULE,
          list(cifar10_optim.SCHEDULES) + list(SOURCE_SCHEDULES),
          "The fine-tuning's learning rate, from the source's step to its last: "
          f'{cifar10_optim.describe(cifar10_optim.SCHEDULES)}; or {CONTINUE} (the source\'s '
          f'schedule run on to the new last step) or {REWIND} (the rates of the source\'s '
          'last --finetune_steps steps, replayed: learning-rate rewinding).',
          flag_values=flag_values),
      learning_rate=flags.DEFINE_float(
          'learning_rate', None, f"The fine-tuning's rate; default {FINETUNE_LEARNING_RATE} "
          f"(the source's with --lr_schedule={CONTINUE} or {REWIND}).", lower_bound=0.0,
          flag_values=flag_values),
  )


def window(values, start, last, what, cut=False):
  """(begin, end) of a fine-tuning's mask window from --begin_step and --end_step: by default
  the first half of the fine-tuning; `cut`: the end needs a step after it (slimming cuts the
  model there).

  Raises:
    cifar10_config.ConfigError: the window leaves the fine-tuning's steps.
  """
  begin = start if values['begin_step'] is None else values['begin_step']
  end = begin + values['finetune_steps'] // 2 if values['end_step'] is None else values['end_step']
  highest = last - 1 if cut else last
  if not start <= begin <= end <= highest:
    raise cifar10_config.ConfigError(
        f'the {what} window --begin_step={begin} .. --end_step={end} must lie within the '
        f'fine-tuning steps {start} .. {highest} (the source is at step {start}).')
  return begin, end


def source_run(values, kind, settings_file):
  """(source config, source checkpoint, its step) of --source_dir, with --train_dir checked
  to be a new folder or a `kind` run of this tool (its `settings_file` there).

  Raises:
    cifar10_config.ConfigError: no source run, the same folder twice, or a --train_dir that
      holds another kind of run (checked before anything is written: resuming would first
      rewrite that run's config).
  """
  source_dir, train_dir = values['source_dir'], values['train_dir']
  source_config, source = cifar10_run.latest_run(source_dir, '--source_dir')
  if os.path.abspath(source_dir) == os.path.abspath(train_dir):
    raise cifar10_config.ConfigError(f'--train_dir must differ from --source_dir: {kind} '
                                     'writes a new run and never touches the source.')
  if (not os.path.exists(os.path.join(train_dir, settings_file)) and
      (cifar10_run.newest_checkpoint(train_dir) or cifar10_run.read_config(train_dir))):
    raise cifar10_config.ConfigError(f'--train_dir={train_dir} holds a run that is not a '
                                     f'{kind} run: pass a new --train_dir.')
  start = cifar10_run.checkpoint_step(source)
  if start < source_config.max_steps:
    print(f'{datetime.datetime.now()}: note: the source run is unfinished, at step {start:,} of '
          f'its --max_steps={source_config.max_steps:,}; {kind} starts from there.', flush=True)
  return source_config, source, start


class FromSource:
  """A cifar10_trainer.Trainer mixin for a tool that fine-tunes another run: a new run starts
  from `source_checkpoint` (the source's layout; what the tool adds, such as masks, starts
  fresh), a re-run resumes its own folder. `kind` names the tool's runs in errors."""

  source_checkpoint = None
  kind = 'fine-tuning'

  def restore_latest(self):
    if cifar10_run.checkpoint_paths(self.config.train_dir) or not self.source_checkpoint:
      try:
        return super().restore_latest()
      except cifar10_run.UnreadableCheckpoint as e:  # e.g. an ordinary run: no masks.
        raise cifar10_config.ConfigError(
            f'{self.config.train_dir} holds no {self.kind} checkpoint of this layout that '
            f'restores ({e}): pass a new --train_dir.') from e
    self.files.open()
    self.restored_from, self.skipped = self.source_checkpoint, []
    self.restore(self.source_checkpoint)
    return int(self.step.numpy())


def read_settings(path):
  """The settings record a tool kept at `path` (pruning.json, slimming.json), or None.

  Raises:
    cifar10_config.ConfigError: the file is there but is no JSON object.
  """
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    record = e
  if not isinstance(record, dict):
    detail = (f'{type(record).__name__}: {record}' if isinstance(record, Exception)
              else f'a JSON {type(record).__name__}, not an object')
    raise cifar10_config.ConfigError(f'{path} is unreadable ({detail}): it must be the '
                                     f'{os.path.basename(path)} this tool wrote; pass another '
                                     '--train_dir.')
  return record


def keep_settings(path, previous, record, kind):
  """Refuses a resumed run whose kept settings (`previous`, from read_settings) differ from
  `record`, then writes `record` to `path`; `kind` names the run ('pruning') in the error.
  `record` is compared as it reads back from JSON (a tuple as the list it becomes)."""
  record = json.loads(json.dumps(record))
  if previous is not None:
    changed = [f'{key}: {previous.get(key)!r} -> {value!r}' for key, value in record.items()
               if previous.get(key) != value]
    if changed:
      train_dir = os.path.dirname(path)
      raise cifar10_config.ConfigError(
          f'{train_dir} holds a {kind} run with other settings ({"; ".join(changed)}): pass '
          'another --train_dir to run with these.')
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cifar10_run.write_json(path, record)
  except OSError as e:
    raise cifar10_config.ConfigError(f'cannot write {path} ({e}): pass a writable '
                                     '--train_dir.') from e


def define_run_flags(flag_values=flags.FLAGS, frequency=100):
  """--source_dir, --train_dir and the mask window (--begin_step, --end_step, --frequency) of
  a tool that fine-tunes a trained run with masks; {name: FlagHolder}."""
  return dict(
      source_dir=flags.DEFINE_string('source_dir', None, 'The --train_dir of a trained run.',
                                     required=True, flag_values=flag_values),
      train_dir=flags.DEFINE_string('train_dir', None, 'The new run (checkpoints, report).',
                                    required=True, flag_values=flag_values),
      begin_step=flags.DEFINE_integer('begin_step', None, 'First mask update (a global '
                                      "step); default the source's last step.", lower_bound=0,
                                      flag_values=flag_values),
      end_step=flags.DEFINE_integer('end_step', None, 'Last mask update, where the target is '
                                    'reached; default --begin_step + --finetune_steps/2.',
                                    lower_bound=0, flag_values=flag_values),
      frequency=flags.DEFINE_integer('frequency', frequency, 'Steps between mask updates.',
                                     lower_bound=1, flag_values=flag_values),
  )
