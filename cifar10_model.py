"""Layer library, initialisation, weight decay, loss and parameter/FLOP counting.

Every layer is a small tf.Module whose variables are created in `__init__` from explicit
sizes, so a model's variables exist before the first trace, the EMA and a checkpoint restore.
Each layer also knows its output shape, parameter count and FLOPs by the study's formulas
(DESIGN.md section 5), which `count_model` walks to print a per-layer table.

Run as a script it prints that table for one model, or one row per model:
    python cifar10_model.py --model=tutorial [--image_size=24|32]
    python cifar10_model.py --model=all
"""

import contextlib
import dataclasses
import functools
import math
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Hide TensorFlow's start-up INFO lines.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')  # ~1.7x faster here; bench/README.md.

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

INIT_MODES = ('xavier', 'tutorial')
DECAY_MODES = ('study', 'tutorial')
STUDY_WEIGHT_DECAY = 500.0  # The study's WD: coefficient = WD / prod(shape(W)).
TUTORIAL_WEIGHT_DECAY = 0.004  # The tutorial's coefficient on local3 and local4.
XAVIER_GAIN = 1.3  # The study's factor compensating the truncation at 2 stddev.
LRN_FLOPS_PER_ELEMENT = 36  # (3 + 2*r*r + 1) with r = 4, as the study counted it.


@dataclasses.dataclass(frozen=True)
class Regime:
  """How a model's weights are initialised and regularised.

  Attributes:
    init: 'xavier' (the study's, default) or 'tutorial' (explicit stddevs and biases).
    decay: 'study' (WD / prod(shape), WD = 500) or 'tutorial' (0.004).
  """
  init: str = 'xavier'
  decay: str = 'study'

  def __post_init__(self):
    if self.init not in INIT_MODES:
      raise ValueError(f'init must be one of {INIT_MODES}, got {self.init!r}')
    if self.decay not in DECAY_MODES:
      raise ValueError(f'decay must be one of {DECAY_MODES}, got {self.decay!r}')

  def stddev(self, shape, tutorial_stddev):
    return xavier_stddev(shape) if self.init == 'xavier' else tutorial_stddev

  def bias(self, tutorial_bias):
    return 0.0 if self.init == 'xavier' else tutorial_bias

  def decay_coefficient(self, shape):
    """Coefficient for a layer that takes weight decay (the model decides which do)."""
    if self.decay == 'study':
      return STUDY_WEIGHT_DECAY / math.prod(shape)
    return TUTORIAL_WEIGHT_DECAY


def xavier_stddev(shape):
  """The study's Xavier stddev: sqrt(1.3 * 2 / (fan_in + fan_out)).

  For a conv kernel [k, k, C_in, C_out] the fans are k*k*C_in and k*k*C_out; for a dense
  matrix [rows, cols] they are rows and cols (DESIGN.md section 4).
  """
  receptive = math.prod(shape[:-2])
  fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
  return math.sqrt(XAVIER_GAIN * 2.0 / (fan_in + fan_out))


def truncated_normal(shape, stddev):
  return tf.random.truncated_normal(shape, stddev=stddev)


# --------------------------------------------------------------------------- layers


class Layer(tf.Module):
  """Base of every layer: shape, parameter and FLOP bookkeeping.

  `kernels` lists (kernel, decay coefficient) pairs: the matrices that weight decay,
  counting and compression work on.
  """

  kernels = ()

  def output_shape(self, input_shape):
    """(H, W, C) or (D,) out for (H, W, C) or (D,) in."""
    return input_shape

  def walk(self, input_shape):
    """Yields (layer, its input shape) for every leaf layer, in call order."""
    yield self, input_shape

  def fix_weights(self, input_shape):
    """Derives once what calls would derive from the weights each time (`Model.fixed_weights`)."""
    del input_shape

  def release_weights(self):
    """Drops what fix_weights derived: calls read the weights again."""

  def num_params(self):
    return sum(int(np.prod(v.shape)) for v in self.trainable_variables)

  def flops(self, input_shape):
    del input_shape
    return 0


