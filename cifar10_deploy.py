"""Deployed files: where each lives in a cifar10_export.py folder, and how each runs.

An export folder (docs/export.md):

  saved_model/<version>/  the SavedModel, in TF Serving's layout (its model_base_path is
                          saved_model/; --serving_version, 1 by default). Exports written before
                          versions hold it in saved_model/ itself; both are read.
  model_float.tflite      TFLite, float32.
  model_int8.tflite       TFLite's full-integer quantization (--tflite_int8).
  model.onnx              ONNX, converted by tf2onnx (--onnx).
  labels.txt              the class names, one a line, in the order of the class indices.
  export.json             what was exported and how it checked out.

Every file takes what the SavedModel takes, uint8 `images` [N, 32, 32, 3] (the crop and the
standardization are inside), and gives its outputs under the same names: `probabilities`,
`classes`, `logits` and `labels` (the class names).

The runtimes, each as a function from a batch of uint8 images to {output name: NumPy}:
`tflite_function` (TensorFlow's TFLite interpreter, with XNNPACK) and `onnx_function`
(ONNX Runtime: an optional package, `make deploy-deps`). This module imports TensorFlow and
ONNX Runtime only inside the functions that need them.
"""

import os
import warnings

import numpy as np

import cifar10_env

SAVED_MODEL = 'saved_model'
FLOAT_TFLITE = 'model_float.tflite'
INT8_TFLITE = 'model_int8.tflite'
ONNX_FILE = 'model.onnx'
LABELS_FILE = 'labels.txt'
REPORT_FILE = 'export.json'
SIGNATURE = 'serving_default'
INPUT = 'images'
OUTPUTS = ('probabilities', 'classes', 'logits', 'labels')
ONNX_INSTALL = ('ONNX needs the optional packages of requirements-deploy.txt: '
                '`make deploy-deps` (or pip install -r requirements-deploy.txt)')


class DeployError(Exception):
  """A deployed file is missing, unreadable, or not one this project wrote."""


def versions(folder):
  """The version numbers under folder that hold a SavedModel (TF Serving's layout), sorted."""
  try:
    names = os.listdir(folder)
  except OSError:
    return []
  return sorted(int(name) for name in names if name.isdigit()
                and os.path.isfile(os.path.join(folder, name, 'saved_model.pb')))


def saved_model_dir(path):
  """The SavedModel folder that path means, or None: path itself, its newest version
  (path/<n>/), or an export folder's saved_model/<newest n>/ (saved_model/ itself in exports
  written before versions)."""
  for folder in (path, os.path.join(path, SAVED_MODEL)):
    if os.path.isfile(os.path.join(folder, 'saved_model.pb')):
      return folder
    found = versions(folder)
    if found:
      return os.path.join(folder, str(found[-1]))
  return None


def write_labels(path, names):
  with open(path, 'w', encoding='utf-8') as f:
    f.write(''.join(f'{name}\n' for name in names))


def read_labels(path, classes):
  """The class names of a labels file: `classes` non-empty lines.

  Raises:
    DeployError: the file is missing, unreadable, or holds another number of names.
  """
  try:
    with open(path, encoding='utf-8') as f:
      names = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise DeployError(f'cannot read the labels file {path} ({e})') from e
  if len(names) != classes or not all(name.strip() for name in names):
    raise DeployError(f'{path} holds {len(names)} lines; expected {classes} class names, '
                      'one a line')
  return names


def interpreter(model_content, num_threads=None):
  """A TFLite interpreter of the flatbuffer (bytes) on num_threads threads (None: TFLite's
  default), its tensors allocated, XNNPACK applied (TensorFlow's default delegate on CPU).

  tf.lite.Interpreter is deprecated for LiteRT's (the ai-edge-litert package) but still in
  TensorFlow 2.21: this way nothing needs a second runtime. Its warning and its C++ notes
  are held back."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings(), cifar10_env.held_stderr():
    warnings.simplefilter('ignore', UserWarning)
    result = tf.lite.Interpreter(model_content=model_content, num_threads=num_threads)
    result.allocate_tensors()
  return result


def tflite_function(model_content, num_threads=None):
  """A function from a batch of images to {output name: NumPy}: the TFLite model's only
  signature, its one input given by position (a string output comes as str)."""
  return signature_function(interpreter(model_content, num_threads))


def signature_function(lite):
  """tflite_function's function, of an interpreter already made (e.g. to inspect it first)."""
  runner = lite.get_signature_runner()
  name = list(lite.get_signature_list().values())[0]['inputs'][0]

  def run(images):
    outputs = runner(**{name: images})
    return {key: value.astype(str) if value.dtype == object else value
            for key, value in outputs.items()}
  return run


def onnx_function(path, num_threads=None):
  """A function from a batch of images to {output name: NumPy}: ONNX Runtime's CPU session
  of the model file, on num_threads intra-op threads (None: ONNX Runtime's default).

  Raises:
    DeployError: ONNX Runtime is not installed, or the file does not load.
  """
  try:
    import onnxruntime  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DeployError(ONNX_INSTALL) from e
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only
  if num_threads:
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
  try:
    session = onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])
  except Exception as e:  # pylint: disable=broad-except  # ONNX Runtime raises its own kinds.
    raise DeployError(f'ONNX Runtime cannot load {path}: {str(e).strip()[:300]}') from e
  (source,) = session.get_inputs()
  names = [output.name for output in session.get_outputs()]
  return lambda images: dict(zip(names, session.run(None, {source.name: images})))


def file_function(path, num_threads=None):
  """tflite_function or onnx_function of a .tflite or .onnx file, by its name.

  Raises:
    DeployError: the file cannot be read or loaded.
  """
  if path.endswith('.onnx'):
    return onnx_function(path, num_threads)
  try:
    with open(path, 'rb') as f:
      content = f.read()
    return tflite_function(content, num_threads)
  except (OSError, ValueError) as e:
    raise DeployError(f'cannot load the TFLite file {path} ({e})') from e


def outputs_in_batches(run, images, batch, progress=None):
  """{output name: NumPy} of run over images, `batch` at a time; `progress(images done)`, if
  given, hears after each batch."""
  parts = []
  for start in range(0, len(images), batch):
    parts.append(run(images[start:start + batch]))
    if progress is not None:
      progress(min(batch, len(images) - start))
  return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
