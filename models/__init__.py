"""The model registry: one literal dict from name to builder.

Every builder has the signature `build(regime, image_size) -> cifar10_model.Model`.
"""

import cifar10_model
from models import tutorial

MODELS = {
    'tutorial': tutorial.build,
}
ALIASES = {
    'tuto': 'tutorial',
}


def names():
  """Every accepted --model value, canonical names first."""
  return sorted(MODELS) + sorted(ALIASES)


def canonical_name(name):
  """Resolves an alias; raises ValueError listing the valid names for an unknown one."""
  name = ALIASES.get(name, name)
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid models: {", ".join(names())}')
  return name


def build(name, image_size=24, init='xavier', decay='study'):
  """Builds model `name` for image_size x image_size x 3 inputs."""
  builder = MODELS[canonical_name(name)]
  return builder(cifar10_model.Regime(init=init, decay=decay), image_size=image_size)
