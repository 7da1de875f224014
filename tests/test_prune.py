"""Tests of magnitude pruning: the schedule, the masks, zeros that stay zero, the pruned run."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import cifar10_input
import cifar10_model as cm
import cifar10_run
import cifar10_scoring
import cifar10_trainer
import cifar10_config
import cifar10_eval
import cifar10_flags
from compress import finetune
from compress import prune
from compress import sparse
from fixtures import TINY_SIZE, copy_run, tiny_config, tiny_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def at(function, step):
  return function(tf.constant(step, tf.int64)).numpy()


def test_gradual_schedule_ends_and_midpoint_follow_the_cubic_formula():
  settings = prune.PruningSettings(target_sparsity=0.9, initial_sparsity=0.1, begin_step=100,
                                   end_step=300, frequency=50)
  assert at(settings.sparsity, 99) == 0.0  # Nothing is pruned before begin_step.
  assert at(settings.sparsity, 100) == pytest.approx(0.1)
  # 0.9 + (0.1 - 0.9) * (1 - 100 / 200)^3 = 0.9 - 0.8 / 8.
  assert at(settings.sparsity, 200) == pytest.approx(0.8)
  assert at(settings.sparsity, 300) == pytest.approx(0.9)
  assert at(settings.sparsity, 10_000) == pytest.approx(0.9)


def test_gradual_masks_update_every_frequency_steps_and_at_the_end():
  settings = prune.PruningSettings(begin_step=100, end_step=320, frequency=50)
  updates = [s for s in range(0, 500) if at(settings.is_update_step, s)]
  assert updates == [100, 150, 200, 250, 300, 320]


def test_iterative_rounds_raise_the_sparsity_in_equal_steps():
  settings = prune.PruningSettings(target_sparsity=0.8, begin_step=100, end_step=400,
                                   mode='iterative', rounds=4)
  assert settings.round_starts() == [100, 200, 300, 400]
  assert [s for s in range(500) if at(settings.is_update_step, s)] == [100, 200, 300, 400]
  assert [at(settings.sparsity, s) for s in (99, 100, 250, 399, 400)] == pytest.approx(
      [0.0, 0.2, 0.4, 0.6, 0.8])


def test_oneshot_prunes_to_the_target_once():
  settings = prune.PruningSettings(target_sparsity=0.75, begin_step=10, end_step=90,
                                   mode='oneshot')
  assert [s for s in range(100) if at(settings.is_update_step, s)] == [10]
  assert at(settings.sparsity, 10) == pytest.approx(0.75)


def test_gradual_with_begin_equal_to_end_prunes_to_the_target_at_once():
  settings = prune.PruningSettings(target_sparsity=0.6, begin_step=50, end_step=50)
  assert [s for s in range(100) if at(settings.is_update_step, s)] == [50]
  assert at(settings.sparsity, 50) == pytest.approx(0.6)


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match='initial_sparsity <= target_sparsity'):
    prune.PruningSettings(target_sparsity=0.5, initial_sparsity=0.6)
  with pytest.raises(ValueError, match='begin_step <= end_step'):
    prune.PruningSettings(begin_step=10, end_step=5)


def test_mask_keeps_exactly_the_k_largest_magnitudes():
  magnitudes = np.random.default_rng(0).permutation(1000).astype(np.float32).reshape(10, 100)
  mask = prune.keep_largest(tf.constant(magnitudes), tf.constant(0.75, tf.float64)).numpy()
  assert mask.sum() == 250
  np.testing.assert_array_equal(mask.astype(bool), magnitudes >= 750)


def test_mask_keeps_exactly_k_even_when_magnitudes_tie():
  mask = prune.keep_largest(tf.zeros([7, 9]), tf.constant(0.5, tf.float64)).numpy()
  assert mask.sum() == 63 - math.floor(0.5 * 63)


def test_erk_shares_keep_small_layers_denser_and_meet_the_total_by_hand():
  # conv1-like 3x3x3x64 (1,728 weights) and local3-like 2304x384 (884,736) at 90 %: 88,646.4
  # kept in all. eps = 88,646.4 / (73 + 2,688) would give the conv a density of
  # eps * 73 / 1,728 = 1.36 > 1, so it stays dense and the dense layer keeps the rest.
  shares = prune.erk_sparsities([[3, 3, 3, 64], [2304, 384]], 0.9)
  assert shares[0] == 0.0
  assert shares[1] == pytest.approx(1 - (88_646.4 - 1_728) / 884_736)
  # 100x100 and 300x300 at 90 %: 10,000 kept; eps = 10,000 / (200 + 600) = 12.5, so
  # densities 12.5 * 200 / 10,000 = 0.25 and 12.5 * 600 / 90,000 = 1/12.
  np.testing.assert_allclose(prune.erk_sparsities([[100, 100], [300, 300]], 0.9),
                             [0.75, 11 / 12])
  kernels = [tf.random.normal([3, 3, 3, 64]), tf.random.normal([2304, 384])]
  masks = prune.new_masks(kernels, tf.constant(0.45, tf.float64), 'erk', target=0.9)
  assert float(tf.reduce_sum(masks[0])) == 1728  # half-way: each share halved
  assert float(tf.reduce_sum(masks[1])) == 884_736 - math.floor(0.5 * shares[1] * 884_736)


def test_global_threshold_prunes_the_smallest_matrix_entries_first():
  small = tf.constant(np.arange(1, 101, dtype=np.float32).reshape(10, 10) * 1e-3)
  large = tf.constant(np.arange(1, 301, dtype=np.float32).reshape(3, 100))
  masks = prune.new_masks([small, large], tf.constant(0.5, tf.float64), 'global')
  assert masks[0].numpy().sum() == 0  # All 100 small entries go before any large one.
  assert masks[1].numpy().sum() == 200
  per_layer = prune.new_masks([small, large], tf.constant(0.5, tf.float64), 'per_layer')
  assert [m.numpy().sum() for m in per_layer] == [50, 150]


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  """A 10-step tiny training run to prune."""
  tf.random.set_seed(0)
  config = tiny_config(tmp_path_factory.mktemp('source'), max_steps=10)
  cifar10_trainer.train(config, tiny_split())
  return config


def pruning_trainer(source_run, train_dir, max_steps=30, **overrides):
  values = dict(target_sparsity=0.8, begin_step=10, end_step=20, frequency=5,
                dense_layers=('conv1',), threshold='per_layer')
  values.update(overrides)
  config = tiny_config(train_dir, max_steps=max_steps)
  return prune.PruningTrainer(config, prune.PruningSettings(**values),
                              tf.train.latest_checkpoint(source_run.train_dir))


def pruned_run(source_run, train_dir, **overrides):
  trainer = pruning_trainer(source_run, train_dir, **overrides)
  cifar10_trainer.train(trainer.config, tiny_split(), make_trainer=lambda _: trainer)
  return trainer


@pytest.fixture(scope='module')
def pruned_once(source_run, tmp_path_factory):
  """The trainer of a 20-step pruning run from the source (masks fixed from step 20 on),
  trained once for the module; tests that change a run work on a copy (resume_copy)."""
  return pruned_run(source_run, tmp_path_factory.mktemp('pruned') / 'run')


def resume_copy(source_run, trainer, tmp_path):
  """A new PruningTrainer resumed from a copy of `trainer`'s run folder."""
  resumed = pruning_trainer(source_run, copy_run(trainer.config.train_dir, tmp_path / 'run'))
  assert resumed.restore_latest() == 30
  return resumed


