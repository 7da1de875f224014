"""Tests of quantization-aware training: the folded trace, the fake-quant arithmetic and its
gradients, the weight-scale rules in NumPy and TensorFlow alike, the tracked ranges, and a
whole tiny QAT run that compress/quantize.py reads instead of calibrating."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_model as cm
import cifar10_run
import cifar10_trainer
import models
from compress import fake_quant
from compress import int8
from compress import qat
from compress import qat_ops
from compress import quantize
from compress import trace
from fixtures import as_if_trained, tiny_config, tiny_split, write_batches_dir


def trained_budget0(seed=0):
  """A budget0 (BatchNorm, residual adds) at 32x32 with moving statistics away from 0 and 1."""
  tf.random.set_seed(seed)
  return as_if_trained(models.build('budget0', 32))


def images(n=8, seed=0):
  return tf.random.stateless_normal([n, 32, 32, 3], seed=[seed, 1])


def test_the_folded_trace_is_the_trace_of_the_folded_model_and_computes_it():
  model = trained_budget0()
  ops, leaves, output = trace.trace_ops(model, fold_batchnorm=True)
  folded = cm.fold_batchnorm(model)
  expected_ops, expected_leaves, expected_output = trace.trace_ops(folded)
  assert ops == expected_ops and output == expected_output
  assert any(isinstance(leaf, trace.FoldedConv) for leaf in leaves)
  x = images()
  got = trace.run_float(ops, leaves, x)[output]
  want = trace.run_float(expected_ops, expected_leaves, x)[output]
  np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got.numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4)
  with pytest.raises(trace.QuantizationError):  # Unfolded, a BatchNorm has no int8 form.
    trace.trace_ops(model)


@pytest.mark.parametrize('bits', qat_ops.WEIGHT_BITS)
@pytest.mark.parametrize('method', qat_ops.WEIGHT_RANGES)
def test_weight_scales_are_the_same_rule_in_numpy_and_tensorflow(bits, method):
  rng = np.random.default_rng(bits)
  columns = rng.normal(size=(75, 6)) * rng.uniform(0.1, 2.0, size=6)
  columns[:, 2] = 0.0  # An all-zero (pruned) channel.
  numpy_scales = qat_ops.channel_scales(columns, bits, method)
  tf_scales = qat_ops.channel_scales_tf(tf.constant(columns, tf.float32), bits, method)
  np.testing.assert_allclose(tf_scales.numpy(), numpy_scales, rtol=1e-5)
  assert numpy_scales[2] == 0.0
  top = np.abs(columns).max(axis=0)
  if method == 'max':  # max |w| / (2^(b-1) - 1): 127, 7 or 1 levels each side.
    np.testing.assert_allclose(numpy_scales, top / {8: 127, 4: 7, 2: 1}[bits])


def rounding_error(columns, scales, bits):
  q = qat_ops.weight_max(bits)
  safe = np.where(scales > 0, scales, 1.0)
  return np.sum((np.clip(np.round(columns / safe), -q, q) * safe - columns) ** 2, axis=0)


def test_mse_scales_err_least_and_at_two_bits_keep_most_weights_off_zero():
  columns = np.random.default_rng(0).normal(size=(500, 4))
  for bits in (4, 2):
    mse = qat_ops.channel_scales(columns, bits, 'mse')
    top = qat_ops.channel_scales(columns, bits, 'max')
    assert np.all(rounding_error(columns, mse, bits) < rounding_error(columns, top, bits))
    assert np.all(mse < top)  # A clip below the largest weight.
  # With the largest weight as its one level, 2 bits round almost every Gaussian weight to 0.
  top = qat_ops.channel_scales(columns, 2, 'max')
  assert np.mean(np.round(columns / top) == 0) > 0.8
  mse = qat_ops.channel_scales(columns, 2, 'mse')
  assert np.mean(np.round(columns / mse) == 0) < 0.5


def test_fake_quant_lands_on_quantizes_grid_and_passes_gradients_only_inside():
  low, high = -1.0, 3.0
  params = quantize.affine_params(low, high)
  scale, zero_point = qat_ops.affine(tf.constant(low), tf.constant(high))
  assert float(scale) == pytest.approx(params['scale']) and float(zero_point) == params[
      'zero_point']
  x = tf.constant(np.linspace(-2.0, 4.0, 61), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = qat_ops.fake_quant(x, scale, zero_point)
  np.testing.assert_allclose(y.numpy(), fake_quant.fake_quantize(x, params).numpy(), atol=1e-6)
  grid_low, grid_high = ((-128 - params['zero_point']) * params['scale'],
                         (127 - params['zero_point']) * params['scale'])
  inside = (x.numpy() >= grid_low) & (x.numpy() <= grid_high)
  np.testing.assert_array_equal(tape.gradient(y, x).numpy(), inside.astype(np.float32))


def test_fake_quant_weights_round_per_channel_and_pass_the_gradient_whole():
  kernel = tf.Variable(tf.random.stateless_normal([3, 3, 4, 5], seed=[3, 4]))
  with tf.GradientTape() as tape:
    quantized = qat_ops.fake_quant_weights(kernel, 4, 'max')
    loss = tf.reduce_sum(quantized * 2.0)
  columns = quantized.numpy().reshape(-1, 5)
  scale = np.abs(kernel.numpy().reshape(-1, 5)).max(axis=0) / 7
  steps = columns / scale
  np.testing.assert_allclose(steps, np.round(steps), atol=1e-4)  # On the grid, 15 levels.
  assert np.abs(np.round(steps)).max() == 7
  np.testing.assert_array_equal(tape.gradient(loss, kernel).numpy(), 2.0)


def test_ranges_start_at_the_first_batch_then_follow_its_moving_average():
  ranges = qat_ops.Ranges(['t0'], decay=0.9)
  assert ranges.update('t0', tf.constant([-1.0, 2.0])) == (-1.0, 2.0)
  ranges.ready.assign(1.0)
  low, high = ranges.update('t0', tf.constant([1.0, 4.0]))  # low widened to 0: contains 0.
  assert float(low) == pytest.approx(0.9 * -1.0 + 0.1 * 0.0)
  assert float(high) == pytest.approx(0.9 * 2.0 + 0.1 * 4.0)


def test_the_qat_pass_computes_what_the_integer_path_does():
  """With its ranges fixed, the fake-quant training pass equals compress/quantize.py's
  fake-quant reference of the same ranges and bits, within a step of the logits' scale;
  the integer path agrees with both."""
  model = trained_budget0(seed=1)
  ops, leaves, output = trace.trace_ops(model, fold_batchnorm=True)
  ranges = qat_ops.Ranges(qat_ops.tracked_tensors(ops))
  bits = qat_ops.layer_bits(ops, 4, 8)
  x = images(16, seed=2)
  qat_ops.forward(ops, leaves, x, ranges, bits, 'mse')  # Sets the ranges from this batch.
  logits = qat_ops.forward(ops, leaves, x, ranges, bits, 'mse', training=False).numpy()
  trained = quantize.Trained(ranges=ranges.numpy(), layer_bits=bits, weight_range='mse')
  folded = cm.fold_batchnorm(model)
  meta, arrays = quantize.quantize_model(folded, None, None, trained=trained)
  int_model = int8.Int8Model(meta, arrays)
  assert set(meta['weight_bits'].values()) == {4, 8}
  middle = [name for name, b in meta['weight_bits'].items() if b == 4]
  assert all(np.abs(arrays[f'{name}/weights']).max() <= 7 for name in middle)
  f_ops, f_leaves, _ = trace.trace_ops(folded)
  fake_quant.load_weights(f_leaves, f_ops, arrays, meta['tensors'])
  reference = fake_quant.run(f_ops, f_leaves, meta['tensors'], x)[output].numpy()
  step = meta['tensors'][output]['scale']
  assert np.abs(logits - reference).max() <= 2 * step
  integer = int8.dequantize(int_model.run(int_model.quantize_input(x.numpy())),
                            **meta['tensors'][output])
  assert np.mean(np.argmax(integer, 1) == np.argmax(logits, 1)) >= 0.9


# --------------------------------------------------------------------------- a tiny run


@pytest.fixture(scope='module', name='source')
def fixture_source(tmp_path_factory):
  """A 10-step tiny budget0 run at 32x32 (its own size, as images() makes them) with one
  conv's weights partly zeroed (a pruned source), and a data folder of the same tiny images."""
  root = tmp_path_factory.mktemp('qat')
  tf.random.set_seed(0)
  config = tiny_config(root / 'source', model='budget0', image_size=32, max_steps=10,
                       optimizer='nesterov', weight_decay='l2')
  cifar10_trainer.train(config, tiny_split())
  return config, write_batches_dir(str(root / 'data'), tiny_split())


