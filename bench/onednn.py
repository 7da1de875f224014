"""TensorFlow's oneDNN kernels off and on, for the bare train step (a benchmark, not a test).

    .venv/bin/python bench/onednn.py [--model=tutorial] [--rounds=3]

TF_ENABLE_ONEDNN_OPTS is read once, when TensorFlow is imported, so each setting runs in its
own child process; the two alternate for --rounds rounds so that the machine's drifting
speed hits both alike. Each child prints the median images/s of its timed windows; the parent
prints the median per setting and the ratio on/off.
"""

import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_MODEL = flags.DEFINE_string('model', 'tutorial', 'Model to time.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Alternating rounds of both settings.',
                               lower_bound=1)
_CONV = flags.DEFINE_enum('conv', 'auto', ['auto', 'direct', 'spectral'],
                          'How convolutions are computed (cifar10_spectral).')
_CHILD = flags.DEFINE_bool('child', False, 'Internal: time the step in this process.')


def child():
  """Times the bare train step with whatever oneDNN setting this process was started with."""
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import cifar10_config  # pylint: disable=g-import-not-at-top
  import cifar10_spectral  # pylint: disable=g-import-not-at-top
  import cifar10_trainer  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as train_dir:
    config = cifar10_config.TrainConfig(model=_MODEL.value, train_dir=train_dir,
                                        conv=cifar10_spectral.resolve(_CONV.value))
    trainer = cifar10_trainer.Trainer(config)
    size = config.image_size
    images = tf.random.stateless_normal([config.batch_size, size, size, 3], seed=[1, 2])
    labels = tf.random.stateless_uniform([config.batch_size], [3, 4], 0, 10, tf.int32)
    rates = []
    for window in range(8):
      start = time.perf_counter()
      for _ in range(10):
        metrics = trainer.train_step(images, labels)
      float(metrics['loss'])
      if window:  # The first window traces and warms up.
        rates.append(10 * config.batch_size / (time.perf_counter() - start))
  print(statistics.median(rates))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  if _CHILD.value:
    child()
    return
  rates = {'0': [], '1': []}
  for _ in range(_ROUNDS.value):
    for setting, found in rates.items():
      env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_CPP_MIN_LOG_LEVEL='2')
      result = subprocess.run([sys.executable, __file__, '--child', f'--model={_MODEL.value}',
                               f'--conv={_CONV.value}'],
                              env=env, check=False, capture_output=True, text=True)
      if result.returncode:  # E.g. an unknown --model: the child's last line says why.
        reason = (result.stderr.strip().splitlines() or [f'exit code {result.returncode}'])[-1]
        sys.exit(f'error: the timing process with TF_ENABLE_ONEDNN_OPTS={setting} failed: '
                 f'{reason}')
      found.append(float(result.stdout.split()[-1]))
      print(f'TF_ENABLE_ONEDNN_OPTS={setting}: {found[-1]:.1f} images/s', flush=True)
  off, on = (statistics.median(rates[s]) for s in ('0', '1'))
  print(f'\nmodel {_MODEL.value}, bare train step, median of {_ROUNDS.value} processes each')
  print(f'oneDNN off {off:.1f} images/s, on {on:.1f} images/s, ratio on/off {on / off:.2f}')


if __name__ == '__main__':
  app.run(main)
