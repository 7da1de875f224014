"""Tests of cifar10_sweep.py on tiny data: the space checked whole before anything is written,
a grid run whole (every configuration once, the table equal to the runs' records, the HParams
experiment in the event files, a second start training nothing and refusing another space),
the pruner, and as processes a driver stopped, then killed, then resumed in the trial's own
folder (on SQLite, and killed on a journal file), and two drivers sharing one SQLite study.

Run as a script, this file is the sweep's driver on the tests' tiny data: the subprocess
tests start it as they would start `python cifar10_sweep.py`, the data excepted (the program
wants the full-size files), and SWEEP_TEST_PAUSE=<run folder suffix>:<step>:<seconds> makes
it hold still after that checkpoint is scored, so that a test can stop or kill it there.
"""

import csv
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # Run as the driver script, outside pytest's conftest.
  sys.path.insert(0, ROOT)

import cifar10_env  # pylint: disable=wrong-import-position

if __name__ == '__main__':
  cifar10_env.start()

import numpy as np  # pylint: disable=wrong-import-position
import optuna
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

import cifar10_flags
import cifar10_run
import cifar10_scoring
import cifar10_sweep
from fixtures import TINY_SIZE, tiny_split, wait_for

TIMEOUT_SECS = 300  # per driver process: TensorFlow's import, then a few tiny runs
VALIDATION = 32  # held-out images of the tiny training set (96)
BASE = dict(max_steps=4, batch_size=16, log_frequency=2, checkpoint_steps=2,
            histogram_steps=1000, augment=False, image_size=TINY_SIZE)
GRID = {'base': BASE, 'params': {'learning_rate': {'values': [0.05, 0.1]},
                                 'label_smoothing': {'values': [0, 0.1]}}}
PAUSE_ENV = 'SWEEP_TEST_PAUSE'


def tiny_splits():
  """(train, test): 96 training images (the last VALIDATION held out) and 32 test images."""
  return tiny_split(96), tiny_split(32, seed=1)


def write_space(path, space):
  with open(path, 'w') as f:
    f.write(space if isinstance(space, str) else json.dumps(space))
  return str(path)


def sweep_args(sweep_dir, space_file, *extra):
  return [f'--sweep_dir={sweep_dir}', f'--space={space_file}',
          f'--validation_size={VALIDATION}', *extra]


def run_sweep(args):
  """run() of the program on the flags `args` and the tiny data."""
  values, _ = cifar10_flags.parse(cifar10_sweep.define_flags, args)
  return cifar10_sweep.run(values, splits=tiny_splits())


def load_study(sweep_dir):
  return optuna.load_study(study_name=os.path.basename(sweep_dir),
                           storage=f'sqlite:///{sweep_dir}/study.db')


def folders(sweep_dir):
  return {name for name in os.listdir(sweep_dir) if name.startswith('trial_')}


def final_precision(run_dir):
  records = cifar10_sweep.read_records(str(run_dir))
  return records[max(records)]['precision_ema']


# --------------------------------------------------------------------------- the space


def _grid(**params):
  return {'base': BASE, 'params': params}


