"""Sweeps training hyperparameters with Optuna: each trial one configuration, several seeds.

    python cifar10_sweep.py --sweep_dir=sweeps/lr_ls --space=space.json --sampler=grid
    python cifar10_sweep.py --sweep_dir=sweeps/tpe --space=space.json --sampler=tpe --trials=20

The space file names TrainConfig values shared by every trial (`base`) and the swept ones
(`params`: a list of values, or a range for random and tpe); it is checked whole before
anything starts (docs/sweep.md). Each trial trains its --seeds seeds one after another in
process (cifar10_trainer.train) as ordinary run folders <sweep_dir>/trial_<n>/seed_<s>, on
the training images but the last --validation_size, and scores the EMA weights of each
checkpoint on those held-out images (`precision @ 1/ema`, `cross_entropy/ema` in <run>/eval,
as cifar10_eval.py writes them, and eval/validation.jsonl). The first seed's curve feeds the
pruner; a trial's value is the mean of its seeds' final precisions. After each trial,
<sweep_dir>/trials.md and trials.csv list every trial, the best first, and TensorBoard's
HParams tab shows all the runs of --logdir=<sweep_dir> against the swept values.

The study lives in --storage (default SQLite in the sweep folder; any SQLAlchemy URL; or
journal:<file> for several machines on one shared file system). The same command resumes
after a kill at any moment, and several drivers may run on one storage: a grid is queued
once, a driver's trials keep a heartbeat, and a trial whose driver died is queued again and
continues from its seeds' checkpoints in its own folder. Ctrl-C or SIGTERM saves a
checkpoint and stops (exit 130 or 143); the same command goes on from there. Optuna is an
optional install: `make sweep-deps` (requirements-sweep.txt).
"""

import contextlib
import csv
import dataclasses
import datetime
import functools
import importlib.util
import io
import itertools
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
import warnings

import cifar10_env  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':  # As a program only: importing this module changes nothing.
  cifar10_env.start()  # Environment defaults and a quiet TensorFlow, before it loads.
  if importlib.util.find_spec('optuna') is None:
    sys.exit('error: cifar10_sweep.py needs Optuna, an optional install: run `make sweep-deps` '
             '(or pip install -r requirements-sweep.txt) first.')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import optuna
from optuna.storages import _heartbeat as optuna_heartbeat
from optuna.storages import journal as optuna_journal
import sqlalchemy.exc
import tensorflow as tf
from tensorboard.plugins.hparams import summary_v2 as hparams_api  # api.py would import Keras

import cifar10_config
import cifar10_flags
import cifar10_records
import cifar10_run
import cifar10_scoring
import cifar10_trainer

SAMPLERS = ('grid', 'random', 'tpe')
PRUNERS = ('median', 'none')
OWNED_FIELDS = ('train_dir', 'seed')  # set by the sweep for each run, never by the space
SPACE_KEYS = ('base', 'params')
RANGE_KEYS = ('low', 'high', 'log')
VALIDATION_FILE = 'validation.jsonl'  # <run>/eval/: one line per evaluated checkpoint
TABLE_MD, TABLE_CSV = 'trials.md', 'trials.csv'
SETUP_LOCK = '.setup.lock'  # study set-up, the queue of the grid, the tables
STATE_LOCK = '.state.lock'  # every change of a trial's state (see _SerializedRDBStorage)
WAIT_POLL_SECS = 5  # the longest a driver with nothing to run waits between looks at the study
LOCK_WAIT_SECS = 300.0  # the longest wait for one of these locks before giving up
SQLITE_TIMEOUT_SECS = 60  # how long SQLite waits for another driver's write to finish
HEARTBEAT_ATTR = 'heartbeat'  # journal storage: a trial's last heartbeat (time.time())
PRECISION_TAG = cifar10_scoring.PRECISION_TAG.format('ema')  # as cifar10_eval.py writes them
CROSS_ENTROPY_TAG = cifar10_scoring.CROSS_ENTROPY_TAG.format('ema')
EVAL_GROUP = 'eval'  # the runs' subfolder holding those scalars (HParams metric group)
CHECK_DIR = '<sweep>'  # train_dir of the configs built only to check the space
# What an Evaluator's model and images depend on (cifar10_run.default_model, eval_images).
EVALUATOR_FIELDS = ('model', 'widths', 'image_size', 'init', 'weight_decay', 'l2_decay', 'conv')


class SpaceError(cifar10_config.ConfigError):
  """The space file or the flags of the sweep are wrong; the message names the file and key."""


class _NotRun(Exception):
  """A trial that must not train: its configuration runs elsewhere (a rare race of drivers)."""


# --------------------------------------------------------------------------- the space


@dataclasses.dataclass(frozen=True)
class Param:
  """One swept TrainConfig field: a list of values (any sampler) or a range (random, tpe)."""
  name: str
  values: tuple = None
  low: float = None
  high: float = None
  log: bool = False

  @property
  def integer(self):
    return cifar10_config.FIELDS[self.name].type is int


@dataclasses.dataclass(frozen=True)
class Space:
  """A checked space file: where it is, its raw content, the shared values and the params."""
  path: str
  content: dict
  base: dict
  params: dict  # {name: Param}, in the file's order


def read_space(path, sampler):
  """The Space of the JSON (or YAML) file `path`, every value checked against TrainConfig.

  Raises:
    SpaceError: the file is unreadable or wrong; the message names the file and the key.
  """
  content = _load_space_file(path)
  if not isinstance(content, dict) or set(content) - set(SPACE_KEYS) or 'params' not in content:
    raise SpaceError(f'{path}: must be an object with "params" and optionally "base", found '
                     f'{sorted(content) if isinstance(content, dict) else type(content).__name__}')
  base, raw_params = content.get('base', {}), content['params']
  for key, value in (('base', base), ('params', raw_params)):
    if not isinstance(value, dict):
      raise SpaceError(f'{path}: {key} must be an object of TrainConfig fields')
  if not raw_params:
    raise SpaceError(f'{path}: params is empty: name at least one field to sweep')
  for name, value in base.items():
    _check_name(path, f'base.{name}', name)
    try:
      cifar10_config.check_value(cifar10_config.FIELDS[name], value)
    except cifar10_config.ConfigError as e:
      raise SpaceError(f'{path}: base.{name}: {e}') from e
  params = {}
  for name, spec in raw_params.items():
    _check_name(path, f'params.{name}', name)
    if name in base:
      raise SpaceError(f'{path}: params.{name}: also in base; name it in one of the two')
    params[name] = _read_param(path, name, spec, sampler)
  space = Space(path=path, content=content, base=dict(base), params=params)
  _check_configs(space, sampler)
  return space


