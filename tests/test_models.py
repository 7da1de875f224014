"""Tests of the model zoo: golden counts, forward shapes, checkpoints and the registry."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cifar10_model as cm
import models
from test_mobile import MOBILE_GOLDEN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The study's zoo at 24x24 (params, FLOPs; docs/design.md), computed by hand with its counting
# rules; the study's table shows them rounded to 0.01 M.
GOLDEN = {
    'tutorial': (1_068_298, 37_745_098, 1.07, 37.75),
    'alex0': (1_463_594, 25_243_594, 1.46, 25.24),
    'alex1': (322_506, 43_510_858, 0.32, 43.51),
    'alex2': (1_068_298, 37_081_546, 1.07, 37.08),
    'alex3': (996_298, 37_600_906, 1.00, 37.60),
    'alex4': (1_493_674, 35_196_874, 1.49, 35.20),
    'nin0': (120_458, 46_213_344, 0.12, 46.21),
    'nin1': (178_890, 69_327_072, 0.18, 69.33),
    'nin2': (966_986, 251_362_872, 0.97, 251.36),
    'squeeze0': (122_986, 16_039_224, 0.12, 16.04),
    'squeeze1': (146_570, 22_836_024, 0.15, 22.84),
}


# Ours, not the study's: small Inception-style models inside the tutorial's budget.
INCEPTION_GOLDEN = {
    'inception0': (788_922, 27_988_842),  # by hand: 5,640,192 + 12,763,008 + 8,336,736 + head
    'inception1': (688_266, 36_581_898),
}
BUDGET_PARAMS, BUDGET_FLOPS = 1_100_000, 40_000_000
# The budget models at 32x32, counted folded (a BatchNorm is the bias of its conv).
BUDGET_GOLDEN = {'budget0': (568_666, 36_515_786), 'budget1': (401_610, 36_481_354),
                 'budget2': (340_986, 36_497_930), 'budget3': (401_610, 36_515_402),
                 'budget4': (416_456, 36_580_052), 'budget5': (340_986, 36_540_938)}
# (C_in, C_out, side) of each 3x3 conv + BatchNorm + ReLU of each budget model.
BUDGET_CONVS = {
    'budget0': [(3, 24, 32), (24, 48, 16), (48, 96, 8), (96, 96, 8), (96, 176, 4),
                (176, 176, 4)],
    'budget1': [(3, 16, 32), (16, 16, 32), (16, 40, 16), (40, 40, 16), (40, 80, 8),
                (80, 80, 8), (80, 144, 4), (144, 144, 4)],
    'budget2': [(3, 16, 32), (16, 16, 32), (16, 32, 16), (32, 32, 16), (32, 32, 16),
                (32, 64, 8), (64, 64, 8), (64, 64, 8), (64, 128, 4), (128, 128, 4)],
}
BUDGET_CONVS.update(budget3=BUDGET_CONVS['budget1'], budget4=BUDGET_CONVS['budget1'],
                    budget5=BUDGET_CONVS['budget2'])
# Residual: each conv that keeps its width is a block, x + BN(conv(x)) then ReLU; gated: its
# branch ends in a squeeze-excite gate of hidden width C / 4.
BUDGET_RESIDUAL, BUDGET_GATED = ('budget3', 'budget4', 'budget5'), ('budget4',)
# The tutorial's own cost, which a budget model must not exceed.
TUTORIAL_PARAMS, TUTORIAL_FLOPS = GOLDEN['tutorial'][:2]


@pytest.mark.parametrize('name', sorted(BUDGET_GOLDEN))
def test_budget_counts_by_hand_inside_the_tutorials_cost(name):
  # (1 + 18 C_in) C_out s^2 FLOPs of the folded conv and 2 C_out s^2 of its ReLU;
  # 9 C_in C_out + C_out parameters. Pooling counts no FLOP.
  convs = BUDGET_CONVS[name]
  flops = sum((1 + 18 * c_in) * c_out * s * s + 2 * c_out * s * s for c_in, c_out, s in convs)
  params = sum(9 * c_in * c_out + c_out for c_in, c_out, _ in convs)
  blocks = [(c, s) for c_in, c, s in convs if c_in == c] if name in BUDGET_RESIDUAL else []
  flops += sum(c * s * s for c, s in blocks)  # The add; its ReLU is the conv's, moved.
  for c, s in blocks if name in BUDGET_GATED else []:
    # squeeze c -> c/4 with ReLU, excite c/4 -> c, sigmoid 4 per channel, product; the
    # mean counts 0 like every average pool.
    h = c // 4
    flops += (2 * c + 1) * h + 2 * h + (2 * h + 1) * c + 4 * c + c * s * s
    params += c * h + h + h * c + c
  width = convs[-1][1]
  flops += (2 * width + 1) * 10  # The logits layer.
  params += width * 10 + 10
  assert (params, flops) == BUDGET_GOLDEN[name]
  rows = cm.count_model(models.build(name, image_size=32))
  assert (sum(r.params for r in rows), sum(r.flops for r in rows)) == (params, flops)
  assert params <= TUTORIAL_PARAMS and flops <= TUTORIAL_FLOPS


@pytest.mark.parametrize('name', sorted(INCEPTION_GOLDEN))
def test_inception_golden_counts_inside_the_budget(name):
  rows = cm.count_model(models.build(name))
  params, flops = sum(r.params for r in rows), sum(r.flops for r in rows)
  assert (params, flops) == INCEPTION_GOLDEN[name]
  assert params <= BUDGET_PARAMS and flops <= BUDGET_FLOPS


def test_inception_block_flops_by_hand():
  block = models.inception.Inception(cm.Regime(), 'mixed', 64, (32, (48, 64), (16, 24), 24))
  relu_conv = lambda c_in, c_out, k, hw=144: ((1 + 2 * c_in * k * k) + 2) * c_out * hw
  expected = (relu_conv(64, 32, 1) + relu_conv(64, 48, 1) + relu_conv(48, 64, 3)
              + relu_conv(64, 16, 1) + relu_conv(16, 24, 3) + relu_conv(24, 24, 3)
              + relu_conv(64, 24, 1))
  assert block.flops((12, 12, 64)) == expected
  assert block.output_shape((12, 12, 64)) == (12, 12, 144)
  assert block(tf.zeros([1, 12, 12, 64])).shape == (1, 12, 12, 144)


@pytest.mark.parametrize('name', sorted(GOLDEN))
def test_golden_params_and_flops(name):
  params, flops, study_mparams, study_mflops = GOLDEN[name]
  rows = cm.count_model(models.build(name))
  assert sum(r.params for r in rows) == params
  assert sum(r.flops for r in rows) == flops
  assert round(params / 1e6, 2) == study_mparams
  assert round(flops / 1e6, 2) == study_mflops


def test_registry_lists_every_model_and_family_aliases():
  assert set(models.MODELS) == (set(GOLDEN) | set(INCEPTION_GOLDEN) | set(BUDGET_GOLDEN)
                                | set(MOBILE_GOLDEN))
  assert models.canonical_name('alex') == 'alex4'
  assert models.canonical_name('nin') == 'nin2'
  assert models.canonical_name('squeeze') == 'squeeze1'


ALL = sorted(GOLDEN) + sorted(INCEPTION_GOLDEN) + sorted(BUDGET_GOLDEN) + sorted(MOBILE_GOLDEN)


@pytest.mark.parametrize('name', ALL)
@pytest.mark.parametrize('size', [24, 32])
def test_forward_gives_logits_and_counts_match_variables(name, size):
  model = models.build(name, image_size=size)
  logits = model(tf.random.normal([2, size, size, 3]))
  assert logits.shape == (2, 10)
  # The variables of the model as it runs in inference: BatchNorms folded.
  folded = cm.fold_batchnorm(model)
  variables = sum(int(np.prod(v.shape)) for v in folded.trainable_variables)
  assert sum(r.params for r in cm.count_model(model)) == variables


@pytest.mark.parametrize('name', ['nin0', 'squeeze1'])
def test_nin_and_squeeze_have_no_decay_and_relu_logits(name):
  model = models.build(name)
  assert all(decay == 0 for _, decay in model.kernels)
  assert np.all(model(tf.random.normal([4, 24, 24, 3])).numpy() >= 0)  # ReLU before the pool


def test_alex_decay_only_on_hidden_dense_layers():
  model = models.build('alex1')
  decays = {kernel.name.split('/')[0]: decay for kernel, decay in model.kernels}
  assert decays['local4'] == pytest.approx(500 / (576 * 192))
  assert decays['softmax_linear'] == 0 and decays['conv3'] == 0


def test_nin2_dropout_only_in_training():
  model = models.build('nin2')
  images = tf.random.normal([4, 24, 24, 3])
  np.testing.assert_array_equal(model(images).numpy(), model(images).numpy())
  assert not np.array_equal(model(images, training=True).numpy(),
                            model(images, training=True).numpy())


@pytest.mark.parametrize('name', ALL)
def test_checkpoint_round_trip(name, tmp_path):
  model = models.build(name)
  path = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt'))
  other = models.build(name)
  tf.train.Checkpoint(model=other).read(path).assert_consumed()
  images = tf.random.normal([2, 24, 24, 3])
  np.testing.assert_allclose(model(images).numpy(), other(images).numpy(), rtol=1e-6)


@pytest.mark.subprocess
def test_count_script_prints_the_totals_line_and_nothing_on_stderr():
  result = subprocess.run([sys.executable, 'models/count.py', '--model=tutorial'], cwd=ROOT,
                          capture_output=True, text=True, check=True)
  assert result.stdout.splitlines()[-1] == 'total params=1068298 flops=37745098'
  assert result.stderr == ''  # TensorFlow's start-up banner is filtered out.


@pytest.mark.subprocess
def test_count_script_rejects_an_unknown_model_listing_valid_ones():
  result = subprocess.run([sys.executable, 'models/count.py', '--model=nope'], cwd=ROOT,
                          capture_output=True, text=True)
  assert result.returncode != 0
  assert 'tutorial' in result.stderr and 'Traceback' not in result.stderr


def test_the_tutorial_builds_narrower_as_its_widths_say_counted_by_hand():
  model = models.build('tutorial', widths={'conv2': 32, 'local3': 100})
  assert [tuple(layer.kernel.shape) for layer in model.weight_layers()] == [
      (5, 5, 3, 64), (5, 5, 64, 32), (6 * 6 * 32, 100), (100, 192), (192, 10)]
  rows = cm.count_model(model)
  # From the golden 1,068,298 / 37,745,098, by the counting rules: conv2 loses 51,232 params
  # and (1 + 2*1600)*32*144 + 2*32*144 = 14,759,424 FLOPs, norm2 36*12*12*32 = 165,888;
  # local3 goes from (2*2304 + 1)*384 + 2*384 to (2*1152 + 1)*100 + 2*100 FLOPs and
  # 885,120 to 115,300 params; local4 from 769*192 + 384 to 201*192 + 384, 73,920 to 19,392.
  assert sum(r.params for r in rows) == 1_068_298 - 51_232 - 769_820 - 54_528
  assert sum(r.flops for r in rows) == 37_745_098 - 14_759_424 - 165_888 - 1_539_924 - 109_056
  assert model(tf.zeros([2, 24, 24, 3])).shape == (2, 10)


def test_budget_models_narrow_and_a_residual_block_follows_its_input():
  model = models.build('budget1', 32, widths={'conv1_1': 8, 'conv4_2': 100})
  shapes = {layer.name: tuple(layer.kernel.shape) for layer in model.weight_layers()}
  assert shapes['conv1_1'] == (3, 3, 3, 8) and shapes['conv1_2'] == (3, 3, 8, 16)
  assert shapes['conv4_2'] == (3, 3, 144, 100) and shapes['logits'] == (100, 10)
  rows = {r.name: r for r in cm.count_model(model)}
  assert rows['conv1_1'].flops == (1 + 2 * 3 * 9) * 8 * 32 * 32  # no bias: BatchNorm's shift
  assert rows['conv1_2'].flops == (1 + 2 * 8 * 9) * 16 * 32 * 32
  gated = models.build('budget4', 32, widths={'conv2_1': 20})  # conv2_2 is a gated block
  shapes = {layer.name: tuple(layer.kernel.shape) for layer in gated.weight_layers()}
  assert shapes['conv2_2'] == (3, 3, 20, 20) and shapes['se2_2_squeeze'] == (20, 5)
  assert gated(tf.zeros([1, 32, 32, 3])).shape == (1, 10)


@pytest.mark.parametrize('name, widths, message', [
    ('budget1', {'conv9_1': 3}, "budget1 has no layer 'conv9_1'; its layers with weights: "
                                'conv1_1'),
    ('budget3', {'conv2_2': 5}, 'builds conv2_2 with 40 channels, not 5'),  # a residual block
    ('nin2', {'nin1_0': 32}, 'builds nin1_0 with 192 channels, not 32'),  # fixed widths
])
def test_widths_a_model_cannot_build_are_refused_naming_the_layer(name, widths, message):
  with pytest.raises(ValueError, match=message):
    models.build(name, widths=widths)


def test_widths_text_round_trips_and_bad_entries_are_named():
  assert cm.parse_widths(' conv1=12, local3=100 ') == (('conv1', 12), ('local3', 100))
  assert cm.format_widths({'conv1': 12, 'local3': 100}) == 'conv1=12,local3=100'
  assert cm.parse_widths('') == ()
  for bad in ('conv1', 'conv1=0', 'conv1=x', '=4'):
    with pytest.raises(ValueError, match='is not <layer>=<channels>'):
      cm.parse_widths(bad)
  with pytest.raises(ValueError, match='names a layer twice'):
    cm.parse_widths('conv1=3,conv1=4')