SPACE_ERRORS = [  # (what, space, extra flags, texts the error must hold beside the file)
    ('an unknown field', _grid(learning_rat={'values': [0.1]}), (), ('params.learning_rat',)),
    ('an unknown base field', {'base': dict(BASE, batchsize=8), 'params': GRID['params']}, (),
     ('base.batchsize',)),
    ('a value over its limit', _grid(label_smoothing={'values': [0, 1.5]}), (),
     ('params.label_smoothing', '0 .. 0.999')),
    ('a range end over its limit', _grid(momentum={'low': 0.5, 'high': 1.5}),
     ('--sampler=random', '--trials=2'), ('params.momentum', '--momentum=1.5')),
    ('a recipe that is none', _grid(recipe={'values': ['study', 'fastest']}), (),
     ('params.recipe', 'fastest')),
    ('the seed', _grid(seed={'values': [0, 1]}), (), ('params.seed', '--seeds')),
    ('the train_dir', {'base': dict(BASE, train_dir='runs/x'), 'params': GRID['params']}, (),
     ('base.train_dir',)),
    ('a range with the grid', _grid(momentum={'low': 0.8, 'high': 0.95}), (),
     ('params.momentum', '--sampler=random')),
    ('a base value of the wrong type', {'base': dict(BASE, batch_size='16'),
                                        'params': GRID['params']}, (), ('base.batch_size',)),
    ('a repeated value', _grid(learning_rate={'values': [0.1, 0.1]}), (),
     ('params.learning_rate', 'repeat')),
    ('a field in base and params', {'base': dict(BASE, learning_rate=0.1),
                                    'params': GRID['params']}, (), ('params.learning_rate',)),
    ('a log range from 0', _grid(learning_rate={'low': 0, 'high': 0.1, 'log': True}),
     ('--sampler=tpe', '--trials=2'), ('params.learning_rate', 'low > 0')),
    ('a combination that fails', _grid(lr_schedule={'values': ['constant', 'staircase']},
                                       lr_decay_epochs={'values': [350.0, 1e-6]}), (),
     ("lr_schedule='staircase', lr_decay_epochs=1e-06", 'under one step')),
    ('several devices', {'base': dict(BASE, strategy='mirrored'), 'params': GRID['params']},
     (), ('base', 'several drivers')),
    ('no params', {'base': BASE, 'params': {}}, (), ('params is empty',)),
    ('not JSON', '{"params": {', (), ('not JSON',)),
]


@pytest.mark.parametrize('what, space, extra, texts', SPACE_ERRORS,
                         ids=[case[0] for case in SPACE_ERRORS])
def test_the_space_is_checked_whole_before_anything_is_written(tmp_path, what, space, extra,
                                                              texts):
  del what
  space_file = write_space(tmp_path / 'space.json', space)
  message = run_sweep(sweep_args(tmp_path / 'sweep', space_file, *extra))
  assert isinstance(message, str) and message.startswith('error: '), message
  assert len(message.splitlines()) == 1, message
  for text in (space_file,) + texts:
    assert text in message, message
  assert not os.path.exists(tmp_path / 'sweep')


def test_a_yaml_space_reads_as_its_json(tmp_path):
  yaml_file = write_space(tmp_path / 'space.yaml', 'base:\n  max_steps: 4\nparams:\n'
                          '  learning_rate:\n    values: [0.05, 0.1]\n')
  space = cifar10_sweep.read_space(yaml_file, 'grid')
  assert space.base == {'max_steps': 4}
  assert space.params['learning_rate'].values == (0.05, 0.1)
  assert cifar10_sweep.configurations(space) == [{'learning_rate': 0.05},
                                                 {'learning_rate': 0.1}]


# --------------------------------------------------------------------------- a whole grid


@pytest.fixture(scope='module', name='grid')
def fixture_grid(tmp_path_factory):
  """A 2 x 2 grid of 2 seeds, run whole in this process: (sweep folder, space file)."""
  root = tmp_path_factory.mktemp('sweep_grid')
  space_file = write_space(root / 'space.json', GRID)
  sweep_dir = str(root / 'lr_ls')
  assert run_sweep(sweep_args(sweep_dir, space_file, '--seeds=2')) is None
  return sweep_dir, space_file


