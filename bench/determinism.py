"""The speed cost of --deterministic: the training loop with and without it, in turn.

    .venv/bin/python bench/determinism.py --data_dir=data [--model=tutorial] [--rounds=3]

TensorFlow's op determinism is switched on for the rest of a process and cannot be switched
off, so the two candidates cannot share one process. This script is the one process that
times them side by side instead: it runs `cifar10_train.py` as a child, alternately without
and with --deterministic, --rounds times each (the machine's drifting speed hits both
alike), reads the images/s of each log window after the warm-up from the child's own log
lines, and prints the medians and their ratio. Each child also checks that its run's weights
equal those of the first run of the same candidate, bit for bit (reported, not asserted).
"""

import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_trainer
import models

_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'As cifar10_train.py --data_dir.')
_EXTRACT_DIR = flags.DEFINE_string('extract_dir', None, 'As cifar10_train.py --extract_dir.')
_MODEL = flags.DEFINE_enum('model', 'tutorial', models.names(), 'Model to time.')
_WINDOW = flags.DEFINE_integer('window', 20, 'Steps per timed window (log line).',
                               lower_bound=1)
_WINDOWS = flags.DEFINE_integer('windows', 10, 'Timed windows per child.', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 40, 'Untimed steps first (a multiple of --window).',
                               lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Children per candidate, in turn.', lower_bound=1)

CANDIDATES = {'default': '--nodeterministic', 'deterministic': '--deterministic'}


def run_child(flag, train_dir):
  """Trains one child; returns (images/s of the windows after the warm-up, final weights)."""
  steps = _WARMUP.value + _WINDOW.value * _WINDOWS.value
  command = [sys.executable, os.path.join(ROOT, 'cifar10_train.py'), flag,
             f'--model={_MODEL.value}', f'--data_dir={_DATA_DIR.value}',
             f'--train_dir={train_dir}', f'--max_steps={steps}',
             f'--log_frequency={_WINDOW.value}', f'--checkpoint_steps={steps}',
             f'--histogram_steps={steps}']
  if _EXTRACT_DIR.value:
    command.append(f'--extract_dir={_EXTRACT_DIR.value}')
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'error: {" ".join(command)} failed:\n{result.stderr[-2000:]}')
  rates = [float(line.group(4)) for line in cifar10_trainer.STEP_LINE.finditer(result.stdout)
           if int(line.group(1)) > _WARMUP.value]
  return rates, _weights(train_dir)


def _weights(train_dir):
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(train_dir))
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if 'train_seconds' not in name}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  rates = {name: [] for name in CANDIDATES}
  first, identical = {}, {name: True for name in CANDIDATES}
  for _ in range(_ROUNDS.value):
    for name, flag in CANDIDATES.items():
      with tempfile.TemporaryDirectory() as train_dir:
        window_rates, weights = run_child(flag, train_dir)
      rates[name] += window_rates
      reference = first.setdefault(name, weights)
      identical[name] &= all(np.array_equal(reference[k], weights[k]) for k in reference)
      print(f'{name:<14} median {statistics.median(window_rates):8.1f} images/s', flush=True)
  print(f'\nmodel {_MODEL.value}: median of {_ROUNDS.value} children x {_WINDOWS.value} '
        f'windows of {_WINDOW.value} steps after {_WARMUP.value} untimed')
  for name in CANDIDATES:
    print(f'{name:<14} {statistics.median(rates[name]):8.1f} images/s; every child\'s '
          f'weights identical: {identical[name]}')
  ratio = statistics.median(rates['deterministic']) / statistics.median(rates['default'])
  print(f'ratio deterministic/default = {ratio:.3f}')


if __name__ == '__main__':
  app.run(main)
