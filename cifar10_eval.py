"""Evaluates a training run's checkpoints: precision @ 1 on exactly the 10,000 test images.

    python cifar10_eval.py --checkpoint_dir=runs/tutorial [--run_once] [--noema]

The tutorial's watcher: it evaluates each new checkpoint once, with the EMA shadows restored
into the model (and the raw weights too, for the summaries), prints
`<date time>: step N, precision @ 1 = 0.XXXX`, and writes `precision @ 1/ema` and
`precision @ 1/raw` summaries plus a line of results.jsonl to --eval_dir, and a line of
confusion.jsonl beside it (each weights' confusion matrix and per-class precision). It stops
by itself after the checkpoint at the run's max_steps, or after --timeout seconds without a
new one.
With --eval_data=train_eval it scores the 50,000 training images instead (undistorted), and
writes to <checkpoint_dir>/eval_train by default, never among the test results.
"""

import datetime
import json
import os
import sys
import time

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_distribute
import cifar10_input
import cifar10_records
import cifar10_run

EVAL_BATCH_SIZE = 200  # images per forward pass (fastest here); any size gives the same counts
EVAL_INTERVAL_SECS = 60.0  # seconds between looks for a new checkpoint
TIMEOUT_SECS = 3600.0  # seconds without a new checkpoint before the watcher gives up
READ_ATTEMPTS = 3  # tries to read one checkpoint before calling it unreadable
RETRY_SECS = 1.0  # seconds between two tries
NUM_CLASSES = len(cifar10_records.CLASS_NAMES)


TTA_MODES = ('none', 'flip')


class Evaluator(cifar10_run.RunState):
  """A run's state (restored from its checkpoints) and the test images to score it on.

  With tta='flip' each image is classified by the mean of the softmax of it and of its
  mirror image (test-time augmentation: two forward passes per image).
  """

  def __init__(self, config, split, batch_size=EVAL_BATCH_SIZE, conv='auto', tta='none'):
    super().__init__(config, conv=conv)
    if tta not in TTA_MODES:
      raise ValueError(f'tta must be one of {TTA_MODES}, got {tta!r}')
    self.tta = tta
    self.images = cifar10_input.eval_images(split, config.image_size)
    self.labels = tf.constant(split.labels)
    self.num_examples = len(split)
    self.batch_size = batch_size
    self._confusion = tf.function(self._confusion)

  def _confusion(self, images, labels):
    """The confusion matrix over all images, in one call: no Python between the batches."""
    def counts(start, size):
      predicted = tf.argmax(self.scores(images[start:start + size]), axis=1,
                            output_type=tf.int32)
      return tf.math.confusion_matrix(labels[start:start + size], predicted,
                                      num_classes=NUM_CLASSES, dtype=tf.int64)

    full_batches, remainder = divmod(self.num_examples, self.batch_size)
    matrix = tf.zeros([NUM_CLASSES, NUM_CLASSES], tf.int64)
    for batch in tf.range(full_batches):
      matrix += counts(batch * self.batch_size, self.batch_size)
    if remainder:
      matrix += counts(full_batches * self.batch_size, remainder)
    return matrix

  def scores(self, images):
    """[B, 10] class scores of float32 [B, s, s, 3] images: the logits, or with tta='flip'
    the mean softmax of the images and of their mirror images."""
    logits = self.model(images, training=False)
    if self.tta == 'none':
      return logits
    mirrored = self.model(tf.reverse(images, axis=[2]), training=False)
    return (tf.nn.softmax(logits) + tf.nn.softmax(mirrored)) / 2

  def confusion(self):
    """The model's current weights on every image: an int64 [10, 10] NumPy matrix, row = the
    true class, column = the predicted one (its trace: the correct predictions)."""
    return self._confusion(self.images, self.labels).numpy()

  def precision(self):
    """Top-1 accuracy of the model's current weights over every image, and the count."""
    return precision_of(self.confusion()), self.num_examples


