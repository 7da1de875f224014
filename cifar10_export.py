"""Exports a run's model for standard tools: a SavedModel, TFLite float and int8, ONNX.

    python cifar10_export.py --checkpoint_dir=runs/tutorial --export_dir=runs/tutorial_export

From the newest checkpoint of a cifar10_train.py (or compress/prune.py) run, with its EMA
shadows (--noema: the raw weights), each BatchNorm folded into its convolution and every
convolution the plain op (no spectral products), it writes into --export_dir the files of
cifar10_deploy's layout:

  saved_model/<version>/  signature serving_default: uint8 `images` [N, 32, 32, 3], any N ->
                          `probabilities` float32 [N, 10], `classes` int64 [N], `logits`
                          [N, 10], `labels` string [N] (each image's class name); the
                          evaluation's preprocessing (central crop to the model's input side,
                          per-image standardization) is part of the graph, so a caller needs
                          TensorFlow alone, not this project. TF Serving's layout: point its
                          model_base_path at saved_model/ (--serving_version, 1 by default).
                          labels.txt is one of its assets.
  model_float.tflite      the same signature, converted by tf.lite.TFLiteConverter.
  model_int8.tflite       with --tflite_int8: the same signature again, with TFLite's
                          full-integer post-training quantization of the model (int8 weights
                          per output channel, int8 activations) behind the preprocessing, which
                          stays float32 (it is per image: no fixed int8 range fits a variance);
                          calibrated on the same training images as compress/quantize.py.
  model.onnx              with --onnx: the SavedModel converted by tf2onnx (an optional
                          package: `make deploy-deps`), the same inputs and outputs.
  labels.txt              the class names, one a line, in the order of `classes`.
  export.json             what was exported (run, step, weights, files and bytes) and, unless
                          --verify_images=0, the check below.

The check, on the first --verify_images test images: the SavedModel, loaded in a fresh Python
process that imports TensorFlow and NumPy only, the float TFLite file and the ONNX file are
compared with the evaluation's logits (cifar10_scoring.Evaluator, the unfolded model) and must
agree to LOGIT_TOLERANCE; the int8 TFLite file's agreement is measured and reported.

The folder is written whole or not at all: everything goes to a temporary folder beside it,
renamed into place at the end. An existing --export_dir is refused unless --overwrite, which
replaces only an earlier export or an empty folder (never a run or a folder of runs); the
check runs again before the move, so a folder that appeared meanwhile is not replaced.
"""

import contextlib
import ctypes
import dataclasses
import datetime
import glob
import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_config
import cifar10_deploy
import cifar10_flags
import cifar10_input
import cifar10_records
import cifar10_run
import cifar10_scoring
from compress import calibration as calibration_lib
from compress import int8

SAVED_MODEL = cifar10_deploy.SAVED_MODEL
FLOAT_TFLITE = cifar10_deploy.FLOAT_TFLITE
INT8_TFLITE = cifar10_deploy.INT8_TFLITE
ONNX_FILE = cifar10_deploy.ONNX_FILE
LABELS_FILE = cifar10_deploy.LABELS_FILE
REPORT_FILE = cifar10_deploy.REPORT_FILE
SIGNATURE = cifar10_deploy.SIGNATURE
PREPROCESS_SCOPE = 'preprocess'  # the name scope of the ops that stay float in int8 TFLite
ONNX_OPSET = 17
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
  """The exported graph: the folded model behind the evaluation's preprocessing, the class
  names beside it (labels_file, a labels.txt, travels as the SavedModel's asset)."""

  def __init__(self, model, image_size, labels_file):
    super().__init__(name='cifar10')
    self.model = model
    self.image_size = image_size
    self.labels_file = tf.saved_model.Asset(labels_file)
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([None, cifar10_records.IMAGE_SIZE, cifar10_records.IMAGE_SIZE, 3],
                      tf.uint8, name=cifar10_deploy.INPUT)])

  def _serve(self, images):
    with tf.name_scope(PREPROCESS_SCOPE):
      inputs = cifar10_input.eval_batch(images, self.image_size)
    logits = self.model(inputs, training=False)
    classes = tf.argmax(logits, axis=1)
    return {'probabilities': tf.nn.softmax(logits), 'classes': classes, 'logits': logits,
            'labels': tf.gather(tf.constant(cifar10_records.CLASS_NAMES), classes)}


