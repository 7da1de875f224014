"""Classifies image files with a trained model: a run, an export, a TFLite or an int8 file.

    python cifar10_classify.py --source=runs/tutorial cat.png ship.jpg
    python cifar10_classify.py --source=runs/tutorial_export --top_k=1 *.png
    python cifar10_classify.py --source=pretrained/budget1_int8.tflite photo.jpg
    python cifar10_classify.py --source=pretrained/tutorial_int8.npz --json photo.jpg

--source is one of
  - a run folder of cifar10_train.py or compress/prune.py: its newest checkpoint, EMA shadows
    (--noema: raw weights), computed as cifar10_eval.py computes;
  - a folder of cifar10_export.py (or its saved_model/, or one version inside that):
    TensorFlow's SavedModel;
  - a .tflite file of cifar10_export.py (float or int8: uint8 images in, `probabilities`
    out): TensorFlow's TFLite interpreter;
  - an int8 model file (.npz) of compress/quantize.py: the NumPy runner, compress/int8.py;
    TensorFlow is never imported then.
Each file (PNG, JPEG, or anything else Pillow reads) is turned upright by its EXIF
orientation, brought to 8 bits (16-bit and float images scaled, not clipped) and made RGB;
its largest central square is resized to 32x32 (area averages; bicubic
for a smaller image; a 32x32 one is kept as it is), and the model sees it as it sees a test
image. Per file, in the order given, one line with the --top_k classes and their
probabilities. A file that cannot be read gets an `error:` line on stderr, the others are
still classified, and the exit status is 1.

--json writes JSON Lines (https://jsonlines.org): one JSON object per line, one line per file
in the order given, a file that could not be read included, so a reader can pair each file
with its result without matching the stderr:

    {"file": "cat.png", "top": [{"class": "cat", "index": 3, "probability": 0.912}, ...]}
    {"file": "broken.png", "error": "not an image this script can read (...)"}

(its stderr `error:` line and the exit status 1 stay as without --json).
"""

import json
import os
import sys

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # Nothing to save: Ctrl-C at any moment, imports included, is 130.
  cifar10_env.exit_on_interrupt()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
from PIL import Image  # Decodes PNG, JPEG and more without TensorFlow (the int8 path).
from PIL import ImageOps

import cifar10_deploy
import cifar10_records

SIDE = cifar10_records.IMAGE_SIZE
CLASS_NAMES = cifar10_records.CLASS_NAMES
# Files read and classified at a time. Memory is one chunk's images and the model's
# activations on them (far more than the images: bench/classify_memory.py); a small chunk
# makes the peak of a few dozen files the peak of any number, and the first line come
# after one chunk.
CHUNK = 32


class SourceError(Exception):
  """--source is not a model this script can load."""


def read_image(path):
  """uint8 [32, 32, 3] of an image file (see the module's docstring).

  Raises:
    OSError, ValueError: the file is missing or not an image Pillow can decode; on a damaged
      file Pillow's decoders raise others too (SyntaxError, struct.error, EOFError, ...).
  """
  with Image.open(path) as image:
    image = ImageOps.exif_transpose(image)  # A phone photo the right way up.
    image = _eight_bit(image, path).convert('RGB')
    width, height = image.size
    if (width, height) != (SIDE, SIDE):
      side = min(width, height)
      left, top = (width - side) // 2, (height - side) // 2
      # Shrinking: each pixel the mean of the area it covers; enlarging: bicubic.
      kind = Image.Resampling.BOX if side >= SIDE else Image.Resampling.BICUBIC
      image = image.resize((SIDE, SIDE), kind, box=(left, top, left + side, top + side))
    return np.asarray(image, dtype=np.uint8)


def _eight_bit(image, path):
  """The image with 8-bit values: Pillow's convert('RGB') clips 16-bit, 32-bit and float
  pixels at 255 (a 16-bit ramp turns white, a 0..1 float image black), so those are scaled
  here: 16-bit (and 32-bit integers up to 65,535) by 255 / 65,535, floats in 0..1 by 255,
  floats in 0..255 as they are.

  Raises:
    ValueError: integer values over 65,535 or float values in neither range.
  """
  if image.mode not in ('I', 'F') and not image.mode.startswith('I;16'):
    return image
  values = np.asarray(image, dtype=np.float64)
  low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
  if image.mode == 'F':
    if not (np.all(np.isfinite(values)) and low >= 0 and high <= 255):
      raise ValueError(f'{path}: float pixels from {low:g} to {high:g}, neither in 0..1 nor '
                       'in 0..255')
    scaled = values * 255 if high <= 1 else values
  else:
    if low < 0 or high > 65535:
      raise ValueError(f'{path}: integer pixels from {low:g} to {high:g}, outside 0..65,535')
    scaled = values * (255 / 65535) if image.mode != 'I' or high > 255 else values
  return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode='L')