def precision_of(confusion):
  """Precision @ 1 of a confusion matrix: the share of its images on the diagonal."""
  return int(np.trace(confusion)) / int(np.sum(confusion))


def per_class(confusion):
  """Per class, precision @ 1 among the images of that class (the row's diagonal share)."""
  return [int(row[index]) / max(int(np.sum(row)), 1) for index, row in enumerate(confusion)]


def eval_once(evaluator, checkpoint_path):
  """Scores one checkpoint with its raw weights and with its EMA shadows.

  Returns:
    A dict: step, precision_ema, precision_raw, num_examples, train_seconds, checkpoint, tta,
    and confusion: {'ema': matrix, 'raw': matrix} (lists of lists; see confusion_line).
  """
  evaluator.restore(checkpoint_path)
  raw = evaluator.confusion()
  evaluator.restore_ema_shadows()
  ema = evaluator.confusion()
  return {'step': int(evaluator.step.numpy()), 'precision_ema': precision_of(ema),
          'precision_raw': precision_of(raw), 'num_examples': evaluator.num_examples,
          'train_seconds': float(evaluator.train_seconds.numpy()),
          'checkpoint': os.path.basename(checkpoint_path), 'tta': evaluator.tta,
          'confusion': {'ema': ema.tolist(), 'raw': raw.tolist()}}


def confusion_line(metrics):
  """The line of confusion.jsonl for an eval_once result: step, checkpoint, tta, the class
  names, and per weights ('ema', 'raw') the confusion matrix (row = true class, column =
  predicted) and each class's precision @ 1."""
  line = {key: metrics[key] for key in ('step', 'checkpoint', 'tta')}
  line['classes'] = list(cifar10_records.CLASS_NAMES)
  for weights, matrix in metrics['confusion'].items():
    line[weights] = {'confusion': matrix, 'per_class': per_class(np.array(matrix))}
  return line


def record(metrics, eval_dir, writer, use_ema):
  """Prints the tutorial's line and writes the summaries, results.jsonl and confusion.jsonl."""
  shown = metrics['precision_ema'] if use_ema else metrics['precision_raw']
  print(f"{datetime.datetime.now()}: step {metrics['step']}, precision @ 1 = {shown:.4f}",
        flush=True)
  with writer.as_default():
    tf.summary.scalar('precision @ 1/ema', metrics['precision_ema'], step=metrics['step'])
    tf.summary.scalar('precision @ 1/raw', metrics['precision_raw'], step=metrics['step'])
  writer.flush()
  summary = {key: value for key, value in metrics.items() if key != 'confusion'}
  _append(os.path.join(eval_dir, cifar10_run.RESULTS_FILE), summary)
  if 'confusion' in metrics:
    _append(os.path.join(eval_dir, cifar10_run.CONFUSION_FILE), confusion_line(metrics))


def _append(path, line):
  """Appends one JSON line to path."""
  try:
    with open(path, 'a') as f:
      f.write(json.dumps(line) + '\n')
  except OSError as e:
    raise cifar10_run.ConfigError(f'cannot write {path} ({e}): pass a writable '
                                  '--eval_dir.') from e


