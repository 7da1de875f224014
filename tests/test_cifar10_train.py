"""Tests of the training program (cifar10_train.py): its flags and main in this process
(cifar10_flags.parse and run), and a run as a real process. Its bad inputs are walked in
tests/test_error_paths.py."""

import os
import subprocess
import sys

import pytest

import cifar10_flags
import cifar10_train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_NETWORK = 'http://127.0.0.1:9/cifar-10-binary.tar.gz'  # nothing listens: refused at once


def train(*argv):
  """What cifar10_train.py argv passes to sys.exit, run in this process."""
  return cifar10_train.run(*cifar10_flags.parse(cifar10_train.define_flags, argv))


def test_a_value_that_cannot_train_is_refused_before_anything_else(tmp_path):
  message = train('--learning_rate=nan', f'--train_dir={tmp_path}', f'--data_dir={tmp_path}')
  assert message == 'error: --learning_rate=nan must be a finite number >= 0'
  assert not os.listdir(tmp_path)  # Refused before any data was sought or file written.


def test_a_warm_up_longer_than_the_run_is_noted_at_the_start(tmp_path, capsys):
  message = train('--recipe=fast', '--max_steps=30', f'--train_dir={tmp_path / "run"}',
                  f'--data_dir={tmp_path}', f'--data_url={NO_NETWORK}')
  assert message.startswith('error: ')  # No data: the note came first, before it was sought.
  lines = capsys.readouterr().out.splitlines()
  assert ': recipe fast: ' in lines[0] and 'warmup_steps=500' in lines[0], lines[0]
  assert lines[1].endswith(": note: the warm-up of 500 steps is longer than the run's 30 "
                           '(--max_steps): the learning rate never reaches its peak 0.03 '
                           '(0.0018 at the last step); pass --warmup_steps under 30 to reach '
                           'it'), lines[1]


def test_a_short_run_trains_to_max_steps_and_prints_its_recipe(tmp_path, capsys,
                                                              real_data_dir):
  assert train(f'--data_dir={real_data_dir}', f'--train_dir={tmp_path / "run"}',
               '--max_steps=3', '--batch_size=8', '--recipe=fast32', '--model=budget0',
               '--log_frequency=1') is None
  out = capsys.readouterr().out
  assert 'recipe fast32: optimizer=nesterov' in out and 'step 3/3, loss = ' in out
  assert os.path.exists(tmp_path / 'run' / 'ckpt-3.index')


def run_binary(*args, **kwargs):
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                        **kwargs)


@pytest.mark.subprocess
def test_binary_exits_nonzero_on_divergence(tmp_path, real_data_dir):
  result = run_binary('cifar10_train.py', f'--data_dir={real_data_dir}',
                      f'--train_dir={tmp_path}', '--max_steps=30', '--learning_rate=1e12',
                      '--log_frequency=5', timeout=300)
  assert result.returncode == 1, result.stderr
  assert 'diverged' in result.stderr and 'Traceback' not in result.stderr
