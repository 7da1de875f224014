"""Tests of compress/slim.py: the FLOP budget, the selection, and a whole tiny slimming run
whose cut model computes what the masked one did."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_input
import cifar10_model as cm
import cifar10_run
import cifar10_trainer
import models
from compress import channels
from compress import finetune
from compress import slim as slim_lib
from fixtures import tiny_config, tiny_split, write_batches_dir


def test_the_budget_falls_along_the_cubic_to_the_target():
  settings = slim_lib.SlimSettings(target_flops=0.5, begin_step=100, end_step=200, frequency=10)
  assert settings.budget(99) == 1.0 and settings.budget(100) == 1.0
  assert settings.budget(150) == pytest.approx(0.5 + 0.5 * 0.5 ** 3)  # 0.5625
  assert settings.budget(200) == 0.5 and settings.budget(10**6) == 0.5
  updates = [s for s in range(90, 210) if bool(settings.is_update_step(tf.constant(s, tf.int64)))]
  assert updates == list(range(100, 201, 10))
  with pytest.raises(ValueError, match='target_flops must be in'):
    slim_lib.SlimSettings(target_flops=0.0)


def test_selection_drops_the_lowest_scores_first_and_keeps_each_layers_minimum():
  model = models.build('budget1', 32)
  groups = channels.channel_groups(model)
  # conv1_1's channels score lowest of all: the minimum share (25 %: 4 of 16) must stay.
  scores = {g.name: np.arange(g.size, dtype=np.float64) + (0 if g.name == 'conv1_1' else 1000)
            for g in groups}
  kept = {g.name: np.ones(g.size, bool) for g in groups}
  counter = slim_lib.FlopCounter(cifar10_config.TrainConfig(model='budget1', image_size=32))
  dense = counter({})
  # One channel of conv1_1 saves about 1 % (its own 58k FLOPs and conv1_2's 295k of 36.5M).
  new = slim_lib.select(groups, scores, kept, counter, 0.995 * dense, min_keep=0.25)
  assert new['conv1_1'].tolist() == [False] + [True] * 15
  assert all(new[g.name].all() for g in groups[1:])  # no more than it needed
  # 20 % is more than conv1_1 can give: it goes down to its 4, then the next lowest go.
  tight = slim_lib.select(groups, scores, kept, counter, 0.8 * dense, min_keep=0.25)
  assert tight['conv1_1'].tolist() == [False] * 12 + [True] * 4
  widths = channels.widths_of(groups, {n: np.flatnonzero(m) for n, m in tight.items()})
  assert counter(widths) <= 0.8 * dense
  assert all(tight[g.name].sum() >= g.size // 4 for g in groups)


def test_uniform_allocation_takes_the_same_share_of_every_layer():
  model = models.build('budget1', 32)
  groups = channels.channel_groups(model)
  rng = np.random.default_rng(0)
  scores = {g.name: rng.random(g.size) for g in groups}
  kept = {g.name: np.ones(g.size, bool) for g in groups}
  counter = slim_lib.FlopCounter(cifar10_config.TrainConfig(model='budget1', image_size=32))
  new = slim_lib.select(groups, scores, kept, counter, 0.5 * counter({}), 0.1, 'uniform')
  shares = [new[g.name].mean() for g in groups]
  assert max(shares) - min(shares) <= 1 / 16 + 1e-9  # within one channel of the narrowest
  for g in groups:  # within a layer, the lowest scores went
    assert scores[g.name][~new[g.name]].max(initial=0) <= scores[g.name][new[g.name]].min()
  widths = channels.widths_of(groups, {n: np.flatnonzero(m) for n, m in new.items()})
  assert counter(widths) <= 0.5 * counter({})
  # Reached in many updates, as a slimming run reaches it: the shares stay equal (what an
  # update removed before counts against its group).
  kept = {g.name: np.ones(g.size, bool) for g in groups}
  for budget in np.linspace(0.95, 0.5, 10):
    kept = slim_lib.select(groups, scores, kept, counter, budget * counter({}), 0.1, 'uniform')
  shares = [kept[g.name].mean() for g in groups]
  assert max(shares) - min(shares) <= 1 / 16 + 1e-9, shares


def test_a_multiple_rounds_every_narrowed_layer_down_to_whole_blocks():
  model = models.build('budget1', 32)
  groups = channels.channel_groups(model)
  rng = np.random.default_rng(1)
  scores = {g.name: rng.random(g.size) for g in groups}
  counter = slim_lib.FlopCounter(cifar10_config.TrainConfig(model='budget1', image_size=32))
  kept = {g.name: np.ones(g.size, bool) for g in groups}
  for budget in np.linspace(0.9, 0.5, 5):  # in updates, as a run: each a subset of the last
    new = slim_lib.select(groups, scores, kept, counter, budget * counter({}), 0.1,
                          'uniform', multiple=8)
    assert all((~new[n] | kept[n]).all() for n in kept)
    kept = new
  for g in groups:
    count = int(kept[g.name].sum())
    assert count == g.size or (count % 8 == 0 and count >= 8), (g.name, count)
    assert scores[g.name][~kept[g.name]].max(initial=0) <= scores[g.name][kept[g.name]].min()
  widths = channels.widths_of(groups, {n: np.flatnonzero(m) for n, m in kept.items()})
  assert 0.4 * counter({}) < counter(widths) <= 0.5 * counter({})
  plain = slim_lib.select(groups, scores, {g.name: np.ones(g.size, bool) for g in groups},
                          counter, 0.5 * counter({}), 0.1, 'uniform')
  assert any(int(m.sum()) % 8 for m in plain.values())  # without it, widths fall anywhere
  whole = slim_lib.select(groups, scores, {g.name: np.ones(g.size, bool) for g in groups},
                          counter, 0.5 * counter({}), 0.1, 'uniform', 8, ('conv1_1', 'conv1_2'))
  assert whole['conv1_1'].all() and whole['conv1_2'].all()
  # The others give what the first two keep: each no wider than without them.
  assert all(whole[g.name].sum() <= kept[g.name].sum() for g in groups[2:])
  assert sum(whole[g.name].sum() for g in groups[2:]) < sum(kept[g.name].sum()
                                                           for g in groups[2:])


@pytest.fixture(scope='module', name='source')
def fixture_source(tmp_path_factory):
  """A 10-step tiny budget0 run (BatchNorm) at 32x32, its own size, and a data folder of the
  same tiny images."""
  root = tmp_path_factory.mktemp('slim')
  tf.random.set_seed(0)
  config = tiny_config(root / 'source', model='budget0', image_size=32, max_steps=10,
                       optimizer='nesterov', weight_decay='l2')
  cifar10_trainer.train(config, tiny_split())
  return config, write_batches_dir(str(root / 'data'), tiny_split())


def slim(source, train_dir, *extra):
  """compress/slim.py's run of a 10-step slimming to half the FLOPs (its status)."""
  config, batches_dir = source
  values, _ = cifar10_flags.parse(slim_lib.define_flags, [
      f'--source_dir={config.train_dir}', f'--train_dir={train_dir}', '--finetune_steps=10',
      '--target_flops=0.5', '--frequency=2', *extra])
  return slim_lib.run(values, batches_dir)


