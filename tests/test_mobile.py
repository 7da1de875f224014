"""Tests of the depthwise convolution and the mobile family: the hand-written depthwise against
TensorFlow's (values and gradients), the counting rules by hand, BatchNorm folded into a
depthwise convolution, and the members inside the tutorial's cost."""

import numpy as np
import pytest
import tensorflow as tf

import cifar10_model as cm
import models
from compress import calibration as calibration_lib
from compress import fake_quant
from compress import int8
from compress import qat_ops
from compress import quantize
from compress import trace
from fixtures import as_if_trained
from models import mobile

BUDGET_FLOPS, BUDGET_PARAMS = 37_750_000, 1_070_000  # the tutorial's cost (docs/design.md)
MOBILE_GOLDEN = {'mobile0': (308_378, 28_703_242), 'mobile1': (645_674, 34_118_666)}


@pytest.mark.parametrize('size,kernel_size,stride', [(8, 3, 1), (8, 3, 2), (7, 3, 2),
                                                     (9, 5, 2), (6, 5, 1)])
def test_the_shifted_depthwise_is_tensorflows_in_values_and_gradients(size, kernel_size,
                                                                       stride):
  x = tf.random.stateless_normal([2, size, size, 5], seed=[size, stride])
  kernel = tf.random.stateless_normal([kernel_size, kernel_size, 5, 1], seed=[1, kernel_size])
  with tf.GradientTape(persistent=True) as tape:
    tape.watch([x, kernel])
    ours = cm.shifted_depthwise(x, kernel, stride)
    theirs = cm.direct_depthwise(x, kernel, stride)
    weights = tf.random.stateless_normal(ours.shape, seed=[7, 7])  # any upstream gradient
    ours_loss, theirs_loss = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
  assert ours.shape == theirs.shape == (2, -(-size // stride), -(-size // stride), 5)
  np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5, atol=1e-5)
  for wrt in (x, kernel):
    np.testing.assert_allclose(tape.gradient(ours_loss, wrt).numpy(),
                               tape.gradient(theirs_loss, wrt).numpy(), rtol=1e-4, atol=1e-4)


def test_a_depthwise_layer_counts_2k2_per_output_value_plus_its_bias_and_relu():
  layer = cm.DepthwiseConv2D(8, 3, stddev=0.1, stride=2, name='dw')
  # 16 x 16 x 8 outputs; each 2 * 9 FLOPs of taps, 1 of bias, 2 of ReLU.
  assert layer.output_shape((32, 32, 8)) == (16, 16, 8)
  assert layer.flops((32, 32, 8)) == (18 + 1 + 2) * 16 * 16 * 8 == 43_008
  assert layer.num_params() == 9 * 8 + 8
  plain = cm.DepthwiseConv2D(8, 5, stddev=0.1, relu=False, bias=False, name='dw5')
  assert plain.flops((4, 4, 8)) == (50 + 1) * 4 * 4 * 8 and plain.num_params() == 25 * 8


def separable_by_hand():
  """(params, FLOPs) of mobile0 from its table and the rules, not from the layers."""
  flops = (1 + 2 * 27) * 32 * 32 * 32 + 2 * 32 * 32 * 32  # the 3x3 stem, 3 -> 32, ReLU
  params = 27 * 32 + 32
  width, side = mobile.SEPARABLE_STEM, 32
  for out, stride in mobile.SEPARABLE:
    side //= stride
    flops += (1 + 18 + 2) * width * side * side  # depthwise 3x3, bias (folded), ReLU
    params += 9 * width + width
    flops += (1 + 2 * width + 2) * out * side * side  # pointwise 1x1, bias, ReLU
    params += width * out + out
    width = out
  return params + 10 * width + 10, flops + (2 * width + 1) * 10


def inverted_by_hand():
  """(params, FLOPs) of mobile1 from its table and the rules, not from the layers."""
  flops = (1 + 2 * 27) * 32 * 32 * 32 + 2 * 32 * 32 * 32
  params = 27 * 32 + 32
  width, side = mobile.INVERTED_STEM, 32
  for expansion, out, blocks, first_stride in mobile.INVERTED:
    for index in range(blocks):
      stride = first_stride if index == 0 else 1
      hidden = width * expansion
      if expansion != 1:  # expand 1x1 with ReLU, at the input side
        flops += (1 + 2 * width + 2) * hidden * side * side
        params += width * hidden + hidden
      side //= stride
      flops += (1 + 18 + 2) * hidden * side * side
      params += 9 * hidden + hidden
      flops += (1 + 2 * hidden) * out * side * side  # project, no ReLU
      params += hidden * out + out
      if stride == 1 and out == width:
        flops += out * side * side  # the add, no ReLU after it
      width = out
  head = mobile.INVERTED_HEAD
  flops += (1 + 2 * width + 2) * head * side * side
  params += width * head + head
  return params + 10 * head + 10, flops + (2 * head + 1) * 10


@pytest.mark.parametrize('name,by_hand', [('mobile0', separable_by_hand),
                                          ('mobile1', inverted_by_hand)])
def test_mobile_counts_by_hand_inside_the_tutorials_cost(name, by_hand):
  golden = MOBILE_GOLDEN[name]
  assert by_hand() == golden
  rows = cm.count_model(models.build(name, image_size=32))
  assert (sum(r.params for r in rows), sum(r.flops for r in rows)) == golden
  assert golden[0] <= BUDGET_PARAMS and golden[1] <= BUDGET_FLOPS


@pytest.mark.parametrize('name', ['mobile0', 'mobile1'])
def test_batchnorm_folds_into_depthwise_convolutions_with_the_same_logits(name):
  model = trained_like(name, seed=3)
  folded = cm.fold_batchnorm(model)
  kinds = {type(layer).__name__ for layer, _ in folded.walk(folded.input_shape)}
  assert 'BatchNorm' not in kinds and 'DepthwiseConv2D' in kinds
  x = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2])
  np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-3, atol=1e-3)
  assert model(x, training=True).shape == (4, 10)


