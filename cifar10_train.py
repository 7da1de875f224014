"""Trains a CIFAR-10 model with plain SGD, an EMA of the weights and resumable checkpoints.

    python cifar10_train.py --model=tutorial --train_dir=runs/tutorial --max_steps=10000

Re-running the same command resumes from the latest checkpoint in --train_dir; a run always
ends with a checkpoint at exactly --max_steps. Every --log_frequency steps it prints the
tutorial's line and writes scalar summaries for TensorBoard; --checkpoint_steps bounds the
work a kill can lose. Run `cifar10_eval.py --checkpoint_dir=<train_dir>` beside it.
"""

import dataclasses
import datetime
import json
import math
import os
import signal
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Hide TensorFlow's start-up INFO lines.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import cifar10_input
import cifar10_model
import models

CONFIG_FILE = 'config.json'


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every training hyperparameter, with its default (DESIGN.md section 7)."""
  train_dir: str = 'runs/tutorial'
  model: str = 'tutorial'
  max_steps: int = 10000  # steps (the study's ablation length)
  batch_size: int = 128  # images per step
  learning_rate: float = 0.1
  lr_schedule: str = 'constant'  # the study's; 'staircase' is the tutorial's
  lr_decay_epochs: float = 350.0  # epochs per x0.1 step of the staircase schedule
  lr_decay_factor: float = 0.1
  moving_average_decay: float = 0.9999
  augment: bool = True  # the tutorial's distortions; off: standardized 32x32 images
  image_size: int = 24  # pixels; 24 with augmentation, 32 without unless set
  init: str = 'xavier'  # or 'tutorial'
  weight_decay: str = 'study'  # WD / prod(shape) with WD = 500; or 'tutorial' (0.004)
  log_frequency: int = 10  # steps between log lines and scalar summaries
  checkpoint_steps: int = 1000  # steps between checkpoints
  histogram_steps: int = 1000  # steps between weight histograms and sample images
  seed: int = 0

  @property
  def decay_steps(self):
    """Steps between two x0.1 drops of the staircase schedule (136,718 at batch 128)."""
    return int(cifar10_input.NUM_TRAIN_EXAMPLES / self.batch_size * self.lr_decay_epochs)


class TrainingDiverged(Exception):
  """The loss became NaN or infinite."""


class ConfigError(ValueError):
  """The flags do not fit the run already in train_dir."""


# --------------------------------------------------------------------------- flags


def define_data_flags():
  """Flags that say where the data is; shared by every binary that reads CIFAR-10."""
  return dict(
      data_dir=flags.DEFINE_string(
          'data_dir', 'data', 'Folder with cifar-10-batches-bin/ or cifar-10-binary.tar.gz '
          '(or the archive path itself); the archive is downloaded here when absent.'),
      extract_dir=flags.DEFINE_string(
          'extract_dir', None, 'Where to extract the archive; default --data_dir when it is '
          'writable, else ~/.cache/cifar10.'),
      data_url=flags.DEFINE_string('data_url', cifar10_input.DATA_URL,
                                   'Where to download the archive from when it is absent.'),
  )


def find_batches_dir(holders):
  """cifar10_input.find_batches_dir from the data flags."""
  return cifar10_input.find_batches_dir(holders['data_dir'].value, holders['extract_dir'].value,
                                        url=holders['data_url'].value)


def define_train_flags():
  """The training flags, defaults taken from TrainConfig; returns {name: FlagHolder}."""
  d = TrainConfig
  holders = define_data_flags()
  holders.update(
      train_dir=flags.DEFINE_string('train_dir', d.train_dir,
                                    'Checkpoints, summaries and config.json go here.'),
      model=flags.DEFINE_enum('model', d.model, models.names(), 'Model to train.'),
      max_steps=flags.DEFINE_integer('max_steps', d.max_steps, 'Train up to this step.',
                                     lower_bound=1),
      batch_size=flags.DEFINE_integer('batch_size', d.batch_size, 'Images per step.',
                                      lower_bound=1),
      learning_rate=flags.DEFINE_float('learning_rate', d.learning_rate, 'SGD learning rate.',
                                       lower_bound=0.0),
      lr_schedule=flags.DEFINE_enum('lr_schedule', d.lr_schedule, ['constant', 'staircase'],
                                    'constant (the study) or x0.1 every --lr_decay_epochs.'),
      lr_decay_epochs=flags.DEFINE_float('lr_decay_epochs', d.lr_decay_epochs,
                                         'Epochs per staircase drop.', lower_bound=1e-9),
      moving_average_decay=flags.DEFINE_float(
          'moving_average_decay', d.moving_average_decay, 'EMA decay of the weights.',
          lower_bound=0.0, upper_bound=1.0),
      augment=flags.DEFINE_boolean('augment', d.augment,
                                   "The tutorial's random crop/flip/brightness/contrast."),
      image_size=flags.DEFINE_enum(
          'image_size', None, ['24', '32'],
          'Input side in pixels. Default: 24 with --augment, 32 with --noaugment.'),
      init=flags.DEFINE_enum('init', d.init, list(cifar10_model.INIT_MODES),
                             "xavier (the study's) or tutorial (explicit stddevs)."),
      weight_decay=flags.DEFINE_enum('weight_decay', d.weight_decay,
                                     list(cifar10_model.DECAY_MODES),
                                     'study: 500 / prod(shape); tutorial: 0.004.'),
      log_frequency=flags.DEFINE_integer('log_frequency', d.log_frequency,
                                         'Steps between log lines.', lower_bound=1),
      checkpoint_steps=flags.DEFINE_integer('checkpoint_steps', d.checkpoint_steps,
                                            'Steps between checkpoints.', lower_bound=1),
      histogram_steps=flags.DEFINE_integer('histogram_steps', d.histogram_steps,
                                           'Steps between histograms and images.',
                                           lower_bound=1),
      seed=flags.DEFINE_integer('seed', d.seed, 'Seed of init, shuffling and distortions.'),
  )
  return holders


def config_from_flags(holders):
  """Reads the training flags once into a TrainConfig."""
  values = {name: holder.value for name, holder in holders.items()
            if name in {f.name for f in dataclasses.fields(TrainConfig)}}
  if values['image_size'] is None:
    values['image_size'] = cifar10_input.CROP_SIZE if values['augment'] else 32
  values['image_size'] = int(values['image_size'])
  values['model'] = models.canonical_name(values['model'])
  return TrainConfig(**values)


# --------------------------------------------------------------------------- config file


def write_config(config):
  """Saves the run's config in train_dir, refusing a train_dir that holds another model."""
  os.makedirs(config.train_dir, exist_ok=True)
  previous = read_config(config.train_dir)
  if previous is not None:
    for key in ('model', 'image_size'):
      if getattr(previous, key) != getattr(config, key):
        raise ConfigError(
            f'{config.train_dir} holds a run with {key}={getattr(previous, key)!r}, not '
            f'{getattr(config, key)!r}: pass another --train_dir (or delete that one).')
  path = os.path.join(config.train_dir, CONFIG_FILE)
  with open(path + '.tmp', 'w') as f:
    json.dump(dataclasses.asdict(config), f, indent=1)
  os.replace(path + '.tmp', path)


