"""What a training run writes for TensorBoard beside its scalars.

At each start of a run's process (a fresh run or a resume), into the run folder's event file:

  config         the run's TrainConfig as a text summary (a markdown table; Text tab)
  hparams        the same fields as HParams session data (HParams tab), so that TensorBoard
                 lists the runs of a folder side by side with their evaluated precision
  train_step     the graph of one training step, traced on the process's first step (Graphs)
  histograms and four distorted input images on the first step, then every
                 --histogram_steps (Histograms, Images)

and with --profile_steps=A,B a TensorFlow profile of steps A to B under
<train_dir>/plugins/profile (Profile tab: TensorBoard's profile plugin, an optional install,
`make profile-plugin`). Only the chief of a cluster writes (the trainer gives the others a
writer that writes nothing, and no profile).
"""

import contextlib
import dataclasses

import tensorflow as tf
from tensorboard.plugins.hparams import summary_v2 as hparams_api  # api.py would import Keras

# Fields left out of the HParams: where the run is, not how it trains.
NOT_HPARAMS = ('train_dir',)


def hparams_of(config):
  """{field: value} of a TrainConfig as HParams takes them (bool, int, float, str)."""
  return {field.name: getattr(config, field.name) for field in dataclasses.fields(config)
          if field.name not in NOT_HPARAMS}


def config_table(config):
  """The markdown table of a TrainConfig's fields and values (the `config` text summary)."""
  rows = [f'| {field.name} | `{getattr(config, field.name)!r}` |'
          for field in dataclasses.fields(config)]
  return '\n'.join(['| field | value |', '|---|---|'] + rows)


def write_run_start(config, step):
  """The config text and the HParams session of this process's start, at `step`."""
  tf.summary.text('config', config_table(config), step=step)
  hparams_api.hparams(hparams_of(config), trial_id=config.train_dir, start_time_secs=None)


@contextlib.contextmanager
def traced_step(step, enabled=True):
  """Records the graph of what runs inside (one training step, traced at its first call)
  as `train_step` at `step`. Nothing is recorded for a tf.function traced before."""
  if not enabled:
    yield
    return
  tf.summary.trace_on(graph=True, profiler=False)
  try:
    yield
  finally:
    tf.summary.trace_export('train_step', step=step)


def write_histograms(variables, images, step):
  """Histograms of `variables` and four of the batch's `images`, rescaled to [0, 1] per image
  (standardized images are not in TensorBoard's range)."""
  for variable in variables:
    tf.summary.histogram(variable.name, variable, step=step)
  shown = images[:4]
  low = tf.reduce_min(shown, axis=[1, 2, 3], keepdims=True)
  high = tf.reduce_max(shown, axis=[1, 2, 3], keepdims=True)
  tf.summary.image('distorted_inputs', (shown - low) / (high - low + 1e-6), step=step)


class Profile:
  """--profile_steps=A,B: the TensorFlow profiler runs from step A to step B, both included
  (a run resumed inside the window profiles the rest of it)."""

  def __init__(self, window, logdir, log):
    self.window, self.logdir, self.log = window, logdir, log
    self.running = False

  def before(self, step):
    """Called before step `step` runs."""
    if self.window and not self.running and self.window[0] <= step <= self.window[1]:
      tf.profiler.experimental.start(self.logdir)
      self.running = True

  def after(self, step):
    """Called after step `step` ran."""
    if self.running and step >= self.window[1]:
      self.stop()

  def stop(self):
    """Ends the profile (also when the run stops inside the window) and says where it is."""
    if self.running:
      tf.profiler.experimental.stop()
      self.running = False
      self.log(f'profile of steps {self.window[0]}..{self.window[1]} written under '
               f'{self.logdir}/plugins/profile (TensorBoard\'s Profile tab: '
               'make profile-plugin)')
