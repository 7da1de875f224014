"""Tests of the spectral convolution and of the choice of convolution implementation."""

import numpy as np
import pytest
import tensorflow as tf

import cifar10_model as cm
import cifar10_run
import cifar10_spectral
import models
from fixtures import tiny_config


@pytest.mark.parametrize('size,k,channels,outputs,period', [
    (12, 5, 64, 64, None),  # The tutorial's conv2: period 12 + 2 = 14, even.
    (12, 5, 64, 64, 16),  # The full linear convolution's period: the same values.
    (7, 5, 4, 5, None),  # Period 9, odd: no Nyquist frequency.
    (7, 3, 4, 5, None),  # Period 8.
    (6, 3, 3, 2, None),
    (6, 5, 3, 2, None),  # Taps reach 2 past each edge of a 6-pixel image.
    (1, 3, 2, 2, None),  # Every tap but the centre falls on padding.
])
def test_spectral_conv_matches_tensorflows_conv_and_its_gradients(size, k, channels, outputs,
                                                                  period):
  x = tf.random.stateless_normal([3, size, size, channels], seed=[1, 2])
  kernel = tf.random.stateless_normal([k, k, channels, outputs], seed=[3, 4])
  weights = tf.random.stateless_normal([3, size, size, outputs], seed=[5, 6])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    ours = cifar10_spectral.spectral_conv2d(x, kernel, period)
    theirs = tf.nn.conv2d(x, kernel, 1, 'SAME')
    ours_loss, theirs_loss = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
  scale = float(tf.reduce_max(tf.abs(theirs)))
  np.testing.assert_allclose(ours, theirs, atol=1e-5 * scale)
  for ours_grad, theirs_grad in zip(tape.gradient(ours_loss, [x, kernel]),
                                    tape.gradient(theirs_loss, [x, kernel])):
    np.testing.assert_allclose(ours_grad, theirs_grad,
                               atol=1e-5 * float(tf.reduce_max(tf.abs(theirs_grad))))


def test_spectral_conv_by_hand_moves_a_single_pixel():
  # One pixel at (1, 2), one tap at (u, v) = (0, 2) of a 3x3 kernel: output (i, j) reads
  # pixel (i + u - 1, j + v - 1) = (i - 1, j + 1), so the pixel lands at (2, 1) times 3.
  x = np.zeros([1, 4, 4, 1], np.float32)
  x[0, 1, 2, 0] = 1.0
  kernel = np.zeros([3, 3, 1, 1], np.float32)
  kernel[0, 2, 0, 0] = 3.0
  expected = np.zeros([1, 4, 4, 1], np.float32)
  expected[0, 2, 1, 0] = 3.0
  ours = cifar10_spectral.spectral_conv2d(tf.constant(x), tf.constant(kernel))
  np.testing.assert_allclose(ours, expected, atol=1e-6)


def test_spectral_conv_refuses_what_it_cannot_compute():
  with pytest.raises(ValueError, match='stride 1'):
    cifar10_spectral.spectral_convolution(tf.zeros([1, 12, 12, 2]), tf.zeros([5, 5, 2, 2]), 2)
  with pytest.raises(ValueError, match='square kernel of odd size'):
    cifar10_spectral.spectral_conv2d(tf.zeros([1, 12, 12, 2]), tf.zeros([4, 4, 2, 2]))
  with pytest.raises(ValueError, match='square images'):
    cifar10_spectral.spectral_conv2d(tf.zeros([1, 6, 8, 8]), tf.zeros([5, 5, 8, 8]))
  with pytest.raises(ValueError, match='period 13 is below size'):
    cifar10_spectral.spectral_conv2d(tf.zeros([1, 12, 12, 2]), tf.zeros([5, 5, 2, 2]), period=13)


def test_auto_is_spectral_without_a_gpu_and_direct_with_one():
  assert cifar10_spectral.resolve('auto', gpus=[]) == 'spectral'
  assert cifar10_spectral.resolve('auto', gpus=['/physical_device:GPU:0']) == 'direct'
  assert cifar10_spectral.resolve('direct', gpus=[]) == 'direct'
  assert cifar10_spectral.resolve('spectral', gpus=['gpu']) == 'spectral'
  with pytest.raises(ValueError, match='conv must be one of'):
    cifar10_spectral.resolve('fft')


def _spectral_layers(model):
  return [layer.name for layer, _ in model.walk(model.input_shape)
          if getattr(layer, 'convolution', None) is cifar10_spectral.spectral_convolution]


@pytest.mark.parametrize('name,expected', [
    ('tutorial', ['conv2']), ('alex1', ['conv2']), ('nin0', ['nin2_0']), ('alex4', []),
    ('inception1', []), ('squeeze1', []),
])
def test_spectral_mode_picks_exactly_the_shapes_measured_faster(name, expected):
  assert _spectral_layers(models.build(name, conv='spectral')) == expected
  assert _spectral_layers(models.build(name, conv='direct')) == []


def test_tutorial_at_32_pixels_has_no_spectral_layer():
  # Its conv2 sees 16x16 inputs: a shape that was never measured, so it stays direct.
  assert _spectral_layers(models.build('tutorial', image_size=32, conv='spectral')) == []


def test_one_checkpoint_gives_the_same_logits_with_either_convolution(tmp_path):
  config = tiny_config(tmp_path, model='tutorial', image_size=24)
  spectral = cifar10_run.RunState(config, conv='spectral')
  assert _spectral_layers(spectral.model) == ['conv2']
  path = spectral.make_checkpoint().write(str(tmp_path / 'ckpt'))
  direct = cifar10_run.RunState(config, conv='direct')
  direct.restore(path)
  images = tf.random.stateless_normal([8, 24, 24, 3], seed=[7, 8])
  ours, theirs = spectral.model(images), direct.model(images)
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  assert np.array_equal(np.argmax(ours, 1), np.argmax(theirs, 1))


def test_spectral_and_direct_gradients_agree_through_the_whole_model():
  spectral = models.build('tutorial', conv='spectral')
  direct = models.build('tutorial', conv='direct')
  for a, b in zip(direct.trainable_variables, spectral.trainable_variables):
    a.assign(b)
  images = tf.random.stateless_normal([4, 24, 24, 3], seed=[1, 3])
  labels = tf.constant([1, 2, 3, 4])
  gradients = []
  for model in (spectral, direct):
    with tf.GradientTape() as tape:
      cross_entropy, decay = cm.loss(model(images, training=True), labels, model)
      total = cross_entropy + decay
    gradients.append(tape.gradient(total, model.trainable_variables))
  for ours, theirs in zip(*gradients):
    np.testing.assert_allclose(ours, theirs, atol=1e-4 * float(tf.reduce_max(tf.abs(theirs))))
