"""The trainer: a run's state and its step, the resumable, signal-safe loop around it.

`Trainer` is a run's RunState plus an optimizer (cifar10_optim), a learning-rate schedule,
loss scaling under mixed_float16, and one tf.function step on one device or under a
tf.distribute strategy, a step meaning the same (cifar10_distribute.py). `train` runs it to
max_steps, resuming from the run folder. Its extension points (docs/design.md), each a
method a tool overrides or an argument it passes:

  extra_state()          further trackables in the checkpoint (compress/prune.py: masks)
  forward(images)        the training forward pass (a transform of weights or activations,
                         e.g. fake quantization, goes here)
  objective(images, labels)  the loss of a batch (distillation replaces it)
  before_update() / after_update(metrics)  hooks around each update (masks)
  restore_latest()       where the run starts (compress/prune.py: a source run)
  build_model=           a model the registry does not build (layers of other shapes)
  schedule=              a learning-rate schedule of its own (pruning's fine-tuning)
"""

import contextlib
import dataclasses
import datetime
import functools
import math
import re
import signal
import sys
import threading
import time

import tensorflow as tf

import cifar10_config
import cifar10_distill
import cifar10_distribute
import cifar10_env
import cifar10_input
import cifar10_model
import cifar10_optim
import cifar10_records
import cifar10_run
import cifar10_summaries


class TrainingDiverged(Exception):
  """The loss became NaN or infinite."""


class WorkerLost(Exception):
  """Another worker of a multi-worker run stopped (killed, crashed, unreachable)."""


class StopRequested(Exception):
  """SIGINT or SIGTERM arrived; raised between steps, after the state was saved."""


# What a training program (cifar10_train.py, compress/prune.py) reports as one `error:` line.
ERRORS = (cifar10_records.DataError, TrainingDiverged, cifar10_run.SaveFailed,
          cifar10_config.ConfigError, cifar10_run.UnreadableCheckpoint,
          cifar10_distribute.DistributeError, WorkerLost)

# Fields whose change makes the state differ from what the run's checkpoints hold (other
# optimizer slots, loss-scale variables): a restore then fails although nothing is damaged.
STATE_FIELDS = ('optimizer', 'precision')
MEMORY_RESERVE = 1 << 30  # bytes left to the data, TensorFlow and the OS beside the batch