def softmax(logits):
  shifted = np.exp(logits - np.max(logits, axis=1, keepdims=True))
  return shifted / np.sum(shifted, axis=1, keepdims=True)


def int8_source(path):
  """The probabilities function of an int8 model file (NumPy only)."""
  from compress import int8  # pylint: disable=g-import-not-at-top
  from compress import sparse  # pylint: disable=g-import-not-at-top
  try:
    model = int8.Int8Model.load(path)
  except (OSError, ValueError, KeyError, sparse.FormatError) as e:
    raise SourceError(f'--source={path}: {e}') from e
  output = model.tensors[model.meta['output']]

  def probabilities(images):
    x_q = model.quantize_input(int8.eval_preprocess(images, model.meta['image_size']))
    return softmax(int8.dequantize(model.run(x_q), output['scale'], output['zero_point']))
  return probabilities


def saved_model_source(path):
  """The probabilities function of a SavedModel folder of cifar10_export.py."""
  cifar10_env.start()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    serve = tf.saved_model.load(path).signatures['serving_default']
    inputs = serve.structured_input_signature[1]
    if (set(inputs) != {'images'} or inputs['images'].dtype != tf.uint8
        or 'probabilities' not in serve.structured_outputs):
      raise ValueError('its serving_default does not take uint8 `images` and give '
                       '`probabilities`')
  except (OSError, ValueError, KeyError, tf.errors.OpError) as e:
    raise SourceError(f'--source={path} is not a SavedModel of cifar10_export.py '
                      f'({type(e).__name__}: {str(e).strip()[:300]})') from e
  return lambda images: serve(images=tf.constant(images))['probabilities'].numpy()


def tflite_source(path):
  """The probabilities function of a .tflite file of cifar10_export.py."""
  cifar10_env.start()
  try:
    with open(path, 'rb') as f:
      content = f.read()
    lite = cifar10_deploy.interpreter(content)
    (signature,) = lite.get_signature_list().values()
    (detail,) = lite.get_input_details()
    if (signature['inputs'] != [cifar10_deploy.INPUT] or detail['dtype'] != np.uint8
        or list(detail['shape'][1:]) != [SIDE, SIDE, 3]
        or 'probabilities' not in signature['outputs']):
      raise ValueError(f'it does not take uint8 `images` [N, {SIDE}, {SIDE}, 3] and give '
                       '`probabilities` (an int8 file exported before they did takes '
                       'standardized float images: export the run again)')
  except (OSError, ValueError) as e:
    raise SourceError(f'--source={path} is not a TFLite file of cifar10_export.py ({e})') from e
  run = cifar10_deploy.signature_function(lite)
  return lambda images: run(images)['probabilities']


def run_source(path, use_ema):
  """The probabilities function of a training run's newest checkpoint."""
  cifar10_env.start()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import cifar10_config  # pylint: disable=g-import-not-at-top
  import cifar10_input  # pylint: disable=g-import-not-at-top
  import cifar10_run  # pylint: disable=g-import-not-at-top
  try:  # Convolutions as cifar10_eval.py computes them.
    loaded = cifar10_run.load_inference_model(path, ema=use_ema, conv='auto', flag='--source')
  except (cifar10_config.ConfigError, cifar10_run.UnreadableCheckpoint) as e:
    raise SourceError(str(e)) from e
  return lambda images: tf.nn.softmax(loaded.model(
      cifar10_input.eval_batch(images, loaded.config.image_size), training=False)).numpy()


def open_source(path, use_ema=True):
  """A function from uint8 [N, 32, 32, 3] images to float [N, 10] probabilities.

  Raises:
    SourceError: path is none of the three kinds of model, does not load, or does not give
      one probability per CIFAR-10 class (checked on a blank image).
  """
  probabilities_of = _source(path, use_ema)
  try:
    shape = np.shape(probabilities_of(np.zeros((1, SIDE, SIDE, 3), np.uint8)))
  except (ValueError, RuntimeError) as e:
    raise SourceError(f'--source={path} does not run on a {SIDE}x{SIDE} image ({e})') from e
  if shape != (1, len(CLASS_NAMES)):
    raise SourceError(f'--source={path} gives probabilities of shape {shape} for one image, not '
                      f'(1, {len(CLASS_NAMES)}): it is no model of the CIFAR-10 classes')
  return probabilities_of


def _source(path, use_ema):
  if os.path.isfile(path) and path.endswith('.npz'):
    return int8_source(path)
  if os.path.isfile(path) and path.endswith('.tflite'):
    return tflite_source(path)
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, 'config.json')):
      return run_source(path, use_ema)
    folder = cifar10_deploy.saved_model_dir(path)
    if folder:
      return saved_model_source(folder)
  raise SourceError(f'--source={path} is neither a run folder (config.json), an export '
                    '(saved_model.pb, saved_model/ or saved_model/<version>/ inside), a '
                    '.tflite file nor an int8 .npz file.')


