"""Tests of the programs' start-up (cifar10_env.start)."""

import contextlib
import sys

import pytest

import cifar10_env


def test_ctrl_c_while_tensorflow_loads_exits_130_without_a_traceback(monkeypatch):
  @contextlib.contextmanager
  def interrupted(keep):
    del keep
    raise KeyboardInterrupt  # what Ctrl-C raises in the seconds the import takes
    yield  # pylint: disable=unreachable

  monkeypatch.delitem(sys.modules, 'tensorflow')  # as in a program's fresh process
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '1')
  monkeypatch.setattr(cifar10_env, 'held_stderr', interrupted)
  with pytest.raises(SystemExit) as stopped:
    cifar10_env.start()
  assert stopped.value.code == 130