class Conv2D(Layer):
  """k x k convolution, SAME padding, with bias and optional ReLU.

  With `spectral` (stride 1, odd k, square inputs) the convolution is computed as a product
  of spectra (`spectral_conv2d`): the same values, fewer FLOPs for wide 5x5 layers.
  """

  def __init__(self, in_channels, out_channels, kernel_size, *, stddev, bias_init=0.0,
               decay=0.0, relu=True, stride=1, spectral=False, name=None):
    super().__init__(name=name)
    if spectral and (stride != 1 or kernel_size % 2 == 0):
      raise ValueError(f'spectral convolution needs stride 1 and an odd kernel size, got '
                       f'stride {stride} and kernel size {kernel_size}')
    shape = [kernel_size, kernel_size, in_channels, out_channels]
    with self.name_scope:  # Names variables 'conv1/kernel', for summaries and debugging.
      self.kernel = tf.Variable(truncated_normal(shape, stddev), name='kernel')
      self.bias = tf.Variable(tf.fill([out_channels], float(bias_init)), name='bias')
    self.kernels = ((self.kernel, decay),)
    self.relu, self.stride, self.spectral = relu, stride, spectral
    self.fixed_spectrum = None  # Set only inside Model.fixed_weights().

  def fix_weights(self, input_shape):
    if self.spectral:
      self.fixed_spectrum = spectral_kernel(self.kernel, input_shape[0])

  def release_weights(self):
    self.fixed_spectrum = None

  def __call__(self, x, training=False):
    if self.spectral:
      y = spectral_conv2d(x, self.kernel, kernel_spectrum=self.fixed_spectrum) + self.bias
    else:
      y = tf.nn.conv2d(x, self.kernel, self.stride, 'SAME') + self.bias
    return tf.nn.relu(y) if self.relu else y

  def output_shape(self, input_shape):
    h, w, _ = input_shape
    return (math.ceil(h / self.stride), math.ceil(w / self.stride), self.kernel.shape[3])

  def flops(self, input_shape):
    k, _, c_in, f = self.kernel.shape
    h, w, _ = self.output_shape(input_shape)
    return (1 + 2 * c_in * k * k) * f * w * h + (2 * f * w * h if self.relu else 0)


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


def spectral_conv2d(x, kernel, period=None, kernel_spectrum=None):
  """tf.nn.conv2d(x, kernel, 1, 'SAME') as a product of spectra (`spectral_matrices`).

  Per image and channel pair a direct 5x5 convolution on 12x12 costs 2 * 25 * 144 FLOPs;
  here the pairs cost 4 real products per frequency of the 14 x 8 half spectrum, and the
  transforms are shared by all the pairs: about 4x fewer FLOPs for the tutorial's conv2,
  all of them GEMMs, forward and backward (bench/README.md).

  Args:
    x: float32 [B, size, size, C]; size known at trace time.
    kernel: float32 [k, k, C, O], k odd.
    period: of the cyclic convolution; None for the smallest exact one (`spectral_matrices`).
    kernel_spectrum: `spectral_kernel(kernel, size, period)` if already computed.
  """
  size, width, channels = x.shape[1:]
  if size is None or size != width:
    raise ValueError(f'spectral convolution needs square images of known size, got {x.shape}')
  k, outputs = kernel.shape[0], kernel.shape[-1]
  rows, columns, inverse_columns, inverse_rows, _ = spectral_matrices(size, k, period)
  frequencies = columns.shape[0] // 2 * (rows.shape[0] // 2)
  if kernel_spectrum is None:
    kernel_spectrum = spectral_kernel(kernel, size, period)
  elif kernel_spectrum.shape[1] != frequencies:
    raise ValueError(f'kernel_spectrum has {kernel_spectrum.shape[1]} frequencies, the '
                     f'transforms {frequencies}: not spectral_kernel(kernel, {size}, {period})')
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


