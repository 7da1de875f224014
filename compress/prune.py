"""Magnitude pruning by hand: masks, the gradual schedule, fine-tuning from a trained run.

    python compress/prune.py --source_dir=runs/tutorial --train_dir=runs/tutorial_p90 \
        --target_sparsity=0.9 --finetune_steps=5000

Starts from the latest checkpoint of --source_dir (a cifar10_train.py run), fine-tunes it with
the trainer's own loop (cifar10_trainer.py) while the share of zeros over all its conv and
dense matrices rises from --initial_sparsity to --target_sparsity between --begin_step and
--end_step (by default one magnitude threshold over the pruned matrices, the first layer and
the logits layer kept dense: --threshold=global --dense_layers=ends), then
writes a report (printed and prune_report.json) and the EMA weights in the sparse format of
compress/sparse.py (model_sparse.npz). The new --train_dir is an ordinary run that
`cifar10_eval.py --checkpoint_dir=...` evaluates unchanged: pruned weights are exactly zero in
the raw weights and in the EMA shadows. Re-running the same command resumes.

The fine-tuning has a learning-rate schedule of its own, printed at start and kept in
pruning.json: by default linear from --learning_rate=0.02 down to 0 at the last fine-tuning
step, whatever the source's schedule was (--lr_schedule=continue runs the source's on).

Modes (docs/reference.md): gradual, the cubic schedule of Zhu & Gupta (2017) with masks
recomputed every --frequency steps; oneshot, the target at --begin_step then fine-tuning with
fixed masks; iterative, Han et al. (2015)'s prune -> retrain cycles: --rounds equal sparsity
steps spread evenly from --begin_step to --end_step.
"""

import dataclasses
import math
import os
import sys

if __package__ in (None, ''):  # Run as `python compress/prune.py`: the project root, not this
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
from compress import sparse

MODES = ('gradual', 'oneshot', 'iterative')
THRESHOLDS = ('per_layer', 'global', 'erk')
ENDS = 'ends'  # --dense_layers: the first layer with weights and the last (the logits)
# TrainConfig fields a pruning sets from its flags, beyond finetune.CONFIG_FIELDS.
CONFIG_FIELDS = ('deterministic', 'strategy', 'cpu_replicas', 'cluster_timeout',
                 'precision')
