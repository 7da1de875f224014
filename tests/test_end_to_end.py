"""Real-data tests of the binaries: learning well above chance, and a run killed and resumed
with the watcher beside it (the fault-injection suite is tests/test_faults.py)."""

import os
import subprocess
import sys

import pytest

import tensorflow as tf

import cifar10_eval
import cifar10_records
import cifar10_scoring
import cifar10_trainer
import cifar10_config
from fixtures import wait_for

pytestmark = pytest.mark.subprocess  # Every test here starts the binaries.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_STEPS = 300  # steps; enough for the tutorial model to pass 40 % on the test set


def test_tutorial_model_learns_on_real_data(tmp_path, real_batches_dir):
  config = cifar10_config.TrainConfig(train_dir=str(tmp_path), max_steps=REAL_STEPS,
                                      log_frequency=100)
  cifar10_trainer.train(config, cifar10_records.load_split(real_batches_dir, 'train'))
  evaluator = cifar10_scoring.Evaluator(config,
                                        cifar10_records.load_split(real_batches_dir, 'test'))
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
    logged = cifar10_trainer.logged_steps(rerun.stdout)
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
