"""Post-training int8 quantization by hand, checked against integer arithmetic.

    python compress/quantize.py --checkpoint_dir=runs/tutorial --out_dir=runs/tutorial_int8

Loads the latest checkpoint of a cifar10_train.py (or compress/prune.py) run with its EMA
shadows, calibrates every activation's range on --calibration_images training images
(min/max, or a percentile that ignores outliers), quantizes (docs/reference.md; Jacob et
al. 2018): weights symmetric int8 per output channel (convs and dense layers alike: one code
path, and a dense layer's rows differ in scale as much as a conv's filters), activations
asymmetric int8 per tensor, biases int32 at scale s_x * s_w. It then scores the test set three
ways: float, fake-quant in TensorFlow (quantize-dequantize at every tensor boundary, float
kernels; compress/fake_quant.py) and integer-only (compress/int8.py), compares the last two op
by op on the same int8 inputs, exports the model to <out_dir>/model_int8.npz, and runs the
NumPy-only runner on that file in its own process, which must give the same predictions.
Report: printed and <out_dir>/quant_report.json.

Tensors that only move values (max-pool, flatten) keep their input's scale; the branches of
a concat are requantized straight to the concat's scale, as TFLite does.
"""

import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time

if __package__ in (None, ''):  # Run as `python compress/quantize.py`: the project root, not this
  # folder, first on the path (its modules must not shadow others, e.g. the stdlib's trace).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

import cifar10_config
import cifar10_flags
import cifar10_records
import cifar10_run
import cifar10_scoring
from compress import calibration as calibration_lib
from compress import fake_quant
from compress import int8
from compress import int8_file
from compress import qat_ops
from compress import sparse
from compress import trace

MODEL_FILE = 'model_int8.npz'
CODED_SUFFIX = '.xz'  # model_int8.npz.xz: the file coded with --coding=lzma
RUNNER_PREDICTIONS = 'runner_predictions.npy'
REPORT_FILE = 'quant_report.json'
VALUE_OPS = ('max_pool', 'flatten')  # ops whose output keeps the input's scale
# A sigmoid's output lies in (0, 1): a fixed scale of 1/256 from -128 (TFLite's choice).
SIGMOID_PARAMS = {'scale': 1.0 / 256, 'zero_point': -128}
COMPARE_IMAGES = 200  # test images of the layer-by-layer check
ZERO_CHANNEL_MULTIPLIER = 2.0 ** -16  # M of an all-zero channel, so its bias stays precise
HALF_TINY = float(np.finfo(np.float16).tiny)  # 2^-14, float16's smallest normal number
INT16_MAX = 32767  # a zero channel's bias is kept within int16 (quantize_weights)
# How weight scales are kept: float32 as computed (TFLite's: its int8 export then holds the
# same integers), or rounded up onto the float16 grid (2 bytes each in the file).
WEIGHT_SCALES = ('float32', 'float16')
RANGES = ('auto', 'calibrated')  # --ranges


# --------------------------------------------------------------------------- quantization


def value_range(values, calibration):
  """(low, high) of a calibration tensor, widened to contain 0."""
  flat = np.asarray(values).reshape(-1)
  if calibration.method == 'minmax':
    low, high = flat.min(), flat.max()
  else:
    low, high = np.percentile(flat, [100 - calibration.percentile, calibration.percentile])
  return min(float(low), 0.0), max(float(high), 0.0)


def affine_params(low, high):
  """{'scale', 'zero_point'} mapping [low, high] (0 inside) onto [-128, 127], 0 exact."""
  scale = (high - low) / (int8.INT8_MAX - int8.INT8_MIN) or 1.0
  zero_point = int(np.clip(round(int8.INT8_MIN - low / scale), int8.INT8_MIN, int8.INT8_MAX))
  return {'scale': scale, 'zero_point': zero_point}


