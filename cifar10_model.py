"""The layer library: initialisation, weight decay, layers, the loss and parameter/FLOP counting.

Every layer is a small tf.Module whose variables are created in `__init__` from explicit
sizes, so a model's variables exist before the first trace, the EMA and a checkpoint restore.
Each layer also knows its output shape, parameter count and FLOPs by the study's formulas
(docs/design.md), which `count_model` walks for the per-layer table that
`python models/count.py --model=NAME` prints. Models are composed from these layers in models/.
"""

import contextlib
import dataclasses
import math

import numpy as np
import tensorflow as tf

import cifar10_records

INIT_MODES = ('xavier', 'tutorial')
DECAY_MODES = ('study', 'tutorial', 'l2')
STUDY_WEIGHT_DECAY = 500.0  # The study's WD: coefficient = WD / prod(shape(W)).
TUTORIAL_WEIGHT_DECAY = 0.004  # The tutorial's coefficient on local3 and local4.
NUM_CLASSES = cifar10_records.NUM_CLASSES  # the width of every model's logits
L2_WEIGHT_DECAY = 5e-4  # 'l2': one coefficient on every weight matrix, convolutions included.
BATCHNORM_MOMENTUM = 0.9  # moving statistics: m <- 0.9 m + 0.1 batch value, per step
BATCHNORM_EPSILON = 1e-5  # added to the variance before its square root
XAVIER_GAIN = 1.3  # The study's factor compensating the truncation at 2 stddev.
LRN_FLOPS_PER_ELEMENT = 36  # (3 + 2*r*r + 1) with r = 4, as the study counted it.
# --precision: the dtype the layers compute in. Variables, EMA shadows and the loss stay
# float32 in every mode ("mixed" precision).
PRECISIONS = {'float32': tf.float32, 'mixed_bfloat16': tf.bfloat16,
              'mixed_float16': tf.float16}


@dataclasses.dataclass(frozen=True)
class Regime:
  """How a model's weights are initialised and regularised.

  Attributes:
    init: 'xavier' (the study's, default) or 'tutorial' (explicit stddevs and biases).
    weight_decay: 'study' (WD / prod(shape), WD = 500, on the layers the model picks),
      'tutorial' (0.004 on those layers) or 'l2' (`l2_decay` on every weight matrix,
      convolutions and the logits layer included: the usual weight decay of today's recipes).
    l2_decay: the coefficient of 'l2' (the gradient gains l2_decay * W).
    widths: ((layer name, output channels or units), ...): the layers a slimmed model
      builds narrower than its family does (compress/slim.py); the builders ask `width`.
  """
  init: str = 'xavier'
  weight_decay: str = 'study'
  l2_decay: float = L2_WEIGHT_DECAY
  widths: tuple = ()

  def __post_init__(self):
    if self.init not in INIT_MODES:
      raise ValueError(f'init must be one of {INIT_MODES}, got {self.init!r}')
    if self.weight_decay not in DECAY_MODES:
      raise ValueError(f'weight_decay must be one of {DECAY_MODES}, got {self.weight_decay!r}')

  def width(self, name, default):
    """Output channels (or units) of layer `name`: its entry in `widths`, else `default`."""
    return dict(self.widths).get(name, default)

  def stddev(self, shape, tutorial_stddev):
    return xavier_stddev(shape) if self.init == 'xavier' else tutorial_stddev

  def bias(self, tutorial_bias):
    return 0.0 if self.init == 'xavier' else tutorial_bias

  def decay_coefficient(self, shape, chosen=True):
    """Coefficient of a weight matrix; `chosen`: the model gives this layer weight decay
    (the study and the tutorial decay only the layers a model picks; 'l2' decays all)."""
    if self.weight_decay == 'l2':
      return self.l2_decay
    if not chosen:
      return 0.0
    if self.weight_decay == 'study':
      return STUDY_WEIGHT_DECAY / math.prod(shape)
    return TUTORIAL_WEIGHT_DECAY


