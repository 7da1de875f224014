"""The run folder: its config.json, its checkpoint layout, and the flags that locate data.

A run folder (a --train_dir) holds config.json (the TrainConfig of the run), checkpoints of
one layout (`RunState`: the model's raw weights, the global step, the seconds of training
and the EMA shadows, plus any extra state such as pruning masks), summaries, and the
evaluation results below eval/. Training writes it; evaluation, compression and the results
table read it through this module, never through the trainer.
"""

import contextlib
import dataclasses
import datetime
import fcntl
import json
import math
import os
import re
import shutil

from absl import flags
import tensorflow as tf

import cifar10_distribute
import cifar10_input
import cifar10_model
import cifar10_records
import cifar10_spectral
import models

CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'  # held by the one process that writes checkpoints here
STATE_FILE = 'checkpoint'  # TensorFlow's list of the checkpoints, rebuilt from the files
CHECKPOINT_FILE = re.compile(r'^ckpt-(\d+)\.(index|data-\d+-of-\d+)$')
RESULTS_FILE = 'results.jsonl'  # one JSON line per evaluated checkpoint
CONFUSION_FILE = 'confusion.jsonl'  # beside it: per evaluation, the confusion matrices
# The evaluations' folders below the run, one per --eval_data of cifar10_eval.py, so that
# training-set figures never mix with the test figures that cifar10_results.py reads.
EVAL_DIRS = {'test': 'eval', 'train_eval': 'eval_train'}
CONV_HELP = ('How convolutions are computed: direct (tf.nn.conv2d), spectral (a product of '
             'spectra where that was measured faster on a CPU) or auto (spectral without a '
             'GPU, direct with one). The same checkpoint runs with either.')


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every training hyperparameter, with its default (docs/design.md)."""
  train_dir: str = 'runs/tutorial'
  model: str = 'tutorial'
  recipe: str = 'study'  # the named set of defaults the run started from (RECIPES)
  max_steps: int = 10000  # steps (the study's ablation length)
  batch_size: int = 128  # images per step
  optimizer: str = 'sgd'  # or 'momentum', 'nesterov' (OPTIMIZERS)
  momentum: float = 0.9  # of 'momentum' and 'nesterov'
  learning_rate: float = 0.1  # the peak rate of the schedules that warm up
  lr_schedule: str = 'constant'  # the study's; 'staircase' is the tutorial's (SCHEDULES)
  lr_decay_epochs: float = 350.0  # epochs per x0.1 step of the staircase schedule
  lr_decay_factor: float = 0.1
  warmup_steps: int = 0  # steps of linear warm-up of warmup_linear and warmup_cosine
  label_smoothing: float = 0.0  # share of each label spread evenly over the 10 classes
  moving_average_decay: float = 0.9999
  augment: bool = True  # distort the training images; off: standardized 32x32 images
  distortions: str = 'tutorial'  # or 'crop_flip', 'crop_flip_mean' (cifar10_input.DISTORTIONS)
  cutout: int = 0  # side in pixels of the square cut out of each training image; 0: none
  crop_slack: int = 8  # crop_flip modes: positions per axis of the crop window, minus one
  image_size: int = 24  # pixels; 24 with augmentation, 32 without unless set
  init: str = 'xavier'  # or 'tutorial'
  weight_decay: str = 'study'  # WD / prod(shape) with WD = 500; 'tutorial' (0.004); 'l2'
  l2_decay: float = 5e-4  # the coefficient of weight_decay='l2', on every weight matrix
  conv: str = 'auto'  # how convolutions are computed; 'auto' is resolved at once (below)
  log_frequency: int = 10  # steps between log lines and scalar summaries
  checkpoint_steps: int = 1000  # steps between checkpoints
  histogram_steps: int = 1000  # steps between weight histograms and sample images
  keep_checkpoints: int = 5  # most recent checkpoints kept in train_dir
  seed: int = 0
  deterministic: bool = False  # TensorFlow's op determinism: bit-identical reruns
  strategy: str = 'default'  # tf.distribute: default (one device), mirrored, multi_worker
  cpu_replicas: int = 1  # logical CPU devices of --strategy=mirrored without a GPU
  precision: str = 'float32'  # what the layers compute in (cifar10_model.PRECISIONS)

  def __post_init__(self):
    # The run records what it computed with: 'auto' becomes 'direct' or 'spectral' for the
    # devices this process sees (cifar10_spectral.resolve).
    object.__setattr__(self, 'conv', cifar10_spectral.resolve(self.conv))
    if self.model not in models.names():  # A hand-edited config.json, say.
      raise ConfigError(f'model {self.model!r} is unknown; the models: '
                        f'{", ".join(models.MODELS)}')
    for name, known in (('strategy', cifar10_distribute.STRATEGIES),
                        ('precision', tuple(cifar10_model.PRECISIONS)),
                        ('recipe', tuple(RECIPES)), ('optimizer', OPTIMIZERS),
                        ('lr_schedule', SCHEDULES), ('distortions', cifar10_input.DISTORTIONS),
                        ('init', cifar10_model.INIT_MODES),
                        ('weight_decay', cifar10_model.DECAY_MODES)):
      if getattr(self, name) not in known:
        raise ConfigError(f'{name} {getattr(self, name)!r} is not one of {", ".join(known)}')
    for name in ('learning_rate', 'lr_decay_epochs', 'lr_decay_factor', 'moving_average_decay',
                 'momentum', 'label_smoothing', 'l2_decay', 'warmup_steps', 'cutout'):
      value = getattr(self, name)
      if not math.isfinite(value) or value < 0:
        raise ConfigError(f'--{name}={value} must be a finite number >= 0')
    for name, bound in (('momentum', 1.0), ('label_smoothing', 1.0)):
      if getattr(self, name) >= bound:
        raise ConfigError(f'--{name}={getattr(self, name)} must be below {bound}')
    if self.moving_average_decay > 1:
      raise ConfigError(f'--moving_average_decay={self.moving_average_decay} must be <= 1')
    if self.crop_slack % 2 or not 0 <= self.crop_slack <= 16:
      raise ConfigError(f'--crop_slack={self.crop_slack} must be even, in 0 .. 16')
    if self.cutout > self.image_size:
      raise ConfigError(f'--cutout={self.cutout} exceeds the image side {self.image_size}')
    if not 1 <= self.batch_size <= cifar10_records.NUM_TRAIN_EXAMPLES:
      raise ConfigError(f'--batch_size={self.batch_size} must lie in 1 .. '
                        f'{cifar10_records.NUM_TRAIN_EXAMPLES:,} (the training images)')
    if self.lr_schedule == 'staircase' and self.decay_steps < 1:
      raise ConfigError(f'--lr_decay_epochs={self.lr_decay_epochs} is under one step at batch '
                        f'{self.batch_size}: the staircase would drop at every step')

  @property
  def decay_steps(self):
    """Steps between two x0.1 drops of the staircase schedule (136,718 at batch 128)."""
    return int(cifar10_records.NUM_TRAIN_EXAMPLES / self.batch_size * self.lr_decay_epochs)


OPTIMIZERS = ('sgd', 'momentum', 'nesterov')
SCHEDULES = ('constant', 'staircase', 'warmup_linear', 'warmup_cosine', 'onecycle')
# --recipe: named sets of training defaults; a flag given explicitly overrides its recipe's
# value. 'study' is TrainConfig's own defaults (the study's runs); docs/recipes.md has how
# 'fast', 'fast32' and 'fast32m' were chosen and what they reach.
RECIPES = {
    'study': {},
    'tutorial': dict(init='tutorial', weight_decay='tutorial', lr_schedule='staircase'),
    'fast': dict(optimizer='nesterov', momentum=0.9, learning_rate=0.03,
                 lr_schedule='warmup_linear', warmup_steps=500, label_smoothing=0.1,
                 weight_decay='l2', l2_decay=5e-4, moving_average_decay=0.999),
    # EMA 0.99: the shadows of a BatchNorm model are read with the raw weights' moving
    # statistics; 0.999 cost budget0 0.46 point against its raw weights at 20k steps.
    'fast32': dict(optimizer='nesterov', momentum=0.9, learning_rate=0.2,
                   lr_schedule='onecycle', label_smoothing=0.1, weight_decay='l2',
                   l2_decay=5e-4, moving_average_decay=0.99, distortions='crop_flip',
                   image_size=32),
}
# fast32 with the crop padded by the image's mean instead of black (the budget models' best).
RECIPES['fast32m'] = dict(RECIPES['fast32'], distortions='crop_flip_mean')


def recipe_summary(config):
  """One line naming the run's recipe and its values, marking those a flag overrode."""
  recipe = RECIPES[config.recipe]
  if not recipe:
    return f'recipe {config.recipe}: the defaults of every flag'
  parts = [f'{name}={getattr(config, name)}' +
           ('' if getattr(config, name) == value else f' (recipe: {value})')
           for name, value in recipe.items()]
  return f'recipe {config.recipe}: {", ".join(parts)}'


