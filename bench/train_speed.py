"""Training and evaluation speed, side by side in one process (a benchmark, not a test).

    .venv/bin/python bench/train_speed.py --data_dir=data [--model=tutorial]

Times, for one model: (1) the bare train step on one fixed in-memory batch, (2) the full
loop exactly as cifar10_train.py runs it, (3) the input pipeline alone, (4) the same network
as a tf.keras.Sequential trained with model.fit on the same pipeline, (5) evaluation of the
whole test set; with --precision given twice or more, 1 and 2 again in each further precision.
Each figure is the median over its timed windows after a warm-up; 1, 2 and 4
run in turn --rounds times, so the machine's drifting speed hits them alike. It prints
images/s, the ratios 2/1, 3/2 and 2/4, and the GFLOP/s of 1, 2 and 5 (a train step counted as
3x the forward FLOPs of cifar10_model's counting), each also as a fraction of the machine's
ceiling: a float32 2048 x 2048 matrix product timed in the same process. The counting is the
study's, for direct convolutions: a spectral layer (the tutorial's conv2) does fewer FLOPs,
so these are effective rates and may exceed the ceiling.
"""

import dataclasses
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import cifar10_input
import cifar10_model
import cifar10_records
import cifar10_scoring
import cifar10_trainer
import cifar10_flags
import cifar10_config
import timing  # bench/, the script's own folder.
import models

_FLAGS = cifar10_flags.define_data_flags()
_FLAGS.update(cifar10_flags.define_config_flags(['conv']))
_MODEL = flags.DEFINE_enum('model', 'tutorial', models.names(), 'Model to time.')
_WINDOW = flags.DEFINE_integer('window', 20, 'Steps per timed window.', lower_bound=1)
_WINDOWS = flags.DEFINE_integer('windows', 7, 'Timed windows per candidate.', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 20, 'Untimed steps first.', lower_bound=1)
_PRECISIONS = flags.DEFINE_multi_enum(
    'precision', ['float32'], ['float32', 'mixed_bfloat16', 'mixed_float16'],
    'Precisions of the bare step and the loop; each one after the first adds rows 1 and 2 in '
    'it, timed in the same rounds, and their ratios to the first (repeat the flag).')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Rounds of 1, 2 and 4 in turn, so that the '
                               "machine's drifting speed hits all three alike.", lower_bound=1)


def window_rates(run_window, images_per_window, warmup, windows):
  """Images/s of each of `windows` calls of run_window after `warmup` untimed calls."""
  return [images_per_window / seconds
          for seconds in timing.window_seconds(run_window, warmup, windows)]


def bare_step(config, images, labels):
  trainer = cifar10_trainer.Trainer(config)
  def run_window():
    for _ in range(_WINDOW.value):
      metrics = trainer.train_step(images, labels)
    float(metrics['loss'])
  return window_rates(run_window, _WINDOW.value * config.batch_size, 1, _WINDOWS.value)


def full_loop(config, split):
  """The loop of cifar10_trainer.train, timed by its own log windows (log_frequency steps)."""
  rates = []
  steps = _WARMUP.value + _WINDOW.value * _WINDOWS.value
  with tempfile.TemporaryDirectory() as train_dir:
    run = dataclasses.replace(config, train_dir=train_dir, max_steps=steps)
    cifar10_trainer.train(run, split, on_log=lambda step, rate: rates.append((step, rate)))
  return [rate for step, rate in rates if step > _WARMUP.value]


def input_pipeline(config, split):
  batches = iter(cifar10_input.train_inputs(split, config.batch_size, seed=0,
                                            augment=config.augment,
                                            image_size=config.image_size))
  def run_window():
    for _ in range(_WINDOW.value):
      next(batches)
  return statistics.median(window_rates(run_window, _WINDOW.value * config.batch_size,
                                        _WARMUP.value, _WINDOWS.value))


def keras_tutorial(image_size):
  """The tutorial network as tf.keras.Sequential (the peer most users would write)."""
  layers = tf.keras.layers
  lrn = lambda: layers.Lambda(
      lambda x: tf.nn.local_response_normalization(x, 4, 1.0, 0.001 / 9.0, 0.75))
  return tf.keras.Sequential([
      layers.Input((image_size, image_size, 3)),
      layers.Conv2D(64, 5, padding='same', activation='relu'),
      layers.MaxPool2D(3, 2, padding='same'), lrn(),
      layers.Conv2D(64, 5, padding='same', activation='relu'), lrn(),
      layers.MaxPool2D(3, 2, padding='same'),
      layers.Flatten(),
      layers.Dense(384, activation='relu', kernel_regularizer=tf.keras.regularizers.l2(1e-4)),
      layers.Dense(192, activation='relu', kernel_regularizer=tf.keras.regularizers.l2(1e-4)),
      layers.Dense(10),
  ])


