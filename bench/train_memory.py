"""Memory of one train step per image, measured, against cifar10_model's estimate.

    .venv/bin/python bench/train_memory.py [--models=tutorial,nin2] [--batches=256,1024]

For each model and batch size, a child process builds the trainer, runs two train steps on
random images and reports the growth of its peak resident memory across them. The slope
between the two batch sizes is the memory per image; the script prints it beside the
model's activation count and the estimate that cifar10_trainer.check_batch_fits uses
(cifar10_model.training_bytes_per_image), which must stay above the measured slope.
"""

import os
import resource
import subprocess
import sys

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

_MODELS = flags.DEFINE_list('models', ['tutorial', 'alex4', 'nin2', 'squeeze1', 'inception1'],
                            'Models to measure.')
_BATCHES = flags.DEFINE_list('batches', ['256', '1024'], 'Two batch sizes.')
_CHILD = flags.DEFINE_string('child', None, 'Internal: MODEL,BATCH measured in this process.')


def _two_batch_sizes(values):
  return (len(values) == 2 and all(value.isdigit() and int(value) > 0 for value in values)
          and int(values[0]) != int(values[1]))


# Checked at parse time, not after the first children have measured.
flags.register_validator(_MODELS, lambda names: set(names) <= set(models.names()),
                         f'must be models of {", ".join(models.names())}')
flags.register_validator(_BATCHES, _two_batch_sizes, 'must be two different positive integers')


def measure_here(model, batch):
  """Peak resident MiB added by two train steps at `batch` in this process."""
  config = cifar10_config.TrainConfig(model=model, batch_size=batch, train_dir='unused')
  trainer = cifar10_trainer.Trainer(config)
  size = config.image_size
  images = tf.random.stateless_normal([batch, size, size, 3], seed=[1, 2])
  labels = tf.zeros([batch], tf.int32)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  for _ in range(2):
    float(trainer.train_step(images, labels)['loss'])
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def measure_in_child(model, batch):
  result = subprocess.run([sys.executable, __file__, f'--child={model},{batch}'],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f'error: measuring {model} at batch {batch} failed:\n{result.stderr[-2000:]}')
  return float(result.stdout.strip().splitlines()[-1])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  if _CHILD.value:
    model, batch = _CHILD.value.split(',')
    print(measure_here(model, int(batch)))
    return
  small, large = sorted(int(b) for b in _BATCHES.value)
  print(f'{"model":<12} {"activations":>12} {"measured MiB/image":>19} {"estimate":>9} '
        f'{"bytes/activation":>17}')
  for name in _MODELS.value:
    model = models.build(models.canonical_name(name), cifar10_config.TrainConfig.image_size)
    activations = cifar10_model.training_bytes_per_image(model) // (
        cifar10_model.TRAINING_BYTES_PER_ACTIVATION)
    slope = (measure_in_child(name, large) - measure_in_child(name, small)) / (large - small)
    estimate = cifar10_model.training_bytes_per_image(model) / 2**20
    print(f'{name:<12} {activations:>12,} {slope:>19.3f} {estimate:>9.3f} '
          f'{slope * 2**20 / activations:>17.2f}', flush=True)


if __name__ == '__main__':
  app.run(main)