def test_an_unknown_mobile_variant_is_named():
  with pytest.raises(ValueError, match='mobile variant must be 0 or 1'):
    mobile.build(cm.Regime(), variant=2)


def trained_like(name, seed=0):
  """A mobile model with moving statistics away from 0 and 1, as after training."""
  tf.random.set_seed(seed)
  return as_if_trained(models.build(name, 32, weight_decay='l2'))


@pytest.mark.parametrize('name', ['mobile0', 'mobile1'])
def test_depthwise_layers_run_in_integers_within_one_step_of_fake_quant(name, tmp_path):
  model = cm.fold_batchnorm(trained_like(name))
  images = tf.random.stateless_normal([16, 32, 32, 3], seed=[4, 5]).numpy()
  meta, arrays = quantize.quantize_model(model, images, calibration_lib.Calibration(images=16))
  depthwise = [op for op in meta['ops'] if op['type'] == 'depthwise']
  assert depthwise and all(arrays[f'{op["name"]}/weights'].ndim == 3 for op in depthwise)
  int_model = int8.Int8Model(meta, arrays)
  ops, leaves, _ = trace.trace_ops(model)
  fake_quant.load_weights(leaves, ops, arrays, meta['tensors'])
  rows = fake_quant.compare_layers(ops, leaves, int_model, images[:8])
  assert max(row['max_step_difference'] for row in rows) <= 1
  assert all(row['fraction_different'] < 0.05 for row in rows)
  path = str(tmp_path / 'model_int8.npz')
  int_model.save(path)
  loaded = int8.Int8Model.load(path)  # The file's checks pass for depthwise ops.
  x_q = loaded.quantize_input(images[:4])
  np.testing.assert_array_equal(loaded.run(x_q), int_model.run(x_q))


def test_the_depthwise_integer_kernel_is_the_exact_sum_of_its_taps():
  rng = np.random.default_rng(0)
  x_q = rng.integers(-128, 128, size=(2, 5, 5, 3)).astype(np.int8)
  weights = rng.integers(-127, 128, size=(3, 3, 3)).astype(np.int8)
  layer = {'taps': weights.astype(np.int32), 'stride': 2, 'input_zero_point': -3}
  acc = int8.depthwise_accumulate(x_q, layer)
  padded = np.pad(x_q.astype(np.int64), ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-3)
  expected = np.zeros((2, 3, 3, 3), np.int64)
  for r in range(3):
    for c in range(3):
      window = padded[:, 2 * r:2 * r + 3, 2 * c:2 * c + 3, :]
      expected[:, r, c, :] = (window * weights.astype(np.int64)).sum(axis=(1, 2))
  np.testing.assert_array_equal(acc, expected)


def test_qat_folds_batchnorm_into_depthwise_as_the_folded_model_does():
  model = trained_like('mobile1', seed=1)
  ops, leaves, output = trace.trace_ops(model, fold_batchnorm=True)
  folded = cm.fold_batchnorm(model)
  assert ops == trace.trace_ops(folded)[0]
  x = tf.random.stateless_normal([4, 32, 32, 3], seed=[2, 3])
  np.testing.assert_allclose(trace.run_float(ops, leaves, x)[output].numpy(),
                             folded(x).numpy(), rtol=1e-3, atol=1e-3)
  ranges = qat_ops.Ranges(qat_ops.tracked_tensors(ops))
  bits = qat_ops.layer_bits(ops, 4, 8)
  assert any(name.endswith('_dw') and b == 4 for name, b in bits.items())
  logits = qat_ops.forward(ops, leaves, x, ranges, bits, 'mse')
  assert logits.shape == (4, 10) and np.all(np.isfinite(logits.numpy()))
