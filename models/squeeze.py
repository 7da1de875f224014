"""The study's SqueezeNet-style models (docs/design.md).

squeeze0  conv 3x3x3x64 -> pool -> fire(16/64/64) x2 -> pool -> fire(32/128/128) x2
          -> conv 1x1x256x10 (ReLU, as in the study) -> global avg
squeeze1  squeeze0 with the first two fires 32/64/64
No weight decay.
"""

import cifar10_model as cm

FIRST_SQUEEZE = {0: 16, 1: 32}  # squeeze filters of the first two fires, per variant


class Fire(cm.Sequential):
  """A 1x1 'squeeze' conv feeding parallel 1x1 and 3x3 'expand' convs, concatenated."""

  def __init__(self, regime, name, in_channels, squeeze, expand1, expand3):
    super().__init__([
        cm.conv(regime, f'{name}_squeeze', in_channels, squeeze, 1),
        cm.Concat([cm.conv(regime, f'{name}_expand1', squeeze, expand1, 1),
                   cm.conv(regime, f'{name}_expand3', squeeze, expand3, 3)]),
    ], name=name)


def build(regime, image_size=24, variant=1):
  """Builds squeeze<variant> (0 or 1) for image_size x image_size x 3 inputs."""
  if variant not in FIRST_SQUEEZE:
    raise ValueError(f'squeeze variant must be one of {sorted(FIRST_SQUEEZE)}, got {variant}')
  first = FIRST_SQUEEZE[variant]
  layers = [
      cm.conv(regime, 'conv1', 3, 64, 3),
      cm.MaxPool(name='pool1'),
      Fire(regime, 'fire2', 64, first, 64, 64),
      Fire(regime, 'fire3', 128, first, 64, 64),
      cm.MaxPool(name='pool2'),
      Fire(regime, 'fire4', 128, 32, 128, 128),
      Fire(regime, 'fire5', 256, 32, 128, 128),
      cm.conv(regime, 'conv_logits', 256, cm.NUM_CLASSES, 1),
      cm.GlobalAvgPool(name='global_avg'),
  ]
  return cm.Model(layers, image_size, name=f'squeeze{variant}')