def test_a_slimmed_run_is_an_ordinary_run_of_half_the_flops(source, tmp_path, capsys):
  train_dir = tmp_path / 'slim'
  assert slim(source, train_dir, '--criterion=bn_scale', '--allocation=global',
              '--multiple=1') is None
  config = cifar10_run.read_config(str(train_dir))
  assert config.model == 'budget0' and config.widths and config.max_steps == 20
  report = json.loads((train_dir / slim_lib.REPORT_FILE).read_text())
  assert report['flops']['ratio'] <= 0.5 and report['flops']['slim'] == sum(
      r.flops for r in cm.count_model(cifar10_run.default_model(config, 'direct')))
  loaded = cifar10_run.load_inference_model(str(train_dir), conv='direct')  # as eval does
  assert loaded.step == 20 and loaded.config.widths == config.widths
  assert 'FLOPs' in capsys.readouterr().out
  # The cut, step 16 (--end_step 15, one step later): the slim run's first checkpoint gives
  # the masked run's logits (budget0 has no LRN: exactly the same function).
  images = tf.constant(cifar10_input.eval_batch(tiny_split(8).images, 32))
  masked = cifar10_run.load_inference_model(str(train_dir / slim_lib.MASKED_DIR), conv='direct')
  first = cifar10_run.load_inference_model(str(train_dir), conv='direct',
                                           checkpoint=str(train_dir / 'ckpt-16'))
  assert masked.step == 16 and first.step == 16
  np.testing.assert_allclose(first.model(images).numpy(), masked.model(images).numpy(),
                             rtol=1e-4, atol=1e-4)
  # Run again: both phases are done, nothing trains, the report is written again.
  assert slim(source, train_dir, '--criterion=bn_scale', '--allocation=global',
              '--multiple=1') is None


