"""Prints a model's per-layer parameter and FLOP counts (the study's rules, docs/design.md).

    python models/count.py --model=tutorial [--image_size=24|32]
    python models/count.py --model=all          # one row per model
"""

import os
import sys

if __package__ in (None, ''):  # Run as `python models/count.py`: the project root, not this
  # folder, first on the path (its modules must not shadow others, e.g. the stdlib's trace).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

import cifar10_model
import models


def define_flags():
  return dict(
      model=flags.DEFINE_string('model', 'tutorial',
                                "Model name (see models/__init__.py), or 'all' for a summary."),
      image_size=flags.DEFINE_enum('image_size', '24', ['24', '32'], 'Input side in pixels.'),
  )


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])} (use --model=NAME)')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  name, size = _FLAGS['model'].value, int(_FLAGS['image_size'].value)
  if name == 'all':
    print(f'every model at {size}x{size}x3')
    print(cifar10_model.format_summary_rows(
        (model, models.build(model, size)) for model in models.MODELS))
    return
  try:
    model = models.build(name, image_size=size)
  except ValueError as e:
    raise app.UsageError(str(e))
  print(f'{name} at {size}x{size}x3')
  print(cifar10_model.format_count_table(cifar10_model.count_model(model)))


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
