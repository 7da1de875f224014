"""Trains a CIFAR-10 model with SGD (plain, momentum or Nesterov), an EMA of the weights and
resumable checkpoints.

    python cifar10_train.py --model=tutorial --train_dir=runs/tutorial --max_steps=10000
    python cifar10_train.py --model=budget0 --recipe=fast32 --train_dir=runs/budget0

--recipe picks a named set of defaults (cifar10_run.RECIPES, docs/recipes.md): the study's
(the default), the tutorial's, or the faster ones of later practice.

Re-running the same command resumes from the latest checkpoint in --train_dir, with the
batches an uninterrupted run would have seen; a run always ends with a checkpoint at exactly
--max_steps (with --deterministic, bit-identical to an uninterrupted run's). Every
--log_frequency steps it prints the tutorial's line and writes scalar summaries for
TensorBoard; --checkpoint_steps bounds the work a kill can lose. Run
`cifar10_eval.py --checkpoint_dir=<train_dir>` beside it. --strategy trains on several
devices or machines with tf.distribute, a step meaning the same (cifar10_distribute.py).
"""

import contextlib
import dataclasses
import datetime
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import cifar10_distribute
import cifar10_input
import cifar10_model
import cifar10_records
import cifar10_run
import models


class TrainingDiverged(Exception):
  """The loss became NaN or infinite."""


class SaveFailed(Exception):
  """A checkpoint could not be written (disk full, read-only); the earlier ones are intact."""


# --------------------------------------------------------------------------- flags


