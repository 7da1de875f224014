"""Channel slimming: structured pruning that leaves a smaller model, faster on any runtime.

    python compress/slim.py --source_dir=runs/budget1_m20k --train_dir=runs/budget1_slim50 \
        --target_flops=0.5

Fine-tunes a trained run (cifar10_train.py's) while whole output channels of its
convolutions and units of its dense layers go, with what reads them (compress/channels.py),
until the model's FLOPs (the project's counting rules) are --target_flops of the source's:

1. **Masked**, from the source's last step: between --begin_step and --end_step the FLOP
   budget falls along Zhu & Gupta's cubic, f_t = f + (1 - f)(1 - progress)^3, and every
   --frequency steps the channels of lowest score are masked until the model fits it
   (a mask zeroes a channel's kernel column, bias and BatchNorm gamma and beta, in the
   weights and their EMA shadows). Scores (--criterion): `bn_scale`, |gamma| of the
   channel's BatchNorms, one threshold over all layers, with an L1 penalty
   --penalty * sum |gamma| in the loss (Liu et al. 2017, network slimming); `l1_norm`, the
   L1 norm of the channel's filters over its layer's mean (Li et al. 2017), for models
   without BatchNorm too. Every layer keeps at least --min_keep of its channels. This
   phase's checkpoints are in <train_dir>/masked.
2. **Narrow**: one step after --end_step the masks are final, and <train_dir> becomes an
   ordinary run of the same --model with `widths` in its config.json (the kept channels
   of each layer): its first checkpoint is the masked one cut down (weights, EMA shadows,
   BatchNorm statistics, optimizer slots), and it fine-tunes on to the last step with the
   same learning-rate schedule (compress/finetune.py). Evaluation, quantization, export,
   the latency benchmark and classification read it like any run.

Removing a channel from an LRN's input (the tutorial's conv1 and conv2) moves its
neighbours' normalization windows: the narrow model is then not exactly the masked one, and
the second phase's fine-tuning absorbs the difference (the report gives the precision
right before and after the cut). Re-running the same command resumes either phase.
Report: printed and <train_dir>/slim_report.json.
"""

import dataclasses
import math
import os
import sys

if __package__ in (None, ''):  # Run as `python compress/slim.py`: the project root first on
  # the path, not this folder (its modules must not shadow others, e.g. the stdlib's trace).
  sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf

import cifar10_config
import cifar10_flags
import cifar10_model
import cifar10_records
import cifar10_run
import cifar10_scoring
import cifar10_trainer
import models
from compress import channels
from compress import finetune

CRITERIA = ('bn_scale', 'l1_norm')
ALLOCATIONS = ('global', 'uniform')
MASKED_DIR = 'masked'  # <train_dir>/masked: the first phase's run
SETTINGS_FILE = 'slimming.json'
REPORT_FILE = 'slim_report.json'