def _load_space_file(path):
  """The parsed file: YAML when it is named .yaml or .yml (PyYAML comes with Optuna), else JSON."""
  try:
    with open(path, encoding='utf-8') as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise SpaceError(f'--space={path}: cannot read it ({e})') from e
  try:
    if path.endswith(('.yaml', '.yml')):
      import yaml  # pylint: disable=g-import-not-at-top
      return yaml.safe_load(text)
    return json.loads(text)
  except ValueError as e:  # yaml.YAMLError is not one: caught below by its module.
    raise SpaceError(f'{path}: not JSON ({e})') from e
  except Exception as e:  # pylint: disable=broad-except  # yaml's own error classes
    raise SpaceError(f'{path}: not YAML ({str(e).splitlines()[0]})') from e


def _check_name(path, key, name):
  if name in OWNED_FIELDS:
    raise SpaceError(f'{path}: {key}: the sweep sets {name} itself (trial_<n>/seed_<s> '
                     'folders, seeds 0 .. --seeds - 1); remove it from the space')
  if name not in cifar10_config.FIELDS:
    raise SpaceError(f'{path}: {key}: not a TrainConfig field (docs/flags.md lists them)')


def _read_param(path, name, spec, sampler):
  """A Param from its spec: {"values": [...]} or {"low": a, "high": b, "log": false}."""
  key = f'{path}: params.{name}'
  if not isinstance(spec, dict) or not spec or (
      set(spec) - {'values'} and set(spec) - set(RANGE_KEYS)):
    raise SpaceError(f'{key}: must be {{"values": [...]}} or {{"low": a, "high": b, "log": '
                     'false}')
  if 'values' in spec:
    values = spec['values']
    if not isinstance(values, list) or not values or not all(
        isinstance(v, (bool, int, float, str)) for v in values):
      raise SpaceError(f'{key}: values must be a non-empty list of numbers, strings or '
                       'booleans')
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
      raise SpaceError(f'{key}: values repeat {repeated[0]!r}: each would train twice')
    return Param(name, values=tuple(values))
  if sampler == 'grid':
    raise SpaceError(f'{key}: a range needs --sampler=random or tpe; the grid takes a list '
                     'of values')
  field = cifar10_config.FIELDS[name]
  low, high, log = spec.get('low'), spec.get('high'), spec.get('log', False)
  if field.type not in (int, float) or field.metadata['choices'] is not None:
    raise SpaceError(f'{key}: a range needs a number field; {name} takes a list of values')
  if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) or (
      field.type is int and not all(isinstance(x, int) for x in (low, high))):
    raise SpaceError(f'{key}: low and high must both be {field.type.__name__}s')
  if not low < high or not isinstance(log, bool) or (log and low <= 0):
    raise SpaceError(f'{key}: needs low < high, and low > 0 with "log": true')
  return Param(name, low=low, high=high, log=log)


def configurations(space):
  """Every combination of the params' values, in the file's order ({name: value} each)."""
  names = list(space.params)
  return [dict(zip(names, values))
          for values in itertools.product(*(space.params[n].values for n in names))]


def config_of(space, params, train_dir, seed):
  """The TrainConfig of one run: base, the trial's params and the sweep's folder and seed,
  all given explicitly (they win over the recipe's values, as flags do)."""
  values = dict(space.base, **params, train_dir=train_dir, seed=seed)
  for name, value in values.items():  # JSON's 0 for a float field: the field's own type
    if cifar10_config.FIELDS[name].type is float and isinstance(value, int) and (
        not isinstance(value, bool)):
      values[name] = float(value)
  return cifar10_config.config_from_values(values, given=set(values))


def _check_configs(space, sampler):
  """Builds the config of base with each candidate (every value, both ends of each range) and,
  for the grid, of every combination: TrainConfig's checks speak for the space."""
  candidates = [(f'params.{name}', {name: value}) for name, param in space.params.items()
                for value in (param.values or (param.low, param.high))]
  if sampler == 'grid':
    candidates += [('params ' + ', '.join(f'{k}={v!r}' for k, v in c.items()), c)
                   for c in configurations(space)]
  for key, params in [('base', {})] + candidates:
    try:
      config = config_of(space, params, CHECK_DIR, 0)
    except (cifar10_config.ConfigError, TypeError) as e:
      raise SpaceError(f'{space.path}: {key}: {e}') from e
    if config.strategy != 'default':
      raise SpaceError(f'{space.path}: {key}: strategy={config.strategy!r}: a sweep trains '
                       'on one device per driver; start several drivers instead')


# --------------------------------------------------------------------------- the study


@dataclasses.dataclass
class Sweep:
  """What one driver runs: the flags' settings, the data, and the study once it is open."""
  sweep_dir: str
  space: Space
  sampler: str = 'grid'
  trials: int = None  # random, tpe: COMPLETE + PRUNED trials to reach; grid: None
  seeds: int = 2
  storage: str = ''  # '' : SQLite in the sweep folder
  study_name: str = ''  # '' : the sweep folder's name
  pruner: str = 'median'
  pruner_startup_trials: int = 5
  pruner_warmup_steps: int = 0
  validation_size: int = 5000
  heartbeat_interval: int = 30
  grace_period: int = 120
  train: cifar10_records.Split = None
  validation: cifar10_records.Split = None
  validation_name: str = ''  # what the validation images are, for the log and the table
  study: optuna.Study = None
  evaluators: dict = dataclasses.field(default_factory=dict)  # _evaluator's, by model shape

  def __post_init__(self):
    self.study_name = self.study_name or os.path.basename(os.path.normpath(self.sweep_dir))
    self.storage = self.storage or 'sqlite:///' + os.path.abspath(
        os.path.join(self.sweep_dir, 'study.db'))

  @property
  def size(self):
    """Trials the sweep ends with: the grid's configurations, or --trials."""
    return len(configurations(self.space)) if self.sampler == 'grid' else self.trials


