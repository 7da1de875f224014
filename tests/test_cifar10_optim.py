"""Tests of the optimizers, schedules and loss scaling (cifar10_optim.py), against hand
computation, and of an optimizer inside the trainer."""

import math
import types

import numpy as np
import pytest
import tensorflow as tf

import cifar10_config
import cifar10_optim
import cifar10_trainer
from fixtures import TINY_SIZE, tiny_config, tiny_split


def direct(variable, update, *args):
  return update(variable, *args)


def run_optimizer(name, gradients, rate=0.1, start=(1.0, -2.0), **hyper):
  """The weights after each update of a two-entry variable by optimizer `name`."""
  variable = tf.Variable(start)
  config = types.SimpleNamespace(**dict(dict(momentum=0.9), **hyper))
  optimizer = cifar10_optim.make_optimizer(name, [variable], [0.0], config)
  weights = []
  for step, gradient in enumerate(gradients):
    optimizer.apply([tf.constant(gradient)], tf.constant(rate), tf.constant(step, tf.int64),
                    direct)
    weights.append(variable.numpy().tolist())
  return weights, optimizer


def test_sgd_steps_against_the_gradient():
  weights, optimizer = run_optimizer('sgd', [[1.0, 2.0], [0.5, -1.0]])
  np.testing.assert_allclose(weights, [[0.9, -2.2], [0.85, -2.1]], rtol=1e-6)
  assert optimizer.checkpoint_state() == {}


def test_momentum_follows_the_heavy_ball_formula():
  # v1 = g1 = (1, 2); w1 = w0 - 0.1 v1. v2 = 0.9 v1 + g2 = (1.4, 0.8); w2 = w1 - 0.1 v2.
  weights, optimizer = run_optimizer('momentum', [[1.0, 2.0], [0.5, -1.0]])
  np.testing.assert_allclose(weights, [[0.9, -2.2], [0.76, -2.28]], rtol=1e-6)
  np.testing.assert_allclose(optimizer.velocities[0].numpy(), [1.4, 0.8], rtol=1e-6)
  assert list(optimizer.checkpoint_state()) == ['velocities']


def test_nesterov_steps_along_the_gradient_plus_momentum_times_the_new_velocity():
  # w1 = w0 - 0.1 (g1 + 0.9 v1) = w0 - 0.1 * 1.9 g1; v2 = (1.4, 0.8),
  # w2 = w1 - 0.1 (g2 + 0.9 v2) = w1 - 0.1 (1.76, -0.28).
  weights, _ = run_optimizer('nesterov', [[1.0, 2.0], [0.5, -1.0]])
  np.testing.assert_allclose(weights, [[0.81, -2.38], [0.634, -2.352]], rtol=1e-6)


def test_a_skipped_step_of_loss_scaling_leaves_the_velocity_alone():
  variable = tf.Variable([1.0])
  optimizer = cifar10_optim.make_optimizer('momentum', [variable], [0.0],
                                           types.SimpleNamespace(momentum=0.9))
  optimizer.apply([tf.constant([1.0])], tf.constant(0.1), tf.constant(0, tf.int64), direct)
  optimizer.apply([tf.constant([0.0])], tf.constant(0.0), tf.constant(1, tf.int64), direct,
                  finite=tf.constant(False))
  assert optimizer.velocities[0].numpy().tolist() == [1.0]


def test_every_optimizer_describes_itself_for_the_flag_help():
  assert all(isinstance(entry[0], str) and issubclass(entry[1], cifar10_optim.Optimizer)
             for entry in cifar10_optim.OPTIMIZERS.values())
  assert 'sgd (plain)' in cifar10_config.field_help('optimizer')


def rates(schedule, steps):
  return [float(schedule(tf.constant(s, tf.int64))) for s in steps]


def test_staircase_schedule_drops_tenfold_every_350_epochs():
  config = cifar10_config.TrainConfig(lr_schedule='staircase')
  assert config.decay_steps == 136_718
  np.testing.assert_allclose(rates(config.schedule(), [0, 136_717, 136_718, 2 * 136_718]),
                             [0.1, 0.1, 0.01, 0.001], rtol=1e-6)