def define_train_flags():
  """The training flags, defaults taken from TrainConfig; returns {name: FlagHolder}."""
  d = cifar10_run.TrainConfig
  holders = cifar10_run.define_data_flags()
  holders.update(cifar10_run.define_conv_flag())
  holders.update(cifar10_run.define_deterministic_flag())
  holders.update(cifar10_distribute.define_strategy_flags())
  holders.update(define_precision_flag())
  holders.update(
      train_dir=flags.DEFINE_string('train_dir', d.train_dir,
                                    'Checkpoints, summaries and config.json go here.'),
      model=flags.DEFINE_enum('model', d.model, models.names(), 'Model to train.'),
      max_steps=flags.DEFINE_integer('max_steps', d.max_steps, 'Train up to this step.',
                                     lower_bound=1),
      batch_size=flags.DEFINE_integer('batch_size', d.batch_size, 'Images per step.',
                                      lower_bound=1),
      recipe=flags.DEFINE_enum(
          'recipe', d.recipe, list(cifar10_run.RECIPES),
          'A named set of defaults for the flags below (printed at start, docs/recipes.md): '
          "study (the study's), tutorial (the tutorial's init, decay and staircase), fast "
          '(Nesterov, warm-up + linear decay, label smoothing, L2 on every matrix), fast32 '
          '(fast at 32x32 with crop and flip, one-cycle), fast32m (fast32, the crop padded '
          "with the image's mean). A flag given explicitly wins."),
      optimizer=flags.DEFINE_enum('optimizer', d.optimizer, list(cifar10_run.OPTIMIZERS),
                                  'sgd (plain), momentum (heavy ball) or nesterov.'),
      momentum=flags.DEFINE_float('momentum', d.momentum, 'Momentum of the velocity.',
                                  lower_bound=0.0, upper_bound=0.999),
      learning_rate=flags.DEFINE_float('learning_rate', d.learning_rate,
                                       'Learning rate (the peak of the warm-up schedules).',
                                       lower_bound=0.0),
      lr_schedule=flags.DEFINE_enum(
          'lr_schedule', d.lr_schedule, list(cifar10_run.SCHEDULES),
          'constant (the study), staircase (x0.1 every --lr_decay_epochs), warmup_linear / '
          'warmup_cosine (up over --warmup_steps, then down to 0 at --max_steps), onecycle '
          '(linearly up to the peak at a quarter of --max_steps, then down to 0).'),
      lr_decay_epochs=flags.DEFINE_float('lr_decay_epochs', d.lr_decay_epochs,
                                         'Epochs per staircase drop.', lower_bound=1e-9),
      warmup_steps=flags.DEFINE_integer('warmup_steps', d.warmup_steps,
                                        'Steps of linear warm-up.', lower_bound=0),
      label_smoothing=flags.DEFINE_float('label_smoothing', d.label_smoothing,
                                         'Share of each label spread over the classes.',
                                         lower_bound=0.0, upper_bound=0.999),
      moving_average_decay=flags.DEFINE_float(
          'moving_average_decay', d.moving_average_decay, 'EMA decay of the weights (at '
          'most (1 + step) / (10 + step)); 0.999 suits runs of a few thousand steps.',
          lower_bound=0.0, upper_bound=1.0),
      augment=flags.DEFINE_boolean('augment', d.augment, 'Distort the training images.'),
      distortions=flags.DEFINE_enum(
          'distortions', d.distortions, list(cifar10_input.DISTORTIONS),
          "tutorial (random crop, flip, brightness, contrast), crop_flip (a random crop of "
          'the image zero-padded to --image_size + --crop_slack, and a flip) or '
          'crop_flip_mean (the same of the standardized image, padded with its mean).'),
      crop_slack=flags.DEFINE_integer(
          'crop_slack', d.crop_slack, 'The crop_flip modes: positions per axis of the crop '
          'window, minus one (even; 8: padding by 4 at 32x32).', lower_bound=0,
          upper_bound=16),
      cutout=flags.DEFINE_integer('cutout', d.cutout, 'Side in pixels of a random square '
                                  'zeroed in each training image; 0: none.', lower_bound=0),
      l2_decay=flags.DEFINE_float('l2_decay', d.l2_decay, 'Coefficient of --weight_decay=l2.',
                                  lower_bound=0.0),
      image_size=flags.DEFINE_enum(
          'image_size', None, ['24', '32'],
          'Input side in pixels. Default: 24 with --augment, 32 with --noaugment.'),
      init=flags.DEFINE_enum('init', d.init, list(cifar10_model.INIT_MODES),
                             "xavier (the study's) or tutorial (explicit stddevs)."),
      weight_decay=flags.DEFINE_enum('weight_decay', d.weight_decay,
                                     list(cifar10_model.DECAY_MODES),
                                     'study: 500 / prod(shape); tutorial: 0.004 (both on '
                                     "the model's chosen layers); l2: --l2_decay on all."),
      log_frequency=flags.DEFINE_integer('log_frequency', d.log_frequency,
                                         'Steps between log lines.', lower_bound=1),
      checkpoint_steps=flags.DEFINE_integer('checkpoint_steps', d.checkpoint_steps,
                                            'Steps between checkpoints.', lower_bound=1),
      histogram_steps=flags.DEFINE_integer('histogram_steps', d.histogram_steps,
                                           'Steps between histograms and images.',
                                           lower_bound=1),
      keep_checkpoints=flags.DEFINE_integer('keep_checkpoints', d.keep_checkpoints,
                                            'Most recent checkpoints kept.', lower_bound=1),
      seed=flags.DEFINE_integer('seed', d.seed, 'Seed of init, shuffling and distortions.'),
      restart=flags.DEFINE_boolean('restart', False, 'Start again from step 0: the existing '
                                   'checkpoints are moved into a restarted-<time> subfolder.'),
  )
  return holders


def define_precision_flag():
  """--precision, for the binaries that train; returns {'precision': FlagHolder}."""
  return {'precision': flags.DEFINE_enum(
      'precision', cifar10_run.TrainConfig.precision, list(cifar10_model.PRECISIONS),
      'What the layers compute in: float32, or bfloat16 / float16 with float32 variables, '
      'EMA and loss (mixed_float16 with dynamic loss scaling).')}


def config_from_flags(holders):
  """Reads the training flags once into a TrainConfig."""
  values = {name: holder.value for name, holder in holders.items()
            if name in {f.name for f in dataclasses.fields(cifar10_run.TrainConfig)}}
  for name, value in cifar10_run.RECIPES[values['recipe']].items():
    if not holders[name].present:  # A flag given explicitly overrides the recipe.
      values[name] = value
  if values['image_size'] is None:
    values['image_size'] = cifar10_input.CROP_SIZE if values['augment'] else 32
  values['image_size'] = int(values['image_size'])
  values['model'] = models.canonical_name(values['model'])
  return cifar10_run.TrainConfig(**values)  # Resolves --conv=auto for this machine.


