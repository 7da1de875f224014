"""Tests of evaluation: EMA restore, exact counts, summaries and the watcher's lifetime."""

import json
import os
import threading

import numpy as np
import pytest
import tensorflow as tf

import cifar10_eval
import cifar10_run
import cifar10_scoring
import cifar10_trainer
import cifar10_config
from fixtures import TINY_SIZE, copy_run, tiny_config, tiny_split


def central_crop(images):
  """The central TINY_SIZE x TINY_SIZE window of 32x32 images, cut by hand (not by the
  pipeline under test), as evaluation feeds a tiny run."""
  start = (images.shape[1] - TINY_SIZE) // 2
  return images[:, start:start + TINY_SIZE, start:start + TINY_SIZE]


def watch_with_deadline(*args, deadline_secs=120, **kwargs):
  """cifar10_eval.watch in a thread, so a watcher that never returns fails the test."""
  outcome = {}
  def target():
    try:
      outcome['results'] = cifar10_eval.watch(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      outcome['error'] = e
  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(deadline_secs)
  assert not thread.is_alive(), f'the watcher did not return within {deadline_secs} s'
  if 'error' in outcome:
    raise outcome['error']
  return outcome['results']


@pytest.fixture(scope='module', name='trained_once')
def fixture_trained_once(tmp_path_factory):
  """A 20-step run on tiny data (checkpoints at 10 and 20), trained once for the module."""
  train_dir = tmp_path_factory.mktemp('trained') / 'run'
  cifar10_trainer.train(tiny_config(train_dir, max_steps=20), tiny_split())
  return train_dir


@pytest.fixture(name='trained_dir')
def fixture_trained_dir(trained_once, tmp_path):
  """This test's own copy of the module's trained run."""
  return copy_run(trained_once, tmp_path / 'run')


def test_eval_restores_exactly_the_ema_shadows(trained_dir):
  config = cifar10_run.read_config(str(trained_dir))
  trainer = cifar10_trainer.Trainer(config)
  trainer.restore_latest()
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  evaluator.restore(tf.train.latest_checkpoint(str(trained_dir)))
  for variable, raw in zip(evaluator.model.trainable_variables, trainer.variables):
    np.testing.assert_array_equal(variable.numpy(), raw.numpy())
  evaluator.restore_ema_shadows()
  differs = False
  for variable, shadow, raw in zip(evaluator.model.trainable_variables, trainer.ema_shadows,
                                   trainer.variables):
    np.testing.assert_array_equal(variable.numpy(), shadow.numpy())
    differs |= not np.array_equal(shadow.numpy(), raw.numpy())
  assert differs


def test_eval_counts_exactly_every_example_with_a_partial_last_batch(trained_dir):
  config = cifar10_run.read_config(str(trained_dir))
  split = tiny_split(num=23, seed=3)
  evaluator = cifar10_scoring.Evaluator(config, split, batch_size=5)
  evaluator.restore(tf.train.latest_checkpoint(str(trained_dir)))
  precision, count = evaluator.precision()
  assert count == 23
  images = tf.image.per_image_standardization(tf.cast(central_crop(split.images), tf.float32))
  predicted = np.argmax(evaluator.model(images).numpy(), axis=1)
  assert precision == pytest.approx(np.mean(predicted == split.labels))


def test_confusion_matrix_counts_each_image_once_in_its_true_row(trained_dir):
  config = cifar10_run.read_config(str(trained_dir))
  split = tiny_split(num=23, seed=3)
  evaluator = cifar10_scoring.Evaluator(config, split, batch_size=5)
  evaluator.restore(tf.train.latest_checkpoint(str(trained_dir)))
  images = tf.image.per_image_standardization(tf.cast(central_crop(split.images), tf.float32))
  predicted = np.argmax(evaluator.model(images).numpy(), axis=1)
  expected = np.zeros((10, 10), np.int64)
  for true, guess in zip(split.labels, predicted):
    expected[true, guess] += 1
  np.testing.assert_array_equal(evaluator.confusion(), expected)
  assert cifar10_scoring.precision_of(expected) == pytest.approx(np.mean(predicted ==
                                                                      split.labels))


def test_per_class_precision_by_hand():
  matrix = np.zeros((10, 10), np.int64)
  matrix[0, 0], matrix[0, 3] = 3, 1  # airplane: 3 of 4 right
  matrix[3, 5] = 2  # cat: 0 of 2
  assert cifar10_scoring.per_class(matrix) == [0.75, 0, 0, 0.0] + [0] * 6
  assert cifar10_scoring.precision_of(matrix) == 0.5


def test_eval_once_reports_both_weights_at_the_checkpoint_step(trained_dir):
  config = cifar10_run.read_config(str(trained_dir))
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  metrics = cifar10_eval.eval_once(evaluator, str(trained_dir / 'ckpt-10'))
  assert metrics['step'] == 10 and metrics['num_examples'] == 32
  assert 0 <= metrics['precision_ema'] <= 1 and 0 <= metrics['precision_raw'] <= 1
  assert metrics['train_seconds'] > 0


def test_watcher_exits_after_the_final_checkpoint_and_writes_results(trained_dir, tmp_path,
                                                                     capsys):
  config = cifar10_run.read_config(str(trained_dir))
  eval_dir = tmp_path / 'eval'
  results = watch_with_deadline(cifar10_scoring.Evaluator(config, tiny_split()),
                                str(trained_dir), str(eval_dir), interval_secs=0.1)
  assert [r['step'] for r in results] == [20]
  line = capsys.readouterr().out.strip().splitlines()[-1]
  assert line.endswith(f"step 20, precision @ 1 = {results[0]['precision_ema']:.4f}")
  with open(eval_dir / cifar10_run.RESULTS_FILE) as f:
    line = json.loads(f.readline())
  assert line['step'] == 20 and 'confusion' not in line
  with open(eval_dir / cifar10_run.CONFUSION_FILE) as f:
    confusion = json.loads(f.readline())
  assert confusion['step'] == 20 and confusion['classes'][3] == 'cat'
  for weights in ('ema', 'raw'):
    matrix = np.array(confusion[weights]['confusion'])
    assert matrix.shape == (10, 10) and matrix.sum() == 32
    assert np.trace(matrix) / 32 == pytest.approx(results[0][f'precision_{weights}'])
    assert confusion[weights]['per_class'] == cifar10_scoring.per_class(matrix)
  tags = {}
  for name in os.listdir(eval_dir):
    if name.startswith('events.out'):
      for event in tf.compat.v1.train.summary_iterator(str(eval_dir / name)):
        for value in event.summary.value:
          tags[value.tag] = event.step
  assert tags == {'precision @ 1/ema': 20, 'precision @ 1/raw': 20, 'cross_entropy/ema': 20,
                  'cross_entropy/raw': 20}


def test_watcher_stops_after_timeout_without_new_checkpoint(trained_dir, tmp_path):
  config = cifar10_run.read_config(str(trained_dir))
  cifar10_run.write_config(tiny_config(trained_dir, max_steps=1000))  # Not finished.
  results = watch_with_deadline(cifar10_scoring.Evaluator(config, tiny_split()),
                                str(trained_dir), str(tmp_path / 'eval'), interval_secs=0.1,
                                timeout_secs=0.5)
  assert [r['step'] for r in results] == [20]


def test_run_once_without_checkpoint_fails_clearly(tmp_path):
  config = tiny_config(tmp_path)
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    cifar10_eval.watch(cifar10_scoring.Evaluator(config, tiny_split()), str(tmp_path),
                       str(tmp_path / 'eval'), run_once=True)


def test_unreadable_latest_checkpoint_fails_clearly_after_retries(trained_dir, tmp_path, capsys,
                                                                  monkeypatch):
  monkeypatch.setattr(cifar10_eval, 'RETRY_SECS', 0.01)
  config = cifar10_run.read_config(str(trained_dir))
  data = next(p for p in trained_dir.iterdir() if p.name.startswith('ckpt-20.data'))
  data.write_bytes(data.read_bytes()[:100])  # Truncated, as a broken disk would leave it.
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='ckpt-20 is unreadable'):
    watch_with_deadline(cifar10_scoring.Evaluator(config, tiny_split()), str(trained_dir),
                        str(tmp_path / 'eval'), interval_secs=0.1)
  retries = capsys.readouterr().out.count('could not read')
  assert retries == cifar10_eval.READ_ATTEMPTS - 1


