"""Tests of the programs' start-up (cifar10_env.start)."""

import contextlib
import signal
import sys

import pytest

import cifar10_env


@pytest.mark.parametrize('level', ['1', '0'])
def test_ctrl_c_while_tensorflow_loads_ends_the_process_at_once(monkeypatch, level):
  """During the import SIGINT is handled by an immediate exit (a KeyboardInterrupt raised
  inside an import can come out wrapped in another error); Python's handler is back after.
  A real SIGINT: tests/test_binaries.py."""
  seen = []
  class Stop(Exception):
    pass

  @contextlib.contextmanager
  def importing(keep):  # Records the handler, then stops before TensorFlow is imported again.
    del keep
    seen.append(signal.getsignal(signal.SIGINT))
    raise Stop
    yield  # pylint: disable=unreachable

  monkeypatch.delitem(sys.modules, 'tensorflow')  # as in a program's fresh process
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', level)
  monkeypatch.setattr(cifar10_env, 'held_stderr', importing)
  before = signal.getsignal(signal.SIGINT)
  with pytest.raises(Stop):
    cifar10_env.start()
  assert seen == [cifar10_env._exit_at_once]  # pylint: disable=protected-access
  assert signal.getsignal(signal.SIGINT) is before
