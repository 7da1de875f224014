"""The run folder: its config.json, its checkpoints' layout and life, its results files, and
opening a run as an inference model.

A run folder (a --train_dir) holds config.json (the TrainConfig of the run), checkpoints of
one layout (`RunState`: the model's raw weights, the global step, the seconds of training
and the EMA shadows, plus any extra state such as pruning masks), summaries, and the
evaluation results below eval/. Training writes it; evaluation, compression and the results
table read it through this module, never through the trainer; `load_inference_model` is
the one way to open a run's checkpoint for inference (EMA shadows, BatchNorm folded).
"""

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile

import tensorflow as tf

import cifar10_config
import cifar10_model
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
EVAL_DATA = tuple(EVAL_DIRS)  # cifar10_eval.py --eval_data


class UnreadableCheckpoint(Exception):
  """A checkpoint cannot be read, or does not fit the run's model."""


class RunFolderBusy(cifar10_config.ConfigError):
  """Another process holds the run folder's lock."""


class SaveFailed(Exception):
  """A checkpoint could not be written (disk full, read-only); the earlier ones are intact."""


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


def append_json_line(path, value, flag='--eval_dir'):
  """Appends `value` as one JSON line to `path` (results.jsonl, confusion.jsonl).

  Raises:
    ConfigError: the file cannot be written (the message names `flag`).
  """
  try:
    with open(path, 'a') as f:
      f.write(json.dumps(value) + '\n')
  except OSError as e:
    raise cifar10_config.ConfigError(f'cannot write {path} ({e}): pass a writable '
                                     f'{flag}.') from e