# --------------------------------------------------------------------------- training


ONECYCLE_PEAK = 0.25  # where 'onecycle' peaks, as a share of max_steps


def learning_rate(step, config):
  """The learning rate of the update at `step` (an int64 tensor, 0 for the first).

  constant: the rate. staircase: x lr_decay_factor every decay_steps (the tutorial's).
  warmup_linear / warmup_cosine: linearly up to the rate over warmup_steps (from rate /
  warmup_steps at step 0), then down to 0 at max_steps along a line or a half cosine.
  onecycle: linearly up to the rate at ONECYCLE_PEAK of max_steps, then linearly down to 0.
  """
  rate = config.learning_rate
  if config.lr_schedule == 'constant':
    return tf.constant(rate, tf.float32)
  if config.lr_schedule == 'staircase':
    drops = tf.cast(step // config.decay_steps, tf.float32)
    return rate * tf.pow(config.lr_decay_factor, drops)
  step, total = tf.cast(step, tf.float32), float(config.max_steps)
  if config.lr_schedule == 'onecycle':
    peak = max(ONECYCLE_PEAK * total, 1.0)
    return rate * tf.maximum(tf.minimum((step + 1) / peak, (total - step) / (total - peak)), 0)
  warmup = float(config.warmup_steps)
  rise = tf.minimum((step + 1) / max(warmup, 1.0), 1.0)
  progress = tf.clip_by_value((step - warmup) / max(total - warmup, 1.0), 0.0, 1.0)
  if config.lr_schedule == 'warmup_linear':
    return rate * rise * (1.0 - progress)
  return rate * rise * 0.5 * (1.0 + tf.cos(math.pi * progress))


# Dynamic loss scaling of --precision=mixed_float16: the first scale, and the finite steps in
# a row after which it doubles (an overflow halves it, down to 1).
INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000
MEMORY_RESERVE = 1 << 30  # bytes left to the data, TensorFlow and the OS beside the batch


def check_batch_fits(config, model, available=None):
  """Refuses a --batch_size whose train step would not fit in this machine's memory.

  Only without a GPU: a GPU's own memory rules there, and TensorFlow reports running out.

  Args:
    config: the run's TrainConfig.
    model: its Model.
    available: bytes free; default cifar10_env.available_memory() (unknown: no check).

  Raises:
    cifar10_run.ConfigError: the batch would not fit; the message gives the largest that does.
  """
  if available is None:
    if tf.config.list_physical_devices('GPU'):
      return
    available = cifar10_env.available_memory()
    if available is None:
      return
  per_image = cifar10_model.training_bytes_per_image(model)
  fits = max(available - MEMORY_RESERVE, 0) // per_image
  if config.batch_size > fits:
    raise cifar10_run.ConfigError(
        f'--batch_size={config.batch_size:,} does not fit in memory: a train step of '
        f'{config.model} at {config.image_size}x{config.image_size} takes about '
        f'{per_image / 2**20:.2f} MiB per image, {config.batch_size * per_image / 2**30:.1f} '
        f'GiB in all, and {available / 2**30:.1f} GiB is available; use --batch_size='
        f'{fits:,} or less.')


def _assign(strategy, variable, update, *args):
  """update(variable, *args): directly, or on every copy of a mirrored variable alike (in
  cross-replica context under a strategy)."""
  if strategy is None:
    return update(variable, *args)
  return strategy.extended.update(variable, update, args=args)


class Trainer(cifar10_run.RunState):
  """A run's state (model, step, EMA, checkpoint) and its SGD step, on one device or under a
  tf.distribute strategy (cifar10_distribute.py), with the same meaning of a step."""

  def __init__(self, config, strategy=None):
    super().__init__(config, strategy=strategy)
    self.worker = cifar10_distribute.this_worker(strategy)
    self.replicas = strategy.num_replicas_in_sync if strategy else 1
    try:
      cifar10_distribute.replica_batch_size(config.batch_size, self.replicas)
    except cifar10_distribute.DistributeError as e:
      raise cifar10_run.ConfigError(str(e)) from e
    # Before the first step tries to allocate it: this process's share of the batch.
    check_batch_fits(dataclasses.replace(
        config, batch_size=config.batch_size // self.worker.num_workers), self.model)
    self.model.set_precision(config.precision)  # The layers' compute dtype; float32 weights.
    with strategy.scope() if strategy else contextlib.nullcontext():
      extra = self.extra_state()
      self.velocities = []
      if config.optimizer != 'sgd':  # One velocity per variable, in the checkpoint.
        self.velocities = [tf.Variable(tf.zeros(v.shape), trainable=False,
                                       name=v.name.split(':')[0] + '/velocity')
                           for v in self.variables]
        extra.update(velocities=list(self.velocities))
      self.loss_scale = None
      if config.precision == 'mixed_float16':  # Dynamic loss scaling, in the checkpoint.
        self.loss_scale = tf.Variable(INITIAL_LOSS_SCALE, trainable=False, name='loss_scale')
        self.good_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name='good_steps')
        extra.update(loss_scale=self.loss_scale, good_steps=self.good_steps)
      self.checkpoint = self.make_checkpoint(**extra)
    self.manager = None  # Opened by restore_latest(), which comes before any save().
    size = config.image_size
    if strategy is None:
      self.train_step = tf.function(self._train_step, input_signature=(
          tf.TensorSpec([config.batch_size, size, size, 3], tf.float32),
          tf.TensorSpec([config.batch_size], tf.int32)))
    else:  # Takes the per-replica values of a distributed dataset.
      self.train_step = tf.function(self._distributed_train_step)

  def extra_state(self):
    """Further trackables saved in the checkpoint, by name: none here.

    Called once, after the model and the EMA exist; a subclass creates its own state here
    (compress/prune.py: the masks).
    """
    return {}

  def restore_latest(self):
    """Restores the newest checkpoint that reads whole; returns the step reached (0: none).

    Sets `restored_from` (None for a fresh start) and `skipped`, the (path, reason) of each
    newer checkpoint that did not restore.

    Raises:
      cifar10_run.UnreadableCheckpoint: there are checkpoints, but none restores.
    """
    self.open_checkpoints()
    self.restored_from, self.skipped = None, []
    paths = cifar10_run.checkpoint_paths(self.config.train_dir)
    for path in paths:
      try:
        cifar10_run.read_checkpoint(self.checkpoint, path)
      except cifar10_run.UnreadableCheckpoint as e:
        self.skipped.append((path, str(e)))
        continue
      self.restored_from = path
      return int(self.step.numpy())
    if paths:
      raise cifar10_run.UnreadableCheckpoint(
          f'none of the {len(paths)} checkpoints in {self.config.train_dir} restores (the '
          f'newest: {self.skipped[0][1]}); pass --restart to move them aside and start again '
          'from step 0.')
    return 0

  def open_checkpoints(self):
    """Opens the manager that saves and rotates the checkpoints, on a state file rebuilt from
    the checkpoints present: an emptied, damaged or lost one must neither stop the run nor
    make it start again from step 0."""
    if not self.worker.is_chief:  # Saves its share where nobody reads it (save() clears it).
      self.scratch_dir = tempfile.mkdtemp(prefix=f'cifar10-worker{self.worker.task_index}-')
      self.manager = tf.train.CheckpointManager(self.checkpoint, self.scratch_dir, max_to_keep=1)
      return
    cifar10_run.rebuild_checkpoint_state(self.config.train_dir)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.config.train_dir,
                                              max_to_keep=self.config.keep_checkpoints)

  def _train_step(self, images, labels):
    """One SGD step on one device: the update of the whole batch."""
    self.before_update()
    gradients, metrics = self._gradients(images, labels)
    metrics['learning_rate'] = self._update(gradients)
    self.after_update(metrics)
    return metrics

  def _distributed_train_step(self, images, labels):
    """One SGD step over the strategy's replicas, each on its share of the global batch.

    Each replica's loss is its share of the global one (its mean cross-entropy and the weight
    decay, over the number of replicas), so the sum of the replicas' gradients, all-reduced,
    is the gradient of the one-device step; the update, the step and the EMA then run once,
    in cross-replica context, on every copy of the variables alike.
    """
    self.before_update()
    per_replica = self.strategy.run(self._replica_step, args=(images, labels))
    metrics = {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
               for name, value in per_replica.items()}
    self.after_update(metrics)
    return metrics

  def _replica_step(self, images, labels):
    gradients, metrics = self._gradients(images, labels, share=1.0 / self.replicas)
    context = tf.distribute.get_replica_context()
    gradients = context.all_reduce(tf.distribute.ReduceOp.SUM, gradients)
    rate = context.merge_call(lambda strategy, g: self._update(g, strategy), args=(gradients,))
    metrics['learning_rate'] = rate / self.replicas  # Summed over the replicas by the caller.
    return metrics

  def _gradients(self, images, labels, share=1.0):
    """Gradients of `share` x the batch's loss, and the metrics of that share.

    With mixed_float16 the loss is multiplied by the loss scale before the gradients, which
    are divided by it after (small float16 gradients would flush to zero otherwise).
    """
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)  # float32 logits in every precision.
      cross_entropy, decay = cifar10_model.loss(logits, labels, self.model,
                                                self.config.label_smoothing)
      if share != 1.0:
        cross_entropy, decay = cross_entropy * share, decay * share
      total = cross_entropy + decay
      scaled = total if self.loss_scale is None else total * self.loss_scale
    gradients = tape.gradient(scaled, self.variables)
    if self.loss_scale is not None:
      gradients = [gradient / self.loss_scale for gradient in gradients]
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32)) * share
    return gradients, {'loss': total, 'cross_entropy': cross_entropy, 'weight_decay': decay,
                       'batch_accuracy': accuracy}

  def _update(self, gradients, strategy=None):
    """The optimizer's update, the step and the EMA; returns the learning rate used.

    sgd: w -= rate * g. momentum: v = momentum * v + g, w -= rate * v. nesterov: the same v,
    w -= rate * (g + momentum * v) (the form of Sutskever et al. 2013 that PyTorch uses).
    With a strategy: in cross-replica context, each copy of a variable updated alike.
    """
    rate = learning_rate(self.step, self.config)
    finite = None
    if self.loss_scale is not None:  # A step whose gradients overflowed changes no weight.
      finite = self._adjust_loss_scale(gradients, strategy)
      gradients = [tf.where(finite, gradient, tf.zeros_like(gradient))
                   for gradient in gradients]
      rate = tf.where(finite, rate, 0.0)
    mu = self.config.momentum
    for variable, gradient, velocity in zip(self.variables, gradients,
                                            self.velocities or [None] * len(gradients)):
      if velocity is None:
        _assign(strategy, variable, lambda v, g: v.assign_sub(rate * g), gradient)
        continue
      _assign(strategy, velocity, lambda v, g: v.assign(
          mu * v + g if finite is None else tf.where(finite, mu * v + g, v)), gradient)
      if self.config.optimizer == 'nesterov':
        _assign(strategy, variable, lambda w, g, v: w.assign_sub(rate * (g + mu * v)),
                gradient, velocity)
      else:
        _assign(strategy, variable, lambda w, v: w.assign_sub(rate * v), velocity)
    _assign(strategy, self.step, lambda step: step.assign_add(1))
    if self.loss_scale is None:
      self.ema.apply(self.variables)
    else:  # Skipped with the update: the shadows must not drift towards unchanged weights.
      def apply_ema():
        self.ema.apply(self.variables)
      tf.cond(finite, apply_ema, lambda: None)
    return rate

  def _adjust_loss_scale(self, gradients, strategy=None):
    """Dynamic loss scaling: whether the gradients are finite; the scale halves after an
    overflow and doubles after LOSS_SCALE_GROWTH_STEPS finite steps in a row."""
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    good = tf.where(finite, self.good_steps + 1, 0)
    grow = good >= LOSS_SCALE_GROWTH_STEPS
    scale = tf.where(finite, tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                     tf.maximum(self.loss_scale / 2.0, 1.0))
    good = tf.where(grow, tf.zeros_like(good), good)
    _assign(strategy, self.loss_scale, lambda v, x: v.assign(x), scale)
    _assign(strategy, self.good_steps, lambda v, x: v.assign(x), good)
    return finite

  def before_update(self):
    """Runs at the start of each step, before the gradients (cross-replica context): a
    subclass changes state here (compress/prune.py: the masks)."""
    return  # A statement: AutoGraph cannot convert a body of a docstring alone.

  def after_update(self, metrics):
    """Runs at the end of each step (cross-replica context); may add to `metrics`."""
    del metrics

  def weights_finite(self):
    return all(bool(tf.reduce_all(tf.math.is_finite(v)))
               for v in list(self.variables) + self.ema_shadows)

  def save(self, train_seconds):
    """Checkpoints the current state, named by its step; refuses non-finite weights."""
    step = int(self.step.numpy())
    if not self.weights_finite():
      raise TrainingDiverged(f'weights are not finite at step {step}: training diverged. The '
                             'last good checkpoint is kept; lower --learning_rate and re-run.')
    self.train_seconds.assign(train_seconds)
    try:
      path = self.manager.save(checkpoint_number=step)  # Every worker takes part.
      if not self.worker.is_chief:
        shutil.rmtree(self.scratch_dir, ignore_errors=True)
      return path
    except (tf.errors.OpError, OSError) as e:
      _remove_partial_saves(self.config.train_dir)
      kept = cifar10_run.checkpoint_paths(self.config.train_dir)
      raise SaveFailed(f'could not save the checkpoint of step {step} in '
                       f'{self.config.train_dir} ({type(e).__name__}: {str(e).strip()[:200]}); '
                       'is the disk full or read-only? The checkpoints before it are intact '
                       f'(newest: {kept[0] if kept else "none"}).') from e


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