class _BatchClock(tf.keras.callbacks.Callback):
  def __init__(self):
    super().__init__()
    self.times = []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append(time.perf_counter())


def keras_fit(config, split):
  if config.model != 'tutorial':
    return [float('nan')]
  model = keras_tutorial(config.image_size)
  model.compile(optimizer=tf.keras.optimizers.SGD(config.learning_rate),
                loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
  data = cifar10_input.train_inputs(split, config.batch_size, seed=0, augment=config.augment,
                                    image_size=config.image_size)
  clock = _BatchClock()
  steps = _WARMUP.value + _WINDOW.value * _WINDOWS.value
  model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
  ends = clock.times[_WARMUP.value - 1::_WINDOW.value]
  rates = [_WINDOW.value * config.batch_size / (b - a) for a, b in zip(ends, ends[1:])]
  return rates


def evaluation(config, test_split):
  evaluator = cifar10_scoring.Evaluator(config, test_split, conv=config.conv)
  return statistics.median(timing.window_seconds(evaluator.precision, warmup=1, windows=3))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  cifar10_env.quiet_logging(flags.FLAGS['verbosity'].present)
  config = cifar10_config.TrainConfig(model=models.canonical_name(_MODEL.value),
                                      conv=_FLAGS['conv'].value, precision=_PRECISIONS.value[0])
  try:
    batches_dir = cifar10_flags.batches_dir(cifar10_flags.read(_FLAGS)[0])
    train_split = cifar10_records.load_split(batches_dir, 'train')
    test_split = cifar10_records.load_split(batches_dir, 'test')
  except cifar10_records.DataError as e:
    sys.exit(f'error: {e}')
  images, labels = next(iter(cifar10_input.train_inputs(train_split, config.batch_size, 0)))
  flops = sum(r.flops for r in cifar10_model.count_model(
      models.build(config.model, config.image_size)))

  windows = {'1 bare step': [], '2 full loop': [], '4 keras fit': []}
  others = {precision: dataclasses.replace(config, precision=precision)
            for precision in _PRECISIONS.value[1:]}
  for precision in others:
    windows[f'1 bare step, {precision}'], windows[f'2 full loop, {precision}'] = [], []
  for _ in range(_ROUNDS.value):
    windows['1 bare step'] += bare_step(config, images, labels)
    windows['2 full loop'] += full_loop(config, train_split)
    windows['4 keras fit'] += keras_fit(config, train_split)
    for precision, other in others.items():
      windows[f'1 bare step, {precision}'] += bare_step(other, images, labels)
      windows[f'2 full loop, {precision}'] += full_loop(other, train_split)
  rates = {'1 bare step': statistics.median(windows['1 bare step']),
           '2 full loop': statistics.median(windows['2 full loop']),
           '3 input pipeline': input_pipeline(config, train_split),
           '4 keras fit': statistics.median(windows['4 keras fit'])}
  low_rates = {name: statistics.median(values) for name, values in windows.items()
               if ', ' in name}
  eval_secs = evaluation(config, test_split)
  ceiling = timing.gemm_gflops(windows=_WINDOWS.value)

  print(f'\nmodel {config.model}, conv {config.conv}, batch {config.batch_size}, '
        f'{config.image_size}x{config.image_size}, median of {_ROUNDS.value} x '
        f'{_WINDOWS.value} windows of {_WINDOW.value} steps')
  for name, rate in rates.items():
    print(f'{name:<20} {rate:>10.1f} images/s')
  print(f'{"5 eval (10,000)":<20} {eval_secs:>10.2f} s '
        f'({len(test_split) / eval_secs:.0f} images/s)')
  for name, rate in low_rates.items():
    print(f'{name:<20} {rate:>10.1f} images/s')
  one, two, three, four = rates.values()
  print(f'ratio 2/1 = {two / one:.3f}   ratio 3/2 = {three / two:.2f}   '
        f'ratio 2/4 = {two / four:.2f}')
  for precision in others:
    print(f'{precision} / {config.precision}: bare step '
          f'{low_rates[f"1 bare step, {precision}"] / one:.3f}, full loop '
          f'{low_rates[f"2 full loop, {precision}"] / two:.3f}')
  achieved = {'bare step': 3 * flops * one / 1e9, 'full loop': 3 * flops * two / 1e9,
              'eval': flops * len(test_split) / eval_secs / 1e9}
  # The model's FLOP count is the study's, for direct convolutions; a spectral layer does
  # fewer, so these are effective rates and can pass the GEMM ceiling.
  print('effective GFLOP/s (FLOPs of direct convolutions): ' +
        ', '.join(f'{name} {value:.1f} ({value / ceiling:.0%})'
                  for name, value in achieved.items()) +
        f' of the float32 2048^3 matmul ceiling, {ceiling:.1f} GFLOP/s')


if __name__ == '__main__':
  app.run(main)