def parse_widths(text):
  """'conv1=12,conv2=40' -> (('conv1', 12), ('conv2', 40)); '' -> ().

  Raises:
    ValueError: an entry is not name=positive integer, or a name comes twice.
  """
  widths = []
  for entry in filter(None, (part.strip() for part in text.split(','))):
    name, _, value = entry.partition('=')
    if not name or not value.isdigit() or int(value) < 1:
      raise ValueError(f'widths entry {entry!r} is not <layer>=<channels>, e.g. conv1=12')
    widths.append((name.strip(), int(value)))
  names = [name for name, _ in widths]
  if len(set(names)) < len(names):
    raise ValueError(f'widths {text!r} names a layer twice')
  return tuple(widths)


def format_widths(widths):
  """The inverse of parse_widths: ((name, channels), ...) or {name: channels} -> text."""
  return ','.join(f'{name}={channels}' for name, channels in dict(widths).items())


def xavier_stddev(shape):
  """The study's Xavier stddev: sqrt(1.3 * 2 / (fan_in + fan_out)).

  For a conv kernel [k, k, C_in, C_out] the fans are k*k*C_in and k*k*C_out; for a dense
  matrix [rows, cols] they are rows and cols (docs/design.md).
  """
  receptive = math.prod(shape[:-2])
  fan_in, fan_out = receptive * shape[-2], receptive * shape[-1]
  return math.sqrt(XAVIER_GAIN * 2.0 / (fan_in + fan_out))


_RANDOM_INIT = [True]  # False inside shapes_only()


@contextlib.contextmanager
def shapes_only():
  """Layers built inside start at zero instead of random values: no random op runs, so a
  tool can build a model to count it (compress/slim.py, many times per update) without
  moving the random state of the training around it."""
  _RANDOM_INIT[0] = False
  try:
    yield
  finally:
    _RANDOM_INIT[0] = True


def truncated_normal(shape, stddev):
  if not _RANDOM_INIT[0]:
    return tf.zeros(shape)
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

  def num_params(self):
    return sum(int(np.prod(v.shape)) for v in self.trainable_variables)

  def flops(self, input_shape):
    del input_shape
    return 0

  def activations(self, input_shape):
    """Values this layer computes per image (its outputs and those of the ops inside it)."""
    return math.prod(self.output_shape(input_shape))


def direct_conv2d(x, kernel, stride):
  """tf.nn.conv2d with SAME padding: the default computation of a Conv2D."""
  return tf.nn.conv2d(x, kernel, stride, 'SAME')


class Conv2D(Layer):
  """k x k convolution, SAME padding, with optional bias (none before a BatchNorm, whose
  shift takes its place) and optional ReLU.

  `convolution(x, kernel, stride)` computes the product: `direct_conv2d` unless the model
  was built with another implementation of the same function (cifar10_spectral.apply).
  """

  def __init__(self, in_channels, out_channels, kernel_size, *, stddev, bias_init=0.0,
               decay=0.0, relu=True, stride=1, bias=True, name=None):
    super().__init__(name=name)
    shape = [kernel_size, kernel_size, in_channels, out_channels]
    with self.name_scope:  # Names variables 'conv1/kernel', for summaries and debugging.
      self.kernel = tf.Variable(truncated_normal(shape, stddev), name='kernel')
      self.bias = (tf.Variable(tf.fill([out_channels], float(bias_init)), name='bias')
                   if bias else None)
    self.kernels = ((self.kernel, decay),)
    self.relu, self.stride = relu, stride
    self.convolution = direct_conv2d

  def __call__(self, x, training=False):
    # The variables are float32; a model computing in lower precision casts them to x's.
    y = self.convolution(x, tf.cast(self.kernel, x.dtype), self.stride)
    if self.bias is not None:
      y += tf.cast(self.bias, x.dtype)
    return tf.nn.relu(y) if self.relu else y

  def output_shape(self, input_shape):
    h, w, _ = input_shape
    return (math.ceil(h / self.stride), math.ceil(w / self.stride), self.kernel.shape[3])

  def flops(self, input_shape):
    # The bias add counts without a bias too: a conv without one is followed by a BatchNorm
    # and counted folded, the BatchNorm's shift becoming this bias (BatchNorm.flops).
    k, _, c_in, f = self.kernel.shape
    h, w, _ = self.output_shape(input_shape)
    return (1 + 2 * c_in * k * k) * f * w * h + (2 * f * w * h if self.relu else 0)