def _remove_partial_saves(train_dir):
  """Drops the '<prefix>_temp' folders a kill during a save leaves behind."""
  for name in os.listdir(train_dir):
    path = os.path.join(train_dir, name)
    if name.endswith('_temp') and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)


class WorkerLost(Exception):
  """Another worker of a multi-worker run stopped (killed, crashed, unreachable)."""


# What TensorFlow raises in a collective op when a peer of the cluster is gone.
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.DeadlineExceededError, tf.errors.CancelledError)


class StopRequested(Exception):
  """SIGINT or SIGTERM arrived; raised between steps, after the state was saved."""


_STOP = threading.Event()  # Set by the signal handlers of main(); read between steps.
_STOP_SIGNAL = [signal.SIGINT]  # The signal that set _STOP (the exit code is 128 + it).


class _Clock:
  """Times the windows between log lines and the whole run (for examples/sec and ETA)."""

  def __init__(self, step, previous_seconds):
    self.start_step, self.start = step, time.time()
    self.window_step, self.window_start = step, self.start
    self.previous_seconds = previous_seconds

  def lap(self, step):
    """Ends the current window at `step`: returns (seconds, steps) of the window."""
    now = time.time()  # Windows abut, so logging time counts against the speed.
    window = (now - self.window_start, step - self.window_step)
    self.window_step, self.window_start = step, now
    return window

  def total_seconds(self):
    return self.previous_seconds + time.time() - self.start

  def eta(self, step, max_steps):
    per_step = (time.time() - self.start) / max(step - self.start_step, 1)
    return datetime.timedelta(seconds=round((max_steps - step) * per_step))