def qat_values(source, train_dir, *extra):
  config, _ = source
  values, _ = cifar10_flags.parse(qat.define_flags, [
      f'--source_dir={config.train_dir}', f'--train_dir={train_dir}', '--finetune_steps=6',
      *extra])
  return values


def run_qat(source, train_dir, *extra):
  return qat.run(qat_values(source, train_dir, *extra), source[1])


def test_a_qat_run_is_an_ordinary_run_that_quantize_reads_without_calibrating(
    source, tmp_path):
  train_dir = tmp_path / 'qat'
  assert run_qat(source, train_dir, '--weight_bits=4') is None
  settings = json.loads((train_dir / qat_ops.SETTINGS_FILE).read_text())
  assert settings['weight_bits'] == 4 and settings['weight_range'] == 'mse'
  bits = list(settings['layer_bits'].values())
  assert bits[0] == bits[-1] == 8 and set(bits[1:-1]) == {4}
  loaded = cifar10_run.load_inference_model(str(train_dir), conv='direct', fold_batchnorm=True)
  assert loaded.step == 16 and loaded.config.precision == 'float32'
  trained = quantize.trained_quantization(str(train_dir), loaded.checkpoint)
  assert set(trained.ranges) == set(settings['tensors'])
  assert all(low <= 0.0 <= high and high > low for low, high in trained.ranges.values())
  int_model = quantize.int8_model(loaded, None, None, trained=trained)
  assert int_model.meta['calibration'] == 'trained ranges'
  x_q = int_model.quantize_input(np.asarray(images(4)))
  for coding in ('none', 'lzma'):  # Packed 4-bit weights, and the whole file coded.
    path = str(tmp_path / f'model_int8_{coding}.npz')
    int_model.save(path, coding)
    again = int8.Int8Model.load(path)
    np.testing.assert_array_equal(again.run(x_q), int_model.run(x_q))
  assert (os.path.getsize(tmp_path / 'model_int8_lzma.npz')
          < os.path.getsize(tmp_path / 'model_int8_none.npz'))
  # The same command again: done, nothing trains; other bits on it are refused.
  assert run_qat(source, train_dir, '--weight_bits=4') is None
  message = run_qat(source, train_dir, '--weight_bits=2')
  assert 'weight_bits: 4 -> 2' in message and 'another --train_dir' in message


