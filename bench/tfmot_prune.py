"""Our weight pruning against TensorFlow Model Optimization's, on the same weights.

    make tfmot-venv
    .venv-tfmot/bin/python bench/tfmot_prune.py --source_dir=runs/tutorial_fast \
        --ours=runs/tutorial_fast_p90,runs/tutorial_fast_p90_global_dense \
        --control=runs/tutorial_fast_p0 --data_dir=data --out=bench/tfmot_prune

The standard tool's side: the source run's model rebuilt in tf-keras (Conv2D, MaxPooling2D,
local response normalization, Flatten, Dense; the logits of the rebuilt model are checked
against ours on 500 test images before anything trains), started from the source's raw
weights and optimizer velocities, its Conv2D and Dense layers wrapped by
`tfmot.sparsity.keras.prune_low_magnitude` with its default policy (every layer to the same
sparsity) and the cubic PolynomialDecay schedule of compress/prune.py's defaults (0 to
--target_sparsity between the source's step and half the fine-tuning, a mask update every
100 steps), then fine-tuned for --finetune_steps with exactly compress/prune.py's loop
otherwise: the same batches (cifar10_input, the source's seed, from its step on), the same
loss (label smoothing and weight decay of the source's config), the same update
(cifar10_optim) and learning-rate schedule (compress/finetune.py's default). TF-MOT keeps no
moving average of the weights, so its figure is of its raw weights; ours are given raw and
EMA.

Then every run of --ours and --control (compress/prune.py runs, trained beforehand) is
scored on the same 10,000 test images, with its sparsity. Writes <--out>.json and <--out>.md.
Runs in its own venv (make tfmot-venv: TF-MOT 0.8.1 and tf-keras beside requirements.txt),
never in the project's. A benchmark, not a test.
"""

import dataclasses
import os
import sys
import time

os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')  # TF-MOT works on tf-keras (Keras 2) only.

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cifar10_env  # pylint: disable=g-import-not-at-top

cifar10_env.start()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_flags
import cifar10_input
import cifar10_model
import cifar10_optim
import cifar10_records
import cifar10_run
import cifar10_trainer
from compress import finetune

try:
  import tensorflow_model_optimization as tfmot
  import tf_keras
except ImportError as e:  # pragma: no cover - the message is the point
  sys.exit(f'error: {e}: run this benchmark in its own venv, made by `make tfmot-venv` '
           '(.venv-tfmot/bin/python bench/tfmot_prune.py ...).')

_FLAGS = cifar10_flags.define_data_flags()
flags.DEFINE_string('source_dir', None, 'The trained run both prune from.', required=True)
flags.DEFINE_list('ours', [], 'compress/prune.py runs of --source_dir to score beside it.')
flags.DEFINE_list('control', [], 'Dense controls (--target_sparsity=0) to score beside it.')
flags.DEFINE_float('target_sparsity', 0.9, "TF-MOT's final sparsity, in every layer.")
flags.DEFINE_integer('finetune_steps', finetune.FINETUNE_STEPS, 'Steps of fine-tuning.')
flags.DEFINE_integer('frequency', 100, 'Steps between mask updates.')
flags.DEFINE_string('out', 'bench/tfmot_prune', 'Writes <out>.json and <out>.md.')
FLAGS = flags.FLAGS
CHECK_IMAGES = 500  # test images whose logits the rebuilt model must reproduce


def keras_model(model, image_size):
  """tf-keras Sequential of the same function as our Model `model` (plain layers only), and
  [(our layer, its Keras layer)] of the layers with weights."""
  layers, pairs = [tf_keras.layers.InputLayer((image_size, image_size, 3))], []
  for layer in model.layers:
    kind = type(layer).__name__
    if kind == 'Conv2D':
      size, channels = layer.kernel.shape[0], layer.kernel.shape[3]
      keras = tf_keras.layers.Conv2D(channels, size, strides=layer.stride, padding='same',
                                     use_bias=layer.bias is not None, name=layer.name,
                                     activation='relu' if layer.relu else None)
      pairs.append((layer, keras))
    elif kind == 'Dense':
      keras = tf_keras.layers.Dense(layer.kernel.shape[1], name=layer.name,
                                    activation='relu' if layer.relu else None)
      pairs.append((layer, keras))
    elif kind == 'MaxPool':
      keras = tf_keras.layers.MaxPooling2D(layer.size, layer.stride, padding='same')
    elif kind == 'LRN':
      keras = tf_keras.layers.Lambda(
          lambda x, l=layer: tf.nn.local_response_normalization(
              x, l.depth_radius, l.bias, l.alpha, l.beta), name=layer.name)
    elif kind == 'Flatten':
      keras = tf_keras.layers.Flatten()
    else:
      raise SystemExit(f'error: {model.name} has a {kind} layer ({layer.name}); this '
                       'benchmark rebuilds plain convolution/dense models only (the tutorial)')
    layers.append(keras)
  return tf_keras.Sequential(layers), pairs


