"""The spectral convolution, and the choice of convolution implementation for a model.

A model says "5x5 convolution, 64 channels"; which kernel computes it is chosen when the
model is built (`models.build(..., conv=...)`), so one checkpoint runs with either:

  direct    tf.nn.conv2d (oneDNN on a CPU, cuDNN on a GPU) for every convolution.
  spectral  the layers of a shape in FASTER_ON_CPU as a product of spectra
            (`spectral_conv2d`), every other layer direct.
  auto      spectral when TensorFlow sees no GPU, direct when it sees one: the spectral
            path was only measured faster on a CPU, and exports want plain CONV_2D ops.

Both compute the same function from the same variables (tests: outputs and gradients equal
to tf.nn.conv2d's within 1e-5; a checkpoint gives the same logits either way).
"""

import functools

import numpy as np
import tensorflow as tf

import cifar10_model

CONV_MODES = ('auto', 'direct', 'spectral')
CONV_HELP = ('How convolutions are computed: direct (tf.nn.conv2d), spectral (a product of '
             'spectra where that was measured faster on a CPU) or auto (spectral without a '
             'GPU, direct with one). The same checkpoint runs with either.')
# Convolutions measured faster as a product of spectra than oneDNN's direct kernel on a
# 2-core CPU, as (input side, kernel size, input channels, output channels): the tutorial's
# conv2 (bench/README.md: forward 1.3x, forward + backward 2x, train step 1.13-1.32x).
FASTER_ON_CPU = frozenset({(12, 5, 64, 64)})


def resolve(mode, gpus=None):
  """'direct' or 'spectral' for a --conv value; `auto` looks at the visible GPUs.

  Args:
    mode: one of CONV_MODES.
    gpus: the visible GPU devices; default tf.config.list_physical_devices('GPU').
  """
  if mode not in CONV_MODES:
    raise ValueError(f'conv must be one of {CONV_MODES}, got {mode!r}')
  if mode != 'auto':
    return mode
  if gpus is None:
    gpus = tf.config.list_physical_devices('GPU')
  return 'direct' if gpus else 'spectral'


def pays(input_shape, kernel_shape):
  """Whether a stride-1 convolution of this shape is in FASTER_ON_CPU.

  Args:
    input_shape: (H, W, C) of the layer's input.
    kernel_shape: [k, k, C_in, C_out].
  """
  h, w, _ = input_shape
  k, _, c_in, c_out = kernel_shape
  return h == w and (h, k, c_in, c_out) in FASTER_ON_CPU


def spectral_convolution(x, kernel, stride):
  """A Conv2D.convolution: `spectral_conv2d` (stride 1 only)."""
  if stride != 1:
    raise ValueError(f'the spectral convolution needs stride 1, got {stride}')
  if x.dtype == tf.float32:
    return spectral_conv2d(x, kernel)
  # Mixed precision: the transforms sum hundreds of terms, too many for 8 bits of mantissa;
  # this layer computes in float32 between two casts.
  y = spectral_conv2d(tf.cast(x, tf.float32), tf.cast(kernel, tf.float32))
  return tf.cast(y, x.dtype)


def apply(model, mode):
  """Sets the convolution of each of the model's Conv2D layers for a resolved `mode`.

  Returns:
    The names of the layers that compute spectrally.
  """
  if mode not in ('direct', 'spectral'):
    raise ValueError(f"mode must be 'direct' or 'spectral' (resolve 'auto' first), got {mode!r}")
  spectral = []
  for layer, input_shape in model.walk(model.input_shape):
    if isinstance(layer, cifar10_model.Conv2D):
      fast = mode == 'spectral' and layer.stride == 1 and pays(input_shape, layer.kernel.shape)
      layer.convolution = spectral_convolution if fast else cifar10_model.direct_conv2d
      if fast:
        spectral.append(layer.name)
  return spectral


# --------------------------------------------------------------------------- the algebra


