"""Mobile models: depthwise-separable and inverted-residual networks within the tutorial's cost.

The study moved from AlexNet to NiN to SqueezeNet for accuracy per FLOP; this is where that
line went next (Howard et al. 2017, Sandler et al. 2018). A depthwise convolution filters each
channel with its own k x k kernel (2 k^2 FLOPs per output value instead of 2 k^2 C_in), and a
1x1 convolution mixes the channels. Every convolution is followed by BatchNorm, counted folded.

  mobile0  MobileNetV1-style: a 3x3 stem, then depthwise 3x3 + pointwise 1x1 pairs.
  mobile1  MobileNetV2-style inverted residuals: expand 1x1 (x t), depthwise 3x3, project 1x1
           without ReLU (a linear bottleneck), added to the block's input when the shape
           allows (stride 1, same width); a 1x1 head before the global average pool.

Both keep CIFAR's 32x32 at the stem (stride 1) and reach 4x4 through three stride-2
depthwise convolutions; mobile1 leaves 32x32 after its first block (MobileNetV2's CIFAR
versions stay there two stages longer, at 1.6 times this budget's FLOPs for the same widths).

  model    parameters   MFLOPs (32x32, counted by docs/design.md's rules)
  mobile0     308,378    28.70
  mobile1     645,674    34.12
"""

import cifar10_model as cm

# mobile0: (pointwise width, stride of the depthwise before it), after a stem of 32.
SEPARABLE = ((48, 1), (96, 2), (96, 1), (192, 2), (192, 1), (384, 2), (384, 1))
SEPARABLE_STEM = 32
# mobile1: per stage (expansion t, output width c, blocks n, stride of the first block s).
INVERTED = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 3, 2), (4, 64, 3, 2), (4, 96, 2, 1),
            (4, 160, 2, 1))
INVERTED_STEM = 32
INVERTED_HEAD = 512


def build(regime, image_size=32, variant=0):
  """Builds mobile<variant> for image_size x image_size x 3 inputs (trained at 32)."""
  if variant == 0:
    layers, width = _separable(regime)
  elif variant == 1:
    layers, width = _inverted(regime)
  else:
    raise ValueError(f'mobile variant must be 0 or 1, got {variant}')
  layers += [cm.GlobalAvgPool(name='global_avg'),
             cm.dense(regime, 'logits', width, cm.NUM_CLASSES, tutorial_stddev=1 / width,
                      relu=False, decay=False)]
  return cm.Model(layers, image_size, name=f'mobile{variant}')


def _separable(regime):
  layers = cm.conv_bn(regime, 'stem', 3, SEPARABLE_STEM, 3)
  width = SEPARABLE_STEM
  for index, (out, stride) in enumerate(SEPARABLE, start=1):
    layers += cm.depthwise_bn(regime, f'dw{index}', width, 3, stride=stride)
    layers += cm.conv_bn(regime, f'pw{index}', width, out, 1)
    width = out
  return layers, width


def _inverted(regime):
  layers = cm.conv_bn(regime, 'stem', 3, INVERTED_STEM, 3)
  width = INVERTED_STEM
  for number, (expansion, out, blocks, first_stride) in enumerate(INVERTED, start=1):
    for index in range(1, blocks + 1):
      name = f'block{number}_{index}'
      stride = first_stride if index == 1 else 1
      hidden = width * expansion
      branch = []
      if expansion != 1:
        branch += cm.conv_bn(regime, f'{name}_expand', width, hidden, 1)
      branch += cm.depthwise_bn(regime, f'{name}_dw', hidden, 3, stride=stride)
      branch += cm.conv_bn(regime, f'{name}_project', hidden, out, 1, relu=False)
      if stride == 1 and out == width:
        layers.append(cm.Residual(branch, relu=False, name=name))
      else:
        layers += branch
      width = out
  layers += cm.conv_bn(regime, 'head', width, INVERTED_HEAD, 1)
  return layers, INVERTED_HEAD