def test_checkpoint_of_another_model_is_reported(trained_dir):
  config = tiny_config(trained_dir, image_size=32)  # The run was trained at TINY_SIZE, 24.
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='does not match the model'):
    evaluator.restore(str(trained_dir / 'ckpt-20'))


def test_training_set_results_default_apart_from_the_test_results(tmp_path):
  # cifar10_results.py reads the test figures from default_eval_dir(run, 'test').
  assert cifar10_run.default_eval_dir(str(tmp_path), 'test') == str(tmp_path / 'eval')
  assert cifar10_run.default_eval_dir(str(tmp_path), 'train_eval') == str(tmp_path / 'eval_train')


def test_the_watcher_finds_checkpoints_without_a_readable_state_file(trained_dir, tmp_path):
  (trained_dir / 'checkpoint').write_text('')  # Emptied: TensorFlow's own lookup fails on it.
  config = cifar10_run.read_config(str(trained_dir))
  results = cifar10_eval.watch(cifar10_scoring.Evaluator(config, tiny_split()), str(trained_dir),
                               str(tmp_path / 'eval'), run_once=True)
  assert [r['step'] for r in results] == [20]


def test_an_eval_dir_that_cannot_be_created_is_a_config_error(trained_dir, tmp_path):
  (tmp_path / 'a_file').write_text('')
  config = cifar10_run.read_config(str(trained_dir))
  with pytest.raises(cifar10_config.ConfigError, match='cannot create the eval folder .*a_file'):
    cifar10_eval.watch(cifar10_scoring.Evaluator(config, tiny_split()), str(trained_dir),
                       str(tmp_path / 'a_file' / 'eval'), run_once=True)