@dataclasses.dataclass(frozen=True)
class SlimSettings:
  """What to slim, how far and when; steps count from the start of the source run."""
  target_flops: float = 0.5  # the slim model's FLOPs over the source's
  # The defaults are the best measured on budget1 (docs/compression.md): l1_norm over
  # bn_scale by 1 point, uniform over global by 0.1 and far faster, whole blocks of 8.
  criterion: str = 'l1_norm'
  allocation: str = 'uniform'  # or 'global': one ranking of every channel (select)
  penalty: float = 1e-4  # bn_scale: the loss gains penalty * sum |gamma|
  min_keep: float = 0.1  # every group keeps at least this share of its channels (and one)
  multiple: int = 8  # a narrowed group keeps a multiple of this many channels (select)
  whole_layers: tuple = ()  # groups (by name) that keep every channel, e.g. ('conv1_1',)
  begin_step: int = 0
  end_step: int = 0
  frequency: int = 100  # steps between mask updates

  def __post_init__(self):
    if not 0.0 < self.target_flops <= 1.0:
      raise ValueError(f'target_flops must be in (0, 1], got {self.target_flops}')
    if self.criterion not in CRITERIA or self.allocation not in ALLOCATIONS:
      raise ValueError(f'criterion must be one of {CRITERIA} and allocation one of '
                       f'{ALLOCATIONS}, got {self.criterion!r} and {self.allocation!r}')
    if (not 0.0 < self.min_keep <= 1.0 or self.penalty < 0 or self.frequency < 1
        or self.multiple < 1):
      raise ValueError('need 0 < min_keep <= 1, penalty >= 0, frequency >= 1 and '
                       'multiple >= 1')
    if not 0 <= self.begin_step <= self.end_step:
      raise ValueError(f'need 0 <= begin_step <= end_step, got {self.begin_step} and '
                       f'{self.end_step}')

  def budget(self, step):
    """The FLOP budget at `step`, a fraction of the source's (1 before begin_step)."""
    if step < self.begin_step:
      return 1.0
    span = self.end_step - self.begin_step
    progress = min((step - self.begin_step) / span, 1.0) if span else 1.0
    return self.target_flops + (1.0 - self.target_flops) * (1.0 - progress) ** 3

  def is_update_step(self, step):
    """Whether the masks are recomputed before the update of `step` (int64 scalar tensor)."""
    inside = tf.logical_and(step >= self.begin_step, step <= self.end_step)
    on_beat = tf.logical_or(tf.equal((step - self.begin_step) % self.frequency, 0),
                            tf.equal(step, self.end_step))
    return tf.logical_and(inside, on_beat)


class FlopCounter:
  """FLOPs of the config's model at given widths (built without random ops, cached)."""

  def __init__(self, config):
    self.config, self.cache = config, {}

  def __call__(self, widths):
    key = tuple(sorted(widths.items()))
    if key not in self.cache:
      with cifar10_model.shapes_only():
        model = models.build(self.config.model, self.config.image_size, widths=widths)
      self.cache[key] = sum(row.flops for row in cifar10_model.count_model(model))
    return self.cache[key]


def channel_scores(groups, criterion):
  """{group name: float64 [size]} of the channels' scores (higher: more worth keeping)."""
  scores = {}
  for group in groups:
    if criterion == 'bn_scale':
      scores[group.name] = sum(np.abs(n.gamma.numpy()).astype(np.float64) for n in group.norms)
    else:
      norms = sum(np.abs(layer.kernel.numpy()).reshape(-1, group.size).sum(axis=0)
                  .astype(np.float64) for layer in group.producers)
      scores[group.name] = norms / max(norms[norms > 0].mean() if norms.any() else 1.0, 1e-12)
  return scores