def tensor_params(ops, ranges):
  """Every tensor's scale and zero point from its calibrated (low, high).

  In three passes: each computing op's output from its own range (a sigmoid's is fixed,
  SIGMOID_PARAMS); then a concat's inputs take the concat's; then max-pool and flatten
  outputs copy their (now final) input's.
  """
  params = {trace.INPUT: affine_params(*ranges[trace.INPUT])}
  producer = {op['output']: op for op in ops}
  for op in ops:
    if op['type'] == 'sigmoid':
      params[op['output']] = dict(SIGMOID_PARAMS)
    elif op['type'] not in VALUE_OPS:
      params[op['output']] = affine_params(*ranges[op['output']])
  for op in ops:
    if op['type'] == 'concat':
      for tensor in op['inputs']:
        if producer.get(tensor, {}).get('type') not in int8_file.LINEAR_OPS:
          raise trace.QuantizationError(
              f'concat {op["name"]}: its input {tensor} does not come from a conv or dense '
              'layer, which could requantize it')
        params[tensor] = params[op['output']]
  for op in ops:
    if op['type'] in VALUE_OPS:
      params[op['output']] = params[op['inputs'][0]]
  return params


def half_grid_scales(scale):
  """float32 weight scales: each rounded *up* to the nearest float16 number when every one
  of them is a normal float16, else float32 as they are.

  Rounding up never clips a weight (max |w| / s <= 127) and costs under 2^-10 of the
  channel's range; the file then stores the scales in 2 bytes exactly (sparse.narrow).
  A scale under float16's smallest normal, 2^-14 (a near-dead channel), would lose relative
  precision on its grid, so that layer keeps float32 scales.
  """
  with np.errstate(over='ignore'):  # Over float16's 65,504: inf, and float32 below.
    half = scale.astype(np.float16)
    half = np.where(half < scale, np.nextafter(half, np.float16(np.inf)), half)
  if np.all(np.isfinite(half)) and half.min() >= HALF_TINY:
    return half.astype(np.float32)
  return scale.astype(np.float32)


def quantize_weights(kernel, bias, input_scale, output_scale, weight_scales='float32', bits=8,
                     weight_range='max'):
  """Symmetric per-output-channel int8 weights and int32 biases at scale s_x * s_w.

  s_w = max |w| / 127 per channel in float32, as TFLite computes it, or with
  weight_scales='float16' on the float16 grid where it can be (half_grid_scales). With
  `bits` below 8 the weights take the levels -Q..Q, Q = 2^(bits-1) - 1, and
  weight_range='mse' clips each channel where its rounding error is least
  (compress/qat_ops.channel_scales, the rule quantization-aware training used).
  An all-zero (pruned) channel's weights are 0 at any scale; it gets the smallest s_w that
  is at least 2^-16 * s_y / s_x (its bias exact to 2^-16 of an output step), 2^-14
  (float16's smallest normal number) and |b| / (32767 s_x) (its int32 bias fits int16, so the
  file can store the layer's biases in 2 bytes). The bias's step is then at most
  max(2^-16 s_y, 2^-14 s_x, |b| / 32767): far below the half step of the final rounding.

  Returns:
    {'weights': int8, 'bias': int32, 'weight_scale': float32 [C_out]}.

  Raises:
    ValueError: weight_scales is not one of WEIGHT_SCALES.
    trace.QuantizationError: a bias does not fit in int32 at its scale.
  """
  if weight_scales not in WEIGHT_SCALES:
    raise ValueError(f'weight_scales={weight_scales!r}: expected one of {WEIGHT_SCALES}')
  kernel = np.asarray(kernel, np.float64)
  columns = kernel.reshape(-1, kernel.shape[-1])
  scale = qat_ops.channel_scales(columns, bits, weight_range)
  levels = qat_ops.weight_max(bits)
  zero = scale == 0
  scale[zero] = np.maximum(
      max(ZERO_CHANNEL_MULTIPLIER * output_scale / input_scale, HALF_TINY),
      np.abs(np.asarray(bias, np.float64)[zero]) / (input_scale * INT16_MAX))
  scale = half_grid_scales(scale) if weight_scales == 'float16' else scale.astype(np.float32)
  weights = np.clip(np.round(kernel / scale), -levels, levels)
  bias_q = np.round(np.asarray(bias, np.float64) / (input_scale * scale.astype(np.float64)))
  if np.abs(bias_q).max(initial=0) >= 2**31:
    raise trace.QuantizationError(f'a bias of {np.abs(bias).max():.3g} does not fit in '
                                  f'int32 at scale {input_scale:.3g} x weight scale')
  return {'weights': weights.astype(np.int8), 'weight_scale': scale,
          'bias': bias_q.astype(np.int32)}