@contextlib.contextmanager
def sweep_lock(sweep_dir, name, doing):
  """Holds the lock file `name` of the sweep folder for the block, waiting while another
  driver holds it (each holds it for moments: a state change, the set-up, the tables). The
  kernel's flock (cifar10_run.locked_path): a killed driver's lock is free at once."""
  deadline = time.time() + LOCK_WAIT_SECS
  while True:
    with contextlib.ExitStack() as stack:
      try:
        stack.enter_context(cifar10_run.locked_path(os.path.join(sweep_dir, name), sweep_dir,
                                                    doing, '--sweep_dir'))
      except cifar10_run.RunFolderBusy:
        if time.time() > deadline:
          raise
        time.sleep(0.05)
        continue
      yield
      return


class _SerializedRDBStorage(optuna.storages.RDBStorage):
  """Optuna's RDB storage whose trial state changes pass one at a time through a lock file.

  Optuna takes a waiting trial, or fails a stale one, by reading its state and then writing
  the new one. PostgreSQL and MySQL lock the row in between (SELECT ... FOR UPDATE); SQLite
  cannot, and two drivers could both take one trial, or both queue a retry of one stale
  trial. A lock held across the change makes it one step on any database; the drivers share
  the sweep folder anyway, since the runs are there.
  """

  def __init__(self, sweep_dir, url, **kwargs):
    self.sweep_dir = sweep_dir
    super().__init__(url, **kwargs)

  def set_trial_state_values(self, trial_id, state, values=None):
    with sweep_lock(self.sweep_dir, STATE_LOCK, "changing a trial's state"):
      return super().set_trial_state_values(trial_id, state, values)


class _HeartbeatJournal(optuna_journal.JournalStorage, optuna_heartbeat.BaseHeartbeat):
  """Optuna's journal storage with the heartbeat its RDB storage has (Optuna 5.1 gives the
  journal none, so a driver killed mid-trial would leave that trial RUNNING for ever).

  A beat is a system attribute of the trial holding the driver's clock, so the machines'
  clocks must agree to well within the grace period. The journal itself lets one driver only
  take a waiting trial or fail a stale one (its log decides the order of the writes).
  """

  def __init__(self, backend, interval, grace_period, callback):
    super().__init__(backend)
    self._interval, self._grace_period, self._callback = interval, grace_period, callback

  def record_heartbeat(self, trial_id):
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
      self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

  def _get_stale_trial_ids(self, study_id):
    # A retry starts with its original's attributes, old beat included: its start counts too.
    now, stale = time.time(), []
    for trial in self.get_all_trials(study_id, deepcopy=False,
                                     states=(optuna.trial.TrialState.RUNNING,)):
      beat = trial.system_attrs.get(HEARTBEAT_ATTR)
      if beat is not None and now - max(beat, trial.datetime_start.timestamp()) > (
          self._grace_period):
        stale.append(trial._trial_id)  # pylint: disable=protected-access  # a storage's key
    return stale

  def get_heartbeat_interval(self):
    return self._interval

  def get_heartbeat_stale_trial_callback(self):
    return self._callback


def open_storage(sweep):
  """The storage of --storage, with the heartbeat on and stale trials queued again.

  Raises:
    cifar10_config.ConfigError: it cannot be opened (a bad URL, a missing driver, no server).
  """
  url, retry = sweep.storage, optuna.storages.RetryHeartbeatStaleTrialCallback()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      if url.startswith('journal:'):
        backend = optuna_journal.JournalFileBackend(url[len('journal:'):])
        return _HeartbeatJournal(backend, sweep.heartbeat_interval, sweep.grace_period, retry)
      engine = ({'connect_args': {'timeout': SQLITE_TIMEOUT_SECS}}
                if url.startswith('sqlite') else None)
      return _SerializedRDBStorage(sweep.sweep_dir, url, engine_kwargs=engine,
                                   heartbeat_interval=sweep.heartbeat_interval,
                                   grace_period=sweep.grace_period,
                                   heartbeat_stale_trial_callback=retry)
  except (ValueError, ImportError, OSError, sqlalchemy.exc.SQLAlchemyError,
          optuna.exceptions.StorageInternalError) as e:
    raise cifar10_config.ConfigError(f'--storage={url}: cannot open it ({type(e).__name__}: '
                                     f'{str(e).strip().splitlines()[0][:300]})') from e


def open_study(sweep):
  """Creates or loads the study and, for the grid, queues each configuration that no trial
  holds yet; writes the HParams experiment. One driver at a time (the set-up lock), so two
  that start together neither create the tables nor queue the grid twice.

  Raises:
    SpaceError: the study was started with another space, seeds, validation or sampler.
    cifar10_config.ConfigError: the storage cannot be opened.
  """
  with sweep_lock(sweep.sweep_dir, SETUP_LOCK, 'setting the sweep up'):
    storage = open_storage(sweep)
    sampler = {'grid': optuna.samplers.RandomSampler, 'random': optuna.samplers.RandomSampler,
               # The liar: parallel drivers are not all handed the same suggestion.
               'tpe': functools.partial(optuna.samplers.TPESampler, constant_liar=True)}
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=sweep.pruner_startup_trials,
                                          n_warmup_steps=sweep.pruner_warmup_steps)
              if sweep.pruner == 'median' else optuna.pruners.NopPruner())
    try:
      study = optuna.create_study(storage=storage, study_name=sweep.study_name,
                                  direction='maximize', sampler=sampler[sweep.sampler](),
                                  pruner=pruner, load_if_exists=True)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
      raise cifar10_config.ConfigError(f'--storage={sweep.storage}: cannot open the study '
                                       f'({type(e).__name__}: {str(e)[:300]})') from e
    _check_study(study, sweep)
    if sweep.sampler == 'grid':
      _queue_grid(study, sweep.space)
    _write_hparams_config(sweep)
  return study