def direct_depthwise(x, kernel, stride):
  """tf.nn.depthwise_conv2d with SAME padding: the default computation of a
  DepthwiseConv2D (cuDNN's on a GPU)."""
  return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], 'SAME')


def shifted_depthwise(x, kernel, stride):
  """The same function written out: SAME padding as TensorFlow places it (the odd pixel
  after), then k x k shifted, strided views of x, each times its tap's per-channel weight,
  summed. The readable reference of depthwise_conv2d (tests hold them equal, values and
  gradients)."""
  k = kernel.shape[0]
  height, width = x.shape[1], x.shape[2]
  out_h, out_w = -(-height // stride), -(-width // stride)
  pad_h = max((out_h - 1) * stride + k - height, 0)
  pad_w = max((out_w - 1) * stride + k - width, 0)
  padded = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2],
                      [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
  total = 0.0
  for i in range(k):
    for j in range(k):
      view = padded[:, i:i + (out_h - 1) * stride + 1:stride,
                    j:j + (out_w - 1) * stride + 1:stride, :]
      total += view * kernel[i, j, :, 0]
  return total


class DepthwiseConv2D(Layer):
  """k x k depthwise convolution: each channel filtered by its own k x k kernel ([k, k, C,
  1], TensorFlow's layout), SAME padding, optional bias (none before a BatchNorm) and ReLU.

  Counted as a convolution of one input channel per output channel: 2 k^2 FLOPs per output
  value, plus its bias add and ReLU (docs/design.md).
  """

  def __init__(self, channels, kernel_size, *, stddev, bias_init=0.0, decay=0.0, relu=True,
               stride=1, bias=True, name=None):
    super().__init__(name=name)
    with self.name_scope:
      self.kernel = tf.Variable(truncated_normal([kernel_size, kernel_size, channels, 1],
                                                 stddev), name='kernel')
      self.bias = (tf.Variable(tf.fill([channels], float(bias_init)), name='bias')
                   if bias else None)
    self.kernels = ((self.kernel, decay),)
    self.relu, self.stride = relu, stride
    self.convolution = direct_depthwise

  def __call__(self, x, training=False):
    y = self.convolution(x, tf.cast(self.kernel, x.dtype), self.stride)
    if self.bias is not None:
      y += tf.cast(self.bias, x.dtype)
    return tf.nn.relu(y) if self.relu else y

  def output_shape(self, input_shape):
    h, w, _ = input_shape
    return (math.ceil(h / self.stride), math.ceil(w / self.stride), self.kernel.shape[2])

  def flops(self, input_shape):
    k, _, channels, _ = self.kernel.shape
    h, w, _ = self.output_shape(input_shape)
    return (1 + 2 * k * k) * channels * w * h + (2 * channels * w * h if self.relu else 0)


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
    y = tf.matmul(x, tf.cast(self.kernel, x.dtype)) + tf.cast(self.bias, x.dtype)
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
    band = tf.constant(self.alpha * band[np.newaxis, np.newaxis], x.dtype)
    scale = self.bias + tf.nn.conv2d(tf.square(x), band, 1, 'VALID', data_format=self.data_format)
    if self.beta == 0.75:  # The tutorial's: scale^-3/4 = rsqrt(s) * sqrt(rsqrt(s)), no pow.
      inverse_root = tf.math.rsqrt(scale)
      return x * inverse_root * tf.sqrt(inverse_root)
    return x * tf.pow(scale, -self.beta)

  def flops(self, input_shape):
    return LRN_FLOPS_PER_ELEMENT * math.prod(input_shape)


class BatchNorm(Layer):
  """Batch normalization of a convolution's channels ([B, H, W, C]), then an optional ReLU.

  Training normalizes with the batch's own mean and (biased) variance and moves the moving
  averages towards the batch's mean and unbiased variance (m <- momentum m + (1 - momentum)
  value, as PyTorch and Keras do); evaluation uses the moving averages, so the layer is then
  an affine map per channel that `fold_batchnorm` merges into the convolution before it.
  Training runs TensorFlow's fused kernel (FusedBatchNormV3; cuDNN's on a GPU), or with
  `fused` False the same formulas from tf.nn.moments (the readable reference; bench/
  batchnorm.py times both). Statistics are float32 in every precision. Under a tf.distribute
  strategy each replica normalizes its own share of the batch (as Keras does by default).

  Counted folded, as the study counted inference: no FLOPs but the ReLU's, and one
  parameter per channel (the bias it gives the convolution before it).
  """

  def __init__(self, channels, *, relu=True, momentum=BATCHNORM_MOMENTUM,
               epsilon=BATCHNORM_EPSILON, name=None):
    super().__init__(name=name)
    statistic = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.MEAN)
    with self.name_scope:
      self.gamma = tf.Variable(tf.ones([channels]), name='gamma')
      self.beta = tf.Variable(tf.zeros([channels]), name='beta')
      self.moving_mean = tf.Variable(tf.zeros([channels]), name='moving_mean', **statistic)
      self.moving_variance = tf.Variable(tf.ones([channels]), name='moving_variance',
                                         **statistic)
    self.relu, self.momentum, self.epsilon = relu, momentum, epsilon
    self.fused = True

  def __call__(self, x, training=False):
    if not training:
      y = self._normalize(x, *self.affine())
    elif self.fused:
      y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=self.gamma, offset=self.beta, mean=tf.zeros([0]),
          variance=tf.zeros([0]), epsilon=self.epsilon, is_training=True)
      self._move_averages(mean, variance)
    else:
      mean, biased = tf.nn.moments(tf.cast(x, tf.float32), axes=[0, 1, 2])
      values = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
      self._move_averages(mean, biased * values / (values - 1))  # The unbiased variance.
      scale = self.gamma * tf.math.rsqrt(biased + self.epsilon)
      y = self._normalize(x, scale, self.beta - mean * scale)
    return tf.nn.relu(y) if self.relu else y

  @staticmethod
  def _normalize(x, scale, shift):
    return x * tf.cast(scale, x.dtype) + tf.cast(shift, x.dtype)

  def _move_averages(self, mean, variance):
    for average, value in ((self.moving_mean, mean), (self.moving_variance, variance)):
      average.assign(self.momentum * average + (1 - self.momentum) * value)

  def affine(self):
    """(scale, shift) of evaluation, y = x * scale + shift, from the moving statistics."""
    scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
    return scale, self.beta - self.moving_mean * scale

  def num_params(self):
    return int(self.beta.shape[0])

  def flops(self, input_shape):
    return 2 * math.prod(input_shape) if self.relu else 0


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

  def num_params(self):
    return sum(layer.num_params() for layer in self.layers)

  def _with_inputs(self, input_shape):
    """(layer, the shape of its input) for each layer in turn."""
    for layer in self.layers:
      yield layer, input_shape
      input_shape = layer.output_shape(input_shape)

  def activations(self, input_shape):
    return sum(layer.activations(shape) for layer, shape in self._with_inputs(input_shape))

  def output_shape(self, input_shape):
    for layer in self.layers:
      input_shape = layer.output_shape(input_shape)
    return input_shape

  def walk(self, input_shape):
    for layer, shape in self._with_inputs(input_shape):
      yield from layer.walk(shape)

  def flops(self, input_shape):
    return sum(layer.flops(shape) for layer, shape in self._with_inputs(input_shape))


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

  def activations(self, input_shape):
    return sum(branch.activations(input_shape) for branch in self.branches)