def read_config(train_dir):
  """The TrainConfig saved in train_dir, or None."""
  path = os.path.join(train_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return TrainConfig(**json.load(f))


# --------------------------------------------------------------------------- training


def learning_rate(step, config):
  """The learning rate at `step` (an int64 tensor): constant, or the tutorial's staircase."""
  if config.lr_schedule == 'constant':
    return tf.constant(config.learning_rate, tf.float32)
  drops = tf.cast(step // config.decay_steps, tf.float32)
  return config.learning_rate * tf.pow(config.lr_decay_factor, drops)


class Trainer:
  """The model, its EMA, the step counter and the checkpoint of one training run."""

  def __init__(self, config):
    self.config = config
    self.model = models.build(config.model, config.image_size, config.init,
                              config.weight_decay)
    self.variables = self.model.trainable_variables
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
    self.train_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                     name='train_seconds')
    self.ema = tf.train.ExponentialMovingAverage(config.moving_average_decay,
                                                 num_updates=self.step)
    self.ema.apply(self.variables)  # Creates the shadows now, equal to the initial weights.
    self.ema_shadows = [self.ema.average(v) for v in self.variables]
    self.checkpoint = cifar10_model.make_checkpoint(
        self.model, self.step, self.ema_shadows, train_seconds=self.train_seconds)
    self.manager = tf.train.CheckpointManager(self.checkpoint, config.train_dir, max_to_keep=5)
    size = config.image_size
    self.train_step = tf.function(self._train_step, input_signature=(
        tf.TensorSpec([config.batch_size, size, size, 3], tf.float32),
        tf.TensorSpec([config.batch_size], tf.int32)))

  def restore_latest(self):
    """Restores the latest checkpoint if there is one; returns the step reached."""
    if self.manager.latest_checkpoint:
      self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
    return int(self.step.numpy())

  def _train_step(self, images, labels):
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)
      cross_entropy, decay = cifar10_model.loss(logits, labels, self.model)
      total = cross_entropy + decay
    gradients = tape.gradient(total, self.variables)
    rate = learning_rate(self.step, self.config)
    for variable, gradient in zip(self.variables, gradients):
      variable.assign_sub(rate * gradient)
    self.step.assign_add(1)
    self.ema.apply(self.variables)
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    return {'loss': total, 'cross_entropy': cross_entropy, 'weight_decay': decay,
            'learning_rate': rate, 'batch_accuracy': tf.reduce_mean(tf.cast(correct, tf.float32))}

  def save(self, step):
    return self.manager.save(checkpoint_number=step)


