"""Integer-only int8 inference in NumPy: the kernels, and a runner for exported models.

    python compress/int8.py --model_file=runs/tutorial_int8/model_int8.npz \
        --data_dir=data

This file never imports TensorFlow (nor does cifar10_records.py, which reads the test set
for it). compress/quantize.py writes the model file (one .npz in
the format of compress/sparse.py: int8 weights, int32 biases, float32 per-channel weight
scales (the file keeps biases that fit int16, and scales that are float16 numbers, in 2
bytes, and gives them back as int32 and float32), and a JSON `meta` with the op list, every
tensor's scale and zero point and the input size); this runner loads it, reads the CIFAR-10
test batch and reports precision @ 1 and images/s.

Arithmetic (Jacob et al. 2018; TFLite's int8 spec; docs/reference.md): real = scale * (q - zp).
A conv or dense layer computes acc = sum (x_q - zp_x) * w_q + b_q exactly, then
y_q = clamp(zp_y + round(acc * M), low, 127) with M = s_x * s_w / s_y applied as a Q31
fixed-point multiplier m0 and a right shift; ReLU is the clamp at low = zp_y. The int8 x int8
products are summed by float32 BLAS, which is exact here: every partial sum is an integer
below 128 * max_c sum_k |w_q[k, c]|, checked to be under 2^24 when the model is loaded (layers
over it use float64, exact to 2^53). Max-pooling works on int8 directly; the global average
pool sums int32 and requantizes; a residual add rescales both inputs to the output's scale
with one shared fixed-point shift; a squeeze-excite gate is a sigmoid table and an integer
product. LRN is the one float step: dequantize, normalise in float32,
quantize to its calibrated output range (an integer LRN would need a table of x^-0.75).
"""

import concurrent.futures
import datetime
import json
import os
import sys
import threading
import time

if __name__ == '__main__':  # The runner: one BLAS thread per worker thread (see predict).
  os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

if __package__ in (None, ''):  # Run as `python compress/int8.py`: the project root, not this
  # folder, first on the path (its modules must not shadow others, e.g. the stdlib's trace).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cifar10_records  # pylint: disable=g-import-not-at-top
from compress import int8_file
from compress import sparse

INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # Symmetric weights use [-127, 127], so -w is always representable.
FLOAT32_EXACT = 2 ** 24  # float32 holds every integer of smaller magnitude exactly.
Q31 = 31  # Bits of the fixed-point multiplier m0 (m0 / 2^31 in [0.5, 1)).
MAX_TOTAL_SHIFT = 54  # Keeps every int64 term of requantization below 2^62 (requantizer).
ACCUMULATOR_LIMIT = 2 ** 31  # |acc + offset| must stay below this (int32 accumulators).
CHANNEL_MAJOR_BELOW = 16  # input channels under which conv patches go channel-major
BATCH_SIZE = 10  # images per forward pass (fastest here with 2 threads: bench/int8_speed.py)


# --------------------------------------------------------------------------- arithmetic


def quantize(x, scale, zero_point, dtype=np.float64):
  """float -> int8: clamp(round(x / scale) + zero_point), rounding half to even, in `dtype`."""
  q = np.round(np.asarray(x, dtype) / dtype(scale)) + dtype(zero_point)
  np.clip(q, INT8_MIN, INT8_MAX, out=q)
  return q.astype(np.int8)


def dequantize(q, scale, zero_point):
  """int8 -> float32: scale * (q - zero_point)."""
  return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


def quantize_multiplier(multiplier):
  """M (> 0, any shape) -> (m0, shift) with M = m0 * 2^-(31 + shift), m0 in [2^30, 2^31).

  For M below 2^-23 the total shift 31 + shift is capped at 54 and m0 keeps fewer bits
  (m0 = round(M * 2^54)): such a channel moves by one output step per 2^23 accumulator
  units, so it is constant in practice, and the cap keeps requantization inside int64.

  Returns:
    m0 int64 and shift int64 arrays shaped like `multiplier`.
  """
  multiplier = np.asarray(multiplier, np.float64)
  fraction, exponent = np.frexp(multiplier)  # M = f * 2^e, f in [0.5, 1)
  m0 = np.round(fraction * 2.0 ** Q31).astype(np.int64)
  carry = m0 == 2 ** Q31  # f rounded up to 1.0: use 0.5 and one more power of two.
  m0 = np.where(carry, 2 ** (Q31 - 1), m0)
  shift = (-exponent - carry).astype(np.int64)
  tiny = Q31 + shift > MAX_TOTAL_SHIFT
  capped = np.round(np.where(tiny, multiplier, 0.0) * 2.0 ** MAX_TOTAL_SHIFT)  # tiny ones only
  m0 = np.where(tiny, capped.astype(np.int64), m0)
  return m0, np.where(tiny, MAX_TOTAL_SHIFT - Q31, shift)