def test_pruned_weights_are_zero_in_raw_weights_and_ema_shadows(pruned_once):
  trainer = pruned_once
  assert int(trainer.step.numpy()) == 30
  assert [mask.name for mask in trainer.masks][0] == 'conv2/mask:0'  # conv1 is left dense.
  # 80 % of all the matrices, conv1's 4,800 weights included: the others go further.
  total = sum(math.prod(k.shape) for k, _ in trainer.model.kernels)
  share = 0.8 * total / (total - 5 * 5 * 3 * 64)
  for kernel, shadow, mask in zip(trainer.pruned, trainer.pruned_shadows, trainer.masks):
    size = math.prod(kernel.shape)
    assert abs(mask.numpy().sum() - (size - math.floor(share * size))) <= 1
    dropped = mask.numpy() == 0
    assert np.all(kernel.numpy()[dropped] == 0)
    assert np.all(shadow.numpy()[dropped] == 0)
  assert np.count_nonzero(trainer.model.layers[0].kernel.numpy()) == 5 * 5 * 3 * 64
  assert float(trainer.sparsity()) == pytest.approx(0.8, abs=1e-5)


def test_ends_keeps_the_first_layer_and_the_logits_layer_dense(source_run, tmp_path):
  trainer = pruning_trainer(source_run, tmp_path / 'p', dense_layers=('ends',))
  assert trainer.dense_names == ['conv1', 'softmax_linear']
  assert [mask.name.split('/')[0] for mask in trainer.masks] == ['conv2', 'local3', 'local4']


