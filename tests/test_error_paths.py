"""Every binary walked through its error paths: bad flags, missing, damaged or misplaced files.

Each case of CASES is one command on one bad input. A binary must fail with a nonzero exit
code and no traceback, and say what is wrong in one line that names the flag or the file:
  error  the last line of stderr is `error: ...` (the binaries' own checks), and stderr holds
         no other line;
  flags  absl's flag parser refused a value before main() ran: `FATAL Flags parsing error:
         ...`, then absl's pointer to --helpshort;
  usage  main() raised absl's app.UsageError (stray positional arguments): absl prints the
         binary's help, then the message as the last line.
The table doubles as the list of error paths.

Two tiers. The binaries shaped `define_flags(flag_values)` / `run(values)` (IN_PROCESS) take
their cases in this process (unit tier), as app.run would run them: a fresh absl FlagValues
parses the command (`flags`: it raises absl.flags.Error), main() gets the positional
arguments left (`usage`: it raises app.UsageError), and run() returns the `error: ...` line
sys.exit would print, with nothing else on stderr. A case marked `wiring`, and every case of
the binaries without that shape (models/count.py, bench/), also runs as a real process
(subprocess tier): absl's printing, the exit code, main's plumbing. The processes run once per
module, two at a time, each spending ~4 s importing TensorFlow before it parses a flag.

Downloads are refused in both tiers, so a case that looks for absent data ends in its
download error instead of fetching 170 MB: the processes see a proxy that does not exist; in
this process --data_url (cifar10_records.run's url) names a port where nothing listens unless
the case names one, and any other URL fails the test.

129 cases: 105 run in this process, and 38 as processes (the 24 cases of the scripts that only
run that way, and 14 wiring cases of the 105: at least one error case of every program).
"""

import concurrent.futures
import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
from unittest import mock
import urllib.request

from absl import app
from absl import flags
from absl import logging
import numpy as np
import pytest
import tensorflow as tf

import cifar10_classify
import cifar10_config
import cifar10_eval
import cifar10_export
import cifar10_flags
import cifar10_model
import cifar10_records
import cifar10_results
import cifar10_run
import cifar10_sweep
import cifar10_train
import cifar10_trainer
from compress import calibration as calibration_lib
from compress import int8
from compress import prune
from compress import qat
from compress import slim
from compress import quantize
from compress import sparse
from fixtures import TINY_SIZE, add_member, copy_run, make_batches_dir, tiny_config, tiny_split
from fixtures import write_batches_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_NETWORK = 'http://127.0.0.1:9'  # the discard port: nothing listens, a connect is refused
UNREACHABLE_URL = f'{NO_NETWORK}/{cifar10_records.ARCHIVE_NAME}'
TIMEOUT_SECS = 120  # per process; each takes ~6 s, mostly TensorFlow's import
FLAGS_ERROR = 'FATAL Flags parsing error: '


@dataclasses.dataclass(frozen=True)
class Case:
  """One command on one bad input.

  Attributes:
    binary: the script, from the project root.
    what: the bad input, in words (with the binary, the test id).
    args: the command-line arguments; `{case}` is the case's own empty folder, `{run}`,
      `{data}`, ... the shared inputs of `shared_inputs`.
    kind: 'error', 'flags' or 'usage' (the module docstring).
    names: texts the message must hold, formatted like args: the flag or the file.
    setup: optional callable(case_dir, shared) that makes the case's own inputs.
    wiring: whether the case also runs as a real process when its binary is in IN_PROCESS
      (the binaries outside run every case as one).
  """
  binary: str
  what: str
  args: tuple
  kind: str
  names: tuple
  setup: object = None
  wiring: bool = False

  @property
  def id(self):
    return f'{self.binary}: {self.what}'


# --------------------------------------------------------------------------- making inputs


