"""Exports a run's model for standard tools: a SavedModel, a TFLite file, TFLite's own int8.

    python cifar10_export.py --checkpoint_dir=runs/tutorial --export_dir=runs/tutorial_export

From the newest checkpoint of a cifar10_train.py (or compress/prune.py) run, with its EMA
shadows (--noema: the raw weights), each BatchNorm folded into its convolution and every
convolution the plain op (no spectral products), it writes into --export_dir:

  saved_model/        signature serving_default: uint8 `images` [N, 32, 32, 3], any N ->
                      `probabilities` float32 [N, 10], `classes` int64 [N], `logits` [N, 10];
                      the evaluation's preprocessing (central crop to the model's input side,
                      per-image standardization) is part of the graph, so a caller needs
                      TensorFlow alone, not this project.
  model_float.tflite  the same signature, converted by tf.lite.TFLiteConverter.
  model_int8.tflite   with --tflite_int8: TFLite's full-integer post-training quantization of
                      the model after the preprocessing (input: standardized float32 images
                      [N, s, s, 3], output: logits), calibrated on the same training images as
                      compress/quantize.py: the standard peer of our model_int8.npz, which
                      takes the same input.
  export.json         what was exported (run, step, weights, files and bytes) and, unless
                      --verify_images=0, the check below.

The check: the SavedModel, loaded in a fresh Python process that imports TensorFlow and NumPy
only, and the float TFLite file in this one, classify the first --verify_images test images;
their logits are compared with the evaluation's (cifar10_scoring.Evaluator, the unfolded model).

The folder is written whole or not at all: everything goes to a temporary folder beside it,
renamed into place at the end. An existing --export_dir is refused unless --overwrite.
"""

import dataclasses
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_input
import cifar10_records
import cifar10_run
import cifar10_scoring
from compress import calibration as calibration_lib

SAVED_MODEL = 'saved_model'
FLOAT_TFLITE = 'model_float.tflite'
INT8_TFLITE = 'model_int8.tflite'
REPORT_FILE = 'export.json'
SIGNATURE = 'serving_default'
VERIFY_BATCH = 500  # images per call of the check
VERIFY_TIMEOUT_SECS = 900  # the fresh process of the check (10,000 images take ~20 s here)
# The largest |logit difference| the check accepts from the evaluation's (measured: < 2e-5).
LOGIT_TOLERANCE = 1e-3

# Run in a fresh interpreter by verify_saved_model: TensorFlow and NumPy only, so a logit that
# matches here matches for any user who has neither this project nor its code.
_LOAD_ONLY_TENSORFLOW = r'''
import sys
import numpy as np
import tensorflow as tf
assert not [m for m in sys.modules if m.startswith(('cifar10', 'compress', 'models'))]
saved_model, images_file, out_file, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
serve = tf.saved_model.load(saved_model).signatures['serving_default']
images = np.load(images_file)
logits = [serve(images=tf.constant(images[i:i + batch]))['logits'].numpy()
          for i in range(0, len(images), batch)]
np.save(out_file, np.concatenate(logits))
'''


class ExportError(Exception):
  """The model could not be exported or converted, or does not check out."""


class Serving(tf.Module):
  """The exported graph: the folded model behind the evaluation's preprocessing."""

  def __init__(self, model, image_size):
    super().__init__(name='cifar10')
    self.model = model
    self.image_size = image_size
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, cifar10_records.IMAGE_SIZE, cifar10_records.IMAGE_SIZE, 3],
                      tf.uint8, name='images')])
    self.logits = tf.function(self._logits, input_signature=[
        tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name='images')])

  def _serve(self, images):
    logits = self.model(cifar10_input.eval_batch(images, self.image_size), training=False)
    return {'probabilities': tf.nn.softmax(logits), 'classes': tf.argmax(logits, axis=1),
            'logits': logits}

  def _logits(self, images):
    return self.model(images, training=False)


def export_model(loaded):
  """The Serving module of a cifar10_run.InferenceModel (its BatchNorm folded)."""
  serving = Serving(loaded.model, loaded.config.image_size)
  loaded.model.compute_dtype = tf.float32  # A mixed-precision run exports float32 all the same.
  return serving


