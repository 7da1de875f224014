"""What a deployed model costs: latency of every model on real runtimes, side by side.

    make deploy-deps
    python bench/latency.py --models=all --runs=runs/budget1_m20k,runs/tutorial_fast \
        --data_dir=data --out=bench/latency

The candidates: each model of --models (the registry's names, or `all`) at its initial
weights, since these runtimes do the same work on the same shapes whatever the weights' values
(the latency of a trained model is that of its architecture; its precision comes from a run),
and each run of --runs (a cifar10_train.py or compress/prune.py folder) at its newest
checkpoint with its EMA weights. Each is prepared once into --work_dir, which is kept, so a
second call reuses it: an export of cifar10_export.py (SavedModel, float and int8 TFLite,
ONNX) and our int8 file (compress/quantize.py's quantization, 500 calibration images).

The runtimes: TFLite float and int8 (TensorFlow's interpreter, XNNPACK), the SavedModel in
TensorFlow, ONNX Runtime (CPU), and our NumPy int8 runner (compress/int8.py, one BLAS thread
per worker thread). Every one takes uint8 images [N, 32, 32, 3] and does the preprocessing
itself, so each figure is the whole cost of classifying the images.

For each thread count of --threads a fresh process (TensorFlow's thread pools are fixed when
it starts) times every candidate on every runtime at each batch size of --batch_sizes: one
untimed warm-up call, then --rounds rounds in which the candidates take turns, each timing
calls on --images images; the figure is the median of the rounds, in milliseconds per image
and per call. Each run is also scored on the 10,000 test images by every runtime (precision
@ 1). Writes <--out>.json (every figure) and <--out>.md (a table per thread count). A
benchmark, not a test.
"""

import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # As compress/int8.py's runner.

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cifar10_env  # pylint: disable=g-import-not-at-top

cifar10_env.start()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

import cifar10_config
import cifar10_deploy
import cifar10_records
import models

RUNTIMES = ('tflite_float', 'tflite_int8', 'saved_model', 'onnx', 'ours_int8')
# Each runtime's file: in the candidate's export folder, or beside it (our int8 file).
RUNTIME_FILES = {'tflite_float': cifar10_deploy.FLOAT_TFLITE,
                 'tflite_int8': cifar10_deploy.INT8_TFLITE,
                 'saved_model': cifar10_deploy.SAVED_MODEL, 'onnx': cifar10_deploy.ONNX_FILE,
                 'ours_int8': 'int8.npz'}
MANIFEST = 'candidates.json'

_MODELS = flags.DEFINE_list('models', [], 'Registry models to time at their initial weights '
                            '(`all`: every one).')
_SHAPES = flags.DEFINE_multi_string(
    'shape', [], 'A registry model at other widths, at its initial weights: model:widths, e.g. '
    'budget1:conv1_1=8,conv1_2=16 (the --widths of cifar10_train.py); repeat the flag for '
    'several. To time the shapes a slimming could choose before training any.')
_RUNS = flags.DEFINE_list('runs', [], 'Run folders to time and score (newest checkpoint, EMA).')
_DATA_DIR = flags.DEFINE_string('data_dir', 'data', 'Folder or archive of CIFAR-10.')
_WORK_DIR = flags.DEFINE_string('work_dir', 'runs/latency', 'Where the exported files go '
                                '(kept and reused).')
_OUT = flags.DEFINE_string('out', 'bench/latency', 'Writes <out>.json and <out>.md.')
_THREADS = flags.DEFINE_list('threads', ['1', '2'], 'Thread counts, one process each.')
_BATCH_SIZES = flags.DEFINE_list('batch_sizes', ['1', '32'], 'Images per call.')
_ROUNDS = flags.DEFINE_integer('rounds', 5, 'Timed rounds per figure.', lower_bound=1)
_IMAGES = flags.DEFINE_integer('images', 64, 'Images per timing of one candidate in a round.',
                               lower_bound=1)
_RUNTIMES = flags.DEFINE_list('runtimes', list(RUNTIMES), 'Which runtimes to time.')
_PREPARE_ONLY = flags.DEFINE_boolean('prepare_only', False, 'Export the candidates into '
                                     '--work_dir and stop (the timing can come later).')
_CHILD = flags.DEFINE_integer('child_threads', None, 'Internal: time on this many threads and '
                              'write the figures to --child_out.')
_CHILD_OUT = flags.DEFINE_string('child_out', None, 'Internal: the child\'s JSON file.')


# --------------------------------------------------------------------------- preparing


def shape_name(model, widths):
  """A --shape candidate's name (and folder): budget1_conv1_1-8_conv1_2-16."""
  return '_'.join([model] + [f'{layer}-{width}' for layer, width in sorted(widths.items())])