def check_same(ours, keras, images):
  """Refuses a rebuilt model whose logits are not ours."""
  a, b = ours(images).numpy(), keras(images, training=False).numpy()
  worst = float(np.abs(a - b).max())
  if worst > 1e-3 * max(1.0, float(np.abs(a).max())):
    raise SystemExit(f'error: the tf-keras model differs from ours by {worst:g} in a logit')
  return worst


def precision(model_fn, images, labels, chunk=1000):
  """Precision @ 1 of model_fn on the images."""
  hits = 0
  for start in range(0, len(labels), chunk):
    logits = model_fn(images[start:start + chunk])
    hits += int(np.sum(np.argmax(np.asarray(logits), axis=1) == labels[start:start + chunk]))
  return hits / len(labels)


def sparsity(kernels):
  total = sum(int(np.prod(k.shape)) for k in kernels)
  return sum(int(np.sum(np.asarray(k) == 0)) for k in kernels) / total


def tfmot_prune(config, source, split, test_images, test_labels):
  """TF-MOT's pruning of the source (module docstring); its report."""
  start = cifar10_run.checkpoint_step(source)
  last = start + FLAGS.finetune_steps
  trainer = cifar10_trainer.Trainer(dataclasses.replace(config, train_dir='unused'))
  trainer.checkpoint.read(source).expect_partial()  # weights and velocities, read only
  ours = trainer.model
  keras, pairs = keras_model(ours, config.image_size)
  for layer, k in pairs:
    k.set_weights([layer.kernel.numpy(), layer.bias.numpy()] if layer.bias is not None
                  else [layer.kernel.numpy()])
  worst = check_same(ours, keras, test_images[:CHECK_IMAGES])
  print(f'the tf-keras model reproduces ours (largest logit difference {worst:.2g})',
        flush=True)

  schedule = tfmot.sparsity.keras.PolynomialDecay(
      initial_sparsity=0.0, final_sparsity=FLAGS.target_sparsity, begin_step=0,
      end_step=FLAGS.finetune_steps // 2, power=3, frequency=FLAGS.frequency)
  names = {k.name for _, k in pairs}  # The others are shared: only the wrapped ones train.
  pruned = tf_keras.models.clone_model(
      keras, clone_function=lambda l: tfmot.sparsity.keras.prune_low_magnitude(
          l, pruning_schedule=schedule) if l.name in names else l)
  wrapped = {w.layer.name: w.layer for w in pruned.layers if hasattr(w, 'layer')}
  twin = {}  # id(our variable) -> the Keras variable in its place
  for layer, k in pairs:
    inner = wrapped[k.name]
    inner.set_weights(k.get_weights())
    twin[id(layer.kernel)] = inner.kernel
    if layer.bias is not None:
      twin[id(layer.bias)] = inner.bias
  ordered = [twin[id(v)] for v in trainer.variables]  # our optimizer's order
  decays = [(twin[id(k)], c) for k, c in ours.kernels if c]
  optimizer = cifar10_optim.make_optimizer(
      config.optimizer, ordered, [dict((id(k), c) for k, c in decays).get(id(v), 0.0)
                                  for v in ordered], config)
  source_slots = trainer.optimizer.checkpoint_state()
  for name, slots in optimizer.checkpoint_state().items():
    if isinstance(slots, list):  # velocities, by position
      for slot, value in zip(slots, source_slots[name]):
        slot.assign(value)
  _, rate_schedule = finetune.finetune_schedule(
      dict(lr_schedule=finetune.FINETUNE_SCHEDULE, learning_rate=None, warmup_steps=0),
      config, start, last)
  step = tf.Variable(start, dtype=tf.int64)
  callback = tfmot.sparsity.keras.UpdatePruningStep()
  callback.set_model(pruned)
  callback.on_train_begin()

  @tf.function
  def train_step(images, labels):
    with tf.GradientTape() as tape:
      logits = pruned(images, training=True)
      cross_entropy, _ = cifar10_model.loss(logits, labels, ours, config.label_smoothing)
      loss = cross_entropy + tf.add_n([c * tf.nn.l2_loss(k) for k, c in decays])
    gradients = tape.gradient(loss, ordered)
    optimizer.apply(gradients, rate_schedule(step), step, lambda v, u, *a: u(v, *a))
    step.assign_add(1)
    return loss

  batches = iter(cifar10_input.train_inputs(
      split, config.batch_size, config.seed, config.augment, config.image_size,
      first_step=start, distortions=config.distortions, cutout_side=config.cutout,
      crop_slack=config.crop_slack))
  began = time.time()
  for i in range(FLAGS.finetune_steps):
    callback.on_train_batch_begin(batch=-1)
    loss = train_step(*next(batches))
    if (i + 1) % 500 == 0:
      seconds = time.time() - began
      rate = (i + 1) * config.batch_size / seconds
      eta = (FLAGS.finetune_steps - i - 1) * config.batch_size / rate
      print(f'TF-MOT step {start + i + 1:,}/{last:,}, loss = {float(loss):.3f} '
            f'({rate:.0f} images/s; ETA {eta / 60:.1f} min)', flush=True)
  callback.on_epoch_end(batch=-1)
  stripped = tfmot.sparsity.keras.strip_pruning(pruned)
  kept = [l.kernel.numpy() for l in stripped.layers if hasattr(l, 'kernel')]
  return {'name': 'TF-MOT prune_low_magnitude (uniform)', 'weights': 'raw',
          'precision': precision(lambda x: stripped(x, training=False), test_images,
                                 test_labels),
          'sparsity': sparsity(kept), 'seconds': time.time() - began,
          'layers': {l.name: sparsity([l.kernel.numpy()]) for l in stripped.layers
                     if hasattr(l, 'kernel')}}


def score_run(train_dir, test_images, test_labels):
  """Our run's precision raw and EMA, and its sparsity over the prunable weights."""
  rows = []
  for ema in (False, True):
    opened = cifar10_run.load_inference_model(train_dir, ema=ema, conv='direct')
    rows.append({'name': os.path.basename(os.path.normpath(train_dir)),
                 'weights': 'ema' if ema else 'raw',
                 'precision': precision(opened.model, test_images, test_labels),
                 'sparsity': sparsity([k.numpy() for k, _ in opened.model.kernels])})
  return rows


def write_report(rows, source):
  source = os.path.join(*source.split(os.sep)[-2:])  # <run>/ckpt-N: no machine's path
  cifar10_run.write_json(FLAGS.out + '.json', {'source': source, 'rows': rows})
  lines = [f'# Weight pruning against TF-MOT on the same source ({source})', '',
           'Command: `bench/tfmot_prune.py ' + ' '.join(
               a for a in sys.argv[1:] if not a.startswith('--data_dir')) + '`', '',
           '| run | weights | precision @ 1 | sparsity |', '|---|---|---|---|']
  lines += [f'| {r["name"]} | {r["weights"]} | {r["precision"]:.2%} | {r["sparsity"]:.2%} |'
            for r in rows]
  with open(FLAGS.out + '.md', 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def main(argv):
  config, source = cifar10_run.latest_run(FLAGS.source_dir, '--source_dir')
  batches_dir = cifar10_flags.batches_dir(cifar10_flags.main_values(argv, _FLAGS)[0])
  test = cifar10_records.load_split(batches_dir, 'test')
  test_images = cifar10_input.eval_images(test, config.image_size).numpy()
  split = cifar10_records.load_split(batches_dir, 'train')
  rows = [tfmot_prune(config, source, split, test_images, test.labels)]
  for train_dir in FLAGS.ours + FLAGS.control:
    rows += score_run(train_dir, test_images, test.labels)
  write_report(rows, source)


if __name__ == '__main__':
  app.run(main)