def _log(message):
  print(f'{datetime.datetime.now()}: {message}', flush=True)


def _write_scalars(metrics, step, examples_per_sec):
  for name, value in metrics.items():
    tf.summary.scalar(name, value, step=step)
  tf.summary.scalar('examples_per_sec', examples_per_sec, step=step)


def _write_histograms(trainer, images, step):
  for variable in trainer.variables:
    tf.summary.histogram(variable.name, variable, step=step)
  # Standardized images are rescaled to [0, 1] per image so TensorBoard can show them.
  shown = images[:4]
  low = tf.reduce_min(shown, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(shown, axis=[1, 2, 3], keepdims=True)
  tf.summary.image('distorted_inputs', (shown - low) / (high - low + 1e-6), step=step)


def _check_finite(loss, step):
  if not math.isfinite(loss):
    raise TrainingDiverged(f'loss is {loss} at step {step}: training diverged. The last '
                           'good checkpoint is kept; lower --learning_rate and re-run.')


def train(config, train_split, on_log=None):
  """Trains until config.max_steps, resuming from train_dir; returns the final metrics.

  Args:
    config: a TrainConfig.
    train_split: the cifar10_input.Split to train on.
    on_log: optional callable(step, examples_per_sec) run at each log line (benchmarks).

  Raises:
    TrainingDiverged: the loss became NaN or infinite (no checkpoint is written then).
  """
  tf.random.set_seed(config.seed)
  write_config(config)
  trainer = Trainer(config)
  step = trainer.restore_latest()
  if step >= config.max_steps:
    _log(f'{config.train_dir} is already at step {step} >= max_steps {config.max_steps}; '
         'nothing to do.')
    return None
  if step:
    _log(f'resumed from {trainer.manager.latest_checkpoint} at step {step}')
  batches = iter(cifar10_input.train_inputs(
      train_split, config.batch_size, seed=config.seed + step, augment=config.augment,
      image_size=config.image_size))
  writer = tf.summary.create_file_writer(config.train_dir)
  start_step, start_time, start_seconds = step, time.time(), float(trainer.train_seconds.numpy())
  window_step, window_time = step, time.time()
  metrics = None
  with writer.as_default():
    try:
      while step < config.max_steps:
        images, labels = next(batches)
        metrics = trainer.train_step(images, labels)
        step += 1
        last = step == config.max_steps
        if step % config.log_frequency == 0 or last:
          loss = float(metrics['loss'])
          _check_finite(loss, step)
          now = time.time()  # Windows abut, so logging time counts against the speed.
          rate = (step - window_step) * config.batch_size / (now - window_time)
          _log(f'step {step}, loss = {loss:.2f} ({rate:.1f} examples/sec; '
               f'{(now - window_time) / (step - window_step):.3f} sec/batch)')
          _write_scalars(metrics, step, rate)
          if on_log:
            on_log(step, rate)
          window_step, window_time = step, now
        if step % config.histogram_steps == 0:
          _write_histograms(trainer, images, step)
        if step % config.checkpoint_steps == 0 or last:
          _check_finite(float(metrics['loss']), step)
          trainer.train_seconds.assign(start_seconds + time.time() - start_time)
          path = trainer.save(step)
          done = (step - start_step) / (time.time() - start_time)
          eta = datetime.timedelta(seconds=round((config.max_steps - step) / done))
          _log(f'saved {path} ({done * config.batch_size:.0f} examples/sec since start, '
               f'ETA {eta})')
    except KeyboardInterrupt:
      # Ctrl-C or SIGTERM: keep the work done so far unless the weights went bad.
      if metrics is not None and math.isfinite(float(metrics['loss'])):
        trainer.train_seconds.assign(start_seconds + time.time() - start_time)
        _log(f'interrupted: saved {trainer.save(step)}')
      raise
  _log(f'done: step {step}, {time.time() - start_time:.1f} s this run, '
       f'{float(trainer.train_seconds.numpy()):.1f} s in all')
  return {name: float(value) for name, value in metrics.items()}


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  try:
    config = config_from_flags(_FLAGS)
    batches_dir = find_batches_dir(_FLAGS)
    train(config, cifar10_input.load_split(batches_dir, 'train'))
  except (cifar10_input.DataError, TrainingDiverged, ConfigError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == '__main__':
  _FLAGS = define_train_flags()
  app.run(main)
