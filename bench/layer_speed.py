"""Candidate implementations of single layers, timed side by side (a benchmark, not a test).

    .venv/bin/python bench/layer_speed.py [--batch=128] [--layers=trunk ...]

For each layer it times the forward pass and forward + backward of every candidate on the
same input (median of --windows windows of --steps calls), checks that the candidates agree
with the first one, and prints times and ratios to the first. The candidates are the ones
bench/README.md lists as tried: LRN as TensorFlow's op, as a band matmul, as a 1x1 band
convolution (the layer's own); the first conv's filter gradient as TensorFlow's kernel, as
a batch/channel-swapped convolution and as one patches^T x dy GEMM (patches from 25 slices, or
from tf.image.extract_patches); max pooling as TensorFlow's op and as a composite; the tutorial's
convolutional trunk (conv, pool, LRN, conv, LRN, pool) in NHWC and in NCHW layout; the second
conv as TensorFlow's op and as a product of spectra (transforms as GEMMs at the smallest exact
period or at the linear convolution's, or tf.signal's FFT).
--layers=conv_ops times each convolution kernel of a tutorial train step alone (forward,
input gradient, filter gradient) in GFLOP/s, against a float32 2048^3 matmul.
"""

import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_model
import cifar10_spectral
import timing  # bench/, the script's own folder.

_BATCH = flags.DEFINE_integer('batch', 128, 'Batch size of the inputs.', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 20, 'Calls per timed window.', lower_bound=1)
_WINDOWS = flags.DEFINE_integer('windows', 7, 'Timed windows per candidate.', lower_bound=1)
_LAYERS = flags.DEFINE_multi_enum('layers', ['lrn', 'conv1', 'pool', 'trunk', 'conv2'],
                                  ['lrn', 'conv1', 'pool', 'trunk', 'conv2', 'conv_ops'],
                                  'Which comparisons to run.')


def lrn_tensorflow(x):
  return tf.nn.local_response_normalization(x, 4, 1.0, 0.001 / 9.0, 0.75)


def lrn_band_matmul(x):
  channels = x.shape[-1]
  index = np.arange(channels)
  band = tf.constant(np.abs(index[:, None] - index[None, :]) <= 4, tf.float32)
  sums = tf.reshape(tf.matmul(tf.reshape(tf.square(x), [-1, channels]), band), tf.shape(x))
  inverse_root = tf.math.rsqrt(1.0 + 0.001 / 9.0 * sums)
  return x * inverse_root * tf.sqrt(inverse_root)


lrn_layer = cifar10_model.LRN()  # The 1x1 band convolution.


def conv_tensorflow(x, kernel):
  return tf.nn.conv2d(x, kernel, 1, 'SAME')


def conv1_swapped_filter_gradient(x, kernel):
  """Gradient to the kernel only, as a forward conv with batch and channels swapped."""
  @tf.custom_gradient
  def conv(kernel):
    def gradient(dy):
      padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
      swapped = tf.nn.conv2d(tf.transpose(padded, [3, 1, 2, 0]),
                             tf.transpose(dy, [1, 2, 0, 3]), 1, 'VALID')
      return tf.transpose(swapped, [1, 2, 0, 3])
    return tf.nn.conv2d(x, kernel, 1, 'SAME'), gradient
  return conv(kernel)


def _patches_filter_gradient(name, patches_of):
  """A first conv whose kernel gradient is one GEMM: patches^T [75, B*H*W] x dy [B*H*W, 64]."""
  def conv1(x, kernel):
    @tf.custom_gradient
    def conv(kernel):
      def gradient(dy):
        patches = tf.reshape(patches_of(x), [-1, kernel.shape[0] * kernel.shape[1] * x.shape[-1]])
        product = tf.matmul(patches, tf.reshape(dy, [-1, kernel.shape[-1]]), transpose_a=True)
        return tf.reshape(product, kernel.shape)
      return tf.nn.conv2d(x, kernel, 1, 'SAME'), gradient
    return conv(kernel)
  conv1.__name__ = name  # compare() prints it.
  return conv1


def _sliced_patches(x):
  """5x5 SAME patches, (kh, kw, c) innermost like the kernel, from 25 slices of the padding."""
  size = x.shape[1]
  padded = tf.pad(x, [[0, 0], [2, 2], [2, 2], [0, 0]])
  return tf.concat([padded[:, dy:dy + size, dx:dx + size, :]
                    for dy in range(5) for dx in range(5)], axis=-1)


def _extracted_patches(x):
  return tf.image.extract_patches(x, [1, 5, 5, 1], [1, 1, 1, 1], [1, 1, 1, 1], 'SAME')


conv1_sliced_patches_gemm = _patches_filter_gradient('conv1_sliced_patches_gemm',
                                                     _sliced_patches)
