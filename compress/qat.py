"""Quantization-aware training by hand: a trained run fine-tuned through fake quantization.

    python compress/qat.py --source_dir=runs/budget1 --train_dir=runs/budget1_qat \
        --finetune_steps=5000 [--weight_bits=4]
    python compress/quantize.py --checkpoint_dir=runs/budget1_qat

Starts from the latest checkpoint of --source_dir (any cifar10_train.py, compress/prune.py or
compress/slim.py run) and fine-tunes it with the trainer's own loop (cifar10_trainer.py)
whose forward pass computes in float what the integer path will compute
(compress/qat_ops.py): each BatchNorm folded into its convolution through its moving
statistics (which stay fixed), weights quantized per output channel to --weight_bits (the
first and last layers to --edge_weight_bits), every activation the integer path requantizes
quantized to 8 bits with a range tracked as the moving average of its batches' minima and
maxima, gradients straight through the rounding. The ranges are state in the checkpoint;
compress/quantize.py reads them (and the bits, from qat.json) instead of calibrating.

A weight that is exactly zero in the source stays zero (raw and EMA alike), so a pruned
source keeps its masks: prune, then QAT, then quantize is the Deep-Compression order.

The new --train_dir is an ordinary run of the source's model: cifar10_eval.py scores its
float weights unchanged. Re-running the same command resumes.
"""

import dataclasses
import os
import sys

if __package__ in (None, ''):  # Run as `python compress/qat.py`: the project root, not this
  # folder, first on the path (its modules must not shadow others, e.g. the stdlib's trace).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_records
import cifar10_run
import cifar10_trainer
from compress import finetune
from compress import qat_ops
from compress import trace

# TrainConfig fields QAT sets from its flags, beyond finetune.CONFIG_FIELDS (float32 only:
# the fake-quant grid is computed in float32).
CONFIG_FIELDS = ('deterministic', 'strategy', 'cpu_replicas', 'cluster_timeout')
AUTO = 'auto'  # --weight_range: max at 8 bits, mse below


@dataclasses.dataclass(frozen=True)
class QatSettings:
  """How the weights and activations are quantized while training."""
  weight_bits: int = 8
  edge_weight_bits: int = 8  # the first and last conv/dense layers (0: --weight_bits)
  weight_range: str = AUTO  # qat_ops.WEIGHT_RANGES or auto
  range_decay: float = qat_ops.RANGE_DECAY

  def __post_init__(self):
    if self.weight_bits not in qat_ops.WEIGHT_BITS or self.edge_weight_bits not in (
        0,) + qat_ops.WEIGHT_BITS:
      raise ValueError(f'weight bits must be one of {qat_ops.WEIGHT_BITS}, got '
                       f'{self.weight_bits} and {self.edge_weight_bits}')
    if self.weight_range not in qat_ops.WEIGHT_RANGES + (AUTO,):
      raise ValueError(f'weight_range must be one of {qat_ops.WEIGHT_RANGES + (AUTO,)}')
    if not 0.0 <= self.range_decay < 1.0:
      raise ValueError(f'need 0 <= range_decay < 1, got {self.range_decay}')

  def method(self):
    """The weight-scale rule: --weight_range, or with auto max at 8 bits and mse below."""
    if self.weight_range != AUTO:
      return self.weight_range
    return 'max' if min(self.weight_bits, self.edge_weight_bits or 8) == 8 else 'mse'


class QatTrainer(finetune.FromSource, cifar10_trainer.Trainer):
  """cifar10_trainer.Trainer whose forward pass is the fake-quantized model.

  Saves the tracked ranges (qat_ops.Ranges) and a 0/1 mask of each conv and dense matrix
  (its nonzeros in the source) in the checkpoint; the masks multiply the matrices and their
  EMA shadows after every update.
  """

  kind = 'quantization-aware training'

  def __init__(self, config, settings, source_checkpoint=None, strategy=None, schedule=None):
    self.settings, self.source_checkpoint = settings, source_checkpoint
    super().__init__(config, strategy, schedule=schedule)  # Calls extra_state().

  def extra_state(self):
    try:
      self.ops, self.leaves, _ = trace.trace_ops(self.model, fold_batchnorm=True)
    except trace.QuantizationError as e:
      raise cifar10_config.ConfigError(f'{self.config.model} cannot be quantized: {e}') from e
    self.layer_bits = qat_ops.layer_bits(self.ops, self.settings.weight_bits,
                                         self.settings.edge_weight_bits)
    self.ranges = qat_ops.Ranges(qat_ops.tracked_tensors(self.ops), self.settings.range_decay)
    self.kernels = [layer.kernel for layer in self.model.weight_layers()]
    self.shadows = [self.ema.average(kernel) for kernel in self.kernels]
    self.masks = [tf.Variable(tf.ones_like(kernel), trainable=False,
                              name=kernel.name.split(':')[0] + '_mask')
                  for kernel in self.kernels]
    return {**self.ranges.checkpoint_state(), 'zero_masks': self.masks}

  def restore_latest(self):
    fresh = not cifar10_run.checkpoint_paths(self.config.train_dir)
    step = super().restore_latest()
    if fresh and self.source_checkpoint:  # The source's zeros: kept from here on.
      for kernel, mask in zip(self.kernels, self.masks):
        mask.assign(tf.cast(tf.not_equal(kernel, 0.0), tf.float32))
    # Only the matrices that hold zeros are masked each step (a dense source: none), decided
    # before the step is traced.
    self.held = [index for index, mask in enumerate(self.masks)
                 if not bool(tf.reduce_all(mask > 0))]
    return step

  def forward(self, images):
    return qat_ops.forward(self.ops, self.leaves, images, self.ranges, self.layer_bits,
                           self.settings.method())

  def after_update(self, metrics):
    for index in self.held:
      mask = self.masks[index]
      self.kernels[index].assign(self.kernels[index] * mask)
      self.shadows[index].assign(self.shadows[index] * mask)