def convert_float(saved_model_dir):
  """The float TFLite flatbuffer of the SavedModel's serving signature."""
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [SIGNATURE])
  with cifar10_env.held_stderr():  # The converter's notes; its errors come in the exception.
    return converter.convert()


def convert_int8(serving, calibration_data):
  """TFLite's full-integer quantization of serving.logits (standardized float32 in, logits out),
  calibrated one image at a time on calibration_data (float32 [N, s, s, 3])."""
  function = serving.logits.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], serving)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.representative_dataset = lambda: ([image[np.newaxis]] for image in calibration_data)
  with cifar10_env.held_stderr():
    return converter.convert()


def interpreter(model_content, num_threads=None):
  """A TFLite interpreter of the flatbuffer (on num_threads threads; None: TFLite's
  default), its tensors allocated.

  tf.lite.Interpreter is deprecated for LiteRT's (the ai-edge-litert package) but still in
  TensorFlow 2.21: this way the check needs no second runtime. Its warning and its C++ notes
  are held back."""
  with warnings.catch_warnings(), cifar10_env.held_stderr():
    warnings.simplefilter('ignore', UserWarning)
    result = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
    result.allocate_tensors()
  return result


def tflite_function(model_content, num_threads=None):
  """A function from a batch of images to {output name: NumPy}: the TFLite model's only
  signature, its one input given by position."""
  lite = interpreter(model_content, num_threads)
  runner = lite.get_signature_runner()
  name = list(lite.get_signature_list().values())[0]['inputs'][0]
  return lambda images: runner(**{name: images})


def tflite_outputs(model_content, images, batch=VERIFY_BATCH):
  """{output name: NumPy} of a TFLite model's only signature over images, batch by batch."""
  run = tflite_function(model_content)
  outputs = [run(images[start:start + batch]) for start in range(0, len(images), batch)]
  return {key: np.concatenate([o[key] for o in outputs]) for key in outputs[0]}


def verify_saved_model(saved_model_dir, images, work_dir):
  """Logits of the SavedModel on uint8 images, computed in a fresh TensorFlow-only process."""
  images_file = os.path.join(work_dir, 'verify_images.npy')
  logits_file = os.path.join(work_dir, 'verify_logits.npy')
  np.save(images_file, images)
  try:
    result = subprocess.run([sys.executable, '-c', _LOAD_ONLY_TENSORFLOW, saved_model_dir,
                             images_file, logits_file, str(VERIFY_BATCH)],
                            capture_output=True, text=True, check=False,
                            timeout=VERIFY_TIMEOUT_SECS,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  except subprocess.TimeoutExpired as e:
    raise ExportError(f'the SavedModel check took over {VERIFY_TIMEOUT_SECS} s') from e
  if result.returncode:
    raise ExportError('the SavedModel did not load and run in a fresh process: '
                      f'{result.stderr.strip()[-800:]}')
  logits = np.load(logits_file)
  os.remove(images_file)
  os.remove(logits_file)
  return logits


def agreement(reference, logits):
  """How logits compare with the reference logits: same classes, max |difference|."""
  same = np.argmax(logits, axis=1) == np.argmax(reference, axis=1)
  return {'images': int(len(reference)), 'same_class': int(np.sum(same)),
          'max_logit_difference': float(np.max(np.abs(logits - reference)))}


def reference_logits(config, checkpoint, split, use_ema, conv='auto'):
  """The evaluation's logits (cifar10_scoring.Evaluator: unfolded, its default convolutions)."""
  evaluator = cifar10_scoring.Evaluator(config, split, conv=conv)
  cifar10_run.load_inference_model(None, ema=use_ema, checkpoint=checkpoint, state=evaluator)
  return evaluator.logits(VERIFY_BATCH)


@dataclasses.dataclass(frozen=True)
class Options:
  use_ema: bool = True
  tflite_int8: bool = False
  calibration: calibration_lib.Calibration = calibration_lib.Calibration()
  verify_images: int = cifar10_records.NUM_TEST_EXAMPLES
  overwrite: bool = False


def export_run(checkpoint_dir, export_dir, batches_dir, options=Options(),
               log=lambda message: None):
  """Exports the newest checkpoint of the run in checkpoint_dir into export_dir; the report.

  Raises:
    ConfigError: no run in checkpoint_dir; export_dir exists (without overwrite) or cannot be
      written.
    UnreadableCheckpoint: the newest checkpoint cannot be read.
    DataError: the data is needed (calibration, the check) and cannot be read.
    ExportError: the conversion or the check failed, or the files could not be written.
  """
  config, checkpoint = cifar10_run.latest_run(checkpoint_dir, '--checkpoint_dir')
  export_dir = os.path.normpath(export_dir)
  check_export_dir(export_dir, options.overwrite)
  parent = os.path.dirname(os.path.abspath(export_dir))
  try:
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=os.path.basename(export_dir) + '.partial-', dir=parent)
  except OSError as e:
    raise cifar10_config.ConfigError(f'cannot write beside --export_dir={export_dir} ({e})') from e
  try:
    report = _export(config, checkpoint, work, batches_dir, options, log)
    cifar10_run.write_json(os.path.join(work, REPORT_FILE), report)
    _replace(work, export_dir)
  except (OSError, tf.errors.OpError) as e:  # A full disk, a folder made unwritable...
    raise ExportError(f'cannot write the export beside --export_dir={export_dir} '
                      f'({type(e).__name__}: {str(e).strip()[:300]}); nothing was moved '
                      'into place') from e
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return report