def _sweep_identity(sweep):
  """What a study is bound to at its creation: the space and the meaning of a trial's value."""
  return {'space': sweep.space.content, 'seeds': sweep.seeds,
          'validation_size': sweep.validation_size, 'sampler': sweep.sampler}


def _check_study(study, sweep):
  """Records the sweep's identity in a new study; refuses a later start that differs."""
  recorded, identity = study.user_attrs, _sweep_identity(sweep)
  if 'space' not in recorded:
    for key, value in identity.items():
      study.set_user_attr(key, value)
    return
  where = f'study {sweep.study_name!r} in {sweep.storage}'
  if json.dumps(recorded['space'], sort_keys=True) != json.dumps(identity['space'],
                                                                 sort_keys=True):
    raise SpaceError(f'--space={sweep.space.path}: {where} was started with another space '
                     f'({json.dumps(recorded["space"], sort_keys=True)[:300]}): pass that '
                     'space again, or another --sweep_dir or --study_name')
  for key in ('seeds', 'validation_size', 'sampler'):
    if recorded.get(key) != identity[key]:
      raise SpaceError(f'--{key}={identity[key]}: {where} was started with --{key}='
                       f'{recorded.get(key)}: pass that again, or another --sweep_dir or '
                       '--study_name')


def _queue_grid(study, space):
  """Queues each configuration of the grid that no trial holds (none on a resumed sweep)."""
  held = [trial.system_attrs.get('fixed_params', trial.params)
          for trial in study.get_trials(deepcopy=False)]
  missing = [c for c in configurations(space) if c not in held]
  for configuration in missing:
    study.enqueue_trial(configuration)
  if missing:
    cifar10_trainer.log(f'queued {len(missing)} of the grid\'s {len(configurations(space))} '
                        'configurations')


def _domain(param):
  """The HParams domain of a Param: its values (in the field's type), or its range."""
  field_type = cifar10_config.FIELDS[param.name].type
  if param.values is not None:
    return hparams_api.Discrete([field_type(v) for v in param.values], dtype=field_type)
  if param.integer:
    return hparams_api.IntInterval(param.low, param.high)
  return hparams_api.RealInterval(float(param.low), float(param.high))


def _write_hparams_config(sweep):
  """The HParams experiment at the sweep folder (once): the swept fields and the seed against
  the validation precision and cross-entropy that each run's eval/ holds. The runs write their
  own session data (cifar10_summaries), so TensorBoard lists them all in the HParams tab."""
  if any(name.startswith('events.out.tfevents.') for name in os.listdir(sweep.sweep_dir)):
    return
  hparams = [hparams_api.HParam(name, _domain(param)) for name, param in
             sweep.space.params.items()]
  hparams.append(hparams_api.HParam('seed', hparams_api.Discrete(list(range(sweep.seeds)))))
  metrics = [hparams_api.Metric(PRECISION_TAG, group=EVAL_GROUP,
                                display_name=f'precision @ 1 (EMA, {sweep.validation_name})',
                                dataset_type=hparams_api.Metric.VALIDATION),
             hparams_api.Metric(CROSS_ENTROPY_TAG, group=EVAL_GROUP,
                                display_name=f'cross-entropy (EMA, {sweep.validation_name})',
                                dataset_type=hparams_api.Metric.VALIDATION)]
  writer = tf.summary.create_file_writer(sweep.sweep_dir)
  with writer.as_default():
    hparams_api.hparams_config(hparams=hparams, metrics=metrics)
  writer.close()


# --------------------------------------------------------------------------- one trial

_STOPPING = threading.Event()  # a SIGINT or SIGTERM arrived (install_stop_handlers)
RUNNING = optuna.trial.TrialState.RUNNING
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def install_stop_handlers():
  """The trainer's handlers (a stop saves a checkpoint and ends train() between steps), which
  the sweep hears too, to stop between seeds, between trials and while it waits."""
  cifar10_trainer.install_stop_handlers()
  for number in (signal.SIGINT, signal.SIGTERM):
    signal.signal(number, functools.partial(_hear_stop, signal.getsignal(number)))


def _hear_stop(trainer_handler, signum, frame):
  _STOPPING.set()
  trainer_handler(signum, frame)  # A second Ctrl-C: KeyboardInterrupt, as in the trainer.


def _check_stop():
  if _STOPPING.is_set():
    raise cifar10_trainer.StopRequested()


def read_records(train_dir):
  """{step: record} of a run's eval/validation.jsonl (empty before its first evaluation).

  Raises:
    cifar10_config.ConfigError: the file is unreadable or holds a line that is not JSON.
  """
  path = os.path.join(train_dir, EVAL_GROUP, VALIDATION_FILE)
  if not os.path.exists(path):
    return {}
  try:
    return {record['step']: record for _, record in cifar10_run.json_lines(path)}
  except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
    raise cifar10_config.ConfigError(f'{path} is unreadable ({e}): it must be the file the '
                                     'sweep wrote; move it aside to score the run again') from e


