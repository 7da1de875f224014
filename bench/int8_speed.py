"""Speed of the NumPy int8 runner (compress/int8.py), per batch size and per op.

    python bench/int8_speed.py --model_file=runs/speed_aug/int8/model_int8.npz \
        --data_dir=../shared/data

Times Int8Model.run over --images test images (already quantized: preprocessing is timed
separately), --rounds times per batch size, alternating the sizes; prints the median images/s
of each and the median time per op at the largest batch size. A benchmark, not a test.
"""

import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from compress import int8

_MODEL_FILE = flags.DEFINE_string('model_file', None, 'An .npz from compress/quantize.py.',
                                  required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Folder or archive of CIFAR-10.')
_IMAGES = flags.DEFINE_integer('images', 2000, 'Test images per timing.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timings per batch size.', lower_bound=1)
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '50', '100', '250', '500'],
                                 'Batch sizes to compare.')


def images_per_sec(model, x_q, batch_size):
  start = time.perf_counter()
  for i in range(0, len(x_q), batch_size):
    model.run(x_q[i:i + batch_size])
  return len(x_q) / (time.perf_counter() - start)


def op_seconds(model, x_q):
  """Seconds per op (unfused, as keep_all runs them) for one batch."""
  values, seconds = {model.meta['input']: x_q}, []
  for op in model.ops:
    start = time.perf_counter()
    values[op['output']] = model.apply(op, [values[i] for i in op['inputs']])
    seconds.append(time.perf_counter() - start)
  return seconds


def main(argv):
  del argv
  model = int8.Int8Model.load(_MODEL_FILE.value)
  images, _ = int8.read_test_batch(_DATA_DIR.value, model.meta['data'])
  images = images[:_IMAGES.value]
  start = time.perf_counter()
  prepared = int8.eval_preprocess(images, model.meta['data']['crop'])
  x_q = model.quantize_input(prepared)
  prepare_rate = len(images) / (time.perf_counter() - start)
  sizes = [int(s) for s in _BATCH_SIZES.value]
  rates = {size: [] for size in sizes}
  for _ in range(_ROUNDS.value):
    for size in sizes:
      count = min(len(x_q), 200) if size == 1 else len(x_q)  # Batch 1 is slow: fewer images.
      rates[size].append(images_per_sec(model, x_q[:count], size))
  print(f'{model.meta.get("model")} int8, {len(images)} images, median of {_ROUNDS.value}')
  print(f'preprocessing + input quantization: {prepare_rate:,.0f} images/s')
  for size in sizes:
    print(f'batch {size:>4}: {np.median(rates[size]):>8,.0f} images/s')
  batch = x_q[:max(sizes)]
  per_op = np.median([op_seconds(model, batch) for _ in range(_ROUNDS.value)], axis=0)
  print(f'per op, batch {len(batch)} (ms per image, unfused):')
  for op, seconds in zip(model.ops, per_op):
    print(f'  {op["name"]:<20} {op["type"]:<9} {1e3 * seconds / len(batch):7.3f}')


if __name__ == '__main__':
  app.run(main)
