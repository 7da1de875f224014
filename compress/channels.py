"""Channel groups: which output channels of a model must leave together, found from its layers.

Removing an output channel of a convolution (or a unit of a dense layer) removes a slice of
several arrays at once: that column of the layer's kernel and its bias, the entry of each
BatchNorm on it, and the matching input slice of every layer that reads it (the next
convolution's input channel; after a Flatten, the H * W rows of the next dense layer that
hold it). A residual block ties its branch's output channels to its input's (x + branch(x)),
so the layer before the block and the block's convolution share one group. The logits layer's units (the classes) are never a group.

`channel_groups(model)` walks the model's layers and returns these groups; `narrowed_values`
slices any array of a model's variables (raw weights, EMA shadows, optimizer slots) down to
the kept channels, for the model that `models.build(..., widths=widths_of(...))` builds.
Concatenations (inception, squeeze) and squeeze-excite gates (budget4) are not handled: a
concat's branches map to slices of the joined tensor, and a gate's hidden width follows its
channels', bookkeeping this module does not do yet.
"""

import dataclasses

import numpy as np

import cifar10_model as cm


class UnsupportedModel(ValueError):
  """A model whose structure this module cannot slim (the message names the layer)."""


@dataclasses.dataclass
class Group:
  """Channels that leave together.

  Attributes:
    name: the first producer's name (the group's name in reports and --widths).
    size: its channel count.
    producers: layers whose output channels (kernel's last axis, bias) these are.
    norms: the BatchNorm layers on them.
    readers: (layer, rows) of each layer reading them: rows(keep) -> the indices of its
      input axis (the kernel's axis -2) that hold the kept channels.
    lrn: an LRN normalizes across them (removal then changes the kept channels' outputs).
  """
  name: str
  size: int
  producers: list = dataclasses.field(default_factory=list)
  norms: list = dataclasses.field(default_factory=list)
  readers: list = dataclasses.field(default_factory=list)
  lrn: bool = False


def _same(keep):
  return np.asarray(keep)


def _flattened(height, width, channels):
  """rows(keep) of a dense layer after a Flatten of [H, W, C]: (i * W + j) * C + c."""
  def rows(keep):
    cells = np.arange(height * width)[:, np.newaxis] * channels
    return (cells + np.asarray(keep)[np.newaxis, :]).reshape(-1)
  return rows


class _Walk:
  """The state of channel_groups' walk: the group of the current tensor's channels."""

  def __init__(self):
    self.groups, self.current, self.rows = [], None, _same

  def read(self, layer):
    if self.current is not None:
      self.current.readers.append((layer, self.rows))
    self.rows = _same

  def produce(self, layer, size):
    self.current = Group(layer.name, size, producers=[layer])
    self.groups.append(self.current)


def channel_groups(model):
  """The channel groups of a cifar10_model.Model, in call order (the logits layer's units
  excluded).

  Raises:
    UnsupportedModel: the model has a Concat, or layers this walk does not know.
  """
  walk = _Walk()
  shape = model.input_shape
  weight_layers = model.weight_layers()
  last = weight_layers[-1] if weight_layers else None
  for layer in model.layers:
    _visit(walk, layer, shape, last)
    shape = layer.output_shape(shape)
  return walk.groups


def _visit(walk, layer, shape, last):
  """One top-level layer of the walk (a Residual's branch inside its own group)."""
  if isinstance(layer, (cm.Conv2D, cm.Dense)):
    walk.read(layer)
    if layer is last:
      walk.current = None
    else:
      walk.produce(layer, int(layer.kernel.shape[-1]))
  elif isinstance(layer, cm.BatchNorm):
    walk.current.norms.append(layer)
  elif isinstance(layer, cm.LRN):
    walk.current.lrn = True
  elif isinstance(layer, cm.Flatten):
    walk.rows = _flattened(*shape) if len(shape) == 3 else _same
  elif isinstance(layer, cm.Residual):
    _residual(walk, layer)
  elif isinstance(layer, (cm.MaxPool, cm.GlobalAvgPool, cm.Dropout)):
    pass  # per channel: the channels pass through
  else:
    raise UnsupportedModel(f'{layer.name}: {type(layer).__name__} layers are not handled; '
                           'channel slimming handles convolutions, dense layers, BatchNorm, '
                           'LRN, pooling, flatten and residual blocks')


def _residual(walk, block):
  """x + branch(x): the branch reads the block's input group and writes into it."""
  group = walk.current
  for inner in block.branch.layers:
    if isinstance(inner, cm.Conv2D):
      group.readers.append((inner, _same))
      group.producers.append(inner)
    elif isinstance(inner, cm.BatchNorm):
      group.norms.append(inner)
    else:  # A squeeze-excite gate's hidden width follows the channels' (C / 4): which
      # hidden units to keep is a choice of its own, not made here.
      raise UnsupportedModel(f'{block.name}: {type(inner).__name__} inside a residual '
                             'branch is not handled; channel slimming handles convolutions '
                             'and BatchNorm there')


def widths_of(groups, keep):
  """{producer name: channels kept} for models.build's widths (every producer of a group)."""
  return {layer.name: len(keep[group.name]) for group in groups
          for layer in group.producers}


def slices(groups, keep):
  """{id(variable): (input indices or None, output indices)} of every variable a slimmed
  model keeps a part of: index arrays for a kernel's axes -2 and -1, or for a vector."""
  rows, columns = {}, {}
  for group in groups:
    kept = np.asarray(keep[group.name])
    for layer in group.producers:
      columns[id(layer.kernel)] = kept
      if getattr(layer, 'bias', None) is not None:
        columns[id(layer.bias)] = kept
    for norm in group.norms:
      for variable in (norm.gamma, norm.beta, norm.moving_mean, norm.moving_variance):
        columns[id(variable)] = kept
    for layer, reader_rows in group.readers:
      rows[id(layer.kernel)] = reader_rows(kept)
  return {key: (rows.get(key), columns.get(key)) for key in set(rows) | set(columns)}


def narrowed_values(variable, value, found):
  """`value` (an array shaped like `variable`) cut down to its kept channels."""
  cut = found.get(id(variable))
  if cut is None:
    return np.asarray(value)
  value = np.asarray(value)
  rows, columns = cut
  if value.ndim == 1:
    return value[columns]
  if rows is not None:
    value = np.take(value, rows, axis=-2)
  if columns is not None:
    value = np.take(value, columns, axis=-1)
  return value


def masked_variables(groups):
  """(variable, group name) of every variable whose last axis holds a group's channels and
  that a removed channel must zero for the model to compute as without it: the producers'
  kernels and biases and the BatchNorms' gamma and beta (a BatchNorm of a zero channel
  still adds its shift; with gamma = beta = 0 its output is 0 in training and evaluation)."""
  found = []
  for group in groups:
    for layer in group.producers:
      found.append((layer.kernel, group.name))
      if getattr(layer, 'bias', None) is not None:
        found.append((layer.bias, group.name))
    for norm in group.norms:
      found += [(norm.gamma, group.name), (norm.beta, group.name)]
  return found