class _Scorer:
  """Scores a seed's checkpoints once each with their EMA weights on the validation images.

  Writes what cifar10_eval.py writes for a test evaluation, the same scalars in <run>/eval,
  and eval/validation.jsonl (the record a resumed seed skips from). For the trial's first
  seed it reports each precision to the trial, whose pruner may stop it there.
  """

  def __init__(self, sweep, config, trial):
    self.sweep, self.config, self.trial = sweep, config, trial
    self.eval_dir = os.path.join(config.train_dir, EVAL_GROUP)
    self.records = read_records(config.train_dir)
    self.evaluator = _evaluator(sweep, config)
    self.writer, self.reported = None, set()

  def evaluate(self, checkpoint, step):
    """Scores `checkpoint` (of `step`) unless done before; reports it; may prune."""
    if step not in self.records:
      loaded = cifar10_run.load_inference_model(self.config.train_dir, ema=True,
                                                checkpoint=checkpoint, state=self.evaluator)
      matrix, loss = self.evaluator.confusion_and_loss()
      self._write({'step': loaded.step, 'precision_ema': cifar10_scoring.precision_of(matrix),
                   'cross_entropy_ema': loss, 'num_examples': self.evaluator.num_examples,
                   'images': self.sweep.validation_name,
                   'train_seconds': float(self.evaluator.train_seconds.numpy()),
                   'checkpoint': os.path.basename(checkpoint),
                   'checkpoint_digest': cifar10_run.checkpoint_digest(checkpoint)})
    if self.trial is not None:
      self._report(step)
      self.check_pruning(step)

  def _write(self, record):
    if self.writer is None:
      os.makedirs(self.eval_dir, exist_ok=True)
      self.writer = tf.summary.create_file_writer(self.eval_dir)
    with self.writer.as_default():
      tf.summary.scalar(PRECISION_TAG, record['precision_ema'], step=record['step'])
      tf.summary.scalar(CROSS_ENTROPY_TAG, record['cross_entropy_ema'], step=record['step'])
    self.writer.flush()
    cifar10_run.append_json_line(os.path.join(self.eval_dir, VALIDATION_FILE), record,
                                 flag='--sweep_dir')
    self.records[record['step']] = record
    cifar10_trainer.log(f'{self.config.train_dir}: step {record["step"]}, precision @ 1 = '
                        f'{record["precision_ema"]:.4f} ({self.sweep.validation_name})')

  def report_known(self):
    """Reports what an earlier attempt of the trial scored (a retry starts without it), so
    that the pruner sees the whole curve; may prune at once."""
    for step in sorted(self.records):
      self._report(step)
    if self.records:
      self.check_pruning(max(self.records))

  def _report(self, step):
    if step not in self.reported:  # A stop saves a step again: Optuna keeps the first only.
      self.trial.report(self.records[step]['precision_ema'], step)
      self.reported.add(step)

  def check_pruning(self, step):
    if self.trial.should_prune():
      record = self.records[step]
      for key, value in (('pruned_at_step', step), ('pruned_precision', record['precision_ema']),
                         ('seconds_seed_0', record['train_seconds'])):
        self.trial.set_user_attr(key, value)
      raise optuna.TrialPruned(f'precision {record["precision_ema"]:.4f} at step {step} is '
                               'under the median of the finished trials there')

  def close(self):
    if self.writer is not None:
      self.writer.close()


def _evaluator(sweep, config):
  """An Evaluator of the validation images for the config's model, one per model shape: each
  checkpoint is read into it whole, and a new one would trace its scoring function again."""
  key = tuple(getattr(config, name) for name in EVALUATOR_FIELDS)
  if key not in sweep.evaluators:
    sweep.evaluators[key] = cifar10_scoring.Evaluator(config, sweep.validation)
  return sweep.evaluators[key]


class _EvaluatingTrainer(cifar10_trainer.Trainer):
  """The trainer, scoring each checkpoint of the run's cadence right after it is saved (not
  a save on a stop between two: the next cadence checkpoint is scored after the resume)."""

  def __init__(self, config, scorer):
    super().__init__(config)
    self.scorer = scorer

  def save(self, train_seconds):
    path = super().save(train_seconds)
    step = int(self.step.numpy())
    if step % self.config.checkpoint_steps == 0 or step == self.config.max_steps:
      self.scorer.evaluate(path, step)
    return path


def _train_seed(sweep, config, trial):
  """Trains one seed's run to max_steps (resuming from its checkpoints; nothing when it is
  there already) and returns the record of its final checkpoint, scoring it if a kill came
  between its save and its score."""
  scorer = _Scorer(sweep, config, trial)
  try:
    if trial is not None:
      scorer.report_known()
    _train_when_free(sweep, config, scorer)
    newest = cifar10_run.newest_checkpoint(config.train_dir)
    step = cifar10_run.checkpoint_step(newest)
    if step not in scorer.records:
      scorer.evaluate(newest, step)
    return scorer.records[step]
  finally:
    scorer.close()


def _train_when_free(sweep, config, scorer):
  """cifar10_trainer.train, waiting while another process holds the run folder: a driver
  whose trial was taken for stale (a pause longer than --grace_period) and still trains it;
  the retry then resumes from what it leaves."""
  told = False
  while True:
    try:
      cifar10_trainer.train(config, sweep.train,
                            make_trainer=lambda c: _EvaluatingTrainer(c, scorer))
      return
    except cifar10_run.RunFolderBusy as e:
      if not told:
        cifar10_trainer.log(f'waiting: {e}')
        told = True
      _STOPPING.wait(sweep.heartbeat_interval)
      _check_stop()


def origin_of(trial):
  """The number of the trial a retry repeats (its folder's), or the trial's own."""
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    number = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
  return trial.number if number is None else number


def _frozen(study, number):
  return next(t for t in study.get_trials(deepcopy=False) if t.number == number)


def _why_not_run(sweep, frozen, origin):
  """Why a trial just taken must not train (None: it must): a trial of the grid that is no
  configuration of its queue (the queue emptied between a driver's look and its take), or
  one whose folder or configuration another trial already holds (a backstop: the locks of
  the sweep folder keep it from happening)."""
  fixed = frozen.system_attrs.get('fixed_params')
  if sweep.sampler == 'grid' and fixed is None:
    return 'no configuration of the grid was left waiting (another driver took the last one)'
  for other in sweep.study.get_trials(deepcopy=False):
    if other.number == frozen.number or 'not_run' in other.user_attrs:
      continue
    if origin_of(other) == origin and (other.state == RUNNING or other.state in FINISHED):
      return f'trial {other.number} of the same folder trial_{origin} is {other.state.name}'
    if fixed is not None and origin_of(other) < origin and (
        other.system_attrs.get('fixed_params') == fixed):
      return f'a duplicate of trial {origin_of(other)}, which holds the same configuration'
  return None


def _suggest(trial, space):
  """The trial's params: what the queue or a retry fixed, else the sampler's suggestion."""
  for name, param in space.params.items():
    if param.values is not None:
      trial.suggest_categorical(name, list(param.values))
    elif param.integer:
      trial.suggest_int(name, param.low, param.high, log=param.log)
    else:
      trial.suggest_float(name, param.low, param.high, log=param.log)
  return trial.params