def test_a_target_the_dense_layers_make_unreachable_is_refused(source_run, tmp_path):
  # conv1 and softmax_linear hold 6,720 of the 1,067,584 weights (0.63 %, at 24x24): 99.9 %
  # of all is out of reach with them dense.
  with pytest.raises(cifar10_config.ConfigError, match='cannot be reached'):
    pruning_trainer(source_run, tmp_path / 'p', target_sparsity=0.999,
                    dense_layers=('conv1', 'softmax_linear'))


def test_pruned_weights_stay_zero_across_train_steps(source_run, pruned_once, tmp_path):
  trainer = resume_copy(source_run, pruned_once, tmp_path)
  masks = [mask.numpy().copy() for mask in trainer.masks]
  batches = iter(cifar10_input.train_inputs(tiny_split(), 16, seed=1, augment=False,
                                            image_size=TINY_SIZE))
  for _ in range(5):
    trainer.train_step(*next(batches))
  for kernel, shadow, mask, before in zip(trainer.pruned, trainer.pruned_shadows,
                                          trainer.masks, masks):
    np.testing.assert_array_equal(mask.numpy(), before)  # Past end_step: masks are fixed.
    assert np.all(kernel.numpy()[before == 0] == 0)
    assert np.all(shadow.numpy()[before == 0] == 0)
    assert np.all(kernel.numpy()[before == 1] != 0)


def test_pruned_checkpoint_resumes_with_its_masks_and_evaluates(source_run, pruned_once,
                                                                tmp_path):
  resumed = resume_copy(source_run, pruned_once, tmp_path)
  for mask, saved in zip(resumed.masks, pruned_once.masks):
    np.testing.assert_array_equal(mask.numpy(), saved.numpy())
  evaluator = cifar10_scoring.Evaluator(resumed.config, tiny_split())
  metrics = cifar10_eval.eval_once(evaluator, cifar10_run.newest_checkpoint(str(tmp_path / 'run')))
  assert metrics['step'] == 30 and metrics['num_examples'] == 32
  for variable, shadow in zip(evaluator.model.trainable_variables, pruned_once.ema_shadows):
    np.testing.assert_array_equal(variable.numpy(), shadow.numpy())


def test_report_and_sparse_file_hold_the_ema_weights(source_run, tmp_path):
  trainer = pruned_run(source_run, tmp_path, dense_layers=())
  report = prune.build_report(trainer, str(tmp_path / prune.SPARSE_FILE))
  arrays, meta = sparse.load(tmp_path / prune.SPARSE_FILE)
  assert meta['step'] == 30 and meta['model'] == 'tutorial'
  for variable, shadow in zip(trainer.variables, trainer.ema_shadows):
    np.testing.assert_array_equal(arrays[variable.name.split(':')[0]], shadow.numpy())
  sizes = [row['size'] for row in report['layers']]
  assert report['nonzeros'] == sum(s - math.floor(0.8 * s) for s in sizes)
  assert report['sparsity'] == pytest.approx(0.8, abs=1e-5)
  assert report['sparse_file_bytes'] < 0.3 * report['dense_float32_bytes']
  assert 'sparsity 80.00%' in prune.format_report(report)