def export_model(loaded, labels_file):
  """The Serving module of a cifar10_run.InferenceModel (its BatchNorm folded)."""
  serving = Serving(loaded.model, loaded.config.image_size, labels_file)
  loaded.model.compute_dtype = tf.float32  # A mixed-precision run exports float32 all the same.
  return serving


def convert_float(saved_model_dir):
  """The float TFLite flatbuffer of the SavedModel's serving signature."""
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [SIGNATURE])
  with cifar10_env.held_stderr():  # The converter's notes; its errors come in the exception.
    return converter.convert()


def convert_int8(saved_model_dir, float_tflite, calibration_data):
  """TFLite's full-integer quantization of the SavedModel's serving signature behind its
  float32 preprocessing, calibrated one image at a time on calibration_data (uint8
  [N, 32, 32, 3]).

  The preprocessing's ops (every tensor of PREPROCESS_SCOPE in the float flatbuffer) are left
  out of the quantization with the TFLite quantization debugger's denylist: a per-image
  variance spans too many orders of magnitude for one int8 range (quantized, it moves the
  class of 0.4 % of the images on an untrained model). The quantization starts after them,
  where the model's input is, as in compress/quantize.py.
  """
  converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir, [SIGNATURE])
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                         tf.lite.OpsSet.TFLITE_BUILTINS]
  representative = lambda: ([image[np.newaxis]] for image in calibration_data)
  converter.representative_dataset = representative
  denylist = [detail['name'] for detail in cifar10_deploy.interpreter(float_tflite)
              .get_tensor_details() if detail['name'].startswith(PREPROCESS_SCOPE + '/')]
  options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=denylist)
  with cifar10_env.held_stderr():
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=representative, debug_options=options)
    return debugger.get_nondebug_quantized_model()


def convert_onnx(serving, path):
  """Writes the ONNX model of serving.serve to path (tf2onnx, opset ONNX_OPSET).

  Raises:
    ExportError: tf2onnx is not installed.
  """
  try:
    import tf2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ExportError(cifar10_deploy.ONNX_INSTALL) from e
  with cifar10_env.held_stderr(), _quiet_python_logging('tf2onnx'):
    tf2onnx.convert.from_function(serving.serve, input_signature=serving.serve.input_signature,
                                  opset=ONNX_OPSET, output_path=path)


@contextlib.contextmanager
def _quiet_python_logging(name):
  """The Python logger `name` at WARNING inside the block (tf2onnx logs every pass at INFO)."""
  logger = logging.getLogger(name)
  level = logger.level
  logger.setLevel(logging.WARNING)
  try:
    yield
  finally:
    logger.setLevel(level)


def tflite_outputs(model_content, images, batch=VERIFY_BATCH):
  """{output name: NumPy} of a TFLite model's only signature over images, batch by batch."""
  return cifar10_deploy.outputs_in_batches(cifar10_deploy.tflite_function(model_content),
                                           images, batch)


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
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
                            preexec_fn=_die_with_parent)
  except subprocess.TimeoutExpired as e:
    raise ExportError(f'the SavedModel check took over {VERIFY_TIMEOUT_SECS} s') from e
  if result.returncode:
    raise ExportError('the SavedModel did not load and run in a fresh process: '
                      f'{result.stderr.strip()[-800:]}')
  logits = np.load(logits_file)
  os.remove(images_file)
  os.remove(logits_file)
  return logits


def _die_with_parent():
  """Runs in the checking child before it starts: on Linux it gets SIGTERM when the export
  dies (PR_SET_PDEATHSIG), so a killed export leaves no checking process behind."""
  if sys.platform.startswith('linux'):
    try:
      ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
      pass


