"""Tests of what a run writes for TensorBoard: scalars, text, HParams, graph, histograms,
images, a profile window, and the evaluation's loss beside its precision."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

import cifar10_config
import cifar10_eval
import cifar10_run
import cifar10_scoring
import cifar10_summaries
import cifar10_trainer
from fixtures import tiny_config, tiny_split


def event_contents(folder):
  """{tag: plugin name} of every summary value in `folder`'s event files."""
  tags = {}
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags[value.tag] = value.metadata.plugin_data.plugin_name
  return tags


@pytest.fixture(scope='module', name='profiled')
def fixture_profiled(tmp_path_factory):
  """A 12-step tiny run with a profile of steps 4..5 and histograms every 10 steps."""
  config = tiny_config(tmp_path_factory.mktemp('profiled'), max_steps=12, histogram_steps=10,
                       checkpoint_steps=12, profile_steps='4,5')
  cifar10_trainer.train(config, tiny_split())
  return config


def test_a_run_writes_scalars_text_hparams_graph_histograms_and_images(profiled):
  tags = event_contents(profiled.train_dir)
  assert {tags[name] for name in ('loss', 'cross_entropy', 'learning_rate',
                                  'examples_per_sec')} == {'scalars'}
  assert tags['config'] == 'text'
  assert tags['distorted_inputs'] == 'images'
  kernels = [tag for tag, plugin in tags.items() if plugin == 'histograms']
  assert kernels and all(':0' in tag for tag in kernels)  # variable names
  assert tags['_hparams_/session_start_info'] == 'hparams'
  assert tags['train_step'] == 'graph_run_metadata_graph'  # the Graphs tab's


def histogram_steps(folder):
  steps = set()
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      if any(v.tag == 'distorted_inputs' for v in event.summary.value):
        steps.add(event.step)
  return sorted(steps)


def test_histograms_and_images_come_at_the_first_step_then_every_histogram_steps(profiled):
  assert histogram_steps(profiled.train_dir) == [1, 10]


def test_the_profile_window_writes_a_trace_for_the_profile_plugin(profiled):
  traces = glob.glob(os.path.join(profiled.train_dir, 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


def test_the_config_text_and_hparams_hold_every_field_but_the_folder():
  config = tiny_config('runs/x', profile_steps='1,2')
  table = cifar10_summaries.config_table(config).splitlines()
  assert table[:2] == ['| field | value |', '|---|---|']
  assert "| profile_steps | `'1,2'` |" in table and "| max_steps | `20` |" in table
  assert len(table) == 2 + len(cifar10_config.FIELDS)
  hparams = cifar10_summaries.hparams_of(config)
  assert set(hparams) == set(cifar10_config.FIELDS) - {'train_dir'}
  assert hparams['batch_size'] == 16 and hparams['augment'] is False


@pytest.mark.parametrize('steps, message', [
    ('4', 'must be two steps A,B such as 100,110'),
    ('a,b', 'must be two steps A,B such as 100,110'),
    ('5,4', 'the steps must satisfy 1 <= A <= B'),
    ('0,3', 'the steps must satisfy 1 <= A <= B')])
def test_a_bad_profile_window_is_refused_naming_the_flag(steps, message):
  with pytest.raises(cifar10_config.ConfigError, match=f'--profile_steps={steps}'):
    cifar10_config.TrainConfig(profile_steps=steps)
  with pytest.raises(cifar10_config.ConfigError, match=message):
    cifar10_config.TrainConfig(profile_steps=steps)
  assert cifar10_config.TrainConfig(profile_steps='3,3').profile_window == (3, 3)


def test_a_profile_stops_with_a_run_that_ends_inside_its_window(tmp_path, capsys):
  config = tiny_config(tmp_path, max_steps=3, checkpoint_steps=3, profile_steps='2,50')
  cifar10_trainer.train(config, tiny_split())
  assert 'profile of steps 2..50 written under' in capsys.readouterr().out
  assert glob.glob(os.path.join(str(tmp_path), 'plugins', 'profile', '*', '*.xplane.pb'))
  # The profiler is off again: another one starts.
  tf.profiler.experimental.start(str(tmp_path / 'again'))
  tf.profiler.experimental.stop()


@pytest.mark.parametrize('tta', cifar10_scoring.TTA_MODES)
def test_the_eval_loss_is_the_mean_cross_entropy_computed_by_hand(profiled, tta):
  split = tiny_split(num=23, seed=1)  # a partial last batch of 5
  evaluator = cifar10_scoring.Evaluator(profiled, split, batch_size=6, tta=tta)
  cifar10_run.load_inference_model(profiled.train_dir, state=evaluator)  # the EMA shadows
  matrix, loss = evaluator.confusion_and_loss()
  logits = evaluator.model(evaluator.images, training=False).numpy().astype(np.float64)

  def softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
  probabilities = softmax(logits)
  if tta == 'flip':
    mirrored = evaluator.model(tf.reverse(evaluator.images, axis=[2]), training=False).numpy()
    probabilities = (probabilities + softmax(mirrored.astype(np.float64))) / 2
  expected = -np.mean(np.log(probabilities[np.arange(23), split.labels]))
  assert loss == pytest.approx(expected, rel=1e-4)
  assert matrix.sum() == 23 and np.trace(matrix) == np.sum(
      probabilities.argmax(axis=1) == split.labels)


def test_the_watcher_writes_the_eval_loss_beside_precision(profiled, tmp_path):
  evaluator = cifar10_scoring.Evaluator(profiled, tiny_split())
  eval_dir = str(tmp_path / 'eval')
  (result,) = cifar10_eval.watch(evaluator, profiled.train_dir, eval_dir, run_once=True)
  assert result['cross_entropy_ema'] > 0 and result['cross_entropy_raw'] > 0
  tags = event_contents(eval_dir)
  assert {tag: tags[tag] for tag in ('precision @ 1/ema', 'precision @ 1/raw',
                                     'cross_entropy/ema', 'cross_entropy/raw')} == dict.fromkeys(
      ('precision @ 1/ema', 'precision @ 1/raw', 'cross_entropy/ema', 'cross_entropy/raw'),
      'scalars')