def watch(evaluator, checkpoint_dir, eval_dir, use_ema=True, interval_secs=EVAL_INTERVAL_SECS,
          timeout_secs=None, run_once=False):
  """Evaluates each new checkpoint once until the run's final step (or a timeout).

  Returns:
    The list of metrics dicts, one per evaluated checkpoint.

  Raises:
    UnreadableCheckpoint: the latest checkpoint failed READ_ATTEMPTS reads in a row.
    FileNotFoundError: run_once and there is no checkpoint.
    ConfigError: eval_dir cannot be created, or results.jsonl cannot be written there.
  """
  writer = _writer(eval_dir)
  evaluated, results, failures, failed, last_new = None, [], 0, None, time.time()
  while True:
    path = cifar10_run.newest_checkpoint(checkpoint_dir)  # From the files: no state file needed.
    if path and path != evaluated:
      try:
        metrics = eval_once(evaluator, path)
      except cifar10_run.UnreadableCheckpoint:
        # Usually the trainer's CheckpointManager rotated it away, or was still writing it,
        # while we read; a file that stays unreadable (truncated, another model's) ends the
        # watcher after a few tries of that same file.
        failures = failures + 1 if path == failed else 1
        failed = path
        if failures >= READ_ATTEMPTS:
          raise
        print(f'{datetime.datetime.now()}: could not read {path}; retrying', flush=True)
        time.sleep(RETRY_SECS)
        continue
      record(metrics, eval_dir, writer, use_ema)
      results.append(metrics)
      evaluated, failures, last_new = path, 0, time.time()
      config = cifar10_run.read_config(checkpoint_dir)
      if config is not None and metrics['step'] >= config.max_steps:
        return results
    if run_once:
      if not results:
        raise FileNotFoundError(f'no checkpoint in {checkpoint_dir}')
      return results
    if timeout_secs is not None and time.time() - last_new > timeout_secs:
      print(f'{datetime.datetime.now()}: no new checkpoint for {timeout_secs:.0f} s; stopping.',
            flush=True)
      return results
    time.sleep(interval_secs)


def evaluate_every_checkpoint(evaluator, checkpoint_dir, eval_dir, use_ema=True):
  """Evaluates, oldest first, each checkpoint in checkpoint_dir that eval_dir's
  results.jsonl does not hold yet (a finished run kept with --keep_checkpoints: its curve,
  and when it first reached a precision). Returns the new metrics.

  Raises:
    FileNotFoundError: no checkpoint in checkpoint_dir.
    UnreadableCheckpoint: one of them cannot be read.
    ConfigError: eval_dir cannot be created, or results.jsonl cannot be written there.
  """
  paths = cifar10_run.checkpoint_paths(checkpoint_dir)[::-1]
  if not paths:
    raise FileNotFoundError(f'no checkpoint in {checkpoint_dir}')
  done = set()
  try:
    with open(os.path.join(eval_dir, cifar10_run.RESULTS_FILE)) as f:
      done = {json.loads(line).get('checkpoint') for line in f if line.strip()}
  except (OSError, ValueError, AttributeError):
    pass  # None yet (or unreadable: evaluated again, appended after).
  writer = _writer(eval_dir)
  results = []
  for path in paths:
    if os.path.basename(path) not in done:
      results.append(eval_once(evaluator, path))
      record(results[-1], eval_dir, writer, use_ema)
  return results


def _writer(eval_dir):
  """The summary writer of eval_dir, created with it."""
  try:
    os.makedirs(eval_dir, exist_ok=True)
  except OSError as e:
    raise cifar10_run.ConfigError(f'cannot create the eval folder {eval_dir} ({e}): pass a '
                                  'writable --eval_dir.') from e
  return tf.summary.create_file_writer(eval_dir)