def prepare(work_dir, model_names, run_dirs, batches_dir, log, shapes=(), onnx=True):
  """Exports each candidate into work_dir (skipping what is there); the manifest rows, each
  naming its folder relative to work_dir (so the written report holds no machine's path).
  `shapes`: (model, {layer: width}) candidates at initial weights."""
  import cifar10_export  # pylint: disable=g-import-not-at-top
  candidates = [('model', name, None, None) for name in model_names]
  candidates += [('shape', shape_name(model, widths), None, (model, widths))
                 for model, widths in shapes]
  candidates += [('run', os.path.basename(os.path.normpath(path)), path, None)
                 for path in run_dirs]
  rows = []
  for kind, name, run_dir, shape in candidates:
    folder = os.path.join(work_dir, f'{kind}_{name}')
    export_dir = os.path.join(folder, 'export')
    int8_file = os.path.join(folder, RUNTIME_FILES['ours_int8'])
    source = run_dir or initial_run(os.path.join(folder, 'initial'), *(shape or (name,)))
    if not os.path.exists(os.path.join(export_dir, cifar10_deploy.REPORT_FILE)):
      log(f'{name}: exporting {source}')
      # A run's export is checked on the whole test set (export.json: each file against the
      # evaluation); a model at its initial weights needs no check.
      cifar10_export.export_run(source, export_dir, batches_dir, cifar10_export.Options(
          tflite_int8=True, onnx=onnx, verify_images=10000 if run_dir else 0, overwrite=True),
          log=log)
    if not os.path.exists(int8_file):  # Deleted to quantize again: only this is redone.
      log(f'{name}: quantizing {source}')
      write_int8_file(source, int8_file, batches_dir)
    report = json.load(open(os.path.join(export_dir, cifar10_deploy.REPORT_FILE)))
    rows.append({'kind': kind, 'name': name, 'model': report['model'],
                 'widths': report.get('widths', ''), 'step': report['step'],
                 'folder': f'{kind}_{name}',
                 'bytes': dict(report['bytes'], **{RUNTIME_FILES['ours_int8']: os.path.getsize(int8_file)})})
  return rows


def initial_run(folder, model, widths=None):
  """A run folder holding `model` (at `widths`: {layer: channels}) at its initial weights
  (seed 0) as its step-0 checkpoint."""
  import cifar10_run  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if cifar10_run.newest_checkpoint(folder):
    return folder
  size = 32 if model.startswith('budget') else 24  # the zoo's input sides (docs/results.md)
  import cifar10_model  # pylint: disable=g-import-not-at-top
  config = cifar10_config.TrainConfig(train_dir=folder, model=model, image_size=size,
                                      widths=cifar10_model.format_widths(widths or {}))
  tf.random.set_seed(0)
  os.makedirs(folder, exist_ok=True)
  cifar10_run.write_config(config)
  cifar10_run.RunState(config, conv='direct').make_checkpoint().write(
      os.path.join(folder, 'ckpt-0'))
  return folder


def write_int8_file(run_dir, path, batches_dir):
  """Our int8 file of the run's newest checkpoint (EMA, BatchNorm folded), as
  compress/quantize.py quantizes it, without its scoring."""
  import cifar10_run  # pylint: disable=g-import-not-at-top
  from compress import calibration as calibration_lib  # pylint: disable=g-import-not-at-top
  from compress import quantize  # pylint: disable=g-import-not-at-top
  loaded = cifar10_run.load_inference_model(run_dir, ema=True, conv='direct',
                                            fold_batchnorm=True)
  calibration = calibration_lib.Calibration()
  images = calibration_lib.calibration_images(cifar10_records.load_split(batches_dir, 'train'),
                                              calibration, loaded.config.image_size)
  quantize.int8_model(loaded, images, calibration).save(path)


# --------------------------------------------------------------------------- runtimes


def runtime_function(row, runtime, threads):
  """A function from uint8 images [N, 32, 32, 3] to logits [N, 10] of the candidate."""
  folder = os.path.join(_WORK_DIR.value, row['folder'])
  export_dir = os.path.join(folder, 'export')
  if runtime == 'ours_int8':
    return ours_function(os.path.join(folder, RUNTIME_FILES[runtime]), threads)
  if runtime == 'saved_model':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    serve = tf.saved_model.load(cifar10_deploy.saved_model_dir(export_dir)).signatures[
        cifar10_deploy.SIGNATURE]
    return lambda images: serve(images=tf.constant(images))['logits'].numpy()
  run = cifar10_deploy.file_function(os.path.join(export_dir, RUNTIME_FILES[runtime]), threads)
  return lambda images: run(images)['logits']


