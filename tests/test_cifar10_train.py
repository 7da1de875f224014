"""Tests of the training loop: learning, EMA, checkpoints, resume and divergence."""

import dataclasses
import math
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import cifar10_input
import cifar10_run
import cifar10_train
import models
from fixtures import copy_run, tiny_config, tiny_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_staircase_schedule_drops_tenfold_every_350_epochs():
  config = cifar10_run.TrainConfig(lr_schedule='staircase')
  assert config.decay_steps == 136_718
  rate = lambda step: float(cifar10_train.learning_rate(tf.constant(step, tf.int64), config))
  assert rate(0) == pytest.approx(0.1)
  assert rate(136_717) == pytest.approx(0.1)
  assert rate(136_718) == pytest.approx(0.01)
  assert rate(2 * 136_718) == pytest.approx(0.001)


def test_constant_schedule():
  config = cifar10_run.TrainConfig()
  assert float(cifar10_train.learning_rate(tf.constant(10**6, tf.int64), config)) == (
      pytest.approx(0.1))


def _holders(given=(), **values):
  """Flag holders of TrainConfig's defaults updated by `values`; `given`: set explicitly."""
  defaults = {field.name: field.default for field in dataclasses.fields(cifar10_run.TrainConfig)}
  values = dict(defaults, image_size=None, **values)
  return {name: types.SimpleNamespace(value=value, present=name in given)
          for name, value in values.items()}


def _rates(config, steps):
  return [float(cifar10_train.learning_rate(tf.constant(s, tf.int64), config)) for s in steps]


def test_warmup_linear_rises_over_the_warmup_then_falls_to_zero_at_max_steps():
  config = cifar10_run.TrainConfig(lr_schedule='warmup_linear', learning_rate=0.4,
                                   warmup_steps=100, max_steps=1100)
  # Step s of the warm-up: 0.4 (s + 1) / 100; then 0.4 (1 - (s - 100) / 1000).
  np.testing.assert_allclose(_rates(config, [0, 49, 99, 100, 600, 1099, 1100]),
                             [0.004, 0.2, 0.4, 0.4, 0.2, 0.0004, 0.0], rtol=1e-5, atol=1e-7)


def test_warmup_cosine_is_half_the_rate_halfway_through_the_decay():
  config = cifar10_run.TrainConfig(lr_schedule='warmup_cosine', learning_rate=0.2,
                                   warmup_steps=10, max_steps=110)
  # 0.2 * (1 + cos(pi * p)) / 2 at p = (s - 10) / 100: p = 0.5 -> 0.1, p = 0.25 -> 0.1707.
  np.testing.assert_allclose(_rates(config, [4, 10, 35, 60, 110]),
                             [0.1, 0.2, 0.2 * (1 + math.sqrt(0.5)) / 2, 0.1, 0.0], atol=1e-6)


def test_onecycle_peaks_at_a_quarter_of_max_steps_and_ends_at_zero():
  config = cifar10_run.TrainConfig(lr_schedule='onecycle', learning_rate=0.2, max_steps=400)
  # Up as 0.2 (s + 1) / 100, down as 0.2 (400 - s) / 300.
  np.testing.assert_allclose(_rates(config, [0, 49, 99, 100, 250, 399]),
                             [0.002, 0.1, 0.2, 0.2, 0.1, 0.2 / 300], rtol=1e-5)


def test_a_recipe_sets_its_values_and_an_explicit_flag_overrides_one(tmp_path):
  holders = _holders(given=('learning_rate',), train_dir=str(tmp_path), recipe='fast32',
                     learning_rate=0.05)
  config = cifar10_train.config_from_flags(holders)
  recipe = cifar10_run.RECIPES['fast32']
  assert config.recipe == 'fast32' and config.learning_rate == 0.05
  for name, value in recipe.items():
    if name != 'learning_rate':
      assert getattr(config, name) == value, name
  assert config.image_size == 32  # The recipe's, not the default 24 of augmentation.
  line = cifar10_run.recipe_summary(config)
  assert 'recipe fast32: optimizer=nesterov' in line
  assert f'learning_rate=0.05 (recipe: {recipe["learning_rate"]})' in line
  cifar10_run.write_config(config)
  assert cifar10_run.read_config(str(tmp_path)) == config