def quantize_model(model, calibration_images, calibration, weight_scales='float32',
                   trained=None, weight_bits=(8, 8)):
  """The int8 form of `model` (its current weights) as an int8.Int8Model's (meta, arrays);
  `weight_scales` one of WEIGHT_SCALES.

  Args:
    trained: a QAT run's Trained ranges and weight rules, used instead of calibration
      (calibration_images may then be None); None: calibrate.
    weight_bits: without `trained`, (bits of the weights, bits of the first and last
      layers'): max |w| scales at 8 bits, least-squared-error ones below (qat_ops).
  """
  ops, leaves, output = trace.trace_ops(model)
  if trained is None:
    values = trace.run_float(ops, leaves, calibration_images)
    ranges = {tensor: value_range(value, calibration) for tensor, value in values.items()}
    bits = qat_ops.layer_bits(ops, *weight_bits)
    weight_range = 'max' if min(bits.values()) == 8 else 'mse'
  else:
    ranges = trained.ranges_for(ops)
    bits, weight_range = trained.layer_bits, trained.weight_range
  params = tensor_params(ops, ranges)
  arrays = {}
  for op, leaf in zip(ops, leaves):
    if op['type'] in int8_file.LINEAR_OPS:
      kernel = leaf.kernel.numpy()  # a depthwise [k, k, C, 1] is stored [k, k, C]
      parts = quantize_weights(kernel[..., 0] if op['type'] == 'depthwise' else kernel,
                               leaf.bias.numpy(),
                               params[op['inputs'][0]]['scale'], params[op['output']]['scale'],
                               weight_scales, bits.get(op['name'], 8), weight_range)
      arrays.update({f'{op["name"]}/{key}': value for key, value in parts.items()})
  meta = {'input': trace.INPUT, 'output': output, 'ops': ops, 'tensors': params,
          'calibration': ('trained ranges' if trained else dataclasses.asdict(calibration)),
          'weight_scales': weight_scales, 'image_size': model.input_shape[0],
          'weight_bits': {op['name']: bits.get(op['name'], 8) for op in ops
                          if op['type'] in int8_file.LINEAR_OPS}, 'weight_range': weight_range}
  return meta, arrays


@dataclasses.dataclass(frozen=True)
class Trained:
  """What a quantization-aware training run fixes for its quantization (qat.json and its
  checkpoint): the tracked activation ranges and the weights' bits and scaling rule."""
  ranges: dict  # {tensor: (low, high)}
  layer_bits: dict  # {conv/dense name: bits}
  weight_range: str  # qat_ops.WEIGHT_RANGES

  def ranges_for(self, ops):
    """The ranges, checked to be those of this op list's tensors."""
    expected = qat_ops.tracked_tensors(ops)
    if sorted(expected) != sorted(self.ranges):
      raise trace.QuantizationError(
          f'the QAT run tracked ranges of {len(self.ranges)} tensors and this model has '
          f'{len(expected)}: its qat.json belongs to another model')
    return dict(self.ranges)


def trained_quantization(checkpoint_dir, checkpoint):
  """The Trained of a QAT run's checkpoint, or None for a run without qat.json."""
  settings = qat_ops.read_settings(checkpoint_dir)
  if settings is None:
    return None
  return Trained(ranges=qat_ops.read_ranges(checkpoint, settings['tensors']),
                 layer_bits=settings['layer_bits'], weight_range=settings['weight_range'])


def int8_model(loaded, calibration_images, calibration, weight_scales='float32', trained=None,
               weight_bits=(8, 8)):
  """The int8.Int8Model of a cifar10_run.InferenceModel (BatchNorm folded, plain convs);
  `trained`, `weight_bits`: see quantize_model.

  Raises:
    trace.QuantizationError: the model cannot be run exactly in integers.
  """
  meta, arrays = quantize_model(loaded.model, calibration_images, calibration, weight_scales,
                                trained, weight_bits)
  meta.update(model=loaded.config.model, image_size=loaded.config.image_size,
              step=loaded.step, weights=loaded.weights)
  try:
    return int8.Int8Model(meta, arrays)
  except ValueError as e:
    raise trace.QuantizationError(str(e)) from e


# --------------------------------------------------------------------------- checks