def check_batch_fits(config, model, available=None):
  """Refuses a --batch_size whose train step would not fit in this machine's memory.

  Only without a GPU: a GPU's own memory rules there, and TensorFlow reports running out.

  Args:
    config: the run's TrainConfig.
    model: its Model.
    available: bytes free; default cifar10_env.available_memory() (unknown: no check).

  Raises:
    cifar10_config.ConfigError: the batch would not fit; the message gives the largest that
      does.
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
    raise cifar10_config.ConfigError(
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
  """A run's state (model, step, EMA, optimizer slots, checkpoint) and its training step.

  Args:
    config: the run's TrainConfig.
    strategy: a tf.distribute strategy, or None (one device).
    build_model: callable(config, conv) -> Model, instead of the registry's model.
    schedule: a cifar10_optim.Schedule; default the config's.
  """

  def __init__(self, config, strategy=None, build_model=None, schedule=None):
    super().__init__(config, strategy=strategy, build_model=build_model)
    self.worker = cifar10_distribute.this_worker(strategy)
    self.replicas = strategy.num_replicas_in_sync if strategy else 1
    try:
      cifar10_distribute.replica_batch_size(config.batch_size, self.replicas)
    except cifar10_distribute.DistributeError as e:
      raise cifar10_config.ConfigError(str(e)) from e
    check_batch_fits(dataclasses.replace(  # Before the first step: this process's share.
        config, batch_size=config.batch_size // self.worker.num_workers), self.model)
    self.model.set_precision(config.precision)  # The layers' compute dtype; float32 weights.
    self.schedule = schedule or config.schedule()  # Teachers: never trained or saved.
    self.teacher = cifar10_distill.Teacher(config) if config.teacher_dir else None
    decay = {id(kernel): coefficient for kernel, coefficient in self.model.kernels}
    with strategy.scope() if strategy else contextlib.nullcontext():
      extra = self.extra_state()
      self.optimizer = cifar10_optim.make_optimizer(
          config.optimizer, self.variables, [decay.get(id(v), 0.0) for v in self.variables], config)
      extra.update(self.optimizer.checkpoint_state())
      self.loss_scale = None
      if config.precision == 'mixed_float16':
        self.loss_scale = cifar10_optim.LossScale()
        extra.update(self.loss_scale.checkpoint_state())
      self.checkpoint = self.make_checkpoint(**extra)
    self.files = cifar10_run.CheckpointFiles(self.checkpoint, config.train_dir,
                                             config.keep_checkpoints, self.worker)
    size = config.image_size
    if strategy is None:
      self.train_step = tf.function(self._train_step, input_signature=(
          tf.TensorSpec([config.batch_size, size, size, 3], tf.float32),
          tf.TensorSpec([config.batch_size], tf.int32)))
    else:  # Takes the per-replica values of a distributed dataset.
      self.train_step = tf.function(self._distributed_train_step)

  def extra_state(self):  # {name: trackable} saved in the checkpoint too: none here.
    return {}

  def forward(self, images):
    """The training forward pass: float32 logits [B, 10] in every precision."""
    return self.model(images, training=True)

  def objective(self, images, labels):
    """(cross-entropy, or with teachers cifar10_distill's loss; weight decay; logits)."""
    logits = self.forward(images)
    cross_entropy, decay = cifar10_model.loss(logits, labels, self.model,
                                              self.config.label_smoothing)
    if self.teacher is not None:
      cross_entropy = self.teacher.loss(cross_entropy, images, logits)
    return cross_entropy, decay, logits

  def before_update(self):
    """Runs at the start of each step, before the gradients (cross-replica context)."""
    return  # A statement: AutoGraph cannot convert a body of a docstring alone.

  def after_update(self, metrics):
    """Runs at the end of each step (cross-replica context); may add to `metrics`."""
    del metrics

  def restore_latest(self):
    """Restores the newest checkpoint that reads whole; returns the step reached (0: none).
    Sets `restored_from` (None: a fresh start) and `skipped`: (path, reason) of newer ones."""
    self.files.open()
    self.restored_from, self.skipped = self.files.restore_newest()
    return int(self.step.numpy())

  def _train_step(self, images, labels):  # One step on one device: the whole batch's update.
    self.before_update()
    gradients, metrics = self._gradients(images, labels)
    metrics['learning_rate'] = self._update(gradients)
    self.after_update(metrics)
    return metrics

  def _distributed_train_step(self, images, labels):
    """One step over the strategy's replicas, each on its share of the global batch: each
    replica's loss is its share of the global one, so the all-reduced sum of their gradients
    is the one-device gradient; the update, step and EMA run once, in cross-replica context."""
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
    """Gradients of `share` x the batch's loss (without the weight decay when the optimizer
    decays by itself), and the metrics of that share; under loss scaling the loss is scaled
    before the gradients and they are unscaled after."""
    with tf.GradientTape() as tape:
      cross_entropy, decay, logits = self.objective(images, labels)
      if share != 1.0:
        cross_entropy, decay = cross_entropy * share, decay * share
      total = cross_entropy + decay
      differentiated = cross_entropy if self.optimizer.decoupled_decay else total
      scaled = differentiated if self.loss_scale is None else differentiated * self.loss_scale.scale
    gradients = tape.gradient(scaled, self.variables)
    if self.loss_scale is not None:
      gradients = [gradient / self.loss_scale.scale for gradient in gradients]
    correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32)) * share
    return gradients, {'loss': total, 'cross_entropy': cross_entropy, 'weight_decay': decay,
                       'batch_accuracy': accuracy}

  def _update(self, gradients, strategy=None):
    """The optimizer's update, the step and the EMA; returns the learning rate used. A step
    whose gradients overflowed (loss scaling) changes no weight, slot or shadow."""
    rate = self.schedule(self.step)
    assign = functools.partial(_assign, strategy)
    finite = None
    if self.loss_scale is not None:
      finite = self.loss_scale.adjust(gradients, assign)
      gradients = [tf.where(finite, gradient, tf.zeros_like(gradient))
                   for gradient in gradients]
      rate = tf.where(finite, rate, 0.0)
    self.optimizer.apply(gradients, rate, self.step, assign, finite)
    assign(self.step, lambda step: step.assign_add(1))
    if self.loss_scale is None:
      self.ema.apply(self.variables)
    else:  # Skipped with the update: the shadows must not drift towards unchanged weights.
      def apply_ema():
        self.ema.apply(self.variables)
      tf.cond(finite, apply_ema, lambda: None)
    return rate

  def save(self, train_seconds):
    """Checkpoints the current state, named by its step; refuses non-finite weights."""
    step = int(self.step.numpy())
    if not all(bool(tf.reduce_all(tf.math.is_finite(v)))
               for v in list(self.variables) + self.ema_shadows):
      raise TrainingDiverged(f'weights are not finite at step {step}: training diverged. The '
                             'last good checkpoint is kept; lower --learning_rate and re-run.')
    self.train_seconds.assign(train_seconds)
    return self.files.save(step)


# --------------------------------------------------------------------------- the loop


_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,  # a peer of the cluster
                tf.errors.DeadlineExceededError, tf.errors.CancelledError)  # is gone
