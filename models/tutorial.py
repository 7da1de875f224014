"""The TensorFlow CIFAR-10 tutorial's network, exactly (DESIGN.md section 4).

conv1 5x5x3x64 -> pool1 -> lrn1 -> conv2 5x5x64x64 -> lrn2 -> pool2 -> flatten
-> local3 384 -> local4 192 -> softmax_linear 10 (logits, no activation).
"""

import math

import cifar10_model as cm


def build(regime, image_size=24):
  """Builds the tutorial model.

  Args:
    regime: a cifar10_model.Regime (initialisation and weight decay modes).
    image_size: input side, 24 (cropped) or 32.

  Returns:
    A cifar10_model.Model mapping float32 [B, s, s, 3] to logits [B, 10].
  """
  pooled = math.ceil(math.ceil(image_size / 2) / 2)
  flat = pooled * pooled * 64

  def conv(name, c_in, c_out, bias):
    shape = [5, 5, c_in, c_out]
    return cm.Conv2D(c_in, c_out, 5, stddev=regime.stddev(shape, 5e-2),
                     bias_init=regime.bias(bias), name=name)

  def dense(name, d_in, d_out, stddev, bias, relu=True, decay=True):
    shape = [d_in, d_out]
    return cm.Dense(d_in, d_out, stddev=regime.stddev(shape, stddev),
                    bias_init=regime.bias(bias), relu=relu,
                    decay=regime.decay_coefficient(shape) if decay else 0.0, name=name)

  layers = [
      conv('conv1', 3, 64, bias=0.0),
      cm.MaxPool(name='pool1'),
      cm.LRN(name='norm1'),
      conv('conv2', 64, 64, bias=0.1),
      cm.LRN(name='norm2'),
      cm.MaxPool(name='pool2'),
      cm.Flatten(name='flatten'),
      dense('local3', flat, 384, stddev=0.04, bias=0.1),
      dense('local4', 384, 192, stddev=0.04, bias=0.1),
      dense('softmax_linear', 192, 10, stddev=1 / 192.0, bias=0.0, relu=False, decay=False),
  ]
  return cm.Model(layers, image_size, name='tutorial')