class ConfigError(ValueError):
  """A run folder that does not hold what the flags expect; the message says what to do."""


class UnreadableCheckpoint(Exception):
  """A checkpoint cannot be read, or does not fit the run's model."""


class RunFolderBusy(ConfigError):
  """Another process holds the run folder's lock."""


# --------------------------------------------------------------------------- config.json


def write_whole(path, text):
  """Writes `text` to `path` whole or not at all: a kill leaves the old file or the new one."""
  partial = path + '.tmp'
  with open(partial, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(partial, path)


def write_json(path, value):
  """Writes `value` as indented JSON, whole or not at all (write_whole)."""
  write_whole(path, json.dumps(value, indent=1) + '\n')


def read_config(train_dir):
  """The TrainConfig saved in train_dir, or None when there is none yet."""
  path = os.path.join(train_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return TrainConfig(**json.load(f))
  except (OSError, ValueError, TypeError) as e:
    raise ConfigError(f'{path} is unreadable ({e}): it must be the config.json that '
                      'cifar10_train.py wrote.') from e


def config_changes(previous, config):
  """The settings of `config` that differ from `previous`, as 'name: old -> new'."""
  return [f'{f.name}: {getattr(previous, f.name)!r} -> {getattr(config, f.name)!r}'
          for f in dataclasses.fields(config)
          if getattr(previous, f.name) != getattr(config, f.name)]


def check_config(config):
  """The changes against the run already in train_dir (config_changes), writing nothing.

  Raises:
    ConfigError: train_dir holds a run of another model or image size.
  """
  previous = read_config(config.train_dir)
  if previous is None:
    return []
  for key in ('model', 'image_size'):
    if getattr(previous, key) != getattr(config, key):
      raise ConfigError(
          f'{config.train_dir} holds a run with {key}={getattr(previous, key)!r}, not '
          f'{getattr(config, key)!r}: pass another --train_dir (or delete that one).')
  return config_changes(previous, config)


def write_config(config):
  """Saves the run's config in train_dir, refusing a train_dir that holds another model.

  Returns:
    The settings that differ from the run already in train_dir (config_changes).
  """
  changed = check_config(config)
  path = os.path.join(config.train_dir, CONFIG_FILE)
  try:
    os.makedirs(config.train_dir, exist_ok=True)
    write_json(path, dataclasses.asdict(config))
  except OSError as e:
    raise ConfigError(f'cannot write {path} ({e}): pass a writable --train_dir.') from e
  return changed


def default_eval_dir(train_dir, eval_data, tta='none'):
  """Where cifar10_eval.py writes its results of `eval_data` ('test' or 'train_eval'): with
  test-time augmentation in a folder of its own (eval_flip), never among plain results."""
  return os.path.join(train_dir, EVAL_DIRS[eval_data] + ('' if tta == 'none' else f'_{tta}'))


# --------------------------------------------------------------------------- checkpoints


class RunState:
  """The state a run's checkpoints hold, built from its config.

  Attributes:
    model: the Model (its raw weights), with convolutions computed as `conv` says (default
      the config's).
    variables: model.trainable_variables.
    step: int64 scalar, the global step.
    train_seconds: float64 scalar, seconds of training up to `step`.
    ema: the tf.train.ExponentialMovingAverage of `variables`, with the step as num_updates.
    ema_shadows: the EMA shadow of each of `variables`, in the same order; saved and
      restored by position, not by name.
  """

  def __init__(self, config, conv=None, strategy=None):
    """Builds the state; under `strategy`'s scope (mirrored variables) when one is given."""
    self.config, self.strategy = config, strategy
    with strategy.scope() if strategy else contextlib.nullcontext():
      self.model = models.build(config.model, config.image_size, config.init,
                                config.weight_decay, conv=conv or config.conv,
                                l2=config.l2_decay)
      self.variables = self.model.trainable_variables
      self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
      self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                       name='train_seconds')
      self.ema = tf.train.ExponentialMovingAverage(config.moving_average_decay,
                                                   num_updates=self.step)
      self.ema.apply(self.variables)  # Creates the shadows now, equal to the initial weights.
      self.ema_shadows = [self.ema.average(v) for v in self.variables]

  def make_checkpoint(self, **extra):
    """The checkpoint of this layout; `extra` adds trackables by name (e.g. masks)."""
    return tf.train.Checkpoint(model=self.model, step=self.step,
                               train_seconds=self.train_seconds,
                               ema_shadows=list(self.ema_shadows), **extra)

  def restore(self, path):
    """Reads `path` into this state; what the file holds beyond it (masks) is ignored.

    Raises:
      UnreadableCheckpoint: the file is unreadable or does not hold this model's layout.
    """
    read_checkpoint(self.make_checkpoint(), path)

  def restore_ema_shadows(self):
    """Copies the EMA shadows into the model, by position in the trainable variables."""
    for variable, shadow in zip(self.variables, self.ema_shadows):
      variable.assign(shadow)


def read_checkpoint(checkpoint, path):
  """Reads the checkpoint file `path` into `checkpoint`, all of whose objects it must hold.

  What the file holds beyond them (a trainer's save counter, pruning masks) is ignored, and
  so are, after a failure, the values that were not read (no warning about them at exit).

  Raises:
    UnreadableCheckpoint: the file is unreadable, or holds another model's layout.
  """
  status = None
  try:
    status = checkpoint.read(path)
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError) as e:
    raise UnreadableCheckpoint(f'{path} does not match the model in the run\'s {CONFIG_FILE} '
                               f'({type(e).__name__}: {str(e).strip()[:300]})') from e
  except (tf.errors.OpError, IndexError) as e:  # Truncated, missing or corrupt files.
    raise UnreadableCheckpoint(f'{path} is unreadable ({type(e).__name__}: '
                               f'{str(e).strip()[:300]})') from e
  finally:
    if status is not None:
      status.expect_partial()