class Residual(Layer):
  """x + branch(x), then an optional ReLU: the identity shortcut of He et al. (2016).

  The branch keeps the shape of its input. Counted like the rest: 1 FLOP per value for the
  add and 2 for the ReLU, no parameters but the branch's.
  """

  def __init__(self, branch, *, relu=True, name=None):
    super().__init__(name=name)
    self.branch = branch if isinstance(branch, Sequential) else Sequential(branch)
    self.relu = relu

  def __call__(self, x, training=False):
    y = x + self.branch(x, training=training)
    return tf.nn.relu(y) if self.relu else y

  @property
  def kernels(self):
    return self.branch.kernels

  def num_params(self):
    return self.branch.num_params()

  def walk(self, input_shape):
    yield from self.branch.walk(input_shape)

  def output_shape(self, input_shape):
    shape = tuple(self.branch.output_shape(input_shape))
    if shape != tuple(input_shape):
      raise ValueError(f'{self.name}: the branch maps {input_shape} to {shape}; a residual '
                       'branch must keep its input shape')
    return shape

  def flops(self, input_shape):
    return self.branch.flops(input_shape) + (3 if self.relu else 1) * math.prod(input_shape)

  def activations(self, input_shape):
    return self.branch.activations(input_shape) + math.prod(input_shape)  # and the sum