def layer_scales(int_model):
  """Per op: input/output scale and zero point, and the range of per-channel weight scales."""
  rows = []
  for op in int_model.ops:
    row = {'name': op['name'], 'type': op['type'],
           'input': int_model.tensors[op['inputs'][0]], 'output': int_model.tensors[op['output']]}
    if op['type'] in int8_file.LINEAR_OPS:
      scales = int_model.arrays[f'{op["name"]}/weight_scale']
      row.update(weight_scale_min=float(scales.min()), weight_scale_max=float(scales.max()),
                 accumulator=np.dtype(op['matrix'].dtype).name)
    rows.append(row)
  return rows


def weight_zeros(arrays):
  """The share of zeros among the int8 weights of every conv, depthwise and dense layer."""
  weights = [array for name, array in arrays.items() if name.endswith('/weights')]
  total = sum(array.size for array in weights)
  return sum(int(np.count_nonzero(array == 0)) for array in weights) / max(total, 1)


def part_of(entry):
  """Which part of a model file an entry of sparse.pack belongs to: positions (the bitmasks
  and shapes of sparse arrays), values (the weights, dense or a sparse array's nonzeros),
  scales or biases."""
  name = entry.split('/')
  if name[1:2] == ['weights']:
    return 'positions' if name[2:3] in (['mask'], ['shape']) else 'values'
  return {'weight_scale': 'scales', 'bias': 'biases'}.get(name[1] if len(name) > 1 else '',
                                                          'other')


def size_breakdown(arrays):
  """{part: {'stored': bytes as stored, 'lzma': that part coded alone by LZMA, 'huffman': a
  Huffman code of its bytes}} of the model's arrays (part_of), and their total."""
  parts = {}
  for entry, array in sparse.pack(arrays).items():
    parts.setdefault(part_of(entry), []).append(np.ascontiguousarray(array).tobytes())
  rows = {part: {'stored': sum(len(c) for c in chunks),
                 'lzma': sparse.lzma_bytes(b''.join(chunks)),
                 'huffman': sparse.huffman_bytes(b''.join(chunks))}
          for part, chunks in sorted(parts.items())}
  rows['total'] = {key: sum(row[key] for row in rows.values()) for key in ('stored', 'lzma',
                                                                          'huffman')}
  return rows


def model_bytes(float_params, arrays, stored_payload, path):
  """Sizes: float32 dense and int8 dense payloads (int8 dense: int32 biases and float32
  scales, as in memory and as TFLite stores them), the int8 payload as stored under the
  issue's name `int8_sparse` (sparse.save's return value: each array narrowed where exact,
  so biases that fit int16 take 2 bytes (and float16-grid scales 2), and sparse where that is
  smaller), and the file."""
  return {'float32_dense': float_params * sparse.FLOAT32_BYTES,
          'int8_dense': sparse.nbytes(arrays),
          'int8_sparse': stored_payload,
          'int8_file': os.path.getsize(path)}


# --------------------------------------------------------------------------- binary