def select(groups, scores, kept, flops_of, budget, min_keep, allocation='global', multiple=1,
           whole=()):
  """The channels to keep: the lowest-scored of those kept so far go, fewest first, until
  flops_of(widths) <= budget (or every group is down to its minimum).

  allocation 'global' ranks all channels by score; 'uniform' takes them in turns, each
  group's lowest-scored first, so that every group loses the same share of its channels
  (Li et al. 2017 prune each layer by the same ratio).

  Args:
    groups: channels.channel_groups.
    scores: channel_scores.
    kept: {group name: bool [size]} kept so far (a masked channel never comes back).
    flops_of: {producer name: width} -> FLOPs.
    budget: the FLOPs to reach.
    min_keep: the share of each group's channels always kept.
    allocation: 'global' or 'uniform'.
    multiple: a group that loses channels keeps a multiple of this many (its lowest-scored
      beyond one go too; its floor is rounded up to one): runtimes compute channels in
      blocks (XNNPACK: 8 or 16 wide), so a width between two multiples costs the larger.
    whole: names of groups that keep every channel.

  Returns:
    {group name: bool [size]}.
  """
  floor = {g.name: min(g.size, math.ceil(max(1, math.ceil(min_keep * g.size)) / multiple)
                      * multiple) if g.name not in whole else g.size for g in groups}
  orders = {g.name: sorted(np.flatnonzero(kept[g.name]), key=lambda c, g=g: scores[g.name][c])
            for g in groups}  # each group's kept channels, lowest score first: sorted once
  candidates = []
  for g in groups:
    gone = g.size - len(orders[g.name])  # removed by earlier updates: uniform counts them in
    candidates += [((gone + rank + 1) / g.size if allocation == 'uniform'
                    else scores[g.name][c], scores[g.name][c], g.name, c)
                   for rank, c in enumerate(orders[g.name])]
  candidates.sort()

  def removing(count):
    new = {name: mask.copy() for name, mask in kept.items()}
    removed = 0
    for _, _, name, channel in candidates:
      if removed == count:
        break
      if new[name].sum() > floor[name]:
        new[name][channel] = False
        removed += 1
    return _whole_blocks(groups, orders, new, multiple)

  def fits(count):
    new = removing(count)
    return flops_of(channels.widths_of(groups, {n: np.flatnonzero(m) for n, m in new.items()}))\
        <= budget
  low, high = 0, len(candidates)  # the fewest removals that fit: binary search (monotone)
  while low < high:
    middle = (low + high) // 2
    if fits(middle):
      high = middle
    else:
      low = middle + 1
  return removing(low)


def _whole_blocks(groups, orders, kept, multiple):
  """`kept` with each narrowed group's count rounded down to a multiple, the lowest-scored
  of its channels (`orders`: a superset of them, lowest score first) going first (in place)."""
  for g in groups:
    count = int(kept[g.name].sum())
    if multiple > 1 and count < g.size and count % multiple:
      still = [c for c in orders[g.name] if kept[g.name][c]]
      kept[g.name][still[:count % multiple]] = False
  return kept


