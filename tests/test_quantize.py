"""Tests of post-training int8 quantization: calibration, weights, integer vs fake-quant, export."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cifar10_model as cm
import cifar10_trainer
import models
from compress import calibration as calibration_lib
from compress import fake_quant
from compress import int8
from compress import quantize
from compress import sparse
from compress import trace
from fixtures import make_batches_dir, tiny_config, tiny_split, write_batches_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REGIME = cm.Regime()


def tutorial_like():
  """conv -> pool -> LRN -> conv -> flatten -> dense -> linear logits, at 8x8."""
  return cm.Model([cm.conv(REGIME, 'c1', 3, 8, 5), cm.MaxPool(name='p1'), cm.LRN(name='n1'),
                   cm.conv(REGIME, 'c2', 8, 8, 3), cm.Flatten(name='f'),
                   cm.dense(REGIME, 'd1', 4 * 4 * 8, 16, tutorial_stddev=0.04),
                   cm.dense(REGIME, 'logits', 16, 10, tutorial_stddev=0.04, relu=False)],
                  image_size=8)


def squeeze_like():
  """conv -> fire (1x1 squeeze, concat of 1x1 and 3x3 expands) -> 1x1 conv -> global average."""
  return cm.Model([cm.conv(REGIME, 'c1', 3, 8, 3),
                   cm.Sequential([cm.conv(REGIME, 's', 8, 4, 1),
                                  cm.Concat([cm.conv(REGIME, 'e1', 4, 6, 1),
                                             cm.conv(REGIME, 'e3', 4, 6, 3)])]),
                   cm.conv(REGIME, 'logits', 12, 10, 1), cm.GlobalAvgPool(name='avg')],
                  image_size=8)


def residual_like():
  """conv -> residual block (conv-BN, + input, ReLU) -> pool -> global average -> dense, folded."""
  model = cm.Model([*cm.conv_bn(REGIME, 'c1', 3, 8, 3),
                    cm.Residual(cm.conv_bn(REGIME, 'c2', 8, 8, 3, relu=False), name='block'),
                    cm.MaxPool(size=2, stride=2, name='p1'), cm.GlobalAvgPool(name='avg'),
                    cm.dense(REGIME, 'logits', 8, 10, tutorial_stddev=0.1, relu=False)],
                   image_size=8)
  model(images(16, seed=2), training=True)  # Moving statistics that are not the identity.
  return cm.fold_batchnorm(model)


def gated_like():
  """conv -> residual block whose branch ends in a squeeze-excite gate -> average -> dense."""
  branch = [*cm.conv_bn(REGIME, 'c2', 8, 8, 3, relu=False),
            cm.SqueezeExcite(cm.dense(REGIME, 'se_squeeze', 8, 2, tutorial_stddev=0.5),
                             cm.dense(REGIME, 'se_excite', 2, 8, tutorial_stddev=0.5,
                                      relu=False), name='se')]
  model = cm.Model([*cm.conv_bn(REGIME, 'c1', 3, 8, 3), cm.Residual(branch, name='block'),
                    cm.GlobalAvgPool(name='avg'),
                    cm.dense(REGIME, 'logits', 8, 10, tutorial_stddev=0.1, relu=False)],
                   image_size=8)
  model(images(16, seed=2), training=True)
  return cm.fold_batchnorm(model)


def images(n, seed=0):
  return tf.random.stateless_normal([n, 8, 8, 3], seed=[seed, 1]).numpy()


def randomize_biases(model, seed=0):
  """Nonzero biases, so the int32 bias path is exercised."""
  for i, variable in enumerate(model.trainable_variables):
    if 'bias' in variable.name:
      variable.assign(tf.random.stateless_normal(variable.shape, [seed, i], stddev=0.1))


@pytest.mark.parametrize('build', [tutorial_like, squeeze_like, residual_like, gated_like])
def test_integer_layers_match_fake_quant_within_one_step(build):
  tf.random.set_seed(0)
  model = build()
  randomize_biases(model)
  meta, arrays = quantize.quantize_model(model, images(64), calibration_lib.Calibration())
  int_model = int8.Int8Model(meta, arrays)
  ops, leaves, _ = trace.trace_ops(model)
  fake_quant.load_weights(leaves, ops, arrays, meta['tensors'])
  rows = fake_quant.compare_layers(ops, leaves, int_model, images(32, seed=1))
  first = {tutorial_like: 'max_pool', squeeze_like: 'conv'}.get(build, 'conv')
  types = [row['type'] for row in rows]
  assert types[:2] == ['conv', first]
  assert ('add' in types) == (build in (residual_like, gated_like))
  assert ('mul' in types and 'sigmoid' in types) == (build is gated_like)
  assert max(row['max_step_difference'] for row in rows) <= 1, rows
  # The whole integer model against the whole fake-quant model, end to end.
  logits = fake_quant.run(ops, leaves, meta['tensors'], images(32, seed=1))
  out = meta['tensors'][meta['output']]
  expected = int8.quantize(logits[meta['output']].numpy(), **out)
  got = int_model.run(int_model.quantize_input(images(32, seed=1)))
  assert np.mean(np.abs(got.astype(int) - expected.astype(int)) <= 1) > 0.95


def test_fused_conv_and_pool_equal_the_unfused_ops():
  tf.random.set_seed(1)
  model = tutorial_like()
  int_model = int8.Int8Model(*quantize.quantize_model(model, images(16),
                                                      calibration_lib.Calibration()))
  assert int_model.pool_after == {0: 1}
  x_q = int_model.quantize_input(images(8, seed=2))
  np.testing.assert_array_equal(int_model.run(x_q),
                                int_model.run(x_q, keep_all=True)[int_model.meta['output']])


def test_minmax_ranges_cover_the_calibration_data_and_percentiles_clip_it():
  tf.random.set_seed(2)
  model = tutorial_like()
  data = images(64)
  ops, leaves, _ = trace.trace_ops(model)
  values = trace.run_float(ops, leaves, data)
  for method, covers in (('minmax', True), ('percentile', False)):
    calibration = calibration_lib.Calibration(method=method, percentile=99.0)
    meta, _ = quantize.quantize_model(model, data, calibration)
    params = meta['tensors'][ops[0]['output']]  # conv1's output
    high = (127 - params['zero_point']) * params['scale']
    peak = float(tf.reduce_max(values[ops[0]['output']]))
    assert (high >= peak * (1 - 1e-6)) == covers
  tensors = quantize.quantize_model(model, data, calibration_lib.Calibration())[0]['tensors']
  for tensor, value in values.items():
    low, high = quantize.value_range(value, calibration_lib.Calibration())
    assert low <= float(tf.reduce_min(value)) and high >= float(tf.reduce_max(value))
    # The int8 grid covers it too, up to the half step by which the zero point is rounded.
    params = tensors[tensor]
    half_step = params['scale'] / 2 * (1 + 1e-6)
    lowest = (-128 - params['zero_point']) * params['scale']
    assert lowest <= float(tf.reduce_min(value)) + half_step
    assert (127 - params['zero_point']) * params['scale'] >= float(tf.reduce_max(value)) - half_step


def test_concat_inputs_take_the_concat_scale_and_pools_their_input_scale():
  ops = [{'type': 'conv', 'inputs': ['input'], 'output': 't0'},
         {'type': 'conv', 'inputs': ['input'], 'output': 't1'},
         {'type': 'concat', 'name': 'c', 'inputs': ['t0', 't1'], 'output': 't2'},
         {'type': 'max_pool', 'inputs': ['t2'], 'output': 't3'}]
  ranges = {'input': (-1, 1), 't0': (0, 1), 't1': (0, 4), 't2': (0, 4), 't3': (0, 3)}
  params = quantize.tensor_params(ops, ranges)
  assert params['t0'] == params['t1'] == params['t2'] == params['t3']
  assert params['t2']['scale'] == pytest.approx(4 / 255)
  ops[1]['type'] = 'max_pool'
  with pytest.raises(trace.QuantizationError, match='does not come from a conv'):
    quantize.tensor_params(ops, ranges)


def test_affine_params_keep_zero_exact():
  params = quantize.affine_params(-1.0, 3.0)
  assert params['scale'] == pytest.approx(4.0 / 255)
  assert int8.dequantize(np.int8(params['zero_point']), **params) == 0.0
  assert quantize.affine_params(0.0, 6.0)['zero_point'] == -128  # After a ReLU: 0 -> -128.


def test_weights_are_symmetric_per_output_channel_and_zeros_stay_zero():
  kernel = np.zeros((3, 3, 2, 4), np.float32)
  kernel[0, 0, 0] = [0.5, -2.0, 0.0, 1e-3]
  kernel[1, 2, 1] = [-0.25, 1.0, 0.0, -1e-3]
  parts = quantize.quantize_weights(kernel, np.array([0.1, 0.2, 0.3, 0.4]), input_scale=0.05,
                                    output_scale=0.1)
  # Scales max |w| / 127; the all-zero channel: max(2^-16 * s_y / s_x, 2^-14, |b| / (32767
  # s_x)) = 0.3 / (0.05 * 32767), so its bias is 32767. The last channel's 1e-3 / 127 is
  # under float16's smallest normal: this layer keeps float32 scales.
  np.testing.assert_allclose(parts['weight_scale'],
                             [0.5 / 127, 2.0 / 127, 0.3 / (0.05 * 32767), 1e-3 / 127], rtol=1e-7)
  assert parts['bias'][2] == 32767
  assert parts['weights'][0, 0, 0].tolist() == [127, -127, 0, 127]
  assert parts['weights'][1, 2, 1].tolist() == [-64, 64, 0, -127]  # -63.5 rounds to even.
  assert np.count_nonzero(parts['weights']) == np.count_nonzero(kernel)
  np.testing.assert_array_equal(
      parts['bias'], np.round(np.array([0.1, 0.2, 0.3, 0.4]) / (0.05 * parts['weight_scale'])))
  assert parts['bias'].dtype == np.int32


def test_weight_scales_round_up_to_the_float16_grid_unless_one_is_under_its_normals():
  exact = np.array([0.5 / 127, 2.0 / 127, 2**-14, 0.1])
  scale = quantize.half_grid_scales(exact)
  assert scale.dtype == np.float32
  np.testing.assert_array_equal(scale.astype(np.float16).astype(np.float32), scale)
  assert np.all(scale >= exact) and np.all(scale < exact * (1 + 2**-10))  # never clips
  assert scale[2] == 2**-14  # already on the grid: unchanged
  # By hand: 0.5 / 127 = 2^-8 + 8.06 ulps of 2^-18 (float16's ulp in [2^-8, 2^-7)) -> 9 ulps.
  assert scale[0] == 2**-8 + 9 * 2**-18
  tiny = np.array([0.5 / 127, 2**-15])
  np.testing.assert_array_equal(quantize.half_grid_scales(tiny), tiny.astype(np.float32))


def test_weight_scales_are_tflites_by_default_max_abs_over_127_in_float32():
  kernel = np.random.default_rng(5).normal(size=(3, 3, 4, 6)).astype(np.float32)
  parts = quantize.quantize_weights(kernel, np.zeros(6), input_scale=0.05, output_scale=0.1)
  expected = np.abs(kernel).reshape(-1, 6).max(axis=0) / np.float32(127)  # float32 division
  assert parts['weight_scale'].dtype == np.float32
  np.testing.assert_array_equal(parts['weight_scale'], expected)
  np.testing.assert_array_equal(parts['weights'], np.round(kernel / expected.astype(np.float64)))
  with pytest.raises(ValueError, match="weight_scales='bfloat16'"):
    quantize.quantize_weights(kernel, np.zeros(6), 0.05, 0.1, weight_scales='bfloat16')


def test_a_layer_of_float16_grid_scales_is_stored_in_float16_and_its_biases_in_int16():
  kernel = np.zeros((3, 3, 2, 3), np.float32)
  kernel[0, 0, 0] = [0.5, -2.0, 0.0]
  kernel[2, 1, 1] = [0.1, 0.3, 0.0]
  bias = np.array([0.01, -0.02, 5.0])  # the all-zero channel's bias: 5 / (0.05 s_w) > 2^15
  parts = quantize.quantize_weights(kernel, bias, input_scale=0.05, output_scale=0.1,
                                    weight_scales='float16')
  scale = parts['weight_scale']
  np.testing.assert_array_equal(scale.astype(np.float16).astype(np.float32), scale)
  assert np.all(scale[:2] >= [0.5 / 127, 2.0 / 127]) and scale[2] >= 5.0 / (0.05 * 32767)
  assert parts['weights'][0, 0, 0].tolist() == [127, -127, 0]  # rounding up clips nothing
  entries = sparse.pack({f'conv/{key}': value for key, value in parts.items()})
  assert entries['conv/weight_scale/float32'].dtype == np.float16
  assert entries['conv/bias/int32'].dtype == np.int16
  assert entries['conv/weights/values'].dtype == np.int8  # 4 of 54 nonzero: sparse


def test_exported_file_round_trips(tmp_path):
  tf.random.set_seed(3)
  model = squeeze_like()
  int_model = int8.Int8Model(*quantize.quantize_model(model, images(16),
                                                      calibration_lib.Calibration()))
  int_model.save(tmp_path / 'm.npz')
  loaded = int8.Int8Model.load(tmp_path / 'm.npz')
  assert loaded.meta == int_model.meta
  for name, array in int_model.arrays.items():
    assert loaded.arrays[name].dtype == array.dtype
    np.testing.assert_array_equal(loaded.arrays[name], array)
  x_q = int_model.quantize_input(images(8, seed=4))
  np.testing.assert_array_equal(loaded.run(x_q), int_model.run(x_q))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
  """A 20-step tiny tutorial run and a batches folder of the same tiny images."""
  root = tmp_path_factory.mktemp('quantize')
  tf.random.set_seed(0)
  config = tiny_config(root / 'run', max_steps=20)
  cifar10_trainer.train(config, tiny_split())
  return config, write_batches_dir(str(root), tiny_split())


@pytest.mark.subprocess
def test_quantize_run_scores_three_ways_and_the_runner_agrees(tiny_run, tmp_path):
  config, batches_dir = tiny_run
  report = quantize.quantize_run(config.train_dir, str(tmp_path), batches_dir,
                                 calibration_lib.Calibration(images=16), compare_images=8)
  assert set(report['precision']) == {'float', 'fake_quant', 'int8', 'runner'}
  assert report['precision']['runner'] == report['precision']['int8']
  assert report['runner_same_predictions'] is True
  assert report['max_step_difference'] <= 1
  assert report['bytes']['float32_dense'] / report['bytes']['int8_dense'] > 3.9
  # Stored: biases that fit int16 take 2 bytes instead of 4; scales are TFLite's float32.
  assert report['bytes']['int8_sparse'] < report['bytes']['int8_dense']
  assert report['weight_scales'] == 'float32'
  with np.load(report['model_file']) as stored:
    scales = [key for key in stored.files if 'weight_scale' in key]
    assert scales and all(stored[key].dtype == np.float32 for key in scales), scales
  assert 'runner' in quantize.format_report(report)
  # The NumPy runner as a program, reading the test file itself, in a process where an
  # import of TensorFlow fails: it must finish without one.
  code = ('import runpy, sys; sys.modules["tensorflow"] = None; '
          'sys.argv = ["compress/int8.py"] + sys.argv[1:]; '
          'runpy.run_path("compress/int8.py", run_name="__main__")')
  result = subprocess.run(
      [sys.executable, '-c', code, f'--model_file={report["model_file"]}',
       f'--data_dir={os.path.dirname(batches_dir)}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr
  assert f'"precision": {report["precision"]["int8"]}' in result.stdout


def test_a_pruned_kernel_stays_sparse_in_int8():
  kernel = np.random.default_rng(0).normal(size=(5, 5, 64, 64)).astype(np.float32)
  kernel[np.random.default_rng(1).random(kernel.shape) < 0.9] = 0
  parts = quantize.quantize_weights(kernel, np.zeros(64), input_scale=0.1, output_scale=0.1)
  assert np.all(parts['weights'][kernel == 0] == 0)  # Tiny weights may round to 0 as well.
  assert np.count_nonzero(parts['weights']) > 0.98 * np.count_nonzero(kernel)
  assert sparse.nbytes(sparse.pack(parts)) < 0.25 * sparse.nbytes(parts)


@pytest.mark.subprocess
def test_quantize_binary_reports_a_folder_without_a_run(tmp_path):
  result = subprocess.run(
      [sys.executable, 'compress/quantize.py', f'--checkpoint_dir={tmp_path}',
       f'--data_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert f'--checkpoint_dir={tmp_path} holds no trained run' in result.stderr, result.stderr


@pytest.mark.subprocess
def test_quantize_binary_checks_out_dir_before_any_work(tiny_run, tmp_path):
  config, _ = tiny_run
  (tmp_path / 'a_file').write_text('')
  out_dir = tmp_path / 'a_file' / 'int8'
  result = subprocess.run(
      [sys.executable, 'compress/quantize.py', f'--checkpoint_dir={config.train_dir}',
       f'--out_dir={out_dir}', f'--data_dir={tmp_path / "no_data"}'], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert f'cannot create --out_dir={out_dir}' in result.stderr, result.stderr
  assert not (tmp_path / 'no_data').exists()  # Refused before the data was sought.


@pytest.fixture(scope='module', name='exported')
def fixture_exported(tmp_path_factory):
  """(meta, arrays) of a small quantized model, and the folder to write variants into."""
  tf.random.set_seed(3)
  meta, arrays = quantize.quantize_model(squeeze_like(), images(16), calibration_lib.Calibration())
  return meta, arrays, tmp_path_factory.mktemp('exported')


def _linear(meta):
  return next(op for op in meta['ops'] if op['type'] == 'conv')


@pytest.mark.parametrize('damage,message', [
    (lambda m, a: m['tensors'][m['input']].update(scale=-1.0), 'scale -1.0 is not a positive'),
    (lambda m, a: m['tensors'][m['input']].update(zero_point=300), 'not in -128..127'),
    (lambda m, a: m.update(image_size=10 ** 13), 'image_size 10000000000000 is not in 1..32'),
    (lambda m, a: m['ops'][0].update(type='softmax'), 'not an op of a known type'),
    (lambda m, a: m['ops'][0].update(inputs=['/etc/passwd']), 'are not tensors computed'),
    (lambda m, a: _linear(m).update(stride='2'), "stride '2' is out of range"),
    (lambda m, a: m.update(output='t999'), "its output 't999' is not computed"),
    (lambda m, a: a.update({f'{_linear(m)["name"]}/bias': np.zeros(3, np.int64)}),
     'bias is not int32'),
    (lambda m, a: a.pop(f'{_linear(m)["name"]}/weights'), 'weights is not an int8 array'),
])
def test_a_damaged_int8_file_is_one_clear_error(exported, damage, message):
  meta, arrays, folder = exported
  meta, arrays = json.loads(json.dumps(meta)), dict(arrays)
  damage(meta, arrays)
  path = folder / 'damaged.npz'
  sparse.save(path, arrays, meta)
  with pytest.raises(sparse.FormatError, match=f'is not a sound int8 model file: .*{message}'):
    int8.Int8Model.load(path)


def _op(meta, kind):
  return next(op for op in meta['ops'] if op['type'] == kind)


@pytest.mark.parametrize('damage,message', [
    (lambda m: _op(m, 'add')['inputs'].append(m['input']), 'add takes 2 inputs, not 3'),
    (lambda m: _op(m, 'add').update(relu='yes'), "relu 'yes' is out of range"),
    (lambda m: _op(m, 'add').update(inputs=[m['input'], _op(m, 'add')['inputs'][1]]),
     r"op 7 'block' \(add\): its input 't6' is \[N, 8, 8, 8\], expected \[N, 8, 8, 3\]"),
    (lambda m: _op(m, 'mul').update(inputs=[_op(m, 'mul')['inputs'][0]] * 2),
     r"op 6 'se' \(mul\): its input 't1' is \[N, 8, 8, 8\], expected \[N, 8\] \(its gate"),
    (lambda m: m['tensors'][_op(m, 'add')['output']].update(scale=1e-12),
     'add block: an input scale over 2.30 times'),
])
def test_a_damaged_residual_or_gate_is_one_clear_error(tmp_path, damage, message):
  tf.random.set_seed(5)
  meta, arrays = quantize.quantize_model(gated_like(), images(16), calibration_lib.Calibration())
  meta = json.loads(json.dumps(meta))
  damage(meta)
  sparse.save(tmp_path / 'damaged.npz', arrays, meta)
  with pytest.raises(sparse.FormatError, match=f'is not a sound int8 model file: .*{message}'):
    int8.Int8Model.load(tmp_path / 'damaged.npz')


@pytest.fixture(scope='module', name='quantized')
def fixture_quantized():
  """{builder name: (meta, arrays)} of the small models the shape cases damage."""
  tf.random.set_seed(6)
  return {build.__name__: quantize.quantize_model(build(), images(16),
                                                  calibration_lib.Calibration())
          for build in (tutorial_like, squeeze_like, residual_like)}


def _skip(meta, kind):
  """Removes the first `kind` op; its readers (and the output) take its input instead."""
  op = _op(meta, kind)
  meta['ops'].remove(op)
  for reader in meta['ops']:
    reader['inputs'] = [op['inputs'][0] if t == op['output'] else t for t in reader['inputs']]
  if meta['output'] == op['output']:
    meta['output'] = op['inputs'][0]


def _widen_logits(arrays, outputs):
  """Gives the layer named `logits` `outputs` output channels (its own, repeated or cut), its
  arrays still consistent with each other."""
  for part in ('weights', 'bias', 'weight_scale'):
    array = arrays[f'logits/{part}']
    arrays[f'logits/{part}'] = np.take(array, np.arange(outputs) % array.shape[-1], axis=-1)


@pytest.mark.parametrize('build,damage,message', [
    ('tutorial_like', lambda m, a: _skip(m, 'flatten'),  # no flatten before the dense
     "op 4 'd1' (dense): its input 't3' is [N, 4, 4, 8], expected [N, 128] (the rows of its "
     'weights; a dense takes a flattened input)'),
    ('residual_like', lambda m, a: _skip(m, 'avg_pool'),  # K = 8 channels: a 1x1 conv
     "op 4 'logits' (dense): its input 't3' is [N, 4, 4, 8], expected [N, 8]"),
    ('squeeze_like', lambda m, a: _op(m, 'concat').update(inputs=['t2']),
     "op 5 'logits' (conv): its input 't4' is [N, 8, 8, 6], expected [N, H, W, 12] (the input "
     'channels of its weights)'),
    ('squeeze_like', lambda m, a: _widen_logits(a, 20),
     "its output 't6', of op 6 'avg_pool6' (avg_pool), is [N, 20], expected [N, 10] (the "
     'logits of the 10 classes)'),
    ('residual_like', lambda m, a: _widen_logits(a, 3),
     "its output 't5', of op 5 'logits' (dense), is [N, 3], expected [N, 10]"),
    ('squeeze_like', lambda m, a: _skip(m, 'avg_pool'),  # logits left as an image
     "its output 't5', of op 5 'logits' (conv), is [N, 8, 8, 10], expected [N, 10]"),
])
def test_an_int8_file_of_ill_fitting_shapes_is_one_clear_error(quantized, tmp_path, build,
                                                               damage, message):
  meta, arrays = quantized[build]
  meta, arrays = json.loads(json.dumps(meta)), dict(arrays)
  damage(meta, arrays)
  path = tmp_path / 'damaged.npz'
  sparse.save(path, arrays, meta)
  with pytest.raises(sparse.FormatError) as error:
    int8.Int8Model.load(path)
  assert str(error.value).startswith(f'{path} is not a sound int8 model file: ')
  assert message in str(error.value) and '\n' not in str(error.value)


def test_an_op_output_past_the_bound_is_refused_before_anything_is_allocated(quantized,
                                                                            tmp_path):
  """A file may not grow one image's tensors without bound (a chain of concats of a tensor
  with itself, say): the blank-image run of load would allocate them."""
  from compress import int8_file  # pylint: disable=g-import-not-at-top
  meta, arrays = quantized['squeeze_like']
  meta, arrays = json.loads(json.dumps(meta)), dict(arrays)
  concat = _op(meta, 'concat')
  concat['inputs'] = [concat['inputs'][0]] * 200_000  # 8x8x(3 x 200,000) values: 38.4M
  path = tmp_path / 'grown.npz'
  sparse.save(path, arrays, meta)
  with pytest.raises(sparse.FormatError,
                     match=f"op 4 'concat.*over {int8_file.MAX_VALUES_PER_IMAGE:,} values"):
    int8.Int8Model.load(path)


def test_a_sound_int8_file_passes_the_checks(exported):
  meta, arrays, folder = exported
  int8.Int8Model(meta, arrays).save(folder / 'sound.npz')
  assert int8.Int8Model.load(folder / 'sound.npz').meta == meta


@pytest.mark.subprocess
def test_the_runner_reads_only_the_test_file_of_its_data_dir_flag(exported, tmp_path):
  """A model file cannot choose the data: a `data` block in its meta naming another test
  file (here one whose labels would be an error) is ignored; --data_dir alone is read."""
  meta, arrays, _ = exported
  decoy = tmp_path / 'decoy'
  make_batches_dir(str(decoy), bad_label=('test_batch.bin', 0))
  model = tmp_path / 'model.npz'
  int8.Int8Model(dict(meta, data={'dir': str(decoy), 'test_file': '/etc/passwd'}),
                 arrays).save(model)
  good = tmp_path / 'good'
  make_batches_dir(str(good))
  result = subprocess.run([sys.executable, 'compress/int8.py', f'--model_file={model}',
                           f'--data_dir={good}'], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr
  assert json.loads(result.stdout.strip().splitlines()[-1])['num_examples'] == 10_000
  refused = subprocess.run([sys.executable, 'compress/int8.py', f'--model_file={model}',
                            f'--data_dir={decoy}'], cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
  assert refused.returncode == 1 and 'record 0 has label byte 10' in refused.stderr


def test_the_size_breakdown_splits_positions_values_scales_and_biases():
  rng = np.random.default_rng(0)
  weights = np.where(rng.random((64, 32)) < 0.9, 0, rng.integers(-7, 8, (64, 32))).astype(np.int8)
  arrays = {'fc/weights': weights, 'fc/bias': np.arange(32, dtype=np.int32),
            'fc/weight_scale': np.full(32, 0.5, np.float32)}
  assert [quantize.part_of(e) for e in ('fc/weights/mask', 'fc/weights/shape',
                                        'fc/weights/values/packed4', 'fc/weights/packed2',
                                        'fc/bias/int32', 'fc/weight_scale/float32')] == [
      'positions', 'positions', 'values', 'values', 'biases', 'scales']
  rows = quantize.size_breakdown(arrays)
  assert set(rows) == {'positions', 'values', 'scales', 'biases', 'total'}
  assert rows['total']['stored'] == sparse.nbytes(sparse.pack(arrays))
  nonzeros = int(np.count_nonzero(weights))
  assert rows['values']['stored'] == -(-nonzeros // 2) + 8  # packed 4-bit, and its shape
  assert rows['biases']['stored'] == 32  # 0..31 fit int8
  assert rows['scales']['stored'] == 64  # 0.5 is a float16 number


def test_post_training_low_bit_weights_keep_the_edges_at_8_bits_with_mse_scales():
  model = models.build('budget0', 32)
  images = tf.random.stateless_normal([16, 32, 32, 3], seed=[5, 6]).numpy()
  folded = cm.fold_batchnorm(model)
  meta, arrays = quantize.quantize_model(folded, images, calibration_lib.Calibration(images=16),
                                         weight_bits=(4, 8))
  bits = meta['weight_bits']
  names = list(bits)
  assert bits[names[0]] == bits[names[-1]] == 8 and set(bits[n] for n in names[1:-1]) == {4}
  assert meta['weight_range'] == 'mse'
  for name in names[1:-1]:
    assert np.abs(arrays[f'{name}/weights']).max() <= 7
  assert np.abs(arrays[f'{names[0]}/weights']).max() == 127
  int8.Int8Model(meta, arrays)  # Loads: the integer path takes the 4-bit weights as they are.
