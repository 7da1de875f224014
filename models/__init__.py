"""The model registry: one literal dict from name to builder.

Every builder has the signature `build(regime, image_size) -> cifar10_model.Model`; a family
file exposes one builder whose `variant` argument is bound here. `build` then picks how the
convolutions are computed (cifar10_spectral). `python models/count.py` prints parameter and
FLOP counts.
"""

import functools

import cifar10_model
import cifar10_spectral
from models import alex
from models import budget
from models import inception
from models import mobile
from models import nin
from models import squeeze
from models import tutorial

MODELS = {
    'tutorial': tutorial.build,
    'alex0': functools.partial(alex.build, variant=0),
    'alex1': functools.partial(alex.build, variant=1),
    'alex2': functools.partial(alex.build, variant=2),
    'alex3': functools.partial(alex.build, variant=3),
    'alex4': functools.partial(alex.build, variant=4),
    'nin0': functools.partial(nin.build, variant=0),
    'nin1': functools.partial(nin.build, variant=1),
    'nin2': functools.partial(nin.build, variant=2),
    'squeeze0': functools.partial(squeeze.build, variant=0),
    'squeeze1': functools.partial(squeeze.build, variant=1),
    'inception0': functools.partial(inception.build, variant=0),
    'inception1': functools.partial(inception.build, variant=1),
    'budget0': functools.partial(budget.build, variant=0),
    'budget1': functools.partial(budget.build, variant=1),
    'budget2': functools.partial(budget.build, variant=2),
    'budget3': functools.partial(budget.build, variant=3),
    'budget4': functools.partial(budget.build, variant=4),
    'budget5': functools.partial(budget.build, variant=5),
    'mobile0': functools.partial(mobile.build, variant=0),
    'mobile1': functools.partial(mobile.build, variant=1),
}
# Short names; each of the study's families stands for its best model in the study, and
# `budget` for budget0, the first of ours (configs written with it keep meaning budget0).
ALIASES = {
    'tuto': 'tutorial',
    'alex': 'alex4',
    'nin': 'nin2',
    'squeeze': 'squeeze1',
    'inception': 'inception0',
    'budget': 'budget0',
}


def names():
  """Every accepted --model value, canonical names first."""
  return list(MODELS) + list(ALIASES)


def canonical_name(name):
  """Resolves an alias; raises ValueError listing the valid names for an unknown one."""
  name = ALIASES.get(name, name)
  if name not in MODELS:
    raise ValueError(f'unknown model {name!r}; valid models: {", ".join(names())}')
  return name


def build(name, image_size=24, init='xavier', weight_decay='study', conv='direct',
          l2_decay=cifar10_model.L2_WEIGHT_DECAY, widths=()):
  """Builds model `name` for image_size x image_size x 3 inputs.

  Args:
    name: a name or alias of `names()`.
    image_size: input side, 24 or 32.
    init, weight_decay, l2_decay, widths: the cifar10_model.Regime; `widths` (pairs or a
      dict) names the layers built narrower, a slimmed model's shapes.
    conv: 'direct', 'spectral' or 'auto' (cifar10_spectral.resolve): how convolutions are
      computed; the variables are the same either way.

  Raises:
    ValueError: `widths` names a layer the model lacks, or one its family cannot narrow.
  """
  builder = MODELS[canonical_name(name)]
  widths = tuple(dict(widths).items())
  regime = cifar10_model.Regime(init=init, weight_decay=weight_decay, l2_decay=l2_decay,
                                widths=widths)
  model = builder(regime, image_size=image_size)
  check_widths(model, widths)
  cifar10_spectral.apply(model, cifar10_spectral.resolve(conv))
  return model


def check_widths(model, widths):
  """Raises ValueError unless each (layer, width) of `widths` is a weight layer of `model`
  built at that width (a family that keeps its widths fixed builds them unchanged)."""
  built = {layer.name: int(layer.kernel.shape[-1]) for layer in model.weight_layers()}
  for name, width in widths:
    if name not in built:
      raise ValueError(f'widths: {model.name} has no layer {name!r}; its layers with '
                       f'weights: {", ".join(built)}')
    if built[name] != width:
      raise ValueError(f'widths: {model.name} builds {name} with {built[name]} channels, not '
                       f'{width} (its family does not narrow that layer)')