def quantize_run(checkpoint_dir, out_dir, batches_dir, calibration, use_ema=True,
                 compare_images=COMPARE_IMAGES, log=lambda message: None, conv='direct',
                 weight_scales='float32', ranges='auto', coding='none', weight_bits=None):
  """Quantizes the latest checkpoint of a run, scores it three ways, exports it; the report.

  `log(message)` hears about each stage (the binary prints them with a timestamp); `conv`
  is how the float model computes its convolutions (cifar10_spectral): direct by default,
  as for any export, so calibration and the fake-quant reference run the plain convolution
  that the integer path computes. `ranges`: 'auto' takes a quantization-aware training
  run's tracked ranges and weight rules (compress/qat.py), and calibrates any other run;
  'calibrated' always calibrates (8-bit weights). `coding`: sparse.CODINGS ('lzma' writes
  model_int8.npz.xz, the whole file entropy-coded). `weight_bits`: (bits, bits of the
  first and last layers) of post-training quantization, None: (8, 8); refused for a QAT run
  under ranges='auto' (its own bits hold).
  """
  config, checkpoint = cifar10_run.latest_run(checkpoint_dir, '--checkpoint_dir')
  log(f'restoring {checkpoint} and scoring the float model')
  test = cifar10_records.load_split(batches_dir, 'test')
  evaluator = cifar10_scoring.Evaluator(config, test, conv=conv)
  loaded = cifar10_run.load_inference_model(checkpoint_dir, ema=use_ema, fold_batchnorm=True,
                                            checkpoint=checkpoint, state=evaluator)
  float_precision = _float_precision(evaluator, log)
  model = loaded.model  # BatchNorm folded, plain convs: what int8 computes.
  float_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  trained, calibration_data = _ranges(checkpoint_dir, loaded, batches_dir, calibration,
                                      ranges, log)
  if trained is not None and weight_bits is not None:
    raise cifar10_config.ConfigError(f'{checkpoint_dir}: a QAT run keeps its own weight bits')
  int_model = int8_model(loaded, calibration_data, calibration, weight_scales, trained,
                         weight_bits or (8, 8))
  meta, arrays = int_model.meta, int_model.arrays
  log('scoring the integer path (NumPy, in this process)')
  int_precision, _, predictions = int8.evaluate(int_model, test.images, test.labels, log=log)
  log(f'int8 {int_precision:.4f}; scoring the fake-quant path and comparing the ops')
  ops, leaves, _ = trace.trace_ops(model)
  fake_quant.load_weights(leaves, ops, arrays, meta['tensors'])
  fake_precision = fake_quant.precision(ops, leaves, meta['tensors'], evaluator.images.numpy(),
                                        test.labels, log=log)
  compared = int8.eval_preprocess(test.images[:compare_images], config.image_size)
  layers = fake_quant.compare_layers(ops, leaves, int_model, compared)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, MODEL_FILE + (CODED_SUFFIX if coding == 'lzma' else ''))
  stored_payload = int_model.save(path, coding)
  log(f'wrote {path}; running the NumPy runner on it in its own process')
  runner = run_runner(path, os.path.dirname(batches_dir), out_dir, log)
  return {'checkpoint': loaded.checkpoint, 'model': config.model, 'step': meta['step'],
          'weights': meta['weights'], 'calibration': meta['calibration'],
          'weight_scales': weight_scales, 'weight_bits': meta['weight_bits'],
          'weight_range': meta['weight_range'], 'num_examples': len(test), 'precision': {
              'float': float_precision, 'fake_quant': fake_precision, 'int8': int_precision,
              'runner': runner['precision']},
          'runner_same_predictions': bool(np.array_equal(runner['predictions'], predictions)),
          'runner': {k: v for k, v in runner.items() if k != 'predictions'},
          'max_step_difference': max(row['max_step_difference'] for row in layers),
          'layers': layers, 'scales': layer_scales(int_model),
          'bytes': model_bytes(float_params, arrays, stored_payload, path), 'coding': coding,
          'weight_zeros': weight_zeros(arrays),
          'size_breakdown': size_breakdown(arrays), 'model_file': path}


def _float_precision(evaluator, log):
  """The float model's precision @ 1, logged with how long it took: one tf.function call
  over the whole test set (cifar10_scoring.Evaluator), so no progress lines meanwhile."""
  start = time.perf_counter()
  precision, count = evaluator.precision()
  seconds = time.perf_counter() - start
  log(f'float {precision:.4f} ({count:,} images in {int8.format_eta(seconds)}, '
      f'{count / max(seconds, 1e-9):,.0f} images/s)')
  return precision


def _ranges(checkpoint_dir, loaded, batches_dir, calibration, ranges, log):
  """(Trained or None, calibration images or None): a QAT run's trained ranges with
  ranges='auto', else the calibration images."""
  trained = (trained_quantization(checkpoint_dir, loaded.checkpoint) if ranges == 'auto'
             else None)
  if trained is not None:
    log(f'the ranges and weight rules of quantization-aware training ({qat_ops.SETTINGS_FILE}): '
        f'weight bits {sorted(set(trained.layer_bits.values()))}, {trained.weight_range} scales')
    return trained, None
  log(f'calibrating on {calibration.images} training images')
  return None, calibration_lib.calibration_images(
      cifar10_records.load_split(batches_dir, 'train'), calibration, loaded.config.image_size)