def write(relative, content=b''):
  """A setup that writes `content` (bytes or str) at case_dir/relative."""
  def setup(case_dir, shared):
    del shared
    path = os.path.join(case_dir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
      f.write(content.encode() if isinstance(content, str) else content)
  return setup


def folder(relative):
  """A setup that makes the folder case_dir/relative."""
  return lambda case_dir, shared: os.makedirs(os.path.join(case_dir, relative))


def folder_instead(relative):
  """A setup that replaces the file case_dir/relative by a folder."""
  def setup(case_dir, shared):
    del shared
    os.remove(os.path.join(case_dir, relative))
    os.makedirs(os.path.join(case_dir, relative))
  return setup


def run_copy(*damages):
  """A setup that copies the trained run to case_dir/run, then damages it.

  Each damage is callable(run_dir).
  """
  def setup(case_dir, shared):
    run_dir = copy_run(shared['run'], os.path.join(case_dir, 'run'))
    for damage in damages:
      damage(str(run_dir))
  return setup


def batches(**kwargs):
  """A setup that makes full-size .bin files in case_dir (make_batches_dir's damages)."""
  return lambda case_dir, shared: make_batches_dir(case_dir, **kwargs)


def steps(*setups):
  """A setup running several setups in turn."""
  def setup(case_dir, shared):
    for one in setups:
      one(case_dir, shared)
  return setup


def truncate_checkpoints(run_dir):
  """Halves every checkpoint data file of a run: the index still lists what is gone."""
  for name in os.listdir(run_dir):
    if '.data-' in name:
      path = os.path.join(run_dir, name)
      os.truncate(path, os.path.getsize(path) // 2)


def remove_checkpoints(run_dir):
  """Deletes every checkpoint file of a run; its config.json stays."""
  for name in os.listdir(run_dir):
    if name.startswith('ckpt-'):
      os.remove(os.path.join(run_dir, name))


def set_config(**values):
  """A damage rewriting config.json's fields as raw JSON (no TrainConfig checks them)."""
  def damage(run_dir):
    path = os.path.join(run_dir, cifar10_run.CONFIG_FILE)
    with open(path) as f:
      config = json.load(f)
    config.update(values)
    with open(path, 'w') as f:
      json.dump(config, f)
  return damage


def evaluated_run(results, config=None):
  """A setup making case_dir/run: a config.json (`config`, default a valid one) and an
  eval/results.jsonl holding `results` (str or bytes; A_FOLDER: a folder instead)."""
  def setup(case_dir, shared):
    del shared
    run_dir = os.path.join(case_dir, 'run')
    os.makedirs(os.path.join(run_dir, 'eval'))
    text = config if config is not None else json.dumps(dataclasses.asdict(
        cifar10_config.TrainConfig(train_dir=run_dir, conv='direct')))
    with open(os.path.join(run_dir, cifar10_run.CONFIG_FILE), 'w') as f:
      f.write(text)
    path = os.path.join(run_dir, 'eval', cifar10_run.RESULTS_FILE)
    if results is A_FOLDER:
      os.makedirs(path)
    else:
      with open(path, 'wb') as f:
        f.write(results.encode() if isinstance(results, str) else results)
  return setup


GOOD_RESULT = json.dumps({'step': 2, 'precision_ema': 0.1, 'train_seconds': 1.0}) + '\n'


def tar_gz(members):
  """The bytes of a .tar.gz holding {name: bytes}."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode='w:gz') as tar:
    for name, data in members.items():
      add_member(tar, name, data)
  return buffer.getvalue()


def npz(**entries):
  """The bytes of an .npz holding `entries` (arrays; `meta` given as a str is encoded)."""
  if isinstance(entries.get('meta'), str):
    entries['meta'] = np.frombuffer(entries['meta'].encode(), np.uint8)
  buffer = io.BytesIO()
  np.savez(buffer, **entries)
  return buffer.getvalue()


def damaged_int8(damage):
  """A setup writing case_dir/model.npz: the shared int8 model with `damage(meta)` applied."""
  def setup(case_dir, shared):
    arrays, meta = sparse.load(shared['int8'])
    damage(meta)
    sparse.save(os.path.join(case_dir, 'model.npz'), arrays, meta)
  return setup


def first_half_of(key, name):
  """A setup writing case_dir/name: the first half of the shared file `key`."""
  def setup(case_dir, shared):
    with open(shared[key], 'rb') as f:
      data = f.read()
    write(name, data[:len(data) // 2])(case_dir, shared)
  return setup


MASK_THAT_DOES_NOT_INFLATE = npz(**{'w/shape': np.array([4], np.int64),
                                    'w/mask': np.frombuffer(b'not zlib', np.uint8),
                                    'w/values': np.ones(2, np.float32)}, meta='{}')
ARCHIVE_WITHOUT_DATA = tar_gz({'README': b'not CIFAR-10'})
ARCHIVE_SHORT_MEMBER = tar_gz({f'{cifar10_records.BATCHES_DIR}/data_batch_1.bin': b'0' * 10})
TRUNCATED_ARCHIVE = tar_gz({'README': os.urandom(1 << 16)})[:1 << 15]  # random: no deflate
A_FOLDER = object()  # evaluated_run's results: a folder where results.jsonl should be
ARCHIVE = f'{{case}}/{cifar10_records.ARCHIVE_NAME}'
BATCHES = f'{{case}}/{cifar10_records.BATCHES_DIR}'
# --------------------------------------------------------------------------- the cases

TRAIN = 'cifar10_train.py'
EVAL = 'cifar10_eval.py'
RESULTS = 'cifar10_results.py'
EXPORT = 'cifar10_export.py'
CLASSIFY = 'cifar10_classify.py'
RECORDS = 'cifar10_records.py'
COUNT = 'models/count.py'
PRUNE = 'compress/prune.py'
QUANTIZE = 'compress/quantize.py'
SLIM = 'compress/slim.py'
QAT = 'compress/qat.py'
SWEEP = 'cifar10_sweep.py'
RUNNER = 'compress/int8.py'
BENCH = 'bench'
TRAIN_ARGS = ('--train_dir={case}/run', '--data_dir={data}', '--max_steps=2',
              '--batch_size=16')
EVAL_ARGS = ('--data_dir={data}', '--run_once', '--eval_dir={case}/eval')
PRUNE_ARGS = ('--source_dir={run}', '--train_dir={case}/pruned', '--data_dir={data}',
              '--finetune_steps=2')
SLIM_ARGS = ('--source_dir={run}', '--train_dir={case}/slim', '--data_dir={data}',
             '--finetune_steps=4')
QAT_ARGS = ('--source_dir={run}', '--train_dir={case}/qat', '--data_dir={data}',
            '--finetune_steps=2')
SWEEP_ARGS = ('--sweep_dir={case}/sweep', '--space={case}/space.json', '--data_dir={data}')
SPACE = '{case}/space.json'


def space(params, base=None):
  """A setup writing case_dir/space.json: a sweep's space of `params` (and `base`)."""
  return write('space.json', json.dumps({'base': base or {}, 'params': params}))


GOOD_SPACE = space({'learning_rate': {'values': [0.05, 0.1]}})

CASES = [
    # ----- cifar10_train.py
    Case(TRAIN, 'a flag out of range', ('--batch_size=0',), 'flags', ('--batch_size=0',),
         wiring=True),
    Case(TRAIN, 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(TRAIN, 'an unknown recipe', ('--recipe=fastest',), 'flags', ('--recipe',)),
    Case(TRAIN, 'no data and no network',
         ('--data_dir={case}/nowhere', f'--data_url={UNREACHABLE_URL}', '--train_dir={case}/run'),
         'error', ('{case}/nowhere', UNREACHABLE_URL), wiring=True),
    Case(TRAIN, 'a --train_dir that is a file', TRAIN_ARGS, 'error', ('{case}/run',),
         setup=write('run')),
    Case(TRAIN, 'a config.json that is a folder', TRAIN_ARGS, 'error',
         ('{case}/run/config.json',), setup=folder('run/config.json')),
    Case(TRAIN, 'no checkpoint restores',  # The shared run's flags: only its checkpoints fail.
         TRAIN_ARGS + ('--max_steps=4', '--noaugment', f'--image_size={TINY_SIZE}'), 'error',
         ('{case}/run/ckpt-2', '--restart'), setup=run_copy(truncate_checkpoints)),
    Case(TRAIN, 'a state file that is a folder', TRAIN_ARGS, 'error', ('{case}/run/checkpoint',),
         setup=folder('run/checkpoint')),

    # ----- cifar10_sweep.py (the space is checked whole before anything is written)
    Case(SWEEP, 'a flag out of range', SWEEP_ARGS + ('--seeds=0',), 'flags', ('--seeds',)),
    Case(SWEEP, 'a stray argument', SWEEP_ARGS + ('stray',), 'usage', ('stray',)),
    Case(SWEEP, 'an unknown sampler', SWEEP_ARGS + ('--sampler=bayes',), 'flags',
         ('--sampler',)),
    Case(SWEEP, 'no --sweep_dir', ('--space={case}/space.json',), 'flags', ('--sweep_dir',)),
    Case(SWEEP, 'no space file', SWEEP_ARGS, 'error', (f'--space={SPACE}',), wiring=True),
    Case(SWEEP, 'a space file that is not JSON', SWEEP_ARGS, 'error', (SPACE, 'not JSON'),
         setup=write('space.json', '{"params": [')),
    Case(SWEEP, 'an unknown field in the space', SWEEP_ARGS, 'error',
         (SPACE, 'params.learning_rat'), setup=space({'learning_rat': {'values': [0.1]}})),
    Case(SWEEP, 'a value of the space out of its limits', SWEEP_ARGS, 'error',
         (SPACE, 'params.momentum', '--momentum=1.5'),
         setup=space({'momentum': {'values': [0.9, 1.5]}})),
    Case(SWEEP, 'a base value of the space out of its limits', SWEEP_ARGS, 'error',
         (SPACE, 'base.batch_size'),
         setup=space({'learning_rate': {'values': [0.1]}}, base={'batch_size': 0})),
    Case(SWEEP, 'the seed in the space', SWEEP_ARGS, 'error', (SPACE, 'params.seed'),
         setup=space({'seed': {'values': [0, 1]}})),
    Case(SWEEP, 'the train_dir in the space', SWEEP_ARGS, 'error', (SPACE, 'base.train_dir'),
         setup=space({'learning_rate': {'values': [0.1]}}, base={'train_dir': 'runs/x'})),
    Case(SWEEP, 'a range with the grid', SWEEP_ARGS, 'error',
         (SPACE, 'params.momentum', '--sampler=random'),
         setup=space({'momentum': {'low': 0.8, 'high': 0.95}})),
    Case(SWEEP, 'random without --trials', SWEEP_ARGS + ('--sampler=random',), 'error',
         ('--sampler=random', '--trials'), setup=GOOD_SPACE),
    Case(SWEEP, 'the grid with --trials', SWEEP_ARGS + ('--trials=3',), 'error',
         ('--trials=3',), setup=GOOD_SPACE),
    Case(SWEEP, 'a grace period within the heartbeat',
         SWEEP_ARGS + ('--heartbeat_interval=60', '--grace_period=30'), 'error',
         ('--grace_period=30', '--heartbeat_interval=60'), setup=GOOD_SPACE),
    Case(SWEEP, 'no data and no network',
         ('--sweep_dir={case}/sweep', '--space={case}/space.json', '--data_dir={case}/nowhere',
          f'--data_url={UNREACHABLE_URL}'), 'error', ('{case}/nowhere', UNREACHABLE_URL),
         setup=GOOD_SPACE, wiring=True),
    Case(SWEEP, 'a storage URL that opens nothing', SWEEP_ARGS + ('--storage=nosuchdb://x',),
         'error', ('--storage=nosuchdb://x',), setup=GOOD_SPACE),
    Case(SWEEP, 'a --sweep_dir that is a file', SWEEP_ARGS, 'error', ('{case}/sweep',),
         setup=steps(GOOD_SPACE, write('sweep'))),

    # ----- cifar10_eval.py
    Case(EVAL, 'a stray argument', ('--run_once', 'stray'), 'usage', ('stray',)),
    Case(EVAL, 'no run folder', ('--checkpoint_dir={case}/nowhere',) + EVAL_ARGS, 'error',
         ('{case}/nowhere',), wiring=True),
    Case(EVAL, 'a garbage config.json', ('--checkpoint_dir={case}/run',) + EVAL_ARGS, 'error',
         ('{case}/run/config.json',), setup=write('run/config.json', '{"model": "tuto')),
    Case(EVAL, 'a config.json of an unknown model', ('--checkpoint_dir={case}/run',) + EVAL_ARGS,
         'error', ('{case}/run/config.json', 'vgg'), setup=run_copy(set_config(model='vgg'))),
    Case(EVAL, 'a config.json with a string for a number', ('--checkpoint_dir={case}/run',) +
         EVAL_ARGS, 'error', ('{case}/run/config.json', "max_steps '100' must be an integer"),
         setup=run_copy(set_config(max_steps='100'))),
    Case(EVAL, 'a run without checkpoints', ('--checkpoint_dir={case}/run',) + EVAL_ARGS,
         'error', ('{case}/run',), setup=run_copy(remove_checkpoints)),
    Case(EVAL, 'a truncated checkpoint', ('--checkpoint_dir={case}/run',) + EVAL_ARGS, 'error',
         ('{case}/run/ckpt-2',), setup=run_copy(truncate_checkpoints)),
    Case(EVAL, 'a results.jsonl that is a folder', ('--checkpoint_dir={run}',) + EVAL_ARGS,
         'error', ('{case}/eval/results.jsonl',), setup=folder('eval/results.jsonl')),

    # ----- cifar10_results.py
    Case(RESULTS, 'a stray argument', ('--runs={case}', 'stray'), 'usage', ('stray',)),
    Case(RESULTS, 'no run folder', ('--runs={case}/nowhere', '--out_dir={case}/out'), 'error',
         ('{case}/nowhere',), wiring=True),
    Case(RESULTS, 'a garbage results.jsonl line', ('--runs={case}/run', '--out_dir={case}/out'),
         'error', ('{case}/run/eval/results.jsonl, line 2',),
         setup=evaluated_run(GOOD_RESULT + '{"step": 4, "precision\n')),
    Case(RESULTS, 'a results.jsonl that is a folder',
         ('--runs={case}/run', '--out_dir={case}/out'), 'error',
         ('{case}/run/eval/results.jsonl',), setup=evaluated_run(A_FOLDER)),
    Case(RESULTS, 'a config.json of an unknown model',
         ('--runs={case}/run', '--out_dir={case}/out'), 'error',
         ('{case}/run/config.json', 'vgg'),
         setup=evaluated_run(GOOD_RESULT, config='{"model": "vgg"}')),
    Case(RESULTS, 'an --out_dir that is a file', ('--runs={case}/run', '--out_dir={case}/out'),
         'error', ('--out_dir={case}/out',),
         setup=steps(evaluated_run(GOOD_RESULT), write('out'))),
    Case(RESULTS, 'a --compressed file that is no quantize report',
         ('--runs={case}/run', '--out_dir={case}/out', '--compressed={case}/report.json'),
         'error', ('--compressed', '{case}/report.json'),
         setup=steps(evaluated_run(GOOD_RESULT), write('report.json', '{"model": 1}'))),

    # ----- cifar10_export.py
    Case(EXPORT, 'a stray argument', ('--checkpoint_dir={run}', '--export_dir={case}/out',
                                      'stray'), 'usage', ('stray',)),
    Case(EXPORT, 'no run folder', ('--checkpoint_dir={case}/nowhere', '--export_dir={case}/out'),
         'error', ('{case}/nowhere',), wiring=True),
    Case(EXPORT, 'an --export_dir that exists',
         ('--checkpoint_dir={run}', '--export_dir={case}/out', '--verify_images=0'), 'error',
         ('--export_dir={case}/out', '--overwrite'), setup=folder('out')),
    Case(EXPORT, 'no data for the check', ('--checkpoint_dir={run}', '--export_dir={case}/out',
                                           '--data_dir={case}/nowhere', '--data_url=' +
                                           UNREACHABLE_URL), 'error', ('{case}/nowhere',)),

    # ----- cifar10_classify.py
    Case(CLASSIFY, 'no image files', ('--source={int8}',), 'usage', ('image files',)),
    Case(CLASSIFY, 'a source that is no model', ('--source={case}', '{case}/x.png'), 'error',
         ('--source={case}',)),
    Case(CLASSIFY, 'a garbage int8 file', ('--source={case}/m.npz', '{case}/x.png'), 'error',
         ('{case}/m.npz',), setup=write('m.npz', b'garbage')),
    Case(CLASSIFY, 'a file that is no image', ('--source={int8}', '{case}/x.png'), 'error',
         ('{case}/x.png',), setup=write('x.png', b'garbage'), wiring=True),

    # ----- cifar10_records.py (no TensorFlow)
    Case(RECORDS, 'two data folders', ('{case}', '{case}'), 'usage', ('{case} {case}',)),
    Case(RECORDS, 'no data and no network', ('{case}/nowhere',), 'error', ('{case}/nowhere',),
         wiring=True),
    Case(RECORDS, 'a garbage archive given as the data', ('{case}/data.tar.gz',), 'error',
         ('{case}/data.tar.gz',), setup=write('data.tar.gz', b'\x1f\x8b garbage')),
    Case(RECORDS, 'an empty archive', ('{case}',), 'error', (ARCHIVE,),
         setup=write(cifar10_records.ARCHIVE_NAME)),
    Case(RECORDS, 'a truncated archive', ('{case}',), 'error', (ARCHIVE,),
         setup=write(cifar10_records.ARCHIVE_NAME, TRUNCATED_ARCHIVE)),
    Case(RECORDS, 'an archive without the data', ('{case}',), 'error',
         (ARCHIVE, 'data_batch_1.bin'), setup=write(cifar10_records.ARCHIVE_NAME,
                                                    ARCHIVE_WITHOUT_DATA)),
    Case(RECORDS, 'an archive member of the wrong size', ('{case}',), 'error',
         (f'{ARCHIVE}:{cifar10_records.BATCHES_DIR}/data_batch_1.bin is truncated',),
         setup=write(cifar10_records.ARCHIVE_NAME, ARCHIVE_SHORT_MEMBER)),
    Case(RECORDS, 'a truncated .bin', ('{case}',), 'error', ('data_batch_2.bin is truncated',),
         setup=batches(resize=('data_batch_2.bin', -cifar10_records.RECORD_BYTES))),
    Case(RECORDS, 'a .bin that is a folder', ('{case}',), 'error',
         (f'{BATCHES}/data_batch_4.bin is missing',),
         setup=steps(batches(), folder_instead(f'{cifar10_records.BATCHES_DIR}/data_batch_4.bin'))),
    Case(RECORDS, 'a bad label byte', ('{case}',), 'error', ('test_batch.bin: record 9',),
         setup=batches(bad_label=('test_batch.bin', 9))),
    Case(RECORDS, 'a data folder that is a file', ('{case}',), 'error', ('{case}',),
         setup=write(cifar10_records.BATCHES_DIR)),

    # ----- models/count.py
    Case(COUNT, 'an unknown model', ('--model=vgg',), 'usage', ('vgg',)),

    # ----- compress/prune.py
    Case(PRUNE, 'a stray argument', PRUNE_ARGS + ('stray',), 'usage', ('stray',)),
    Case(PRUNE, 'no source run', ('--source_dir={case}/nowhere', '--train_dir={case}/pruned'),
         'error', ('--source_dir={case}/nowhere',), wiring=True),
    Case(PRUNE, 'a truncated source checkpoint',
         ('--source_dir={case}/run', '--train_dir={case}/pruned'), 'error',
         ('{case}/run/ckpt-2',),
         setup=run_copy(lambda run_dir: os.truncate(os.path.join(run_dir, 'ckpt-2.index'), 10))),
    Case(PRUNE, 'an unknown --dense_layers', PRUNE_ARGS + ('--dense_layers=conv9',), 'error',
         ('conv9',)),
    Case(PRUNE, 'a garbage pruning.json', PRUNE_ARGS, 'error', ('{case}/pruned/pruning.json',),
         setup=write('pruned/pruning.json', '[1, 2')),
    Case(PRUNE, 'a --train_dir that is a file', PRUNE_ARGS, 'error', ('{case}/pruned',),
         setup=write('pruned')),

    # ----- compress/slim.py
    Case(SLIM, 'a stray argument', SLIM_ARGS + ('stray',), 'usage', ('stray',)),
    Case(SLIM, 'no source run', ('--source_dir={case}/nowhere', '--train_dir={case}/slim'),
         'error', ('--source_dir={case}/nowhere',), wiring=True),
    Case(SLIM, 'a --target_flops out of range', SLIM_ARGS + ('--target_flops=0',), 'flags',
         ('--target_flops',)),
    Case(SLIM, 'bn_scale on a model without BatchNorm', SLIM_ARGS + ('--criterion=bn_scale',),
         'error',
         ('--criterion=bn_scale', 'l1_norm')),
    Case(SLIM, 'a garbage slimming.json', SLIM_ARGS + ('--criterion=l1_norm',), 'error',
         ('{case}/slim/slimming.json',), setup=write('slim/slimming.json', '[1, 2')),
    Case(SLIM, 'a slimming window outside the fine-tuning', SLIM_ARGS + ('--end_step=100',),
         'error', ('--end_step=100',)),
    Case(SLIM, 'an unknown --whole_layers', SLIM_ARGS + ('--criterion=l1_norm',
                                                          '--whole_layers=conv9'),
         'error', ('--whole_layers', 'conv9', 'conv1')),
    Case(SLIM, 'a teacher that is no run', SLIM_ARGS + ('--criterion=l1_norm',
                                                        '--teacher_dir={case}/nowhere'),
         'error', ('--teacher_dir={case}/nowhere',)),

    # ----- compress/qat.py
    Case(QAT, 'a stray argument', QAT_ARGS + ('stray',), 'usage', ('stray',)),
    Case(QAT, 'no source run', ('--source_dir={case}/nowhere', '--train_dir={case}/qat'),
         'error', ('--source_dir={case}/nowhere',), wiring=True),
    Case(QAT, 'an unknown --weight_bits', QAT_ARGS + ('--weight_bits=3',), 'flags',
         ('--weight_bits',)),
    Case(QAT, 'a garbage qat.json', QAT_ARGS, 'error', ('{case}/qat/qat.json',),
         setup=write('qat/qat.json', '[1, 2')),
    Case(QAT, 'a --train_dir that is a file', QAT_ARGS, 'error', ('{case}/qat',),
         setup=write('qat')),

    # ----- compress/quantize.py
    Case(QUANTIZE, 'a stray argument', ('--checkpoint_dir={run}', 'stray'), 'usage', ('stray',)),
    Case(QUANTIZE, 'a run without checkpoints',
         ('--checkpoint_dir={case}/run', '--data_dir={data}', '--out_dir={case}/out'), 'error',
         ('--checkpoint_dir={case}/run',), setup=write('run/config.json', '{}'), wiring=True),
    Case(QUANTIZE, 'a truncated checkpoint',
         ('--checkpoint_dir={case}/run', '--data_dir={data}', '--out_dir={case}/out'), 'error',
         ('{case}/run/ckpt-2',), setup=run_copy(truncate_checkpoints)),
    Case(QUANTIZE, '--weight_bits on a QAT run', ('--checkpoint_dir={case}/run',
                                                  '--data_dir={data}', '--weight_bits=4'),
         'error', ('--weight_bits', '--ranges=calibrated'), setup=run_copy(lambda run_dir: open(
             os.path.join(run_dir, 'qat.json'), 'w', encoding='utf-8').write('{"tensors": []}'))),
    Case(QUANTIZE, 'a garbage qat.json beside the run',
         ('--checkpoint_dir={case}/run', '--data_dir={data}', '--out_dir={case}/out'), 'error',
         ('{case}/run/qat.json',), setup=run_copy(lambda run_dir: open(
             os.path.join(run_dir, 'qat.json'), 'w', encoding='utf-8').write('{"tens'))),

    # ----- compress/int8.py, the NumPy runner (no TensorFlow)
    Case(RUNNER, 'no --model_file', (), 'flags', ('--model_file',)),
    Case(RUNNER, 'a batch size of 0', ('--model_file={int8}', '--batch_size=0'), 'flags',
         ('--batch_size=0',)),
    Case(RUNNER, 'an unknown flag', ('--model_file={int8}', '--bogus_flag'), 'flags',
         ('bogus_flag',)),
    Case(RUNNER, 'a stray argument', ('--model_file={int8}', 'stray'), 'usage', ('stray',)),
    Case(RUNNER, 'no model file', ('--model_file={case}/none.npz',), 'error',
         ('{case}/none.npz',), wiring=True),
    Case(RUNNER, 'a model file that is a folder', ('--model_file={case}',), 'error',
         ('{case}',)),
    Case(RUNNER, 'an empty model file', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz',), setup=write('model.npz')),
    Case(RUNNER, 'a truncated model file', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz',), setup=first_half_of('int8', 'model.npz')),
    Case(RUNNER, 'an .npz without meta', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz',), setup=write('model.npz', npz(w=np.ones(3)))),
    Case(RUNNER, 'a meta that is not JSON', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz',), setup=write('model.npz', npz(meta='{"ops": [', w=np.ones(3)))),
    Case(RUNNER, 'a pickled array', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz',),
         setup=write('model.npz', npz(meta='{}', w=np.array([{'a': 1}], dtype=object)))),
    Case(RUNNER, 'a sparse mask that does not inflate', ('--model_file={case}/model.npz',),
         'error', ('{case}/model.npz',), setup=write('model.npz', MASK_THAT_DOES_NOT_INFLATE)),
    Case(RUNNER, 'a pruned float model_sparse.npz', ('--model_file={sparse}',), 'error',
         ('{sparse}', 'not an int8 model')),
    Case(RUNNER, 'an op of an unknown type', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz', 'not an op of a known type'),
         setup=damaged_int8(lambda meta: meta['ops'][0].update(type='softmax'))),
    Case(RUNNER, 'an image size of 10^13', ('--model_file={case}/model.npz',), 'error',
         ('{case}/model.npz', 'image_size'),
         setup=damaged_int8(lambda meta: meta.update(image_size=10 ** 13))),
    Case(RUNNER, 'no data', ('--model_file={int8}', '--data_dir={case}/nowhere'), 'error',
         ('{case}/nowhere',)),
    Case(RUNNER, 'an oversized test_batch.bin', ('--model_file={int8}', '--data_dir={case}'),
         'error', ('test_batch.bin is oversized',), setup=batches(resize=('test_batch.bin', 1))),
    Case(RUNNER, 'a test_batch.bin of partial records',
         ('--model_file={int8}', '--data_dir={case}'), 'error', (f'{BATCHES}/test_batch.bin',),
         setup=write(f'{cifar10_records.BATCHES_DIR}/test_batch.bin', b'\0' * 100)),
    Case(RUNNER, 'a garbage archive', ('--model_file={int8}', '--data_dir={case}'), 'error',
         (ARCHIVE,), setup=write(cifar10_records.ARCHIVE_NAME, b'garbage')),
    Case(RUNNER, '--predictions_out in no folder',
         ('--model_file={int8}', '--data_dir={tiny}', '--predictions_out={case}/no/p.npy'),
         'error', ('--predictions_out={case}/no/p.npy',)),
    Case(RUNNER, '--predictions_out that is a folder',
         ('--model_file={int8}', '--data_dir={tiny}', '--predictions_out={case}/p.npy'), 'error',
         ('--predictions_out={case}/p.npy',), setup=folder('p.npy')),

    # ----- bench/ (a benchmark must never start on a mistyped command)
    Case(f'{BENCH}/int8_speed.py', 'no --model_file', (), 'flags', ('--model_file',)),
    Case(f'{BENCH}/int8_speed.py', 'a batch size that is no number',
         ('--model_file={int8}', '--data_dir={tiny}', '--batch_sizes=10,ten'), 'flags',
         ('--batch_sizes',)),
    Case(f'{BENCH}/int8_speed.py', 'a stray argument',
         ('--model_file={int8}', '--data_dir={tiny}', 'stray'), 'usage', ('stray',)),
    Case(f'{BENCH}/int8_speed.py', 'no model file', ('--model_file={case}/none.npz',), 'error',
         ('{case}/none.npz',)),
    Case(f'{BENCH}/onednn.py', 'no rounds', ('--rounds=0',), 'flags', ('--rounds=0',)),
    Case(f'{BENCH}/onednn.py', 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(f'{BENCH}/onednn.py', 'an unknown model', ('--model=vgg', '--rounds=1'), 'error',
         ('vgg',)),
    Case(f'{BENCH}/train_speed.py', 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(f'{BENCH}/train_speed.py', 'no data and no network',
         ('--data_dir={case}/nowhere', f'--data_url={UNREACHABLE_URL}'), 'error',
         ('{case}/nowhere',)),
    Case(f'{BENCH}/layer_speed.py', 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(f'{BENCH}/determinism.py', 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(f'{BENCH}/batchnorm.py', 'a stray argument', ('stray',), 'usage', ('stray',)),
    Case(f'{BENCH}/batchnorm.py', 'a model without BatchNorm', ('--model=tutorial',), 'usage',
         ('--model=tutorial',)),
    Case(f'{BENCH}/latency.py', 'a stray argument', ('--models=tutorial', 'stray'), 'usage',
         ('stray',)),
    Case(f'{BENCH}/latency.py', 'an unknown model', ('--models=vgg',), 'error', ('vgg',)),
    Case(f'{BENCH}/latency.py', 'a --shape naming no layer of the model',
         ('--shape=budget1:conv9=3',), 'error', ('--shape=budget1:conv9=3',)),
    Case(f'{BENCH}/tfmot_prune.py', "outside its own venv (TF-MOT is none of the project's)",
         ('--source_dir={case}/nowhere',), 'error', ('make tfmot-venv',)),
    Case(f'{BENCH}/latency.py', 'a run folder without a run',
         ('--runs={case}/nowhere', '--data_dir={tiny}', '--work_dir={case}/work'), 'error',
         ('--runs={case}/nowhere',)),
    Case(f'{BENCH}/tflite_int8.py', 'no --export_dir', ('--int8_file={int8}',), 'flags',
         ('--export_dir',)),
    Case(f'{BENCH}/tflite_int8.py', 'an export without TFLite files',
         ('--export_dir={case}', '--int8_file={int8}', '--data_dir={tiny}'), 'error',
         ('{case}/model_float.tflite', '--tflite_int8')),
    Case(f'{BENCH}/train_memory.py', 'one batch size', ('--batches=256',), 'flags',
         ('--batches',)),
    Case(f'{BENCH}/train_memory.py', 'an unknown model', ('--models=tutorial,vgg',), 'flags',
         ('--models',)),
    Case(f'{BENCH}/classify_memory.py', 'no files to classify', ('--images=0',), 'flags',
         ('--images',)),
]

BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), 'two cases share an id'


# --------------------------------------------------------------------------- in this process


@dataclasses.dataclass(frozen=True)
class Program:
  """How a binary's cases run in this process, as app.run would run it.

  Attributes:
    define: the binary's define_flags(flag_values) -> {name: FlagHolder}.
    run: callable(values, given, arguments) -> what the binary passes to sys.exit; `given`
      names the flags on the command line, `arguments` are the positional ones.
    main: the binary's main(argv), for its refusal of stray arguments.
    takes_arguments: whether main passes positional arguments on to run (else any is a
      usage case).
  """
  define: object
  run: object
  main: object
  takes_arguments: bool = False


def values_only(run):
  """A Program.run from a binary's run(values)."""
  return lambda values, given, arguments: run(values)


def no_flags(flag_values):
  """cifar10_records.py's define_flags: it has no flag of its own, its one argument is
  positional."""
  del flag_values
  return {}


IN_PROCESS = {
    TRAIN: Program(cifar10_train.define_flags,
                   lambda values, given, arguments: cifar10_train.run(values, given),
                   cifar10_train.main),
    EVAL: Program(cifar10_eval.define_flags, values_only(cifar10_eval.run), cifar10_eval.main),
    RESULTS: Program(cifar10_results.define_flags, values_only(cifar10_results.run),
                     cifar10_results.main),
    EXPORT: Program(cifar10_export.define_flags, values_only(cifar10_export.run),
                    cifar10_export.main),
    # main() adds whether --verbosity was given; the files are its positional arguments.
    CLASSIFY: Program(cifar10_classify.define_flags,
                      lambda values, given, files: cifar10_classify.run(
                          dict(values, verbosity_given=False), files),
                      cifar10_classify.main, takes_arguments=True),
    # The data folder is its positional argument; the URL stands in for the processes' proxy.
    RECORDS: Program(no_flags, lambda values, given, arguments: cifar10_records.run(
        *arguments, url=UNREACHABLE_URL), cifar10_records.main, takes_arguments=True),
    PRUNE: Program(prune.define_flags, values_only(prune.run), prune.main),
    QUANTIZE: Program(quantize.define_flags, values_only(quantize.run), quantize.main),
    SLIM: Program(slim.define_flags, values_only(slim.run), slim.main),
    QAT: Program(qat.define_flags, values_only(qat.run), qat.main),
    RUNNER: Program(int8.define_flags, values_only(int8.run), int8.main),
    SWEEP: Program(cifar10_sweep.define_flags, values_only(cifar10_sweep.run), cifar10_sweep.main),
}


@pytest.fixture(autouse=True)
def _process_state_restored():
  """run() of train and prune installs the stop handlers, and classify's sets the logging
  levels: the rest of the suite keeps pytest's handlers and its own levels."""
  handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
  verbosity, tf_level = logging.get_verbosity(), tf.get_logger().level
  yield
  for number, handler in handlers.items():
    signal.signal(number, handler)
  logging.set_verbosity(verbosity)
  tf.get_logger().setLevel(tf_level)


@pytest.fixture(name='no_network')
def fixture_no_network(monkeypatch):
  """Fails the test when a download aims anywhere but the port where nothing listens (the
  in-process stand-in for the processes' missing proxy)."""
  real_urlopen = urllib.request.urlopen

  def urlopen(url, *args, **kwargs):
    assert str(url).startswith(NO_NETWORK), f'a case in this process reached for {url}'
    return real_urlopen(url, *args, **kwargs)

  monkeypatch.setattr(urllib.request, 'urlopen', urlopen)


def message_in_process(case, values, capture):
  """The one line that explains the case's failure in this process, checked to be where
  `kind` puts it.

  Args:
    case: the Case, of a binary in IN_PROCESS.
    values: the formatting values of its args.
    capture: pytest's capfd, for what run() prints.
  """
  program = IN_PROCESS[case.binary]
  args = [arg.format(**values) for arg in case.args]
  if case.kind == 'flags':
    with pytest.raises(flags.Error) as refused:
      cifar10_flags.parse(program.define, args)
    return str(refused.value)
  # cifar10_flags.parse keeps no positional argument: as app.run, main() gets what is left.
  flag_values = flags.FlagValues()  # Fresh: absl's global FLAGS stays untouched.
  holders = program.define(flag_values)
  argv = flag_values(['program', *args])
  if case.kind == 'usage':  # main() as app.run calls it, with the program's flag holders.
    module = sys.modules[program.main.__module__]
    with mock.patch.object(module, '_FLAGS', holders, create=True):
      with pytest.raises(app.UsageError) as refused:
        program.main(argv)
    return str(refused.value)
  assert case.kind == 'error', case.kind
  assert program.takes_arguments or len(argv) == 1, f'main() would refuse {argv[1:]}'
  parsed, given = cifar10_flags.read(holders)
  if 'data_url' in holders and 'data_url' not in given:
    parsed['data_url'] = UNREACHABLE_URL
  capture.readouterr()  # What the setup printed is not the case's.
  returned = program.run(parsed, given, argv[1:])
  out, err = capture.readouterr()
  assert 'Traceback' not in out + err, out + err
  if isinstance(returned, str):  # sys.exit prints it as the one line of stderr.
    assert not err.strip(), f'more than the error line on stderr:\n{err}'
    lines = returned.splitlines()
  else:  # An exit code: the binary printed its error line itself.
    assert returned not in (0, None), (returned, out + err)
    lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), lines
  return lines[0]


# --------------------------------------------------------------------------- shared inputs


def tiny_int8_model():
  """(meta, arrays) of a two-conv model on 8x8 inputs, quantized: the runner's input."""
  regime = cifar10_model.Regime()
  tf.random.set_seed(0)
  model = cifar10_model.Model([cifar10_model.conv(regime, 'c1', 3, 4, 3),
                               cifar10_model.conv(regime, 'logits', 4, 10, 1, relu=False),
                               cifar10_model.GlobalAvgPool(name='avg')], image_size=8)
  images = tf.random.stateless_normal([16, 8, 8, 3], seed=[0, 1]).numpy()
  return quantize.quantize_model(model, images, calibration_lib.Calibration(images=16))


@pytest.fixture(scope='module', name='shared')
def fixture_shared(tmp_path_factory):
  """The inputs several cases read (never write): {placeholder: path}."""
  root = tmp_path_factory.mktemp('error_paths')
  shared = {'run': str(root / 'run'), 'data': str(root / 'data'), 'tiny': str(root / 'tiny'),
            'int8': str(root / 'model_int8.npz'), 'sparse': str(root / 'model_sparse.npz')}
  tf.random.set_seed(0)
  cifar10_trainer.train(tiny_config(shared['run'], max_steps=2, checkpoint_steps=2),
                        tiny_split())
  make_batches_dir(shared['data'])
  write_batches_dir(shared['tiny'], tiny_split())
  int8.Int8Model(*tiny_int8_model()).save(shared['int8'])
  sparse.save(shared['sparse'], {'conv1/kernel': np.ones((3, 3), np.float32)},
              {'model': 'tutorial', 'image_size': 24, 'weights': 'ema'})
  return shared


@pytest.mark.usefixtures('no_network')
@pytest.mark.parametrize('case_id', [case.id for case in CASES if case.binary in IN_PROCESS])
def test_fails_in_one_line_naming_the_input(case_id, shared, tmp_path, capfd):
  case = BY_ID[case_id]
  if case.setup:
    case.setup(str(tmp_path), shared)
  values = dict(shared, case=str(tmp_path))
  message = message_in_process(case, values, capfd)
  for name in case.names:
    assert name.format(**values) in message, message


# --------------------------------------------------------------------------- as processes

PROCESS_CASES = [case for case in CASES if case.wiring or case.binary not in IN_PROCESS]


def run_case(case, case_dir, shared):
  """The case's command, run in the project root without a network."""
  values = dict(shared, case=case_dir)
  env = dict(os.environ, http_proxy=NO_NETWORK, https_proxy=NO_NETWORK,
             HTTP_PROXY=NO_NETWORK, HTTPS_PROXY=NO_NETWORK, no_proxy='', NO_PROXY='')
  command = [sys.executable, case.binary, *(arg.format(**values) for arg in case.args)]
  try:
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_SECS)
  except subprocess.TimeoutExpired:
    return subprocess.CompletedProcess(command, None, '', f'timed out after {TIMEOUT_SECS} s')


@pytest.fixture(scope='module', name='outcomes')
def fixture_outcomes(shared, tmp_path_factory):
  """{case id: (CompletedProcess, the case's formatting values)} of every process case."""
  root = tmp_path_factory.mktemp('error_path_processes')
  folders = {}
  for number, case in enumerate(PROCESS_CASES):
    case_dir = root / f'{number:03d}_{re.sub(r"[^a-z0-9]+", "_", case.what)}'
    case_dir.mkdir()
    if case.setup:
      case.setup(str(case_dir), shared)
    folders[case.id] = str(case_dir)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = pool.map(lambda case: run_case(case, folders[case.id], shared), PROCESS_CASES)
    return {case.id: (result, dict(shared, case=folders[case.id]))
            for case, result in zip(PROCESS_CASES, results)}


def the_message(result, kind):
  """The one line that explains the failure, checked to be where `kind` puts it."""
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert lines, f'nothing on stderr; stdout:\n{result.stdout}'
  if kind == 'error':
    assert lines[-1].startswith('error: '), result.stderr
    assert len(lines) == 1, f'more than the error line on stderr:\n{result.stderr}'
    return lines[-1]
  if kind == 'flags':
    assert lines[0].startswith(FLAGS_ERROR) and len(lines) == 2, result.stderr
    return lines[0]
  assert kind == 'usage', kind
  return lines[-1]  # After the help text absl prints.


@pytest.mark.subprocess
@pytest.mark.parametrize('case_id', [case.id for case in PROCESS_CASES])
def test_the_binary_fails_in_one_line_naming_the_input(case_id, outcomes):
  case = BY_ID[case_id]
  result, values = outcomes[case_id]
  output = result.stdout + result.stderr
  assert 'Traceback' not in output, output
  assert result.returncode == 1, (result.returncode, output)
  message = the_message(result, case.kind)
  for name in case.names:
    assert name.format(**values) in message, message


# --------------------------------------------------------------------------- the table


def test_the_table_walks_every_binary():
  binaries = set()  # A binary is a file that runs absl's app.
  for folder_name in ('', 'models', 'compress', BENCH):
    for name in os.listdir(os.path.join(ROOT, folder_name)):
      path = os.path.join(folder_name, name)
      if name.endswith('.py') and 'app.run(main)' in open(os.path.join(ROOT, path)).read():
        binaries.add(path)
  assert binaries - {case.binary for case in CASES} == set()


def test_every_binary_run_in_this_process_keeps_an_error_case_as_a_process():
  wired = {case.binary for case in CASES if case.wiring and case.kind == 'error'}
  assert set(IN_PROCESS) - wired == set()
