"""Tests of the trainer (cifar10_trainer.py): learning, EMA, checkpoints, resume, divergence,
signals, precision, and its extension points."""

import dataclasses
import datetime
import math
import os
import re

import numpy as np
import pytest
import tensorflow as tf

import cifar10_input
import cifar10_model
import cifar10_run
import cifar10_config
import cifar10_optim
import cifar10_trainer
import models
from fixtures import TINY_SIZE, copy_run, tiny_config, tiny_split


@pytest.fixture(scope='module', name='ten_steps')
def fixture_ten_steps(tmp_path_factory):
  """A 10-step tiny run with checkpoints at 5 and 10, trained once for the module."""
  train_dir = tmp_path_factory.mktemp('ten_steps') / 'run'
  cifar10_trainer.train(tiny_config(train_dir, max_steps=10, checkpoint_steps=5), tiny_split())
  return train_dir


@pytest.fixture(name='run_dir')
def fixture_run_dir(ten_steps, tmp_path):
  """This test's own copy of the 10-step run."""
  return copy_run(ten_steps, tmp_path / 'run')


def test_velocities_are_saved_and_restored_with_the_checkpoint(tmp_path):
  config = tiny_config(tmp_path, optimizer='nesterov', max_steps=10)
  cifar10_trainer.train(config, tiny_split())
  saved = tf.train.load_checkpoint(str(tmp_path / 'ckpt-10'))
  trainer = cifar10_trainer.Trainer(config)
  assert trainer.restore_latest() == 10
  velocity = trainer.optimizer.velocities[0].numpy()
  assert np.abs(velocity).max() > 0
  key = [k for k in saved.get_variable_to_shape_map() if k.startswith('velocities/0/')][0]
  np.testing.assert_array_equal(saved.get_tensor(key), velocity)


def test_a_few_steps_lower_the_loss_on_tiny_data(tmp_path):
  tf.random.set_seed(0)
  config = tiny_config(tmp_path, max_steps=60)
  trainer = cifar10_trainer.Trainer(config)
  batches = iter(cifar10_input.train_inputs(tiny_split(), 16, seed=0, augment=False,
                                            image_size=TINY_SIZE))
  losses = []
  for _ in range(config.max_steps):
    losses.append(float(trainer.train_step(*next(batches))['cross_entropy']))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_ema_shadows_follow_the_formula_with_num_updates(tmp_path):
  tf.random.set_seed(0)
  trainer = cifar10_trainer.Trainer(tiny_config(tmp_path))
  images, labels = next(iter(cifar10_input.train_inputs(tiny_split(), 16, seed=0,
                                                        augment=False, image_size=TINY_SIZE)))
  before = [v.numpy() for v in trainer.variables]
  trainer.train_step(images, labels)
  # After step 1 TF uses decay = min(0.9999, (1 + 1) / (10 + 1)).
  decay = 2 / 11
  for old, new, shadow in zip(before, trainer.variables, trainer.ema_shadows):
    expected = old - (1 - decay) * (old - new.numpy())
    np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(trainer.ema_shadows[0].numpy(), trainer.variables[0].numpy())


def test_train_ends_with_a_checkpoint_at_exactly_max_steps(tmp_path):
  cifar10_trainer.train(tiny_config(tmp_path, max_steps=13), tiny_split())
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-13')
  assert os.path.exists(tmp_path / 'ckpt-10.index')
  assert cifar10_run.read_config(str(tmp_path)).max_steps == 13


def test_resume_continues_the_step_count(run_dir, capsys):
  cifar10_trainer.train(tiny_config(run_dir, max_steps=25), tiny_split())  # from ckpt-10
  out = capsys.readouterr().out
  assert 'resumed from' in out and 'ckpt-10' in out
  assert cifar10_trainer.logged_steps(out) == [15, 20, 25]
  trainer = cifar10_trainer.Trainer(tiny_config(run_dir, max_steps=25))
  assert trainer.restore_latest() == 25
  saved = tf.train.load_checkpoint(str(run_dir / 'ckpt-25'))
  key = 'model/layers/0/kernel/.ATTRIBUTES/VARIABLE_VALUE'
  np.testing.assert_array_equal(trainer.model.layers[0].kernel.numpy(), saved.get_tensor(key))


