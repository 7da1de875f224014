"""Shared pytest setup: makes the project importable and provides the real CIFAR-10 data.

The real data comes from the environment variable CIFAR10_DATA: a folder holding
cifar-10-binary.tar.gz, or the archive's own path (`make test` sets it). It is extracted once
per session into a temporary folder, never beside the archive (../shared is read-only in CI).
"""

import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

import cifar10_input  # pylint: disable=wrong-import-position

DATA_ENV = 'CIFAR10_DATA'
MISSING_DATA_MESSAGE = (
    f'{DATA_ENV} is not set: set it to the folder holding {cifar10_input.ARCHIVE_NAME} or to '
    f'the archive itself, e.g. {DATA_ENV}=../shared/data/{cifar10_input.ARCHIVE_NAME} '
    '(`make test` sets it). Real-data tests are never skipped.')


def real_data_location():
  """The value of CIFAR10_DATA, failing the calling test when it is unset or wrong."""
  location = os.environ.get(DATA_ENV)
  if not location:
    pytest.fail(MISSING_DATA_MESSAGE, pytrace=False)
  if location.endswith('.tar.gz') and not os.path.isfile(location):
    # Checked here so a typo fails fast instead of downloading 170 MB.
    pytest.fail(f'{DATA_ENV}={location} does not exist: it must be a folder holding '
                f'{cifar10_input.ARCHIVE_NAME} or the archive itself.', pytrace=False)
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
    yield cifar10_input.find_batches_dir(location)
    return
  extract_dir = tmp_path_factory.mktemp('cifar10_real')
  yield cifar10_input.find_batches_dir(location, extract_dir=str(extract_dir))
  # 180 MB per session: do not let pytest's kept temp folders pile them up.
  shutil.rmtree(extract_dir, ignore_errors=True)


@pytest.fixture(scope='session')
def real_data_dir(real_batches_dir):
  """A folder holding the real cifar-10-batches-bin, fit for cifar10_train.py --data_dir."""
  return os.path.dirname(real_batches_dir)
