"""Tests of the layer library, initialisation, weight decay, loss and counting."""

import math

import numpy as np
import pytest
import tensorflow as tf

import cifar10_model as cm
import models


def _layer(model, name):
  return next(layer for layer in model.layers if layer.name == name)


def test_xavier_stddev_matches_hand_computation():
  # conv1: fan_in = 5*5*3 = 75, fan_out = 5*5*64 = 1600.
  assert cm.xavier_stddev([5, 5, 3, 64]) == pytest.approx(math.sqrt(2.6 / 1675))
  # local3: fan_in = 2304, fan_out = 384.
  assert cm.xavier_stddev([2304, 384]) == pytest.approx(0.031100, abs=1e-6)


def test_xavier_init_draws_truncated_normal_with_that_stddev():
  tf.random.set_seed(1)
  model = models.build('tutorial')
  kernel = _layer(model, 'local3').kernel.numpy()
  stddev = cm.xavier_stddev([2304, 384])
  # A normal truncated at 2 stddev keeps 0.8796 of its stddev.
  assert kernel.std() == pytest.approx(0.8796 * stddev, rel=0.01)
  assert np.abs(kernel).max() <= 2 * stddev
  dense_or_conv = [l for l in model.layers if isinstance(l, (cm.Conv2D, cm.Dense))]
  assert all(not layer.bias.numpy().any() for layer in dense_or_conv)


def test_tutorial_init_uses_explicit_stddevs_and_biases():
  tf.random.set_seed(1)
  model = models.build('tutorial', init='tutorial')
  assert _layer(model, 'local4').kernel.numpy().std() == pytest.approx(0.8796 * 0.04, rel=0.02)
  assert _layer(model, 'conv1').kernel.numpy().std() == pytest.approx(0.8796 * 0.05, rel=0.05)
  biases = {layer.name: float(layer.bias.numpy()[0])
            for layer in model.layers if isinstance(layer, (cm.Conv2D, cm.Dense))}
  assert biases == pytest.approx({'conv1': 0.0, 'conv2': 0.1, 'local3': 0.1, 'local4': 0.1,
                                  'softmax_linear': 0.0})


def test_study_decay_coefficients_on_hidden_dense_layers_only():
  model = models.build('tutorial')
  coefficients = {kernel.name.split('/')[0]: decay for kernel, decay in model.kernels}
  assert coefficients['local3'] == pytest.approx(500 / (2304 * 384))  # 5.65e-4
  assert coefficients['local4'] == pytest.approx(500 / (384 * 192))  # 6.78e-3
  assert coefficients['local3'] == pytest.approx(5.65e-4, rel=1e-3)
  assert coefficients['local4'] == pytest.approx(6.78e-3, rel=1e-3)
  assert coefficients['conv1'] == coefficients['conv2'] == coefficients['softmax_linear'] == 0


def test_tutorial_decay_is_0_004_on_local3_and_local4():
  model = models.build('tutorial', weight_decay='tutorial')
  coefficients = [decay for _, decay in model.kernels]
  assert coefficients == [0.0, 0.0, 0.004, 0.004, 0.0]


def test_weight_decay_loss_is_sum_of_coefficient_times_half_squared_norm():
  model = models.build('tutorial')
  expected = sum(decay * np.sum(kernel.numpy().astype(np.float64) ** 2) / 2
                 for kernel, decay in model.kernels)
  assert float(cm.weight_decay_loss(model)) == pytest.approx(expected, rel=1e-5)


def test_loss_returns_cross_entropy_and_decay_separately():
  model = models.build('tutorial')
  logits = tf.zeros([4, 10])
  cross_entropy, decay = cm.loss(logits, tf.constant([0, 1, 2, 3]), model)
  assert float(cross_entropy) == pytest.approx(math.log(10), rel=1e-6)
  assert float(decay) == pytest.approx(float(cm.weight_decay_loss(model)))


@pytest.mark.parametrize('size,params,flops', [(24, 1_068_298, 37_745_098),
                                               (32, 1_756_426, 66_983_370)])