def train(config, train_split, on_log=None, make_trainer=None, restart=False, strategy=None):
  """Trains until config.max_steps, resuming from train_dir; returns the final metrics.

  Holds train_dir's lock throughout. Resumes from the newest checkpoint that restores (the
  newer ones that do not are named and skipped); with `restart`, the checkpoints are first
  moved into a subfolder and training starts from step 0. Under a multi-worker strategy only
  the chief writes into train_dir (and holds its lock); the other workers read the same
  checkpoint and write nothing there.

  Args:
    config: a cifar10_run.TrainConfig.
    train_split: the cifar10_records.Split to train on.
    on_log: optional callable(step, examples_per_sec) run at each log line (benchmarks).
    make_trainer: callable(config) -> Trainer; default Trainer(config, strategy).
      compress/prune.py passes a pruning one.
    restart: move the existing checkpoints aside and start from step 0.
    strategy: a tf.distribute strategy (cifar10_distribute.make_strategy), or None: one device.

  Raises:
    TrainingDiverged: the loss or the weights became NaN or infinite (nothing is saved then).
    SaveFailed: a checkpoint could not be written; the earlier ones are intact.
    StopRequested: a signal asked to stop; the state was saved first.
    cifar10_run.RunFolderBusy: another process trains in train_dir.
    cifar10_run.UnreadableCheckpoint: checkpoints exist but none restores (see restart).
    WorkerLost: another worker of a multi-worker strategy stopped.
  """
  tf.random.set_seed(config.seed)
  if config.deterministic:  # For the rest of the process: TensorFlow cannot turn it off.
    tf.config.experimental.enable_op_determinism()
  make_trainer = make_trainer or (lambda c: Trainer(c, strategy))
  chief = cifar10_distribute.this_worker(strategy).is_chief
  with cifar10_run.locked(config.train_dir) if chief else contextlib.nullcontext():
    trainer, step = _resume(config, make_trainer, restart, chief)
    try:
      if step >= config.max_steps:
        _log(f'{config.train_dir} is already at step {step} >= max_steps {config.max_steps}; '
             'nothing to do.')
        return None
      return _loop(config, trainer, step, train_split, on_log)
    except _PEER_ERRORS as e:
      if trainer.worker.num_workers == 1:
        raise
      newest = cifar10_run.newest_checkpoint(config.train_dir)
      raise WorkerLost(f'another worker of the cluster stopped (TensorFlow: {type(e).__name__} '
                       'in a collective op; its own log says why); the newest checkpoint is '
                       f'{newest or "none"}: run every worker\'s command again to resume from '
                       'it') from e
    finally:
      if not chief:
        shutil.rmtree(trainer.scratch_dir, ignore_errors=True)