SETTINGS_FILE = 'pruning.json'
REPORT_FILE = 'prune_report.json'
SPARSE_FILE = 'model_sparse.npz'
@dataclasses.dataclass(frozen=True)
class PruningSettings:
  """What to prune, how far and when; steps count from the start of the source run."""
  target_sparsity: float = 0.9  # fraction of each pruned matrix (or of all, global) at zero
  initial_sparsity: float = 0.0
  begin_step: int = 0  # first mask update
  end_step: int = 0  # target reached here; fixed masks afterwards
  frequency: int = 100  # steps between mask updates (gradual)
  mode: str = 'gradual'
  rounds: int = 4  # prune -> retrain cycles (iterative)
  threshold: str = 'global'  # 'per_layer': each matrix to the target; 'global': one
  # magnitude threshold over every pruned matrix (the best measured, docs/compression.md);
  # 'erk': each matrix to its Erdos-Renyi-kernel share of the target (erk_sparsities)
  # Layers whose matrix is never pruned, e.g. ('conv1',). The sparsities stay shares of all
  # the conv and dense matrices, these included: the pruned ones go further to reach them.
  dense_layers: tuple = (ENDS,)

  def __post_init__(self):
    if not 0.0 <= self.initial_sparsity <= self.target_sparsity < 1.0:
      raise ValueError('need 0 <= initial_sparsity <= target_sparsity < 1, got '
                       f'{self.initial_sparsity} and {self.target_sparsity}')
    if not 0 <= self.begin_step <= self.end_step:
      raise ValueError(f'need 0 <= begin_step <= end_step, got {self.begin_step} and '
                       f'{self.end_step}')
    if self.mode not in MODES or self.threshold not in THRESHOLDS:
      raise ValueError(f'mode must be one of {MODES} and threshold one of {THRESHOLDS}')
    if self.frequency < 1 or self.rounds < 1:
      raise ValueError('frequency and rounds must be >= 1')

  def round_starts(self):
    """The steps at which oneshot and iterative modes raise the sparsity."""
    if self.mode == 'oneshot' or self.rounds == 1:
      return [self.begin_step]
    span = self.end_step - self.begin_step
    return [self.begin_step + r * span // (self.rounds - 1) for r in range(self.rounds)]

  def sparsity(self, step):
    """Target sparsity at `step` (int64 scalar tensor): 0 before begin_step.

    gradual: s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t_end - t0))^3, clipped to the span.
    """
    step = tf.cast(step, tf.float64)
    s_i, s_f = self.initial_sparsity, self.target_sparsity
    if self.mode == 'gradual':
      span = self.end_step - self.begin_step
      progress = (tf.clip_by_value((step - self.begin_step) / span, 0.0, 1.0) if span
                  else tf.constant(1.0, tf.float64))  # begin == end: the target at once.
      value = s_f + (s_i - s_f) * (1.0 - progress) ** 3
    else:
      starts = tf.constant(self.round_starts(), tf.float64)
      done = tf.reduce_sum(tf.cast(starts <= step, tf.float64))
      value = s_i + (s_f - s_i) * done / len(self.round_starts())
    return tf.where(step < self.begin_step, tf.constant(0.0, tf.float64), value)

  def is_update_step(self, step):
    """Whether the masks are recomputed before the update of `step` (bool scalar tensor)."""
    if self.mode != 'gradual':
      return tf.reduce_any(tf.equal(tf.constant(self.round_starts(), tf.int64), step))
    inside = tf.logical_and(step >= self.begin_step, step <= self.end_step)
    on_beat = tf.logical_or(tf.equal((step - self.begin_step) % self.frequency, 0),
                            tf.equal(step, self.end_step))
    return tf.logical_and(inside, on_beat)


def keep_largest(magnitudes, sparsity):
  """A 0/1 mask keeping exactly the n - floor(sparsity * n) largest of `magnitudes`.

  Args:
    magnitudes: float32 tensor of any shape (|W|).
    sparsity: float64 scalar in [0, 1).

  Returns:
    float32 tensor shaped like `magnitudes`; ties go to the lower flat index (tf.math.top_k).
  """
  flat = tf.reshape(magnitudes, [-1])
  size = tf.size(flat)
  keep = size - tf.cast(tf.floor(sparsity * tf.cast(size, tf.float64)), tf.int32)
  _, indices = tf.math.top_k(flat, keep, sorted=False)
  mask = tf.scatter_nd(indices[:, tf.newaxis], tf.ones([keep]), [size])
  return tf.reshape(mask, tf.shape(magnitudes))


def erk_sparsities(shapes, sparsity):
  """Per matrix, the sparsity of the Erdos-Renyi-kernel allocation (Evci et al. 2020) whose
  zeros are `sparsity` of all the matrices' weights together.

  A matrix keeps a density eps * sum(shape) / prod(shape) (a conv's kernel sides and its two
  channel counts; a dense layer's two sides): small and thin layers keep more. eps is what
  meets the total; a matrix whose density would pass 1 stays dense, and eps is solved again
  for the others.
  """
  sizes = [math.prod(shape) for shape in shapes]
  raw = [sum(shape) / size for shape, size in zip(shapes, sizes)]
  kept_in_all, dense = (1.0 - sparsity) * sum(sizes), set()
  while True:
    rest = [i for i in range(len(shapes)) if i not in dense]
    eps = (kept_in_all - sum(sizes[i] for i in dense)) / sum(raw[i] * sizes[i] for i in rest)
    over = {i for i in rest if eps * raw[i] >= 1.0}
    if not over:
      return [0.0 if i in dense else 1.0 - eps * raw[i] for i in range(len(shapes))]
    dense |= over


def new_masks(kernels, sparsity, threshold, target=None):
  """Masks for `kernels` at `sparsity`: per matrix, with one global threshold, or (erk)
  each matrix at its ERK share of `target` scaled by sparsity / target."""
  if threshold == 'per_layer':
    return [keep_largest(tf.abs(k), sparsity) for k in kernels]
  if threshold == 'erk':
    shares = erk_sparsities([k.shape.as_list() for k in kernels], target)
    scale = sparsity / target if target else tf.constant(0.0, tf.float64)
    return [keep_largest(tf.abs(k), share * scale) for k, share in zip(kernels, shares)]
  flat = keep_largest(tf.concat([tf.reshape(tf.abs(k), [-1]) for k in kernels], 0), sparsity)
  pieces = tf.split(flat, [math.prod(k.shape) for k in kernels])
  return [tf.reshape(piece, k.shape) for piece, k in zip(pieces, kernels)]


class PruningTrainer(finetune.FromSource, cifar10_trainer.Trainer):
  """cifar10_trainer.Trainer whose conv and dense matrices carry magnitude masks.

  The masks are non-trainable variables, one beside each pruned matrix (in the order of
  model.kernels), saved in the checkpoint as `masks`. A mask multiplies its matrix and the
  matrix's EMA shadow after every update, so pruned entries are exactly zero in both; with
  plain SGD that equals masking the gradient (Zhu & Gupta's masked updates).
  """

  kind = 'pruning'

  def __init__(self, config, settings, source_checkpoint=None, strategy=None, schedule=None):
    self.settings, self.source_checkpoint = settings, source_checkpoint
    # Calls extra_state(), which makes the masks.
    super().__init__(config, strategy, schedule=schedule)
    self.num_weights = sum(math.prod(k.shape) for k, _ in self.model.kernels)
    self.num_dense = self.num_weights - sum(math.prod(k.shape) for k in self.pruned)
    # A share of all the matrices, reached by the pruned ones alone.
    self.scale = self.num_weights / (self.num_weights - self.num_dense)
    if settings.target_sparsity * self.scale >= 1.0:
      raise cifar10_config.ConfigError(
          f'--target_sparsity={settings.target_sparsity} of all the matrices cannot be reached '
          f'with --dense_layers={",".join(settings.dense_layers)} holding '
          f'{self.num_dense / self.num_weights:.1%} of the weights: lower one of them.')

  def extra_state(self):
    """One all-ones mask per pruned matrix, saved in the checkpoint as `masks`."""
    layers = self.model.weight_layers()
    names = set(self.settings.dense_layers) - {ENDS}
    if ENDS in self.settings.dense_layers:  # the first layer with weights and the logits'
      names |= {layers[0].name, layers[-1].name}
    unknown = sorted(names - {layer.name for layer in layers})
    if unknown:
      raise cifar10_config.ConfigError(
          f'dense_layers {unknown} are not layers of {self.config.model}; its layers with '
          f'weights: {", ".join(layer.name for layer in layers)}')
    self.dense_names = [layer.name for layer in layers if layer.name in names]
    pruned_layers = [layer for layer in layers if layer.name not in names]
    self.pruned = [layer.kernel for layer in pruned_layers]
    self.pruned_shadows = [self.ema.average(k) for k in self.pruned]
    self.masks = [tf.Variable(tf.ones_like(layer.kernel), trainable=False,
                              name=f'{layer.name}/mask') for layer in pruned_layers]
    return {'masks': self.masks}

  def before_update(self):
    if self.settings.is_update_step(self.step):
      self.update_masks(self.settings.sparsity(self.step))

  def after_update(self, metrics):
    self.apply_masks()
    metrics['sparsity'] = self.sparsity()

  def update_masks(self, sparsity):
    for mask, new in zip(self.masks, new_masks(self.pruned, sparsity * self.scale,
                                               self.settings.threshold,
                                               self.settings.target_sparsity * self.scale)):
      mask.assign(new)
    self.apply_masks()

  def apply_masks(self):
    for kernel, shadow, mask in zip(self.pruned, self.pruned_shadows, self.masks):
      kernel.assign(kernel * mask)
      shadow.assign(shadow * mask)

  def sparsity(self):
    """Fraction of zeros over every conv and dense matrix, the dense ones included."""
    kept = tf.add_n([tf.reduce_sum(mask) for mask in self.masks]) + self.num_dense
    return 1.0 - kept / self.num_weights


# --------------------------------------------------------------------------- report


def ema_weights(trainer):
  """{'<layer>/kernel' or '<layer>/bias': NumPy} of every weight layer of the model as it
  infers, read from the run's newest checkpoint: the EMA shadows, each BatchNorm folded into
  its convolution (whose zeros stay)."""
  loaded = cifar10_run.load_inference_model(trainer.config.train_dir, conv='direct',
                                            fold_batchnorm=True, flag='--train_dir')
  return {f'{layer.name}/{part}': getattr(layer, part).numpy()
          for layer in loaded.model.weight_layers() for part in ('kernel', 'bias')}


def layer_rows(trainer):
  """Per conv/dense matrix: layer, shape, size, nonzeros, pruned (bool) of the EMA weights."""
  pruned = {id(k) for k in trainer.pruned}
  rows = []
  for layer in trainer.model.weight_layers():
    value = trainer.ema.average(layer.kernel).numpy()
    rows.append({'layer': layer.name, 'shape': list(value.shape), 'size': int(value.size),
                 'nonzeros': int((value != 0).sum()), 'pruned': id(layer.kernel) in pruned})
  return rows


def build_report(trainer, sparse_path):
  """The report of a restored PruningTrainer; writes its EMA weights to `sparse_path`."""
  weights = ema_weights(trainer)
  config = trainer.config
  payload = sparse.save(sparse_path, weights, {
      'model': config.model, 'image_size': config.image_size,
      'step': int(trainer.step.numpy()), 'weights': 'ema'})
  rows = layer_rows(trainer)
  size, nonzeros = sum(r['size'] for r in rows), sum(r['nonzeros'] for r in rows)
  params = sum(w.size for w in weights.values())
  return {'model': config.model, 'step': int(trainer.step.numpy()),
          'settings': dataclasses.asdict(trainer.settings), 'layers': rows,
          'weights': size, 'nonzeros': nonzeros, 'sparsity': 1.0 - nonzeros / size,
          'params': int(params), 'dense_float32_bytes': int(params) * sparse.FLOAT32_BYTES,
          'sparse_payload_bytes': payload,
          'sparse_file': os.path.basename(sparse_path),
          'sparse_file_bytes': os.path.getsize(sparse_path)}


def format_report(report):
  """The printed form of `build_report`'s dict."""
  lines = [f'{report["model"]} at step {report["step"]}: per conv/dense matrix (EMA weights)',
           f'{"layer":<22} {"shape":<16} {"weights":>10} {"nonzeros":>10} {"sparsity":>9}']
  for row in report['layers']:
    shape = 'x'.join(str(d) for d in row['shape'])
    mark = '' if row['pruned'] else '  (kept dense)'
    lines.append(f'{row["layer"]:<22} {shape:<16} {row["size"]:>10,} {row["nonzeros"]:>10,} '
                 f'{1 - row["nonzeros"] / row["size"]:>8.2%}{mark}')
  lines.append(f'all matrices: {report["nonzeros"]:,} of {report["weights"]:,} nonzero, '
               f'sparsity {report["sparsity"]:.2%}')
  ratio = report['dense_float32_bytes'] / report['sparse_file_bytes']
  lines.append(f'size: dense float32 {report["dense_float32_bytes"]:,} B; sparse '
               f'{report["sparse_file"]} {report["sparse_file_bytes"]:,} B on disk '
               f'({report["sparse_payload_bytes"]:,} B payload), {ratio:.2f}x smaller')
  return '\n'.join(lines)


# --------------------------------------------------------------------------- binary


def _comparable(record):
  """The settings record with the source's path resolved: ./runs/x, runs/x, /abs/runs/x alike."""
  source = record.get('source_checkpoint')
  return {**record, 'source_checkpoint': source and os.path.realpath(source)}


def write_settings(train_dir, settings, source_checkpoint, schedule=None):
  """Saves the pruning settings (and the fine-tuning's Schedule) in train_dir;
  refuses to resume a run pruned differently."""
  record = {'source_checkpoint': source_checkpoint, **dataclasses.asdict(settings)}
  # Before this was recorded, a run with dense layers aimed its target at the pruned
  # matrices alone: such a run is refused on resume (the masks would differ).
  record['target_over'] = 'all'
  if schedule is not None:
    record['finetune_schedule'] = finetune.schedule_record(schedule)
  path = os.path.join(train_dir, SETTINGS_FILE)
  previous = finetune.read_settings(path)
  if previous is not None:
    previous = _comparable(previous)
    if 'target_over' not in previous and not settings.dense_layers:
      previous['target_over'] = 'all'  # Written before it was recorded; the same meaning.
    if 'finetune_schedule' not in previous and schedule is not None:
      # Pruned before the fine-tuning had a schedule of its own: it ran the source's on.
      if schedule.first_step:
        raise cifar10_config.ConfigError(
            f'{train_dir} was pruned with the source\'s learning-rate schedule run on (before '
            'the fine-tuning had its own): resume it with --lr_schedule=continue.')
      previous['finetune_schedule'] = record['finetune_schedule']
  finetune.keep_settings(path, previous, _comparable(record), 'pruning')


def prepare(values):
  """(TrainConfig, PruningSettings, source checkpoint, fine-tuning Schedule) from the flag
  values, checked."""
  source_config, source, start = finetune.source_run(values, 'pruning', SETTINGS_FILE)
  last = start + values['finetune_steps']
  begin, end = finetune.window(values, start, last, 'pruning')
  try:
    settings = PruningSettings(
        target_sparsity=values['target_sparsity'], initial_sparsity=values['initial_sparsity'],
        begin_step=begin, end_step=end, frequency=values['frequency'], mode=values['mode'],
        rounds=values['rounds'], threshold=values['threshold'],
        dense_layers=tuple(values['dense_layers']))
  except ValueError as e:
    raise cifar10_config.ConfigError(f'pruning flags: {e}') from e
  rates, schedule = finetune.finetune_schedule(values, source_config, start, last)
  config = dataclasses.replace(source_config, train_dir=values['train_dir'], max_steps=last,
                               **rates, **finetune.config_fields(values, CONFIG_FIELDS))
  return config, settings, source, schedule


def run(values):
  """Prunes as the flag values say; returns what sys.exit takes (None: done)."""
  return cifar10_trainer.exit_status(lambda: _prune(values))


def _prune(values):
  strategy = cifar10_trainer.start_strategy(values)
  config, settings, source, schedule = prepare(values)
  cifar10_trainer.log(finetune.describe(schedule, values))
  # Checks --dense_layers first.
  trainer = PruningTrainer(config, settings, source, strategy=strategy, schedule=schedule)
  if trainer.worker.is_chief:  # The only writer of the run folder.
    write_settings(config.train_dir, settings, source, schedule)
  split = cifar10_records.load_split(cifar10_flags.batches_dir(values), 'train')
  cifar10_trainer.install_stop_handlers()
  cifar10_trainer.train(config, split, make_trainer=lambda _: trainer, strategy=strategy)
  if trainer.worker.is_chief:
    report = build_report(trainer, os.path.join(config.train_dir, SPARSE_FILE))
    cifar10_run.write_json(os.path.join(config.train_dir, REPORT_FILE), report)
    print(format_report(report))


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the training flags a fine-tuning may change and this program's;
  {name: FlagHolder}."""
  d = PruningSettings
  holders = cifar10_flags.define_data_flags(flag_values)
  holders.update(finetune.define_config_flags(CONFIG_FIELDS, flag_values))
  holders.update(
      target_sparsity=flags.DEFINE_float('target_sparsity', d.target_sparsity,
                                         'Final fraction of zeros over all the conv and '
                                         'dense matrices, those of --dense_layers included '
                                         '(the pruned ones go further).', 0.0, 0.999,
                                         flag_values=flag_values),
      initial_sparsity=flags.DEFINE_float('initial_sparsity', d.initial_sparsity,
                                          'Sparsity at --begin_step.', 0.0, 0.999,
                                          flag_values=flag_values),
      mode=flags.DEFINE_enum('mode', d.mode, list(MODES), 'gradual (Zhu & Gupta), oneshot, '
                             'or iterative prune -> retrain rounds (Han et al.).',
                             flag_values=flag_values),
      rounds=flags.DEFINE_integer('rounds', d.rounds, 'Prune -> retrain rounds (iterative).',
                                  lower_bound=1, flag_values=flag_values),
      threshold=flags.DEFINE_enum('threshold', d.threshold, list(THRESHOLDS),
                                  'per_layer: each matrix to the target; global: one '
                                  'magnitude threshold over all of them; erk: each matrix to '
                                  'its Erdos-Renyi-kernel share (Evci et al. 2020).',
                                  flag_values=flag_values),
      dense_layers=flags.DEFINE_list('dense_layers', list(d.dense_layers), 'Layers never '
                                     f'pruned, e.g. conv1; {ENDS} (the default): the first '
                                     'layer with weights and the logits layer; empty '
                                     '(--dense_layers=): none.',
                                     flag_values=flag_values),
  )
  holders.update(finetune.define_run_flags(flag_values, d.frequency))
  holders.update(finetune.define_flags(flag_values))
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
