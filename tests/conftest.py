"""Shared pytest setup: the project on sys.path, the test tiers, and the real CIFAR-10 data.

Tiers (pytest markers): `real_data` for every test that uses the real archive (its fixtures
mark it), `subprocess` for tests that start processes (marked by hand; a unit test that
starts one fails, naming the marker), `stage` for in-process runs of a whole compression stage
or the export (pruning, QAT, slimming, export) on a tiny run trained for them (the fixtures of
STAGE_FIXTURES mark them, @pytest.mark.stage the tests that train their own), `unit` for all
others. `make test-fast` runs `-m unit`; `make test` runs everything.

The real data comes from the environment variable CIFAR10_DATA: a folder holding
cifar-10-binary.tar.gz, or the archive's own path (`make test` sets it). It is extracted once
per session into a temporary folder, never beside the archive (../shared is read-only in CI).
"""

import os
import shutil
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import cifar10_env  # pylint: disable=wrong-import-position

cifar10_env.start()  # As the binaries: the same kernels (oneDNN), a quiet TensorFlow.

import cifar10_records  # pylint: disable=wrong-import-position


def _share_the_cores_among_workers():
  """Under pytest-xdist, each worker's TensorFlow takes its share of the cores (tiny batches
  gain nothing from more threads, and workers that each take every core slow each other)."""
  workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
  if workers > 1:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    threads = max(1, (os.cpu_count() or 1) // workers)
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


_share_the_cores_among_workers()

DATA_ENV = 'CIFAR10_DATA'
MISSING_DATA_MESSAGE = (
    f'{DATA_ENV} is not set: set it to the folder holding {cifar10_records.ARCHIVE_NAME} or to '
    f'the archive itself, e.g. {DATA_ENV}=../shared/data/{cifar10_records.ARCHIVE_NAME} '
    '(`make test` sets it). Real-data tests are never skipped.')


REAL_DATA_FIXTURES = {'real_batches_dir', 'real_data_dir'}
# The module fixtures that train a run for a whole stage to start from: test_slim's and
# test_qat's `source`, test_prune's `source_run`, test_export's `runs`; test_sweep's `grid`
# runs a whole sweep. Every test that requests one, however far down, is of the stage tier,
# so the unit tier never builds them.
STAGE_FIXTURES = {'source', 'source_run', 'runs', 'grid'}
TIERS = {'unit': 'fast tests in this process, on tiny synthetic data',
         'real_data': 'tests that read the real CIFAR-10 archive (CIFAR10_DATA)',
         'subprocess': 'tests that start the binaries or other processes',
         'stage': 'in-process runs of a whole stage (pruning, QAT, slimming, export) on a '
                  'tiny trained run'}
OTHER_TIERS = ('real_data', 'subprocess', 'stage')


def pytest_configure(config):
  for marker, description in TIERS.items():
    config.addinivalue_line('markers', f'{marker}: {description}')


def pytest_collection_modifyitems(items):
  """Marks real-data and stage tests by their fixtures and every test of no other tier as
  unit."""
  for item in items:
    fixtures = set(getattr(item, 'fixturenames', ()))
    if REAL_DATA_FIXTURES & fixtures:
      item.add_marker(pytest.mark.real_data)
    if STAGE_FIXTURES & fixtures:
      item.add_marker(pytest.mark.stage)
    if not any(item.get_closest_marker(tier) for tier in OTHER_TIERS):
      item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
  """Programs' run() install stop handlers (train, sweep): every test leaves pytest's."""
  saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
  yield
  for number, handler in saved.items():
    signal.signal(number, handler)


@pytest.fixture(autouse=True)
def _unit_tests_start_no_process(request, monkeypatch):
  """Keeps the unit tier honest: starting a process there fails with what to do instead."""
  if request.node.get_closest_marker('unit') is None:
    return

  def refuse(*args, **kwargs):
    del args, kwargs
    raise AssertionError('a unit test started a process: mark it @pytest.mark.subprocess')

  monkeypatch.setattr(subprocess.Popen, '__init__', refuse)


def real_data_location():
  """The value of CIFAR10_DATA, failing the calling test when it is unset or wrong."""
  location = os.environ.get(DATA_ENV)
  if not location:
    pytest.fail(MISSING_DATA_MESSAGE, pytrace=False)
  if location.endswith('.tar.gz') and not os.path.isfile(location):
    # Checked here so a typo fails fast instead of downloading 170 MB.
    pytest.fail(f'{DATA_ENV}={location} does not exist: it must be a folder holding '
                f'{cifar10_records.ARCHIVE_NAME} or the archive itself.', pytrace=False)
  return location


@pytest.fixture(scope='session')
def real_batches_dir(tmp_path_factory):
  """The real cifar-10-batches-bin folder.

  An archive path is extracted into a session temp folder (never beside it: ../shared is
  read-only in CI). A folder is used as cifar10_train.py --data_dir uses it: its extracted
  data, else its archive extracted in place, else a download into it (a fresh `make test`).
  """
  location = real_data_location()
  if not os.path.isfile(location):
    yield cifar10_records.find_batches_dir(location)
    return
  extract_dir = tmp_path_factory.mktemp('cifar10_real')
  yield cifar10_records.find_batches_dir(location, extract_dir=str(extract_dir))
  # 180 MB per session: do not let pytest's kept temp folders pile them up.
  shutil.rmtree(extract_dir, ignore_errors=True)


@pytest.fixture(scope='session')
def real_data_dir(real_batches_dir):
  """A folder holding the real cifar-10-batches-bin, fit for cifar10_train.py --data_dir."""
  return os.path.dirname(real_batches_dir)
