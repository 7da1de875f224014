"""The checks an int8 model file must pass before compress/int8.py computes anything with it.

The file (compress/quantize.py writes it) is input like any other: its JSON `meta` lists the
ops, every tensor's scale and zero point and the input size, and its arrays hold each linear
layer's int8 weights, int32 biases and float32 weight scales. `check(meta, arrays)` verifies
the types, ranges, references and shapes of all of it against each other, then carries the
shape of one image through every op (each op's inputs against what its kernel takes, the
last output against the [N, 10] logits), and raises one FormatError naming the first
problem, so a crafted or damaged file ends in a one-line error, never in a traceback, an
allocation its values ask for or a silent evaluation of a model of the wrong shape. NumPy,
the standard library and cifar10_records (the class count) only.
"""

import math
import numbers

import numpy as np

import cifar10_records
from compress import sparse

OP_FIELDS = {  # The fields each op type carries besides type, name, inputs and output.
    'conv': {'kernel_size': (1, 15), 'stride': (1, 8), 'relu': bool},
    'depthwise': {'kernel_size': (1, 15), 'stride': (1, 8), 'relu': bool},
    'dense': {'relu': bool},
    'max_pool': {'size': (1, 15), 'stride': (1, 8)},
    'lrn': {'depth_radius': (0, 1024), 'bias': float, 'alpha': float, 'beta': float},
    'flatten': {},
    'avg_pool': {},
    'concat': {},
    'add': {'relu': bool},
    'sigmoid': {},
    'mul': {},
}
LINEAR_OPS = ('conv', 'depthwise', 'dense')  # the ops with weights, biases and scales
MAX_IMAGE_SIZE = 32  # CIFAR-10's side: no model reads more
MAX_OPS = 1000


def _integer(value, low, high):
  return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
          and low <= value <= high)


def _finite(value):
  return (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and math.isfinite(value))


def _check_tensor(name, params):
  if not isinstance(params, dict):
    raise sparse.FormatError(f'tensor {name!r}: its parameters are not an object')
  scale, zero_point = params.get('scale'), params.get('zero_point')
  if not (_finite(scale) and scale > 0):
    raise sparse.FormatError(f'tensor {name!r}: scale {scale!r} is not a positive number')
  if not _integer(zero_point, -128, 127):
    raise sparse.FormatError(f'tensor {name!r}: zero point {zero_point!r} is not in -128..127')


def _check_fields(op):
  for field, rule in OP_FIELDS[op['type']].items():
    value = op.get(field)
    if rule is bool:
      good = isinstance(value, bool)
    elif rule is float:
      good = _finite(value)
    else:
      good = _integer(value, *rule)
    if not good:
      raise sparse.FormatError(f'op {op.get("name")!r}: {field} {value!r} is out of range')


