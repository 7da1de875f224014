"""The binaries as users run them: only their own lines in a log; bad input gives one clear
`error:` line, exit code 1, no traceback (TensorFlow's start-up lines are filtered out, so
stderr holds exactly what the binary wrote)."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import cifar10_records
import cifar10_run
import cifar10_config
import cifar10_trainer
from compress import sparse
from fixtures import make_batches_dir, wait_for

pytestmark = pytest.mark.subprocess  # Every test here starts the binaries.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    'truncated': (dict(resize=('data_batch_3.bin', -1)),
                  ['data_batch_3.bin is truncated', '30,730,000', '30,729,999']),
    'oversized': (dict(resize=('test_batch.bin', 5)),
                  ['test_batch.bin is oversized', '30,730,000', '30,730,005']),
    'bad_label': (dict(bad_label=('data_batch_2.bin', 7)),
                  ['data_batch_2.bin: record 7 has label byte 10, expected 0-9']),
    'bad_test_label': (dict(bad_label=('test_batch.bin', 3)),
                       ['test_batch.bin: record 3 has label byte 10']),
}


def run(args):
  result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
  assert 'Traceback' not in result.stderr, result.stderr
  return result


@pytest.mark.parametrize('case', ['truncated', 'oversized', 'bad_label'])
def test_train_binary_reports_bad_data(case, tmp_path):
  kwargs, expected = CASES[case]
  make_batches_dir(str(tmp_path), **kwargs)
  result = run(['cifar10_train.py', f'--data_dir={tmp_path}', f'--train_dir={tmp_path / "run"}',
                '--max_steps=1'])
  assert result.returncode == 1
  assert result.stderr.startswith('error: '), result.stderr
  assert result.stderr.count('\n') == 1, result.stderr  # One line.
  for text in expected:
    assert text in result.stderr, result.stderr


@pytest.mark.parametrize('case', ['truncated', 'bad_test_label'])
def test_eval_binary_reports_bad_data(case, tmp_path):
  kwargs, expected = CASES[case]
  make_batches_dir(str(tmp_path), **kwargs)
  cifar10_run.write_config(cifar10_config.TrainConfig(train_dir=str(tmp_path / 'run')))
  result = run(['cifar10_eval.py', f'--data_dir={tmp_path}', f'--checkpoint_dir={tmp_path / "run"}',
                '--run_once'])
  assert result.returncode == 1
  for text in expected:
    assert text in result.stderr, result.stderr


def test_train_binary_reports_corrupt_archive(tmp_path):
  (tmp_path / cifar10_records.ARCHIVE_NAME).write_bytes(os.urandom(4096))
  result = run(['cifar10_train.py', f'--data_dir={tmp_path}', f'--extract_dir={tmp_path / "x"}',
                f'--train_dir={tmp_path / "run"}', '--max_steps=1'])
  assert result.returncode == 1
  assert f'{tmp_path / cifar10_records.ARCHIVE_NAME} is corrupt' in result.stderr, result.stderr


def test_eval_binary_reports_a_folder_without_a_run_before_fetching_data(tmp_path):
  data_dir = tmp_path / 'no_data_yet'  # Would be downloaded into if the data came first.
  result = run(['cifar10_eval.py', f'--data_dir={data_dir}', f'--checkpoint_dir={tmp_path}',
                '--run_once'])
  assert result.returncode == 1
  assert f'{tmp_path} has no config.json' in result.stderr, result.stderr
  assert not data_dir.exists()


def test_eval_binary_fails_when_no_checkpoint_comes_before_the_timeout(tmp_path):
  make_batches_dir(str(tmp_path))
  cifar10_run.write_config(cifar10_config.TrainConfig(train_dir=str(tmp_path / 'run')))
  result = run(['cifar10_eval.py', f'--data_dir={tmp_path}', f'--checkpoint_dir={tmp_path / "run"}',
                '--timeout=0', '--eval_interval_secs=0.1'])
  assert result.returncode == 1
  assert result.stderr.startswith('error: no checkpoint appeared in '), result.stderr


def test_a_second_trainer_is_refused_then_sigterm_saves_and_exits_143(tmp_path):
  make_batches_dir(str(tmp_path))
  train_dir, log = tmp_path / 'run', tmp_path / 'train.log'
  with open(log, 'w') as out:
    trainer = subprocess.Popen(
        [sys.executable, 'cifar10_train.py', f'--data_dir={tmp_path}', f'--train_dir={train_dir}',
         '--max_steps=100000', '--log_frequency=2', '--checkpoint_steps=100000'],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
  try:
    wait_for(lambda: cifar10_trainer.logged_steps(log.read_text()), trainer, 300,
             'the first log line')
    second = run(['cifar10_train.py', f'--data_dir={tmp_path}', f'--train_dir={train_dir}',
                  '--max_steps=100000'])
    assert second.returncode == 1
    assert second.stderr == (f'error: {train_dir} is in use by another process (PID '
                             f'{trainer.pid}): wait for it to finish, or stop it, before '
                             'training here.\n')
    logged = cifar10_trainer.logged_steps(log.read_text())[0]
    trainer.send_signal(signal.SIGTERM)
    trainer.wait(timeout=120)
  finally:
    trainer.kill()
  output = log.read_text()
  assert trainer.returncode == 128 + signal.SIGTERM, output  # 143, the convention.
  assert 'Traceback' not in output, output
  saved = int(tf.train.latest_checkpoint(str(train_dir)).rsplit('-', 1)[1])
  assert logged <= saved < 100000  # The steps done before the signal are kept.


OWN_LOG_LINE = re.compile(
    r'^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: (recipe \w+: |step \d+/\d+, |saved |done: )')


def test_a_training_log_shows_only_our_lines(tmp_path):
  make_batches_dir(str(tmp_path))
  result = run(['cifar10_train.py', f'--data_dir={tmp_path}', f'--train_dir={tmp_path / "run"}',
                '--max_steps=4', '--batch_size=16', '--log_frequency=2', '--checkpoint_steps=2',
                '--noaugment'])
  assert result.returncode == 0, result.stderr
  assert result.stderr == ''
  lines = result.stdout.splitlines()
  # The recipe, step 2, saved ckpt-2, step 4, saved ckpt-4, done: nothing else.
  assert len(lines) == 6 and all(OWN_LOG_LINE.match(line) for line in lines), lines
  assert lines[0].endswith('recipe study: the defaults of every flag'), lines[0]


# The TensorFlow-free binaries on bad input: each case one `error:` line (no traceback).
NO_TF_CASES = {
    'runner: no model file': (['compress/int8.py', '--model_file={tmp}/none.npz'],
                              'none.npz'),
    'runner: garbage model file': (['compress/int8.py', '--model_file={tmp}/garbage.npz'],
                                   'garbage.npz is truncated, corrupt or not written'),
    'runner: a float model file': (['compress/int8.py', '--model_file={tmp}/float.npz'],
                                   'is not an int8 model'),
    'runner: no folder for the predictions': (
        ['compress/int8.py', '--model_file={tmp}/float.npz',
         '--predictions_out={tmp}/no/such/folder/p.npy'], 'its folder does not exist'),
    'records: a corrupt archive': (['cifar10_records.py', '{tmp}'], 'is corrupt or unreadable'),
}


@pytest.mark.parametrize('case', sorted(NO_TF_CASES))
def test_the_tensorflow_free_binaries_fail_in_one_line(case, tmp_path):
  (tmp_path / 'garbage.npz').write_bytes(b'PK\x03\x04 not really a zip')
  (tmp_path / cifar10_records.ARCHIVE_NAME).write_bytes(b'not a tar.gz')
  sparse.save(tmp_path / 'float.npz', {'conv1/kernel': np.ones(3, np.float32)}, {'weights': 'ema'})
  args, expected = NO_TF_CASES[case]
  result = subprocess.run([sys.executable, *(arg.format(tmp=tmp_path) for arg in args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, (result.stdout, result.stderr)
  assert result.stderr.startswith('error: ') and result.stderr.count('\n') == 1, result.stderr
  assert expected in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize('program,delay', [('train', 0.3), ('train', 1.5), ('classify', 0.25),
                                           ('classify', 0.6), ('results', 0.3),
                                           ('results', 1.5)])
def test_ctrl_c_in_the_first_seconds_exits_130_without_a_traceback(tmp_path, program, delay):
  """A real SIGINT while the program imports, parses its flags or starts its work. (Only the
  interpreter's own start, the first ~0.1 s, is before any handler can be set.)"""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = tmp_path / 'a.png'
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
  argv = {'train': ['cifar10_train.py', f'--data_dir={tmp_path}/data',
                    f'--train_dir={tmp_path}/run', '--max_steps=3'],
          'classify': ['cifar10_classify.py', '--source=pretrained/budget1_int8.npz'] +
                      [str(image)] * 2000,
          'results': ['cifar10_results.py', f'--runs={tmp_path}/run']}[program]
  process = subprocess.Popen([sys.executable] + argv, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
  time.sleep(delay)
  assert process.poll() is None, 'it ended before the signal'
  process.send_signal(signal.SIGINT)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 130 and 'Traceback' not in err, (process.returncode, err)