def _resume(config, make_trainer, restart, chief=True):
  """The run's trainer, restored, and its step; config.json written once that succeeded.

  A worker that is not the chief only reads: it restores what the chief restores and
  leaves the partial saves, the moving aside and config.json to it.
  """
  if chief:
    _remove_partial_saves(config.train_dir)  # A kill during a save leaves these behind.
  changes = cifar10_run.check_config(config)  # Refuses another model before touching a file.
  if chief and restart and cifar10_run.checkpoint_paths(config.train_dir):
    aside = cifar10_run.move_checkpoints_aside(config.train_dir)
    _log(f'--restart: moved the checkpoints to {aside}')
  trainer = make_trainer(config)
  if restart and not chief:  # The chief moves the checkpoints aside: start from step 0.
    trainer.open_checkpoints()
    return trainer, 0
  step = trainer.restore_latest()
  for path, reason in trainer.skipped:
    _log(f'skipped {path}, which does not restore: {reason}')
  if chief:
    cifar10_run.write_config(config)
  for change in changes:
    _log(f'note: changed since the last run in {config.train_dir}: {change}')
  if step:
    _log(f'resumed from {trainer.restored_from} at step {step}')
  return trainer, step


def _batches(config, trainer, step, train_split):
  """The training batches from `step` on: one device's, or the strategy's per replica."""
  def inputs(replicas):
    return cifar10_input.train_inputs(
        train_split, config.batch_size, seed=config.seed, augment=config.augment,
        image_size=config.image_size, first_step=step, replicas=replicas,
        distortions=config.distortions, cutout_side=config.cutout,
        crop_slack=config.crop_slack)
  if trainer.strategy is None:
    return inputs((0, 1, 1))

  def pipeline(context):  # Each input pipeline (worker) yields its replicas' shares in turn.
    local = context.num_replicas_in_sync // context.num_input_pipelines
    return inputs((context.input_pipeline_id * local, local, context.num_replicas_in_sync))
  return trainer.strategy.distribute_datasets_from_function(pipeline)