class Dense(Layer):
  """Fully connected layer with bias and optional ReLU."""

  def __init__(self, in_dim, out_dim, *, stddev, bias_init=0.0, decay=0.0, relu=True,
               name=None):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(truncated_normal([in_dim, out_dim], stddev), name='kernel')
      self.bias = tf.Variable(tf.fill([out_dim], float(bias_init)), name='bias')
    self.kernels = ((self.kernel, decay),)
    self.relu = relu

  def __call__(self, x, training=False):
    y = tf.matmul(x, self.kernel) + self.bias
    return tf.nn.relu(y) if self.relu else y

  def output_shape(self, input_shape):
    return (self.kernel.shape[1],)

  def flops(self, input_shape):
    dim, n = self.kernel.shape
    return (2 * dim + 1) * n + (2 * n if self.relu else 0)


class MaxPool(Layer):
  """3x3 max pooling, stride 2, SAME (the tutorial's)."""

  def __init__(self, size=3, stride=2, name=None):
    super().__init__(name=name)
    self.size, self.stride = size, stride

  def __call__(self, x, training=False):
    return tf.nn.max_pool2d(x, self.size, self.stride, 'SAME')

  def output_shape(self, input_shape):
    h, w, c = input_shape
    return (math.ceil(h / self.stride), math.ceil(w / self.stride), c)


class LRN(Layer):
  """Local response normalization with the tutorial's constants."""

  def __init__(self, depth_radius=4, bias=1.0, alpha=0.001 / 9.0, beta=0.75, data_format='NHWC',
               name=None):
    super().__init__(name=name)
    self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta
    self.data_format = data_format  # 'NCHW' only for bench/layer_speed.py's layout comparison.

  def __call__(self, x, training=False):
    """x / (bias + alpha * sum of x^2 over the 2r+1 nearest channels)^beta.

    The same values as tf.nn.local_response_normalization, with the window sums computed as
    a 1x1 convolution of the squares with a band matrix (alpha on the band, 0 off it): with
    oneDNN this runs forward and backward about twice as fast on the CPU as TensorFlow's
    LRN and LRNGrad kernels (bench/README.md).
    """
    channels = x.shape[self.data_format.index('C')]
    index = np.arange(channels)
    band = np.abs(index[:, None] - index[None, :]) <= self.depth_radius
    band = tf.constant(self.alpha * band[np.newaxis, np.newaxis], tf.float32)
    scale = self.bias + tf.nn.conv2d(tf.square(x), band, 1, 'VALID', data_format=self.data_format)
    if self.beta == 0.75:  # The tutorial's: scale^-3/4 = rsqrt(s) * sqrt(rsqrt(s)), no pow.
      inverse_root = tf.math.rsqrt(scale)
      return x * inverse_root * tf.sqrt(inverse_root)
    return x * tf.pow(scale, -self.beta)

  def flops(self, input_shape):
    return LRN_FLOPS_PER_ELEMENT * math.prod(input_shape)


class Flatten(Layer):
  """[B, H, W, C] -> [B, H*W*C]."""

  def __call__(self, x, training=False):
    return tf.reshape(x, [tf.shape(x)[0], -1])

  def output_shape(self, input_shape):
    return (math.prod(input_shape),)


class GlobalAvgPool(Layer):
  """[B, H, W, C] -> [B, C] by averaging over space (counted as 0 FLOPs, like pooling)."""

  def __call__(self, x, training=False):
    return tf.reduce_mean(x, axis=[1, 2])

  def output_shape(self, input_shape):
    return (input_shape[-1],)


class Dropout(Layer):
  """Drops units with probability `rate` in training only."""

  def __init__(self, rate, name=None):
    super().__init__(name=name)
    self.rate = rate

  def __call__(self, x, training=False):
    return tf.nn.dropout(x, self.rate) if training else x


