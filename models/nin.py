"""The study's Network-in-Network models (docs/design.md).

A NiN block is a k x k conv followed by two 1x1 convs, all ReLU. The last block ends in 10
channels (ReLU-activated, as in the study) that a global average pool turns into logits.
No weight decay.

nin0  NiN[5x5, 64, 64, 64] -> pool -> NiN[5x5, 64, 64, 10] -> global avg
nin1  NiN[5x5, 64, 96, 96] -> pool -> NiN[5x5, 64, 64, 10] -> global avg
nin2  NiN[5x5, 192, 160, 96] -> pool -> dropout .5 -> NiN[5x5, 192, 192, 192] -> pool
      -> dropout .5 -> NiN[3x3, 192, 192, 10] -> global avg
"""

import cifar10_model as cm

# Per variant: blocks of (kernel, (filters of the kxk conv, 1x1, 1x1)), with 'pool' and
# 'dropout' between them.
ARCHITECTURES = {
    0: [(5, (64, 64, 64)), 'pool', (5, (64, 64, cm.NUM_CLASSES))],
    1: [(5, (64, 96, 96)), 'pool', (5, (64, 64, cm.NUM_CLASSES))],
    2: [(5, (192, 160, 96)), 'pool', 'dropout', (5, (192, 192, 192)), 'pool', 'dropout',
        (3, (192, 192, cm.NUM_CLASSES))],
}
DROPOUT_RATE = 0.5


def nin_block(regime, name, in_channels, kernel_size, filters):
  """A kxk conv and two 1x1 convs, each with ReLU."""
  sizes = (kernel_size, 1, 1)
  channels = (in_channels,) + tuple(filters)
  return [cm.conv(regime, f'{name}_{i}', channels[i], channels[i + 1], sizes[i])
          for i in range(3)]


def build(regime, image_size=24, variant=2):
  """Builds nin<variant> (0..2) for image_size x image_size x 3 inputs."""
  if variant not in ARCHITECTURES:
    raise ValueError(f'nin variant must be one of {sorted(ARCHITECTURES)}, got {variant}')
  layers, channels, blocks, pools = [], 3, 0, 0
  for item in ARCHITECTURES[variant]:
    if item == 'pool':
      pools += 1
      layers.append(cm.MaxPool(name=f'pool{pools}'))
    elif item == 'dropout':
      layers.append(cm.Dropout(DROPOUT_RATE, name=f'dropout{pools}'))
    else:
      blocks += 1
      kernel_size, filters = item
      layers += nin_block(regime, f'nin{blocks}', channels, kernel_size, filters)
      channels = filters[-1]
  layers.append(cm.GlobalAvgPool(name='global_avg'))
  return cm.Model(layers, image_size, name=f'nin{variant}')