def agreement(reference, logits):
  """How logits compare with the reference logits: same classes, max |difference|."""
  same = np.argmax(logits, axis=1) == np.argmax(reference, axis=1)
  return {'images': int(len(reference)), 'same_class': int(np.sum(same)),
          'max_logit_difference': float(np.max(np.abs(logits - reference)))}


def reference_logits(config, checkpoint, split, use_ema, conv='auto', log=None):
  """The evaluation's logits (cifar10_scoring.Evaluator: unfolded, its default convolutions);
  `log(line)`: progress lines (int8.Progress)."""
  evaluator = cifar10_scoring.Evaluator(config, split, conv=conv)
  cifar10_run.load_inference_model(None, ema=use_ema, checkpoint=checkpoint, state=evaluator)
  progress = int8.Progress(len(split), log, 'evaluation scoring') if log else None
  return evaluator.logits(VERIFY_BATCH, progress)


@dataclasses.dataclass(frozen=True)
class Options:
  use_ema: bool = True
  tflite_int8: bool = False
  onnx: bool = False
  serving_version: int = 1
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
  parent, name = os.path.split(os.path.abspath(export_dir))
  # One export at a time into a destination: the lock beside it is the kernel's, so a
  # killed export's dies with it, and what that one left (name.partial-*) is removed here.
  lock = os.path.join(parent, f'.{name}.lock')
  with cifar10_run.locked_path(lock, f'--export_dir={export_dir}', 'exporting there',
                               '--export_dir'):
    for leftover in glob.glob(os.path.join(glob.escape(parent), glob.escape(name) + '.partial-*')):
      shutil.rmtree(leftover, ignore_errors=True)
    try:
      return _export_locked(config, checkpoint, export_dir, parent, batches_dir, options, log)
    finally:  # Nothing left beside the destination (the final move re-checks it anyway).
      with contextlib.suppress(OSError):
        os.remove(lock)