class SqueezeExcite(Layer):
  """Channel gating (Hu et al. 2018): x * sigmoid(dense2(relu(dense1(mean of x over space)))).

  Counted: the mean as an average pool (0 FLOPs), the two dense layers as Dense, the sigmoid
  4 FLOPs per channel, the product 1 FLOP per value.
  """

  def __init__(self, squeeze, excite, name=None):
    super().__init__(name=name)
    self.pool = GlobalAvgPool(name=f'{self.name}_pool')
    self.squeeze, self.excite = squeeze, excite

  def __call__(self, x, training=False):
    return x * self.gate(x)[:, tf.newaxis, tf.newaxis, :]

  def gate(self, x):
    """[B, C] in (0, 1): the factor of each channel of x."""
    return tf.sigmoid(self.excite(self.squeeze(self.pool(x))))

  @property
  def kernels(self):
    return self.squeeze.kernels + self.excite.kernels

  def num_params(self):
    return self.squeeze.num_params() + self.excite.num_params()

  def walk(self, input_shape):
    yield self.squeeze, (input_shape[-1],)
    yield self.excite, self.squeeze.output_shape((input_shape[-1],))

  def flops(self, input_shape):
    channels = (input_shape[-1],)
    return (math.prod(input_shape) + self.squeeze.flops(channels)
            + self.excite.flops(self.squeeze.output_shape(channels)) + 4 * channels[0])

  def activations(self, input_shape):
    # The mean, the hidden layer, the gate before and after its sigmoid, the product.
    hidden = self.squeeze.kernel.shape[1]
    return 3 * input_shape[-1] + hidden + math.prod(input_shape)


class Model(Sequential):
  """A whole network: a Sequential that remembers its input size.

  Its layers with weights have unique names: tools find them by name (pruning's
  --dense_layers, the keys of the exported weight files).
  """

  def __init__(self, layers, image_size, name=None):
    super().__init__(layers, name=name)
    self.input_shape = (image_size, image_size, 3)
    self.compute_dtype = tf.float32
    names = [layer.name for layer in self.weight_layers()]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
      raise ValueError(f'model {name}: layers with weights must have unique names; repeated: '
                       f'{", ".join(repeated)}')

  def __call__(self, x, training=False):
    """float32 logits of float32 images, computed in `compute_dtype` (set_precision)."""
    logits = super().__call__(tf.cast(x, self.compute_dtype), training)
    return tf.cast(logits, tf.float32)

  def set_precision(self, precision):
    """Computes the layers in PRECISIONS[precision]; the variables stay float32."""
    self.compute_dtype = PRECISIONS[precision]

  def weight_layers(self):
    """The layers with a weight matrix (convs and dense layers), in call order: the ones
    `kernels` lists, as layers, for tools that need their names and biases too."""
    return [layer for layer, _ in self.walk(self.input_shape) if layer.kernels]


