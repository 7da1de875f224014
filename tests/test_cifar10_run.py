"""Tests of the run folder: config.json, the checkpoint layout, finding a run's checkpoint."""

import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

import cifar10_run
import cifar10_spectral
import cifar10_trainer
import cifar10_config
from fixtures import tiny_config, tiny_split


def test_train_dir_of_another_model_is_refused(tmp_path):
  cifar10_run.write_config(tiny_config(tmp_path, image_size=32))
  with pytest.raises(cifar10_config.ConfigError, match='image_size=32'):
    cifar10_run.write_config(tiny_config(tmp_path, image_size=24, augment=True))


def test_config_file_round_trip_and_changes(tmp_path):
  config = tiny_config(tmp_path, seed=5)
  assert cifar10_run.write_config(config) == []
  assert cifar10_run.read_config(str(tmp_path)) == config
  assert cifar10_run.write_config(tiny_config(tmp_path, seed=5, learning_rate=0.01)) == [
      'learning_rate: 0.1 -> 0.01']


def test_unreadable_config_file_is_a_config_error(tmp_path):
  (tmp_path / cifar10_run.CONFIG_FILE).write_text('{"model": "tutorial", "nope": 1}')
  with pytest.raises(cifar10_config.ConfigError, match='config.json is unreadable'):
    cifar10_run.read_config(str(tmp_path))


def test_a_config_json_without_read_permission_or_of_an_unknown_model_is_a_config_error(
    tmp_path, monkeypatch):
  path = tmp_path / cifar10_run.CONFIG_FILE
  path.write_text('{"model": "vgg"}')  # Hand-edited: no such model.
  with pytest.raises(cifar10_config.ConfigError, match="config.json is unreadable.*'vgg' is unkn"):
    cifar10_run.read_config(str(tmp_path))
  path.unlink()
  cifar10_run.write_config(tiny_config(tmp_path))

  def refuse(file, *args, **kwargs):  # root reads any file: the kernel's refusal, simulated
    del args, kwargs
    raise PermissionError(13, 'Permission denied', str(file))
  monkeypatch.setattr(cifar10_run, 'open', refuse, raising=False)
  with pytest.raises(cifar10_config.ConfigError, match='config.json is unreadable.*Permission'):
    cifar10_run.read_config(str(tmp_path))


def test_a_config_json_from_before_the_conv_flag_still_reads(tmp_path):
  config = tiny_config(tmp_path)
  record = {key: value for key, value in json.loads(
      json.dumps(dataclasses.asdict(config))).items() if key != 'conv'}
  (tmp_path / cifar10_run.CONFIG_FILE).write_text(json.dumps(record))
  assert cifar10_run.read_config(str(tmp_path)).conv == cifar10_spectral.resolve('auto')


def test_checkpoint_round_trip_restores_weights_step_and_shadows(tmp_path):
  config = tiny_config(tmp_path)
  state = cifar10_run.RunState(config)
  state.step.assign(7)
  state.train_seconds.assign(12.5)
  for shadow in state.ema_shadows:
    shadow.assign(shadow * 2 + 1)
  path = state.make_checkpoint().write(str(tmp_path / 'ckpt'))
  other = cifar10_run.RunState(config)
  other.make_checkpoint().read(path).assert_consumed()
  assert int(other.step.numpy()) == 7 and float(other.train_seconds.numpy()) == 12.5
  assert cifar10_run.checkpoint_step(path) == 7
  for a, b in zip([*state.variables, *state.ema_shadows], [*other.variables, *other.ema_shadows]):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  other.restore_ema_shadows()
  for variable, shadow in zip(other.variables, state.ema_shadows):
    np.testing.assert_array_equal(variable.numpy(), shadow.numpy())


def test_restore_reads_a_checkpoint_with_extra_state_and_refuses_another_model(tmp_path):
  config = tiny_config(tmp_path)
  state = cifar10_run.RunState(config)
  extra = [tf.Variable(tf.ones([3]))]
  path = state.make_checkpoint(masks=extra).write(str(tmp_path / 'ckpt'))
  cifar10_run.RunState(config).restore(path)  # The masks are not this layout's: ignored.
  other = cifar10_run.RunState(tiny_config(tmp_path, model='alex4'))
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='does not match the model'):
    other.restore(path)


