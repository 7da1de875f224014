"""Speed of the NumPy int8 runner (compress/int8.py), per batch size and per op.

    python bench/int8_speed.py --model_file=runs/speed_aug/int8/model_int8.npz \
        --data_dir=data

Times Int8Model.predict over --images test images (already standardized: preprocessing is
timed separately), --rounds times per (batch size, threads), alternating them; prints the
median images/s of each and the median time per op at one thread. BLAS runs one thread per
worker thread, as in the runner. A benchmark, not a test.
"""

import os
import sys
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # As compress/int8.py's runner.

import numpy as np  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

import cifar10_records
from compress import int8

_MODEL_FILE = flags.DEFINE_string('model_file', None, 'An .npz from compress/quantize.py.',
                                  required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Folder or archive of CIFAR-10.')
_IMAGES = flags.DEFINE_integer('images', 2000, 'Test images per timing.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timings per batch size.', lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '10', '25', '50', '100'],
                                 'Batch sizes to compare.')
_THREADS = flags.DEFINE_list('threads', ['1', '2'], 'Worker thread counts to compare.')


def _positive_integers(values):
  return all(value.isdigit() and int(value) > 0 for value in values)


# Checked at parse time, not after minutes of loading and timing.
POSITIVE_INTEGERS = 'must be a comma-separated list of positive integers'
flags.register_validator(_BATCH_SIZES, _positive_integers, POSITIVE_INTEGERS)
flags.register_validator(_THREADS, _positive_integers, POSITIVE_INTEGERS)


def images_per_sec(model, images, batch_size, threads):
  start = time.perf_counter()
  model.predict(images, batch_size, threads)
  return len(images) / (time.perf_counter() - start)


def op_seconds(model, x_q):
  """Seconds per op (unfused, as keep_all runs them) for one batch."""
  values, seconds = {model.meta['input']: x_q}, []
  for op in model.ops:
    start = time.perf_counter()
    values[op['output']] = model.apply(op, [values[i] for i in op['inputs']])
    seconds.append(time.perf_counter() - start)
  return seconds


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  try:  # The runner's own checks, and its one-line errors (compress/int8.py).
    model = int8.Int8Model.load(_MODEL_FILE.value)
    images = cifar10_records.read_split(_DATA_DIR.value, 'test').images[:_IMAGES.value]
  except (OSError, ValueError, cifar10_records.DataError) as e:
    sys.exit(f'error: {e}')
  start = time.perf_counter()
  prepared = int8.eval_preprocess(images, model.meta['image_size'])
  x_q = model.quantize_input(prepared)
  prepare_rate = len(images) / (time.perf_counter() - start)
  cases = [(int(size), int(threads)) for size in _BATCH_SIZES.value
           for threads in _THREADS.value]
  rates = {case: [] for case in cases}
  for _ in range(_ROUNDS.value):
    for size, threads in cases:
      count = min(len(prepared), 200) if size == 1 else len(prepared)  # Batch 1: fewer images.
      rates[size, threads].append(images_per_sec(model, prepared[:count], size, threads))
  print(f'{model.meta.get("model")} int8, {len(images)} images, median of {_ROUNDS.value}')
  print(f'preprocessing + input quantization: {prepare_rate:,.0f} images/s')
  for size, threads in cases:
    print(f'batch {size:>4}, {threads} threads: {np.median(rates[size, threads]):>8,.0f} '
          'images/s (input quantization included)')
  batch = x_q[:int(_BATCH_SIZES.value[-1])]
  per_op = np.median([op_seconds(model, batch) for _ in range(_ROUNDS.value)], axis=0)
  print(f'per op, batch {len(batch)} (ms per image, unfused):')
  for op, seconds in zip(model.ops, per_op):
    print(f'  {op["name"]:<20} {op["type"]:<9} {1e3 * seconds / len(batch):7.3f}')


if __name__ == '__main__':
  app.run(main)