def test_log_lines_have_the_tutorial_format_with_max_steps_and_the_eta(tmp_path, capsys):
  cifar10_trainer.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  lines = [l for l in capsys.readouterr().out.splitlines() if 'loss =' in l]
  assert len(lines) == 2
  for line, step in zip(lines, (5, 10)):
    assert re.fullmatch(
        r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: step %d/10, loss = \d+\.\d\d \(\d+\.\d '
        r'examples/sec; \d+\.\d{3} sec/batch; ETA \d+:\d\d:\d\d\)' % step, line), line
    assert cifar10_trainer.STEP_LINE.search(line).group(1, 2) == (str(step), '10')
  assert lines[1].endswith('; ETA 0:00:00)')  # The last step: nothing left.


def test_the_eta_is_the_steps_left_at_the_last_windows_speed(monkeypatch):
  now = [1000.0]
  monkeypatch.setattr(cifar10_trainer.time, 'time', lambda: now[0])
  clock = cifar10_trainer.Clock(step=100, previous_seconds=0.0)
  now[0] += 30.0  # 10 steps in 30 s, before any window ended: the average, 3 s a step.
  assert clock.eta(110, 1000) == datetime.timedelta(seconds=890 * 3)
  assert clock.lap(110) == (30.0, 10)
  now[0] += 5.0  # The next window is faster: 10 steps in 5 s, 0.5 s a step.
  assert clock.lap(120) == (5.0, 10)
  now[0] += 60.0  # Between log lines (a save, say), the last window's speed holds.
  assert clock.eta(120, 1000) == datetime.timedelta(seconds=440)
  assert str(clock.eta(120, 1000)) == '0:07:20'  # H:MM:SS, as the checkpoint lines show it


def test_a_run_at_max_steps_exits_at_once_and_keeps_its_config(run_dir, capsys):
  before = (run_dir / cifar10_run.CONFIG_FILE).read_text()
  other = tiny_config(run_dir, max_steps=10, label_smoothing=0.1, log_frequency=7)
  assert cifar10_trainer.train(other, tiny_split()) is None
  assert 'nothing to do' in capsys.readouterr().out
  assert (run_dir / cifar10_run.CONFIG_FILE).read_text() == before  # not the idle call's


def test_summaries_hold_losses_rate_accuracy_histograms_and_images(tmp_path):
  cifar10_trainer.train(tiny_config(tmp_path, max_steps=10, histogram_steps=10), tiny_split())
  tags = set()
  for name in os.listdir(tmp_path):
    if name.startswith('events.out'):
      for event in tf.compat.v1.train.summary_iterator(str(tmp_path / name)):
        tags.update(value.tag for value in event.summary.value)
  for tag in ('loss', 'cross_entropy', 'weight_decay', 'learning_rate', 'examples_per_sec',
              'batch_accuracy', 'distorted_inputs', 'local3/kernel:0'):
    assert tag in tags, (tag, sorted(tags))


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(run_dir):
  with pytest.raises(cifar10_trainer.TrainingDiverged, match='diverged'):
    cifar10_trainer.train(tiny_config(run_dir, max_steps=40, learning_rate=1e12), tiny_split())
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-10')


def test_non_finite_weights_are_never_saved(run_dir):
  trainer = cifar10_trainer.Trainer(tiny_config(run_dir, max_steps=10))
  trainer.restore_latest()
  trainer.variables[0].assign(tf.fill(trainer.variables[0].shape, float('inf')))
  trainer.step.assign(11)
  with pytest.raises(cifar10_trainer.TrainingDiverged, match='not finite at step 11'):
    trainer.save(1.0)
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-10')


def test_stop_request_saves_the_current_step_then_stops(tmp_path):
  def stop_at_15(step, rate):
    del rate
    if step == 15:
      cifar10_trainer._STOP.set()  # pylint: disable=protected-access
  try:
    with pytest.raises(cifar10_trainer.StopRequested):
      cifar10_trainer.train(tiny_config(tmp_path, max_steps=40), tiny_split(), on_log=stop_at_15)
  finally:
    cifar10_trainer._STOP.clear()  # pylint: disable=protected-access
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-15')
  trainer = cifar10_trainer.Trainer(tiny_config(tmp_path, max_steps=40))
  assert trainer.restore_latest() == 15


def test_partial_saves_of_a_killed_run_are_removed(tmp_path):
  (tmp_path / 'ckpt-30_temp').mkdir()
  (tmp_path / 'ckpt-30_temp' / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'x')
  cifar10_trainer.train(tiny_config(tmp_path, max_steps=5), tiny_split())
  assert not (tmp_path / 'ckpt-30_temp').exists()


# ----------------------------------------------------------------- the run folder's safety


@pytest.mark.parametrize('damage', ['garbage', 'empty', 'deleted'])
def test_a_damaged_or_lost_state_file_resumes_from_the_newest_checkpoint(run_dir, capsys,
                                                                         damage):
  state = run_dir / cifar10_run.STATE_FILE
  if damage == 'deleted':
    state.unlink()
  else:
    state.write_text('garbage{{{' if damage == 'garbage' else '')
  capsys.readouterr()
  cifar10_trainer.train(tiny_config(run_dir, max_steps=15, checkpoint_steps=5), tiny_split())
  out = capsys.readouterr().out
  assert f'resumed from {run_dir / "ckpt-10"} at step 10' in out, out
  assert cifar10_trainer.logged_steps(out) == [15]
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-15')


@pytest.mark.parametrize('damage', ['data truncated', 'data zeroed', 'index truncated',
                                    'index deleted', 'data deleted'])
def test_a_corrupt_newest_checkpoint_is_named_and_the_one_before_it_resumes(run_dir, capsys,
                                                                           damage):
  part, how = damage.split()
  path = next(run_dir.glob(f'ckpt-10.{part}*'))
  if how == 'truncated':
    path.write_bytes(path.read_bytes()[:100])
  elif how == 'zeroed':
    path.write_bytes(bytes(path.stat().st_size))
  else:
    path.unlink()
  capsys.readouterr()
  cifar10_trainer.train(tiny_config(run_dir, max_steps=10, checkpoint_steps=5), tiny_split())
  out = capsys.readouterr().out
  assert f'skipped {run_dir / "ckpt-10"}, which does not restore' in out, out
  assert f'resumed from {run_dir / "ckpt-5"} at step 5' in out
  assert cifar10_trainer.logged_steps(out) == [10]  # ckpt-10 is written again, whole.
  trainer = cifar10_trainer.Trainer(tiny_config(run_dir, max_steps=10))
  assert trainer.restore_latest() == 10 and not trainer.skipped


def test_unrestorable_checkpoints_refuse_a_start_from_zero_unless_restart(run_dir, capsys):
  for index in run_dir.glob('ckpt-*.index'):
    index.write_bytes(b'garbage')
  refused = 'none of the 2 checkpoints.*--restart'
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match=refused):
    cifar10_trainer.train(tiny_config(run_dir, max_steps=15), tiny_split())
  indexes = ['ckpt-10.index', 'ckpt-5.index']
  assert sorted(p.name for p in run_dir.glob('ckpt-*.index')) == indexes
  capsys.readouterr()
  (run_dir / 'eval').mkdir()  # The old run's evaluations, as cifar10_eval.py leaves them.
  (run_dir / 'eval' / 'results.jsonl').write_text('{"step": 10, "precision_ema": 0.2767}\n')
  events = sorted(p.name for p in run_dir.glob('events.out.tfevents.*'))
  assert events
  cifar10_trainer.train(tiny_config(run_dir, max_steps=5), tiny_split(), restart=True)
  assert '--restart: moved the checkpoints to' in capsys.readouterr().out
  aside, = run_dir.glob('restarted-*')
  assert sorted(p.name for p in aside.glob('ckpt-*.index')) == indexes
  # Its evaluations and event files went with it: the new ckpt-5 is not "evaluated".
  assert (aside / 'eval' / 'results.jsonl').exists() and not (run_dir / 'eval').exists()
  assert sorted(p.name for p in aside.glob('events.out.tfevents.*')) == events
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-5')