def run_runner(model_file, data_dir, out_dir, log=lambda message: None):
  """Runs compress/int8.py on the exported file in its own process (no TensorFlow there).

  `log(message)` hears its result and duration when it ends (the process prints only its
  JSON line, so there are no progress lines meanwhile).

  Returns:
    The runner's JSON line as a dict, plus its `predictions` (int64 [N]).
  """
  predictions_file = os.path.join(out_dir, RUNNER_PREDICTIONS)
  start = time.perf_counter()
  result = subprocess.run(
      [sys.executable, int8.__file__, f'--model_file={model_file}', f'--data_dir={data_dir}',
       f'--predictions_out={predictions_file}'], capture_output=True, text=True, check=False)
  if result.returncode:
    raise trace.QuantizationError(f'the NumPy runner failed: {result.stderr.strip()[-500:]}')
  report = json.loads(result.stdout.strip().splitlines()[-1])
  report['predictions'] = np.load(predictions_file)
  log(f'runner {report["precision"]:.4f} in {int8.format_eta(time.perf_counter() - start)}')
  return report


def format_report(report):
  """The printed form of `quantize_run`'s report."""
  p, b = report['precision'], report['bytes']
  lines = [f'{report["model"]} step {report["step"]} ({report["weights"]} weights), '
           f'calibration {report["calibration"]}',
           f'{"op":<20} {"type":<9} {"out scale":>10} {"zp":>5} {"max diff":>9} '
           f'{"share off":>9}']
  for scales, check in zip(report['scales'], report['layers']):
    lines.append(f'{scales["name"]:<20} {scales["type"]:<9} {scales["output"]["scale"]:>10.5f} '
                 f'{scales["output"]["zero_point"]:>5} {check["max_step_difference"]:>9} '
                 f'{check["fraction_different"]:>9.1e}')
  lines.append(f'precision @ 1 on {report["num_examples"]:,} test images: float '
               f'{p["float"]:.4f}, fake-quant {p["fake_quant"]:.4f}, int8 {p["int8"]:.4f}, '
               f'runner {p["runner"]:.4f} (same predictions: {report["runner_same_predictions"]})')
  lines.append(f'bytes: float32 dense {b["float32_dense"]:,}; int8 dense {b["int8_dense"]:,} '
               f'({b["float32_dense"] / b["int8_dense"]:.2f}x smaller); as stored '
               f'{b["int8_sparse"]:,} ({b["float32_dense"] / b["int8_sparse"]:.2f}x); file '
               f'{b["int8_file"]:,} ({b["float32_dense"] / b["int8_file"]:.2f}x)')
  parts = report['size_breakdown']
  lines.append(f'{"part":<10} {"stored":>10} {"lzma":>10} {"huffman":>10}  (bytes; each part '
               f'coded alone; file coding: {report["coding"]})')
  for part, row in parts.items():
    lines.append(f'{part:<10} {row["stored"]:>10,} {row["lzma"]:>10,} {row["huffman"]:>10,}')
  runner = report['runner']
  lines.append(f'NumPy runner: {runner["images_per_sec"]:,.0f} images/s (batches of '
               f'{runner["batch_size"]}, {runner["threads"]} threads, preprocessing included)')
  return '\n'.join(lines)


def run(values):
  """Quantizes as the flag values say; returns what sys.exit takes (None: done)."""
  checkpoint_dir = values['checkpoint_dir']
  out_dir = values['out_dir'] or os.path.join(checkpoint_dir, 'int8')
  calibration = calibration_lib.Calibration(images=values['calibration_images'],
                                            method=values['calibration'],
                                            percentile=values['percentile'])
  try:
    cifar10_run.latest_run(checkpoint_dir, '--checkpoint_dir')  # Before the data is sought,
    qat = qat_ops.read_settings(checkpoint_dir)  # and a QAT run's settings before scoring.
    if qat is not None and values['ranges'] == 'auto' and _weight_bits(values):
      raise cifar10_config.ConfigError(
          f'--weight_bits: {checkpoint_dir} is a quantization-aware training run, whose '
          f'{qat_ops.SETTINGS_FILE} fixes its bits; add --ranges=calibrated to quantize it '
          'after training otherwise')
    try:  # Before minutes of scoring, not after.
      os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
      raise cifar10_config.ConfigError(f'cannot create --out_dir={out_dir} ({e})') from e
    report = quantize_run(checkpoint_dir, out_dir, cifar10_flags.batches_dir(values),
                          calibration, use_ema=values['ema'],
                          compare_images=values['compare_images'], conv=values['conv'],
                          weight_scales=values['weight_scales'], ranges=values['ranges'],
                          coding=values['coding'], weight_bits=_weight_bits(values),
                          log=lambda message: print(f'{datetime.datetime.now()}: {message}',
                                                    flush=True))
  except (cifar10_records.DataError, cifar10_config.ConfigError,
          cifar10_run.UnreadableCheckpoint, trace.QuantizationError) as e:
    return f'error: {e}'
  except KeyboardInterrupt:
    return 130  # The model file is written whole or not at all (compress/sparse.py).
  cifar10_run.write_json(os.path.join(out_dir, REPORT_FILE), report)
  print(format_report(report))
  return None


