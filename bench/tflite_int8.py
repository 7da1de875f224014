"""Our int8 against TFLite's, on one run: precision @ 1, bytes on disk, batch-1 images/s.

    python cifar10_export.py --checkpoint_dir=R --export_dir=R_export --tflite_int8
    python compress/quantize.py --checkpoint_dir=R --out_dir=R_int8
    python bench/tflite_int8.py --export_dir=R_export --int8_file=R_int8/model_int8.npz \
        --data_dir=data

Both int8 models come from the same weights (EMA, BatchNorm folded) calibrated on the same
training images (compress/quantize.py's choice, which cifar10_export.py repeats). Scores the
10,000 test images with the float TFLite file, our NumPy runner and the TFLite interpreter on
model_int8.tflite, then times batch-1 inference of the three in turns (--rounds rounds of
--images images each, one thread each: the runner's BLAS and the interpreter alike), and prints
a markdown table of medians with the ratios to our runner. A benchmark, not a test.
"""

import os
import statistics
import sys
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # As compress/int8.py's runner.

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cifar10_env  # pylint: disable=g-import-not-at-top

cifar10_env.start()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

import cifar10_deploy
import cifar10_export
import cifar10_records
from compress import int8

_EXPORT_DIR = flags.DEFINE_string('export_dir', None, 'A cifar10_export.py folder written with '
                                  '--tflite_int8.', required=True)
_INT8_FILE = flags.DEFINE_string('int8_file', None, 'The model_int8.npz of compress/quantize.py '
                                 'for the same run.', required=True)
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Folder or archive of CIFAR-10.')
_IMAGES = flags.DEFINE_integer('images', 300, 'Images per batch-1 timing.', lower_bound=1)
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timings per candidate, in turns.', lower_bound=1)


def images_per_sec(run_one, images):
  start = time.perf_counter()
  for index in range(len(images)):
    run_one(images[index:index + 1])
  return len(images) / (time.perf_counter() - start)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  paths = {name: os.path.join(_EXPORT_DIR.value, name)
           for name in (cifar10_export.FLOAT_TFLITE, cifar10_export.INT8_TFLITE)}
  contents = {}
  for name, path in paths.items():
    try:
      with open(path, 'rb') as f:
        contents[name] = f.read()
    except OSError as e:
      sys.exit(f'error: cannot read {path} ({e.strerror}): write the export with '
               '--tflite_int8')
  try:
    ours = int8.Int8Model.load(_INT8_FILE.value)
    test = cifar10_records.read_split(_DATA_DIR.value, 'test')
  except (OSError, ValueError, cifar10_records.DataError) as e:
    sys.exit(f'error: {e}')
  size = ours.meta['image_size']
  details = cifar10_deploy.interpreter(contents[cifar10_export.INT8_TFLITE]).get_input_details()
  if details[0]['dtype'] != np.uint8:
    sys.exit(f'error: {paths[cifar10_export.INT8_TFLITE]} takes {details[0]["dtype"].__name__} '
             'images: it was exported before int8 TFLite files took uint8 ones; export again')
  standardized = int8.eval_preprocess(test.images, size)
  float_logits = cifar10_export.tflite_outputs(contents[cifar10_export.FLOAT_TFLITE],
                                               test.images)['logits']
  tflite_logits = cifar10_export.tflite_outputs(contents[cifar10_export.INT8_TFLITE],
                                                test.images)['logits']
  predictions = {'float (TFLite)': np.argmax(float_logits, axis=1),
                 'int8, ours (NumPy)': ours.predict(standardized),
                 'int8, TFLite': np.argmax(tflite_logits, axis=1)}
  sizes = {'float (TFLite)': len(contents[cifar10_export.FLOAT_TFLITE]),
           'int8, ours (NumPy)': os.path.getsize(_INT8_FILE.value),
           'int8, TFLite': len(contents[cifar10_export.INT8_TFLITE])}
  float_one = cifar10_deploy.tflite_function(contents[cifar10_export.FLOAT_TFLITE], 1)
  tflite_one = cifar10_deploy.tflite_function(contents[cifar10_export.INT8_TFLITE], 1)
  runs = {'float (TFLite)': (float_one, test.images),
          'int8, ours (NumPy)': (lambda x: ours.run(ours.quantize_input(x)), standardized),
          'int8, TFLite': (tflite_one, test.images)}
  count = min(_IMAGES.value, len(test))
  rates = {name: [] for name in runs}
  for _ in range(_ROUNDS.value):
    for name, (run_one, images) in runs.items():
      rates[name].append(images_per_sec(run_one, images[:count]))
  ours_rate = statistics.median(rates['int8, ours (NumPy)'])
  print(f'{ours.meta.get("model")} step {ours.meta.get("step")}: {len(test):,} test images; '
        f'batch 1, one thread, median of {_ROUNDS.value} rounds of {count} images')
  print('| model | precision @ 1 | bytes on disk | batch-1 images/s | vs ours |')
  print('|---|---|---|---|---|')
  for name, predicted in predictions.items():
    rate = statistics.median(rates[name])
    print(f'| {name} | {np.mean(predicted == test.labels):.4f} | {sizes[name]:,} | '
          f'{rate:,.0f} | {rate / ours_rate:.2f}x |')
  same = np.mean(predictions['int8, ours (NumPy)'] == predictions['int8, TFLite'])
  print(f'ours and TFLite int8 predict the same class on {same:.2%} of the images')


if __name__ == '__main__':
  app.run(main)