def test_a_grid_runs_each_configuration_once_and_tabulates_its_records(grid):
  sweep_dir, _ = grid
  trials = load_study(sweep_dir).get_trials()
  assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 4
  configurations = [dict(zip(('learning_rate', 'label_smoothing'), values))
                    for values in itertools.product([0.05, 0.1], [0, 0.1])]
  assert [t.params for t in trials] == configurations  # Queued in the file's order.
  assert folders(sweep_dir) == {f'trial_{t.number}' for t in trials}
  for trial in trials:
    precisions = []
    for seed in range(2):
      run_dir = os.path.join(sweep_dir, f'trial_{trial.number}', f'seed_{seed}')
      config = cifar10_run.read_config(run_dir)
      assert (config.seed, config.learning_rate) == (seed, trial.params['learning_rate'])
      assert cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(run_dir)) == 4
      assert sorted(cifar10_sweep.read_records(run_dir)) == [2, 4]  # each checkpoint, once
      precisions.append(final_precision(run_dir))
      assert trial.user_attrs[f'precision_seed_{seed}'] == precisions[-1]
    assert trial.value == pytest.approx(statistics.mean(precisions))
    assert trial.user_attrs['precision_sd'] == pytest.approx(statistics.stdev(precisions))
  with open(os.path.join(sweep_dir, cifar10_sweep.TABLE_CSV)) as f:
    rows = list(csv.DictReader(f))
  assert sorted(int(row['trial']) for row in rows) == [0, 1, 2, 3]
  means = [float(row['precision_mean']) for row in rows]
  assert means == sorted(means, reverse=True)  # The best first.
  for row in rows:
    run_dir = os.path.join(sweep_dir, row['folder'])
    for seed in range(2):
      assert float(row[f'precision_seed_{seed}']) == final_precision(f'{run_dir}/seed_{seed}')
    assert row['state'] == 'COMPLETE' and row['n'] == '2'
  with open(os.path.join(sweep_dir, cifar10_sweep.TABLE_MD)) as f:
    table = f.read()
  assert table.count('| COMPLETE |') == 4 and '| trial | state | learning_rate |' in table


def events(folder):
  """The summary values of every event file directly in `folder`."""
  found = []
  for name in sorted(os.listdir(folder)):
    if name.startswith('events.out.tfevents.'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(folder, name)):
        found.extend((event.step, value) for value in event.summary.value)
  return found


def hparams_data(folder):
  return [plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
          for _, value in events(folder) if value.metadata.plugin_data.plugin_name == 'hparams']


def test_the_hparams_experiment_and_every_run_are_in_the_event_files(grid):
  sweep_dir, _ = grid
  experiments = [data.experiment for data in hparams_data(sweep_dir)
                 if data.HasField('experiment')]
  assert len(experiments) == 1
  assert [info.name for info in experiments[0].hparam_infos] == [
      'learning_rate', 'label_smoothing', 'seed']
  metrics = [(m.name.group, m.name.tag) for m in experiments[0].metric_infos]
  assert ('eval', 'precision @ 1/ema') in metrics and ('eval', 'cross_entropy/ema') in metrics
  for trial in load_study(sweep_dir).get_trials():
    for seed in range(2):
      run_dir = os.path.join(sweep_dir, f'trial_{trial.number}', f'seed_{seed}')
      sessions = [data.session_start_info for data in hparams_data(run_dir)
                  if data.HasField('session_start_info')]
      assert sessions, run_dir
      hparams = sessions[0].hparams
      assert hparams['learning_rate'].number_value == trial.params['learning_rate']
      assert hparams['seed'].number_value == seed
      scalars = {(step, value.tag): tf.make_ndarray(value.tensor)
                 for step, value in events(os.path.join(run_dir, 'eval'))}
      for step, record in cifar10_sweep.read_records(run_dir).items():
        assert scalars[(step, 'precision @ 1/ema')] == pytest.approx(record['precision_ema'])
        assert scalars[(step, 'cross_entropy/ema')] == pytest.approx(
            record['cross_entropy_ema'])


