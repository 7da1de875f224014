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

import cifar10_config
import cifar10_distribute
import cifar10_flags
import cifar10_records
import cifar10_run
import cifar10_scoring

EVAL_INTERVAL_SECS = 60.0  # seconds between looks for a new checkpoint
TIMEOUT_SECS = 3600.0  # seconds without a new checkpoint before the watcher gives up
READ_ATTEMPTS = 3  # tries to read one checkpoint before calling it unreadable
RETRY_SECS = 1.0  # seconds between two tries


def eval_once(evaluator, checkpoint_path):
  """Scores one checkpoint with its raw weights and with its EMA shadows.

  Returns:
    A dict: step, precision_ema, precision_raw, cross_entropy_ema, cross_entropy_raw (the
    mean over the images), num_examples, train_seconds, checkpoint, checkpoint_digest, tta,
    and confusion: {'ema': matrix, 'raw': matrix} (lists of lists; see confusion_line).
  """
  loaded = cifar10_run.load_inference_model(None, ema=False, checkpoint=checkpoint_path,
                                            state=evaluator)
  raw, loss_raw = evaluator.confusion_and_loss()
  evaluator.restore_ema_shadows()  # The same checkpoint's shadows: no second read.
  ema, loss_ema = evaluator.confusion_and_loss()
  return {'step': loaded.step, 'precision_ema': cifar10_scoring.precision_of(ema),
          'precision_raw': cifar10_scoring.precision_of(raw),
          'cross_entropy_ema': loss_ema, 'cross_entropy_raw': loss_raw,
          'num_examples': evaluator.num_examples,
          'train_seconds': float(evaluator.train_seconds.numpy()),
          'checkpoint': os.path.basename(checkpoint_path),
          'checkpoint_digest': cifar10_run.checkpoint_digest(checkpoint_path),
          'tta': evaluator.tta,
          'confusion': {'ema': ema.tolist(), 'raw': raw.tolist()}}


def confusion_line(metrics):
  """The line of confusion.jsonl for an eval_once result: step, checkpoint, tta, the class
  names, and per weights ('ema', 'raw') the confusion matrix (row = true class, column =
  predicted) and each class's precision @ 1."""
  line = {key: metrics[key] for key in ('step', 'checkpoint', 'checkpoint_digest', 'tta')}
  line['classes'] = list(cifar10_records.CLASS_NAMES)
  for weights, matrix in metrics['confusion'].items():
    line[weights] = {'confusion': matrix,
                     'per_class': cifar10_scoring.per_class(np.array(matrix))}
  return line


def record(metrics, eval_dir, writer, use_ema):
  """Prints the tutorial's line and writes the summaries, results.jsonl and confusion.jsonl."""
  shown = metrics['precision_ema'] if use_ema else metrics['precision_raw']
  print(f"{datetime.datetime.now()}: step {metrics['step']}, precision @ 1 = {shown:.4f}",
        flush=True)
  with writer.as_default():
    for weights in ('ema', 'raw'):
      tf.summary.scalar(cifar10_scoring.PRECISION_TAG.format(weights),
                        metrics[f'precision_{weights}'], step=metrics['step'])
      tf.summary.scalar(cifar10_scoring.CROSS_ENTROPY_TAG.format(weights),
                        metrics[f'cross_entropy_{weights}'], step=metrics['step'])
  writer.flush()
  summary = {key: value for key, value in metrics.items() if key != 'confusion'}
  cifar10_run.append_json_line(os.path.join(eval_dir, cifar10_run.RESULTS_FILE), summary)
  if 'confusion' in metrics:
    cifar10_run.append_json_line(os.path.join(eval_dir, cifar10_run.CONFUSION_FILE),
                                 confusion_line(metrics))


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
    identity = path and (path, cifar10_run.checkpoint_digest(path))
    if path and identity != evaluated:
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
      evaluated, failures, last_new = identity, 0, time.time()
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
  done = evaluated_checkpoints(eval_dir)
  writer = _writer(eval_dir)
  results = []
  for path in paths:
    if not done.get(os.path.basename(path), set()) & {None, cifar10_run.checkpoint_digest(path)}:
      results.append(eval_once(evaluator, path))
      record(results[-1], eval_dir, writer, use_ema)
  return results


def evaluated_checkpoints(eval_dir):
  """{checkpoint name: the digests results.jsonl holds for it}: a name evaluated before under
  another digest (a restarted run's ckpt-25) is a new checkpoint. A line written before the
  digests were recorded holds None, which matches any checkpoint of that name."""
  done = {}
  try:
    for _, line in cifar10_run.json_lines(os.path.join(eval_dir, cifar10_run.RESULTS_FILE)):
      done.setdefault(line.get('checkpoint'), set()).add(line.get('checkpoint_digest'))
  except (OSError, ValueError, AttributeError):
    pass  # None yet (or unreadable: evaluated again, appended after).
  return done


