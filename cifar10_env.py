"""How every binary starts: environment defaults, then a quiet TensorFlow, then quiet logging.

A binary calls `start()` first when it runs as a program (under `if __name__ == '__main__'`,
before it imports TensorFlow or a module that does) and `quiet_logging(...)` at the top of
its main(). Libraries never call either, and neither does a binary imported as a library, so
importing a module changes nothing in the caller's process. `available_memory()` tells how
much memory a batch may take (cifar10_train.py bounds --batch_size by it). Imports only the
standard library at load (absl when quiet_logging runs).

Defaults, each only where the user has not set the variable:
  TF_CPP_MIN_LOG_LEVEL=1   TensorFlow's C++ INFO lines off (warnings and errors stay).
  TF_ENABLE_ONEDNN_OPTS=1  oneDNN's CPU kernels on: TensorFlow 2.21 leaves them off on some
                           CPUs, and they made the train step ~1.7x faster on the 2-core
                           machine of bench/README.md (no effect on a GPU's kernels).
TensorFlow 2.21 prints its start-up banner (oneDNN, CPU features) while it loads, before
TF_CPP_MIN_LOG_LEVEL applies; `start` imports it with stderr held in a temporary file, then
writes back every line but those INFO records. If the import kills the process outright
(an illegal instruction on an unsupported CPU, say), what it printed is lost with it: run
again with `TF_CPP_MIN_LOG_LEVEL=0`, which skips the filtering and shows every line. absl's
`--verbosity=0` (or `-v 0`) brings back Python-side INFO logging, TensorFlow's included.
"""

import contextlib
import os
import re
import signal
import sys
import tempfile

# Lines TensorFlow's C++ logging writes at start-up: absl INFO records ('I1201 ...' or
# 'I0000 ...'), absl's note that logging is not initialised yet, and the continuation line
# of the CPU-features record.
_START_UP_NOISE = re.compile(r'^(I\d{4} |WARNING: All log messages before absl::InitializeLog'
                             r'|To enable the following instructions: )')


def start():
  """Sets the environment defaults and imports TensorFlow with its start-up INFO lines hidden."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
  if 'tensorflow' in sys.modules:
    return
  # Ctrl-C in the seconds TensorFlow takes to load ends the program at once with the exit code
  # of an interrupted one. Not by a KeyboardInterrupt: raised inside some import it comes out
  # wrapped in another error (a RuntimeError of numpy's class set-up was seen), as a traceback.
  previous = signal.signal(signal.SIGINT, _exit_at_once)
  try:
    with held_stderr(lambda line: not _START_UP_NOISE.match(line)):
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
  finally:
    signal.signal(signal.SIGINT, previous)


def exit_on_interrupt():
  """Makes SIGINT (Ctrl-C) end the program at once with exit status 130 and no traceback,
  wherever it lands (an import, a decoder, the output): for a program with nothing to save
  or clean up. The trainers keep Python's KeyboardInterrupt instead: their first Ctrl-C
  saves a checkpoint."""
  signal.signal(signal.SIGINT, _exit_at_once)


def _exit_at_once(signum, _):
  """A signal handler: what was printed is flushed, then the process ends with 128 + signum
  (no exception: it could surface wrapped in another one, from whatever it interrupted)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # pylint: disable=broad-except  # A flush it interrupted, say.
      pass
  os._exit(128 + signum)  # pylint: disable=protected-access


@contextlib.contextmanager
def held_stderr(keep=lambda line: False):
  """Holds what native code writes to stderr (file descriptor 2) inside the block in a
  temporary file, then writes back the lines `keep` accepts (by default none): C++ notes
  that Python's warnings filters cannot reach. Unless TF_CPP_MIN_LOG_LEVEL is 0, which
  shows everything."""
  if os.environ.get('TF_CPP_MIN_LOG_LEVEL', '1') in ('', '0'):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors='replace').splitlines():
        if keep(line):
          print(line, file=sys.stderr)


def available_memory():
  """Bytes of memory this process can still take, or None when unknown.

  The least of the kernel's MemAvailable and the room left under the cgroup's limit (a
  container's limit is not in MemAvailable); the physical memory where neither is readable
  (macOS).
  """
  bounds = []
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          bounds.append(int(line.split()[1]) * 1024)
  except (OSError, ValueError, IndexError):
    pass
  for limit_file, usage_file in (('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory.current'),
                                 ('/sys/fs/cgroup/memory/memory.limit_in_bytes',
                                  '/sys/fs/cgroup/memory/memory.usage_in_bytes')):
    try:
      with open(limit_file) as f, open(usage_file) as g:
        bounds.append(int(f.read()) - int(g.read()))  # 'max' (no limit) fails int().
    except (OSError, ValueError):
      pass
  if not bounds:
    try:
      bounds.append(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'))
    except (OSError, ValueError):
      return None
  return max(min(bounds), 0)


def quiet_logging(verbosity_flag_given):
  """Python-side logging at WARNING (TensorFlow's INFO records off) unless --verbosity was given.

  Args:
    verbosity_flag_given: whether the user passed absl's --verbosity (or -v); then it rules.
  """
  if verbosity_flag_given:
    return
  # Imported here: this module imports nothing but the standard library at load, so that a
  # program's first lines (exit_on_interrupt, start) run within milliseconds of its start.
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)
  if sys.modules.get('tensorflow') is not None:  # Loaded (None: blocked, as in a test).
    sys.modules['tensorflow'].get_logger().setLevel('WARNING')