_STOP = threading.Event()  # Set by the signal handlers (install_stop_handlers).
_STOP_SIGNAL = [signal.SIGINT]  # The signal that set _STOP (the exit code is 128 + it).


def log(message):
  """Prints a line of the training log, with the date and time first."""
  print(f'{datetime.datetime.now()}: {message}', flush=True)


# The step line of _log_step, for the tests and benchmarks that read a training log:
# step, max_steps, loss, examples/sec, sec/batch and the ETA (H:MM:SS, "1 day, H:MM:SS").
STEP_LINE = re.compile(r'step (\d+)/(\d+), loss = (\S+) \(([\d.]+) examples/sec; '
                       r'([\d.]+) sec/batch; ETA ([^)]+)\)')


def logged_steps(text):
  """The steps of the step lines in a training log's `text`, in order."""
  return [int(match.group(1)) for match in STEP_LINE.finditer(text)]


class Clock:
  """Times the windows between log lines and the whole run (for examples/sec and ETA)."""

  def __init__(self, step, previous_seconds):
    self.start_step, self.start = step, time.time()
    self.window_step, self.window_start = step, self.start
    self.previous_seconds = previous_seconds
    self.seconds_per_step = None  # The last window's, once one has ended.

  def lap(self, step):
    """Ends the current window at `step`: returns (seconds, steps) of the window."""
    now = time.time()  # Windows abut, so logging time counts against the speed.
    window = (now - self.window_start, step - self.window_step)
    self.window_step, self.window_start = step, now
    self.seconds_per_step = window[0] / max(window[1], 1)
    return window

  def total_seconds(self):
    return self.previous_seconds + time.time() - self.start

  def eta(self, step, max_steps):
    """The time left to max_steps at the last window's speed, the one its log line shows
    (a machine that slows down or speeds up shows at once); before any window ended, at
    this process's average speed so far."""
    per_step = self.seconds_per_step
    if per_step is None:
      per_step = (time.time() - self.start) / max(step - self.start_step, 1)
    return datetime.timedelta(seconds=round((max_steps - step) * per_step))


def train(config, train_split, on_log=None, make_trainer=None, restart=False, strategy=None):
  """Trains until config.max_steps, resuming from train_dir; returns the final metrics.

  Holds train_dir's lock throughout. Resumes from the newest checkpoint that restores (the
  newer ones that do not are named and skipped); with `restart`, the checkpoints are first
  moved into a subfolder and training starts from step 0. Under a multi-worker strategy only
  the chief writes into train_dir (and holds its lock).

  Args:
    config: a cifar10_config.TrainConfig.
    train_split: the cifar10_records.Split to train on.
    on_log: optional callable(step, examples_per_sec) run at each log line (benchmarks).
    make_trainer: callable(config) -> Trainer; default Trainer(config, strategy).
    restart: move the existing checkpoints aside and start from step 0.
    strategy: a tf.distribute strategy (cifar10_distribute.make_strategy), or None.

  Raises:
    The ERRORS above (cifar10_run.RunFolderBusy among the ConfigErrors), and StopRequested
    when a signal asked to stop (the state was saved first).
  """
  tf.random.set_seed(config.seed)
  if config.deterministic:  # For the rest of the process: TensorFlow cannot turn it off.
    tf.config.experimental.enable_op_determinism()
  make_trainer = make_trainer or (lambda c: Trainer(c, strategy))
  chief = cifar10_distribute.this_worker(strategy).is_chief
  with cifar10_run.locked(config.train_dir) if chief else contextlib.nullcontext():
    trainer, step = _resume(config, make_trainer, restart, chief)
    try:
      if step >= config.max_steps:  # config.json stays the run's: these flags trained nothing.
        log(f'{config.train_dir} is already at step {step} >= max_steps {config.max_steps}; '
            'nothing to do.')
        return None
      if chief:
        cifar10_run.write_config(config)
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
      trainer.files.remove_scratch()


