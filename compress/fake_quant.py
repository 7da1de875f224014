"""Fake quantization: the traced op list (compress/trace.py) run with every tensor quantized
and dequantized, float kernels: the reference the integer path (compress/int8.py) is checked
against, op by op, and scored on the test set.
"""

import numpy as np
import tensorflow as tf

from compress import int8
from compress import int8_file
from compress import trace

BATCH_SIZE = 500  # images per eager fake-quant pass (the runner's own batch is far smaller)


# --------------------------------------------------------------------------- fake quant


def fake_quantize(value, params):
  """Quantize-dequantize in float32: (clamp(round(x / s) + zp) - zp) * s."""
  scale, zero_point = params['scale'], params['zero_point']
  q = tf.clip_by_value(tf.round(value / scale) + zero_point, int8.INT8_MIN, int8.INT8_MAX)
  return (q - zero_point) * scale


def load_weights(leaves, ops, arrays, params):
  """Sets each conv/depthwise/dense layer's variables to its dequantized int8 weights and
  bias."""
  for op, leaf in zip(ops, leaves):
    if op['type'] in int8_file.LINEAR_OPS:
      name, s_x = op['name'], params[op['inputs'][0]]['scale']
      s_w = arrays[f'{name}/weight_scale'].astype(np.float64)
      kernel = arrays[f'{name}/weights'] * s_w
      leaf.kernel.assign(kernel[..., None] if op['type'] == 'depthwise' else kernel)
      leaf.bias.assign(arrays[f'{name}/bias'] * (s_x * s_w))


def run(ops, leaves, params, images):
  """run_float with every tensor quantized and dequantized with its params (path 1)."""
  return trace.run_float(ops, leaves, images, lambda t, v: fake_quantize(v, params[t]))


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
    output = trace.join(op, inputs) if leaf is None else leaf(inputs[0], training=False)
    expected = int8.quantize(output.numpy(), **params[op['output']])
    difference = np.abs(expected.astype(np.int32) - values[op['output']].astype(np.int32))
    rows.append({'name': op['name'], 'type': op['type'],
                 'max_step_difference': int(difference.max()),
                 'fraction_different': float(np.mean(difference > 0))})
  return rows


def precision(ops, leaves, params, images, labels, batch_size=BATCH_SIZE, log=None):
  """Precision @ 1 of the fake-quant path over standardized float32 images; `log(line)`:
  progress lines (int8.Progress)."""
  correct = 0
  progress = int8.Progress(len(labels), log, 'fake-quant scoring') if log else None
  for start in range(0, len(labels), batch_size):
    batch = images[start:start + batch_size]
    logits = run(ops, leaves, params, batch)[ops[-1]['output']]
    correct += int(np.sum(np.argmax(logits.numpy(), axis=1) == labels[start:start + batch_size]))
    if progress:
      progress(len(batch))
  return correct / len(labels)