def test_fast32m_is_fast32_with_the_mean_padded_crop():
  fast32, fast32m = cifar10_run.RECIPES['fast32'], cifar10_run.RECIPES['fast32m']
  assert fast32m == dict(fast32, distortions='crop_flip_mean')
  assert fast32['distortions'] == 'crop_flip'  # The earlier runs' recipe is unchanged.


def test_the_study_recipe_is_the_defaults_and_tutorial_sets_the_tutorials_choices(tmp_path):
  study = cifar10_train.config_from_flags(_holders(train_dir=str(tmp_path)))
  assert study == cifar10_run.TrainConfig(train_dir=str(tmp_path), conv=study.conv)
  tutorial = cifar10_train.config_from_flags(_holders(train_dir=str(tmp_path),
                                                      recipe='tutorial'))
  assert (tutorial.init, tutorial.weight_decay, tutorial.lr_schedule) == (
      'tutorial', 'tutorial', 'staircase')


def _one_step(tmp_path, **overrides):
  """(weights before, gradients, weights after) of one step on a tiny batch."""
  tf.random.set_seed(0)
  trainer = cifar10_train.Trainer(tiny_config(tmp_path, **overrides))
  images, labels = next(iter(cifar10_input.train_inputs(tiny_split(), 16, seed=0,
                                                        augment=False, image_size=32)))
  before = [v.numpy() for v in trainer.variables]
  gradients, _ = trainer._gradients(images, labels)
  trainer.train_step(images, labels)
  return trainer, before, [g.numpy() for g in gradients], (images, labels)


@pytest.mark.parametrize('optimizer', ['momentum', 'nesterov'])
def test_momentum_and_nesterov_follow_their_formulas_over_two_steps(tmp_path, optimizer):
  rate, mu = 0.01, 0.9
  trainer, w0, g0, batch = _one_step(tmp_path, optimizer=optimizer, momentum=mu,
                                     learning_rate=rate)
  w1 = [v.numpy() for v in trainer.variables]
  g1 = [g.numpy() for g in trainer._gradients(*batch)[0]]
  trainer.train_step(*batch)
  for i in range(len(w0)):
    v1 = g0[i]  # The velocity starts at zero.
    step1 = g0[i] + mu * v1 if optimizer == 'nesterov' else v1
    np.testing.assert_allclose(w1[i], w0[i] - rate * step1, rtol=1e-4, atol=1e-6)
    v2 = mu * v1 + g1[i]
    np.testing.assert_allclose(trainer.velocities[i].numpy(), v2, rtol=1e-4, atol=1e-6)
    step2 = g1[i] + mu * v2 if optimizer == 'nesterov' else v2
    np.testing.assert_allclose(trainer.variables[i].numpy(), w1[i] - rate * step2,
                               rtol=1e-4, atol=1e-6)


def test_velocities_are_saved_and_restored_with_the_checkpoint(tmp_path):
  config = tiny_config(tmp_path, optimizer='nesterov', max_steps=10)
  cifar10_train.train(config, tiny_split())
  saved = tf.train.load_checkpoint(str(tmp_path / 'ckpt-10'))
  trainer = cifar10_train.Trainer(config)
  assert trainer.restore_latest() == 10
  velocity = trainer.velocities[0].numpy()
  assert np.abs(velocity).max() > 0
  key = [k for k in saved.get_variable_to_shape_map() if k.startswith('velocities/0/')][0]
  np.testing.assert_array_equal(saved.get_tensor(key), velocity)


def test_config_from_flags_records_the_resolved_convolution(tmp_path):
  defaults = {field.name: field.default for field in dataclasses.fields(cifar10_run.TrainConfig)}
  values = dict(defaults, train_dir=str(tmp_path), image_size=None, conv='auto')
  holders = {name: types.SimpleNamespace(value=value, present=False)
             for name, value in values.items()}
  config = cifar10_train.config_from_flags(holders)
  gpus = tf.config.list_physical_devices('GPU')
  assert config.conv == ('direct' if gpus else 'spectral') and config.image_size == 24
  cifar10_run.write_config(config)
  assert cifar10_run.read_config(str(tmp_path)).conv == config.conv