def check_export_dir(export_dir, overwrite):
  """Raises ConfigError when export_dir exists and may not be replaced."""
  if os.path.exists(export_dir) and not overwrite:
    raise cifar10_config.ConfigError(f'--export_dir={export_dir} exists: pass --overwrite to '
                                     'replace it, or another folder.')


def _export(config, checkpoint, work, batches_dir, options, log):
  """Writes the files into the folder `work`; returns the report."""
  log(f'restoring {checkpoint}')
  loaded = cifar10_run.load_inference_model(None, ema=options.use_ema, conv='direct',
                                            fold_batchnorm=True, checkpoint=checkpoint,
                                            state=cifar10_run.RunState(config, conv='direct'))
  serving = export_model(loaded)
  saved_model_dir = os.path.join(work, SAVED_MODEL)
  tf.saved_model.save(serving, saved_model_dir, signatures={SIGNATURE: serving.serve})
  log(f'wrote {SAVED_MODEL}; converting it to TFLite')
  try:
    float_tflite = convert_float(saved_model_dir)
  except Exception as e:  # pylint: disable=broad-except  # The converter raises many kinds.
    raise ExportError(f'TFLite conversion failed: {str(e).strip()[-800:]}') from e
  _write(os.path.join(work, FLOAT_TFLITE), float_tflite)
  files = [SAVED_MODEL, FLOAT_TFLITE]
  report = {'checkpoint': checkpoint, 'model': config.model, 'step': loaded.step,
            'weights': loaded.weights, 'image_size': config.image_size,
            'batchnorm_folded': loaded.batchnorm_folded}
  if options.tflite_int8:
    log(f'TFLite int8: calibrating on {options.calibration.images} training images')
    calibration = calibration_lib.calibration_images(
        cifar10_records.load_split(batches_dir, 'train'), options.calibration,
        config.image_size)
    try:
      int8_tflite = convert_int8(serving, calibration)
    except Exception as e:  # pylint: disable=broad-except
      raise ExportError(f'TFLite int8 conversion failed: {str(e).strip()[-800:]}') from e
    _write(os.path.join(work, INT8_TFLITE), int8_tflite)
    files.append(INT8_TFLITE)
    report['calibration'] = dataclasses.asdict(options.calibration)
  report['bytes'] = {name: _size(os.path.join(work, name)) for name in files}
  if options.verify_images:
    report['check'] = _check(config, checkpoint, work, batches_dir, options, float_tflite, log)
  return report