@pytest.mark.stage  # It trains its own source.
def test_bn_scale_needs_batchnorm_and_l1_norm_slims_the_tutorial(tmp_path):
  tf.random.set_seed(0)
  config = tiny_config(tmp_path / 'tutorial', max_steps=5)
  cifar10_trainer.train(config, tiny_split())
  source = (config, write_batches_dir(str(tmp_path / 'data'), tiny_split()))
  assert slim(source, tmp_path / 'bn', '--criterion=bn_scale') == (
      'error: --criterion=bn_scale: conv1 has no BatchNorm to read a scale from; use '
      '--criterion=l1_norm for this model')
  assert slim(source, tmp_path / 'l1', '--criterion=l1_norm') is None
  widths = cm.parse_widths(cifar10_run.read_config(str(tmp_path / 'l1')).widths)
  assert set(dict(widths)) == {'conv1', 'conv2', 'local3', 'local4'}


def slim_values(source, train_dir, *extra):
  values, _ = cifar10_flags.parse(slim_lib.define_flags, [
      f'--source_dir={source[0].train_dir}', f'--train_dir={train_dir}', *extra])
  return values


@pytest.mark.parametrize('extra, message', [
    (('--begin_step=5',), r'the slimming window --begin_step=5 \.\. --end_step=2505 must lie '
                          r'within the fine-tuning steps 10 \.\. 5009'),
    (('--end_step=5010',), 'must lie within the fine-tuning steps 10 .. 5009'),
    (('--lr_schedule=continue', '--warmup_steps=5'), '--warmup_steps=5 belongs to the '
                                                     "fine-tuning's own schedules"),
])
def test_bad_slimming_flags_are_named_before_anything_is_written(source, tmp_path, extra,
                                                                 message):
  with pytest.raises(cifar10_config.ConfigError, match=message):
    slim_lib.prepare(slim_values(source, tmp_path / 'slim', *extra))
  assert not (tmp_path / 'slim').exists()


def test_the_source_must_be_another_unslimmed_run(source, tmp_path):
  with pytest.raises(cifar10_config.ConfigError, match='--train_dir must differ'):
    slim_lib.prepare(slim_values(source, source[0].train_dir))
  with pytest.raises(cifar10_config.ConfigError, match='holds no trained run'):
    slim_lib.prepare(slim_values((cifar10_config.TrainConfig(train_dir=str(tmp_path)),),
                                 tmp_path / 'slim'))
  slimmed = tmp_path / 'slimmed'
  shutil.copytree(source[0].train_dir, slimmed)
  config = cifar10_run.read_config(str(slimmed))
  cifar10_run.write_config(dataclasses.replace(config, train_dir=str(slimmed),
                                               widths='conv1=12'))
  with pytest.raises(cifar10_config.ConfigError, match='is a slimmed run already'):
    slim_lib.prepare(slim_values((cifar10_config.TrainConfig(train_dir=str(slimmed)),),
                                 tmp_path / 'slim'))


def test_a_run_slimmed_otherwise_is_not_resumed(tmp_path):
  path = str(tmp_path / slim_lib.SETTINGS_FILE)

  def keep(record):  # as compress/slim.py keeps its settings
    finetune.keep_settings(path, finetune.read_settings(path), record, 'slimming')
  record = {'target_flops': 0.5, 'criterion': 'bn_scale'}
  keep(record)
  keep(record)  # the same: resumes
  with pytest.raises(cifar10_config.ConfigError, match=r"holds a slimming run with other "
                                                       r"settings \(target_flops: 0.5 -> 0.3\)"):
    keep(dict(record, target_flops=0.3))
  (tmp_path / slim_lib.SETTINGS_FILE).write_text('[1, 2]')
  with pytest.raises(cifar10_config.ConfigError, match='slimming.json is unreadable'):
    keep(record)
