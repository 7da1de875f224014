"""The fine-tuning of a compressed model: its learning-rate schedule, its own by default.

compress/prune.py and compress/slim.py fine-tune from a trained run's last step. By default
the rate falls along a line from FINETUNE_LEARNING_RATE to 0 at the last fine-tuning step,
whatever the source's schedule was; --lr_schedule=continue instead runs the source's schedule
on, stretched to the new last step (docs/compression.md).
"""

import dataclasses

from absl import flags

import cifar10_config
import cifar10_optim

FINETUNE_STEPS = 5000  # steps after the source checkpoint (90 % costs 0.6 point at 5k here)
# The fine-tuning's own learning-rate schedule (docs/compression.md), whatever the source's:
# from FINETUNE_LEARNING_RATE down to 0 at the last fine-tuning step along a line. 'continue'
# instead runs the source's schedule on, stretched to the new last step.
FINETUNE_SCHEDULE = 'warmup_linear'
FINETUNE_LEARNING_RATE = 0.02
CONTINUE = 'continue'


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
  if name == CONTINUE and values['warmup_steps']:
    raise cifar10_config.ConfigError(
        f'--warmup_steps={values["warmup_steps"]} belongs to the fine-tuning\'s own schedules: '
        f'with --lr_schedule={CONTINUE} the source\'s schedule runs on, warm-up included.')
  if name == CONTINUE:
    fields = dict(learning_rate=source_config.learning_rate if rate is None else rate)
    return fields, dataclasses.replace(source_config, max_steps=last, **fields).schedule()
  fields = dict(lr_schedule=name, warmup_steps=values['warmup_steps'],
                learning_rate=FINETUNE_LEARNING_RATE if rate is None else rate)
  return fields, dataclasses.replace(source_config, max_steps=last, **fields).schedule(start)


def describe(schedule, values):
  """The log line that states the fine-tuning's schedule at start."""
  own = ' (the source\'s schedule)' if values['lr_schedule'] == CONTINUE else ''
  return f'fine-tuning learning rate: {schedule!r}{own}'


def define_flags(flag_values=flags.FLAGS):
  """--finetune_steps, --lr_schedule and --learning_rate of a fine-tuning; {name: FlagHolder}
  (its --warmup_steps is the training flag's)."""
  return dict(
      finetune_steps=flags.DEFINE_integer('finetune_steps', FINETUNE_STEPS, 'Steps of '
                                          'fine-tuning after the source checkpoint.',
                                          lower_bound=1, flag_values=flag_values),
      lr_schedule=flags.DEFINE_enum(
          'lr_schedule', FINETUNE_SCHEDULE, list(cifar10_optim.SCHEDULES) + [CONTINUE],
          "The fine-tuning's learning rate, from the source's step to its last: "
          f'{cifar10_optim.describe(cifar10_optim.SCHEDULES)}; or {CONTINUE} (the source\'s '
          'schedule run on to the new last step).', flag_values=flag_values),
      learning_rate=flags.DEFINE_float(
          'learning_rate', None, f"The fine-tuning's rate; default {FINETUNE_LEARNING_RATE} "
          f"(the source's with --lr_schedule={CONTINUE}).", lower_bound=0.0,
          flag_values=flag_values),
  )