def _check(config, checkpoint, work, batches_dir, options, float_tflite, log):
  """The SavedModel (fresh process) and the float TFLite file against the evaluation."""
  test = cifar10_records.load_split(batches_dir, 'test')
  count = min(options.verify_images, len(test))
  split = cifar10_records.Split(images=test.images[:count], labels=test.labels[:count])
  log(f'checking the exported files on {count} test images')
  reference = reference_logits(config, checkpoint, split, options.use_ema)
  saved = verify_saved_model(os.path.join(work, SAVED_MODEL), split.images, work)
  lite = tflite_outputs(float_tflite, split.images)['logits']
  check = {'saved_model': agreement(reference, saved), 'tflite_float': agreement(reference, lite)}
  for name, result in check.items():
    log(f'{name}: same class on {result["same_class"]} of {result["images"]}, logits within '
        f'{result["max_logit_difference"]:.2e}')
    if not result['max_logit_difference'] <= LOGIT_TOLERANCE:  # NaN fails too.
      raise ExportError(f'the exported {name} differs from the evaluation by '
                        f'{result["max_logit_difference"]:.2e} in a logit (tolerance '
                        f'{LOGIT_TOLERANCE:g}): nothing was written')
  return check


def _write(path, content):
  with open(path, 'wb') as f:
    f.write(content)


def _size(path):
  """Bytes of a file, or of every file under a folder."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _replace(work, export_dir):
  """Moves the finished folder `work` to export_dir, replacing what is there only now (the
  old folder comes back if the move fails)."""
  old = None
  if os.path.exists(export_dir):
    old = work + '.old'
    os.rename(export_dir, old)
  try:
    os.rename(work, export_dir)
  except OSError:
    if old:
      os.rename(old, export_dir)
    raise
  if old:
    shutil.rmtree(old)


def run(values):
  """Exports as the flag values say; returns what sys.exit takes (None: done)."""
  options = Options(use_ema=values['ema'], tflite_int8=values['tflite_int8'],
                    calibration=calibration_lib.Calibration(images=values['calibration_images']),
                    verify_images=values['verify_images'], overwrite=values['overwrite'])
  log = lambda message: print(f'{datetime.datetime.now()}: {message}', flush=True)
  checkpoint_dir, export_dir = values['checkpoint_dir'], values['export_dir']
  try:
    # The run and the folder first: a mistyped flag is reported before any data is fetched,
    # and the data only when the int8 calibration or the check needs it.
    cifar10_run.latest_run(checkpoint_dir, '--checkpoint_dir')
    check_export_dir(os.path.normpath(export_dir), options.overwrite)
    needs_data = options.tflite_int8 or options.verify_images
    batches_dir = cifar10_flags.batches_dir(values) if needs_data else None
    report = export_run(checkpoint_dir, export_dir, batches_dir, options, log)
  except (cifar10_records.DataError, cifar10_config.ConfigError,
          cifar10_run.UnreadableCheckpoint, ExportError) as e:
    return f'error: {e}'
  except KeyboardInterrupt:
    return 130  # Nothing was moved into --export_dir.
  print(json.dumps({k: report[k] for k in ('model', 'step', 'weights', 'bytes')}))
  return None


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the run-reading ones and this program's; {name: FlagHolder}."""
  holders = cifar10_flags.define_data_flags(flag_values)
  # No --conv: an export computes the plain convolution, always.
  holders.update(cifar10_flags.define_run_flags(flag_values, conv=None, what='export'))
  holders.update(
      export_dir=flags.DEFINE_string('export_dir', None, 'The folder to write (must not exist '
                                     'unless --overwrite).', required=True,
                                     flag_values=flag_values),
      overwrite=flags.DEFINE_boolean('overwrite', False, 'Replace an existing --export_dir.',
                                     flag_values=flag_values),
      tflite_int8=flags.DEFINE_boolean('tflite_int8', False, 'Also write model_int8.tflite, '
                                       "TFLite's full-integer quantization.",
                                       flag_values=flag_values),
      calibration_images=flags.DEFINE_integer(
          'calibration_images', calibration_lib.Calibration.images, 'Training images that '
          'calibrate the int8 ranges (the same ones as compress/quantize.py picks).',
          lower_bound=1, upper_bound=cifar10_records.NUM_TRAIN_EXAMPLES,
          flag_values=flag_values),
      verify_images=flags.DEFINE_integer(
          'verify_images', cifar10_records.NUM_TEST_EXAMPLES, 'Test images on which the '
          'exported files are checked against the evaluation (0: no check, no test data).',
          lower_bound=0, upper_bound=cifar10_records.NUM_TEST_EXAMPLES,
          flag_values=flag_values),
  )
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