def test_latest_run_names_the_flag_when_there_is_no_run(tmp_path, two_checkpoints):
  with pytest.raises(cifar10_config.ConfigError, match='--source_dir=.* holds no trained run'):
    cifar10_run.latest_run(str(tmp_path), '--source_dir')
  config, checkpoint = cifar10_run.latest_run(two_checkpoints.train_dir)
  assert config.max_steps == 10 and checkpoint.endswith('ckpt-10')


def test_a_truncated_checkpoint_is_unreadable_not_a_traceback(tmp_path):
  config = tiny_config(tmp_path)
  state = cifar10_run.RunState(config)
  path = state.make_checkpoint().write(str(tmp_path / 'ckpt'))
  data = tmp_path / 'ckpt.data-00000-of-00001'
  data.write_bytes(data.read_bytes()[:1000])
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='is unreadable'):
    cifar10_run.RunState(config).restore(path)
  (tmp_path / 'ckpt.index').write_bytes(b'garbage')
  with pytest.raises(cifar10_run.UnreadableCheckpoint, match='is unreadable'):
    cifar10_run.checkpoint_step(path)




@pytest.fixture(scope='module', name='two_checkpoints')
def fixture_two_checkpoints(tmp_path_factory):
  """A tiny budget0 run (BatchNorm) with checkpoints at steps 5 and 10, at 32x32: budget0's
  own size."""
  tf.random.set_seed(0)
  config = tiny_config(tmp_path_factory.mktemp('loader') / 'run', model='budget0',
                       image_size=32, max_steps=10, checkpoint_steps=5, optimizer='nesterov',
                       weight_decay='l2', moving_average_decay=0.5)
  cifar10_trainer.train(config, tiny_split())
  return config


def test_load_inference_model_opens_the_newest_checkpoint_with_its_ema_or_raw_weights(
    two_checkpoints):
  train_dir = two_checkpoints.train_dir
  ema = cifar10_run.load_inference_model(train_dir)
  raw = cifar10_run.load_inference_model(train_dir, ema=False)
  assert (ema.step, ema.weights, raw.weights) == (10, 'ema', 'raw')
  assert ema.checkpoint.endswith('ckpt-10') and not ema.batchnorm_folded
  reader = tf.train.load_checkpoint(ema.checkpoint)
  shadow = reader.get_tensor('ema_shadows/0/.ATTRIBUTES/VARIABLE_VALUE')
  np.testing.assert_array_equal(ema.model.trainable_variables[0].numpy(), shadow)
  assert not np.array_equal(raw.model.trainable_variables[0].numpy(), shadow)


def test_load_inference_model_folds_batchnorm_into_the_same_logits(two_checkpoints):
  loaded = cifar10_run.load_inference_model(two_checkpoints.train_dir, conv='direct',
                                            fold_batchnorm=True)
  assert loaded.batchnorm_folded and loaded.model is not loaded.state.model
  images = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2])
  np.testing.assert_allclose(loaded.model(images).numpy(), loaded.state.model(images).numpy(),
                             rtol=1e-4, atol=1e-4)


def test_load_inference_model_reads_a_given_checkpoint_into_a_given_state(two_checkpoints):
  state = cifar10_run.RunState(two_checkpoints)
  older = cifar10_run.checkpoint_paths(two_checkpoints.train_dir)[1]
  assert cifar10_run.load_inference_model(None, checkpoint=older, state=state).step == 5
  newest = cifar10_run.load_inference_model(two_checkpoints.train_dir, state=state)
  assert newest.step == 10 and newest.state is state


def test_load_inference_model_of_a_folder_without_a_run_names_the_flag(tmp_path):
  with pytest.raises(cifar10_config.ConfigError, match='--source=.*holds no trained run'):
    cifar10_run.load_inference_model(str(tmp_path), flag='--source')
  state = cifar10_run.RunState(tiny_config(tmp_path))
  with pytest.raises(cifar10_config.ConfigError, match='--checkpoint_dir=.*holds no checkpoint'):
    cifar10_run.load_inference_model(str(tmp_path), state=state)


@pytest.mark.parametrize('target', ['a file', 'nothing'])
def test_a_lock_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path, target):
  victim = tmp_path / 'precious.txt'
  if target == 'a file':
    victim.write_text('keep me')
  run_dir = tmp_path / 'run'
  run_dir.mkdir()
  (run_dir / cifar10_run.LOCK_FILE).symlink_to(victim)
  with pytest.raises(cifar10_config.ConfigError, match='is a symbolic link'):
    with cifar10_run.locked(str(run_dir)):
      pass
  assert victim.read_text() == 'keep me' if target == 'a file' else not victim.exists()
