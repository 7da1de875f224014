"""Trains a CIFAR-10 model: an optimizer of cifar10_optim (SGD, momentum, Nesterov, AdamW), an
EMA of the weights and resumable checkpoints.

    python cifar10_train.py --model=tutorial --train_dir=runs/tutorial --max_steps=10000
    python cifar10_train.py --model=budget0 --recipe=fast32 --train_dir=runs/budget0

--recipe picks a named set of defaults (cifar10_config.RECIPES, docs/recipes.md): the study's
(the default), the tutorial's, or the faster ones of later practice. Every flag but the data
flags and --restart is a field of cifar10_config.TrainConfig (docs/flags.md lists them).

Re-running the same command resumes from the latest checkpoint in --train_dir, with the
batches an uninterrupted run would have seen; a run always ends with a checkpoint at exactly
--max_steps (with --deterministic, bit-identical to an uninterrupted run's). Every
--log_frequency steps it prints the tutorial's line, `step N/max_steps, loss = ...` with the
speed and an ETA, and writes scalar summaries for TensorBoard; --checkpoint_steps bounds the
work a kill can lose. Run `cifar10_eval.py --checkpoint_dir=<train_dir>` beside it.
--strategy trains on several devices or machines with tf.distribute, a step meaning the same
(cifar10_distribute.py). A setting that trains but likely not as meant (a warm-up longer
than the run) gets a `note:` line at the start. The trainer itself is cifar10_trainer.py.
"""

import sys

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

import cifar10_config
import cifar10_flags
import cifar10_records
import cifar10_trainer


def define_flags(flag_values=flags.FLAGS):
  """The data flags, one flag per TrainConfig field, and --restart; {name: FlagHolder}."""
  holders = cifar10_flags.define_data_flags(flag_values)
  holders.update(cifar10_flags.define_config_flags(cifar10_flags.TRAINING_FLAGS, flag_values))
  holders['restart'] = flags.DEFINE_boolean(
      'restart', False, 'Start again from step 0: the existing checkpoints, event files and '
      'evaluations are moved into a restarted-<time> subfolder.', flag_values=flag_values)
  return holders


def run(values, given=()):
  """Trains as the flag values say (cifar10_flags.read); returns what sys.exit takes: None
  when done, `error: ...` for a bad input, 128 + the signal's number after a stop."""
  return cifar10_trainer.exit_status(lambda: _train(values, given))


def _train(values, given):
  strategy = cifar10_trainer.start_strategy(values)
  config = cifar10_config.config_from_values(values, given)
  cifar10_trainer.log(cifar10_config.recipe_summary(config))
  for note in cifar10_config.notes(config):
    cifar10_trainer.log(f'note: {note}')
  split = cifar10_records.load_split(cifar10_flags.batches_dir(values), 'train')
  cifar10_trainer.install_stop_handlers()  # Only now: before, Ctrl-C ends a download.
  cifar10_trainer.train(config, split, restart=values['restart'], strategy=strategy)


def main(argv):
  sys.exit(run(*cifar10_flags.main_values(argv, _FLAGS)))


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