def test_a_few_steps_lower_the_loss_on_tiny_data(tmp_path):
  tf.random.set_seed(0)
  config = tiny_config(tmp_path, max_steps=60)
  trainer = cifar10_train.Trainer(config)
  batches = iter(cifar10_input.train_inputs(tiny_split(), 16, seed=0, augment=False,
                                            image_size=32))
  losses = []
  for _ in range(config.max_steps):
    losses.append(float(trainer.train_step(*next(batches))['cross_entropy']))
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_ema_shadows_follow_the_formula_with_num_updates(tmp_path):
  tf.random.set_seed(0)
  trainer = cifar10_train.Trainer(tiny_config(tmp_path))
  images, labels = next(iter(cifar10_input.train_inputs(tiny_split(), 16, seed=0,
                                                        augment=False, image_size=32)))
  before = [v.numpy() for v in trainer.variables]
  trainer.train_step(images, labels)
  # After step 1 TF uses decay = min(0.9999, (1 + 1) / (10 + 1)).
  decay = 2 / 11
  for old, new, shadow in zip(before, trainer.variables, trainer.ema_shadows):
    expected = old - (1 - decay) * (old - new.numpy())
    np.testing.assert_allclose(shadow.numpy(), expected, rtol=1e-5, atol=1e-7)
  assert not np.allclose(trainer.ema_shadows[0].numpy(), trainer.variables[0].numpy())


def test_train_ends_with_a_checkpoint_at_exactly_max_steps(tmp_path):
  cifar10_train.train(tiny_config(tmp_path, max_steps=13), tiny_split())
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-13')
  assert os.path.exists(tmp_path / 'ckpt-10.index')
  assert cifar10_run.read_config(str(tmp_path)).max_steps == 13


def test_resume_continues_the_step_count(tmp_path, capsys):
  cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  cifar10_train.train(tiny_config(tmp_path, max_steps=25), tiny_split())
  out = capsys.readouterr().out
  assert 'resumed from' in out and 'ckpt-10' in out
  steps = [int(line.split('step ')[1].split(',')[0]) for line in out.splitlines()
           if ', loss = ' in line]
  assert steps == [5, 10, 15, 20, 25]
  trainer = cifar10_train.Trainer(tiny_config(tmp_path, max_steps=25))
  assert trainer.restore_latest() == 25
  saved = tf.train.load_checkpoint(str(tmp_path / 'ckpt-25'))
  key = 'model/layers/0/kernel/.ATTRIBUTES/VARIABLE_VALUE'
  np.testing.assert_array_equal(trainer.model.layers[0].kernel.numpy(), saved.get_tensor(key))


def test_log_lines_have_the_tutorial_format(tmp_path, capsys):
  cifar10_train.train(tiny_config(tmp_path, max_steps=5), tiny_split())
  line = next(l for l in capsys.readouterr().out.splitlines() if 'loss =' in l)
  assert re.fullmatch(
      r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: step 5, loss = \d+\.\d\d '
      r'\(\d+\.\d examples/sec; \d+\.\d{3} sec/batch\)', line), line


def test_a_run_at_max_steps_exits_at_once(tmp_path, capsys):
  cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  assert cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split()) is None
  assert 'nothing to do' in capsys.readouterr().out


def test_summaries_hold_losses_rate_accuracy_histograms_and_images(tmp_path):
  cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  tags = set()
  for name in os.listdir(tmp_path):
    if name.startswith('events.out'):
      for event in tf.compat.v1.train.summary_iterator(str(tmp_path / name)):
        tags.update(value.tag for value in event.summary.value)
  for tag in ('loss', 'cross_entropy', 'weight_decay', 'learning_rate', 'examples_per_sec',
              'batch_accuracy', 'distorted_inputs', 'local3/kernel:0'):
    assert tag in tags, (tag, sorted(tags))