def _requeue(study, number):
  """Queues a trial again with its params, as a retry of it (the heartbeat's own way), so
  that the next driver resumes it in its folder: after a stop or an error of the driver."""
  optuna.storages.RetryHeartbeatStaleTrialCallback()(study, _frozen(study, number))
  cifar10_trainer.log(f'trial {number} is queued again: the same command resumes it from its '
                      'checkpoints')


def mean_and_sd(values):
  """The mean and the sample standard deviation (None for one value)."""
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def _objective(sweep, trial):
  """Trains and scores a trial's seeds one after another; its value: their mean precision."""
  frozen = _frozen(sweep.study, trial.number)
  origin = origin_of(frozen)
  reason = _why_not_run(sweep, frozen, origin)
  if reason:
    trial.set_user_attr('not_run', reason)
    cifar10_trainer.log(f'trial {trial.number} is not run: {reason}')
    raise _NotRun(reason)
  params = _suggest(trial, sweep.space)
  trial.set_user_attr('folder', f'trial_{origin}')
  _log_start(sweep, trial.number, origin, params)
  try:
    return _train_seeds(sweep, trial, origin, params)
  except cifar10_trainer.TrainingDiverged as e:  # The configuration's result: not retried.
    trial.set_user_attr('error', str(e))
    raise
  except (cifar10_trainer.StopRequested, KeyboardInterrupt, *cifar10_trainer.ERRORS):
    _requeue(sweep.study, trial.number)
    raise


def _train_seeds(sweep, trial, origin, params):
  folder = os.path.join(sweep.sweep_dir, f'trial_{origin}')
  precisions = []
  for seed in range(sweep.seeds):
    _check_stop()
    config = config_of(sweep.space, params, os.path.join(folder, f'seed_{seed}'), seed)
    record = _train_seed(sweep, config, trial if seed == 0 else None)
    precisions.append(record['precision_ema'])
    trial.set_user_attr(f'precision_seed_{seed}', record['precision_ema'])
    trial.set_user_attr(f'seconds_seed_{seed}', record['train_seconds'])
  mean, sd = mean_and_sd(precisions)
  for key, value in (('precision_mean', mean), ('precision_sd', sd), ('n', len(precisions))):
    trial.set_user_attr(key, value)
  return mean


# --------------------------------------------------------------------------- the driver


def _describe(params):
  return ', '.join(f'{name}={value}' for name, value in params.items())


def is_done(trial):
  """Whether a trial has its outcome: COMPLETE, PRUNED, or failed by diverging (the
  configuration's own result, never run again)."""
  return trial.state in FINISHED or 'error' in trial.user_attrs


def _eta(sweep, trials):
  """The sweep's time left at the mean training time of its finished trials, shared among the
  drivers running now (as many as RUNNING trials); None before any trial finished."""
  done = [attempts[-1] for attempts in chains(trials).values() if is_done(attempts[-1])]
  seconds = [sum(value for key, value in trial.user_attrs.items()
                 if key.startswith('seconds_seed_')) for trial in done]
  seconds = [s for s in seconds if s > 0]
  if not seconds:
    return None
  left = max(sweep.size - len(done), 0)
  drivers = max(sum(trial.state == RUNNING for trial in trials), 1)
  return datetime.timedelta(seconds=round(statistics.mean(seconds) * left / drivers))


def _progress(sweep, eta=True):
  trials = sweep.study.get_trials(deepcopy=False)
  done = sum(is_done(attempts[-1]) for attempts in chains(trials).values())
  left = _eta(sweep, trials) if eta else None
  return f'{done} of {sweep.size} trials done' + (f', ETA of the sweep {left}' if left else '')


def _log_start(sweep, number, origin, params):
  again = '' if origin == number else f', again: a retry of trial {origin}'
  cifar10_trainer.log(f'trial {number} starts (trial_{origin}{again}; {_seeds(sweep.seeds)}): '
                      f'{_describe(params)}; {_progress(sweep)}')


def _after_trial(sweep, study, trial):
  """After each trial: the tables, and a line with its outcome and the sweep's ETA."""
  del study
  write_tables(sweep)
  attrs = trial.user_attrs
  if trial.state == optuna.trial.TrialState.COMPLETE:
    sd = attrs.get('precision_sd')
    outcome = (f'precision @ 1 = {attrs["precision_mean"]:.4f}' +
               (f' ± {sd:.4f}' if sd is not None else '') + f' over {_seeds(attrs["n"])}')
  elif trial.state == optuna.trial.TrialState.PRUNED:
    outcome = (f'pruned at step {attrs.get("pruned_at_step")} (precision '
               f'{attrs.get("pruned_precision", math.nan):.4f})')
  else:
    outcome = f'failed: {attrs.get("error") or attrs.get("not_run") or "see the log"}'
  cifar10_trainer.log(f'trial {trial.number} {trial.state.name}: {_describe(trial.params)}: '
                      f'{outcome}; {_progress(sweep)}')


def _next_action(sweep, trials):
  """'run' a trial, 'wait' for those running (elsewhere, or left by a killed driver, which
  the heartbeat turns stale in --grace_period), or 'done'. Random and tpe count COMPLETE,
  PRUNED and diverged trials against --trials, and RUNNING ones too, so that parallel
  drivers do not overshoot it."""
  states = [trial.state for trial in trials]
  if optuna.trial.TrialState.WAITING in states:
    return 'run'
  running = states.count(RUNNING)
  if sweep.sampler != 'grid':
    counted = sum(map(is_done, trials))
    if counted + running < sweep.trials:
      return 'run'
  return 'wait' if running else 'done'


def _fail_stale(study):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
    optuna.storages.fail_stale_trials(study)