def test_a_second_start_trains_nothing_and_another_space_is_refused(grid, tmp_path, capfd):
  sweep_dir, space_file = grid
  before = {path: os.path.getmtime(path) for path in
            (cifar10_run.newest_checkpoint(f'{sweep_dir}/trial_{n}/seed_{s}') + '.index'
             for n in range(4) for s in range(2))}
  capfd.readouterr()
  assert run_sweep(sweep_args(sweep_dir, space_file, '--seeds=2')) is None
  out = capfd.readouterr().out
  assert 'starts' not in out and 'sweep done: 4 of 4 trials done' in out, out
  assert {path: os.path.getmtime(path) for path in before} == before
  assert len(load_study(sweep_dir).get_trials()) == 4
  other = write_space(tmp_path / 'other.json', dict(GRID, params={
      'learning_rate': {'values': [0.05, 0.2]}}))
  message = run_sweep(sweep_args(sweep_dir, other, '--seeds=2'))
  assert message.startswith('error: ') and other in message and 'another space' in message
  message = run_sweep(sweep_args(sweep_dir, space_file, '--seeds=3'))
  assert message.startswith('error: ') and '--seeds=3' in message and '--seeds=2' in message
  assert len(load_study(sweep_dir).get_trials()) == 4


# --------------------------------------------------------------------------- pruning


class ScriptedEvaluator(cifar10_scoring.Evaluator):
  """Scores every checkpoint of a run at a fixed precision chosen by its learning rate: a
  curve under the median by construction, whatever the tiny runs learn."""

  PRECISION = {0.1: 28 / 32, 0.05: 8 / 32}

  def confusion_and_loss(self):
    matrix = np.zeros([10, 10], np.int64)
    correct = round(self.PRECISION[self.config.learning_rate] * self.num_examples)
    matrix[0, 0], matrix[0, 1] = correct, self.num_examples - correct
    return matrix, 1.0


@pytest.mark.stage  # It runs a sweep of two trials.
def test_the_pruner_stops_a_trial_under_the_median(tmp_path, monkeypatch):
  monkeypatch.setattr(cifar10_sweep, '_evaluator', lambda sweep, config: ScriptedEvaluator(
      config, sweep.validation))
  space_file = write_space(tmp_path / 'space.json', _grid(
      learning_rate={'values': [0.1, 0.05]}))
  sweep_dir = str(tmp_path / 'pruned')
  assert run_sweep(sweep_args(sweep_dir, space_file, '--seeds=2',
                              '--pruner_startup_trials=1')) is None
  first, second = load_study(sweep_dir).get_trials()
  assert first.state == optuna.trial.TrialState.COMPLETE and first.value == 28 / 32
  assert first.intermediate_values == {2: 28 / 32, 4: 28 / 32}
  assert second.state == optuna.trial.TrialState.PRUNED
  assert second.user_attrs['pruned_at_step'] == 2 and second.intermediate_values == {2: 0.25}
  # Its folder stays, stopped at the checkpoint that was pruned; its second seed never ran.
  assert os.listdir(f'{sweep_dir}/trial_1') == ['seed_0']
  assert cifar10_run.newest_checkpoint(f'{sweep_dir}/trial_1/seed_0').endswith('ckpt-2')
  with open(os.path.join(sweep_dir, cifar10_sweep.TABLE_CSV)) as f:
    rows = list(csv.DictReader(f))
  assert [(row['trial'], row['state']) for row in rows] == [('0', 'COMPLETE'), ('1', 'PRUNED')]
  assert 'pruned at step 2' in rows[1]['note']


# --------------------------------------------------------------------------- as processes


def start_driver(args, log_path, pause=None):
  """This file as the sweep's driver, in its own process, logging into log_path."""
  env = dict(os.environ)
  env.pop(PAUSE_ENV, None)
  if pause:
    env[PAUSE_ENV] = pause
  with open(log_path, 'w') as log:
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *args], cwd=ROOT,
                            env=env, stdout=log, stderr=subprocess.STDOUT)


def finish(process, log_path, timeout=TIMEOUT_SECS):
  """Waits for a driver (killing it after `timeout`); returns (exit code, its log)."""
  try:
    process.wait(timeout=timeout)
  except subprocess.TimeoutExpired:
    process.kill()
    process.wait()
  with open(log_path) as f:
    return process.returncode, f.read()