def _check_linear(op, arrays):
  """A conv or dense op's arrays: present, of their dtypes, of shapes that fit together."""
  name = op['name']
  weights, bias, scale = (arrays.get(f'{name}/{part}')
                          for part in ('weights', 'bias', 'weight_scale'))
  rank = {'conv': 4, 'depthwise': 3, 'dense': 2}[op['type']]
  if not (isinstance(weights, np.ndarray) and weights.dtype == np.int8 and weights.ndim == rank):
    raise sparse.FormatError(f'op {name!r}: {name}/weights is not an int8 array of rank {rank}')
  if op['type'] != 'dense' and weights.shape[:2] != (op['kernel_size'],) * 2:
    raise sparse.FormatError(f'op {name!r}: weights {weights.shape} do not match kernel size '
                             f'{op["kernel_size"]}')
  outputs = weights.shape[-1]
  if not (isinstance(bias, np.ndarray) and bias.dtype == np.int32
          and bias.shape == (outputs,)):
    raise sparse.FormatError(f'op {name!r}: {name}/bias is not int32 [{outputs}]')
  if not (isinstance(scale, np.ndarray) and scale.dtype == np.float32
          and scale.shape == (outputs,) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
    raise sparse.FormatError(f'op {name!r}: {name}/weight_scale is not positive float32 '
                             f'[{outputs}]')


def check(meta, arrays):
  """Raises sparse.FormatError unless meta and arrays form a model the runner can compute."""
  if not isinstance(meta, dict):
    raise sparse.FormatError('its meta is not an object')
  ops, tensors = meta.get('ops'), meta.get('tensors')
  if not isinstance(tensors, dict) or not all(isinstance(t, str) for t in tensors):
    raise sparse.FormatError('its meta has no table of tensors')
  for name, params in tensors.items():
    _check_tensor(name, params)
  if not _integer(meta.get('image_size'), 1, MAX_IMAGE_SIZE):
    raise sparse.FormatError(f'image_size {meta.get("image_size")!r} is not in '
                             f'1..{MAX_IMAGE_SIZE}')
  if not isinstance(ops, list) or not 1 <= len(ops) <= MAX_OPS:
    raise sparse.FormatError(f'its ops are not a list of 1..{MAX_OPS}')
  defined = {meta.get('input')}
  if meta.get('input') not in tensors:
    raise sparse.FormatError(f'its input {meta.get("input")!r} is not a known tensor')
  for op in ops:
    if not isinstance(op, dict) or op.get('type') not in OP_FIELDS:
      raise sparse.FormatError(f'op {op!r:.80}: not an op of a known type '
                               f'({", ".join(OP_FIELDS)})')
    inputs, output = op.get('inputs'), op.get('output')
    if not (isinstance(op.get('name'), str) and isinstance(inputs, list) and inputs
            and all(isinstance(t, str) and t in defined for t in inputs)):
      raise sparse.FormatError(f'op {op.get("name")!r}: its inputs {inputs!r:.80} are not '
                               'tensors computed before it')
    if not isinstance(output, str) or output in defined or output not in tensors:
      raise sparse.FormatError(f'op {op.get("name")!r}: its output {output!r} is not a new '
                               'tensor of the table')
    _check_fields(op)
    if op['type'] in ('add', 'mul') and len(inputs) != 2:
      raise sparse.FormatError(f'op {op["name"]!r}: {op["type"]} takes 2 inputs, not '
                               f'{len(inputs)}')
    if op['type'] in LINEAR_OPS:
      _check_linear(op, arrays)
    defined.add(output)
  if meta.get('output') not in defined:
    raise sparse.FormatError(f'its output {meta.get("output")!r} is not computed by its ops')
  _check_shapes(meta, arrays)


# --------------------------------------------------------------------------- shapes
# Shapes are of one image (the batch axis left out) and shown with it, as [N, H, W, C].


def _show(shape):
  return '[' + ', '.join(['N', *map(str, shape)]) + ']'


def _spatial(shape, stride):
  """[H, W] after a SAME window of this stride (compress/int8.py's same_padding)."""
  return (-(-shape[0] // stride), -(-shape[1] // stride))


def _expect(where, tensor, shape, good, expected, why):
  if not good:
    raise sparse.FormatError(f'{where}: its input {tensor!r} is {_show(shape)}, expected '
                             f'{expected} ({why})')


def _linear_shape(where, op, tensor, shape, arrays):
  """The output shape of a conv, depthwise or dense op whose arrays _check_linear passed."""
  weights = arrays[f'{op["name"]}/weights'].shape
  if op['type'] == 'dense':
    why = 'the rows of its weights' + ('' if len(shape) == 1 else
                                       '; a dense takes a flattened input')
    _expect(where, tensor, shape, shape == weights[:1], f'[N, {weights[0]}]', why)
    return weights[1:]
  _expect(where, tensor, shape, len(shape) == 3 and shape[2] == weights[2],
          f'[N, H, W, {weights[2]}]', 'the input channels of its weights')
  return _spatial(shape, op['stride']) + weights[-1:]


def _output_shape(where, op, shapes, arrays):
  """The shape of op's output for its inputs' `shapes`, or a FormatError naming `where`."""
  kind, tensor, shape = op['type'], op['inputs'][0], shapes[0]
  if kind in LINEAR_OPS:
    return _linear_shape(where, op, tensor, shape, arrays)
  if kind in ('max_pool', 'lrn', 'avg_pool'):
    _expect(where, tensor, shape, len(shape) == 3, '[N, H, W, C]', f'a {kind} takes images')
    if kind == 'max_pool':
      return _spatial(shape, op['stride']) + shape[2:]
    return shape if kind == 'lrn' else shape[2:]
  if kind == 'flatten':
    return (math.prod(shape),)
  if kind == 'sigmoid':
    return shape
  if kind == 'concat':
    for other, found in zip(op['inputs'], shapes):
      _expect(where, other, found, found[:-1] == shape[:-1], _show(shape[:-1] + ('C',)),
              f'its first input {tensor!r} is {_show(shape)}')
    return shape[:-1] + (sum(found[-1] for found in shapes),)
  if kind == 'add':
    _expect(where, op['inputs'][1], shapes[1], shapes[1] == shape, _show(shape),
            f'the shape of the first input {tensor!r}')
    return shape
  _expect(where, tensor, shape, len(shape) == 3, '[N, H, W, C]', 'mul gates images')
  _expect(where, op['inputs'][1], shapes[1], shapes[1] == shape[2:], _show(shape[2:]),
          f'its gate: one value per channel of {tensor!r}')
  return shape


# Values of one op's output for one image: the largest model here has under 2^17; 2^24 (64 MiB
# of int32 accumulators per image) is far past any CIFAR-10 model and bounds a crafted file.
MAX_VALUES_PER_IMAGE = 1 << 24


def _check_shapes(meta, arrays):
  """One image [s, s, 3] through every op; the model's output must be the class logits."""
  size = meta['image_size']
  shapes = {meta['input']: (size, size, 3)}
  makers = {meta['input']: 'the input'}
  for index, op in enumerate(meta['ops']):
    where = f'op {index} {op["name"]!r} ({op["type"]})'
    shape = _output_shape(where, op, [shapes[t] for t in op['inputs']], arrays)
    if math.prod(shape) > MAX_VALUES_PER_IMAGE:  # A crafted chain of concats, say.
      raise sparse.FormatError(f'{where}: its output is {_show(shape)}, over '
                               f'{MAX_VALUES_PER_IMAGE:,} values per image')
    shapes[op['output']], makers[op['output']] = shape, where
  output, classes = meta['output'], cifar10_records.NUM_CLASSES
  if shapes[output] != (classes,):
    raise sparse.FormatError(f'its output {output!r}, of {makers[output]}, is '
                             f'{_show(shapes[output])}, expected [N, {classes}] (the logits '
                             f'of the {classes} classes)')
