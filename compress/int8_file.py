"""The checks an int8 model file must pass before compress/int8.py computes anything with it.

The file (compress/quantize.py writes it) is input like any other: its JSON `meta` lists the
ops, every tensor's scale and zero point and the input size, and its arrays hold each linear
layer's int8 weights, int32 biases and float32 weight scales. `check(meta, arrays)` verifies
the types, ranges, references and shapes of all of it against each other and raises one
FormatError naming the first problem, so a crafted or damaged file ends in a one-line error,
never in a traceback or an allocation its values ask for. NumPy and the standard library only.
"""

import math
import numbers

import numpy as np

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