class Sequential(Layer):
  """Layers applied one after another; also the base of every model."""

  def __init__(self, layers, name=None):
    super().__init__(name=name)
    self.layers = list(layers)

  def __call__(self, x, training=False):
    for layer in self.layers:
      x = layer(x, training=training)
    return x

  @property
  def kernels(self):
    return tuple(pair for layer in self.layers for pair in layer.kernels)

  def output_shape(self, input_shape):
    for layer in self.layers:
      input_shape = layer.output_shape(input_shape)
    return input_shape

  def walk(self, input_shape):
    for layer in self.layers:
      yield from layer.walk(input_shape)
      input_shape = layer.output_shape(input_shape)

  def flops(self, input_shape):
    total = 0
    for layer in self.layers:
      total += layer.flops(input_shape)
      input_shape = layer.output_shape(input_shape)
    return total


class Concat(Layer):
  """Parallel branches on the same input, concatenated along channels."""

  def __init__(self, branches, name=None):
    super().__init__(name=name)
    self.branches = list(branches)

  def __call__(self, x, training=False):
    return tf.concat([branch(x, training=training) for branch in self.branches], axis=-1)

  @property
  def kernels(self):
    return tuple(pair for branch in self.branches for pair in branch.kernels)

  def walk(self, input_shape):
    for branch in self.branches:
      yield from branch.walk(input_shape)

  def output_shape(self, input_shape):
    shapes = [branch.output_shape(input_shape) for branch in self.branches]
    return shapes[0][:-1] + (sum(s[-1] for s in shapes),)

  def flops(self, input_shape):
    return sum(branch.flops(input_shape) for branch in self.branches)


class Model(Sequential):
  """A whole network: a Sequential that remembers its input size."""

  def __init__(self, layers, image_size, name=None):
    super().__init__(layers, name=name)
    self.input_shape = (image_size, image_size, 3)

  @contextlib.contextmanager
  def fixed_weights(self):
    """Layers derive what they need from their weights once, on entry, not in every call.

    For a loop over batches inside one tf.function (the evaluation's): the spectral convs'
    kernel spectra are then computed once per call instead of once per batch. The weights
    must not change inside the block.
    """
    leaves = list(self.walk(self.input_shape))
    for layer, shape in leaves:
      layer.fix_weights(shape)
    try:
      yield
    finally:
      for layer, _ in leaves:
        layer.release_weights()


def conv(regime, name, in_channels, out_channels, kernel_size, *, tutorial_stddev=5e-2,
         tutorial_bias=0.0, relu=True, spectral=False):
  """A Conv2D initialised by `regime` (convolutions never take weight decay here)."""
  shape = [kernel_size, kernel_size, in_channels, out_channels]
  return Conv2D(in_channels, out_channels, kernel_size,
                stddev=regime.stddev(shape, tutorial_stddev),
                bias_init=regime.bias(tutorial_bias), relu=relu, spectral=spectral, name=name)


def dense(regime, name, in_dim, out_dim, *, tutorial_stddev, tutorial_bias=0.0, relu=True,
          decay=True):
  """A Dense initialised by `regime`, with its weight decay when `decay` is set."""
  shape = [in_dim, out_dim]
  return Dense(in_dim, out_dim, stddev=regime.stddev(shape, tutorial_stddev),
               bias_init=regime.bias(tutorial_bias), relu=relu,
               decay=regime.decay_coefficient(shape) if decay else 0.0, name=name)


def kernel_layer_name(kernel):
  """The name of the layer that owns `kernel`: 'conv1' for the variable 'conv1/kernel:0'."""
  return kernel.name.rsplit('/kernel', 1)[0]


def pooled_size(size, pools):
  """Side after `pools` stride-2 SAME poolings: 24 -> 12 -> 6 -> 3."""
  for _ in range(pools):
    size = math.ceil(size / 2)
  return size


# --------------------------------------------------------------------------- loss