def _resume(config, make_trainer, restart, chief=True):
  """The run's trainer, restored, and its step (train() writes config.json once that
  succeeded and there is something to train).

  A worker that is not the chief only reads: it restores what the chief restores and
  leaves the partial saves, the moving aside and config.json to it.
  """
  if chief:
    cifar10_run.remove_partial_saves(config.train_dir)  # A kill during a save leaves these.
  changes = cifar10_run.check_config(config)  # Refuses another model before touching a file.
  if chief and restart and cifar10_run.checkpoint_paths(config.train_dir):
    aside = cifar10_run.move_checkpoints_aside(config.train_dir)
    log(f'--restart: moved the checkpoints to {aside}')
  trainer = make_trainer(config)
  if restart and not chief:  # The chief moves the checkpoints aside: start from step 0.
    trainer.files.open()
    return trainer, 0
  try:
    step = trainer.restore_latest()
  except cifar10_run.UnreadableCheckpoint as e:
    layout = [c for c in changes if c.split(':')[0] in STATE_FIELDS + ('recipe',)]
    if not any(c.split(':')[0] in STATE_FIELDS for c in layout):
      raise
    raise cifar10_config.ConfigError(
        f'none of the checkpoints in {config.train_dir} restores with this call\'s flags, '
        f'which change what a checkpoint holds ({"; ".join(layout)}): run with the run\'s '
        'own flags to resume it, or pass --restart to start again from step 0.') from e
  for path, reason in trainer.skipped:
    log(f'skipped {path}, which does not restore: {reason}')
  for change in changes:
    log(f'note: changed since the last run in {config.train_dir}: {change}')
  if step:
    log(f'resumed from {trainer.restored_from} at step {step}')
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


def _loop(config, trainer, step, train_split, on_log):
  """Steps from `step` to config.max_steps; returns the last metrics."""
  batches = iter(_batches(config, trainer, step, train_split))  # From `step`: nothing replayed.
  clock = Clock(step, float(trainer.train_seconds.numpy()))
  chief = trainer.worker.is_chief
  writer = tf.summary.create_file_writer(config.train_dir) if chief else (
      tf.summary.create_noop_writer())
  profile = cifar10_summaries.Profile(config.profile_window if chief else None,
                                      config.train_dir, log)
  first = step + 1  # This process's first step: the graph, histograms and images.
  with writer.as_default():
    if chief:
      cifar10_summaries.write_run_start(config, step)
    try:
      while step < config.max_steps:
        if _STOP.is_set():
          log(f'stopping on a signal: saved {trainer.save(clock.total_seconds())}')
          raise StopRequested()
        images, labels = next(batches)
        profile.before(step + 1)
        with cifar10_summaries.traced_step(step + 1, enabled=chief and step + 1 == first):
          metrics = trainer.train_step(images, labels)
        step += 1
        profile.after(step)
        if step % config.log_frequency == 0 or step == config.max_steps:
          _log_step(config, metrics, step, clock, on_log)
        if step % config.histogram_steps == 0 or step == first:
          _write_histograms(trainer, images, step)
        if step % config.checkpoint_steps == 0 or step == config.max_steps:
          path = trainer.save(clock.total_seconds())
          log(f'saved {path} (ETA {clock.eta(step, config.max_steps)})')
    finally:
      profile.stop()
  log(f'done: step {step}, {clock.total_seconds() - clock.previous_seconds:.1f} s this run, '
      f'{clock.total_seconds():.1f} s in all')
  return {name: float(value) for name, value in metrics.items()}


def _log_step(config, metrics, step, clock, on_log):
  """The tutorial's log line (with max_steps and the ETA added), the scalar summaries and
  the divergence check."""
  loss = float(metrics['loss'])
  if not math.isfinite(loss):
    raise TrainingDiverged(f'loss is {loss} at step {step}: training diverged. The last '
                           'good checkpoint is kept; lower --learning_rate and re-run.')
  seconds, steps = clock.lap(step)
  rate = steps * config.batch_size / seconds
  log(f'step {step}/{config.max_steps}, loss = {loss:.2f} ({rate:.1f} examples/sec; '
      f'{seconds / steps:.3f} sec/batch; ETA {clock.eta(step, config.max_steps)})')
  for name, value in metrics.items():
    tf.summary.scalar(name, value, step=step)
  tf.summary.scalar('examples_per_sec', rate, step=step)
  if on_log:
    on_log(step, rate)


def _write_histograms(trainer, images, step):
  """Weight histograms and four of the batch's images (this process's first replica's)."""
  if trainer.strategy:
    images = trainer.strategy.experimental_local_results(images)[0]
  cifar10_summaries.write_histograms(trainer.variables, images, step)


# --------------------------------------------------------------------------- signals


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


def exit_status(work):
  """Runs work() as a training program does; returns what sys.exit takes: None when it
  ends, `error: ...` for one of ERRORS, 128 + the signal's number after a stop, 130 after a
  second Ctrl-C."""
  try:
    work()
  except ERRORS as e:
    return f'error: {e}'
  except StopRequested:
    return stop_exit_code()
  except KeyboardInterrupt:
    return 130
  return None


def start_strategy(values):
  """Sets the devices up and makes the strategy of the flag values --strategy, --cpu_replicas
  and --cluster_timeout, first thing (cifar10_distribute.py)."""
  name, cpu_replicas = values['strategy'], values['cpu_replicas']
  cifar10_distribute.configure_devices(name, cpu_replicas)
  return cifar10_distribute.make_strategy(name, cpu_replicas, values['cluster_timeout'])