class SlimTrainer(finetune.FromSource, cifar10_trainer.Trainer):
  """cifar10_trainer.Trainer whose channel groups carry masks (the first phase).

  The masks are non-trainable float vectors, one per group, saved in the checkpoint as
  `channel_masks`. Each update step recomputes them in Python (tf.py_function: selection
  counts FLOPs by building models), and after every update they multiply each masked
  variable and its EMA shadow. One device only.
  """

  kind = 'slimming'

  def __init__(self, config, settings, source_checkpoint=None, schedule=None):
    self.settings, self.source_checkpoint = settings, source_checkpoint
    super().__init__(config, schedule=schedule)  # Calls extra_state(), which makes masks.
    self.flops_of = FlopCounter(config)
    self.dense_flops = self.flops_of({})

  def extra_state(self):
    try:
      self.groups = channels.channel_groups(self.model)
    except channels.UnsupportedModel as e:
      raise cifar10_config.ConfigError(f'{self.config.model} cannot be slimmed: {e}') from e
    unknown = sorted(set(self.settings.whole_layers) - {g.name for g in self.groups})
    if unknown:
      raise cifar10_config.ConfigError(
          f'--whole_layers: {", ".join(unknown)} are no channel groups of {self.config.model}; '
          f'its groups: {", ".join(g.name for g in self.groups)}')
    bare = [g.name for g in self.groups if not g.norms]
    if self.settings.criterion == 'bn_scale' and bare:
      raise cifar10_config.ConfigError(
          f'--criterion=bn_scale: {bare[0]} has no BatchNorm to read a scale from; use '
          '--criterion=l1_norm for this model')
    self.masks = {g.name: tf.Variable(tf.ones([g.size]), trainable=False,
                                      name=f'{g.name}/channel_mask') for g in self.groups}
    self.masked = [(v, self.ema.average(v) if v.trainable else None, name)
                   for v, name in channels.masked_variables(self.groups)]
    return {'channel_masks': [self.masks[g.name] for g in self.groups]}

  def objective(self, images, labels):
    cross_entropy, decay, logits = super().objective(images, labels)
    if self.settings.criterion == 'bn_scale' and self.settings.penalty:
      decay += self.settings.penalty * tf.add_n(
          [tf.reduce_sum(tf.abs(n.gamma)) for g in self.groups for n in g.norms])
    return cross_entropy, decay, logits

  def before_update(self):
    def update():
      new = tf.py_function(self._new_masks, [self.step], [tf.float32] * len(self.groups))
      for group, value in zip(self.groups, new):
        self.masks[group.name].assign(tf.reshape(value, [group.size]))
      self.apply_masks()
      return tf.constant(True)
    tf.cond(self.settings.is_update_step(self.step), update, lambda: tf.constant(False))

  def _new_masks(self, step):
    """The masks of `step`'s budget, from the current weights (runs eagerly)."""
    kept = {name: mask.numpy() > 0 for name, mask in self.masks.items()}
    budget = self.settings.budget(int(step)) * self.dense_flops
    new = select(self.groups, channel_scores(self.groups, self.settings.criterion), kept,
                 self.flops_of, budget, self.settings.min_keep, self.settings.allocation,
                 self.settings.multiple, self.settings.whole_layers)
    flops = self.flops_of(channels.widths_of(
        self.groups, {name: np.flatnonzero(mask) for name, mask in new.items()}))
    channels_kept = sum(int(mask.sum()) for mask in new.values())
    cifar10_trainer.log(f'step {int(step)}: channels kept {channels_kept} of '
                        f'{sum(g.size for g in self.groups)}, FLOPs '
                        f'{flops / self.dense_flops:.1%} of the dense model\'s (budget '
                        f'{budget / self.dense_flops:.1%})')
    return [new[g.name].astype(np.float32) for g in self.groups]

  def after_update(self, metrics):
    self.apply_masks()
    metrics['channels_kept'] = tf.add_n([tf.reduce_sum(m) for m in self.masks.values()])

  def apply_masks(self):
    for variable, shadow, name in self.masked:
      variable.assign(variable * self.masks[name])
      if shadow is not None:
        shadow.assign(shadow * self.masks[name])

  def kept(self):
    """{group name: int64 indices of the kept channels}."""
    return {name: np.flatnonzero(mask.numpy() > 0) for name, mask in self.masks.items()}


def narrow(masked, config, schedule):
  """Writes the first checkpoint of the slim run `config` (an ordinary run with widths) cut
  from the restored SlimTrainer `masked`; returns the kept channels."""
  keep = masked.kept()
  found = channels.slices(masked.groups, keep)
  with cifar10_run.locked(config.train_dir):
    small = cifar10_trainer.Trainer(config, schedule=schedule)
    small.files.open()
    big_all, small_all = masked.model.variables, small.model.variables
    if [v.name for v in big_all] != [v.name for v in small_all]:
      raise AssertionError('the slim model does not have the masked model\'s variables')
    for big, little in zip(big_all, small_all):
      little.assign(channels.narrowed_values(big, big.numpy(), found))
    for big, shadow in zip(masked.variables, small.ema_shadows):
      shadow.assign(channels.narrowed_values(big, masked.ema.average(big).numpy(), found))
    big_slots, small_slots = (masked.optimizer.checkpoint_state(),
                              small.optimizer.checkpoint_state())
    for name, slots in big_slots.items():
      if not isinstance(slots, list):  # a counter (AdamW's updates), not one per variable
        small_slots[name].assign(slots)
        continue
      for big, slot, little in zip(masked.variables, slots, small_slots[name]):
        little.assign(channels.narrowed_values(big, slot.numpy(), found))
    small.step.assign(masked.step)
    small.save(float(masked.train_seconds.numpy()))
    cifar10_run.write_config(config)
  return keep


# --------------------------------------------------------------------------- binary