def _weight_bits(values):
  """(bits, first and last layers' bits) of --weight_bits and --edge_weight_bits, or None
  when neither was given (8-bit, or a QAT run's own)."""
  if values['weight_bits'] is None and values['edge_weight_bits'] is None:
    return None
  bits = int(values['weight_bits'] or 8)
  return bits, int(values['edge_weight_bits'] or 8)


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the run-reading ones and this program's; {name: FlagHolder}."""
  d = calibration_lib.Calibration
  holders = cifar10_flags.define_data_flags(flag_values)
  # An export: the plain convolution by default.
  holders.update(cifar10_flags.define_run_flags(flag_values, conv='direct', what='quantize'))
  holders.update(
      out_dir=flags.DEFINE_string('out_dir', None, 'Where model_int8.npz and the report go; '
                                  'default <checkpoint_dir>/int8.', flag_values=flag_values),
      calibration_images=flags.DEFINE_integer('calibration_images', d.images,
                                              'Training images for the ranges.', lower_bound=1,
                                              upper_bound=cifar10_records.NUM_TRAIN_EXAMPLES,
                                              flag_values=flag_values),
      calibration=flags.DEFINE_enum('calibration', d.method, list(calibration_lib.METHODS),
                                    'minmax, or percentile (ignores outliers).',
                                    flag_values=flag_values),
      percentile=flags.DEFINE_float('percentile', d.percentile, 'Upper percentile of '
                                    '--calibration=percentile.', 50.0, 100.0,
                                    flag_values=flag_values),
      weight_scales=flags.DEFINE_enum('weight_scales', WEIGHT_SCALES[0], list(WEIGHT_SCALES),
                                      'float32: as TFLite computes them (its int8 export then '
                                      'holds the same integers); float16: rounded up onto the '
                                      'float16 grid, 2 bytes each in the file.',
                                      flag_values=flag_values),
      ranges=flags.DEFINE_enum('ranges', RANGES[0], list(RANGES), 'auto: the tracked ranges '
                               'and weight bits of a quantization-aware training run '
                               f'(compress/qat.py, its {qat_ops.SETTINGS_FILE}), calibration for '
                               'any other run; calibrated: calibrate any run, 8-bit weights.',
                               flag_values=flag_values),
      weight_bits=flags.DEFINE_enum('weight_bits', None, [str(b) for b in qat_ops.WEIGHT_BITS],
                                    'Post-training weight bits (default 8; below 8 with '
                                    'least-squared-error scales); a QAT run keeps its own.',
                                    flag_values=flag_values),
      edge_weight_bits=flags.DEFINE_enum('edge_weight_bits', None,
                                         [str(b) for b in qat_ops.WEIGHT_BITS],
                                         "Bits of the first and last layers' weights "
                                         '(default 8).', flag_values=flag_values),
      coding=flags.DEFINE_enum('coding', sparse.CODINGS[0], list(sparse.CODINGS),
                               'none: model_int8.npz as stored; lzma: model_int8.npz.xz, the '
                               'whole file entropy-coded (the runner reads both).',
                               flag_values=flag_values),
      compare_images=flags.DEFINE_integer('compare_images', COMPARE_IMAGES, 'Test images for '
                                          'the layer-by-layer check.', lower_bound=1,
                                          upper_bound=cifar10_records.NUM_TEST_EXAMPLES,
                                          flag_values=flag_values),
  )
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