def read_log(log_path):
  with open(log_path) as f:
    return f.read()


@pytest.mark.subprocess
def test_a_stopped_then_killed_driver_resumes_each_seed_in_the_trials_folder(tmp_path):
  space_file = write_space(tmp_path / 'space.json', dict(
      GRID, base=dict(BASE, max_steps=8), params={'learning_rate': {'values': [0.05, 0.1]}}))
  sweep_dir = str(tmp_path / 'killed')
  args = sweep_args(sweep_dir, space_file, '--seeds=2', '--heartbeat_interval=1',
                    '--grace_period=2', '--pruner=none')
  # 1: SIGTERM while trial 0's first seed holds still after its checkpoint of step 2.
  log1 = tmp_path / 'driver1.log'
  driver = start_driver(args, log1, pause='trial_0/seed_0:2:5')
  wait_for(lambda: 'PAUSED' in read_log(log1), driver, TIMEOUT_SECS, 'the pause at step 2')
  driver.send_signal(signal.SIGTERM)
  code, out1 = finish(driver, log1)
  assert code == 143 and 'trial 0 is queued again' in out1, out1
  # 2: runs trial 1, then trial 0 again; SIGKILL while its second seed is at step 4 of 8.
  log2 = tmp_path / 'driver2.log'
  driver = start_driver(args, log2, pause='trial_0/seed_1:4:600')
  wait_for(lambda: 'PAUSED' in read_log(log2), driver, TIMEOUT_SECS, 'the pause at step 4')
  driver.send_signal(signal.SIGKILL)
  code, out2 = finish(driver, log2)
  assert code == -signal.SIGKILL
  assert f'resumed from {sweep_dir}/trial_0/seed_0/ckpt-2 at step 2' in out2, out2
  # 3: the killed trial goes stale, comes back as a retry and finishes in trial_0's folder.
  code, out3 = finish(start_driver(args, tmp_path / 'driver3.log'), tmp_path / 'driver3.log')
  assert code == 0, out3
  assert f'{sweep_dir}/trial_0/seed_0 is already at step 8' in out3, out3
  assert f'resumed from {sweep_dir}/trial_0/seed_1/ckpt-4 at step 4' in out3, out3
  trials = load_study(sweep_dir).get_trials()
  states = {t.number: (t.state.name, cifar10_sweep.origin_of(t)) for t in trials}
  assert states == {0: ('FAIL', 0), 1: ('COMPLETE', 1), 2: ('FAIL', 0), 3: ('COMPLETE', 0)}
  assert folders(sweep_dir) == {'trial_0', 'trial_1'}
  for seed in range(2):  # Every checkpoint scored once, whatever the stops and kills.
    assert sorted(cifar10_sweep.read_records(f'{sweep_dir}/trial_0/seed_{seed}')) == [2, 4, 6, 8]
    assert trials[3].user_attrs[f'precision_seed_{seed}'] == final_precision(
        f'{sweep_dir}/trial_0/seed_{seed}')
  # Trial 1 ran once, by the second driver; nothing of it was trained again.
  assert [out.count('trial 1 starts') for out in (out1, out2, out3)] == [0, 1, 0]
  with open(os.path.join(sweep_dir, cifar10_sweep.TABLE_CSV)) as f:
    rows = {row['trial']: row for row in csv.DictReader(f)}
  assert rows['0']['attempts'] == '0 2 3' and rows['0']['state'] == 'COMPLETE'