def checkpoint_step(path):
  """The global step saved in a checkpoint of RunState's layout, without building it.

  Raises:
    UnreadableCheckpoint: the checkpoint cannot be read or holds no step.
  """
  try:
    return int(tf.train.load_checkpoint(path).get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE'))
  except (tf.errors.OpError, IndexError, ValueError) as e:
    raise UnreadableCheckpoint(f'{path} is unreadable or holds no step ({type(e).__name__}: '
                               f'{str(e).strip()[:300]})') from e


def checkpoint_paths(train_dir):
  """The checkpoint prefixes in train_dir ('<dir>/ckpt-N'), newest step first.

  Found from the checkpoints' own files (index or data: one that lost either is still
  listed, so that a reader names it when it fails), not from TensorFlow's state file, which
  a crash or a clumsy hand can empty or lose while the checkpoints are intact.
  """
  try:
    names = os.listdir(train_dir)
  except OSError:
    return []
  steps = sorted({int(m.group(1)) for m in map(CHECKPOINT_FILE.match, names) if m},
                 reverse=True)
  return [os.path.join(train_dir, f'ckpt-{step}') for step in steps]


def newest_checkpoint(train_dir):
  """The newest checkpoint prefix in train_dir (checkpoint_paths), or None."""
  paths = checkpoint_paths(train_dir)
  return paths[0] if paths else None


def rebuild_checkpoint_state(train_dir):
  """Rewrites TensorFlow's state file from the checkpoints present, so that a
  CheckpointManager opened next sees (and rotates) every one of them, newest as latest.

  The file is a text protocol buffer of relative paths, as the manager writes it.

  Raises:
    ConfigError: the state file cannot be replaced (a folder in its place, a read-only run).
  """
  paths = checkpoint_paths(train_dir)
  state = os.path.join(train_dir, STATE_FILE)
  try:
    if not paths:
      if os.path.lexists(state):
        os.remove(state)
      return
    names = [os.path.basename(path) for path in paths]
    lines = [f'model_checkpoint_path: "{names[0]}"']
    lines += [f'all_model_checkpoint_paths: "{name}"' for name in reversed(names)]
    write_whole(state, '\n'.join(lines) + '\n')
  except OSError as e:
    raise ConfigError(f'cannot rewrite {state}, the list of the checkpoints ({e}): it must be '
                      'a file in a writable --train_dir.') from e


def move_checkpoints_aside(train_dir):
  """Moves every checkpoint and the state file into a new subfolder; returns its path."""
  aside = os.path.join(train_dir, 'restarted-' +
                       datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
  os.makedirs(aside)
  for name in os.listdir(train_dir):
    if name == STATE_FILE or name.startswith('ckpt-'):
      shutil.move(os.path.join(train_dir, name), os.path.join(aside, name))
  return aside


@contextlib.contextmanager
def locked(train_dir):
  """Holds the run folder's exclusive lock for the block.

  The lock is the kernel's (flock), so it dies with its process: a stale lock of a killed
  trainer is simply taken over. The holder's PID is written in the lock file for the error
  message of the next one.

  Raises:
    RunFolderBusy: another process holds it.
    ConfigError: the folder cannot be created or written.
  """
  path = os.path.join(train_dir, LOCK_FILE)
  try:
    os.makedirs(train_dir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise ConfigError(f'cannot write in {train_dir} ({e}): pass a writable --train_dir.') from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      holder = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
      raise RunFolderBusy(f'{train_dir} is in use by another process (PID {holder}): wait for '
                          'it to finish, or stop it, before training here.') from e
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    yield
  finally:
    os.close(fd)  # Releases the lock.


def latest_run(train_dir, flag='--train_dir'):
  """(TrainConfig, newest checkpoint path) of the run in train_dir, for tools that read one.

  Raises:
    ConfigError: no config.json or no checkpoint there (the message names `flag`).
  """
  config = read_config(train_dir)
  checkpoint = newest_checkpoint(train_dir) if config else None
  if checkpoint is None:
    raise ConfigError(f'{flag}={train_dir} holds no trained run (config.json and a '
                      'checkpoint): point it at the --train_dir of a cifar10_train.py run.')
  return config, checkpoint


# --------------------------------------------------------------------------- shared flags


def define_data_flags():
  """Flags that say where the data is; shared by every binary that reads CIFAR-10."""
  return dict(
      data_dir=flags.DEFINE_string(
          'data_dir', 'data', 'Folder with cifar-10-batches-bin/ or cifar-10-binary.tar.gz '
          '(or the archive path itself); the archive is downloaded here when absent.'),
      extract_dir=flags.DEFINE_string(
          'extract_dir', None, 'Where to extract the archive; default --data_dir when it is '
          'writable, else ~/.cache/cifar10.'),
      data_url=flags.DEFINE_string('data_url', cifar10_records.DATA_URL,
                                   'Where to download the archive from when it is absent.'),
  )


def define_conv_flag(default='auto'):
  """--conv, for every binary that builds a model; returns {'conv': FlagHolder}."""
  return {'conv': flags.DEFINE_enum('conv', default, list(cifar10_spectral.CONV_MODES),
                                    CONV_HELP)}


def define_deterministic_flag():
  """--deterministic, for the binaries that train; returns {'deterministic': FlagHolder}."""
  return {'deterministic': flags.DEFINE_boolean(
      'deterministic', TrainConfig.deterministic,
      "TensorFlow's op determinism: the same flags give bit-identical weights on the same "
      'machine, a killed and resumed run included (its cost: docs/reliability.md).')}


def batches_dir_from_flags(holders):
  """cifar10_records.find_batches_dir from the data flags."""
  return cifar10_records.find_batches_dir(holders['data_dir'].value,
                                          holders['extract_dir'].value,
                                          url=holders['data_url'].value)
