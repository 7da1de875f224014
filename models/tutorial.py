"""The TensorFlow CIFAR-10 tutorial's network, exactly (docs/design.md).

conv1 5x5x3x64 -> pool1 -> lrn1 -> conv2 5x5x64x64 -> lrn2 -> pool2 -> flatten
-> local3 384 -> local4 192 -> softmax_linear 10 (logits, no activation).
"""

import cifar10_model as cm


def classifier(regime, flat, hidden=(('local3', 384), ('local4', 192))):
  """The tutorial's head: flatten, hidden ReLU layers with weight decay, linear logits.

  Args:
    regime: a cifar10_model.Regime.
    flat: size of the flattened input.
    hidden: (name, units) of each hidden layer.
  """
  layers, width = [cm.Flatten(name='flatten')], flat
  for name, units in hidden:
    units = regime.width(name, units)
    layers.append(cm.dense(regime, name, width, units, tutorial_stddev=0.04,
                           tutorial_bias=0.1))
    width = units
  layers.append(cm.dense(regime, 'softmax_linear', width, cm.NUM_CLASSES, tutorial_stddev=1 / 192.0,
                         relu=False, decay=False))
  return layers


def build(regime, image_size=24):
  """Builds the tutorial model.

  Args:
    regime: a cifar10_model.Regime (initialisation and weight decay modes; the widths of
      conv1, conv2, local3 and local4 when slimmed).
    image_size: input side, 24 (cropped) or 32.

  Returns:
    A cifar10_model.Model mapping float32 [B, s, s, 3] to logits [B, 10].
  """
  side = cm.pooled_size(image_size, 2)
  conv1, conv2 = regime.width('conv1', 64), regime.width('conv2', 64)  # slimmed, or 64
  layers = [
      cm.conv(regime, 'conv1', 3, conv1, 5),
      cm.MaxPool(name='pool1'),
      cm.LRN(name='norm1'),
      cm.conv(regime, 'conv2', conv1, conv2, 5, tutorial_bias=0.1),
      cm.LRN(name='norm2'),
      cm.MaxPool(name='pool2'),
  ] + classifier(regime, side * side * conv2)
  return cm.Model(layers, image_size, name='tutorial')