@pytest.mark.subprocess
def test_prune_binary_reports_a_source_without_a_run(tmp_path):
  result = subprocess.run(
      [sys.executable, 'compress/prune.py', f'--source_dir={tmp_path}',
       f'--train_dir={tmp_path / "pruned"}'], cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr, result.stderr
  assert f'--source_dir={tmp_path} holds no trained run' in result.stderr, result.stderr


def prune_values(source_dir, train_dir, **overrides):
  """compress/prune.py's flag values for a 20-step pruning to 50 %, updated by overrides."""
  values, _ = cifar10_flags.parse(prune.define_flags, [
      f'--source_dir={source_dir}', f'--train_dir={train_dir}', '--finetune_steps=20',
      '--target_sparsity=0.5', '--frequency=5'])
  values.update(overrides)
  return values


def test_a_malformed_pruning_json_is_a_clear_error(tmp_path):
  settings = prune.PruningSettings(target_sparsity=0.5)
  for text in ('{not json', '[1, 2]', '"a string"'):
    (tmp_path / prune.SETTINGS_FILE).write_text(text)
    with pytest.raises(cifar10_config.ConfigError, match='pruning.json is unreadable'):
      prune.write_settings(str(tmp_path), settings, 'runs/source/ckpt-10')


def test_prepare_notes_an_unfinished_source(source_run, tmp_path, capsys):
  unfinished = copy_run(source_run.train_dir, tmp_path / 'source')
  config = cifar10_run.read_config(str(unfinished))
  cifar10_run.write_config(dataclasses.replace(config, max_steps=2000))
  prune.prepare(prune_values(unfinished, tmp_path / 'pruned'))
  assert 'the source run is unfinished, at step 10 of its --max_steps=2,000' in (
      capsys.readouterr().out)


def test_prepare_derives_the_window_from_the_source_step(source_run, tmp_path):
  config, settings, source, _ = prune.prepare(prune_values(source_run.train_dir, tmp_path))
  assert (settings.begin_step, settings.end_step, config.max_steps) == (10, 20, 30)
  assert source.endswith('ckpt-10') and config.train_dir == str(tmp_path)


def rates(schedule, steps):
  return [float(schedule(tf.constant(s, tf.int64))) for s in steps]


def test_the_fine_tuning_has_its_own_schedule_whatever_the_source_s(source_run, tmp_path):
  # The source: onecycle at 0.2 over 10 steps. By default the fine-tuning, steps 10 .. 30,
  # runs linearly from 0.02 down to 0: 0.02 (1 - (s - 10) / 20).
  onecycle = copy_run(source_run.train_dir, tmp_path / 'source')
  source_config = cifar10_run.read_config(str(onecycle))
  cifar10_run.write_config(dataclasses.replace(source_config, lr_schedule='onecycle',
                                               learning_rate=0.2))
  config, _, _, schedule = prune.prepare(prune_values(onecycle, tmp_path / 'pruned'))
  np.testing.assert_allclose(rates(schedule, [10, 20, 29, 30]), [0.02, 0.01, 0.001, 0.0],
                             rtol=1e-5, atol=1e-9)
  assert (config.lr_schedule, config.learning_rate) == ('warmup_linear', 0.02)
  assert finetune.schedule_record(schedule) == {
      'lr_schedule': 'warmup_linear', 'learning_rate': 0.02, 'warmup_steps': 0,
      'first_step': 10, 'last_step': 30}
  _, _, _, constant = prune.prepare(prune_values(onecycle, tmp_path / 'p2', learning_rate=0.05,
                                                 lr_schedule='constant'))
  assert rates(constant, [10, 29]) == [pytest.approx(0.05)] * 2


def test_continue_runs_the_source_schedule_on_to_the_new_last_step(source_run, tmp_path):
  # What earlier versions did silently: onecycle over 10 + 20 steps, peak at 7.5 -> 7.5:
  # at step s >= 7.5, 0.2 (30 - s) / 22.5.
  onecycle = copy_run(source_run.train_dir, tmp_path / 'source')
  source_config = cifar10_run.read_config(str(onecycle))
  cifar10_run.write_config(dataclasses.replace(source_config, lr_schedule='onecycle',
                                               learning_rate=0.2))
  config, _, _, schedule = prune.prepare(prune_values(onecycle, tmp_path / 'pruned',
                                                      lr_schedule='continue'))
  np.testing.assert_allclose(rates(schedule, [10, 20]), [0.2 * 20 / 22.5, 0.2 * 10 / 22.5],
                             rtol=1e-5)
  assert (config.lr_schedule, config.learning_rate, schedule.first_step) == ('onecycle', 0.2, 0)


def test_rewind_replays_the_rates_of_the_source_s_last_steps(source_run, tmp_path):
  onecycle = copy_run(source_run.train_dir, tmp_path / 'source')
  source_config = cifar10_run.read_config(str(onecycle))
  cifar10_run.write_config(dataclasses.replace(source_config, lr_schedule='onecycle',
                                               learning_rate=0.2, max_steps=10))
  _, _, _, schedule = prune.prepare(prune_values(onecycle, tmp_path / 'pruned',
                                                 lr_schedule='rewind', finetune_steps=8))
  # The source: 10 steps, peak at 2.5, then 0.2 (10 - s) / 7.5; fine-tuning 10 .. 18 replays
  # its steps 2 .. 10.
  source = dataclasses.replace(source_config, lr_schedule='onecycle', learning_rate=0.2,
                               max_steps=10).schedule()
  np.testing.assert_allclose(rates(schedule, range(10, 19)), rates(source, range(2, 11)),
                             rtol=1e-5, atol=1e-9)
  assert rates(schedule, [14])[0] == pytest.approx(0.2 * 4 / 7.5, rel=1e-5)


def test_pruning_json_records_the_fine_tuning_schedule_and_a_change_is_refused(source_run,
                                                                               tmp_path):
  values = prune_values(source_run.train_dir, tmp_path / 'pruned')
  config, settings, source, schedule = prune.prepare(values)
  prune.write_settings(config.train_dir, settings, source, schedule)
  with open(tmp_path / 'pruned' / prune.SETTINGS_FILE) as f:
    assert json.load(f)['finetune_schedule']['learning_rate'] == 0.02
  _, _, _, faster = prune.prepare(dict(values, learning_rate=0.1))
  with pytest.raises(cifar10_config.ConfigError, match='finetune_schedule'):
    prune.write_settings(config.train_dir, settings, source, faster)


@pytest.mark.parametrize('window', [dict(end_step=5), dict(begin_step=5), dict(end_step=31)])
def test_prepare_refuses_a_window_outside_the_fine_tuning(source_run, tmp_path, window):
  with pytest.raises(cifar10_config.ConfigError, match='pruning window'):
    prune.prepare(prune_values(source_run.train_dir, tmp_path, **window))


def test_prepare_refuses_an_ordinary_run_as_train_dir_before_writing(source_run, tmp_path):
  other = tmp_path / 'other'
  shutil.copytree(source_run.train_dir, other)
  before = {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()}
  with pytest.raises(cifar10_config.ConfigError, match='not a pruning run'):
    prune.prepare(prune_values(source_run.train_dir, other))
  assert {p.name: p.read_bytes() for p in other.iterdir() if p.is_file()} == before


def test_an_ordinary_run_is_refused_as_a_pruning_train_dir(source_run):
  with pytest.raises(cifar10_config.ConfigError, match='holds no pruning checkpoint'):
    pruning_trainer(source_run, source_run.train_dir).restore_latest()


def test_resuming_accepts_the_same_source_however_its_path_is_spelt(tmp_path):
  settings = prune.PruningSettings(target_sparsity=0.5, begin_step=10, end_step=20)
  source = str(tmp_path / 'source' / 'ckpt-10')
  prune.write_settings(str(tmp_path / 'run'), settings, source)
  prune.write_settings(str(tmp_path / 'run'), settings,
                       os.path.join(str(tmp_path), '.', 'source', 'ckpt-10'))
  with pytest.raises(cifar10_config.ConfigError, match='source_checkpoint'):
    prune.write_settings(str(tmp_path / 'run'), settings, str(tmp_path / 'other' / 'ckpt-10'))


@pytest.mark.stage  # It trains its own source.
def test_a_batchnorm_model_prunes_and_exports_its_folded_ema_weights(tmp_path):
  tf.random.set_seed(0)
  source = tiny_config(tmp_path / 'source', model='budget0', image_size=32, max_steps=10,
                       optimizer='nesterov', weight_decay='l2')  # budget0's own size
  cifar10_trainer.train(source, tiny_split())
  config = tiny_config(tmp_path / 'pruned', model='budget0', image_size=32, max_steps=20,
                       optimizer='nesterov', weight_decay='l2')
  trainer = prune.PruningTrainer(
      config, prune.PruningSettings(target_sparsity=0.8, begin_step=10, end_step=15,
                                    frequency=5),
      tf.train.latest_checkpoint(source.train_dir))
  cifar10_trainer.train(config, tiny_split(), make_trainer=lambda _: trainer)
  report = prune.build_report(trainer, str(tmp_path / prune.SPARSE_FILE))
  arrays, _ = sparse.load(tmp_path / prune.SPARSE_FILE)
  assert sorted(arrays) == sorted(f'{name}/{part}' for name in (
      'conv1_1', 'conv2_1', 'conv3_1', 'conv3_2', 'conv4_1', 'conv4_2', 'logits')
                                  for part in ('kernel', 'bias'))
  # The folded kernels keep the masks' zeros: BatchNorm scales whole output channels.
  for kernel, mask in zip(trainer.pruned, trainer.masks):
    name = kernel.name.split('/')[0]
    np.testing.assert_array_equal(arrays[f'{name}/kernel'] == 0, mask.numpy() == 0)
  assert report['sparsity'] == pytest.approx(0.8, abs=1e-3)
  # The exported weights are the EMA model's, folded: the same logits as the unfolded one.
  evaluator = cifar10_scoring.Evaluator(config, tiny_split())
  evaluator.restore(cifar10_run.newest_checkpoint(config.train_dir))
  evaluator.restore_ema_shadows()
  folded = cm.fold_batchnorm(evaluator.model)
  for layer in folded.weight_layers():
    np.testing.assert_allclose(arrays[f'{layer.name}/kernel'], layer.kernel.numpy(), rtol=1e-6)


def test_a_run_pruned_before_the_fine_tuning_had_its_own_schedule_resumes_with_continue(
    source_run, tmp_path):
  values = prune_values(source_run.train_dir, tmp_path / 'pruned', lr_schedule='continue')
  config, settings, source, schedule = prune.prepare(values)
  prune.write_settings(config.train_dir, settings, source)  # As earlier versions wrote it.
  _, _, _, own = prune.prepare(dict(values, lr_schedule='warmup_linear'))
  with pytest.raises(cifar10_config.ConfigError, match='resume it with --lr_schedule=continue'):
    prune.write_settings(config.train_dir, settings, source, own)
  prune.write_settings(config.train_dir, settings, source, schedule)
  with open(tmp_path / 'pruned' / prune.SETTINGS_FILE) as f:
    assert json.load(f)['finetune_schedule']['first_step'] == 0
