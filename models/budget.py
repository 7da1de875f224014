"""Budget models: conv-BatchNorm-ReLU stacks within the tutorial's inference cost.

The study compared networks at the tutorial's cost (37.75 MFLOPs, 1.07M parameters at
24x24); these spend the same budget the way today's small networks do. 3x3 convolutions,
each followed by BatchNorm and ReLU, 2x2 max pooling between stages, global average pooling
and one linear layer:

  stage side:  32            16            8            4
  budget0      3->24         24->48        48->96 96->96  96->176 176->176   avg  dense 10
  budget1      3->16 16->16  16->40 40->40  40->80 80->80  80->144 144->144   avg  dense 10

(a 2x2 max pooling between stages). budget0 puts one convolution on each of the two large
sides and most parameters where they are cheap (4x4); budget1 spends the same FLOPs on two
convolutions at every side, narrower, the widths doubling where the side halves. Counted
folded (cifar10_model.BatchNorm): a BatchNorm adds one parameter per channel and no FLOP but
its ReLU's.
"""

import cifar10_model as cm

# Per variant: the stages, each (output width of each of its convolutions, ...); a 2x2 max
# pooling closes every stage but the last.
STAGES = {
    0: ((24,), (48,), (96, 96), (176, 176)),
    1: ((16, 16), (40, 40), (80, 80), (144, 144)),
}


def build(regime, image_size=32, variant=0):
  """Builds budget<variant> for image_size x image_size x 3 inputs (trained at 32)."""
  if variant not in STAGES:
    raise ValueError(f'budget variant must be one of {sorted(STAGES)}, got {variant}')
  layers, width = [], 3
  stages = STAGES[variant]
  for number, widths in enumerate(stages, start=1):
    for index, out in enumerate(widths, start=1):
      layers += cm.conv_bn(regime, f'conv{number}_{index}', width, out, 3)
      width = out
    if number < len(stages):
      layers.append(cm.MaxPool(size=2, stride=2, name=f'pool{number}'))
  layers += [cm.GlobalAvgPool(name='global_avg'),
             cm.dense(regime, 'logits', width, 10, tutorial_stddev=1 / width, relu=False,
                      decay=False)]
  return cm.Model(layers, image_size, name=f'budget{variant}')