def ours_function(path, threads):
  """Our runner on uint8 images: NumPy preprocessing, then the integer model; with threads > 1
  the batch is split among a pool of that many threads (one BLAS thread each)."""
  from compress import int8  # pylint: disable=g-import-not-at-top
  model = int8.Int8Model.load(path)
  size = model.meta['image_size']
  output = model.tensors[model.meta['output']]

  def logits(images):
    x_q = model.quantize_input(int8.eval_preprocess(images, size))
    return int8.dequantize(model.run(x_q), output['scale'], output['zero_point'])
  if threads == 1:
    return logits
  pool = concurrent.futures.ThreadPoolExecutor(threads)

  def split(images):
    parts = np.array_split(images, min(threads, len(images)))
    return np.concatenate(list(pool.map(logits, parts)))
  return split


# --------------------------------------------------------------------------- timing


def time_all(rows, runtimes, threads, batch_sizes, rounds, images):
  """{(candidate, runtime, batch): [ms per image of each round]}, the candidates in turns."""
  test = cifar10_records.read_split(_DATA_DIR.value, 'test').images
  functions = {(row['name'], runtime): runtime_function(row, runtime, threads)
               for row in rows for runtime in runtimes}
  figures = {}
  for batch in batch_sizes:
    calls = max(1, images // batch)
    batches = [test[i * batch:(i + 1) * batch] for i in range(calls)]
    for key, run in functions.items():
      run(batches[0])  # warm-up: XNNPACK's packing, TensorFlow's tracing, first allocations
    for _ in range(rounds):
      for key, run in functions.items():
        start = time.perf_counter()
        for images_in in batches:
          run(images_in)
        seconds = time.perf_counter() - start
        figures.setdefault(key + (batch,), []).append(1000 * seconds / (calls * batch))
  return figures


def child(threads):
  """Times every candidate of the manifest on `threads` threads; writes the figures."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  rows = json.load(open(os.path.join(_WORK_DIR.value, MANIFEST)))
  figures = time_all(rows, _RUNTIMES.value, threads, [int(b) for b in _BATCH_SIZES.value],
                     _ROUNDS.value, _IMAGES.value)
  with open(_CHILD_OUT.value, 'w', encoding='utf-8') as f:
    json.dump([{'name': name, 'runtime': runtime, 'batch': batch, 'threads': threads,
                'ms_per_image_rounds': values, 'ms_per_image': statistics.median(values)}
               for (name, runtime, batch), values in figures.items()], f)


def scores(rows, runtimes, test):
  """For the candidates that are runs: [{name, runtime, precision @ 1 on the test split,
  same_class: {other runtime: share of the images given the same class}}]."""
  result = []
  for row in rows:
    if row['kind'] != 'run':
      continue
    classes = {}
    for runtime in runtimes:
      run = runtime_function(row, runtime, threads=2)
      logits = cifar10_deploy.outputs_in_batches(lambda x, run=run: {'logits': run(x)},
                                                 test.images, 500)['logits']
      classes[runtime] = np.argmax(logits, axis=1)
    for runtime, predicted in classes.items():
      result.append({'name': row['name'], 'runtime': runtime,
                     'precision': float(np.mean(predicted == test.labels)),
                     'same_class': {other: float(np.mean(predicted == theirs))
                                    for other, theirs in classes.items() if other != runtime}})
  return result


# --------------------------------------------------------------------------- report


def markdown(rows, timings, scored, threads_list, batch_sizes, runtimes):
  """A table per thread count: a row per candidate and runtime, ms per image per batch size;
  then, for the runs, how often each runtime gives our int8 runner's and the SavedModel's
  class."""
  scores = {(s['name'], s['runtime']): s['precision'] for s in scored}
  lines = []
  by_key = {(t['name'], t['runtime'], t['batch'], t['threads']): t['ms_per_image']
            for t in timings}
  for threads in threads_list:
    lines += ['', f'**{threads} thread{"s" if threads > 1 else ""}** (ms per image; batch '
              + ', '.join(str(b) for b in batch_sizes) + ')', '',
              '| candidate | model | runtime | bytes | precision @ 1 | '
              + ' | '.join(f'batch {b}' for b in batch_sizes) + ' |',
              '|---|---|---|---|---|' + '---|' * len(batch_sizes)]
    for row in rows:
      for runtime in runtimes:
        size = row['bytes'].get(RUNTIME_FILES[runtime])
        score = scores.get((row['name'], runtime))
        cells = [f'{by_key[(row["name"], runtime, b, threads)]:.3f}' for b in batch_sizes]
        lines.append(f'| {row["kind"]} {row["name"]} | {row["model"]} | {runtime} | '
                     f'{size:,} | {"" if score is None else f"{100 * score:.2f} %"} | '
                     + ' | '.join(cells) + ' |')
  if scored:
    lines += ['', '**The runs, each runtime against the others** (share of the 10,000 test '
              'images given the same class)', '',
              '| run | runtime | precision @ 1 | same class as ours_int8 | same class as '
              'saved_model |', '|---|---|---|---|---|']
    for s in scored:
      same = [s['same_class'].get(other) for other in ('ours_int8', 'saved_model')]
      lines.append(f'| {s["name"]} | {s["runtime"]} | {100 * s["precision"]:.2f} % | '
                   + ' | '.join('' if v is None else f'{100 * v:.2f} %' for v in same) + ' |')
  return '\n'.join(lines).strip() + '\n'


def machine():
  """The CPU's model name and core count (Linux), else the architecture."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
    return f'{names[0]}, {os.cpu_count()} cores'
  except (OSError, IndexError):
    return f'{os.uname().machine}, {os.cpu_count()} cores'


def parse_shapes(values):
  """[(model, {layer: width})] of the --shape values; exits with one line on a bad one."""
  import cifar10_model  # pylint: disable=g-import-not-at-top
  shapes = []
  for value in values:
    model, _, widths = value.partition(':')
    try:
      if model not in models.MODELS:
        raise ValueError(f'{model!r} is no registry model')
      parsed = dict(cifar10_model.parse_widths(widths))
      with cifar10_model.shapes_only():
        models.build(model, 32, widths=parsed)  # A layer the model cannot narrow fails here.
    except ValueError as e:
      sys.exit(f'error: --shape={value}: {e} (expected model:layer=channels,...)')
    shapes.append((model, parsed))
  return shapes


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  if _CHILD.value:
    return child(_CHILD.value)
  unknown = sorted(set(_RUNTIMES.value) - set(RUNTIMES))
  names = list(models.MODELS) if _MODELS.value == ['all'] else _MODELS.value
  unknown_models = sorted(set(names) - set(models.MODELS))
  shapes = parse_shapes(_SHAPES.value)
  if unknown or unknown_models or not (names or _RUNS.value or shapes):
    sys.exit(f'error: --runtimes takes {", ".join(RUNTIMES)}; --models takes registry names '
             'or all; give --models, --shape or --runs '
             f'(unknown: {", ".join(unknown + unknown_models) or "none"})')
  log = lambda message: print(f'{time.strftime("%H:%M:%S")} {message}', flush=True)
  import cifar10_export  # pylint: disable=g-import-not-at-top
  import cifar10_run  # pylint: disable=g-import-not-at-top
  try:
    for run_dir in _RUNS.value:  # A mistyped run before minutes of exports, not after them.
      cifar10_run.latest_run(run_dir, '--runs')
    batches_dir = cifar10_records.find_batches_dir(_DATA_DIR.value)
    os.makedirs(_WORK_DIR.value, exist_ok=True)
    rows = prepare(_WORK_DIR.value, names, _RUNS.value, batches_dir, log, shapes,
                   onnx='onnx' in _RUNTIMES.value)
  except (OSError, cifar10_config.ConfigError, cifar10_records.DataError,
          cifar10_run.UnreadableCheckpoint, cifar10_export.ExportError,
          cifar10_deploy.DeployError) as e:
    sys.exit(f'error: {e}')
  with open(os.path.join(_WORK_DIR.value, MANIFEST), 'w', encoding='utf-8') as f:
    json.dump(rows, f, indent=1)
  if _PREPARE_ONLY.value:
    log(f'prepared {len(rows)} candidates in {_WORK_DIR.value}')
    return None
  timings = []
  threads_list = [int(t) for t in _THREADS.value]
  for threads in threads_list:
    log(f'timing {len(rows)} candidates x {len(_RUNTIMES.value)} runtimes on {threads} '
        'thread(s), in a fresh process')
    out = os.path.join(_WORK_DIR.value, f'timings_{threads}.json')
    subprocess.run([sys.executable, __file__, f'--child_threads={threads}', f'--child_out={out}',
                    f'--work_dir={_WORK_DIR.value}', f'--data_dir={_DATA_DIR.value}',
                    f'--batch_sizes={",".join(_BATCH_SIZES.value)}', f'--rounds={_ROUNDS.value}',
                    f'--images={_IMAGES.value}', f'--runtimes={",".join(_RUNTIMES.value)}'],
                   check=True)
    timings += json.load(open(out))
  log('scoring the runs on the test set with every runtime')
  scored = scores(rows, _RUNTIMES.value, cifar10_records.load_split(batches_dir, 'test'))
  report = {'machine': machine(), 'rounds': _ROUNDS.value, 'images': _IMAGES.value,
            'candidates': rows, 'timings': timings, 'precision': scored}
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value + '.json', 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=1)
  table = markdown(rows, timings, scored, threads_list, [int(b) for b in _BATCH_SIZES.value],
                   _RUNTIMES.value)
  with open(_OUT.value + '.md', 'w', encoding='utf-8') as f:
    f.write(table)
  print(table)
  return None


if __name__ == '__main__':
  app.run(main)
