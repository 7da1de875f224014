"""Quantization-aware training's arithmetic: fake quantization with straight-through
gradients, activation ranges tracked as state, low-bit weight scales, and the training
forward pass over the traced op list (compress/trace.py) that mirrors the integer path.

The forward pass computes what compress/int8.py will compute, in float: every tensor the
integer path requantizes is quantized and dequantized with its own range (the input, every
conv, dense, LRN, pool, add and mul output), a tensor that feeds a concat is quantized with
the concat's (so it is left alone and the concat is quantized), max-pool and flatten outputs
keep their input's grid, a sigmoid's output has the fixed scale 1/256, and each conv and
dense layer's weights are quantized per output channel, symmetric, to `bits` bits, with each
BatchNorm folded into its convolution through its moving statistics (trace.FoldedConv).
Gradients pass the rounding straight through (Bengio et al. 2013): for an activation, 1
inside its range and 0 where it clips; for a weight, 1.

Ranges: per tensor (low, high), 0 inside, an exponential moving average of each batch's
minimum and maximum (the first batch sets it), as TensorFlow's QAT tracks them (Jacob et al.
2018). compress/quantize.py reads them from the checkpoint instead of calibrating.

Weight scales (docs/compression.md): `max`, s = max |w| / Q per channel with Q = 2^(b-1) - 1
(127, 7, 1), as post-training int8 does; `mse`, s = r max |w| / Q with the clip ratio r of
MSE_RATIOS that makes the channel's squared rounding error least (at 4 and 2 bits the largest
weight is a poor scale: at 2 bits most weights would round to 0). The same rule is written
twice, in NumPy for the file (channel_scales) and in TensorFlow for training
(channel_scales_tf); a test holds them equal.
"""

import os

import numpy as np
import tensorflow as tf

import cifar10_config
import cifar10_run
from compress import finetune
from compress import int8_file
from compress import trace

SETTINGS_FILE = 'qat.json'  # a QAT run's settings, beside its config.json
WEIGHT_BITS = (8, 4, 2)
WEIGHT_RANGES = ('max', 'mse')
MSE_RATIOS = np.arange(1, 21) / 20  # clip ratios r tried by `mse`: 0.05, 0.10, ..., 1.0
RANGE_DECAY = 0.99  # of the moving averages of each batch's minimum and maximum
VALUE_OPS = ('max_pool', 'flatten')  # outputs on their input's grid (compress/quantize.py)
SIGMOID_PARAMS = {'scale': 1.0 / 256, 'zero_point': -128}  # fixed, as TFLite's
INT8_MIN, INT8_MAX = -128, 127
CHECKPOINT_KEY = 'qat_ranges'


def weight_max(bits):
  """Q of symmetric `bits`-bit weights: the levels are -Q..Q (127, 7 or 1)."""
  return 2 ** (bits - 1) - 1


# --------------------------------------------------------------------------- weights


def channel_scales(columns, bits, method):
  """NumPy: the scale of each column (output channel) of a [N, C] float64 matrix; an
  all-zero column gets 0 (compress/quantize.py gives it one of its own)."""
  q = weight_max(bits)
  top = np.abs(columns).max(axis=0)
  if method == 'max':
    return top / q
  candidates = MSE_RATIOS[:, None] * top[None, :] / q  # [R, C]
  safe = np.where(candidates > 0, candidates, 1.0)
  rounded = np.clip(np.round(columns[None] / safe[:, None, :]), -q, q) * safe[:, None, :]
  errors = np.sum((rounded - columns[None]) ** 2, axis=1)  # [R, C]
  return candidates[np.argmin(errors, axis=0), np.arange(columns.shape[1])]


def channel_scales_tf(columns, bits, method):
  """channel_scales in TensorFlow (float32 [N, C] -> [C]), without gradient."""
  q = float(weight_max(bits))
  columns = tf.stop_gradient(columns)
  top = tf.reduce_max(tf.abs(columns), axis=0)
  if method == 'max':
    return top / q
  ratios = tf.constant(MSE_RATIOS, tf.float32)[:, None]
  candidates = ratios * top[None, :] / q
  safe = tf.where(candidates > 0, candidates, 1.0)[:, None, :]
  rounded = tf.clip_by_value(tf.round(columns[None] / safe), -q, q) * safe
  errors = tf.reduce_sum(tf.square(rounded - columns[None]), axis=1)
  best = tf.argmin(errors, axis=0, output_type=tf.int32)
  return tf.gather(tf.transpose(candidates), best, batch_dims=1)