def weight_decay_loss(model):
  """Sum over the model's weight matrices of coefficient * l2_loss(W) (l2_loss = sum(W^2)/2)."""
  terms = [decay * tf.nn.l2_loss(kernel) for kernel, decay in model.kernels if decay]
  return tf.add_n(terms) if terms else tf.constant(0.0)


def loss(logits, labels, model):
  """Mean softmax cross-entropy and weight decay, returned separately.

  Args:
    logits: float32 [B, 10].
    labels: int32 [B].
    model: the Model whose weights carry decay coefficients.

  Returns:
    (cross_entropy, weight_decay): two float32 scalars; the total loss is their sum.
  """
  cross_entropy = tf.reduce_mean(
      tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
  return cross_entropy, weight_decay_loss(model)


# --------------------------------------------------------------------------- counting


@dataclasses.dataclass(frozen=True)
class LayerCount:
  name: str
  output_shape: tuple
  params: int
  flops: int


def count_model(model):
  """Per-layer parameter and FLOP counts of a Model at its input size (DESIGN.md section 5)."""
  rows, shape = [], model.input_shape
  for layer in model.layers:
    flops = layer.flops(shape)
    shape = layer.output_shape(shape)
    rows.append(LayerCount(layer.name, shape, layer.num_params(), flops))
  return rows


def format_count_table(rows):
  """The table `python cifar10_model.py` prints, ending with the totals line."""
  lines = [f'{"layer":<18} {"output shape":<16} {"params":>12} {"FLOPs":>14}']
  for row in rows:
    shape = 'x'.join(str(d) for d in row.output_shape)
    lines.append(f'{row.name:<18} {shape:<16} {row.params:>12,} {row.flops:>14,}')
  params = sum(r.params for r in rows)
  flops = sum(r.flops for r in rows)
  lines.append(f'total params={params} flops={flops}')
  return '\n'.join(lines)


# --------------------------------------------------------------------------- checkpoint


def make_checkpoint(model, step, ema_shadows, **extra):
  """The checkpoint layout shared by training, evaluation and compression.

  Args:
    model: the Model (its raw weights).
    step: int64 scalar tf.Variable, the global step.
    ema_shadows: list of tf.Variable, the EMA shadow of each of model.trainable_variables,
      in the same order; restored by position, not by name.
    **extra: further trackables (e.g. pruning masks).
  """
  return tf.train.Checkpoint(model=model, step=step, ema_shadows=list(ema_shadows), **extra)


def checkpoint_step(path):
  """The global step saved in a checkpoint of make_checkpoint's layout, without building it."""
  return int(tf.train.load_checkpoint(path).get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE'))


def format_summary_rows(named_models):
  """One row per model: name, params, MFLOPs (the study's table)."""
  lines = [f'{"model":<10} {"params":>10} {"MFLOPs":>8}']
  for name, model in named_models:
    rows = count_model(model)
    lines.append(f'{name:<10} {sum(r.params for r in rows):>10,} '
                 f'{sum(r.flops for r in rows) / 1e6:>8.2f}')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])} (use --model=NAME)')
  import models  # pylint: disable=g-import-not-at-top
  size = _IMAGE_SIZE.value
  if _MODEL.value == 'all':
    print(f'every model at {size}x{size}x3')
    print(format_summary_rows((name, models.build(name, size)) for name in models.MODELS))
    return
  try:
    model = models.build(_MODEL.value, image_size=size)
  except ValueError as e:
    raise app.UsageError(str(e))
  print(f'{_MODEL.value} at {size}x{size}x3')
  print(format_count_table(count_model(model)))


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  _MODEL = flags.DEFINE_string('model', 'tutorial',
                               "Model name (see models/__init__.py), or 'all' for a summary.")
  # Flags are defined here, not at import, so binaries importing this module keep theirs.
  _IMAGE_SIZE = flags.DEFINE_integer('image_size', 24, 'Input side in pixels: 24 or 32.')
  flags.register_validator('image_size', lambda v: v in (24, 32), 'must be 24 or 32')
  app.run(main)