# --------------------------------------------------------------------------- binary


def settings_record(trainer, source, schedule):
  """What qat.json holds: the settings, the per-layer bits, the tracked tensors in order."""
  settings = trainer.settings
  return {'source_checkpoint': os.path.realpath(source), **dataclasses.asdict(settings),
          'weight_range': settings.method(), 'layer_bits': trainer.layer_bits,
          'tensors': trainer.ranges.tensors,
          'finetune_schedule': finetune.schedule_record(schedule)}


def prepare(values):
  """(TrainConfig, QatSettings, source checkpoint, fine-tuning Schedule) from the flag
  values, checked."""
  source_config, source, start = finetune.source_run(values, 'quantization-aware training',
                                                     qat_ops.SETTINGS_FILE)
  try:
    settings = QatSettings(weight_bits=int(values['weight_bits']),
                           edge_weight_bits=int(values['edge_weight_bits']),
                           weight_range=values['weight_range'],
                           range_decay=values['range_decay'])
  except ValueError as e:
    raise cifar10_config.ConfigError(f'quantization-aware training flags: {e}') from e
  last = start + values['finetune_steps']
  rates, schedule = finetune.finetune_schedule(values, source_config, start, last)
  config = dataclasses.replace(source_config, train_dir=values['train_dir'], max_steps=last,
                               precision='float32', **rates,
                               **finetune.config_fields(values, CONFIG_FIELDS))
  return config, settings, source, schedule


def run(values, batches_dir=None):
  """Trains as the flag values say; returns what sys.exit takes (None: done). `batches_dir`:
  the data's batches folder, default the one --data_dir names (found or extracted)."""
  return cifar10_trainer.exit_status(lambda: _qat(values, batches_dir))


def _qat(values, batches_dir):
  strategy = cifar10_trainer.start_strategy(values)
  config, settings, source, schedule = prepare(values)
  cifar10_trainer.log(finetune.describe(schedule, values))
  trainer = QatTrainer(config, settings, source, strategy=strategy, schedule=schedule)
  bits = ', '.join(f'{name} {b}' for name, b in trainer.layer_bits.items())
  cifar10_trainer.log(f'weight bits: {bits} ({settings.method()} scales); activations 8 '
                      f'bits, {len(trainer.ranges.tensors)} tracked ranges')
  if trainer.worker.is_chief:
    path = os.path.join(config.train_dir, qat_ops.SETTINGS_FILE)
    finetune.keep_settings(path, finetune.read_settings(path),
                           settings_record(trainer, source, schedule),
                           'quantization-aware training')
  split = cifar10_records.load_split(batches_dir or cifar10_flags.batches_dir(values), 'train')
  cifar10_trainer.install_stop_handlers()
  cifar10_trainer.train(config, split, make_trainer=lambda _: trainer, strategy=strategy)
  if trainer.worker.is_chief:
    cifar10_trainer.log(f'done: quantize it with python compress/quantize.py '
                        f'--checkpoint_dir={config.train_dir} (the trained ranges and bits)')


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the training flags a fine-tuning may change and this program's;
  {name: FlagHolder}."""
  d = QatSettings
  holders = cifar10_flags.define_data_flags(flag_values)
  holders.update(finetune.define_config_flags(CONFIG_FIELDS, flag_values))
  holders.update(
      source_dir=flags.DEFINE_string('source_dir', None, 'The --train_dir of a trained run.',
                                     required=True, flag_values=flag_values),
      train_dir=flags.DEFINE_string('train_dir', None, 'The new run (checkpoints, qat.json).',
                                    required=True, flag_values=flag_values),
      weight_bits=flags.DEFINE_enum('weight_bits', str(d.weight_bits),
                                    [str(b) for b in qat_ops.WEIGHT_BITS],
                                    'Bits of the conv and dense weights (symmetric, per '
                                    'output channel).', flag_values=flag_values),
      edge_weight_bits=flags.DEFINE_enum('edge_weight_bits', str(d.edge_weight_bits),
                                         [str(b) for b in (0,) + qat_ops.WEIGHT_BITS],
                                         'Bits of the first and last layers\' weights (0: '
                                         '--weight_bits).', flag_values=flag_values),
      weight_range=flags.DEFINE_enum('weight_range', d.weight_range,
                                     list(qat_ops.WEIGHT_RANGES) + [AUTO],
                                     'Weight scales: max (max |w| / Q per channel), mse (the '
                                     'clip with the least rounding error), auto (max at 8 '
                                     'bits, mse below).', flag_values=flag_values),
      range_decay=flags.DEFINE_float('range_decay', d.range_decay, 'Decay of the moving '
                                     'averages of the activation ranges.', 0.0, 0.9999,
                                     flag_values=flag_values),
  )
  holders.update(finetune.define_flags(flag_values))
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