def test_diverging_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  with pytest.raises(cifar10_train.TrainingDiverged, match='diverged'):
    cifar10_train.train(tiny_config(tmp_path, max_steps=40, learning_rate=1e12), tiny_split())
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-10')


def test_non_finite_weights_are_never_saved(tmp_path):
  cifar10_train.train(tiny_config(tmp_path, max_steps=10), tiny_split())
  trainer = cifar10_train.Trainer(tiny_config(tmp_path, max_steps=10))
  trainer.restore_latest()
  trainer.variables[0].assign(tf.fill(trainer.variables[0].shape, float('inf')))
  trainer.step.assign(11)
  with pytest.raises(cifar10_train.TrainingDiverged, match='not finite at step 11'):
    trainer.save(1.0)
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-10')


def test_stop_request_saves_the_current_step_then_stops(tmp_path):
  def stop_at_15(step, rate):
    del rate
    if step == 15:
      cifar10_train._STOP.set()  # pylint: disable=protected-access
  try:
    with pytest.raises(cifar10_train.StopRequested):
      cifar10_train.train(tiny_config(tmp_path, max_steps=40), tiny_split(), on_log=stop_at_15)
  finally:
    cifar10_train._STOP.clear()  # pylint: disable=protected-access
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-15')
  trainer = cifar10_train.Trainer(tiny_config(tmp_path, max_steps=40))
  assert trainer.restore_latest() == 15


def test_partial_saves_of_a_killed_run_are_removed(tmp_path):
  (tmp_path / 'ckpt-30_temp').mkdir()
  (tmp_path / 'ckpt-30_temp' / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'x')
  cifar10_train.train(tiny_config(tmp_path, max_steps=5), tiny_split())
  assert not (tmp_path / 'ckpt-30_temp').exists()


def run_binary(*args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        **kwargs)


@pytest.mark.subprocess
def test_binary_reports_missing_data_without_traceback(tmp_path):
  result = run_binary('cifar10_train.py', f'--data_dir={tmp_path}',
                      f'--train_dir={tmp_path / "run"}', '--max_steps=1',
                      '--data_url=http://127.0.0.1:9/cifar-10-binary.tar.gz', timeout=120)
  assert result.returncode == 1, result.stderr
  assert 'error:' in result.stderr and 'Traceback' not in result.stderr
  assert str(tmp_path) in result.stderr and 'cifar-10-binary.tar.gz' in result.stderr


@pytest.mark.subprocess
def test_binary_refuses_a_value_that_cannot_train_before_anything_else(tmp_path):
  # Flags out of their range at parse time: tests/test_error_paths.py.
  result = run_binary('cifar10_train.py', '--learning_rate=nan', f'--train_dir={tmp_path}',
                      f'--data_dir={tmp_path}', timeout=120)
  assert result.returncode == 1
  assert result.stderr == 'error: --learning_rate=nan must be a finite number >= 0\n'
  assert not os.listdir(tmp_path)  # Refused before any data was sought or file written.


@pytest.mark.subprocess
def test_binary_exits_nonzero_on_divergence(tmp_path, real_data_dir):
  result = run_binary('cifar10_train.py', f'--data_dir={real_data_dir}',
                      f'--train_dir={tmp_path}', '--max_steps=30', '--learning_rate=1e12',
                      '--log_frequency=5', timeout=300)
  assert result.returncode == 1, result.stderr
  assert 'diverged' in result.stderr and 'Traceback' not in result.stderr


# ----------------------------------------------------------------- the run folder's safety


@pytest.fixture(scope='module', name='ten_steps')
def fixture_ten_steps(tmp_path_factory):
  """A 10-step tiny run with checkpoints at 5 and 10, trained once for the module."""
  train_dir = tmp_path_factory.mktemp('ten_steps') / 'run'
  cifar10_train.train(tiny_config(train_dir, max_steps=10, checkpoint_steps=5), tiny_split())
  return train_dir


@pytest.fixture(name='run_dir')
def fixture_run_dir(ten_steps, tmp_path):
  """This test's own copy of the 10-step run."""
  return copy_run(ten_steps, tmp_path / 'run')