def _local(value, strategy):
  """This process's first replica's part of a per-replica value (the value itself without a
  strategy)."""
  return strategy.experimental_local_results(value)[0] if strategy else value


def _loop(config, trainer, step, train_split, on_log):
  """Steps from `step` to config.max_steps; returns the last metrics."""
  batches = iter(_batches(config, trainer, step, train_split))  # From `step`: nothing replayed.
  clock = _Clock(step, float(trainer.train_seconds.numpy()))
  writer = (tf.summary.create_file_writer(config.train_dir) if trainer.worker.is_chief
            else tf.summary.create_noop_writer())
  with writer.as_default():
    while step < config.max_steps:
      if _STOP.is_set():
        _log(f'stopping on a signal: saved {trainer.save(clock.total_seconds())}')
        raise StopRequested()
      images, labels = next(batches)
      metrics = trainer.train_step(images, labels)
      step += 1
      if step % config.log_frequency == 0 or step == config.max_steps:
        _log_step(config, metrics, step, clock, on_log)
      if step % config.histogram_steps == 0:
        _write_histograms(trainer, _local(images, trainer.strategy), step)
      if step % config.checkpoint_steps == 0 or step == config.max_steps:
        path = trainer.save(clock.total_seconds())
        _log(f'saved {path} (ETA {clock.eta(step, config.max_steps)})')
  _log(f'done: step {step}, {clock.total_seconds() - clock.previous_seconds:.1f} s this run, '
       f'{clock.total_seconds():.1f} s in all')
  return {name: float(value) for name, value in metrics.items()}


