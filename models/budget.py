"""Budget models: conv-BatchNorm-ReLU stacks within the tutorial's inference cost.

The study compared networks at the tutorial's cost (37.75 MFLOPs, 1.07M parameters at
24x24); these spend the same budget the way today's small networks do. 3x3 convolutions,
each followed by BatchNorm and ReLU, 2x2 max pooling between stages, global average pooling
and one linear layer:

  stage side:  32            16                8                4
  budget0      3->24         24->48            48->96 96->96    96->176 176->176  avg  dense
  budget1      3->16 16->16  16->40 40->40     40->80 80->80    80->144 144->144  avg  dense
  budget2      3->16 16->16  16->32 32->32 x2  32->64 64->64 x2 64->128 128->128  avg  dense

(a 2x2 max pooling between stages). budget0 puts one convolution on each of the two large
sides and most parameters where they are cheap (4x4); budget1 spends the same FLOPs on two
convolutions at every side, narrower, the widths doubling where the side halves; budget2 on
three at 16 and 8, narrower still. budget3 and budget5 are budget1 and budget2 with each
convolution that keeps its width in a residual block (x + BN(conv(x)), then ReLU); budget4
is budget3 with a squeeze-excite gate (hidden width C / 4) at the end of each block's branch.
Counted folded (cifar10_model.BatchNorm): a BatchNorm adds one parameter per channel and no
FLOP but its ReLU's; an add 1 FLOP per value, a gate its dense layers, sigmoid and product.
"""

import cifar10_model as cm

# Per variant: the stages, each (output width of each of its convolutions, ...); a 2x2 max
# pooling closes every stage but the last.
STAGES = {
    0: ((24,), (48,), (96, 96), (176, 176)),
    1: ((16, 16), (40, 40), (80, 80), (144, 144)),
    2: ((16, 16), (32, 32, 32), (64, 64, 64), (128, 128)),
    3: ((16, 16), (40, 40), (80, 80), (144, 144)),
    4: ((16, 16), (40, 40), (80, 80), (144, 144)),
    5: ((16, 16), (32, 32, 32), (64, 64, 64), (128, 128)),
}
# Variants whose convolutions that keep their input's width sit in a residual block
# (x + BN(conv(x)), then ReLU), and those whose blocks also gate their channels.
RESIDUAL = (3, 4, 5)
SQUEEZE_EXCITE = (4,)
SE_REDUCTION = 4  # hidden width of the gate: channels / 4


def build(regime, image_size=32, variant=0):
  """Builds budget<variant> for image_size x image_size x 3 inputs (trained at 32).

  A convolution of regime.widths gets that many output channels; one in a residual block
  keeps its input's (the add needs them equal), so a block narrows with the layer before it.
  """
  if variant not in STAGES:
    raise ValueError(f'budget variant must be one of {sorted(STAGES)}, got {variant}')
  layers, width, family_width = [], 3, 3
  stages = STAGES[variant]
  for number, widths in enumerate(stages, start=1):
    for index, out in enumerate(widths, start=1):
      name = f'conv{number}_{index}'
      if variant in RESIDUAL and out == family_width:
        # x + BN(conv(x)): the block's width is its input's, narrowed or not.
        family_width, out = out, width
        branch = cm.conv_bn(regime, name, width, out, 3, relu=False)
        if variant in SQUEEZE_EXCITE:
          branch.append(squeeze_excite(regime, f'se{number}_{index}', out))
        layers.append(cm.Residual(branch, name=f'block{number}_{index}'))
      else:
        family_width, out = out, regime.width(name, out)
        layers += cm.conv_bn(regime, name, width, out, 3)
      width = out
    if number < len(stages):
      layers.append(cm.MaxPool(size=2, stride=2, name=f'pool{number}'))
  layers += [cm.GlobalAvgPool(name='global_avg'),
             cm.dense(regime, 'logits', width, cm.NUM_CLASSES, tutorial_stddev=1 / width,
                      relu=False, decay=False)]
  return cm.Model(layers, image_size, name=f'budget{variant}')


def squeeze_excite(regime, name, channels):
  """The gate of one block: dense C -> C / 4 with ReLU, dense C / 4 -> C, sigmoid; decayed
  like the convolutions (by --weight_decay=l2 only)."""
  hidden = max(1, channels // SE_REDUCTION)
  return cm.SqueezeExcite(
      cm.dense(regime, f'{name}_squeeze', channels, hidden, tutorial_stddev=1 / channels,
               decay=False),
      cm.dense(regime, f'{name}_excite', hidden, channels, tutorial_stddev=1 / hidden,
               relu=False, decay=False), name=name)