def fake_quant_weights(kernel, bits, method):
  """The kernel on its per-output-channel `bits`-bit grid; gradient 1 to every weight."""
  columns = tf.reshape(kernel, [-1, kernel.shape[-1]])
  scale = channel_scales_tf(columns, bits, method)
  scale = tf.where(scale > 0, scale, 1.0)  # An all-zero channel stays 0.
  q = float(weight_max(bits))
  quantized = tf.reshape(tf.clip_by_value(tf.round(columns / scale), -q, q) * scale,
                         kernel.shape)
  return kernel + tf.stop_gradient(quantized - kernel)


# --------------------------------------------------------------------------- activations


def affine(low, high):
  """(scale, zero point) of compress/quantize.affine_params, as float32 tensors."""
  scale = (high - low) / float(INT8_MAX - INT8_MIN)
  scale = tf.where(scale > 0, scale, 1.0)
  zero_point = tf.clip_by_value(tf.round(INT8_MIN - low / scale), INT8_MIN, INT8_MAX)
  return scale, zero_point


def fake_quant(x, scale, zero_point):
  """x on the grid scale * (q - zp), q in -128..127; gradient 1 inside the grid, 0 outside."""
  clipped = tf.clip_by_value(x, (INT8_MIN - zero_point) * scale, (INT8_MAX - zero_point) * scale)
  quantized = tf.round(clipped / scale) * scale  # (round(x / s) + zp - zp) * s
  return clipped + tf.stop_gradient(quantized - clipped)


def batch_range(x):
  """[low, high] of a batch, widened to contain 0."""
  return tf.stack([tf.minimum(tf.reduce_min(x), 0.0), tf.maximum(tf.reduce_max(x), 0.0)])


class Ranges(tf.Module):
  """The tracked (low, high) of each tensor the integer path gives a range of its own.

  One float32 [2] variable per tensor (saved as `qat_ranges` in the checkpoint, in the
  order of `tensors`) and `ready` (0 until the first batch set them). Variables of each
  replica's own, read as their mean (as BatchNorm's statistics are).
  """

  def __init__(self, tensors, decay=RANGE_DECAY):
    super().__init__(name='qat_ranges')
    statistic = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.MEAN)
    self.tensors, self.decay = list(tensors), decay
    with self.name_scope:
      self.values = [tf.Variable(tf.zeros([2]), name=f'range_{t}', **statistic)
                     for t in self.tensors]
      self.ready = tf.Variable(0.0, name='ready', **statistic)
    self.index = {t: i for i, t in enumerate(self.tensors)}

  def checkpoint_state(self):
    return {CHECKPOINT_KEY: list(self.values), 'qat_ranges_ready': self.ready}

  def update(self, tensor, x):
    """Moves the range of `tensor` towards batch x's; returns the new (low, high)."""
    variable = self.values[self.index[tensor]]
    batch = batch_range(tf.cast(x, tf.float32))
    new = tf.where(self.ready > 0, self.decay * variable + (1 - self.decay) * batch, batch)
    variable.assign(new)
    return new[0], new[1]

  def current(self, tensor):
    value = self.values[self.index[tensor]]
    return value[0], value[1]

  def numpy(self):
    """{tensor: (low, high)} as floats."""
    return {t: tuple(float(v) for v in value.numpy()) for t, value in zip(self.tensors,
                                                                          self.values)}


# --------------------------------------------------------------------------- the pass


def plan(ops):
  """{tensor: how the forward pass quantizes it}: 'own' (its own tracked range), 'sigmoid'
  (fixed), or 'none' (on its input's grid, or quantized at the concat it feeds)."""
  into_concat = {t for op in ops if op['type'] == 'concat' for t in op['inputs']}
  actions = {trace.INPUT: 'own'}
  for op in ops:
    if op['type'] == 'sigmoid':
      actions[op['output']] = 'sigmoid'
    elif op['type'] in VALUE_OPS or op['output'] in into_concat:
      actions[op['output']] = 'none'
    else:
      actions[op['output']] = 'own'
  return actions


