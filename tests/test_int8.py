"""Tests of the NumPy integer kernels: rounding, fixed-point multipliers, pooling, preprocessing."""

import fractions
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from compress import int8
from compress import sparse


def test_quantize_dequantize_round_trip_is_within_half_a_step():
  scale, zero_point = 0.05, -20
  x = np.linspace((-128 - zero_point) * scale, (127 - zero_point) * scale, 10001)
  error = np.abs(int8.dequantize(int8.quantize(x, scale, zero_point), scale, zero_point) - x)
  assert error.max() <= scale / 2 + 1e-6


def test_quantize_saturates_outside_the_range():
  np.testing.assert_array_equal(int8.quantize([-1e6, 1e6], 0.1, 0), [-128, 127])


@pytest.mark.parametrize('multiplier', [1e-6, 0.0123, 0.49999, 0.5, 0.75, 0.99999999, 1.0, 3.7])
def test_multiplier_decomposition_reproduces_m_to_int32_precision(multiplier):
  m0, shift = int8.quantize_multiplier(multiplier)
  assert 2**30 <= m0 < 2**31
  exact = fractions.Fraction(int(m0), 2 ** (31 + int(shift)))
  # m0 is M * 2^(31 + shift) rounded to an integer: off by at most half a unit of m0.
  half_unit = fractions.Fraction(1, 2 ** (32 + int(shift)))
  assert abs(exact - fractions.Fraction(multiplier)) <= half_unit


def test_requantize_rounds_half_up_like_exact_arithmetic():
  rng = np.random.default_rng(0)
  acc = rng.integers(-2**24, 2**24, size=2000)
  m0, shift = int8.quantize_multiplier(0.000317)
  got = int8.requantize(acc, int8.requantizer(m0, shift, zero_point=3))
  for a, g in zip(acc[:300], got[:300]):
    real = fractions.Fraction(int(a) * int(m0), 2 ** (31 + int(shift)))
    expected = min(max(int(np.floor(real + fractions.Fraction(1, 2))) + 3, -128), 127)
    assert g == expected


@pytest.mark.parametrize('multiplier', [1e-8, 2.0**-40])
def test_tiny_multipliers_cap_the_shift_and_stay_exact_in_int64(multiplier):
  m0, shift = int8.quantize_multiplier(multiplier)
  assert 31 + shift == int8.MAX_TOTAL_SHIFT
  acc = np.array([-2**31 + 1, -5 * 10**8, 0, 7, 2**31 - 1])
  got = int8.requantize(acc, int8.requantizer(m0, shift, zero_point=-128, low=-128))
  rounded = [np.floor(fractions.Fraction(int(a) * int(m0), 2**54) + fractions.Fraction(1, 2))
             for a in acc]
  expected = [min(max(int(r) - 128, -128), 127) for r in rounded]
  assert got.tolist() == expected


def test_an_offset_folded_into_the_constants_equals_adding_it_first():
  rng = np.random.default_rng(1)
  m0, shift = int8.quantize_multiplier(rng.uniform(1e-4, 1e-2, size=8))
  offset = rng.integers(-10**6, 10**6, size=8)
  acc = rng.integers(-2**23, 2**23, size=(50, 8)).astype(np.float32)
  folded = int8.requantize(acc, int8.requantizer(m0, shift, -5, -5, offset))
  added = int8.requantize(acc.astype(np.int64) + offset, int8.requantizer(m0, shift, -5, -5))
  np.testing.assert_array_equal(folded, added)
  # And both against exact rational arithmetic, on a few entries.
  for (i, c) in [(0, 0), (7, 3), (49, 7)]:
    real = fractions.Fraction((int(acc[i, c]) + int(offset[c])) * int(m0[c]),
                              2 ** (31 + int(shift[c])))
    assert added[i, c] == min(max(int(np.floor(real + fractions.Fraction(1, 2))) - 5, -5), 127)


def test_accumulator_is_float32_only_when_every_partial_sum_is_exact():
  small = np.full((1600, 4), 10, np.int8)  # 128 * 16,000 < 2^24
  large = np.full((1600, 4), 127, np.int8)  # 128 * 203,200 > 2^24
  assert int8.accumulator_dtype(small) == np.float32
  assert int8.accumulator_dtype(large) == np.float64