def _writer(eval_dir):
  """The summary writer of eval_dir, created with it; refuses, before any scoring, results
  files that cannot be appended to (a folder in their place, say)."""
  try:
    os.makedirs(eval_dir, exist_ok=True)
  except OSError as e:
    raise cifar10_config.ConfigError(f'cannot create the eval folder {eval_dir} ({e}): pass a '
                                     'writable --eval_dir.') from e
  for name in (cifar10_run.RESULTS_FILE, cifar10_run.CONFUSION_FILE):
    path = os.path.join(eval_dir, name)
    if os.path.lexists(path) and not (os.path.isfile(path) and os.access(path, os.W_OK)):
      raise cifar10_config.ConfigError(f'cannot write {path} (not a writable file): pass a '
                                       'writable --eval_dir.')
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


def run(values):
  """Evaluates as the flag values say; returns what sys.exit takes (None: done)."""
  checkpoint_dir, eval_data, tta = values['checkpoint_dir'], values['eval_data'], values['tta']
  eval_dir = values['eval_dir'] or cifar10_run.default_eval_dir(checkpoint_dir, eval_data, tta)
  interval_secs, timeout_secs = values['eval_interval_secs'], values['timeout']
  run_once, every = values['run_once'], values['every_checkpoint']
  try:
    # Memory growth on every GPU, so that the watcher and a trainer share one.
    cifar10_distribute.configure_devices('default')
    # The run first: a mistyped --checkpoint_dir is reported before any data is fetched.
    config = find_run(checkpoint_dir, interval_secs, timeout_secs, run_once or every)
    split = cifar10_records.load_split(cifar10_flags.batches_dir(values), eval_data)
    evaluator = cifar10_scoring.Evaluator(config, split, conv=values['conv'], tta=tta)
    if every:
      evaluate_every_checkpoint(evaluator, checkpoint_dir, eval_dir, values['ema'])
      return None
    results = watch(evaluator, checkpoint_dir, eval_dir, values['ema'], interval_secs,
                    timeout_secs, run_once)
  except (cifar10_records.DataError, cifar10_config.ConfigError,
          cifar10_run.UnreadableCheckpoint, FileNotFoundError,
          cifar10_distribute.DistributeError) as e:
    return f'error: {e}'
  except KeyboardInterrupt:
    return 130
  if not results:
    return (f'error: no checkpoint appeared in {checkpoint_dir} within --timeout='
            f'{timeout_secs:g} s; is its trainer running?')
  return None


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


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


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the run-reading ones and the watcher's; {name: FlagHolder}."""
  holders = cifar10_flags.define_data_flags(flag_values)
  holders.update(cifar10_flags.define_run_flags(flag_values, required=False, what='evaluate'))
  holders.update(
      eval_dir=flags.DEFINE_string('eval_dir', None,
                                   'Summaries and results.jsonl; default <checkpoint_dir>/eval '
                                   '(<checkpoint_dir>/eval_train with --eval_data=train_eval; '
                                   '_flip added with --tta=flip).', flag_values=flag_values),
      tta=flags.DEFINE_enum('tta', 'none', list(cifar10_scoring.TTA_MODES), 'Test-time '
                            'augmentation: none, or flip (mean softmax of each image and its '
                            'mirror image).', flag_values=flag_values),
      every_checkpoint=flags.DEFINE_boolean(
          'every_checkpoint', False, 'Evaluate, oldest first, every checkpoint of the run '
          'not in results.jsonl yet, then stop (its curve; train with --keep_checkpoints).',
          flag_values=flag_values),
      eval_data=flags.DEFINE_enum('eval_data', 'test', list(cifar10_run.EVAL_DATA),
                                  'test: the 10,000 test images; train_eval: the 50,000 '
                                  'training images, undistorted.', flag_values=flag_values),
      eval_interval_secs=flags.DEFINE_float('eval_interval_secs', EVAL_INTERVAL_SECS,
                                            'Seconds between looks for a new checkpoint.',
                                            lower_bound=0.1, flag_values=flag_values),
      timeout=flags.DEFINE_float('timeout', TIMEOUT_SECS, 'Stop after this many seconds '
                                 'without a new checkpoint (the trainer may have died).',
                                 lower_bound=0.0, flag_values=flag_values),
      run_once=flags.DEFINE_boolean('run_once', False, 'Evaluate the latest checkpoint and '
                                    'stop.', flag_values=flag_values),
  )
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