@functools.lru_cache(maxsize=None)
def spectral_matrices(size, k, period=None):
  """The five real matrices of `spectral_conv2d` for size x size images and k x k kernels.

  A SAME k x k convolution equals a cyclic one on the zero-padded image when the period is
  at least size + k // 2: the taps that reach past either edge of the image then land on
  padding zeros only (the ones past the left edge wrap onto the same zeros as those past the
  right edge), so no image pixel wraps around. That smallest period is the default (14 for
  12x12 images and 5x5 kernels, against size + k - 1 = 16 for the full linear convolution).
  A cyclic convolution is a product of discrete Fourier transforms. Each transform here is
  a matrix with the padding and the crop folded in, applied as a GEMM; complex numbers are
  pairs of real rows (real part, imaginary part).

  Returns float32 NumPy arrays:
    rows [2 half, size]: a row's real pixels to the first half = period // 2 + 1 frequencies
      of its spectrum (the rest is their conjugates).
    columns [2 period, 2 size]: complex transform along the columns; input rows ordered
      (pixel, re/im), output rows (re/im, frequency).
    inverse_columns [2 size, 2 period]: its inverse, output (pixel, re/im), with the 1/period^2
      of both inverse transforms.
    inverse_rows [size, 2 half]: half a spectrum back to a row's real pixels.
    kernel [2 period half, k k]: a kernel's spectrum, real parts then imaginary parts.
  """
  pad = k // 2
  period = period or size + pad
  if period < size + pad:
    raise ValueError(f'period {period} is below size + k // 2 = {size + pad}: pixels would wrap')
  half = period // 2 + 1
  pixel, frequency, half_frequency = np.arange(size), np.arange(period), np.arange(half)
  angle = 2 * np.pi * np.outer(half_frequency, pixel) / period
  rows = np.concatenate([np.cos(angle), -np.sin(angle)])  # e^{-i angle} = cos - i sin.
  angle = 2 * np.pi * np.outer(frequency, pixel) / period
  cos, sin = np.cos(angle), np.sin(angle)
  columns = np.zeros([2, period, size, 2])
  columns[0, :, :, 0], columns[0, :, :, 1] = cos, sin
  columns[1, :, :, 0], columns[1, :, :, 1] = -sin, cos
  inverse_columns = np.zeros([size, 2, 2, period])
  inverse_columns[:, 0, 0], inverse_columns[:, 0, 1] = cos.T, -sin.T
  inverse_columns[:, 1, 0], inverse_columns[:, 1, 1] = sin.T, cos.T
  # The spectrum of a real row is Hermitian: every frequency of the half but 0 (and
  # period / 2 when the period is even) stands for itself and its conjugate.
  weight = np.full(half, 2.0)
  weight[0] = 1.0
  if period % 2 == 0:
    weight[-1] = 1.0
  angle = 2 * np.pi * np.outer(pixel, half_frequency) / period
  inverse_rows = np.concatenate([np.cos(angle) * weight, -np.sin(angle) * weight], axis=1)
  # Cross-correlation (as tf.nn.conv2d): tap u of the kernel meets pixel i + u - pad of
  # output i, i.e. sits at cyclic offset pad - u.
  taps = pad - np.arange(k)
  phase = (np.outer(frequency, taps)[:, None, :, None] +
           np.outer(half_frequency, taps)[None, :, None, :])
  angle = 2 * np.pi * phase / period
  kernel = np.stack([np.cos(angle), -np.sin(angle)])
  return tuple(m.astype(np.float32) for m in (
      rows, columns.reshape(2 * period, 2 * size),
      inverse_columns.reshape(2 * size, 2 * period) / period ** 2, inverse_rows,
      kernel.reshape(2 * period * half, k * k)))


def spectral_kernel(kernel, size, period=None):
  """The kernel's half spectrum for `spectral_conv2d` on size x size images: [2, F, C, O]."""
  k, _, channels, outputs = kernel.shape
  kernel_matrix = spectral_matrices(size, k, period)[-1]
  return tf.reshape(tf.matmul(kernel_matrix, tf.reshape(kernel, [k * k, -1])),
                    [2, kernel_matrix.shape[0] // 2, channels, outputs])


def spectral_conv2d(x, kernel, period=None):
  """tf.nn.conv2d(x, kernel, 1, 'SAME') as a product of spectra (`spectral_matrices`).

  Per image and channel pair a direct 5x5 convolution on 12x12 costs 2 * 25 * 144 FLOPs;
  here the pairs cost 4 real products per frequency of the 14 x 8 half spectrum, and the
  transforms are shared by all the pairs: about 4x fewer FLOPs for the tutorial's conv2,
  all of them GEMMs, forward and backward.

  Args:
    x: float32 [B, size, size, C]; size known at trace time.
    kernel: float32 [k, k, C, O], k odd.
    period: of the cyclic convolution; None for the smallest exact one (`spectral_matrices`).
  """
  size, width, channels = x.shape[1:]
  if size is None or size != width:
    raise ValueError(f'spectral convolution needs square images of known size, got {x.shape}')
  k, outputs = kernel.shape[0], kernel.shape[-1]
  if k % 2 == 0 or kernel.shape[1] != k:
    raise ValueError(f'spectral convolution needs a square kernel of odd size, got {kernel.shape}')
  rows, columns, inverse_columns, inverse_rows, _ = spectral_matrices(size, k, period)
  frequencies = columns.shape[0] // 2 * (rows.shape[0] // 2)
  kernel_spectrum = spectral_kernel(kernel, size, period)
  batch = tf.shape(x)[0]
  x = tf.reshape(tf.transpose(x, [1, 2, 0, 3]), [size, size, -1])  # [h, w, B*C].
  half_spectra = tf.matmul(rows, x)  # [h, (re/im, frequency), B*C].
  spectrum = tf.matmul(columns, tf.reshape(half_spectra, [2 * size, -1]))
  spectrum = tf.reshape(spectrum, [2, frequencies, batch, channels])
  (x_re, x_im), (w_re, w_im) = tf.unstack(spectrum), tf.unstack(kernel_spectrum)
  product = tf.concat([tf.matmul(x_re, w_re) - tf.matmul(x_im, w_im),
                       tf.matmul(x_re, w_im) + tf.matmul(x_im, w_re)], axis=0)
  back = tf.matmul(inverse_columns, tf.reshape(product, [columns.shape[0], -1]))
  y = tf.matmul(inverse_rows, tf.reshape(back, [size, rows.shape[0], -1]))  # [h, w, B*O].
  return tf.transpose(tf.reshape(y, [size, size, batch, outputs]), [2, 0, 1, 3])