def test_the_failure_count_starts_again_for_each_new_checkpoint(trained_dir, tmp_path,
                                                                monkeypatch):
  """Two failed reads of ckpt-10, then two of ckpt-20 as it appears: four failures in a row,
  but never READ_ATTEMPTS (3) of one checkpoint, so the watcher goes on and scores it."""
  monkeypatch.setattr(cifar10_eval, 'RETRY_SECS', 0.01)
  first, last = str(trained_dir / 'ckpt-10'), str(trained_dir / 'ckpt-20')
  newest = iter([first, first, last, last, last])
  monkeypatch.setattr(cifar10_run, 'newest_checkpoint', lambda train_dir: next(newest))
  real_eval_once, reads = cifar10_eval.eval_once, []

  def flaky_eval_once(evaluator, path):
    reads.append(path)
    if len(reads) <= 4:  # Being written or rotated while read, say.
      raise cifar10_run.UnreadableCheckpoint(f'{path} is unreadable')
    return real_eval_once(evaluator, path)
  monkeypatch.setattr(cifar10_eval, 'eval_once', flaky_eval_once)
  config = cifar10_run.read_config(str(trained_dir))
  results = watch_with_deadline(cifar10_scoring.Evaluator(config, tiny_split()), str(trained_dir),
                                str(tmp_path / 'eval'), interval_secs=0.01)
  assert reads == [first, first, last, last, last]
  assert [r['step'] for r in results] == [20]


def test_flip_tta_scores_the_mean_softmax_of_each_image_and_its_mirror(trained_dir):
  config = cifar10_run.read_config(str(trained_dir))
  evaluator = cifar10_scoring.Evaluator(config, tiny_split(), tta='flip')
  evaluator.restore(tf.train.latest_checkpoint(str(trained_dir)))
  images = evaluator.images[:5]
  softmax = lambda x: tf.nn.softmax(evaluator.model(x)).numpy()
  expected = (softmax(images) + softmax(images.numpy()[:, :, ::-1])) / 2
  np.testing.assert_allclose(evaluator.scores(images).numpy(), expected, rtol=1e-5)
  metrics = cifar10_eval.eval_once(evaluator, tf.train.latest_checkpoint(str(trained_dir)))
  assert metrics['tta'] == 'flip'
  assert cifar10_run.default_eval_dir('run', 'test', 'flip') == os.path.join('run', 'eval_flip')


def test_every_checkpoint_is_evaluated_once_oldest_first(trained_dir, tmp_path):
  config = cifar10_run.read_config(str(trained_dir))
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  eval_dir = str(tmp_path / 'eval')
  results = cifar10_eval.evaluate_every_checkpoint(evaluator, str(trained_dir), eval_dir)
  assert [r['step'] for r in results] == [10, 20]
  assert cifar10_eval.evaluate_every_checkpoint(evaluator, str(trained_dir), eval_dir) == []
  with open(os.path.join(eval_dir, 'results.jsonl')) as f:
    assert [json.loads(line)['step'] for line in f] == [10, 20]


def test_a_checkpoint_of_an_evaluated_name_but_other_contents_is_evaluated_again(trained_dir,
                                                                                 tmp_path):
  """A restarted (or deleted and retrained) run reuses ckpt-10, ckpt-20: the results of the
  earlier run must not stand for them. A line written before digests were recorded (none)
  still counts for its name."""
  config = cifar10_run.read_config(str(trained_dir))
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  eval_dir = tmp_path / 'eval'
  eval_dir.mkdir()
  def write_results(digests):
    with open(eval_dir / 'results.jsonl', 'w') as f:
      for step, digest in zip((10, 20), digests):
        f.write(json.dumps({'step': step, 'checkpoint': f'ckpt-{step}', 'precision_ema': 0.5,
                            'checkpoint_digest': digest}) + '\n')
  write_results(['0123456789abcdef', None])  # ckpt-10: an earlier run's; ckpt-20: an old line.
  results = cifar10_eval.evaluate_every_checkpoint(evaluator, str(trained_dir), str(eval_dir))
  assert [r['step'] for r in results] == [10]
  digest = cifar10_run.checkpoint_digest(os.path.join(str(trained_dir), 'ckpt-10'))
  assert results[0]['checkpoint_digest'] == digest and len(digest) == 16
  write_results([digest, cifar10_run.checkpoint_digest(os.path.join(str(trained_dir), 'ckpt-20'))])
  assert cifar10_eval.evaluate_every_checkpoint(evaluator, str(trained_dir), str(eval_dir)) == []
