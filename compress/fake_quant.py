"""The TensorFlow side of int8: the model as a list of ops, run in float or fake-quantized.

compress/quantize.py traces a model into ops over named tensors (JSON-able: the exported
file stores them for compress/int8.py), runs them in float for calibration, and runs them
fake-quantized (quantize-dequantize at every tensor boundary, float kernels) as the
reference the integer path is checked against, op by op.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Hide TensorFlow's start-up INFO lines.
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')  # ~1.7x faster here; bench/README.md.

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

import cifar10_model as cm
from compress import int8

INPUT = 'input'  # id of the model's input tensor
BATCH_SIZE = 500  # images per eager fake-quant pass (the runner's own batch is far smaller)


class QuantizationError(ValueError):
  """The model has a layer or a layout the int8 path cannot represent."""


# --------------------------------------------------------------------------- the op list


def trace_ops(model):
  """The model as ops over named tensors, in execution order.

  Returns:
    (ops, leaves, output): ops are JSON-able dicts (type, name, inputs, output and the
    layer's hyperparameters); leaves[i] is the layer object of ops[i] (None for a concat);
    output is the id of the logits tensor.
  """
  ops, leaves = [], []

  def add(op, leaf, inputs):
    op.update(inputs=list(inputs), output=f't{len(ops)}')
    op.setdefault('name', f'{op["type"]}{len(ops)}')
    ops.append(op)
    leaves.append(leaf)
    return op['output']

  def walk(layer, tensor):
    if isinstance(layer, cm.Sequential):
      for inner in layer.layers:
        tensor = walk(inner, tensor)
      return tensor
    if isinstance(layer, cm.Concat):
      return add({'type': 'concat'}, None, [walk(b, tensor) for b in layer.branches])
    if isinstance(layer, cm.Dropout):
      return tensor  # Identity at inference.
    return add(leaf_op(layer), layer, [tensor])

  return ops, leaves, walk(model, INPUT)


def leaf_op(layer):
  """The op dict of one layer (its type and hyperparameters)."""
  if isinstance(layer, cm.Conv2D):
    return {'type': 'conv', 'name': layer.name, 'kernel_size': int(layer.kernel.shape[0]),
            'stride': layer.stride, 'relu': layer.relu}
  if isinstance(layer, cm.Dense):
    return {'type': 'dense', 'name': layer.name, 'relu': layer.relu}
  if isinstance(layer, cm.MaxPool):
    return {'type': 'max_pool', 'size': layer.size, 'stride': layer.stride}
  if isinstance(layer, cm.LRN):
    return {'type': 'lrn', 'depth_radius': layer.depth_radius, 'bias': layer.bias,
            'alpha': layer.alpha, 'beta': layer.beta}
  if isinstance(layer, cm.Flatten):
    return {'type': 'flatten'}
  if isinstance(layer, cm.GlobalAvgPool):
    return {'type': 'avg_pool'}
  raise QuantizationError(f'no int8 form for layer {layer.name!r} ({type(layer).__name__})')


def run_float(ops, leaves, images, tensor_fn=None):
  """Runs the ops in TensorFlow; tensor_fn (e.g. fake quantization) maps each new tensor.

  Returns:
    {tensor id: float32 tensor} for the input and every op's output.
  """
  tensor_fn = tensor_fn or (lambda tensor_id, value: value)
  values = {INPUT: tensor_fn(INPUT, tf.convert_to_tensor(images, tf.float32))}
  for op, leaf in zip(ops, leaves):
    inputs = [values[i] for i in op['inputs']]
    value = tf.concat(inputs, axis=-1) if leaf is None else leaf(inputs[0], training=False)
    values[op['output']] = tensor_fn(op['output'], value)
  return values


# --------------------------------------------------------------------------- fake quant


def fake_quantize(value, params):
  """Quantize-dequantize in float32: (clamp(round(x / s) + zp) - zp) * s."""
  scale, zero_point = params['scale'], params['zero_point']
  q = tf.clip_by_value(tf.round(value / scale) + zero_point, int8.INT8_MIN, int8.INT8_MAX)
  return (q - zero_point) * scale


def load_weights(leaves, ops, arrays, params):
  """Sets each conv/dense layer's variables to its dequantized int8 weights and bias."""
  for op, leaf in zip(ops, leaves):
    if op['type'] in ('conv', 'dense'):
      name, s_x = op['name'], params[op['inputs'][0]]['scale']
      s_w = arrays[f'{name}/weight_scale'].astype(np.float64)
      leaf.kernel.assign(arrays[f'{name}/weights'] * s_w)
      leaf.bias.assign(arrays[f'{name}/bias'] * (s_x * s_w))


def run(ops, leaves, params, images):
  """run_float with every tensor quantized and dequantized with its params (path 1)."""
  return run_float(ops, leaves, images, lambda t, v: fake_quantize(v, params[t]))


# --------------------------------------------------------------------------- checks


def compare_layers(ops, leaves, int_model, images):
  """Each op in float (fake-quant weights) and in integers, on the same int8 inputs.

  Args:
    images: standardized float32 [N, s, s, 3].

  Returns:
    One dict per op: name, type, max_step_difference, fraction_different (of its outputs).
  """
  params = int_model.tensors
  values = int_model.run(int_model.quantize_input(images), keep_all=True)
  rows = []
  for op, leaf in zip(ops, leaves):
    inputs = [int8.dequantize(values[t], **params[t]) for t in op['inputs']]
    output = tf.concat(inputs, axis=-1) if leaf is None else leaf(inputs[0], training=False)
    expected = int8.quantize(output.numpy(), **params[op['output']])
    difference = np.abs(expected.astype(np.int32) - values[op['output']].astype(np.int32))
    rows.append({'name': op['name'], 'type': op['type'],
                 'max_step_difference': int(difference.max()),
                 'fraction_different': float(np.mean(difference > 0))})
  return rows


def precision(ops, leaves, params, images, labels, batch_size=BATCH_SIZE):
  """Precision @ 1 of the fake-quant path over standardized float32 images."""
  correct = 0
  for start in range(0, len(labels), batch_size):
    batch = images[start:start + batch_size]
    logits = run(ops, leaves, params, batch)[ops[-1]['output']]
    correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == labels[start:start + batch_size]))
  return correct / len(labels)