def test_constant_schedule():
  assert rates(cifar10_config.TrainConfig().schedule(), [10**6]) == [pytest.approx(0.1)]


def test_warmup_linear_rises_over_the_warmup_then_falls_to_zero_at_max_steps():
  config = cifar10_config.TrainConfig(lr_schedule='warmup_linear', learning_rate=0.4,
                                      warmup_steps=100, max_steps=1100)
  # Step s of the warm-up: 0.4 (s + 1) / 100; then 0.4 (1 - (s - 100) / 1000).
  np.testing.assert_allclose(rates(config.schedule(), [0, 49, 99, 100, 600, 1099, 1100]),
                             [0.004, 0.2, 0.4, 0.4, 0.2, 0.0004, 0.0], rtol=1e-5, atol=1e-7)


def test_warmup_cosine_is_half_the_rate_halfway_through_the_decay():
  config = cifar10_config.TrainConfig(lr_schedule='warmup_cosine', learning_rate=0.2,
                                      warmup_steps=10, max_steps=110)
  # 0.2 * (1 + cos(pi * p)) / 2 at p = (s - 10) / 100: p = 0.5 -> 0.1, p = 0.25 -> 0.1707.
  np.testing.assert_allclose(rates(config.schedule(), [4, 10, 35, 60, 110]),
                             [0.1, 0.2, 0.2 * (1 + math.sqrt(0.5)) / 2, 0.1, 0.0], atol=1e-6)


def test_onecycle_peaks_at_a_quarter_of_max_steps_and_ends_at_zero():
  config = cifar10_config.TrainConfig(lr_schedule='onecycle', learning_rate=0.2, max_steps=400)
  # Up as 0.2 (s + 1) / 100, down as 0.2 (400 - s) / 300.
  np.testing.assert_allclose(rates(config.schedule(), [0, 49, 99, 100, 250, 399]),
                             [0.002, 0.1, 0.2, 0.2, 0.1, 0.2 / 300], rtol=1e-5)


def test_a_schedule_that_starts_later_counts_its_steps_from_its_first_step():
  # A fine-tuning from step 1000 to 1100, linear from 0.02 to 0: 0.02 (1 - (s - 1000) / 100).
  schedule = cifar10_optim.Schedule('warmup_linear', 0.02, last_step=1100, first_step=1000)
  np.testing.assert_allclose(rates(schedule, [1000, 1050, 1099, 1100]),
                             [0.02, 0.01, 0.0002, 0.0], rtol=1e-5, atol=1e-9)
  assert repr(schedule) == ('warmup_linear at 0.02 from step 1,000 to 1,100, warm-up 0 steps')


def test_loss_scale_halves_on_an_overflow_and_doubles_after_enough_finite_steps(monkeypatch):
  monkeypatch.setattr(cifar10_optim, 'LOSS_SCALE_GROWTH_STEPS', 2)
  scale = cifar10_optim.LossScale()
  assert not bool(scale.adjust([tf.constant([np.inf])], direct))
  assert scale.scale.numpy() == 2.0 ** 14 and scale.good_steps.numpy() == 0
  assert bool(scale.adjust([tf.constant([1.0])], direct))
  assert scale.scale.numpy() == 2.0 ** 14 and scale.good_steps.numpy() == 1
  scale.adjust([tf.constant([1.0])], direct)
  assert scale.scale.numpy() == 2.0 ** 15 and scale.good_steps.numpy() == 0
  assert sorted(scale.checkpoint_state()) == ['good_steps', 'loss_scale']


def test_adamw_follows_its_formula_over_two_steps():
  # Step 1: m = 0.1 g, v = 0.001 g^2, so m_hat / sqrt(v_hat) = sign(g): w -= 0.1 (1, 1).
  # Step 2: m = (0.14, 0.08), v = (0.001249, 0.004996); corrections 0.19 and 0.001999:
  # m_hat = (0.736842, 0.421053), sqrt(v_hat) = (0.790451, 1.580902): w -= 0.1 (0.932179,
  # 0.266337).
  weights, optimizer = run_optimizer('adamw', [[1.0, 2.0], [0.5, -1.0]])
  np.testing.assert_allclose(weights, [[0.9, -2.1], [0.806782, -2.126634]], rtol=1e-5)
  np.testing.assert_allclose(optimizer.first_moments[0].numpy(), [0.14, 0.08], rtol=1e-5)
  np.testing.assert_allclose(optimizer.second_moments[0].numpy(), [0.001249, 0.004996],
                             rtol=1e-5)
  assert sorted(optimizer.checkpoint_state()) == ['adam_m', 'adam_updates', 'adam_v']
  assert optimizer.updates.numpy() == 2