def test_another_model_is_refused_before_config_json_is_written(run_dir):
  (run_dir / cifar10_run.CONFIG_FILE).unlink()
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='none of the 2 checkpoints'):
    cifar10_trainer.train(tiny_config(run_dir, model='alex4', max_steps=15), tiny_split())
  assert not (run_dir / cifar10_run.CONFIG_FILE).exists()
  cifar10_trainer.train(tiny_config(run_dir, max_steps=15), tiny_split())  # The right model.
  assert cifar10_run.read_config(str(run_dir)).model == 'tutorial'


def test_a_second_trainer_on_one_run_folder_is_refused_naming_the_holder(tmp_path):
  with cifar10_run.locked(str(tmp_path)):
    busy = f'in use by another process \\(PID {os.getpid()}\\)'
    with pytest.raises(cifar10_run.RunFolderBusy, match=busy):
      cifar10_trainer.train(tiny_config(tmp_path, max_steps=5), tiny_split())
  cifar10_trainer.train(tiny_config(tmp_path, max_steps=5), tiny_split())  # Released: it runs.


def test_a_failed_save_is_a_clear_error_and_the_earlier_checkpoints_stay(run_dir, monkeypatch):
  def full_disk(self, checkpoint_number=None):
    os.makedirs(os.path.join(self.directory, f'ckpt-{checkpoint_number}_temp'))
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
  monkeypatch.setattr(tf.train.CheckpointManager, 'save', full_disk)
  with pytest.raises(cifar10_run.SaveFailed, match='step 15 .* full or read-only.*ckpt-10'):
    cifar10_trainer.train(tiny_config(run_dir, max_steps=15), tiny_split())
  assert not list(run_dir.glob('*_temp'))
  kept = [str(run_dir / 'ckpt-10'), str(run_dir / 'ckpt-5')]
  assert cifar10_run.checkpoint_paths(str(run_dir)) == kept
  monkeypatch.undo()
  trainer = cifar10_trainer.Trainer(tiny_config(run_dir, max_steps=15))
  assert trainer.restore_latest() == 10


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_the_largest_that_fits(tmp_path):
  config = cifar10_config.TrainConfig(train_dir=str(tmp_path), batch_size=2000)
  model = models.build('tutorial', 24)
  per_image = 12 * 78_922  # cifar10_model.training_bytes_per_image, by hand
  available = cifar10_trainer.MEMORY_RESERVE + 1000 * per_image
  with pytest.raises(cifar10_config.ConfigError,
                     match=r'--batch_size=2,000 does not fit.*0\.90 MiB per image.*'
                           r'use --batch_size=1,000 or less'):
    cifar10_trainer.check_batch_fits(config, model, available=available)
  cifar10_trainer.check_batch_fits(dataclasses.replace(config, batch_size=1000), model,
                                   available=available)