def requantizer(m0, shift, zero_point, low=INT8_MIN, offset=0):
  """The constants of `requantize` for multiplier m0 * 2^-(31 + shift) (per channel or not).

  zero_point + round((acc + offset) * m0 / 2^t), t = 31 + shift, rounding half up, equals
  (acc * m0 + bias_term) >> t with bias_term = offset * m0 + 2^(t-1) + zero_point * 2^t
  (exact: zero_point * 2^t is a multiple of 2^t), so the int64 work per value is one
  multiply, one add and one shift. It fits in int64 when |acc + offset| < 2^31 (Int8Model
  checks it per layer) and t <= 54: |(acc + offset) * m0| < 2^62, the rounding term is at
  most 2^53 and |zero_point| * 2^54 <= 2^61.

  Args:
    m0, shift: from quantize_multiplier.
    zero_point: the output's.
    low: the clamp's lower end (the zero point after a ReLU, else -128).
    offset: int64 added to every accumulator first (a layer's b_q - zp_x * sum_k w_q).
  """
  total_shift = Q31 + np.asarray(shift, np.int64)
  bias_term = (np.asarray(offset, np.int64) * m0 + (np.int64(1) << (total_shift - 1))
               + (np.int64(zero_point) << total_shift))
  return {'m0': m0, 'total_shift': total_shift, 'bias_term': bias_term, 'low': low}


def requantize(acc, constants):
  """Accumulators (exact integers, any numeric dtype) -> int8 with `requantizer` constants.

  Rounds half up (quantize() rounds half to even; the two differ only on exact ties).
  """
  x = acc.astype(np.int64)
  x *= constants['m0']
  x += constants['bias_term']
  x >>= constants['total_shift']
  np.clip(x, constants['low'], INT8_MAX, out=x)
  return x.astype(np.int8)


def accumulator_dtype(weights):
  """float32 when every partial sum of int8 x weights stays below 2^24, else float64."""
  columns = weights.reshape(-1, weights.shape[-1]).astype(np.int64)
  bound = -INT8_MIN * np.abs(columns).sum(axis=0).max()
  return np.float32 if bound < FLOAT32_EXACT else np.float64


# --------------------------------------------------------------------------- kernels