@pytest.mark.parametrize('size,stride,side', [(3, 2, 24), (3, 2, 12), (3, 1, 6), (2, 2, 7)])
def test_int8_max_pool_matches_tensorflow(size, stride, side):
  x = np.random.default_rng(2).integers(-128, 128, size=(2, side, side, 5)).astype(np.int8)
  expected = tf.nn.max_pool2d(tf.constant(x, tf.float32), size, stride, 'SAME').numpy()
  np.testing.assert_array_equal(int8.max_pool(x, size, stride), expected)


@pytest.mark.parametrize('stride', [1, 2])
@pytest.mark.parametrize('channel_major', [False, True])
def test_patches_pad_with_the_zero_point_like_a_same_convolution(channel_major, stride):
  x = np.random.default_rng(3).integers(-3, 4, size=(2, 7, 7, 2)).astype(np.int8)
  kernel = np.random.default_rng(4).integers(-3, 4, size=(5, 5, 2, 3)).astype(np.float32)
  windows = int8.patches(x, 5, stride, 0, channel_major).astype(np.float32)
  matrix = kernel.transpose(2, 0, 1, 3) if channel_major else kernel
  got = windows.reshape(-1, 50) @ matrix.reshape(50, 3)
  expected = tf.nn.conv2d(tf.constant(x, tf.float32), kernel, stride, 'SAME').numpy()
  np.testing.assert_array_equal(got.reshape(expected.shape), expected)


def test_numpy_standardization_matches_tensorflow():
  images = np.random.default_rng(5).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
  images[0] = 7  # A flat image: the 1 / sqrt(N) floor of the stddev.
  expected = tf.image.per_image_standardization(tf.constant(images[:, 4:28, 4:28], tf.float32))
  np.testing.assert_allclose(int8.eval_preprocess(images, 24), expected.numpy(), atol=2e-5)


@pytest.mark.subprocess
def test_the_runner_module_does_not_import_tensorflow():
  code = 'import sys; import compress.int8; print("tensorflow" in sys.modules)'
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          cwd=int8.__file__.rsplit('/compress/', 1)[0], check=True)
  assert result.stdout.strip() == 'False'


def test_loading_a_pruned_float_file_as_an_int8_model_says_so(tmp_path):
  path = tmp_path / 'model_sparse.npz'
  sparse.save(path, {'conv1/kernel': np.ones((5, 5, 3, 64), np.float32)},
              {'model': 'tutorial', 'image_size': 24, 'step': 10, 'weights': 'ema'})
  with pytest.raises(sparse.FormatError, match='not an int8 model.*compress/prune.py'):
    int8.Int8Model.load(path)


def _round_half_up(value):
  return int(np.floor(value + fractions.Fraction(1, 2)))


@pytest.mark.parametrize('relu', [False, True])
def test_add_rescales_both_inputs_like_exact_arithmetic(relu):
  tensors = {'a': {'scale': 0.031, 'zero_point': -7}, 'b': {'scale': 0.0123, 'zero_point': 40},
             'y': {'scale': 0.045, 'zero_point': -20}}
  layer = {'name': 'block', 'inputs': ['a', 'b'], 'output': 'y', 'relu': relu}
  a_q, b_q = np.meshgrid(np.arange(-128, 128, 5), np.arange(-128, 128, 3))
  prepared = int8.prepare_add(layer, tensors)
  got = int8.add(a_q.astype(np.int8), b_q.astype(np.int8), prepared).reshape(-1)
  low = -20 if relu else -128
  exact = np.array([
      min(max(_round_half_up((fractions.Fraction(0.031) * (int(a) + 7)
                              + fractions.Fraction(0.0123) * (int(b) - 40))
                             / fractions.Fraction(0.045)) - 20, low), 127)
      for a, b in zip(a_q.flat, b_q.flat)])
  # The multipliers keep 31 bits: one step off only within 2^-20 of a tie, so at most rarely.
  assert np.abs(got.astype(int) - exact).max() <= 1 and np.mean(got == exact) > 0.999
  with pytest.raises(ValueError, match='add block: inputs of shapes'):
    int8.add(a_q.astype(np.int8), b_q[:1].astype(np.int8), prepared)
  with pytest.raises(ValueError, match='add block: an input scale over 2.30 times'):
    int8.prepare_add(layer, dict(tensors, y={'scale': 1e-12, 'zero_point': 0}))