# ----------------------------------------------------------------------- mixed precision


def test_mixed_bfloat16_trains_with_float32_variables_and_bfloat16_layers(tmp_path):
  config = tiny_config(tmp_path, max_steps=10, precision='mixed_bfloat16')
  trainer = cifar10_trainer.Trainer(config)
  assert trainer.model.compute_dtype == tf.bfloat16
  assert {v.dtype for v in list(trainer.variables) + trainer.ema_shadows} == {tf.float32}
  conv = trainer.model.weight_layers()[0]
  assert conv(tf.zeros([1, TINY_SIZE, TINY_SIZE, 3], tf.bfloat16)).dtype == tf.bfloat16
  logits = trainer.model(tf.zeros([2, TINY_SIZE, TINY_SIZE, 3]), training=True)
  assert logits.dtype == tf.float32
  first = cifar10_trainer.train(config, tiny_split())
  assert math.isfinite(first['loss'])
  restored = cifar10_trainer.Trainer(config)
  assert restored.restore_latest() == 10


def test_mixed_float16_skips_an_overflowing_step_and_scales_the_loss_dynamically(tmp_path,
                                                                                 monkeypatch):
  monkeypatch.setattr(cifar10_optim, 'LOSS_SCALE_GROWTH_STEPS', 2)
  trainer = cifar10_trainer.Trainer(tiny_config(tmp_path, precision='mixed_float16'))
  assert trainer.model.compute_dtype == tf.float16
  images = tf.constant(cifar10_input.eval_batch(tiny_split(16).images, TINY_SIZE))
  labels = tf.constant(tiny_split(16).labels)
  before = [v.numpy() for v in trainer.variables]
  shadows = [s.numpy() for s in trainer.ema_shadows]
  trainer.loss_scale.scale.assign(3e38)  # The scaled loss overflows: every gradient is inf or NaN.
  trainer.train_step(images, labels)
  assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.variables))
  assert all(np.array_equal(a, s.numpy()) for a, s in zip(shadows, trainer.ema_shadows))
  assert int(trainer.step.numpy()) == 1  # The batch is spent; the weights are not touched.
  assert trainer.loss_scale.scale.numpy() == np.float32(1.5e38)
  assert trainer.loss_scale.good_steps.numpy() == 0
  trainer.loss_scale.scale.assign(1024.0)
  trainer.train_step(images, labels)
  assert not all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.variables))
  assert trainer.loss_scale.scale.numpy() == 1024.0 and trainer.loss_scale.good_steps.numpy() == 1
  trainer.train_step(images, labels)  # The second finite step in a row: the scale doubles.
  assert trainer.loss_scale.scale.numpy() == 2048.0 and trainer.loss_scale.good_steps.numpy() == 0
  saved = tf.train.load_checkpoint(trainer.checkpoint.write(str(tmp_path / 'ckpt')))
  names = saved.get_variable_to_shape_map()
  assert any(name.startswith('loss_scale/') for name in names)  # Resumes with its scale.
  assert any(name.startswith('good_steps/') for name in names)


# ----------------------------------------------------------------- extension points


def _batch(size=16):
  split = tiny_split(size)
  return tf.constant(cifar10_input.eval_batch(split.images, TINY_SIZE)), tf.constant(split.labels)