def fold_batchnorm(model):
  """`model` for inference with each BatchNorm merged into the Conv2D before it.

  Evaluation-mode BatchNorm is y = x * scale + shift per channel, so conv then BatchNorm is
  one convolution of kernel * scale and bias (bias or 0) * scale + shift, with the
  BatchNorm's ReLU: the folded model computes the same logits (within float rounding) from
  plain Conv2D layers, which int8 quantization and export then handle like any other. A
  model without BatchNorm comes back as it is.

  Raises:
    ValueError: a BatchNorm that does not follow a Conv2D in the same Sequential.
  """
  layers = _folded_layers(model.layers)
  if layers is None:
    return model
  folded = Model(layers, model.input_shape[0], name=model.name)
  folded.compute_dtype = model.compute_dtype
  return folded


def _folded_layers(layers):
  """The layers with their BatchNorms folded (recursing into Sequentials); None: none."""
  result, changed = [], False
  for layer in layers:
    if isinstance(layer, BatchNorm):
      if not result or not isinstance(result[-1], (Conv2D, DepthwiseConv2D)):
        raise ValueError(f'{layer.name}: a BatchNorm folds only into a Conv2D or '
                         'DepthwiseConv2D just before it')
      result[-1], changed = _fold_into(result[-1], layer), True
    elif type(layer) is Sequential:
      inner = _folded_layers(layer.layers)
      changed |= inner is not None
      result.append(layer if inner is None else Sequential(inner, name=layer.name))
    elif isinstance(layer, Residual):
      inner = _folded_layers(layer.branch.layers)
      changed |= inner is not None
      result.append(layer if inner is None else
                    Residual(inner, relu=layer.relu, name=layer.name))
    else:
      result.append(layer)
  return result if changed else None


def folded_weights(conv, norm):
  """(kernel, bias) of conv then the evaluation-mode `norm` as one convolution, from their
  current variables: kernel * scale on each output channel (a DepthwiseConv2D's axis 2),
  (bias or 0) * scale + shift. fold_batchnorm copies them; quantization-aware training
  (compress/trace.FoldedConv) computes them at every step."""
  scale, shift = norm.affine()
  bias = shift if conv.bias is None else conv.bias * scale + shift
  if isinstance(conv, DepthwiseConv2D):  # [k, k, C, 1]: channel c on axis 2.
    return conv.kernel * scale[:, tf.newaxis], bias
  return conv.kernel * scale, bias


def _fold_into(conv, norm):
  """The Conv2D (or DepthwiseConv2D) computing conv then the evaluation-mode `norm`."""
  k, _, c_in, c_out = conv.kernel.shape
  if isinstance(conv, DepthwiseConv2D):
    folded = DepthwiseConv2D(c_in, k, stddev=0.0, decay=conv.kernels[0][1], relu=norm.relu,
                             stride=conv.stride, name=conv.name)
  else:
    folded = Conv2D(c_in, c_out, k, stddev=0.0, decay=conv.kernels[0][1], relu=norm.relu,
                    stride=conv.stride, name=conv.name)
  kernel, bias = folded_weights(conv, norm)
  folded.kernel.assign(kernel)
  folded.bias.assign(bias)
  folded.convolution = conv.convolution
  return folded


def conv(regime, name, in_channels, out_channels, kernel_size, *, tutorial_stddev=5e-2,
         tutorial_bias=0.0, relu=True, stride=1, bias=True):
  """A Conv2D initialised by `regime` (weight decay on convolutions in 'l2' mode only)."""
  shape = [kernel_size, kernel_size, in_channels, out_channels]
  return Conv2D(in_channels, out_channels, kernel_size,
                stddev=regime.stddev(shape, tutorial_stddev),
                bias_init=regime.bias(tutorial_bias), relu=relu, stride=stride, bias=bias,
                decay=regime.decay_coefficient(shape, chosen=False), name=name)


def depthwise_bn(regime, name, channels, kernel_size, *, relu=True, stride=1):
  """A DepthwiseConv2D without bias and the BatchNorm (then ReLU) after it, Xavier-initialised
  for its k x k fan-in and fan-out per channel, decayed as the convolutions are."""
  shape = [kernel_size, kernel_size, 1, 1]
  return [DepthwiseConv2D(channels, kernel_size, stddev=regime.stddev(shape, 5e-2),
                          decay=regime.decay_coefficient(shape, chosen=False), relu=False,
                          stride=stride, bias=False, name=name),
          BatchNorm(channels, relu=relu, name=f'{name}_bn')]