def tracked_tensors(ops):
  """The tensors whose ranges compress/quantize.tensor_params reads: the input and every
  op's output but max-pool, flatten and sigmoid outputs."""
  return [trace.INPUT] + [op['output'] for op in ops
                          if op['type'] not in VALUE_OPS + ('sigmoid',)]


def _linear(op, leaf, x, bits, method):
  """A conv, depthwise or dense op on x with its weights fake-quantized."""
  kernel, bias = leaf.folded() if isinstance(leaf, trace.FoldedConv) else (leaf.kernel,
                                                                           leaf.bias)
  if op['type'] == 'depthwise':  # [k, k, C, 1]: per channel C, as the file stores it
    kernel = fake_quant_weights(kernel[..., 0], bits, method)[..., None]
  else:
    kernel = fake_quant_weights(kernel, bits, method)
  kernel = tf.cast(kernel, x.dtype)
  if op['type'] in ('conv', 'depthwise'):
    y = leaf.convolution(x, kernel, op['stride'])
  else:
    y = tf.matmul(x, kernel)
  if bias is not None:
    y += tf.cast(bias, x.dtype)
  return tf.nn.relu(y) if op['relu'] else y


def forward(ops, leaves, images, ranges, layer_bits, method, training=True):
  """The logits of the fake-quantized model; with `training` each range first moves towards
  its batch's (Ranges.update), else the tracked ranges are used as they are.

  Args:
    ops, leaves: trace.trace_ops(model, fold_batchnorm=True).
    ranges: a Ranges over tracked_tensors(ops).
    layer_bits: {conv/dense op name: weight bits}.
    method: one of WEIGHT_RANGES.
  """
  actions = plan(ops)

  def quantize(tensor, value):
    action = actions[tensor]
    if action == 'none':
      return value
    if action == 'sigmoid':
      return fake_quant(value, SIGMOID_PARAMS['scale'], float(SIGMOID_PARAMS['zero_point']))
    low, high = ranges.update(tensor, value) if training else ranges.current(tensor)
    return fake_quant(value, *affine(low, high))

  values = {trace.INPUT: quantize(trace.INPUT, tf.convert_to_tensor(images, tf.float32))}
  for op, leaf in zip(ops, leaves):
    inputs = [values[i] for i in op['inputs']]
    if op['type'] in int8_file.LINEAR_OPS:
      value = _linear(op, leaf, inputs[0], layer_bits[op['name']], method)
    elif leaf is None:
      value = trace.join(op, inputs)
    else:
      value = leaf(inputs[0], training=training)
    values[op['output']] = quantize(op['output'], value)
  if training:
    ranges.ready.assign(1.0)
  return values[ops[-1]['output']]


def layer_bits(ops, bits, edge_bits):
  """{conv/depthwise/dense name: bits}: `edge_bits` for the first and the last (0: `bits`
  too)."""
  names = [op['name'] for op in ops if op['type'] in int8_file.LINEAR_OPS]
  edge = edge_bits or bits
  return {name: edge if name in (names[0], names[-1]) else bits for name in names}


# --------------------------------------------------------------------------- records


def read_settings(train_dir):
  """The QAT settings of a run (qat.json), or None for a run trained without QAT.

  Raises:
    cifar10_config.ConfigError: the file is there but unreadable.
  """
  path = os.path.join(train_dir, SETTINGS_FILE)
  record = finetune.read_settings(path)  # None, or a JSON object
  if record is None:
    return None
  if not isinstance(record.get('tensors'), list):
    raise cifar10_config.ConfigError(f'{path} holds no list of tensors: it must be the file '
                                     'compress/qat.py wrote')
  return record


def read_ranges(checkpoint, tensors):
  """{tensor: (low, high)} saved in a QAT checkpoint.

  Raises:
    cifar10_run.UnreadableCheckpoint: the checkpoint holds no such ranges.
  """
  ranges = Ranges(tensors)
  cifar10_run.read_extra_state(checkpoint, **ranges.checkpoint_state())
  if float(ranges.ready.numpy()) <= 0:
    raise cifar10_run.UnreadableCheckpoint(f'{checkpoint}: its QAT ranges were never set '
                                           '(no QAT step ran)')
  return ranges.numpy()