def test_adamw_counts_its_own_updates_not_the_global_step():
  # A fine-tuning from step 1000 with fresh moments: its first update is a first update
  # (w -= 0.1 sign(g)); a step skipped by loss scaling changes nothing and is not counted.
  variable = tf.Variable([1.0, -2.0])
  optimizer = cifar10_optim.make_optimizer('adamw', [variable], [0.0],
                                           types.SimpleNamespace(momentum=0.9))
  optimizer.apply([tf.constant([0.0, 0.0])], tf.constant(0.0), tf.constant(1000, tf.int64),
                  direct, finite=tf.constant(False))
  assert variable.numpy().tolist() == [1.0, -2.0] and optimizer.updates.numpy() == 0
  optimizer.apply([tf.constant([1.0, 2.0])], tf.constant(0.1), tf.constant(1001, tf.int64),
                  direct, finite=tf.constant(True))
  np.testing.assert_allclose(variable.numpy(), [0.9, -2.1], rtol=1e-6)


def test_adamw_decays_each_weight_by_its_own_coefficient_outside_the_moments():
  # lambda = 0.1: w1 = w0 - 0.1 (sign(g) + 0.1 w0) = (1 - 0.11, -2 - 0.08).
  variable = tf.Variable([1.0, -2.0])
  optimizer = cifar10_optim.make_optimizer('adamw', [variable], [0.1],
                                           types.SimpleNamespace(momentum=0.9))
  optimizer.apply([tf.constant([1.0, 2.0])], tf.constant(0.1), tf.constant(0, tf.int64),
                  direct)
  np.testing.assert_allclose(variable.numpy(), [0.89, -2.08], rtol=1e-6)
  np.testing.assert_allclose(optimizer.first_moments[0].numpy(), [0.1, 0.2], rtol=1e-6)


def test_adamw_leaves_the_decay_out_of_the_gradient_and_saves_its_moments(tmp_path):
  images = tf.constant(np.stack([np.full((TINY_SIZE, TINY_SIZE, 3), i / 16, np.float32)
                                 for i in range(16)]))
  labels = tf.constant(np.arange(16) % 10, tf.int32)
  gradients = {}
  for optimizer in ('sgd', 'adamw'):
    tf.random.set_seed(0)
    trainer = cifar10_trainer.Trainer(tiny_config(tmp_path / optimizer, optimizer=optimizer,
                                                  weight_decay='l2', l2_decay=0.5))
    batch_gradients, _ = trainer._gradients(images, labels)  # pylint: disable=protected-access
    gradients[optimizer] = [g.numpy() for g in batch_gradients]
  kernel = [i for i, v in enumerate(trainer.variables) if v is trainer.model.kernels[0][0]][0]
  # SGD's gradient holds 0.5 W of the L2 term; AdamW's does not (it decays W itself).
  np.testing.assert_allclose(gradients['sgd'][kernel] - gradients['adamw'][kernel],
                             0.5 * trainer.variables[kernel].numpy(), rtol=1e-3, atol=1e-6)
  config = tiny_config(tmp_path / 'run', optimizer='adamw', learning_rate=1e-3, max_steps=5,
                       checkpoint_steps=5)
  cifar10_trainer.train(config, tiny_split())
  saved = tf.train.load_checkpoint(str(tmp_path / 'run' / 'ckpt-5'))
  resumed = cifar10_trainer.Trainer(config)
  assert resumed.restore_latest() == 5
  key = [k for k in saved.get_variable_to_shape_map() if k.startswith('adam_v/0/')][0]
  np.testing.assert_array_equal(saved.get_tensor(key),
                                resumed.optimizer.second_moments[0].numpy())
  assert np.abs(resumed.optimizer.second_moments[0].numpy()).max() > 0