conv1_extract_patches_gemm = _patches_filter_gradient('conv1_extract_patches_gemm',
                                                      _extracted_patches)


def pool_tensorflow(x):
  return tf.nn.max_pool2d(x, 3, 2, 'SAME')


def pool_strided_maximum(x):
  """3x3/2 SAME max pooling as the maximum of 9 strided slices of the padded input."""
  size = x.shape[1]
  out = -(-size // 2)
  pad = 2 * out + 1 - size
  x = tf.pad(x, [[0, 0], [pad // 2, pad - pad // 2], [pad // 2, pad - pad // 2], [0, 0]],
             constant_values=tf.float32.min)
  result = None
  for dy in range(3):
    for dx in range(3):
      part = x[:, dy:dy + 2 * out - 1:2, dx:dx + 2 * out - 1:2, :]
      result = part if result is None else tf.maximum(result, part)
  return result


def _trunk(data_format):
  """The tutorial model's conv layers in one layout; takes and returns NHWC tensors."""
  biases = tf.fill([64], 0.1)
  bias = biases if data_format == 'NHWC' else tf.reshape(biases, [64, 1, 1])
  lrn = cifar10_model.LRN(data_format=data_format)  # The model's own layer.

  def trunk(x, kernels):
    if data_format == 'NCHW':
      x = tf.transpose(x, [0, 3, 1, 2])
    y = tf.nn.relu(tf.nn.conv2d(x, kernels[0], 1, 'SAME', data_format=data_format) + bias)
    y = lrn(tf.nn.max_pool2d(y, 3, 2, 'SAME', data_format=data_format))
    y = tf.nn.relu(tf.nn.conv2d(y, kernels[1], 1, 'SAME', data_format=data_format) + bias)
    y = tf.nn.max_pool2d(lrn(y), 3, 2, 'SAME', data_format=data_format)
    return y if data_format == 'NHWC' else tf.transpose(y, [0, 2, 3, 1])
  trunk.__name__ = f'trunk_{data_format.lower()}'
  return trunk


def conv2_spectral_period16(x, kernel):
  """The model's spectral convolution at the full linear convolution's period, size + k - 1."""
  return cifar10_spectral.spectral_conv2d(x, kernel, period=x.shape[1] + kernel.shape[0] - 1)


def conv2_rfft2d(x, kernel):
  """SAME convolution as a product of tf.signal.rfft2d spectra (channels-first for the FFT)."""
  batch, size, _, channels = x.shape
  k, outputs = kernel.shape[0], kernel.shape[-1]
  period, pad = size + k - 1, k // 2
  x = tf.pad(tf.transpose(x, [0, 3, 1, 2]),
             [[0, 0], [0, 0], [pad, k - 1 - pad], [pad, k - 1 - pad]])
  spectrum = tf.transpose(tf.reshape(tf.signal.rfft2d(x), [batch, channels, -1]), [2, 0, 1])
  padded_kernel = tf.pad(tf.transpose(kernel, [2, 3, 0, 1]),
                         [[0, 0], [0, 0], [0, period - k], [0, period - k]])
  weights = tf.transpose(tf.reshape(tf.signal.rfft2d(padded_kernel), [channels, outputs, -1]),
                         [2, 0, 1])
  product = tf.matmul(spectrum, tf.math.conj(weights))  # Correlation: the conjugate kernel.
  product = tf.reshape(tf.transpose(product, [1, 2, 0]), [batch, outputs, period, -1])
  y = tf.signal.irfft2d(product, fft_length=[period, period])[:, :, :size, :size]
  return tf.transpose(y, [0, 2, 3, 1])


def median_ms(function):
  """Median ms per call of `function`, over --windows windows of --steps calls."""
  def run_window():
    for _ in range(_STEPS.value):
      result = function()
    tf.nest.flatten(result)[0].numpy()
  seconds = timing.window_seconds(run_window, warmup=1, windows=_WINDOWS.value)
  return statistics.median(seconds) / _STEPS.value * 1000


def compare(title, candidates, x, kernel=None, input_gradient=False):
  """Times forward and forward + backward of each candidate; gradients w.r.t. the kernel
  (or list of kernels) when there is one, else w.r.t. x; w.r.t. both with input_gradient."""
  weights = tf.random.stateless_normal(candidates[0](x, kernel).shape if kernel is not None
                                       else candidates[0](x).shape, seed=[1, 2])
  print(f'\n{title}')
  reference = None
  for candidate in candidates:
    call = (lambda x, c=candidate: c(x, kernel)) if kernel is not None else candidate

    @tf.function
    def forward(x, call=call):
      return call(x)

    @tf.function
    def backward(x, call=call):
      source = kernel if kernel is not None else x
      if input_gradient:
        source = [x, kernel]
      with tf.GradientTape() as tape:
        tape.watch(source)
        loss = tf.reduce_sum(call(x) * weights)
      return tape.gradient(loss, source)

    gradient = tf.nest.flatten(backward(x))
    if reference is None:
      reference = gradient
    error = max(float(tf.reduce_max(tf.abs(g - r)) / tf.reduce_max(tf.abs(r)))
                for g, r in zip(gradient, reference))
    times = median_ms(lambda: forward(x)), median_ms(lambda: backward(x))
    if candidate is candidates[0]:
      base = times
    name = getattr(candidate, '__name__', type(candidate).__name__)
    print(f'  {name:32} forward {times[0]:7.2f} ms ({base[0] / times[0]:.2f}x)   '
          f'forward+backward {times[1]:7.2f} ms ({base[1] / times[1]:.2f}x)   '
          f'gradient error {error:.1e}')


def conv_ops(batch):
  """Each convolution kernel of a tutorial train step alone, in ms and GFLOP/s."""
  shapes = {'conv1': ([batch, 24, 24, 3], [5, 5, 3, 64]),
            'conv2': ([batch, 12, 12, 64], [5, 5, 64, 64])}
  ceiling = timing.gemm_gflops(windows=_WINDOWS.value)
  print(f'\nconvolution kernels of the tutorial train step alone, B={batch}; float32 '
        f'2048^3 matmul: {ceiling:.1f} GFLOP/s')
  for name, (input_shape, kernel_shape) in shapes.items():
    x = tf.Variable(tf.random.stateless_normal(input_shape, seed=[1, 2]))
    kernel = tf.Variable(tf.random.stateless_normal(kernel_shape, seed=[3, 4]) * 0.05)
    dy = tf.Variable(tf.random.stateless_normal(input_shape[:3] + kernel_shape[-1:],
                                                seed=[5, 6]))
    kernels = {
        'forward': lambda: tf.nn.conv2d(x, kernel, 1, 'SAME'),
        'input gradient': lambda: tf.raw_ops.Conv2DBackpropInput(
            input_sizes=input_shape, filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
            padding='SAME'),
        'filter gradient': lambda: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=kernel_shape, out_backprop=dy, strides=[1, 1, 1, 1],
            padding='SAME'),
    }
    flops = 2 * np.prod(input_shape[:3]) * np.prod(kernel_shape)  # Each of the three alike.
    for kind, call in kernels.items():
      ms = median_ms(tf.function(call))
      gflops = flops / ms / 1e6
      print(f'  {name} {kind:16} {ms:7.2f} ms  {gflops:6.1f} GFLOP/s ({gflops / ceiling:.0%})')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  batch = _BATCH.value
  images = tf.random.stateless_normal([batch, 24, 24, 3], seed=[5, 6])
  kernel = tf.random.stateless_normal([5, 5, 3, 64], seed=[7, 8]) * 0.05
  if 'lrn' in _LAYERS.value:
    after_pool = tf.nn.relu(tf.random.stateless_normal([batch, 12, 12, 64], seed=[3, 4])) * 3
    compare('LRN on [B, 12, 12, 64]', [lrn_tensorflow, lrn_band_matmul, lrn_layer], after_pool)
  if 'conv1' in _LAYERS.value:
    compare('first conv 5x5x3x64 on [B, 24, 24, 3], gradient to the kernel',
            [conv_tensorflow, conv1_swapped_filter_gradient, conv1_sliced_patches_gemm,
             conv1_extract_patches_gemm], images, kernel)
  if 'pool' in _LAYERS.value:
    conv_out = tf.nn.relu(tf.random.stateless_normal([batch, 24, 24, 64], seed=[9, 10]))
    compare('max pool 3x3/2 on [B, 24, 24, 64]', [pool_tensorflow, pool_strided_maximum],
            conv_out)
  if 'trunk' in _LAYERS.value:
    kernels = [kernel, tf.random.stateless_normal([5, 5, 64, 64], seed=[11, 12]) * 0.05]
    compare('tutorial conv trunk on [B, 24, 24, 3], NHWC vs NCHW, gradient to both kernels',
            [_trunk('NHWC'), _trunk('NCHW')], images, kernels)
  if 'conv2' in _LAYERS.value:
    normalized = tf.nn.relu(tf.random.stateless_normal([batch, 12, 12, 64], seed=[13, 14]))
    compare('second conv 5x5x64x64 on [B, 12, 12, 64], gradient to the input and the kernel',
            [conv_tensorflow, cifar10_spectral.spectral_conv2d, conv2_spectral_period16,
             conv2_rfft2d], normalized,
            tf.random.stateless_normal([5, 5, 64, 64], seed=[15, 16]) * 0.05,
            input_gradient=True)
  if 'conv_ops' in _LAYERS.value:
    conv_ops(batch)


if __name__ == '__main__':
  app.run(main)