@pytest.mark.subprocess
def test_a_driver_killed_on_a_journal_storage_is_resumed_by_the_journals_heartbeat(tmp_path):
  # The journal has no heartbeat of Optuna's own: the sweep's, a trial attribute, must make the
  # killed trial stale, and its retry must resume in its folder as on SQLite.
  space_file = write_space(tmp_path / 'space.json', dict(
      GRID, base=dict(BASE, max_steps=8), params={'learning_rate': {'values': [0.1]}}))
  sweep_dir, journal = str(tmp_path / 'journal'), str(tmp_path / 'study.log')
  args = sweep_args(sweep_dir, space_file, '--seeds=2', '--heartbeat_interval=1',
                    '--grace_period=2', '--pruner=none', f'--storage=journal:{journal}')
  log1 = tmp_path / 'driver1.log'
  driver = start_driver(args, log1, pause='trial_0/seed_1:4:600')
  wait_for(lambda: 'PAUSED' in read_log(log1), driver, TIMEOUT_SECS, 'the pause at step 4')
  driver.send_signal(signal.SIGKILL)
  assert finish(driver, log1)[0] == -signal.SIGKILL
  code, out = finish(start_driver(args, tmp_path / 'driver2.log'), tmp_path / 'driver2.log')
  assert code == 0, out
  assert f'{sweep_dir}/trial_0/seed_0 is already at step 8' in out, out
  assert f'resumed from {sweep_dir}/trial_0/seed_1/ckpt-4 at step 4' in out, out
  storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
  trials = optuna.load_study(study_name='journal', storage=storage).get_trials()
  assert [(t.state.name, cifar10_sweep.origin_of(t)) for t in trials] == [
      ('FAIL', 0), ('COMPLETE', 0)]
  assert folders(sweep_dir) == {'trial_0'}
  assert sorted(cifar10_sweep.read_records(f'{sweep_dir}/trial_0/seed_1')) == [2, 4, 6, 8]


@pytest.mark.subprocess
def test_two_drivers_on_one_sqlite_study_share_the_grid_without_duplicates(tmp_path):
  space_file = write_space(tmp_path / 'space.json', GRID)
  sweep_dir = str(tmp_path / 'shared')
  args = sweep_args(sweep_dir, space_file, '--seeds=1', '--pruner=none')
  logs = [tmp_path / f'driver{n}.log' for n in range(2)]
  drivers = [start_driver(args, log) for log in logs]
  outcomes = [finish(driver, log) for driver, log in zip(drivers, logs)]
  for code, out in outcomes:
    assert code == 0, out
  trials = load_study(sweep_dir).get_trials()
  complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
  configurations = [dict(zip(('learning_rate', 'label_smoothing'), values))
                    for values in itertools.product([0.05, 0.1], [0, 0.1])]
  assert sorted(map(json.dumps, (t.params for t in complete))) == sorted(
      map(json.dumps, configurations))
  # A trial the queue could not fill (the two raced for its last entry) trained nothing.
  assert all('not_run' in t.user_attrs for t in trials if t not in complete)
  assert folders(sweep_dir) == {f'trial_{t.number}' for t in complete}
  for trial in complete:
    starts = [out.count(f'trial {trial.number} starts') for _, out in outcomes]
    assert sorted(starts) == [0, 1], (trial.number, starts)


# --------------------------------------------------------------------------- the driver


def _pause_after(spec):
  """Makes the driver hold still after scoring a checkpoint: spec '<run suffix>:<step>:<s>'."""
  suffix, step, seconds = spec.rsplit(':', 2)
  save = cifar10_sweep._EvaluatingTrainer.save  # pylint: disable=protected-access
  paused = []

  def paused_save(self, train_seconds):
    path = save(self, train_seconds)
    if (self.config.train_dir.endswith(suffix) and int(self.step.numpy()) == int(step)
        and not paused):  # Once: a stop saves the same step again.
      paused.append(path)
      print(f'PAUSED at {path}', flush=True)
      time.sleep(float(seconds))
    return path

  cifar10_sweep._EvaluatingTrainer.save = paused_save  # pylint: disable=protected-access


def main(argv):
  cifar10_env.quiet_logging(False)
  if os.environ.get(PAUSE_ENV):
    _pause_after(os.environ[PAUSE_ENV])
  values, _ = cifar10_flags.parse(cifar10_sweep.define_flags, argv)
  return cifar10_sweep.run(values, splits=tiny_splits())


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
