"""Small Inception-style models inside the tutorial's budget (<= 1.1M params, <= 40 MFLOPs).

The study planned but never built these. An Inception block runs four branches on the same
input and concatenates them along channels: a 1x1 conv; a 1x1 reduction then a 3x3 conv; a
1x1 reduction then two 3x3 convs (a factorised 5x5); a 3x3 stride-1 max-pool then a 1x1
projection. All convs have ReLU. The head is the tutorial's kind (flatten, hidden dense
layers with weight decay, linear logits), which learns faster in 10k steps than a global
average pool (compare the study's NiN and Squeeze figures at 10k).

inception0  conv 5x5x3x64 -> pool -> A(64 -> 144) -> pool -> B(144 -> 256) -> pool
            -> dense 256 -> 128 -> 10
inception1  conv 5x5x3x64 -> pool -> A(64 -> 128) -> A'(128 -> 160) -> pool
            -> B'(160 -> 224) -> pool -> dense 256 -> 10
"""

import cifar10_model as cm
from models.tutorial import classifier

# Per block: (1x1 filters, (3x3 reduce, 3x3), (5x5 reduce, 5x5 as two 3x3), pool projection).
BLOCKS = {
    'A': (32, (48, 64), (16, 24), 24),  # 144 channels out
    'B': (64, (64, 96), (24, 48), 48),  # 256
    "A'": (32, (32, 48), (16, 24), 24),  # 128
    "A''": (48, (48, 64), (16, 24), 24),  # 160
    "B'": (64, (48, 96), (16, 32), 32),  # 224
}
ARCHITECTURES = {
    0: dict(blocks=['A', 'pool', 'B', 'pool'], hidden=(('local3', 256), ('local4', 128))),
    1: dict(blocks=["A'", "A''", 'pool', "B'", 'pool'], hidden=(('local3', 256),)),
}


class Inception(cm.Concat):
  """Four parallel branches (1x1, 3x3, factorised 5x5, pool projection), concatenated."""

  def __init__(self, regime, name, in_channels, spec):
    one, (reduce3, out3), (reduce5, out5), projection = spec
    conv = lambda suffix, c_in, c_out, k: cm.conv(regime, f'{name}_{suffix}', c_in, c_out, k)
    super().__init__([
        conv('1x1', in_channels, one, 1),
        cm.Sequential([conv('3x3_reduce', in_channels, reduce3, 1),
                       conv('3x3', reduce3, out3, 3)]),
        cm.Sequential([conv('5x5_reduce', in_channels, reduce5, 1),
                       conv('5x5a', reduce5, out5, 3),
                       conv('5x5b', out5, out5, 3)]),
        cm.Sequential([cm.MaxPool(3, 1), conv('pool_proj', in_channels, projection, 1)]),
    ], name=name)
    self.out_channels = one + out3 + out5 + projection


def build(regime, image_size=24, variant=0):
  """Builds inception<variant> (0 or 1) for image_size x image_size x 3 inputs."""
  if variant not in ARCHITECTURES:
    raise ValueError(f'inception variant must be one of {sorted(ARCHITECTURES)}, '
                     f'got {variant}')
  architecture = ARCHITECTURES[variant]
  layers = [cm.conv(regime, 'conv1', 3, 64, 5), cm.MaxPool(name='pool1')]
  channels, pools, blocks = 64, 1, 0
  for item in architecture['blocks']:
    if item == 'pool':
      pools += 1
      layers.append(cm.MaxPool(name=f'pool{pools}'))
    else:
      blocks += 1
      block = Inception(regime, f'mixed{blocks}', channels, BLOCKS[item])
      layers.append(block)
      channels = block.out_channels
  side = cm.pooled_size(image_size, pools)
  layers += classifier(regime, side * side * channels, hidden=architecture['hidden'])
  return cm.Model(layers, image_size, name=f'inception{variant}')