def prepare(values):
  """(source config, masked config, slim config without widths, settings, source
  checkpoint, schedule) from the flag values, checked."""
  source_config, source, start = finetune.source_run(values, 'slimming', SETTINGS_FILE)
  if source_config.widths:
    raise cifar10_config.ConfigError(f'--source_dir={values["source_dir"]} is a slimmed run '
                                     f'already (widths {source_config.widths}); slim its source.')
  last = start + values['finetune_steps']
  begin, end = finetune.window(values, start, last, 'slimming', cut=True)
  try:
    settings = SlimSettings(
        target_flops=values['target_flops'], criterion=values['criterion'],
        allocation=values['allocation'],
        penalty=values['penalty'], min_keep=values['min_keep'], multiple=values['multiple'],
        whole_layers=tuple(values['whole_layers']), begin_step=begin,
        end_step=end, frequency=values['frequency'])
  except ValueError as e:
    raise cifar10_config.ConfigError(f'slimming flags: {e}') from e
  rates, schedule = finetune.finetune_schedule(values, source_config, start, last)
  slim = dataclasses.replace(source_config, train_dir=values['train_dir'], max_steps=last, **rates,
                             **finetune.config_fields(values))
  masked = dataclasses.replace(slim, train_dir=os.path.join(values['train_dir'], MASKED_DIR),
                               max_steps=end + 1)
  return source_config, masked, slim, settings, source, schedule


def build_report(config, masked_config, keep, groups, evaluations):
  """The report of a finished slim run."""
  counter = FlopCounter(config)
  widths = channels.widths_of(groups, keep)
  with cifar10_model.shapes_only():
    dense = models.build(config.model, config.image_size)
    slim = models.build(config.model, config.image_size, widths=widths)
  return {'model': config.model, 'widths': cifar10_model.format_widths(widths),
          'groups': [{'name': g.name, 'channels': g.size, 'kept': len(keep[g.name])}
                     for g in groups],
          'flops': {'dense': counter({}), 'slim': counter(widths),
                    'ratio': counter(widths) / counter({})},
          'params': {'dense': dense.num_params(), 'slim': slim.num_params()},
          'precision': evaluations, 'masked_dir': masked_config.train_dir}


def format_report(report):
  lines = [f'{report["model"]} slimmed: per group, channels kept of the dense model\'s']
  lines += [f'  {g["name"]:<16} {g["kept"]:>5} of {g["channels"]:>5}' for g in report['groups']]
  f, p = report['flops'], report['params']
  lines.append(f'FLOPs {f["slim"]:,} of {f["dense"]:,} ({f["ratio"]:.1%}); parameters '
               f'{p["slim"]:,} of {p["dense"]:,}; --widths={report["widths"]}')
  lines += [f'precision @ 1 ({name}): {value:.4f}' for name, value in report['precision'].items()]
  return '\n'.join(lines)


def _precision(config, checkpoint_dir, test):
  """Precision @ 1 (EMA) of the newest checkpoint of a run, on `test`."""
  evaluator = cifar10_scoring.Evaluator(config, test, conv='direct')
  cifar10_run.load_inference_model(checkpoint_dir, ema=True, state=evaluator)
  return evaluator.precision()[0]


def run(values, batches_dir=None):
  """Slims as the flag values say; returns what sys.exit takes (None: done). `batches_dir`:
  the data's batches folder, default the one --data_dir names (found or extracted)."""
  return cifar10_trainer.exit_status(lambda: _slim(values, batches_dir))