def test_tutorial_golden_params_and_flops(size, params, flops):
  rows = cm.count_model(models.build('tutorial', image_size=size))
  assert sum(r.params for r in rows) == params
  assert sum(r.flops for r in rows) == flops
  if size == 32:
    assert round(flops / 1e6, 2) == 66.98  # the study's figure (docs/design.md)


def test_counted_params_equal_the_variables():
  model = models.build('tutorial')
  variables = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  assert sum(r.params for r in cm.count_model(model)) == variables


def test_conv_flops_by_hand():
  conv = cm.Conv2D(3, 64, 5, stddev=0.1)
  # (1 + 2*3*25) * 64 * 24 * 24 multiply-adds plus 2 * 64 * 24 * 24 for the ReLU.
  assert conv.flops((24, 24, 3)) == 151 * 64 * 576 + 2 * 64 * 576
  assert cm.LRN().flops((12, 12, 64)) == 36 * 12 * 12 * 64


@pytest.mark.parametrize('beta', [0.75, 0.5])
def test_lrn_matches_tensorflows_op_and_its_gradient(beta):
  x = tf.random.stateless_normal([4, 5, 5, 64], seed=[1, 2]) * 20.0  # Large: scale far from 1.
  lrn = cm.LRN(beta=beta)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    ours = lrn(x)
    theirs = tf.nn.local_response_normalization(x, 4, 1.0, 0.001 / 9.0, beta)
    weights = tf.random.stateless_normal(x.shape, seed=[3, 4])
    ours_loss, theirs_loss = tf.reduce_sum(ours * weights), tf.reduce_sum(theirs * weights)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tape.gradient(ours_loss, x), tape.gradient(theirs_loss, x),
                             rtol=1e-4, atol=1e-5)


def test_lrn_in_nchw_equals_nhwc_transposed():
  x = tf.random.stateless_normal([2, 3, 3, 16], seed=[5, 6]) * 20.0
  nchw = cm.LRN(data_format='NCHW')(tf.transpose(x, [0, 3, 1, 2]))
  np.testing.assert_allclose(tf.transpose(nchw, [0, 2, 3, 1]), cm.LRN()(x), rtol=1e-5, atol=1e-6)


def test_lrn_by_hand_at_the_channel_edges():
  # One pixel, 10 channels of 3.0, radius 4: channel 0 sees channels 0-4 (5 squares = 45),
  # channel 5 sees 1-9 (9 squares = 81).
  x = tf.fill([1, 1, 1, 10], 3.0)
  y = cm.LRN(depth_radius=4, bias=2.0, alpha=0.1, beta=0.75)(x).numpy().ravel()
  assert y[0] == pytest.approx(3.0 / (2.0 + 0.1 * 45) ** 0.75, rel=1e-6)
  assert y[5] == pytest.approx(3.0 / (2.0 + 0.1 * 81) ** 0.75, rel=1e-6)
  assert y[9] == pytest.approx(y[0], rel=1e-6)


def test_output_shapes_match_the_real_tensors():
  model = models.build('tutorial')
  x = tf.zeros([2, 24, 24, 3])
  for row, layer in zip(cm.count_model(model), model.layers):
    x = layer(x)
    assert tuple(x.shape[1:]) == row.output_shape, layer.name


def test_table_ends_with_the_totals_line():
  table = cm.format_count_table(cm.count_model(models.build('tutorial')))
  assert table.splitlines()[-1] == 'total params=1068298 flops=37745098'


def test_registry_resolves_alias_and_lists_names_for_unknown():
  assert models.canonical_name('tuto') == 'tutorial'
  with pytest.raises(ValueError,
                     match='valid models: tutorial, alex0, .*budget0, budget1, .*budget5, mobile0, mobile1, tuto'):
    models.build('resnet')


def test_logits_shape_and_eager_equals_tf_function():
  model = models.build('tutorial', image_size=32)
  images = tf.random.normal([3, 32, 32, 3])
  eager = model(images)
  traced = tf.function(model.__call__)(images)
  assert eager.shape == (3, 10)
  np.testing.assert_allclose(eager.numpy(), traced.numpy(), rtol=1e-5, atol=1e-5)