class _DoubledCrossEntropy(cifar10_trainer.Trainer):
  def objective(self, images, labels):
    cross_entropy, decay, logits = super().objective(images, labels)
    return 2.0 * cross_entropy, decay, logits


def test_the_objective_replaces_the_loss_of_a_batch(tmp_path):
  config = tiny_config(tmp_path, weight_decay='l2', l2_decay=0.0)  # No decay term.
  tf.random.set_seed(0)
  plain = cifar10_trainer.Trainer(config)
  tf.random.set_seed(0)
  doubled = _DoubledCrossEntropy(config)
  gradients, metrics = plain._gradients(*_batch())  # pylint: disable=protected-access
  twice, twice_metrics = doubled._gradients(*_batch())  # pylint: disable=protected-access
  np.testing.assert_allclose(float(twice_metrics['cross_entropy']),
                             2 * float(metrics['cross_entropy']), rtol=1e-6)
  for one, two in zip(gradients, twice):
    np.testing.assert_allclose(two.numpy(), 2 * one.numpy(), rtol=1e-4, atol=1e-7)


class _SilencedForward(cifar10_trainer.Trainer):
  def forward(self, images):
    return 0.0 * self.model(images, training=True)  # Every class equally likely.


def test_the_forward_pass_can_transform_what_the_model_computes(tmp_path):
  trainer = _SilencedForward(tiny_config(tmp_path, weight_decay='l2', l2_decay=0.0))
  metrics = trainer.train_step(*_batch())
  assert float(metrics['cross_entropy']) == pytest.approx(math.log(10), rel=1e-6)


def _small_model(config, conv):
  """A model the registry does not hold: one 3x3 convolution of 4 channels and a dense layer."""
  del conv
  regime = cifar10_model.Regime()
  side = math.ceil(config.image_size / 2)  # After the stride-2 SAME pooling.
  return cifar10_model.Model(
      [cifar10_model.conv(regime, 'conv1', 3, 4, 3), cifar10_model.MaxPool(),
       cifar10_model.Flatten(),
       cifar10_model.dense(regime, 'logits', side * side * 4, 10, tutorial_stddev=0.1,
                           relu=False)], config.image_size)


def test_a_tool_can_hand_the_trainer_a_model_of_other_shapes(tmp_path):
  config = tiny_config(tmp_path, max_steps=3, checkpoint_steps=3)
  cifar10_trainer.train(config, tiny_split(),
                        make_trainer=lambda c: cifar10_trainer.Trainer(c, build_model=_small_model))
  resumed = cifar10_trainer.Trainer(config, build_model=_small_model)
  assert resumed.restore_latest() == 3
  # The dense layer's 576 inputs: the 12x12 pooled 24x24 images (TINY_SIZE), 4 channels.
  assert sorted(v.shape.as_list() for v in resumed.variables) == [[3, 3, 3, 4], [4], [10],
                                                                  [576, 10]]
  with pytest.raises(cifar10_run.UnreadableCheckpoint):  # Not the registry's tutorial.
    cifar10_trainer.Trainer(config).restore_latest()


def test_a_schedule_of_its_own_sets_the_rate_of_every_step(tmp_path):
  schedule = cifar10_optim.Schedule('warmup_linear', 0.5, last_step=4)
  trainer = cifar10_trainer.Trainer(tiny_config(tmp_path), schedule=schedule)
  rates = [float(trainer.train_step(*_batch())['learning_rate']) for _ in range(4)]
  np.testing.assert_allclose(rates, [0.5, 0.375, 0.25, 0.125], rtol=1e-6)


@pytest.mark.parametrize('change,message', [
    (dict(optimizer='adamw'), r"optimizer: 'sgd' -> 'adamw'"),
    (dict(precision='mixed_float16'), r"precision: 'float32' -> 'mixed_float16'"),
    (dict(cifar10_config.recipe_values('fast'), recipe='fast'),
     r"recipe: 'study' -> 'fast'.*optimizer: 'sgd' -> 'nesterov'"),
])
def test_resuming_with_another_flag_names_the_change_not_a_damaged_checkpoint(run_dir, change,
                                                                              message):
  """--optimizer, --precision, or a --recipe that changes either, change what a checkpoint
  holds: the error says so and that the run's own flags resume it."""
  other = tiny_config(run_dir, max_steps=15, **change)
  with pytest.raises(cifar10_config.ConfigError, match=message + '.*own flags'):
    cifar10_trainer.train(other, tiny_split())
  cifar10_trainer.train(tiny_config(run_dir, max_steps=15), tiny_split())  # its own flags resume
