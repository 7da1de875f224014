"""Tests of compress/channels.py: the groups of real models, and that a narrowed model
computes what the full model computes with the removed channels zeroed."""

import numpy as np
import pytest
import tensorflow as tf

import models
from compress import channels


def group_table(model):
  return [(g.name, g.size, [p.name for p in g.producers], [n.name for n in g.norms],
           [r.name for r, _ in g.readers], g.lrn) for g in channels.channel_groups(model)]


def test_the_groups_of_budget1_and_the_tutorial():
  budget1 = group_table(models.build('budget1', 32))
  assert [row[:2] for row in budget1] == [
      ('conv1_1', 16), ('conv1_2', 16), ('conv2_1', 40), ('conv2_2', 40), ('conv3_1', 80),
      ('conv3_2', 80), ('conv4_1', 144), ('conv4_2', 144)]  # logits' units are no group
  assert budget1[0][2:] == (['conv1_1'], ['conv1_1_bn'], ['conv1_2'], False)
  assert budget1[-1][4] == ['logits']  # after the global average pool
  assert group_table(models.build('tutorial')) == [
      ('conv1', 64, ['conv1'], [], ['conv2'], True), ('conv2', 64, ['conv2'], [], ['local3'], True),
      ('local3', 384, ['local3'], [], ['local4'], False),
      ('local4', 192, ['local4'], [], ['softmax_linear'], False)]


def test_a_residual_block_joins_the_group_of_its_input():
  table = {row[0]: row for row in group_table(models.build('budget3', 32))}
  # conv2_1 widens 16 -> 40; conv2_2 is the block x + BN(conv(x)): one group of 40.
  assert table['conv2_1'][2] == ['conv2_1', 'conv2_2']
  assert table['conv2_1'][3] == ['conv2_1_bn', 'conv2_2_bn']
  assert table['conv2_1'][4] == ['conv2_2', 'conv3_1']  # the block's conv reads it too
  assert 'conv2_2' not in table


def test_concatenations_and_gates_are_refused_naming_the_layer():
  with pytest.raises(channels.UnsupportedModel, match='mixed1: Inception layers are not handled'):
    channels.channel_groups(models.build('inception0'))
  with pytest.raises(channels.UnsupportedModel, match='block1_2: SqueezeExcite inside a residual branch'):
    channels.channel_groups(models.build('budget4', 32))


def zero_removed(groups, keep):
  for variable, name in channels.masked_variables(groups):
    size = variable.shape[-1]
    mask = np.zeros(size, np.float32)
    mask[keep[name]] = 1
    variable.assign(variable * mask)


def narrowed_model(name, size, full, groups, keep):
  found = channels.slices(groups, keep)
  small = models.build(name, size, widths=channels.widths_of(groups, keep))
  full_variables = full.trainable_variables + tuple(
      v for v in full.variables if not v.trainable)
  small_variables = small.trainable_variables + tuple(
      v for v in small.variables if not v.trainable)
  assert [v.name for v in full_variables] == [v.name for v in small_variables]
  for big, little in zip(full_variables, small_variables):
    little.assign(channels.narrowed_values(big, big.numpy(), found))
  return small


@pytest.mark.parametrize('name, size, kept', [
    ('budget1', 32, {'conv1_1': [0, 3, 5], 'conv2_2': list(range(0, 40, 3)),
                     'conv4_2': list(range(100))}),
    ('budget3', 32, {'conv2_1': [1, 2, 30, 39], 'conv3_1': list(range(0, 80, 2))}),
    ('tutorial', 24, {'local3': list(range(0, 384, 5)), 'local4': [7, 8, 100]}),
])
def test_a_narrowed_model_computes_the_full_one_with_removed_channels_zeroed(name, size, kept):
  tf.random.set_seed(1)
  full = models.build(name, size)
  groups = channels.channel_groups(full)
  for group in groups:  # BatchNorm statistics and shifts of their own, so none cancel out
    for norm in group.norms:
      for variable in (norm.gamma, norm.beta, norm.moving_mean):
        variable.assign(tf.random.uniform(variable.shape, 0.5, 1.5))
  keep = {g.name: kept.get(g.name, list(range(g.size))) for g in groups}
  zero_removed(groups, keep)
  images = tf.random.normal([4, size, size, 3])
  expected = full(images).numpy()
  small = narrowed_model(name, size, full, groups, keep)
  np.testing.assert_allclose(small(images).numpy(), expected, rtol=1e-4, atol=1e-5)
  assert small.num_params() < full.num_params()