def resumed_steps(out):
  return [int(line.split('step ')[1].split(',')[0]) for line in out.splitlines()
          if ', loss = ' in line]


@pytest.mark.parametrize('damage', ['garbage', 'empty', 'deleted'])
def test_a_damaged_or_lost_state_file_resumes_from_the_newest_checkpoint(run_dir, capsys,
                                                                         damage):
  state = run_dir / cifar10_run.STATE_FILE
  if damage == 'deleted':
    state.unlink()
  else:
    state.write_text('garbage{{{' if damage == 'garbage' else '')
  capsys.readouterr()
  cifar10_train.train(tiny_config(run_dir, max_steps=15, checkpoint_steps=5), tiny_split())
  out = capsys.readouterr().out
  assert f'resumed from {run_dir / "ckpt-10"} at step 10' in out, out
  assert resumed_steps(out) == [15]
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
  cifar10_train.train(tiny_config(run_dir, max_steps=10, checkpoint_steps=5), tiny_split())
  out = capsys.readouterr().out
  assert f'skipped {run_dir / "ckpt-10"}, which does not restore' in out, out
  assert f'resumed from {run_dir / "ckpt-5"} at step 5' in out
  assert resumed_steps(out) == [10]  # ckpt-10 is written again, whole.
  trainer = cifar10_train.Trainer(tiny_config(run_dir, max_steps=10))
  assert trainer.restore_latest() == 10 and not trainer.skipped


def test_unrestorable_checkpoints_refuse_a_start_from_zero_unless_restart(run_dir, capsys):
  for index in run_dir.glob('ckpt-*.index'):
    index.write_bytes(b'garbage')
  refused = 'none of the 2 checkpoints.*--restart'
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match=refused):
    cifar10_train.train(tiny_config(run_dir, max_steps=15), tiny_split())
  indexes = ['ckpt-10.index', 'ckpt-5.index']
  assert sorted(p.name for p in run_dir.glob('ckpt-*.index')) == indexes
  capsys.readouterr()
  cifar10_train.train(tiny_config(run_dir, max_steps=5), tiny_split(), restart=True)
  assert '--restart: moved the checkpoints to' in capsys.readouterr().out
  aside, = run_dir.glob('restarted-*')
  assert sorted(p.name for p in aside.glob('ckpt-*.index')) == indexes
  assert tf.train.latest_checkpoint(str(run_dir)).endswith('ckpt-5')


def test_another_model_is_refused_before_config_json_is_written(run_dir):
  (run_dir / cifar10_run.CONFIG_FILE).unlink()
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='none of the 2 checkpoints'):
    cifar10_train.train(tiny_config(run_dir, model='alex4', max_steps=15), tiny_split())
  assert not (run_dir / cifar10_run.CONFIG_FILE).exists()
  cifar10_train.train(tiny_config(run_dir, max_steps=15), tiny_split())  # The right model.
  assert cifar10_run.read_config(str(run_dir)).model == 'tutorial'


def test_a_second_trainer_on_one_run_folder_is_refused_naming_the_holder(tmp_path):
  with cifar10_run.locked(str(tmp_path)):
    busy = f'in use by another process \\(PID {os.getpid()}\\)'
    with pytest.raises(cifar10_run.RunFolderBusy, match=busy):
      cifar10_train.train(tiny_config(tmp_path, max_steps=5), tiny_split())
  cifar10_train.train(tiny_config(tmp_path, max_steps=5), tiny_split())  # Released: it runs.


def test_a_failed_save_is_a_clear_error_and_the_earlier_checkpoints_stay(run_dir, monkeypatch):
  def full_disk(self, checkpoint_number=None):
    os.makedirs(os.path.join(self.directory, f'ckpt-{checkpoint_number}_temp'))
    raise tf.errors.ResourceExhaustedError(None, None, 'No space left on device')
  monkeypatch.setattr(tf.train.CheckpointManager, 'save', full_disk)
  with pytest.raises(cifar10_train.SaveFailed, match='step 15 .* full or read-only.*ckpt-10'):
    cifar10_train.train(tiny_config(run_dir, max_steps=15), tiny_split())
  assert not list(run_dir.glob('*_temp'))
  kept = [str(run_dir / 'ckpt-10'), str(run_dir / 'ckpt-5')]
  assert cifar10_run.checkpoint_paths(str(run_dir)) == kept
  monkeypatch.undo()
  trainer = cifar10_train.Trainer(tiny_config(run_dir, max_steps=15))
  assert trainer.restore_latest() == 10


