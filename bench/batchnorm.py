"""BatchNorm's fused kernel against its tf.nn.moments reference, in the bare train step.

    .venv/bin/python bench/batchnorm.py [--model=budget0] [--rounds=5]

One process builds two trainers of the same model and recipe (fast32: Nesterov, L2, label
smoothing, 32x32), one with every BatchNorm on TensorFlow's FusedBatchNormV3 and one on the
tf.nn.moments formulas (cifar10_model.BatchNorm.fused), and times their train steps on one
fixed batch in alternating windows, so the machine's drifting speed hits both alike. Prints
the median images/s of each and the ratio fused / moments.
"""

import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import cifar10_model
import cifar10_trainer
import cifar10_config
import models
import timing  # bench/, the script's own folder.

_MODEL = flags.DEFINE_enum('model', 'budget0', models.names(), 'A model with BatchNorm.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed windows per candidate, in turn.',
                               lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 20, 'Train steps per window.', lower_bound=1)


def make_trainer(train_dir, fused):
  config = cifar10_config.TrainConfig(train_dir=train_dir, model=_MODEL.value, conv='direct',
                                      **cifar10_config.recipe_values('fast32'))
  trainer = cifar10_trainer.Trainer(config)
  norms = [layer for layer, _ in trainer.model.walk(trainer.model.input_shape)
           if isinstance(layer, cifar10_model.BatchNorm)]
  if not norms:
    raise app.UsageError(f'--model={_MODEL.value} has no BatchNorm')
  for norm in norms:
    norm.fused = fused
  return trainer


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  with tempfile.TemporaryDirectory() as root:
    trainers = {name: make_trainer(os.path.join(root, name), fused)
                for name, fused in (('fused', True), ('moments', False))}
    size = trainers['fused'].config.image_size
    batch = trainers['fused'].config.batch_size
    images = tf.random.stateless_normal([batch, size, size, 3], seed=[1, 2])
    labels = tf.random.stateless_uniform([batch], [3, 4], maxval=10, dtype=tf.int32)

    def window(trainer):
      for _ in range(_STEPS.value):
        metrics = trainer.train_step(images, labels)
      float(metrics['loss'])  # Waits for the window's work.

    seconds = {name: [] for name in trainers}
    for name, trainer in trainers.items():
      timing.window_seconds(lambda: window(trainer), warmup=2, windows=0)
    for _ in range(_ROUNDS.value):
      for name, trainer in trainers.items():
        seconds[name] += timing.window_seconds(lambda: window(trainer), warmup=0, windows=1)
  rates = {name: batch * _STEPS.value / statistics.median(s) for name, s in seconds.items()}
  print(f'{_MODEL.value}, batch {batch}, {_ROUNDS.value} windows of {_STEPS.value} steps each:')
  for name, rate in rates.items():
    print(f'  {name:<8} {rate:8.1f} images/s (median)')
  print(f'  ratio fused / moments: {rates["fused"] / rates["moments"]:.3f}')


if __name__ == '__main__':
  app.run(main)