def same_padding(size, kernel, stride):
  """(before, after) padding of TensorFlow's SAME for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def patches(x, kernel, stride, pad_value, channel_major=False):
  """[B, H, W, C] -> [B, Ho, Wo, kernel * kernel * C] windows of a SAME convolution.

  Entries in (row, column, channel) order, or (channel, row, column) with channel_major,
  which copies runs of whole windows and is ~2x faster for the 3 channels of an image
  (bench/int8_speed.py); with many channels, runs of C channels are the longer ones.
  """
  _, h, w, _ = x.shape
  pads = ((0, 0), same_padding(h, kernel, stride), same_padding(w, kernel, stride), (0, 0))
  x = np.pad(x, pads, constant_values=pad_value)
  rows, cols = -(-h // stride), -(-w // stride)
  if channel_major:
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    windows = windows[:, :stride * rows:stride, :stride * cols:stride]  # [B, Ho, Wo, C, k, k]
    return windows.reshape(windows.shape[:3] + (-1,))
  views = [x[:, i:i + stride * rows:stride, j:j + stride * cols:stride, :]
           for i in range(kernel) for j in range(kernel)]
  return views[0] if kernel == 1 else np.concatenate(views, axis=-1)


def accumulate(x_q, layer):
  """sum_k x_q[k] * w_q[k, c] of a conv ([B, H, W, C] in) or dense ([B, D] in) layer.

  Returns:
    Exact integers in the layer's float type, [B, Ho, Wo, C_out] or [B, C_out]. Padding
    uses the input's zero point (real 0), whose products the offset cancels.
  """
  if layer['type'] == 'depthwise':
    return depthwise_accumulate(x_q, layer)
  if layer['type'] == 'conv':
    x_q = patches(x_q, layer['kernel_size'], layer['stride'], layer['input_zero_point'],
                  layer['channel_major'])
  weights = layer['matrix']  # w_q as [K, C_out], rows in the patches' order, float type
  acc = x_q.reshape(-1, weights.shape[0]).astype(weights.dtype) @ weights
  return acc.reshape(x_q.shape[:-1] + (weights.shape[1],))


def depthwise_accumulate(x_q, layer):
  """sum over the k x k taps of x_q * w_q[tap, c], each channel on its own ([B, H, W, C] in
  and out, int32, exact: every sum is under 2^31, checked when the model loads). Padding is
  the input's zero point, whose products the offset cancels."""
  weights, stride = layer['taps'], layer['stride']  # int32 [k, k, C]
  k = weights.shape[0]
  _, h, w, _ = x_q.shape
  pads = ((0, 0), same_padding(h, k, stride), same_padding(w, k, stride), (0, 0))
  x = np.pad(x_q, pads, constant_values=layer['input_zero_point']).astype(np.int32)
  rows, cols = -(-h // stride), -(-w // stride)
  acc = np.zeros((x.shape[0], rows, cols, x.shape[-1]), np.int32)
  for i in range(k):
    for j in range(k):
      acc += x[:, i:i + stride * rows:stride, j:j + stride * cols:stride, :] * weights[i, j]
  return acc


def prepare_depthwise(layer, arrays, tensors):
  """The taps and the requantizer constants of a depthwise op ([k, k, C] int8 weights).

  Raises:
    ValueError: the layer's accumulators could leave int32.
  """
  name = layer['name']
  weights, bias = arrays[f'{name}/weights'], arrays[f'{name}/bias'].astype(np.int64)
  weight_scale = arrays[f'{name}/weight_scale'].astype(np.float64)
  x, y = tensors[layer['inputs'][0]], tensors[layer['output']]
  m0, shift = quantize_multiplier(x['scale'] * weight_scale / y['scale'])
  taps = weights.astype(np.int64).reshape(-1, weights.shape[-1])
  offset = bias - x['zero_point'] * taps.sum(axis=0)
  bound = -INT8_MIN * np.abs(taps).sum(axis=0) + np.abs(offset)
  if bound.max() >= ACCUMULATOR_LIMIT:
    raise ValueError(f'layer {name}: accumulators may reach {bound.max():,}, beyond int32')
  low = y['zero_point'] if layer['relu'] else INT8_MIN
  return dict(layer, taps=weights.astype(np.int32), input_zero_point=x['zero_point'],
              **requantizer(m0, shift, y['zero_point'], low, offset))


def linear(x_q, layer):
  """Integer conv, depthwise or dense layer: accumulate, then requantize (ReLU is the
  clamp)."""
  return requantize(accumulate(x_q, layer), layer)


def max_pool(x_q, size, stride):
  """Max pooling of [B, H, W, C] (int8, or accumulators), SAME padding; pads never win."""
  _, h, w, _ = x_q.shape
  pads = ((0, 0), same_padding(h, size, stride), same_padding(w, size, stride), (0, 0))
  lowest = INT8_MIN if x_q.dtype == np.int8 else -np.inf
  x_q = np.pad(x_q, pads, constant_values=lowest)
  rows, cols = -(-h // stride), -(-w // stride)
  out = x_q[:, :stride * rows:stride, :stride * cols:stride, :]
  for i in range(size):
    for j in range(size):
      out = np.maximum(out, x_q[:, i:i + stride * rows:stride, j:j + stride * cols:stride, :])
  return out


def average_pool(x_q, layer, tensors):
  """Global average pool: int32 sums of (x_q - zp_x), requantized by s_x / (s_y * H * W)."""
  x, y = tensors[layer['inputs'][0]], tensors[layer['output']]
  _, h, w, _ = x_q.shape
  sums = x_q.astype(np.int64).sum(axis=(1, 2)) - h * w * x['zero_point']
  m0, shift = quantize_multiplier(x['scale'] / (y['scale'] * h * w))
  return requantize(sums, requantizer(m0, shift, y['zero_point']))


def local_response_norm(x_q, layer, tensors):
  """LRN as a float island: dequantize, x / (bias + alpha * window sum of x^2)^beta, quantize."""
  x, y = tensors[layer['inputs'][0]], tensors[layer['output']]
  values = dequantize(x_q, x['scale'], x['zero_point'])
  channels, radius = values.shape[-1], layer['depth_radius']
  index = np.arange(channels)
  band = (np.abs(index[:, None] - index[None, :]) <= radius).astype(np.float32)
  scale = np.float32(layer['bias']) + np.float32(layer['alpha']) * (np.square(values) @ band)
  if layer['beta'] == 0.75:  # s^-3/4 = rsqrt(s) * sqrt(rsqrt(s)), no pow (as the TF layer).
    inverse_root = 1 / np.sqrt(scale)
    values *= inverse_root * np.sqrt(inverse_root)
  else:
    values *= scale ** np.float32(-layer['beta'])
  return quantize(values, y['scale'], y['zero_point'], np.float32)


def prepare_add(layer, tensors):
  """The constants of `add`: y = zp_y + round(M_a (a - zp_a) + M_b (b - zp_b)), M = s_in / s_y.

  Both multipliers share one fixed-point shift t (that of the larger): m = round(M 2^t) <
  2^31, so the int64 sum |(a - zp_a) m_a + (b - zp_b) m_b| < 2^40 is exact.

  Raises:
    ValueError: an input scale over 2^30 times the output's (no shift would fit).
  """
  a, b = (tensors[t] for t in layer['inputs'])
  y = tensors[layer['output']]
  multipliers = np.array([a['scale'], b['scale']], np.float64) / y['scale']
  _, shift = quantize_multiplier(multipliers.max())
  if Q31 + shift < 1:
    raise ValueError(f'add {layer["name"]}: an input scale over 2^30 times the output\'s')
  low = y['zero_point'] if layer['relu'] else INT8_MIN
  return dict(layer, multipliers=np.round(multipliers * 2.0 ** (Q31 + shift)).astype(np.int64),
              input_zero_points=(a['zero_point'], b['zero_point']),
              **requantizer(np.int64(1), shift, y['zero_point'], low))


def add(a_q, b_q, layer):
  """Sum of two int8 tensors of the same shape at their own scales, then the optional ReLU
  (the clamp at zp_y); `layer` from prepare_add."""
  if a_q.shape != b_q.shape:
    raise ValueError(f'add {layer["name"]}: inputs of shapes {a_q.shape} and {b_q.shape}')
  (zp_a, zp_b), (m_a, m_b) = layer['input_zero_points'], layer['multipliers']
  acc = (a_q.astype(np.int64) - zp_a) * m_a + (b_q.astype(np.int64) - zp_b) * m_b
  return requantize(acc, layer)


def prepare_sigmoid(layer, tensors):
  """The sigmoid's table: its int8 output for each of the 256 int8 inputs (float64 once)."""
  x, y = tensors[layer['inputs'][0]], tensors[layer['output']]
  real = x['scale'] * (np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64) - x['zero_point'])
  return dict(layer, table=quantize(1 / (1 + np.exp(-real)), y['scale'], y['zero_point']))


def sigmoid(x_q, layer):
  """The sigmoid, integer-only: a lookup in prepare_sigmoid's table."""
  return layer['table'][x_q.astype(np.int64) - INT8_MIN]


def prepare_multiply(layer, tensors):
  """The constants of `multiply`: M = s_x s_gate / s_y as a Q31 multiplier and shift.

  Raises:
    ValueError: M over 2^30 (no shift would fit).
  """
  x, gate, y = (tensors[t] for t in layer['inputs'] + [layer['output']])
  m0, shift = quantize_multiplier(x['scale'] * gate['scale'] / y['scale'])
  if Q31 + shift < 1:
    raise ValueError(f'mul {layer["name"]}: a multiplier over 2^30')
  return dict(layer, input_zero_points=(x['zero_point'], gate['zero_point']),
              **requantizer(m0, shift, y['zero_point']))


def multiply(x_q, gate_q, layer):
  """Each channel of x [B, H, W, C] times its gate [B, C]: the integer product of the two
  offsets (under 2^16), requantized; `layer` from prepare_multiply."""
  if x_q.ndim != 4 or gate_q.shape != (x_q.shape[0], x_q.shape[-1]):
    raise ValueError(f'mul {layer["name"]}: a gate of shape {gate_q.shape} for {x_q.shape}')
  zp_x, zp_gate = layer['input_zero_points']
  product = ((x_q.astype(np.int64) - zp_x)
             * (gate_q.astype(np.int64) - zp_gate)[:, np.newaxis, np.newaxis, :])
  return requantize(product, layer)


# --------------------------------------------------------------------------- model


def prepare_layer(layer, arrays, tensors):
  """Adds the weight matrix and the requantizer constants to a linear op.

  Raises:
    ValueError: the layer's accumulators could leave int32 (requantizer's int64 bound).
  """
  name = layer['name']
  weights, bias = arrays[f'{name}/weights'], arrays[f'{name}/bias'].astype(np.int64)
  weight_scale = arrays[f'{name}/weight_scale'].astype(np.float64)
  x, y = tensors[layer['inputs'][0]], tensors[layer['output']]
  m0, shift = quantize_multiplier(x['scale'] * weight_scale / y['scale'])
  channel_major = layer['type'] == 'conv' and weights.shape[2] < CHANNEL_MAJOR_BELOW
  if channel_major:  # Rows in (channel, row, column) order, as patches() then gives them.
    matrix = weights.transpose(2, 0, 1, 3).reshape(-1, weights.shape[-1])
  else:
    matrix = weights.reshape(-1, weights.shape[-1])
  offset = bias - x['zero_point'] * matrix.astype(np.int64).sum(axis=0)
  bound = -INT8_MIN * np.abs(matrix.astype(np.int64)).sum(axis=0) + np.abs(offset)
  if bound.max() >= ACCUMULATOR_LIMIT:
    raise ValueError(f'layer {name}: accumulators may reach {bound.max():,}, beyond int32')
  low = y['zero_point'] if layer['relu'] else INT8_MIN
  return dict(layer, matrix=matrix.astype(accumulator_dtype(weights)),
              channel_major=channel_major, input_zero_point=x['zero_point'],
              **requantizer(m0, shift, y['zero_point'], low, offset))


class Int8Model:
  """A quantized model: its ops in order, the int8 arrays and every tensor's scale/zero point."""

  def __init__(self, meta, arrays):
    self.meta, self.arrays = meta, arrays
    self.tensors = meta['tensors']
    self.ops = [self._prepare(op) for op in meta['ops']]
    readers = {}  # tensor -> indices of the ops that read it, in order
    for index, op in enumerate(self.ops):
      for tensor in op['inputs']:
        readers.setdefault(tensor, []).append(index)
    self.last_reader = {tensor: indices[-1] for tensor, indices in readers.items()}
    # A conv or dense whose only reader is a max-pool: pooled before it is requantized.
    self.pool_after = {index: readers[op['output']][0] for index, op in enumerate(self.ops)
                       if op['type'] in ('conv', 'dense')
                       and len(readers.get(op['output'], [])) == 1
                       and self.ops[readers[op['output']][0]]['type'] == 'max_pool'}

  def _prepare(self, op):
    """The op with the constants its kernel needs, computed once."""
    kind = op['type']
    if kind in ('conv', 'dense'):
      return prepare_layer(op, self.arrays, self.tensors)
    if kind == 'depthwise':
      return prepare_depthwise(op, self.arrays, self.tensors)
    prepare = {'add': prepare_add, 'sigmoid': prepare_sigmoid, 'mul': prepare_multiply}.get(kind)
    return op if prepare is None else prepare(op, self.tensors)

  @classmethod
  def load(cls, path):
    """The model in `path`, checked whole first (compress/int8_file.py).

    Raises:
      OSError: the file cannot be opened.
      sparse.FormatError: it is not a sound int8 model file (the message says why).
    """
    arrays, meta = sparse.load(path)
    missing = [key for key in ('ops', 'tensors', 'image_size', 'input')
               if not isinstance(meta, dict) or key not in meta]
    if missing:
      pruned = isinstance(meta, dict) and 'weights' in meta
      kind = ' (a pruned float model from compress/prune.py?)' if pruned else ''
      raise sparse.FormatError(f'{path} is not an int8 model from compress/quantize.py{kind}: '
                               f'its meta lacks {", ".join(missing)}')
    try:
      int8_file.check(meta, arrays)
      model = cls(meta, arrays)
      # A second guard after check's shape pass: one blank image through every op, so a
      # kernel that cannot run fails here, in one line, not in the middle of an evaluation.
      size = meta['image_size']
      model.run(np.zeros([1, size, size, 3], np.int8))
    except (sparse.FormatError, ValueError, IndexError) as e:
      raise sparse.FormatError(f'{path} is not a sound int8 model file: {e}') from e
    return model

  def save(self, path, coding='none'):
    """Writes the model file (coded as sparse.CODINGS says); returns its arrays' payload
    bytes as stored (sparse.save)."""
    return sparse.save(path, self.arrays, self.meta, coding)

  def run(self, x_q, keep_all=False):
    """int8 input [B, s, s, 3] -> int8 logits [B, 10] (or every tensor by id, keep_all).

    Unless keep_all, a conv followed by a max-pool pools its accumulators and requantizes
    the pooled ones: requantization never decreases with the accumulator (per channel), so
    max then requantize equals requantize then max, on a quarter of the values.
    """
    values, fused = {self.meta['input']: x_q}, set()
    for index, op in enumerate(self.ops):
      if index in fused:
        continue
      inputs = [values[i] for i in op['inputs']]
      pool = None if keep_all else self.pool_after.get(index)
      if pool is None:
        values[op['output']] = self.apply(op, inputs)
      else:
        pool_op = self.ops[pool]
        acc = max_pool(accumulate(inputs[0], op), pool_op['size'], pool_op['stride'])
        values[pool_op['output']] = requantize(acc, op)
        fused.add(pool)
      if not keep_all:  # Frees the tensors no later op reads.
        for tensor in set(op['inputs']):
          if self.last_reader[tensor] == index:
            del values[tensor]
    return values if keep_all else values[self.meta['output']]

  def apply(self, op, inputs):
    """One op on its int8 inputs."""
    kind = op['type']
    if kind in ('conv', 'dense', 'depthwise'):
      return linear(inputs[0], op)
    if kind == 'max_pool':
      return max_pool(inputs[0], op['size'], op['stride'])
    if kind == 'flatten':
      return inputs[0].reshape(inputs[0].shape[0], -1)
    if kind == 'avg_pool':
      return average_pool(inputs[0], op, self.tensors)
    if kind == 'lrn':
      return local_response_norm(inputs[0], op, self.tensors)
    if kind == 'concat':
      return np.concatenate(inputs, axis=-1)
    if kind == 'add':
      return add(*inputs, op)
    if kind == 'sigmoid':
      return sigmoid(inputs[0], op)
    if kind == 'mul':
      return multiply(*inputs, op)
    raise ValueError(f'unknown op type {kind!r} in the model file')

  def quantize_input(self, images):
    """Standardized float32 images -> int8 at the input tensor's scale and zero point."""
    x = self.tensors[self.meta['input']]
    return quantize(images, x['scale'], x['zero_point'])

  def predict(self, images, batch_size=BATCH_SIZE, threads=1, progress=None):
    """Class predictions int64 [N] for standardized float32 images [N, s, s, 3].

    With threads > 1, each thread runs its own batches: NumPy's elementwise work holds one
    core per call, so this is how the runner uses both cores here (with one BLAS thread
    each; the runner sets OPENBLAS_NUM_THREADS=1 before NumPy starts).
    Ties between int8 logits go to the lowest class index, as np.argmax (and TFLite) do.
    `progress(images done)`, if given, hears after each batch (from any thread).
    """
    def classify(start):
      found = np.argmax(self.run(self.quantize_input(images[start:start + batch_size])), axis=1)
      if progress is not None:
        progress(len(found))
      return found

    starts = range(0, len(images), batch_size)
    if threads == 1:
      return np.concatenate([classify(start) for start in starts])
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
      return np.concatenate(list(pool.map(classify, starts)))


# --------------------------------------------------------------------------- data


def standardize(images):
  """tf.image.per_image_standardization in NumPy: (x - mean) / max(std, 1 / sqrt(N))."""
  x = images.astype(np.float32)
  axes = tuple(range(1, x.ndim))
  centred = x - x.mean(axis=axes, keepdims=True)
  std = np.sqrt(np.square(centred).mean(axis=axes, keepdims=True))  # Two passes, as TF.
  return centred / np.maximum(std, 1 / np.sqrt(np.prod(x.shape[1:])).astype(np.float32))


def eval_preprocess(images, size):
  """Central size x size crop of uint8 [N, 32, 32, 3] and standardization -> float32."""
  return standardize(cifar10_records.central_crop(images, size))


def format_eta(seconds):
  """A duration as H:MM:SS, whole seconds: the form of cifar10_trainer's ETA (a timedelta)."""
  return str(datetime.timedelta(seconds=round(seconds)))


class Progress:
  """A callable for batch loops (Int8Model.predict, fake_quant.precision, cifar10_export's
  check): called with each batch's image count, it calls log(line) with the images done out
  of `total`, the images/s so far and the ETA, once both `every` of the total and `seconds`
  have passed since the previous line (the rarer of the two: a phase of a few seconds stays
  silent, a long one gets about ten lines); none at the end (the caller's result follows).
  Thread-safe; `clock` is for tests."""

  def __init__(self, total, log, what='scoring', every=0.1, seconds=10.0,
               clock=time.perf_counter):
    self.total, self.log, self.what, self.clock = total, log, what, clock
    self.step, self.seconds = max(1, int(total * every)), seconds
    self.done, self.start = 0, clock()
    self.next_done, self.next_time = self.step, self.start + seconds
    self.lock = threading.Lock()

  def __call__(self, count):
    with self.lock:
      self.done += count
      now = self.clock()
      if self.done < self.next_done or now < self.next_time or self.done >= self.total:
        return
      self.next_done, self.next_time = self.done + self.step, now + self.seconds
      rate = self.done / max(now - self.start, 1e-9)
      self.log(f'{self.what} {self.done:,}/{self.total:,} images ({rate:,.0f} images/s, '
               f'ETA {format_eta((self.total - self.done) / rate)})')


def evaluate(model, images, labels, batch_size=BATCH_SIZE, threads=1, log=None):
  """(precision @ 1, images/s, predictions) on uint8 images, preprocessing included;
  `log(line)`: progress lines (Progress)."""
  start = time.perf_counter()
  progress = Progress(len(images), log, 'int8 scoring') if log else None
  predictions = model.predict(eval_preprocess(images, model.meta['image_size']), batch_size,
                              threads, progress)
  seconds = time.perf_counter() - start
  return float(np.mean(predictions == labels)), len(images) / seconds, predictions


def run(values):
  """Scores the model file on the test set as the flag values say and prints the report's
  JSON line; returns what sys.exit takes (None when done, `error: ...` for a bad input)."""
  out = values['predictions_out']
  try:
    if out and not os.path.isdir(os.path.dirname(os.path.abspath(out))):
      raise FileNotFoundError(f'--predictions_out={out}: its folder does not exist')
    if out and os.path.isdir(out):
      raise IsADirectoryError(f'--predictions_out={out} is a folder: pass a file name')
    model = Int8Model.load(values['model_file'])
    test = cifar10_records.read_split(values['data_dir'], 'test')
  except (OSError, KeyError, ValueError, cifar10_records.DataError) as e:
    return f'error: {e}'
  precision, rate, predictions = evaluate(model, test.images, test.labels, values['batch_size'],
                                          values['threads'])
  if out:
    try:
      np.save(out, predictions)
    except OSError as e:
      return f'error: cannot write --predictions_out={out} ({e})'
  print(json.dumps({'model_file': values['model_file'], 'precision': precision,
                    'num_examples': len(test), 'images_per_sec': round(rate, 1),
                    'batch_size': values['batch_size'], 'threads': values['threads']}))
  return None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  sys.exit(run({name: holder.value for name, holder in _FLAGS.items()}))


def define_flags(flag_values=flags.FLAGS):
  """The runner's flags; returns {name: FlagHolder}."""
  return dict(
      model_file=flags.DEFINE_string('model_file', None, 'An .npz from compress/quantize.py.',
                                     required=True, flag_values=flag_values),
      data_dir=flags.DEFINE_string('data_dir', 'data', 'Folder with cifar-10-batches-bin/ or '
                                   'cifar-10-binary.tar.gz, or the archive itself.',
                                   flag_values=flag_values),
      batch_size=flags.DEFINE_integer('batch_size', BATCH_SIZE, 'Images per forward pass.',
                                      lower_bound=1, flag_values=flag_values),
      threads=flags.DEFINE_integer('threads', os.cpu_count() or 1, 'Worker threads, each on '
                                   'its own batches; default one per core.', lower_bound=1,
                                   flag_values=flag_values),
      predictions_out=flags.DEFINE_string('predictions_out', None, 'Optional .npy file for '
                                          'the predicted classes, in test-file order.',
                                          flag_values=flag_values),
  )


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