def top_classes(probabilities, k):
  """[(class name, index, probability)] of the k most probable classes, most probable first
  (ties: the lower index first, as argmax)."""
  order = np.argsort(-probabilities, kind='stable')[:k]
  return [(CLASS_NAMES[i], int(i), float(probabilities[i])) for i in order]


def classify(files, probabilities_of, k, chunk=CHUNK):
  """Yields (file, [top classes] or None, why it could not be read or None) in the order
  of files, `chunk` files at a time (memory stays that of one chunk, and lines come as they
  go). The reason does not name the file: the caller puts it where its output wants it."""
  for start in range(0, len(files), chunk):
    yield from _classify_chunk(files[start:start + chunk], probabilities_of, k)


def _classify_chunk(files, probabilities_of, k):
  images, errors = [], {}
  for path in files:
    try:
      if not os.path.isfile(path):  # A FIFO or a device would block or never end.
        raise ValueError('not a regular file' if os.path.exists(path) else 'no such file')
      images.append(read_image(path))
    # Pillow's decoders and exif_transpose raise more than OSError on a damaged file
    # (SyntaxError, struct.error, EOFError, IndexError, TypeError, ZeroDivisionError, ...):
    # whatever one file raises is that file's error. MemoryError too: a decoder raises it
    # when a crafted header asks for a buffer too large, which is that file's, and the
    # failed allocation is freed. KeyboardInterrupt and SystemExit are no Exception.
    except Exception as e:  # pylint: disable=broad-except
      errors[path] = f'not an image this script can read ({_describe(e)})'
  probabilities = iter(probabilities_of(np.stack(images)) if images else [])
  for path in files:
    if path in errors:
      yield path, None, errors[path]
    else:
      yield path, top_classes(next(probabilities), k), None


def _describe(error):
  """One line of an exception: its message, with its type unless it is an OSError or a
  ValueError (struct.error's 'unpack requires a buffer of 4 bytes' names no problem)."""
  message = ' '.join(str(error).split())
  if isinstance(error, (OSError, ValueError)) and message:
    return message
  return f'{type(error).__name__}: {message}' if message else type(error).__name__


def run(values, files):
  """Classifies `files` as the flag values say, printing a line each; returns the exit code
  (1 when a file could not be read or the source not loaded)."""
  try:
    probabilities_of = open_source(values['source'], values['ema'])
  except SourceError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 1
  cifar10_env.quiet_logging(values['verbosity_given'])  # TensorFlow's, if loaded.
  failed = False
  for path, top, error in classify(files, probabilities_of, values['top_k']):
    if error:
      failed = True
      print(f'error: {path}: {error}', file=sys.stderr, flush=True)
    if values['json']:
      print(json_line(path, top, error), flush=True)
    elif not error:
      print(f'{path}: ' + ', '.join(f'{name} {p:.3f}' for name, _, p in top), flush=True)
  return 1 if failed else 0


def json_line(path, top, error):
  """The --json line of one file (JSON Lines: one object, no newline inside): its top
  classes, or why it could not be read."""
  if error:
    return json.dumps({'file': path, 'error': error})
  return json.dumps({'file': path, 'top': [
      {'class': name, 'index': index, 'probability': round(p, 6)} for name, index, p in top]})


def main(argv):
  files = argv[1:]
  if not files:
    raise app.UsageError('give one or more image files to classify')
  given = flags.FLAGS['verbosity'].present
  cifar10_env.quiet_logging(given)
  values = {name: holder.value for name, holder in _FLAGS.items()}
  sys.exit(run(dict(values, verbosity_given=given), files))


def define_flags(flag_values=flags.FLAGS):
  """This program's flags (it reads no TensorFlow module: not cifar10_flags'); {name:
  FlagHolder}."""
  return dict(
      source=flags.DEFINE_string('source', None, 'A run folder, an export folder (or its '
                                 'saved_model/), a .tflite file of cifar10_export.py, or an '
                                 'int8 .npz of compress/quantize.py.',
                                 required=True, flag_values=flag_values),
      top_k=flags.DEFINE_integer('top_k', 3, 'Classes shown per image.', lower_bound=1,
                                 upper_bound=len(CLASS_NAMES), flag_values=flag_values),
      json=flags.DEFINE_boolean(
          'json', False, 'JSON Lines instead of text: one object per file, in order, '
          '{"file", "top": [{"class", "index", "probability"}]} or, for a file that could not '
          'be read, {"file", "error"} (also on stderr; exit status 1).',
          flag_values=flag_values),
      ema=flags.DEFINE_boolean('ema', True, 'With a run folder: the EMA shadows (--noema: '
                               'the raw weights).', flag_values=flag_values),
  )


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
