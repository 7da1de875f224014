"""Every training hyperparameter, described once: TrainConfig and the named recipes.

Each TrainConfig field carries its default, unit, help text and limits; the training flags
(cifar10_flags.define_config_flags), TrainConfig's validation, a run's config.json and the
flag table of docs/flags.md (flag_table) are all derived from them. A recipe is one
entry of RECIPES: a description and the values it changes.
"""

import dataclasses
import math

import cifar10_distribute
import cifar10_input
import cifar10_model
import cifar10_optim
import cifar10_records
import cifar10_spectral
import models


class ConfigError(ValueError):
  """A setting or a run folder that does not hold what is expected; the message says what
  to do."""


def _field(default, help_text, unit=None, choices=None, low=None, high=None):
  """A TrainConfig field: its default, help text, unit and limits (low <= x <= high, x in
  choices; a number is also finite), which its flag and the config both enforce."""
  return dataclasses.field(default=default, metadata=dict(
      help=help_text, unit=unit, choices=choices, low=low, high=high))


# --recipe: named sets of training defaults; a flag given explicitly overrides its recipe's
# value. 'study' is TrainConfig's own defaults (the study's runs); docs/recipes.md has how
# 'fast', 'fast32' and 'fast32m' were chosen and what they reach. Each: (description, values).
_FAST32 = dict(optimizer='nesterov', momentum=0.9, learning_rate=0.2, lr_schedule='onecycle',
               label_smoothing=0.1, weight_decay='l2', l2_decay=cifar10_model.L2_WEIGHT_DECAY,
               # EMA 0.99: the shadows of a BatchNorm model are read with the raw weights'
               # moving statistics; 0.999 cost budget0 0.46 point against its raw weights.
               moving_average_decay=0.99, distortions='crop_flip',
               image_size=cifar10_records.IMAGE_SIZE)