def _export_locked(config, checkpoint, export_dir, parent, batches_dir, options, log):
  """export_run's work, the destination's lock held: a temporary folder beside it (with the
  umask's permissions, not mkdtemp's 0700), the files, then the checked move."""
  try:
    work = tempfile.mkdtemp(prefix=os.path.basename(export_dir) + '.partial-', dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(work, 0o777 & ~umask)  # mkdtemp's is 0700; an export is for others to read.
  except OSError as e:
    raise cifar10_config.ConfigError(f'cannot write beside --export_dir={export_dir} ({e})') from e
  try:
    report = _export(config, checkpoint, work, batches_dir, options, log)
    cifar10_run.write_json(os.path.join(work, REPORT_FILE), report)
    _replace(work, export_dir, options.overwrite)
  except (OSError, tf.errors.OpError) as e:  # A full disk, a folder made unwritable...
    raise ExportError(f'cannot write the export beside --export_dir={export_dir} '
                      f'({type(e).__name__}: {str(e).strip()[:300]}); nothing was moved '
                      'into place') from e
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return report


def require_onnx_packages():
  """Raises ExportError unless tf2onnx and ONNX Runtime (which checks the file) are installed."""
  missing = [name for name in ('tf2onnx', 'onnxruntime')
             if importlib.util.find_spec(name) is None]
  if missing:
    raise ExportError(f'--onnx: {", ".join(missing)} not installed. '
                      f'{cifar10_deploy.ONNX_INSTALL}')


def replaceable(export_dir):
  """Whether --overwrite may replace an existing export_dir: an earlier export (its
  export.json there, and nothing an export does not write) or an empty folder, never anything
  else (a run folder, a folder of runs with an export.json dropped in it, a file, a home
  directory)."""
  if os.path.islink(export_dir) or not os.path.isdir(export_dir):
    return False
  entries = set(os.listdir(export_dir))
  return not entries or (REPORT_FILE in entries and entries <= EXPORT_ENTRIES)


# Everything an export writes at its top level (cifar10_deploy's layout).
EXPORT_ENTRIES = {cifar10_deploy.SAVED_MODEL, cifar10_deploy.FLOAT_TFLITE,
                  cifar10_deploy.INT8_TFLITE, cifar10_deploy.ONNX_FILE,
                  cifar10_deploy.LABELS_FILE, REPORT_FILE}


def check_export_dir(export_dir, overwrite):
  """Raises ConfigError when export_dir exists and may not be replaced."""
  if not os.path.lexists(export_dir):
    return
  if not overwrite:
    raise cifar10_config.ConfigError(f'--export_dir={export_dir} exists: pass --overwrite to '
                                     'replace it, or another folder.')
  if not replaceable(export_dir):
    raise cifar10_config.ConfigError(
        f'--export_dir={export_dir} is not an earlier export (no {REPORT_FILE} in it, or '
        'files an export does not write) nor an empty folder: --overwrite replaces only those, so that a run folder, a folder of '
        'runs or any other folder is never deleted; pass another folder.')


def _export(config, checkpoint, work, batches_dir, options, log):
  """Writes the files into the folder `work`; returns the report."""
  log(f'restoring {checkpoint}')
  loaded = cifar10_run.load_inference_model(None, ema=options.use_ema, conv='direct',
                                            fold_batchnorm=True, checkpoint=checkpoint,
                                            state=cifar10_run.RunState(config, conv='direct'))
  labels_file = os.path.join(work, LABELS_FILE)
  cifar10_deploy.write_labels(labels_file, cifar10_records.CLASS_NAMES)
  serving = export_model(loaded, labels_file)
  saved_model_dir = os.path.join(work, SAVED_MODEL, str(options.serving_version))
  tf.saved_model.save(serving, saved_model_dir, signatures={SIGNATURE: serving.serve})
  log(f'wrote {SAVED_MODEL}/{options.serving_version}; converting it to TFLite')
  files = {SAVED_MODEL: saved_model_dir, LABELS_FILE: labels_file}
  contents = {FLOAT_TFLITE: _converted('TFLite', convert_float, saved_model_dir)}
  if options.tflite_int8:
    log(f'TFLite int8: calibrating on {options.calibration.images} training images')
    calibration = calibration_lib.calibration_split(
        cifar10_records.load_split(batches_dir, 'train'), options.calibration).images
    contents[INT8_TFLITE] = _converted('TFLite int8', convert_int8, saved_model_dir,
                                       contents[FLOAT_TFLITE], calibration)
  for name, content in contents.items():
    files[name] = os.path.join(work, name)
    _write(files[name], content)
  if options.onnx:
    log('converting the SavedModel to ONNX (tf2onnx)')
    files[ONNX_FILE] = os.path.join(work, ONNX_FILE)
    _converted('ONNX', convert_onnx, serving, files[ONNX_FILE])
  report = {'checkpoint': checkpoint, 'model': config.model, 'widths': config.widths,
            'step': loaded.step, 'weights': loaded.weights, 'image_size': config.image_size,
            'batchnorm_folded': loaded.batchnorm_folded,
            'serving_version': options.serving_version}
  if options.tflite_int8:
    report['calibration'] = dataclasses.asdict(options.calibration)
  report['bytes'] = {name: _size(path) for name, path in files.items()}
  if options.verify_images:
    report['check'] = _check(config, checkpoint, files, batches_dir, options, log)
  return report


def _converted(what, convert, *args):
  """convert(*args), its errors one ExportError naming `what`."""
  try:
    return convert(*args)
  except ExportError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # The converters raise many kinds.
    raise ExportError(f'{what} conversion failed: {str(e).strip()[-800:]}') from e


def _check(config, checkpoint, files, batches_dir, options, log):
  """Each exported file against the evaluation (the SavedModel in a fresh process); all but
  the int8 one must agree to LOGIT_TOLERANCE."""
  test = cifar10_records.load_split(batches_dir, 'test')
  count = min(options.verify_images, len(test))
  split = cifar10_records.Split(images=test.images[:count], labels=test.labels[:count])
  log(f'checking the exported files on {count:,} test images')
  reference = reference_logits(config, checkpoint, split, options.use_ema, log=log)
  log('running the SavedModel in a fresh process (no progress lines from there)')
  start = time.perf_counter()
  logits = {'saved_model': verify_saved_model(files[SAVED_MODEL], split.images,
                                              os.path.dirname(files[LABELS_FILE]))}
  log(f'saved_model: ran in {int8.format_eta(time.perf_counter() - start)}')
  logits.update(_file_logits(files, split.images, log))
  check = {name: agreement(reference, values) for name, values in logits.items()}
  for name, result in check.items():
    log(f'{name}: same class on {result["same_class"]} of {result["images"]}, logits within '
        f'{result["max_logit_difference"]:.2e}')
    if name != 'tflite_int8' and not result['max_logit_difference'] <= LOGIT_TOLERANCE:
      raise ExportError(f'the exported {name} differs from the evaluation by '
                        f'{result["max_logit_difference"]:.2e} in a logit (tolerance '
                        f'{LOGIT_TOLERANCE:g}): nothing was written')  # NaN fails too.
  return check


def _file_logits(files, images, log):
  """{check name: logits on images} of each TFLite and ONNX file among `files`, with
  progress lines."""
  logits = {}
  for name, file_name in (('tflite_float', FLOAT_TFLITE), ('tflite_int8', INT8_TFLITE),
                          ('onnx', ONNX_FILE)):
    if file_name in files:
      try:
        run = cifar10_deploy.file_function(files[file_name])
      except cifar10_deploy.DeployError as e:
        raise ExportError(str(e)) from e
      progress = int8.Progress(len(images), log, f'{name} scoring')
      logits[name] = cifar10_deploy.outputs_in_batches(run, images, VERIFY_BATCH,
                                                       progress)['logits']
  return logits


def _write(path, content):
  with open(path, 'wb') as f:
    f.write(content)


def _size(path):
  """Bytes of a file, or of every file under a folder."""
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


def _replace(work, export_dir, overwrite):
  """Moves the finished folder `work` to export_dir, replacing what is there only now (the
  old folder comes back if the move fails). The checks of check_export_dir run again here:
  the folder may have appeared (another export into it) since they ran at the start.

  Raises:
    ExportError: export_dir is no longer one this export may write.
  """
  try:
    check_export_dir(export_dir, overwrite)
  except cifar10_config.ConfigError as e:
    raise ExportError(f'{e} (it appeared while this export ran: another export into the same '
                      'folder?); nothing was moved into place') from e
  old = None
  if os.path.lexists(export_dir):
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
                    onnx=values['onnx'], serving_version=values['serving_version'],
                    calibration=calibration_lib.Calibration(images=values['calibration_images']),
                    verify_images=values['verify_images'], overwrite=values['overwrite'])
  log = lambda message: print(f'{datetime.datetime.now()}: {message}', flush=True)
  checkpoint_dir, export_dir = values['checkpoint_dir'], values['export_dir']
  try:
    # The run and the folder first: a mistyped flag is reported before any data is fetched,
    # and the data only when the int8 calibration or the check needs it.
    cifar10_run.latest_run(checkpoint_dir, '--checkpoint_dir')
    check_export_dir(os.path.normpath(export_dir), options.overwrite)
    if options.onnx:  # Before minutes of work, not after them.
      require_onnx_packages()
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
      onnx=flags.DEFINE_boolean('onnx', False, 'Also write model.onnx (tf2onnx: `make '
                                'deploy-deps` installs it).', flag_values=flag_values),
      serving_version=flags.DEFINE_integer(
          'serving_version', 1, 'The SavedModel goes to saved_model/<this>/, the layout TF '
          'Serving reads.', lower_bound=1, flag_values=flag_values),
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