def test_zeros_of_the_source_stay_zero_through_qat(source, tmp_path):
  config, _ = source
  pruned_dir = tmp_path / 'pruned'
  # A pruned copy of the source: half of every conv's weights zeroed, raw and EMA alike.
  state = cifar10_run.RunState(config)
  state.restore(tf.train.latest_checkpoint(config.train_dir))
  zeroed = {}
  for layer in state.model.weight_layers():
    mask = np.random.default_rng(0).random(layer.kernel.shape) < 0.5
    zeroed[layer.name] = mask
    for variable in (layer.kernel, state.ema.average(layer.kernel)):
      variable.assign(np.where(mask, 0.0, variable.numpy()))
  os.makedirs(pruned_dir)
  cifar10_run.write_json(str(pruned_dir / cifar10_run.CONFIG_FILE),
                         {**json.loads(open(os.path.join(config.train_dir,
                                                         cifar10_run.CONFIG_FILE)).read()),
                          'train_dir': str(pruned_dir)})
  state.make_checkpoint().write(str(pruned_dir / 'ckpt-10'))
  with open(pruned_dir / 'checkpoint', 'w', encoding='utf-8') as f:
    f.write('model_checkpoint_path: "ckpt-10"\n')
  pruned = (cifar10_config.TrainConfig(**{**vars(config), 'train_dir': str(pruned_dir)}),
            source[1])
  assert run_qat(pruned, tmp_path / 'qat') is None
  for ema in (False, True):
    loaded = cifar10_run.load_inference_model(str(tmp_path / 'qat'), ema=ema)
    for layer in loaded.model.weight_layers():
      kernel = layer.kernel.numpy()
      assert np.all(kernel[zeroed[layer.name]] == 0.0), layer.name
      assert np.mean(kernel[~zeroed[layer.name]] != 0.0) > 0.99


def test_bad_qat_flags_are_named_before_anything_is_written(source, tmp_path):
  config, _ = source
  message = run_qat(source, config.train_dir)
  assert '--train_dir must differ from --source_dir' in message
  (tmp_path / 'other').mkdir()
  cifar10_run.write_json(str(tmp_path / 'other' / cifar10_run.CONFIG_FILE), {'model': 'tutorial'})
  message = run_qat(source, tmp_path / 'other')
  assert 'not a quantization-aware training run' in message
  assert not (tmp_path / 'other' / qat_ops.SETTINGS_FILE).exists()