def _slim(values, batches_dir):
  if values['strategy'] != 'default':
    raise cifar10_config.ConfigError('--strategy: slimming runs on one device for now')
  _, masked_config, slim, settings, source, schedule = prepare(values)
  cifar10_trainer.log(finetune.describe(schedule, values))
  batches_dir = batches_dir or cifar10_flags.batches_dir(values)
  split = cifar10_records.load_split(batches_dir, 'train')
  cifar10_trainer.install_stop_handlers()
  masked = SlimTrainer(masked_config, settings, source, schedule=schedule)
  path = os.path.join(slim.train_dir, SETTINGS_FILE)
  finetune.keep_settings(path, finetune.read_settings(path),
                         {'source_checkpoint': os.path.realpath(source),
                          **dataclasses.asdict(settings),
                          'finetune_schedule': finetune.schedule_record(schedule)}, 'slimming')
  if not cifar10_run.read_config(slim.train_dir):  # The first phase is not over.
    cifar10_trainer.train(masked_config, split, make_trainer=lambda _: masked)
    widths = channels.widths_of(masked.groups, masked.kept())
    slim = dataclasses.replace(slim, widths=cifar10_model.format_widths(widths))
    keep = narrow(masked, slim, schedule)
    cifar10_trainer.log(f'narrowed to --widths={slim.widths} at step {int(masked.step)}')
  else:
    slim = cifar10_run.read_config(slim.train_dir)
    masked.restore_latest()
    keep = masked.kept()
  cifar10_trainer.train(slim, split, make_trainer=lambda c: cifar10_trainer.Trainer(
      c, schedule=schedule))
  test = cifar10_records.load_split(batches_dir, 'test')
  evaluations = {'masked, before the cut': _precision(masked_config, masked_config.train_dir,
                                                       test),
                 'slim, last step': _precision(slim, slim.train_dir, test)}
  report = build_report(slim, masked_config, keep, masked.groups, evaluations)
  cifar10_run.write_json(os.path.join(slim.train_dir, REPORT_FILE), report)
  print(format_report(report))


def main(argv):
  sys.exit(run(cifar10_flags.main_values(argv, _FLAGS)[0]))


def define_flags(flag_values=flags.FLAGS):
  """The data flags, the training flags a fine-tuning may change and this program's;
  {name: FlagHolder}."""
  d = SlimSettings
  holders = cifar10_flags.define_data_flags(flag_values)
  # --strategy only to refuse any but the default: slimming runs on one device.
  holders.update(cifar10_flags.define_config_flags(('strategy',), flag_values))
  holders.update(finetune.define_config_flags(flag_values=flag_values))
  holders.update(
      target_flops=flags.DEFINE_float('target_flops', d.target_flops, "The slim model's "
                                      "FLOPs as a share of the source's.", 0.001, 1.0,
                                      flag_values=flag_values),
      criterion=flags.DEFINE_enum('criterion', d.criterion, list(CRITERIA), 'bn_scale: '
                                  '|gamma| with an L1 penalty (network slimming); l1_norm: '
                                  "filter L1 norms over their layer's mean.",
                                  flag_values=flag_values),
      allocation=flags.DEFINE_enum('allocation', d.allocation, list(ALLOCATIONS), 'global: '
                                   'one ranking of every channel by score; uniform: every '
                                   'layer loses the same share of its channels.',
                                   flag_values=flag_values),
      penalty=flags.DEFINE_float('penalty', d.penalty, 'bn_scale: the L1 coefficient on '
                                 "the BatchNorms' gamma.", lower_bound=0.0,
                                 flag_values=flag_values),
      whole_layers=flags.DEFINE_list('whole_layers', [], 'Layers (channel groups) that keep '
                                     'every channel, e.g. the first: conv1_1,conv1_2.',
                                     flag_values=flag_values),
      multiple=flags.DEFINE_integer('multiple', d.multiple, 'A narrowed layer keeps a '
                                    'multiple of this many channels (8 suits XNNPACK on x86 '
                                    'and ARM: docs/compression.md).', lower_bound=1,
                                    flag_values=flag_values),
      min_keep=flags.DEFINE_float('min_keep', d.min_keep, "Share of each layer's channels "
                                  'always kept.', 0.001, 1.0, flag_values=flag_values),
  )
  holders.update(finetune.define_run_flags(flag_values, d.frequency))
  holders.update(finetune.define_flags(flag_values))
  return holders


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
