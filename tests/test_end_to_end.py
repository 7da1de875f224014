"""Real-data tests of the binaries: learning well above chance, and training, pruning and
quantization surviving SIGKILL at random moments."""

import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

import tensorflow as tf

import cifar10_eval
import cifar10_records
import cifar10_run
import cifar10_train
from compress import int8
from fixtures import wait_for

pytestmark = pytest.mark.subprocess  # Every test here starts the binaries.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_STEPS = 300  # steps; enough for the tutorial model to pass 40 % on the test set


def test_tutorial_model_learns_on_real_data(tmp_path, real_batches_dir):
  config = cifar10_run.TrainConfig(train_dir=str(tmp_path), max_steps=REAL_STEPS,
                                   log_frequency=100)
  cifar10_train.train(config, cifar10_records.load_split(real_batches_dir, 'train'))
  evaluator = cifar10_eval.Evaluator(config, cifar10_records.load_split(real_batches_dir, 'test'))
  metrics = cifar10_eval.eval_once(evaluator, tf.train.latest_checkpoint(str(tmp_path)))
  assert metrics['num_examples'] == 10_000
  assert metrics['step'] == REAL_STEPS
  # Chance is 10 %; the tutorial model passes 40 % within a few hundred steps.
  assert metrics['precision_raw'] > 0.35, metrics
  assert metrics['precision_ema'] > 0.35, metrics


def test_sigkill_then_rerun_finishes_with_the_watcher_running(tmp_path, real_data_dir):
  train_dir = str(tmp_path / 'run')
  train_cmd = [sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
               f'--train_dir={train_dir}', '--max_steps=100', '--checkpoint_steps=10',
               '--log_frequency=5']
  trainer = subprocess.Popen(train_cmd, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  watcher = subprocess.Popen(
      [sys.executable, 'cifar10_eval.py', f'--checkpoint_dir={train_dir}',
       f'--data_dir={real_data_dir}', '--eval_interval_secs=0.5', '--timeout=600'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    def latest_step():
      path = tf.train.latest_checkpoint(train_dir)
      return int(path.rsplit('-', 1)[1]) if path else 0

    wait_for(lambda: latest_step() >= 20, trainer, 600, 'checkpoint 20')
    trainer.kill()  # SIGKILL: no handler runs, no final save.
    trainer.wait()
    killed_at = latest_step()
    assert 20 <= killed_at < 100

    rerun = subprocess.run(train_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert 'resumed from' in rerun.stdout and f'ckpt-{killed_at}' in rerun.stdout
    logged = [int(line.split('step ')[1].split(',')[0]) for line in rerun.stdout.splitlines()
              if ', loss = ' in line]
    assert logged[0] == killed_at + 5 and logged[-1] == 100  # Nothing repeated or skipped.
    assert tf.train.latest_checkpoint(train_dir).endswith('ckpt-100')

    out, _ = watcher.communicate(timeout=600)
    assert watcher.returncode == 0, out
    assert 'step 100, precision @ 1 = 0.' in out, out
    assert 'Traceback' not in out
  finally:
    for process in (trainer, watcher):
      if process.poll() is None:
        process.kill()
        process.wait()


def test_kills_at_random_moments_never_leave_an_unreadable_checkpoint(tmp_path, real_data_dir):
  """A checkpoint every step, so some kills land inside a save."""
  train_dir = str(tmp_path / 'run')
  train_cmd = [sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
               f'--train_dir={train_dir}', '--max_steps=1000', '--checkpoint_steps=1',
               '--log_frequency=1', '--keep_checkpoints=2']
  rng = random.Random(0)
  for _ in range(3):
    trainer = subprocess.Popen(train_cmd, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    before = tf.train.latest_checkpoint(train_dir)
    wait_for(lambda: tf.train.latest_checkpoint(train_dir) != before, trainer, 600,
              'a new checkpoint')
    time.sleep(rng.uniform(0.0, 1.0))
    trainer.kill()
    trainer.wait()
    path = tf.train.latest_checkpoint(train_dir)
    config = cifar10_run.read_config(train_dir)
    evaluator = cifar10_eval.Evaluator(config, cifar10_records.Split(
        images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(4, np.int32)))
    evaluator.restore(path)  # Raises if the checkpoint were unreadable.
    assert int(evaluator.step.numpy()) == int(path.rsplit('-', 1)[1])


def kill_after_a_new_checkpoint(command, train_dir, rng, timeout=600):
  """Starts `command`, waits for a checkpoint newer than the one before, kills it at a random
  moment of the next second (often inside a save: the run checkpoints every step)."""
  before = cifar10_run.newest_checkpoint(train_dir)
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  try:
    wait_for(lambda: cifar10_run.newest_checkpoint(train_dir) not in (None, before), process,
             timeout, 'a new checkpoint')
    time.sleep(rng.uniform(0.0, 1.0))
  finally:
    process.kill()
    process.wait()


def test_a_pruning_run_killed_at_random_moments_finishes_whole(tmp_path, real_data_dir):
  source, pruned = str(tmp_path / 'source'), str(tmp_path / 'pruned')
  subprocess.run([sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
                  f'--train_dir={source}', '--max_steps=10', '--checkpoint_steps=1',
                  '--keep_checkpoints=2'], cwd=ROOT, check=True, capture_output=True,
                 timeout=600)
  prune_cmd = [sys.executable, 'compress/prune.py', f'--source_dir={source}',
               f'--train_dir={pruned}', '--finetune_steps=90', '--target_sparsity=0.75',
               f'--data_dir={real_data_dir}']
  rng = random.Random(1)
  for _ in range(3):
    kill_after_a_new_checkpoint(prune_cmd, pruned, rng)
    newest = cifar10_run.newest_checkpoint(pruned)
    # Whatever the moment of the kill, the newest checkpoint restores, masks included.
    assert cifar10_run.checkpoint_step(newest) > 10
  finished = subprocess.run(prune_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert finished.returncode == 0, finished.stdout + finished.stderr
  assert 'resumed from' in finished.stdout
  with open(os.path.join(pruned, 'prune_report.json')) as f:
    report = json.load(f)
  assert report['step'] == 100 and report['sparsity'] == pytest.approx(0.75, abs=1e-4)


def test_a_quantization_killed_midway_leaves_no_half_model_and_reruns(tmp_path, real_data_dir):
  run = str(tmp_path / 'run')
  subprocess.run([sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
                  f'--train_dir={run}', '--max_steps=5'], cwd=ROOT, check=True,
                 capture_output=True, timeout=600)
  out_dir = tmp_path / 'int8'
  command = [sys.executable, 'compress/quantize.py', f'--checkpoint_dir={run}',
             f'--out_dir={out_dir}', f'--data_dir={real_data_dir}', '--calibration_images=50',
             '--compare_images=20']
  process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
  try:
    wait_for(lambda: out_dir.exists(), process, 300, 'the output folder')
    time.sleep(random.Random(2).uniform(0.0, 8.0))
  finally:
    process.kill()
    process.wait()
  model = out_dir / 'model_int8.npz'
  if model.exists():  # Written whole, or not at all.
    int8.Int8Model.load(model)
  finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert finished.returncode == 0, finished.stdout + finished.stderr
  assert 'same predictions: True' in finished.stdout
  int8.Int8Model.load(model)