def test_dropout_only_in_training():
  drop = cm.Dropout(0.5)
  x = tf.ones([1000])
  assert np.array_equal(drop(x).numpy(), x.numpy())
  dropped = drop(x, training=True).numpy()
  assert 0.4 < np.mean(dropped == 0) < 0.6


def test_concat_and_global_average_pool_shapes_and_flops():
  branches = [cm.Conv2D(8, 4, 1, stddev=0.1), cm.Conv2D(8, 6, 3, stddev=0.1)]
  block = cm.Concat(branches)
  y = block(tf.zeros([2, 6, 6, 8]))
  assert y.shape == (2, 6, 6, 10) and block.output_shape((6, 6, 8)) == (6, 6, 10)
  assert block.flops((6, 6, 8)) == sum(b.flops((6, 6, 8)) for b in branches)
  assert len(block.kernels) == 2
  pooled = cm.GlobalAvgPool()(tf.reshape(tf.range(8.0), [1, 2, 2, 2]))
  np.testing.assert_allclose(pooled.numpy(), [[3.0, 4.0]])


def test_walk_yields_every_leaf_with_its_input_shape():
  model = models.build('tutorial')
  shapes = {layer.name: shape for layer, shape in model.walk(model.input_shape)}
  assert shapes['conv1'] == (24, 24, 3) and shapes['conv2'] == (12, 12, 64)
  assert shapes['local3'] == (6 * 6 * 64,)
  inception = models.build('inception1')
  leaves = [layer for layer, _ in inception.walk(inception.input_shape)]
  assert len(leaves) == len({id(layer) for layer in leaves})
  assert {id(k) for k, _ in inception.kernels} == {
      id(k) for layer in leaves for k, _ in layer.kernels}


def test_weight_layers_are_the_layers_of_the_kernels_in_call_order():
  model = models.build('inception1')
  layers = model.weight_layers()
  assert [id(layer.kernel) for layer in layers] == [id(kernel) for kernel, _ in model.kernels]
  assert layers[0].name == 'conv1' and layers[-1].name == 'softmax_linear'


def test_a_model_refuses_two_weight_layers_of_one_name():
  layers = [cm.Conv2D(3, 4, 3, stddev=0.1, name='conv'),
            cm.Conv2D(4, 4, 3, stddev=0.1, name='conv')]
  with pytest.raises(ValueError, match='unique names; repeated: conv'):
    cm.Model(layers, 8, name='twice')
  cm.Model([cm.MaxPool(name='pool'), cm.MaxPool(name='pool')], 8)  # No weights: no keys.


def test_training_memory_estimate_counts_every_layer_output_by_hand():
  # The tutorial at 24x24: conv1 24*24*64, then pool1, norm1, conv2, norm2 at 12*12*64,
  # pool2 and flatten 6*6*64, local3 384, local4 192, softmax_linear 10.
  activations = 24 * 24 * 64 + 4 * 12 * 12 * 64 + 2 * 6 * 6 * 64 + 384 + 192 + 10
  assert activations == 78_922
  model = models.build('tutorial', 24)
  assert cm.training_bytes_per_image(model) == 12 * activations