def test_sigmoid_table_and_gate_product_match_exact_arithmetic():
  tensors = {'g': {'scale': 0.06, 'zero_point': 5}, 's': {'scale': 1 / 256, 'zero_point': -128},
             'x': {'scale': 0.02, 'zero_point': -128}, 'y': {'scale': 0.015, 'zero_point': -128}}
  gate_in = np.arange(-128, 128).astype(np.int8)
  gate = int8.sigmoid(gate_in, int8.prepare_sigmoid({'inputs': ['g'], 'output': 's'}, tensors))
  real = 1 / (1 + np.exp(-0.06 * (np.arange(-128, 128) - 5.0)))
  np.testing.assert_array_equal(gate, np.clip(np.round(real * 256) - 128, -128, 127))
  x_q = np.arange(-128, 128, dtype=np.int64).reshape(1, 4, 8, 8).astype(np.int8)
  g_q = gate[::32].reshape(1, 8)
  layer = {'name': 'se', 'inputs': ['x', 's'], 'output': 'y'}
  prepared = int8.prepare_multiply(layer, tensors)
  got = int8.multiply(x_q, g_q, prepared)
  for (_, i, j, c), value in np.ndenumerate(got):
    product = (fractions.Fraction(0.02) * (int(x_q[0, i, j, c]) + 128)
               * fractions.Fraction(1, 256) * (int(g_q[0, c]) + 128))
    expected = min(max(_round_half_up(product / fractions.Fraction(0.015)) - 128, -128), 127)
    assert abs(int(value) - expected) <= 1
  with pytest.raises(ValueError, match='mul se: a gate of shape'):
    int8.multiply(x_q, g_q[:, :4], prepared)
  with pytest.raises(ValueError, match='mul se: a gate of shape'):
    int8.multiply(x_q[0], g_q, prepared)


def _clock(seconds_per_call):
  """A fake clock: 0 at its first reading, then `seconds_per_call` later at each one."""
  readings = iter(range(10**6))
  return lambda: next(readings) * seconds_per_call


def test_progress_lines_name_the_count_the_rate_and_the_eta():
  lines = []
  progress = int8.Progress(100, lines.append, 'scoring', every=0.25, seconds=5,
                           clock=_clock(2.0))
  for _ in range(10):
    progress(10)  # 10 images every 2 s: 5 images/s throughout.
  # A line once 25 images and 5 s have passed since the last: at 30 images (6 s), then at
  # 60 (12 s) and 90 (18 s); none at 100, the end. ETA = images left / 5 images/s.
  assert lines == ['scoring 30/100 images (5 images/s, ETA 0:00:14)',
                   'scoring 60/100 images (5 images/s, ETA 0:00:08)',
                   'scoring 90/100 images (5 images/s, ETA 0:00:02)']


def test_progress_waits_for_the_rarer_of_its_share_and_its_seconds():
  lines = []
  progress = int8.Progress(10_000, lines.append, every=0.1, seconds=10, clock=_clock(1.0))
  for _ in range(100):
    progress(100)  # 100 images a second: 10 % every 10 s, so a line each 10 s.
  assert [line.split(' (')[0] for line in lines] == [
      f'scoring {done:,}/10,000 images' for done in range(1000, 10_000, 1000)]
  quick = []
  progress = int8.Progress(10_000, quick.append, every=0.1, seconds=10, clock=_clock(0.01))
  for _ in range(100):
    progress(100)  # The whole phase in 1 s: no line however many tenths pass.
  assert not quick


def test_format_eta_is_hours_minutes_seconds_rounded():
  assert int8.format_eta(3725.4) == '1:02:05'
  assert int8.format_eta(19.6) == '0:00:20'