def wait_for_config(checkpoint_dir, interval_secs, timeout_secs):
  """The run's TrainConfig, waiting for the trainer to write it (None after the timeout)."""
  start = time.time()
  config = cifar10_run.read_config(checkpoint_dir)
  while config is None:
    if timeout_secs is not None and time.time() - start > timeout_secs:
      return None
    time.sleep(interval_secs)
    config = cifar10_run.read_config(checkpoint_dir)
  return config


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  checkpoint_dir, eval_data = _FLAGS['checkpoint_dir'].value, _FLAGS['eval_data'].value
  tta = _FLAGS['tta'].value
  eval_dir = _FLAGS['eval_dir'].value or cifar10_run.default_eval_dir(checkpoint_dir, eval_data,
                                                                      tta)
  interval_secs, timeout_secs = _FLAGS['eval_interval_secs'].value, _FLAGS['timeout'].value
  run_once = _FLAGS['run_once'].value
  try:
    # Memory growth on every GPU, so that the watcher and a trainer share one.
    cifar10_distribute.configure_devices('default')
    # The run first: a mistyped --checkpoint_dir is reported before any data is fetched.
    every = _FLAGS['every_checkpoint'].value
    config = find_run(checkpoint_dir, interval_secs, timeout_secs, run_once or every)
    split = cifar10_records.load_split(cifar10_run.batches_dir_from_flags(_FLAGS), eval_data)
    evaluator = Evaluator(config, split, conv=_FLAGS['conv'].value, tta=tta)
    if every:
      evaluate_every_checkpoint(evaluator, checkpoint_dir, eval_dir, _FLAGS['ema'].value)
      return
    results = watch(evaluator, checkpoint_dir, eval_dir, _FLAGS['ema'].value, interval_secs,
                    timeout_secs, run_once)
  except (cifar10_records.DataError, cifar10_run.ConfigError, cifar10_run.UnreadableCheckpoint,
          FileNotFoundError, cifar10_distribute.DistributeError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)
  if not results:
    sys.exit(f'error: no checkpoint appeared in {checkpoint_dir} within --timeout='
             f'{timeout_secs:g} s; is its trainer running?')


def find_run(checkpoint_dir, interval_secs, timeout_secs, run_once):
  """The run's TrainConfig; waits for the trainer to write it unless run_once.

  Raises:
    FileNotFoundError: no config.json in checkpoint_dir (after the timeout, unless run_once).
  """
  config = cifar10_run.read_config(checkpoint_dir)
  if config is None and not run_once:
    print(f'{datetime.datetime.now()}: waiting for a training run in {checkpoint_dir}',
          flush=True)
    config = wait_for_config(checkpoint_dir, interval_secs, timeout_secs)
  if config is None:
    raise FileNotFoundError(f'{checkpoint_dir} has no {cifar10_run.CONFIG_FILE}: point '
                            '--checkpoint_dir at the --train_dir of a cifar10_train.py run.')
  return config


def define_eval_flags():
  holders = cifar10_run.define_data_flags()
  holders.update(cifar10_run.define_conv_flag())
  holders.update(
      checkpoint_dir=flags.DEFINE_string('checkpoint_dir', cifar10_run.TrainConfig.train_dir,
                                         'The --train_dir of the run to evaluate.'),
      eval_dir=flags.DEFINE_string('eval_dir', None,
                                   'Summaries and results.jsonl; default <checkpoint_dir>/eval '
                                   '(<checkpoint_dir>/eval_train with --eval_data=train_eval; '
                                   '_flip added with --tta=flip).'),
      tta=flags.DEFINE_enum('tta', 'none', list(TTA_MODES), 'Test-time augmentation: none, '
                            'or flip (mean softmax of each image and its mirror image).'),
      every_checkpoint=flags.DEFINE_boolean(
          'every_checkpoint', False, 'Evaluate, oldest first, every checkpoint of the run '
          'not in results.jsonl yet, then stop (its curve; train with --keep_checkpoints).'),
      eval_data=flags.DEFINE_enum('eval_data', 'test', ['test', 'train_eval'],
                                  'test: the 10,000 test images; train_eval: the 50,000 '
                                  'training images, undistorted.'),
      ema=flags.DEFINE_boolean('ema', True, 'Report the EMA shadows (--noema: raw weights).'),
      eval_interval_secs=flags.DEFINE_float('eval_interval_secs', EVAL_INTERVAL_SECS,
                                            'Seconds between looks for a new checkpoint.',
                                            lower_bound=0.1),
      timeout=flags.DEFINE_float('timeout', TIMEOUT_SECS, 'Stop after this many seconds '
                                 'without a new checkpoint (the trainer may have died).',
                                 lower_bound=0.0),
      run_once=flags.DEFINE_boolean('run_once', False, 'Evaluate the latest checkpoint and stop.'),
  )
  return holders


if __name__ == '__main__':
  _FLAGS = define_eval_flags()
  app.run(main)