def drive(sweep):
  """Runs trials until the sweep is done, each in Optuna's own loop (heartbeat, stale trials
  failed and queued again, the outcome told); writes the tables at the end, also after a
  stop or an error."""
  shown = None
  try:
    while True:
      _check_stop()
      _fail_stale(sweep.study)
      trials = sweep.study.get_trials(deepcopy=False)
      action = _next_action(sweep, trials)
      if action == 'done':
        break
      if action == 'wait':
        running = sorted(trial.number for trial in trials if trial.state == RUNNING)
        if running != shown:
          cifar10_trainer.log(f'waiting for trial{"s" if len(running) > 1 else ""} '
                              f'{", ".join(map(str, running))}, running elsewhere (or stale '
                              f'after {sweep.grace_period} s without a heartbeat, then queued '
                              'again)')
          shown = running
        _STOPPING.wait(min(sweep.heartbeat_interval, WAIT_POLL_SECS))
        continue
      shown = None
      _run_one(sweep)
  finally:
    write_tables(sweep)
  cifar10_trainer.log(f'sweep done: {_progress(sweep, eta=False)}; the table: '
                      f'{os.path.join(sweep.sweep_dir, TABLE_MD)}')


def _run_one(sweep):
  try:
    sweep.study.optimize(functools.partial(_objective, sweep), n_trials=1,
                         catch=(cifar10_trainer.TrainingDiverged, _NotRun),
                         callbacks=[functools.partial(_after_trial, sweep)], gc_after_trial=True)
  except optuna.exceptions.UpdateFinishedTrialError as e:
    cifar10_trainer.log(f'note: {e}: another driver took the trial for stale while it ran here '
                        '(a pause longer than --grace_period); its retry reads what it left')


# --------------------------------------------------------------------------- the table

STATE_ORDER = ('COMPLETE', 'PRUNED', 'RUNNING', 'WAITING', 'FAIL', 'NOT RUN')


def chains(trials):
  """{origin: [its attempts, by number]}: a trial and the retries that repeat it."""
  found = {}
  for trial in sorted(trials, key=lambda t: t.number):
    found.setdefault(origin_of(trial), []).append(trial)
  return found


def table_rows(sweep, trials):
  """One row per configuration's attempts (chains), the best first: COMPLETE by mean, then
  PRUNED by their last precision, RUNNING, WAITING, FAIL and NOT RUN."""
  rows = []
  for origin, attempts in chains(trials).items():
    last = attempts[-1]
    attrs = last.user_attrs
    params = dict(last.system_attrs.get('fixed_params', {}), **last.params)
    row = {'trial': origin, 'state': 'NOT RUN' if 'not_run' in attrs else last.state.name,
           'attempts': ' '.join(str(t.number) for t in attempts)}
    row.update({name: params.get(name) for name in sweep.space.params})
    row.update({f'precision_seed_{s}': attrs.get(f'precision_seed_{s}')
                for s in range(sweep.seeds)})
    row.update({key: attrs.get(key) for key in ('precision_mean', 'precision_sd', 'n')})
    folder = f'trial_{origin}'
    row['folder'] = folder if os.path.isdir(os.path.join(sweep.sweep_dir, folder)) else ''
    row['note'] = _note(attrs)
    rows.append(row)
  def rank(row):
    score = row['precision_mean']
    if score is None and row['state'] == 'PRUNED':
      score = _by_origin(trials, row['trial']).user_attrs.get('pruned_precision')
    return STATE_ORDER.index(row['state']), -(score or 0.0), row['trial']
  return sorted(rows, key=rank)


def _by_origin(trials, origin):
  return chains(trials)[origin][-1]


def _note(attrs):
  if 'pruned_at_step' in attrs:
    return (f'pruned at step {attrs["pruned_at_step"]} '
            f'(precision {attrs["pruned_precision"]:.4f})')
  return attrs.get('not_run') or (attrs.get('error') or '')[:200]


def _cell(value, digits=4):
  if value is None:
    return ''
  return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def _value(value):
  """A param's value in trials.md: a float to 4 significant digits (trials.csv has it all)."""
  return f'{value:.4g}' if isinstance(value, float) else value


def _seeds(n):
  return f'{n} seed' + ('s' if n != 1 else '')


def table_markdown(sweep, rows):
  """trials.md: what the sweep is, then the table."""
  states = [row['state'] for row in rows]
  counts = ', '.join(f'{states.count(s)} {s}' for s in STATE_ORDER if s in states) or 'no trial'
  seeds = [f'seed {s}' for s in range(sweep.seeds)]
  lines = [f'# Sweep `{sweep.study_name}`', '',
           f'{sweep.sampler} sampler over `{sweep.space.path}`, {_seeds(sweep.seeds)} per trial, '
           f'EMA precision @ 1 on {sweep.validation_name}; storage `{sweep.storage}`; '
           f'{counts}. A trial run again after a kill or a stop keeps its first number '
           '(its folder): "attempts" lists the trials that ran it.', '',
           '| ' + ' | '.join(['trial', 'state', *sweep.space.params, *seeds, 'mean ± SD', 'n',
                              'attempts', 'note']) + ' |',
           '|' + '---|' * (6 + len(sweep.space.params) + sweep.seeds)]
  for row in rows:
    spread = _cell(row['precision_mean'])
    if row['precision_sd'] is not None:
      spread += f' ± {row["precision_sd"]:.4f}'
    cells = [row['trial'], row['state'], *(_value(row[name]) for name in sweep.space.params),
             *(_cell(row[f'precision_seed_{s}']) for s in range(sweep.seeds)), spread,
             _cell(row['n']), row['attempts'], row['note'].replace('|', '/')]
    lines.append('| ' + ' | '.join(str(cell) for cell in cells) + ' |')
  return '\n'.join(lines) + '\n'


def table_csv(rows):
  """trials.csv: the same rows, numbers unrounded."""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ['trial'],
                          lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  return out.getvalue()


def write_tables(sweep):
  """Writes <sweep_dir>/trials.md and trials.csv whole (one driver at a time)."""
  rows = table_rows(sweep, sweep.study.get_trials(deepcopy=False))
  with sweep_lock(sweep.sweep_dir, SETUP_LOCK, 'writing the tables'):
    cifar10_run.write_whole(os.path.join(sweep.sweep_dir, TABLE_MD), table_markdown(sweep, rows))
    cifar10_run.write_whole(os.path.join(sweep.sweep_dir, TABLE_CSV), table_csv(rows))


# --------------------------------------------------------------------------- the program