def conv_bn(regime, name, in_channels, out_channels, kernel_size, *, relu=True, stride=1):
  """A Conv2D without bias and the BatchNorm (then ReLU) after it: 'name' and 'name_bn'."""
  return [conv(regime, name, in_channels, out_channels, kernel_size, relu=False,
               stride=stride, bias=False),
          BatchNorm(out_channels, relu=relu, name=f'{name}_bn')]


def dense(regime, name, in_dim, out_dim, *, tutorial_stddev, tutorial_bias=0.0, relu=True,
          decay=True):
  """A Dense initialised by `regime`; `decay`: the model gives it weight decay."""
  shape = [in_dim, out_dim]
  return Dense(in_dim, out_dim, stddev=regime.stddev(shape, tutorial_stddev),
               bias_init=regime.bias(tutorial_bias), relu=relu,
               decay=regime.decay_coefficient(shape, chosen=decay), name=name)


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


def loss(logits, labels, model, label_smoothing=0.0):
  """Mean softmax cross-entropy and weight decay, returned separately.

  Args:
    logits: float32 [B, K].
    labels: int32 [B].
    model: the Model whose weights carry decay coefficients.
    label_smoothing: the share s of each label spread over the K classes: the target is
      (1 - s) on the label plus s / K on every class (Szegedy et al. 2016).

  Returns:
    (cross_entropy, weight_decay): two float32 scalars; the total loss is their sum.
  """
  if label_smoothing:
    classes = logits.shape[-1]
    targets = tf.one_hot(labels, classes) * (1.0 - label_smoothing) + label_smoothing / classes
    per_image = tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
  else:
    per_image = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  return tf.reduce_mean(per_image), weight_decay_loss(model)


# --------------------------------------------------------------------------- counting


@dataclasses.dataclass(frozen=True)
class LayerCount:
  name: str
  output_shape: tuple
  params: int
  flops: int


def count_model(model):
  """Per-layer parameter and FLOP counts of a Model at its input size (docs/design.md)."""
  rows, shape = [], model.input_shape
  for layer in model.layers:
    flops = layer.flops(shape)
    shape = layer.output_shape(shape)
    rows.append(LayerCount(layer.name, shape, layer.num_params(), flops))
  return rows


# Bytes a train step holds per image, per value of the layers' outputs (the forward values
# kept for the gradient, the gradients, temporaries): measured 4.9-9.5 on five models
# between batches 256 and 1,024 (bench/train_memory.py); 12, three float32s, leaves a margin.
TRAINING_BYTES_PER_ACTIVATION = 3 * 4


def training_bytes_per_image(model):
  """Memory a train step needs per image of the batch (an estimate, on the safe side)."""
  return TRAINING_BYTES_PER_ACTIVATION * model.activations(model.input_shape)


def format_count_table(rows):
  """The table `python models/count.py` prints, ending with the totals line."""
  lines = [f'{"layer":<18} {"output shape":<16} {"params":>12} {"FLOPs":>14}']
  for row in rows:
    shape = 'x'.join(str(d) for d in row.output_shape)
    lines.append(f'{row.name:<18} {shape:<16} {row.params:>12,} {row.flops:>14,}')
  params = sum(r.params for r in rows)
  flops = sum(r.flops for r in rows)
  lines.append(f'total params={params} flops={flops}')
  return '\n'.join(lines)


def format_summary_rows(named_models):
  """One row per model: name, params, MFLOPs (the study's table)."""
  lines = [f'{"model":<10} {"params":>10} {"MFLOPs":>8}']
  for name, model in named_models:
    rows = count_model(model)
    lines.append(f'{name:<10} {sum(r.params for r in rows):>10,} '
                 f'{sum(r.flops for r in rows) / 1e6:>8.2f}')
  return '\n'.join(lines)