def test_a_batch_that_cannot_fit_in_memory_is_refused_with_the_largest_that_fits(tmp_path):
  config = cifar10_run.TrainConfig(train_dir=str(tmp_path), batch_size=2000)
  model = models.build('tutorial', 24)
  per_image = 12 * 78_922  # cifar10_model.training_bytes_per_image, by hand
  available = cifar10_train.MEMORY_RESERVE + 1000 * per_image
  with pytest.raises(cifar10_run.ConfigError,
                     match=r'--batch_size=2,000 does not fit.*0\.90 MiB per image.*'
                           r'use --batch_size=1,000 or less'):
    cifar10_train.check_batch_fits(config, model, available=available)
  cifar10_train.check_batch_fits(dataclasses.replace(config, batch_size=1000), model,
                                 available=available)


# ----------------------------------------------------------------------- mixed precision


def test_mixed_bfloat16_trains_with_float32_variables_and_bfloat16_layers(tmp_path):
  config = tiny_config(tmp_path, max_steps=10, precision='mixed_bfloat16')
  trainer = cifar10_train.Trainer(config)
  assert trainer.model.compute_dtype == tf.bfloat16
  assert {v.dtype for v in list(trainer.variables) + trainer.ema_shadows} == {tf.float32}
  conv = trainer.model.weight_layers()[0]
  assert conv(tf.zeros([1, 32, 32, 3], tf.bfloat16)).dtype == tf.bfloat16
  logits = trainer.model(tf.zeros([2, 32, 32, 3]), training=True)
  assert logits.dtype == tf.float32
  first = cifar10_train.train(config, tiny_split())
  assert math.isfinite(first['loss'])
  restored = cifar10_train.Trainer(config)
  assert restored.restore_latest() == 10


def test_mixed_float16_skips_an_overflowing_step_and_scales_the_loss_dynamically(tmp_path,
                                                                                 monkeypatch):
  monkeypatch.setattr(cifar10_train, 'LOSS_SCALE_GROWTH_STEPS', 2)
  trainer = cifar10_train.Trainer(tiny_config(tmp_path, precision='mixed_float16'))
  assert trainer.model.compute_dtype == tf.float16
  images = tf.constant(cifar10_input.eval_batch(tiny_split(16).images, 32))
  labels = tf.constant(tiny_split(16).labels)
  before = [v.numpy() for v in trainer.variables]
  shadows = [s.numpy() for s in trainer.ema_shadows]
  trainer.loss_scale.assign(3e38)  # The scaled loss overflows: every gradient is inf or NaN.
  trainer.train_step(images, labels)
  assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.variables))
  assert all(np.array_equal(a, s.numpy()) for a, s in zip(shadows, trainer.ema_shadows))
  assert int(trainer.step.numpy()) == 1  # The batch is spent; the weights are not touched.
  assert trainer.loss_scale.numpy() == np.float32(1.5e38) and trainer.good_steps.numpy() == 0
  trainer.loss_scale.assign(1024.0)
  trainer.train_step(images, labels)
  assert not all(np.array_equal(a, v.numpy()) for a, v in zip(before, trainer.variables))
  assert trainer.loss_scale.numpy() == 1024.0 and trainer.good_steps.numpy() == 1
  trainer.train_step(images, labels)  # The second finite step in a row: the scale doubles.
  assert trainer.loss_scale.numpy() == 2048.0 and trainer.good_steps.numpy() == 0
  saved = tf.train.load_checkpoint(trainer.checkpoint.write(str(tmp_path / 'ckpt')))
  names = saved.get_variable_to_shape_map()
  assert any(name.startswith('loss_scale/') for name in names)  # Resumes with its scale.
  assert any(name.startswith('good_steps/') for name in names)