def _log_step(config, metrics, step, clock, on_log):
  """The tutorial's log line, the scalar summaries and the divergence check."""
  loss = float(metrics['loss'])
  _check_finite(loss, step)
  seconds, steps = clock.lap(step)
  rate = steps * config.batch_size / seconds
  _log(f'step {step}, loss = {loss:.2f} ({rate:.1f} examples/sec; '
       f'{seconds / steps:.3f} sec/batch)')
  _write_scalars(metrics, step, rate)
  if on_log:
    on_log(step, rate)


def request_stop(signum, frame):
  """Signal handler: asks train() to save and stop between steps (twice: stop at once)."""
  del frame
  if _STOP.is_set():  # A second Ctrl-C stops at once.
    raise KeyboardInterrupt
  _STOP_SIGNAL[0] = signum
  _STOP.set()
  print(f'\nsignal {signum}: saving a checkpoint and stopping...', file=sys.stderr, flush=True)


def stop_exit_code():
  """The exit code after a stop on a signal: 128 + its number (130 SIGINT, 143 SIGTERM)."""
  return 128 + int(_STOP_SIGNAL[0])


def install_stop_handlers():
  """SIGTERM and SIGINT save a checkpoint and stop train() between steps (see request_stop)."""
  signal.signal(signal.SIGTERM, request_stop)
  signal.signal(signal.SIGINT, request_stop)


# What a training binary (this one, compress/prune.py) reports as one `error:` line.
ERRORS = (cifar10_records.DataError, TrainingDiverged, SaveFailed, cifar10_run.ConfigError,
          cifar10_run.UnreadableCheckpoint, cifar10_distribute.DistributeError, WorkerLost)


def start_strategy(name, cpu_replicas):
  """Sets the devices up and makes the strategy, first thing (cifar10_distribute.py)."""
  cifar10_distribute.configure_devices(name, cpu_replicas)
  return cifar10_distribute.make_strategy(name, cpu_replicas)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  try:
    strategy = start_strategy(_FLAGS['strategy'].value, _FLAGS['cpu_replicas'].value)
    config = config_from_flags(_FLAGS)
    _log(cifar10_run.recipe_summary(config))
    split = cifar10_records.load_split(cifar10_run.batches_dir_from_flags(_FLAGS), 'train')
    install_stop_handlers()  # Only now: before, Ctrl-C simply ends the download or extraction.
    train(config, split, restart=_FLAGS['restart'].value, strategy=strategy)
  except ERRORS as e:
    sys.exit(f'error: {e}')
  except StopRequested:
    sys.exit(stop_exit_code())
  except KeyboardInterrupt:
    sys.exit(130)


if __name__ == '__main__':
  _FLAGS = define_train_flags()
  app.run(main)