def define_flags(flag_values=flags.FLAGS):
  """The data flags and the sweep's; {name: FlagHolder}."""
  holders = cifar10_flags.define_data_flags(flag_values)
  string, integer, enum = flags.DEFINE_string, flags.DEFINE_integer, flags.DEFINE_enum
  for name, define, default, text, extra in (
      ('sweep_dir', string, None, 'The sweep folder: the trials\' runs (trial_<n>/seed_<s>), '
       'the tables, the HParams experiment and, by default, the study.', {'required': True}),
      ('space', string, None, 'JSON (or YAML) file of the space: {"base": {field: value}, '
       '"params": {field: {"values": [...]} or {"low": a, "high": b, "log": false}}} '
       '(docs/sweep.md).', {'required': True}),
      ('sampler', enum, 'grid', 'grid (every combination of the values, once), random or tpe '
       '(Optuna\'s TPE; both need --trials).', {'enum_values': list(SAMPLERS)}),
      ('trials', integer, None, 'random, tpe: trials to finish (COMPLETE, PRUNED or diverged).',
       {'lower_bound': 1}),
      ('seeds', integer, 2, 'Seeds per trial, trained one after another (0 .. N-1).',
       {'lower_bound': 1}),
      ('storage', string, '', 'Where the study is: an SQLAlchemy URL (postgresql://..., '
       'sqlite:///...) or journal:<file> (several machines, one shared file system); empty: '
       'sqlite:///<sweep_dir>/study.db.', {}),
      ('study_name', string, '', 'The study\'s name in the storage; empty: the sweep folder\'s '
       'name.', {}),
      ('pruner', enum, 'median', 'median (stop a trial whose first seed scores under the '
       'median of the finished trials at the same step) or none.', {'enum_values': list(PRUNERS)}),
      ('pruner_startup_trials', integer, 5, 'median: finished trials before any pruning.',
       {'lower_bound': 0}),
      ('pruner_warmup_steps', integer, 0, 'median: steps of a trial before it may be pruned.',
       {'lower_bound': 0}),
      ('validation_size', integer, 5000, 'The last images of the training set held out to '
       'score the trials; 0: train on them all and score on the test set.',
       {'lower_bound': 0, 'upper_bound': cifar10_records.NUM_TRAIN_EXAMPLES - 1}),
      ('heartbeat_interval', integer, 30, 'Seconds between two heartbeats of a running trial.',
       {'lower_bound': 1}),
      ('grace_period', integer, 120, 'Seconds without a heartbeat after which a running trial '
       'counts as dead: failed and queued again.', {'lower_bound': 2})):
    holders[name] = define(name, default, help=text, flag_values=flag_values, **extra)
  return holders


def sweep_of(values):
  """The Sweep of the flag values, its space read and checked: before anything is written.

  Raises:
    SpaceError: a flag combination or the space file is wrong.
  """
  sampler, trials = values['sampler'], values['trials']
  if sampler == 'grid' and trials is not None:
    raise SpaceError(f'--trials={trials} is for --sampler=random or tpe: the grid runs each '
                     'configuration of the space once')
  if sampler != 'grid' and trials is None:
    raise SpaceError(f'--sampler={sampler} needs --trials=N, the trials to finish')
  if values['grace_period'] <= values['heartbeat_interval']:
    raise SpaceError(f'--grace_period={values["grace_period"]} must exceed '
                     f'--heartbeat_interval={values["heartbeat_interval"]} (a few times over): '
                     'a live trial would be taken for dead')
  names = [f.name for f in dataclasses.fields(Sweep) if f.name in values]
  return Sweep(space=read_space(values['space'], sampler),
               **{name: values[name] for name in names if name != 'space'})


def split_data(sweep, train, test):
  """Sets the sweep's training and validation images: the training set without its last
  --validation_size images and those, or with 0 the whole training set and the test set."""
  size = sweep.validation_size
  if size >= len(train):
    raise SpaceError(f'--validation_size={size:,} leaves none of the {len(train):,} training '
                     'images to train on')
  if size:
    sweep.train = cifar10_records.Split(train.images[:-size], train.labels[:-size])
    sweep.validation = cifar10_records.Split(train.images[-size:], train.labels[-size:])
    sweep.validation_name = f'the last {size:,} training images'
    return
  sweep.train, sweep.validation = train, test
  sweep.validation_name = 'the test set'
  cifar10_trainer.log(f'note: --validation_size=0: the trials train on all {len(train):,} '
                      f'training images and are scored on the {len(test):,} test images, '
                      'which then choose the configuration: their figures are no longer a '
                      'fair test of it')


def run(values, splits=None):
  """Sweeps as the flag values say (cifar10_flags.read); returns what sys.exit takes: None
  when the sweep is done, `error: ...` for a bad input, 128 + the signal's number after a
  stop.

  Args:
    values: the flag values.
    splits: (train, test) Splits to use instead of reading --data_dir (the tests' tiny data).
  """
  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.ERROR)  # Our own lines say what happens.
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optuna.exceptions.ExperimentalWarning)
      return cifar10_trainer.exit_status(lambda: _sweep(values, splits))
  finally:
    optuna.logging.set_verbosity(verbosity)


def _sweep(values, splits):
  sweep = sweep_of(values)
  if splits is None:
    batches_dir = cifar10_flags.batches_dir(values)
    splits = (cifar10_records.load_split(batches_dir, 'train'),
              cifar10_records.load_split(batches_dir, 'test') if not sweep.validation_size
              else None)
  split_data(sweep, *splits)
  sweep.study = open_study(sweep)
  install_stop_handlers()  # Only now: before, Ctrl-C ends a download.
  cifar10_trainer.log(f'sweep {sweep.study_name}: {sweep.sampler}, {sweep.size} trials of '
                      f'{_seeds(sweep.seeds)}, scored on {sweep.validation_name}; storage '
                      f'{sweep.storage}')
  drive(sweep)


def main(argv):
  values, _ = cifar10_flags.main_values(argv, _FLAGS)
  sys.exit(run(values))


if __name__ == '__main__':
  _FLAGS = define_flags()
  app.run(main)
