"""The study's AlexNet-style variants of the tutorial model (docs/design.md).

alex0  tutorial with conv2 3x3x64x96
alex1  tutorial + conv3 5x5x64x64 -> LRN -> pool3, then dense 192 -> 10 (no 384 layer)
alex2  tutorial without either LRN
alex3  tutorial without local4 (flatten -> 384 -> 10)
alex4  conv 5x5x3x96 -> pool -> conv 3x3x96x96 -> pool -> 384 -> 192 -> 10, no LRN
"""

import cifar10_model as cm
from models.tutorial import classifier

LOCAL3, LOCAL4 = ('local3', 384), ('local4', 192)


def _trunk(regime, conv2_kernel=5, conv2_filters=64, lrn=True):
  layers = [cm.conv(regime, 'conv1', 3, 64, 5), cm.MaxPool(name='pool1')]
  layers += [cm.LRN(name='norm1')] if lrn else []
  layers += [cm.conv(regime, 'conv2', 64, conv2_filters, conv2_kernel, tutorial_bias=0.1)]
  layers += [cm.LRN(name='norm2')] if lrn else []
  return layers + [cm.MaxPool(name='pool2')]


def build(regime, image_size=24, variant=4):
  """Builds alex<variant> (0..4) for image_size x image_size x 3 inputs."""
  side = cm.pooled_size(image_size, 2)
  if variant == 0:
    layers = _trunk(regime, conv2_kernel=3, conv2_filters=96)
    layers += classifier(regime, side * side * 96)
  elif variant == 1:
    side = cm.pooled_size(image_size, 3)
    layers = _trunk(regime) + [
        cm.conv(regime, 'conv3', 64, 64, 5, tutorial_bias=0.1),
        cm.LRN(name='norm3'),
        cm.MaxPool(name='pool3'),
    ]
    layers += classifier(regime, side * side * 64, hidden=(LOCAL4,))
  elif variant == 2:
    layers = _trunk(regime, lrn=False) + classifier(regime, side * side * 64)
  elif variant == 3:
    layers = _trunk(regime) + classifier(regime, side * side * 64, hidden=(LOCAL3,))
  elif variant == 4:
    layers = [
        cm.conv(regime, 'conv1', 3, 96, 5),
        cm.MaxPool(name='pool1'),
        cm.conv(regime, 'conv2', 96, 96, 3, tutorial_bias=0.1),
        cm.MaxPool(name='pool2'),
    ] + classifier(regime, side * side * 96)
  else:
    raise ValueError(f'alex variant must be 0..4, got {variant}')
  return cm.Model(layers, image_size, name=f'alex{variant}')
