"""A model traced into a list of ops over named tensors, and that list run in TensorFlow.

The op list is JSON-able: compress/quantize.py calibrates on it (run in float), the
fake-quant path (compress/fake_quant.py) runs it with quantize-dequantize at every tensor,
and the exported int8 file stores it for the NumPy runner (compress/int8.py). The tracer
follows the model's structure (Sequential, Concat, Residual, SqueezeExcite and the leaf
layers), never variable names.
"""

import tensorflow as tf

import cifar10_model as cm

INPUT = 'input'  # id of the model's input tensor


class QuantizationError(ValueError):
  """The model has a layer or a layout the int8 path cannot represent."""


def trace_ops(model, fold_batchnorm=False):
  """The model as ops over named tensors, in execution order.

  With `fold_batchnorm`, each Conv2D followed by a BatchNorm is one conv op whose leaf is a
  FoldedConv of the two: the op list equals that of cifar10_model.fold_batchnorm(model), but
  its leaves compute from the model's own variables (quantization-aware training trains
  through them). Without it, a BatchNorm is refused (fold the model first).

  Returns:
    (ops, leaves, output): ops are JSON-able dicts (type, name, inputs, output and the
    layer's hyperparameters); leaves[i] is the layer object of ops[i] (None for the ops
    without a layer, concat, add, sigmoid and mul: `join` computes them);
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
      inner = list(layer.layers)
      while inner:
        if fold_batchnorm and len(inner) > 1 and isinstance(inner[1], cm.BatchNorm):
          if not isinstance(inner[0], (cm.Conv2D, cm.DepthwiseConv2D)):
            raise QuantizationError(f'{inner[1].name}: a BatchNorm folds only into a Conv2D '
                                    'or DepthwiseConv2D just before it')
          folded = FoldedConv(inner[0], inner[1])
          tensor = add(folded.op(), folded, [tensor])
          inner = inner[2:]
        else:
          tensor = walk(inner.pop(0), tensor)
      return tensor
    if isinstance(layer, cm.Concat):
      return add({'type': 'concat'}, None, [walk(b, tensor) for b in layer.branches])
    if isinstance(layer, cm.SqueezeExcite):  # Its parts, then the two ops that apply them.
      gate = tensor
      for part in (layer.pool, layer.squeeze, layer.excite):
        gate = add(leaf_op(part), part, [gate])
      gate = add({'type': 'sigmoid', 'name': f'{layer.name}_sigmoid'}, None, [gate])
      return add({'type': 'mul', 'name': layer.name}, None, [tensor, gate])
    if isinstance(layer, cm.Residual):
      return add({'type': 'add', 'name': layer.name, 'relu': layer.relu}, None,
                 [tensor, walk(layer.branch, tensor)])
    if isinstance(layer, cm.Dropout):
      return tensor  # Identity at inference.
    return add(leaf_op(layer), layer, [tensor])

  return ops, leaves, walk(model, INPUT)


def leaf_op(layer):
  """The op dict of one layer (its type and hyperparameters)."""
  if isinstance(layer, cm.Conv2D):
    return {'type': 'conv', 'name': layer.name, 'kernel_size': int(layer.kernel.shape[0]),
            'stride': layer.stride, 'relu': layer.relu}
  if isinstance(layer, cm.DepthwiseConv2D):
    return {'type': 'depthwise', 'name': layer.name, 'kernel_size': int(layer.kernel.shape[0]),
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


class FoldedConv:
  """A Conv2D and the evaluation-mode BatchNorm after it, as the one convolution that
  cifar10_model.fold_batchnorm makes of them, computed from their live variables each call
  (so gradients reach the kernel, gamma and beta; the moving statistics stay as they are)."""

  def __init__(self, conv, norm):
    self.conv, self.norm = conv, norm
    self.name, self.stride, self.relu = conv.name, conv.stride, norm.relu
    self.convolution = conv.convolution

  def op(self):
    """The op dict of the folded convolution."""
    return {**leaf_op(self.conv), 'relu': self.relu}

  def folded(self):
    """(kernel, bias) of the folded convolution (cifar10_model.folded_weights)."""
    return cm.folded_weights(self.conv, self.norm)

  def __call__(self, x, training=False):
    del training  # Always the evaluation-mode BatchNorm.
    kernel, bias = self.folded()
    y = self.convolution(x, tf.cast(kernel, x.dtype), self.stride) + tf.cast(bias, x.dtype)
    return tf.nn.relu(y) if self.relu else y


def join(op, inputs):
  """The output of an op without a layer (leaf None): concat, add (then its ReLU), the
  sigmoid of a gate, or mul (each channel of a [B, H, W, C] tensor times a [B, C] gate)."""
  kind = op['type']
  if kind == 'concat':
    return tf.concat(inputs, axis=-1)
  if kind == 'sigmoid':
    return tf.sigmoid(inputs[0])
  if kind == 'mul':
    return tf.multiply(inputs[0], tf.convert_to_tensor(inputs[1])[:, None, None, :])
  if kind == 'add':
    total = tf.add_n(inputs)
    return tf.nn.relu(total) if op['relu'] else total
  raise QuantizationError(f'op {op.get("name")!r}: no float form for an op of type {kind!r}')


def run_float(ops, leaves, images, tensor_fn=None):
  """Runs the ops in TensorFlow; tensor_fn (e.g. fake quantization) maps each new tensor.

  Returns:
    {tensor id: float32 tensor} for the input and every op's output.
  """
  tensor_fn = tensor_fn or (lambda tensor_id, value: value)
  values = {INPUT: tensor_fn(INPUT, tf.convert_to_tensor(images, tf.float32))}
  for op, leaf in zip(ops, leaves):
    inputs = [values[i] for i in op['inputs']]
    value = join(op, inputs) if leaf is None else leaf(inputs[0], training=False)
    values[op['output']] = tensor_fn(op['output'], value)
  return values