def json_lines(path):
  """Yields (line number, value) of each non-blank line of a JSON Lines file.

  Raises:
    OSError, UnicodeDecodeError: the file cannot be read.
    ValueError: a line is not JSON (the message names the file and the line).
  """
  with open(path, encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if line.strip():
        try:
          yield number, json.loads(line)
        except ValueError as e:
          raise ValueError(f'{path}, line {number}: not JSON ({e})') from e


def read_config(train_dir):
  """The TrainConfig saved in train_dir, or None when there is none yet."""
  path = os.path.join(train_dir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return cifar10_config.TrainConfig(**json.load(f))
  except (OSError, ValueError, TypeError) as e:
    raise cifar10_config.ConfigError(f'{path} is unreadable ({e}): it must be the config.json '
                                     'that cifar10_train.py wrote.') from e


def config_changes(previous, config):
  """The settings of `config` that differ from `previous`, as 'name: old -> new'."""
  return [f'{f.name}: {getattr(previous, f.name)!r} -> {getattr(config, f.name)!r}'
          for f in dataclasses.fields(config)
          if getattr(previous, f.name) != getattr(config, f.name)]


def check_config(config):
  """The changes against the run already in train_dir (config_changes), writing nothing.

  Raises:
    cifar10_config.ConfigError: train_dir holds a run of another model or image size.
  """
  previous = read_config(config.train_dir)
  if previous is None:
    return []
  for key in ('model', 'image_size'):
    if getattr(previous, key) != getattr(config, key):
      raise cifar10_config.ConfigError(
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
    raise cifar10_config.ConfigError(f'cannot write {path} ({e}): pass a writable '
                                     '--train_dir.') from e
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
      the config's): models.build of the config's model, or what `build_model` returns.
    variables: model.trainable_variables.
    step: int64 scalar, the global step.
    train_seconds: float64 scalar, seconds of training up to `step`.
    ema: the tf.train.ExponentialMovingAverage of `variables`, with the step as num_updates.
    ema_shadows: the EMA shadow of each of `variables`, in the same order; saved and
      restored by position, not by name.
  """

  def __init__(self, config, conv=None, strategy=None, build_model=None):
    """Builds the state; under `strategy`'s scope (mirrored variables) when one is given.

    Args:
      config: the run's TrainConfig.
      conv: how convolutions are computed (cifar10_spectral); default the config's.
      strategy: a tf.distribute strategy, or None.
      build_model: callable(config, conv) -> cifar10_model.Model, for a model that is not
        the registry's (a tool that hands the trainer layers of other shapes); default
        build_model() below.
    """
    self.config, self.strategy = config, strategy
    with strategy.scope() if strategy else contextlib.nullcontext():
      self.model = (build_model or default_model)(config, conv or config.conv)
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


def default_model(config, conv):
  """The registry's model of a config (models.build), computing convolutions as `conv` says."""
  try:
    return models.build(config.model, config.image_size, config.init, config.weight_decay,
                        conv=conv, l2_decay=config.l2_decay,
                        widths=cifar10_model.parse_widths(config.widths))
  except ValueError as e:  # --widths naming a layer the model cannot narrow
    raise cifar10_config.ConfigError(f'--widths={config.widths}: {e}') from e


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


def read_extra_state(path, **trackables):
  """Reads trackables that a tool saved beside a RunState's layout (its extra_state, by the
  same names) from the checkpoint file `path`, without building the model.

  Raises:
    UnreadableCheckpoint: the file is unreadable or does not hold them.
  """
  read_checkpoint(tf.train.Checkpoint(**trackables), path)


def checkpoint_digest(checkpoint_path):
  """A short digest of a checkpoint's index file (which holds a checksum of every saved
  tensor), or None if it cannot be read: it tells a checkpoint from an earlier one of the
  same name (a run restarted, or deleted and trained again)."""
  try:
    with open(checkpoint_path + '.index', 'rb') as f:
      return hashlib.sha256(f.read()).hexdigest()[:16]
  except OSError:
    return None


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
    cifar10_config.ConfigError: the state file cannot be replaced (a folder in its place, a
      read-only run).
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
    raise cifar10_config.ConfigError(f'cannot rewrite {state}, the list of the checkpoints '
                                     f'({e}): it must be a file in a writable --train_dir.') from e


def _belongs_to_the_old_run(name):
  """Whether a run folder's entry records the run so far: its checkpoints and their state
  file, its training event files, and its evaluations (eval/, eval_train/, eval_flip/...)."""
  evaluation = any(name == folder or name.startswith(folder + '_')
                   for folder in EVAL_DIRS.values())
  return (name == STATE_FILE or name.startswith('ckpt-') or evaluation
          or name.startswith('events.out.tfevents.'))


def move_checkpoints_aside(train_dir):
  """Moves the run so far (checkpoints and their state file, event files, evaluations) into
  a new subfolder; returns its path. The evaluations go too: kept beside the new run, its
  ckpt-25 would count as evaluated already, with the old run's figure."""
  aside = os.path.join(train_dir, 'restarted-' +
                       datetime.datetime.now().strftime('%Y%m%d-%H%M%S'))
  os.makedirs(aside)
  for name in os.listdir(train_dir):
    if _belongs_to_the_old_run(name):
      shutil.move(os.path.join(train_dir, name), os.path.join(aside, name))
  return aside


def locked(train_dir):
  """Holds the run folder's exclusive lock for the block.

  The lock is the kernel's (flock), so it dies with its process: a stale lock of a killed
  trainer is simply taken over. The holder's PID is written in the lock file for the error
  message of the next one.

  Raises:
    RunFolderBusy: another process holds it.
    cifar10_config.ConfigError: the folder cannot be created or written.
  """
  return locked_path(os.path.join(train_dir, LOCK_FILE), train_dir, 'training here',
                     '--train_dir')


@contextlib.contextmanager
def locked_path(path, what, doing, flag):
  """Holds the exclusive flock of the lock file `path` (created, never followed if it is a
  symlink) for the block. The messages name `what` is locked, end the busy one with
  `doing` ('training here') and name `flag` when the folder is not writable."""
  folder = os.path.dirname(path)
  try:
    os.makedirs(folder, exist_ok=True)
    # O_NOFOLLOW: a lock file that is a symlink is refused, never followed (truncating and
    # writing into whatever it points at).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
  except OSError as e:
    if os.path.islink(path):
      raise cifar10_config.ConfigError(
          f'{path} is a symbolic link ({os.readlink(path)!r}), not the lock file a run keeps: '
          'remove it (the run folder is otherwise untouched) and run again.') from e
    raise cifar10_config.ConfigError(f'cannot write in {folder} ({e}): pass a writable '
                                     f'{flag}.') from e
  try:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
      # A hard link (or a device, a FIFO): writing our PID would change another file.
      raise cifar10_config.ConfigError(
          f'{path} is not a lock file of its own (a hard link to another file, or not a regular '
          'file): remove it (the run folder is otherwise untouched) and run again.')
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      holder = os.read(fd, 32).decode(errors='replace').strip() or 'unknown'
      raise RunFolderBusy(f'{what} is in use by another process (PID {holder}): wait for '
                          f'it to finish, or stop it, before {doing}.') from e
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    yield
  finally:
    os.close(fd)  # Releases the lock.


def latest_run(train_dir, flag='--train_dir'):
  """(TrainConfig, newest checkpoint path) of the run in train_dir, for tools that read one.

  Raises:
    cifar10_config.ConfigError: no config.json or no checkpoint there (the message names `flag`).
  """
  config = read_config(train_dir)
  checkpoint = newest_checkpoint(train_dir) if config else None
  if checkpoint is None:
    raise cifar10_config.ConfigError(f'{flag}={train_dir} holds no trained run (config.json and '
                                     'a checkpoint): point it at the --train_dir of a '
                                     'cifar10_train.py run.')
  return config, checkpoint


def remove_partial_saves(train_dir):
  """Drops the '<prefix>_temp' folders a kill during a save leaves behind."""
  for name in os.listdir(train_dir):
    path = os.path.join(train_dir, name)
    if name.endswith('_temp') and os.path.isdir(path):
      shutil.rmtree(path, ignore_errors=True)


class CheckpointFiles:
  """A run's checkpoints over their life: restore the newest that reads, save, rotate.

  Saves go through a tf.train.CheckpointManager opened on a state file rebuilt from the
  checkpoints present: an emptied, damaged or lost one must neither stop the run nor make it
  start again from step 0. A worker that is not the chief of a multi-worker run saves its
  share into a scratch folder of its own, which nobody reads (removed after each save).

  Args:
    checkpoint: the tf.train.Checkpoint to save and restore.
    train_dir: the run folder.
    keep: the most recent checkpoints kept.
    worker: this process's cifar10_distribute.Worker.
  """

  def __init__(self, checkpoint, train_dir, keep, worker):
    self.checkpoint, self.train_dir, self.keep, self.worker = checkpoint, train_dir, keep, worker
    self.manager, self.scratch_dir = None, None

  def open(self):
    """Opens the manager (before any save)."""
    if not self.worker.is_chief:
      self.scratch_dir = tempfile.mkdtemp(prefix=f'cifar10-worker{self.worker.task_index}-')
      self.manager = tf.train.CheckpointManager(self.checkpoint, self.scratch_dir, max_to_keep=1)
      return
    rebuild_checkpoint_state(self.train_dir)
    self.manager = tf.train.CheckpointManager(self.checkpoint, self.train_dir,
                                              max_to_keep=self.keep)

  def restore_newest(self):
    """Restores the newest checkpoint that reads whole.

    Returns:
      (its path or None when there is none, [(path, reason)] of the newer ones skipped).

    Raises:
      UnreadableCheckpoint: there are checkpoints, but none restores.
    """
    skipped, paths = [], checkpoint_paths(self.train_dir)
    for path in paths:
      try:
        read_checkpoint(self.checkpoint, path)
      except UnreadableCheckpoint as e:
        skipped.append((path, str(e)))
        continue
      return path, skipped
    if paths:
      raise UnreadableCheckpoint(
          f'none of the {len(paths)} checkpoints in {self.train_dir} restores (the newest: '
          f'{skipped[0][1]}); pass --restart to move them aside and start again from step 0.')
    return None, skipped

  def save(self, step):
    """Saves the checkpoint as ckpt-<step>; returns its path.

    Raises:
      SaveFailed: it could not be written; the partial files are removed, the earlier
        checkpoints are intact.
    """
    try:
      path = self.manager.save(checkpoint_number=step)  # Every worker takes part.
      self.remove_scratch()
      return path
    except (tf.errors.OpError, OSError) as e:
      remove_partial_saves(self.train_dir)
      kept = checkpoint_paths(self.train_dir)
      raise SaveFailed(f'could not save the checkpoint of step {step} in {self.train_dir} '
                       f'({type(e).__name__}: {str(e).strip()[:200]}); is the disk full or '
                       'read-only? The checkpoints before it are intact (newest: '
                       f'{kept[0] if kept else "none"}).') from e

  def remove_scratch(self):
    """Removes a non-chief worker's scratch folder (nothing for the chief)."""
    if self.scratch_dir:
      shutil.rmtree(self.scratch_dir, ignore_errors=True)


# --------------------------------------------------------------------------- inference


@dataclasses.dataclass
class InferenceModel:
  """A run's checkpoint opened for inference (load_inference_model).

  Attributes:
    config: the run's TrainConfig.
    checkpoint: the checkpoint's path.
    step: its global step.
    weights: 'ema' (the shadows) or 'raw'.
    model: the model to run: state.model, or its BatchNorm-folded copy.
    state: the RunState the checkpoint was read into (its model unfolded).
    batchnorm_folded: whether `model` is a folded copy.
  """
  config: cifar10_config.TrainConfig
  checkpoint: str
  step: int
  weights: str
  model: cifar10_model.Model
  state: RunState
  batchnorm_folded: bool


def load_inference_model(train_dir, ema=True, conv='auto', fold_batchnorm=False,
                         checkpoint=None, state=None, flag='--checkpoint_dir'):
  """Opens a run's checkpoint as an inference model: the one place that does it.

  Args:
    train_dir: the run folder: its config.json builds the state when `state` is None, and
      its newest checkpoint is read when `checkpoint` is None.
    ema: copy the EMA shadows into the model (else its raw weights).
    conv: how the model computes convolutions (cifar10_spectral); 'direct' for exports.
    fold_batchnorm: also return the model with each BatchNorm folded into its convolution
      (cifar10_model.fold_batchnorm; the same model when it has none).
    checkpoint: the checkpoint to read; default the run's newest.
    state: a RunState (or subclass, e.g. an evaluator) to read into instead of a new one.
    flag: the flag that named train_dir, for the error message.

  Raises:
    ConfigError: no run (or no checkpoint) in train_dir where one is needed.
    UnreadableCheckpoint: the checkpoint is unreadable or holds another model.
  """
  if state is None:
    config, newest = latest_run(train_dir, flag)
    state = RunState(config, conv=conv)
    checkpoint = checkpoint or newest
  elif checkpoint is None:
    checkpoint = newest_checkpoint(train_dir)
    if checkpoint is None:
      raise cifar10_config.ConfigError(f'{flag}={train_dir} holds no checkpoint: point it at '
                                       'the --train_dir of a cifar10_train.py run.')
  state.restore(checkpoint)
  if ema:
    state.restore_ema_shadows()
  model = cifar10_model.fold_batchnorm(state.model) if fold_batchnorm else state.model
  return InferenceModel(config=state.config, checkpoint=checkpoint,
                        step=int(state.step.numpy()), weights='ema' if ema else 'raw',
                        model=model, state=state, batchnorm_folded=model is not state.model)
