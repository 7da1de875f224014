"""Peak memory and first-result time of cifar10_classify.py against the number of files.

    .venv/bin/python bench/classify_memory.py [--source=pretrained/budget1_int8.npz] \
        [--images=50,5000] [--jpeg_side=256]

Writes as many random 32x32 PNG files as the largest of --images (with --jpeg_side, as many
random side x side JPEGs too) into a temporary folder, then runs
`cifar10_classify.py --source=S FILE...` on the first N of each kind, for each N of --images,
one child process at a time, reading its output line by line. Per child: the files, its own
peak resident memory (os.wait4's rusage of that child, not the running maximum over all
children), the seconds from its start to its first result line and to its end; then per kind
the peak at the most files over the peak at the fewest. classify reads and classifies
cifar10_classify.CHUNK files at a time, so the peak should stay flat and the first line come
after one chunk, whatever N is. A benchmark, not a test.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSIFY = os.path.join(ROOT, 'cifar10_classify.py')

_SOURCE = flags.DEFINE_string('source', 'pretrained/budget1_int8.npz', "cifar10_classify.py's "
                              '--source: a run, an export, a .tflite or an int8 .npz.')
_IMAGES = flags.DEFINE_list('images', ['50', '5000'], 'Numbers of files classified, one child '
                            'process each.')
_JPEG_SIDE = flags.DEFINE_integer('jpeg_side', 0, 'Also classify random JPEGs of this side '
                                  '(pixels; 0: the 32x32 PNGs only).', lower_bound=0,
                                  upper_bound=4096)



def _positive_integers(values):
  return bool(values) and all(value.isdigit() and int(value) > 0 for value in values)


# Checked at parse time, not after thousands of files are written.
flags.register_validator(_IMAGES, _positive_integers,
                         'must be a comma-separated list of positive integers')


def write_images(folder, count, side):
  """Names (in folder) of `count` random images: 32x32 PNGs of noise (side 32), or side x
  side JPEGs of smooth random colour (a photo's size, not its content)."""
  rng = np.random.default_rng(0)
  names = []
  for index in range(count):
    if side == 32:
      names.append(f'png{index:05d}.png')
      Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
          os.path.join(folder, names[-1]))
    else:
      names.append(f'jpg{index:05d}.jpg')
      Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).resize(
          (side, side), Image.Resampling.BICUBIC).save(os.path.join(folder, names[-1]),
                                                       quality=90)
  return names


def measure(command, folder):
  """(peak resident MiB, seconds to the first line on stdout, seconds to the end, lines on
  stdout) of `command` run in `folder`.

  Raises:
    RuntimeError: the command did not start or exited nonzero (its last stderr line).
  """
  with tempfile.TemporaryFile('w+') as errors:
    start = time.perf_counter()
    try:
      child = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=errors,
                               text=True)
    except OSError as e:  # E2BIG: the file names overflow the argument list
      raise RuntimeError(f'{os.path.basename(command[1])} did not start ({e})') from e
    first, lines = None, 0
    with child.stdout:
      for _ in child.stdout:
        first = time.perf_counter() - start if first is None else first
        lines += 1
    _, status, usage = os.wait4(child.pid, 0)  # This child's own rusage.
    total = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # Popen must not wait again.
    if child.returncode:
      errors.seek(0)
      last = ([line for line in errors.read().splitlines() if line.strip()] or ['nothing'])[-1]
      raise RuntimeError(f'{os.path.basename(command[1])} exited {child.returncode}: {last}')
  return usage.ru_maxrss / 1024, first, total, lines  # ru_maxrss: KiB on Linux


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  source = os.path.abspath(_SOURCE.value)
  if not os.path.exists(source):
    sys.exit(f'error: --source={_SOURCE.value}: no such file or folder')
  counts = sorted({int(value) for value in _IMAGES.value})
  sides = [32] + ([_JPEG_SIDE.value] if _JPEG_SIDE.value else [])
  print(f'{sys.executable} cifar10_classify.py --source={source} FILE... (cwd: the files)')
  print(f'{"files":>6} {"kind":<14} {"peak MiB":>9} {"first result s":>15} {"total s":>8}')
  with tempfile.TemporaryDirectory(prefix='classify_memory_') as folder:
    for side in sides:
      kind = f'{side}x{side} ' + ('png' if side == 32 else 'jpeg')
      names = write_images(folder, counts[-1], side)
      peaks = []
      for count in counts:
        try:
          peak, first, total, lines = measure(
              [sys.executable, CLASSIFY, f'--source={source}', *names[:count]], folder)
        except RuntimeError as e:
          sys.exit(f'error: {kind}, {count} files: {e}')
        if lines != count:
          sys.exit(f'error: {kind}, {count} files: {lines} result lines')
        peaks.append(peak)
        print(f'{count:>6} {kind:<14} {peak:>9.1f} {first:>15.2f} {total:>8.2f}', flush=True)
      if len(counts) > 1:
        print(f'{"":>6} {kind:<14} peak at {counts[-1]} files / at {counts[0]}: '
              f'{peaks[-1] / peaks[0]:.2f}x', flush=True)


if __name__ == '__main__':
  app.run(main)