RECIPES = {
    'study': ("the study's", {}),
    'tutorial': ("the tutorial's init, decay and staircase",
                 dict(init='tutorial', weight_decay='tutorial', lr_schedule='staircase')),
    'fast': ('Nesterov, warm-up + linear decay, label smoothing, L2 on every matrix',
             dict(optimizer='nesterov', momentum=0.9, learning_rate=0.03,
                  lr_schedule='warmup_linear', warmup_steps=500, label_smoothing=0.1,
                  weight_decay='l2', l2_decay=cifar10_model.L2_WEIGHT_DECAY,
                  moving_average_decay=0.999)),
    'fast32': ('fast at 32x32 with crop and flip, one-cycle', _FAST32),
    'fast32m': ("fast32, the crop padded with the image's mean",
                dict(_FAST32, distortions='crop_flip_mean')),
}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every training hyperparameter, with its default, unit and limits (see the module)."""
  train_dir: str = _field('runs/tutorial', 'Checkpoints, summaries and config.json go here.')
  model: str = _field('tutorial', 'Model to train.', choices=tuple(models.names()))
  widths: str = _field('', 'Output channels of the layers to build narrower than --model '
                       'does, as layer=channels pairs, e.g. conv1_1=12,conv2_1=30: the shapes '
                       'of a slimmed model (compress/slim.py writes them); empty: the model '
                       'as registered.')
  recipe: str = _field('study', 'A named set of defaults for the other flags (printed at '
                       'start, docs/recipes.md): {recipes}. A flag given explicitly wins.',
                       choices=tuple(RECIPES))
  max_steps: int = _field(10000, 'Train up to this step.', unit='steps', low=1)
  batch_size: int = _field(128, 'Images per step.', unit='images', low=1,
                           high=cifar10_records.NUM_TRAIN_EXAMPLES)
  optimizer: str = _field('sgd', 'The update rule: {optimizers}.',
                          choices=tuple(cifar10_optim.OPTIMIZERS))
  momentum: float = _field(0.9, 'Momentum of the velocity (momentum, nesterov) or the decay '
                           'of the first moment (adamw).', low=0.0, high=0.999)
  learning_rate: float = _field(0.1, 'Learning rate (the peak of the warm-up schedules).',
                                low=0.0)
  lr_schedule: str = _field('constant', 'The learning rate against the step: {schedules}.',
                            choices=tuple(cifar10_optim.SCHEDULES))
  lr_decay_epochs: float = _field(350.0, 'Epochs per staircase drop.', unit='epochs',
                                  low=1e-9)
  lr_decay_factor: float = _field(0.1, 'Factor of each staircase drop.', low=0.0)
  warmup_steps: int = _field(0, 'Steps of linear warm-up (warmup_linear, warmup_cosine).',
                             unit='steps', low=0)
  label_smoothing: float = _field(0.0, 'Share of each label spread evenly over the '
                                  f'{cifar10_records.NUM_CLASSES} classes.', low=0.0,
                                  high=0.999)
  moving_average_decay: float = _field(
      0.9999, 'EMA decay of the weights (at most (1 + step) / (10 + step)); 0.999 suits runs '
      'of a few thousand steps.', low=0.0, high=1.0)
  augment: bool = _field(True, 'Distort the training images (off: standardized 32x32 '
                         'images).')
  distortions: str = _field(
      'tutorial', 'tutorial (random crop, flip, brightness, contrast), crop_flip (a random '
      'crop of the image zero-padded to --image_size + --crop_slack, and a flip) or '
      'crop_flip_mean (the same of the standardized image, padded with its mean).',
      choices=cifar10_input.DISTORTIONS)
  cutout: int = _field(0, 'Side of a random square zeroed in each training image; 0: none.',
                       unit='pixels', low=0)
  crop_slack: int = _field(cifar10_input.CROP_SLACK, 'The crop_flip modes: positions per '
                           'axis of the crop window, minus one (even; 8: padding by 4 at '
                           '32x32).', unit='pixels', low=0, high=16)
  image_size: int = _field(cifar10_input.CROP_SIZE, 'Input side. Default: 24 with --augment, '
                           '32 with --noaugment.', unit='pixels',
                           choices=(cifar10_input.CROP_SIZE, cifar10_records.IMAGE_SIZE))
  teacher_dir: str = _field('', 'Run folders of teachers to distill from, comma-separated '
                            '(their mean softened predictions; cifar10_distill.py); empty: '
                            'train on the labels alone.')
  distill_alpha: float = _field(0.9, 'With --teacher_dir: the share of the loss that is the '
                                "teachers' soft term, the rest the labels' cross-entropy.",
                                low=0.0, high=1.0)
  distill_temperature: float = _field(4.0, 'With --teacher_dir: the temperature both '
                                      'softmaxes of the soft term divide the logits by.',
                                      low=0.01, high=100.0)
  init: str = _field('xavier', "xavier (the study's) or tutorial (explicit stddevs).",
                     choices=cifar10_model.INIT_MODES)
  weight_decay: str = _field('study', 'study: 500 / prod(shape); tutorial: 0.004 (both on the '
                             "model's chosen layers); l2: --l2_decay on all.",
                             choices=cifar10_model.DECAY_MODES)
  l2_decay: float = _field(cifar10_model.L2_WEIGHT_DECAY, 'Coefficient of --weight_decay=l2.',
                           low=0.0)
  conv: str = _field('auto', cifar10_spectral.CONV_HELP, choices=cifar10_spectral.CONV_MODES)
  log_frequency: int = _field(10, 'Steps between log lines and scalar summaries.',
                              unit='steps', low=1)
  checkpoint_steps: int = _field(1000, 'Steps between checkpoints.', unit='steps', low=1)
  histogram_steps: int = _field(1000, 'Steps between histograms and images.', unit='steps',
                                low=1)
  profile_steps: str = _field('', 'A,B: a TensorFlow profile of steps A to B (both '
                              'included) for TensorBoard\'s Profile tab (its plugin is an '
                              'optional install: make profile-plugin); empty: none.')
  keep_checkpoints: int = _field(5, 'Most recent checkpoints kept.', low=1)
  seed: int = _field(0, 'Seed of init, shuffling and distortions.')
  deterministic: bool = _field(
      False, "TensorFlow's op determinism: the same flags give bit-identical weights on the "
      'same machine, a killed and resumed run included (its cost: docs/reliability.md).')
  strategy: str = _field('default', cifar10_distribute.STRATEGY_HELP,
                         choices=cifar10_distribute.STRATEGIES)
  cpu_replicas: int = _field(1, cifar10_distribute.CPU_REPLICAS_HELP, low=1,
                             high=cifar10_distribute.MAX_CPU_REPLICAS)
  cluster_timeout: int = _field(cifar10_distribute.CLUSTER_TIMEOUT,
                                cifar10_distribute.CLUSTER_TIMEOUT_HELP, unit='s', low=1)
  precision: str = _field(
      'float32', 'What the layers compute in: float32, or bfloat16 / float16 with float32 '
      'variables, EMA and loss (mixed_float16 with dynamic loss scaling).',
      choices=tuple(cifar10_model.PRECISIONS))

  def __post_init__(self):
    # The run records what it computed with: 'auto' becomes 'direct' or 'spectral' for the
    # devices this process sees (cifar10_spectral.resolve).
    object.__setattr__(self, 'conv', cifar10_spectral.resolve(self.conv))
    if self.model not in models.names():  # A hand-edited config.json, say.
      raise ConfigError(f'model {self.model!r} is unknown; the models: '
                        f'{", ".join(models.MODELS)}')
    for field in dataclasses.fields(self):
      check_value(field, getattr(self, field.name))
    try:
      cifar10_model.parse_widths(self.widths)
    except ValueError as e:
      raise ConfigError(f'--widths={self.widths}: {e}') from e
    self.profile_window  # pylint: disable=pointless-statement  # Checked now, not at step A.
    if self.crop_slack % 2:
      raise ConfigError(f'--crop_slack={self.crop_slack} must be even, in 0 .. 16')
    if self.cutout > self.image_size:
      raise ConfigError(f'--cutout={self.cutout} exceeds the image side {self.image_size}')
    if self.lr_schedule == 'staircase' and self.decay_steps < 1:
      raise ConfigError(f'--lr_decay_epochs={self.lr_decay_epochs} is under one step at batch '
                        f'{self.batch_size}: the staircase would drop at every step')

  @property
  def profile_window(self):
    """(A, B) of --profile_steps, or None."""
    if not self.profile_steps:
      return None
    parts = self.profile_steps.split(',')
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
      raise ConfigError(f'--profile_steps={self.profile_steps} must be two steps A,B such as '
                        '100,110')
    first, last = (int(p) for p in parts)
    if not 1 <= first <= last:
      raise ConfigError(f'--profile_steps={self.profile_steps}: the steps must satisfy '
                        '1 <= A <= B')
    return first, last

  @property
  def decay_steps(self):
    """Steps between two x0.1 drops of the staircase schedule (136,718 at batch 128)."""
    return int(cifar10_records.NUM_TRAIN_EXAMPLES / self.batch_size * self.lr_decay_epochs)

  def schedule(self, first_step=0):
    """The learning-rate schedule of this run (cifar10_optim.Schedule), from `first_step` (a
    fine-tuning's first) to max_steps."""
    return cifar10_optim.Schedule(
        self.lr_schedule, self.learning_rate, last_step=self.max_steps,
        warmup_steps=self.warmup_steps, decay_steps=self.decay_steps,
        decay_factor=self.lr_decay_factor, first_step=first_step)


def check_value(field, value):
  """Raises ConfigError when `value` breaks the limits of TrainConfig field `field`."""
  meta, name = field.metadata, field.name
  if meta['choices'] is not None and value not in meta['choices']:
    raise ConfigError(f'{name} {value!r} is not one of '
                      f'{", ".join(str(c) for c in meta["choices"])}')
  if field.type in (bool, str) and not isinstance(value, field.type):
    raise ConfigError(f'{name} {value!r} must be a {field.type.__name__}')
  if field.type not in (int, float):
    return
  if (not isinstance(value, (int, float)) or isinstance(value, bool)
      or (field.type is int and not isinstance(value, int))):
    kind = 'an integer' if field.type is int else 'a number'
    raise ConfigError(f'{name} {value!r} must be {kind}')
  low, high = meta['low'], meta['high']
  if not math.isfinite(value) or (low is not None and value < low) or (
      high is not None and value > high):
    limits = (f'in {_number(low)} .. {_number(high)}' if low is not None and high is not None
              else f'>= {_number(low)}' if low is not None else '')
    raise ConfigError(f'--{name}={value} must be a finite number {limits}'.rstrip())


def _number(x):
  return f'{x:,}' if isinstance(x, int) else f'{x:g}'


def config_from_values(values, given=()):
  """The TrainConfig of flag values: the recipe's values for the fields not `given`.

  Args:
    values: {name: value}; names that are no TrainConfig field are ignored. image_size may be
      None or a string ('24'): None takes 24 with augment, 32 without.
    given: the names given explicitly (they win over the recipe).
  """
  fields = {name: value for name, value in values.items() if name in FIELDS}
  recipe = RECIPES.get(fields.get('recipe', TrainConfig.recipe), (None, {}))[1]
  for name, value in recipe.items():  # An unknown recipe: TrainConfig refuses it below.
    if name not in given:
      fields[name] = value
  if fields.get('image_size') is None:
    fields['image_size'] = (cifar10_input.CROP_SIZE if fields.get('augment', True)
                            else cifar10_records.IMAGE_SIZE)
  fields['image_size'] = int(fields['image_size'])
  if 'model' in fields:
    fields['model'] = models.canonical_name(fields['model'])
  return TrainConfig(**fields)  # Resolves --conv=auto for this machine.


def recipe_values(name):
  """{field: value} that recipe `name` sets."""
  return RECIPES[name][1]


def recipe_summary(config):
  """One line naming the run's recipe and its values, marking those a flag overrode."""
  recipe = recipe_values(config.recipe)
  if not recipe:
    return f'recipe {config.recipe}: the defaults of every flag'
  parts = [f'{name}={getattr(config, name)}' +
           ('' if getattr(config, name) == value else f' (recipe: {value})')
           for name, value in recipe.items()]
  return f'recipe {config.recipe}: {", ".join(parts)}'


def notes(config):
  """What a run's start should point out: settings that train, but likely not as meant
  (one line each, naming the flag that changes it). They are not errors: a short smoke run
  of a long recipe is a fair thing to ask for."""
  found = []
  if (config.lr_schedule in ('warmup_linear', 'warmup_cosine')
      and config.warmup_steps > config.max_steps):
    reached = config.learning_rate * config.max_steps / config.warmup_steps  # rate * rise
    found.append(f'the warm-up of {config.warmup_steps:,} steps is longer than the run\'s '
                 f'{config.max_steps:,} (--max_steps): the learning rate never reaches its '
                 f'peak {config.learning_rate:g} ({reached:.3g} at the last step); pass '
                 f'--warmup_steps under {config.max_steps:,} to reach it')
  return found


def field_help(name):
  """The help text of TrainConfig field `name`, its unit added and the lists filled in."""
  field = FIELDS[name]
  text = field.metadata['help'].format(
      recipes='; '.join(f'{n} ({d})' for n, (d, _) in RECIPES.items()),
      optimizers=cifar10_optim.describe(cifar10_optim.OPTIMIZERS),
      schedules=cifar10_optim.describe(cifar10_optim.SCHEDULES))
  unit = field.metadata['unit']
  return f'{text} [{unit}]' if unit else text


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}


def flag_table():
  """The markdown table of the training flags (docs/flags.md holds it, checked by a test)."""
  lines = ['| flag | default | meaning |', '|---|---|---|']
  for name, field in FIELDS.items():
    default = field.default
    shown = f'`{default}`' if isinstance(default, str) else f'{default}'
    lines.append(f'| `--{name}` | {shown} | {field_help(name).replace("|", "/")} |')
  return '\n'.join(lines) + '\n'