def test_l2_decay_puts_one_coefficient_on_every_weight_matrix():
  model = models.build('tutorial', weight_decay='l2', l2_decay=3e-4)
  assert [decay for _, decay in model.kernels] == [3e-4] * 5  # conv1, conv2, 3 dense layers
  budget = models.build('budget0', image_size=32, weight_decay='l2')
  assert len(budget.kernels) == 7 and all(d == cm.L2_WEIGHT_DECAY for _, d in budget.kernels)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
  logits = tf.constant([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
  labels = tf.constant([0, 1])
  model = cm.Model([cm.Flatten(name='flatten')], 1)
  log_p = logits.numpy() - np.log(np.exp(logits.numpy()).sum(axis=1, keepdims=True))
  s = 0.3  # Target: 0.7 on the label + 0.1 on each of the 3 classes.
  target = np.full((2, 3), s / 3) + np.eye(3)[[0, 1]] * (1 - s)
  expected = -(target * log_p).sum(axis=1).mean()
  cross_entropy, _ = cm.loss(logits, labels, model, label_smoothing=s)
  assert float(cross_entropy) == pytest.approx(expected, rel=1e-6)
  plain, _ = cm.loss(logits, labels, model)
  assert float(plain) == pytest.approx(-log_p[[0, 1], [0, 1]].mean(), rel=1e-6)


def test_batchnorm_trains_on_batch_statistics_and_moves_its_averages():
  tf.random.set_seed(0)
  norm = cm.BatchNorm(3, relu=False, name='bn')
  norm.gamma.assign([1.0, 2.0, 0.5])
  norm.beta.assign([0.0, 1.0, -1.0])
  x = tf.random.normal([4, 5, 5, 3]) * 3.0 + 2.0
  y = norm(x, training=True).numpy()
  values = x.numpy().reshape(-1, 3)
  mean, variance = values.mean(axis=0), values.var(axis=0)
  expected = (x.numpy() - mean) / np.sqrt(variance + 1e-5) * [1.0, 2.0, 0.5] + [0, 1, -1]
  np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
  unbiased = variance * len(values) / (len(values) - 1)
  np.testing.assert_allclose(norm.moving_mean.numpy(), 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(norm.moving_variance.numpy(), 0.9 + 0.1 * unbiased, rtol=1e-5)
  # Evaluation: the moving statistics, an affine map per channel.
  evaluated = norm(x).numpy()
  scale = np.array([1.0, 2.0, 0.5]) / np.sqrt(norm.moving_variance.numpy() + 1e-5)
  np.testing.assert_allclose(evaluated, (x.numpy() - norm.moving_mean.numpy()) * scale
                             + [0, 1, -1], rtol=1e-4, atol=1e-4)


def test_the_fused_kernel_and_the_moments_reference_agree_with_their_gradients():
  tf.random.set_seed(2)
  x = tf.random.normal([6, 4, 4, 5]) * 2.0 - 1.0
  results = []
  for fused in (True, False):
    norm = cm.BatchNorm(5, name='bn')
    norm.fused = fused
    norm.gamma.assign(tf.linspace(0.5, 1.5, 5))
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = norm(x, training=True)
      total = tf.reduce_sum(y * tf.range(5, dtype=tf.float32))
    gradients = tape.gradient(total, [x, norm.gamma, norm.beta])
    results.append([y, norm.moving_mean, norm.moving_variance] + gradients)
  for fused, reference in zip(*results):
    np.testing.assert_allclose(fused.numpy(), reference.numpy(), rtol=1e-4, atol=1e-5)


def _trained_statistics(model, steps=3):
  """Moves every BatchNorm's statistics and affine away from their initial values."""
  rng = np.random.default_rng(0)
  for _ in range(steps):
    model(tf.random.normal([8] + list(model.input_shape)) * 2 + 1, training=True)
  for layer, _ in model.walk(model.input_shape):
    if isinstance(layer, cm.BatchNorm):
      layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape).astype(np.float32))
      layer.beta.assign(rng.normal(0, 0.5, layer.beta.shape).astype(np.float32))


def test_folded_batchnorm_gives_the_same_logits_within_1e_4():
  tf.random.set_seed(1)
  model = models.build('budget0', image_size=32)
  _trained_statistics(model)
  folded = cm.fold_batchnorm(model)
  assert not any(isinstance(layer, cm.BatchNorm) for layer, _ in folded.walk((32, 32, 3)))
  assert [layer.name for layer in folded.weight_layers()] == [
      layer.name for layer in model.weight_layers()]
  images = tf.random.normal([16, 32, 32, 3])
  np.testing.assert_allclose(folded(images).numpy(), model(images).numpy(), atol=1e-4)
  totals = lambda m: [sum(getattr(row, key) for row in cm.count_model(m))
                      for key in ('params', 'flops')]
  assert totals(folded) == totals(model)  # Counted folded, by the counting rules.


def test_folding_a_model_without_batchnorm_returns_it_and_a_stray_batchnorm_is_refused():
  model = models.build('tutorial')
  assert cm.fold_batchnorm(model) is model
  stray = cm.Model([cm.MaxPool(name='pool'), cm.BatchNorm(3, name='bn')], 8, name='stray')
  with pytest.raises(ValueError, match='bn: a BatchNorm folds only into a Conv2D'):
    cm.fold_batchnorm(stray)


def _gated_block(channels=8, side=4):
  """A residual block whose branch is conv-BN then a squeeze-excite gate (hidden 2)."""
  regime = cm.Regime()
  gate = cm.SqueezeExcite(cm.dense(regime, 'squeeze', channels, 2, tutorial_stddev=0.5),
                          cm.dense(regime, 'excite', 2, channels, tutorial_stddev=0.5,
                                   relu=False), name='se')
  return cm.Residual([*cm.conv_bn(regime, 'conv', channels, channels, 3, relu=False), gate],
                     name='block')


def test_residual_and_gate_compute_their_formulas():
  tf.random.set_seed(3)
  block = _gated_block()
  x = tf.random.normal([2, 4, 4, 8])
  conv, norm, gate = block.branch.layers
  z = norm(conv(x))
  pooled = tf.reduce_mean(z, axis=[1, 2]).numpy()
  hidden = np.maximum(pooled @ gate.squeeze.kernel.numpy() + gate.squeeze.bias.numpy(), 0)
  factor = 1 / (1 + np.exp(-(hidden @ gate.excite.kernel.numpy() + gate.excite.bias.numpy())))
  expected = np.maximum(x.numpy() + z.numpy() * factor[:, None, None, :], 0)
  np.testing.assert_allclose(block(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_residual_and_gate_counts_by_hand():
  block = _gated_block(channels=8, side=4)
  values = 4 * 4 * 8
  conv = (1 + 2 * 9 * 8) * values  # folded conv with its bias, no ReLU (before the add)
  gate = (2 * 8 + 1) * 2 + 2 * 2 + (2 * 2 + 1) * 8 + 4 * 8 + values  # mean free, product
  assert block.flops((4, 4, 8)) == conv + gate + 3 * values  # add and ReLU
  # conv 9*8*8, BatchNorm (folded) 8, squeeze 8*2 + 2, excite 2*8 + 8.
  assert block.num_params() == 9 * 8 * 8 + 8 + 8 * 2 + 2 + 2 * 8 + 8
  assert [layer.name for layer, _ in block.walk((4, 4, 8))] == [
      'conv', 'conv_bn', 'squeeze', 'excite']
  # The memory estimate's values: conv, BatchNorm, the gate's mean, hidden, gate before and
  # after the sigmoid, product; the sum.
  assert block.activations((4, 4, 8)) == values + values + 8 + 2 + 8 + 8 + values + values
  narrowing = cm.Residual(cm.conv_bn(cm.Regime(), 'c', 8, 4, 3), name='bad')
  with pytest.raises(ValueError, match='bad: the branch maps .* a residual branch must keep'):
    narrowing.output_shape((4, 4, 8))


def test_folding_reaches_into_residual_branches_within_1e_4():
  tf.random.set_seed(4)
  model = cm.Model([*cm.conv_bn(cm.Regime(), 'stem', 3, 8, 3), _gated_block(),
                    cm.GlobalAvgPool(name='avg'),
                    cm.dense(cm.Regime(), 'logits', 8, 10, tutorial_stddev=0.1, relu=False)],
                   image_size=4, name='gated')
  _trained_statistics(model)
  folded = cm.fold_batchnorm(model)
  assert not any(isinstance(layer, cm.BatchNorm) for layer, _ in folded.walk((4, 4, 3)))
  images = tf.random.normal([8, 4, 4, 3])
  np.testing.assert_allclose(folded(images).numpy(), model(images).numpy(), atol=1e-4)
