"""Training on several devices or machines with tf.distribute: the strategy and who writes.

    --strategy=default       one device, the loop of cifar10_train.py as it always was
    --strategy=mirrored      tf.distribute.MirroredStrategy over the visible GPUs, or over
                             --cpu_replicas=N logical CPU devices when there is no GPU
    --strategy=multi_worker  tf.distribute.MultiWorkerMirroredStrategy, one process per
                             machine (or per GPU group), configured by the TF_CONFIG variable

A step means the same under every strategy (docs/distributed.md): --batch_size is the global
batch, split evenly over the replicas; the gradients are summed over the replicas of a loss
that averages the cross-entropy over the global batch and adds the weight decay once, and the
step, learning rate and EMA advance once per global step. Only the chief (the `chief` task of
TF_CONFIG, else worker 0) writes into the run folder; the other workers save their share of a
checkpoint into a temporary folder of their own, removed at once.

The devices must be set before TensorFlow creates them: `configure_devices` runs first thing
in the binaries' main().
"""

import contextlib
import dataclasses
import json
import os
import signal
import socket
import struct
import sys
import threading
import time

import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker')
STRATEGY_HELP = ('default: one device; mirrored: every GPU of this machine (or --cpu_replicas '
                 'CPU devices); multi_worker: the machines of TF_CONFIG (docs/distributed.md).')
CPU_REPLICAS_HELP = 'Logical CPU devices of --strategy=mirrored without a GPU.'
MAX_CPU_REPLICAS = 64
TF_CONFIG = 'TF_CONFIG'
CLUSTER_TIMEOUT = 300  # Seconds a multi_worker start waits for the other workers.
CLUSTER_TIMEOUT_HELP = ('Seconds a --strategy=multi_worker start waits for every worker of '
                        'TF_CONFIG to join before it stops with one line.')
EXPECTED = ('expected {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
            '"index": 0}} (docs/distributed.md)')


class DistributeError(ValueError):
  """A strategy that cannot be set up as asked; the message says what to change."""


@dataclasses.dataclass(frozen=True)
class Worker:
  """This process's place in a multi-worker cluster (TF_CONFIG), or the only process."""
  task_type: str = 'worker'
  task_index: int = 0
  num_workers: int = 1
  is_chief: bool = True


def worker_from_tf_config(text):
  """This process's Worker, read from the value of TF_CONFIG (None or empty: the only one).

  Raises:
    DistributeError: TF_CONFIG is not the JSON that tf.distribute expects.
  """
  if not text:
    return Worker()
  workers, task_type, task_index = read_tf_config(text)
  num_workers = len(workers.get('worker', ())) + len(workers.get('chief', ()))
  is_chief = (task_type == 'chief' or
              (task_type == 'worker' and task_index == 0 and 'chief' not in workers))
  return Worker(task_type, task_index, num_workers, is_chief)


def read_tf_config(text):
  """({job: [address, ...]}, task type, task index) of a TF_CONFIG value, checked whole: a
  cluster of jobs, each a list of 'host:port' with a port in 1..65535, and a task it holds.

  Raises:
    DistributeError: the first thing that is not so, by name.
  """
  try:
    config = json.loads(text)
    cluster, task = config['cluster'], config['task']
    task_type, task_index = task['type'], task['index']
  except (ValueError, KeyError, TypeError) as e:
    raise DistributeError(f'{TF_CONFIG} is not valid ({type(e).__name__}: {e}): {EXPECTED}') from e
  if not isinstance(cluster, dict) or not cluster:
    raise DistributeError(f'{TF_CONFIG}: "cluster" is {json.dumps(cluster)}, not an object of '
                          f'jobs: {EXPECTED}')
  for job, addresses in cluster.items():
    if not isinstance(addresses, list) or not addresses:
      raise DistributeError(f'{TF_CONFIG}: job "{job}" is {json.dumps(addresses)}, not a list '
                            f'of "host:port": {EXPECTED}')
    for address in addresses:
      if address_port(address) is None:
        raise DistributeError(f'{TF_CONFIG}: address {json.dumps(address)} of job "{job}" is '
                              'not "host:port" with a port from 1 to 65535')
  if not isinstance(task_type, str):
    raise DistributeError(f'{TF_CONFIG}: the task\'s "type" is {json.dumps(task_type)}, not '
                          f'the name of a job: {EXPECTED}')
  if not isinstance(task_index, int) or isinstance(task_index, bool):
    raise DistributeError(f'{TF_CONFIG}: the task\'s "index" is {json.dumps(task_index)}, not '
                          f'a whole number: {EXPECTED}')
  if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
    raise DistributeError(f'{TF_CONFIG} names task {task_type} {task_index}, which its cluster '
                          f'{cluster} does not hold')
  return cluster, task_type, task_index


def address_port(address):
  """The port of a 'host:port' string, or None if it is not one."""
  if not isinstance(address, str):
    return None
  host, _, port = address.rpartition(':')
  if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
    return None
  return int(port)


def rendezvous(text, timeout, poll=0.25):
  """Waits, at most `timeout` seconds, until every chief and worker task of TF_CONFIG is up,
  before TensorFlow's own start (which waits an hour, holding the interpreter, so that no
  signal handler or timer of ours can run). Each task listens on its own port and tells
  every other task its name there; it goes on once it has reached them all and heard from
  them all (then so has every other, and their ports are free again for TensorFlow's
  servers). SIGTERM and SIGINT end the wait at once.

  Raises:
    DistributeError: the own port is taken, or the cluster did not come together in time.
    SystemExit: a signal arrived (its code 128 + the signal's number).
  """
  cluster, task_type, task_index = read_tf_config(text)
  if task_type not in COORDINATED:
    return
  me = f'{task_type} {task_index}'
  peers = {f'{job} {i}': address for job in COORDINATED
           for i, address in enumerate(cluster.get(job, ())) if f'{job} {i}' != me}
  reached, heard = set(), set()
  deadline = time.monotonic() + timeout
  with _listening(cluster[task_type][task_index], me, len(peers)) as server, _stop_signals():
    while reached != set(peers) or heard != set(peers):
      if time.monotonic() > deadline:
        missing = sorted(set(peers) - (reached & heard))
        raise DistributeError(f'the cluster of {TF_CONFIG} did not come together within '
                              f'{timeout} s (--cluster_timeout): no answer from '
                              f'{", ".join(f"{n} ({peers[n]})" for n in missing)}; start '
                              'every task it lists')
      for name in sorted(set(peers) - reached):
        if _tell(peers[name], me, poll):
          reached.add(name)
      name = _hear(server, poll)
      if name in peers:
        heard.add(name)


COORDINATED = ('chief', 'worker')  # The jobs MultiWorkerMirroredStrategy starts together.


@contextlib.contextmanager
def _listening(address, me, backlog):
  server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  # Inherited by the accepted connections: none of them, whatever its state, keeps
  # TensorFlow's server (which sets SO_REUSEADDR too) from binding this port next.
  server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  try:
    server.bind(('0.0.0.0', address_port(address)))
  except OSError as e:
    server.close()
    raise DistributeError(f'{TF_CONFIG}: the port of this task ({me}, {address}) cannot be '
                          f'opened ({e.strerror}): free it or give this task another '
                          'port') from e
  with server:
    server.listen(backlog + 1)
    yield server


def _tell(address, me, timeout):
  """Whether the task at address took our name (it may not be listening yet)."""
  host = address.rpartition(':')[0].strip('[]')
  try:
    with socket.create_connection((host, address_port(address)), timeout=timeout) as peer:
      peer.sendall(me.encode())  # Closed here first: TIME_WAIT stays on our ephemeral port.
    return True
  except OSError:
    return False


def _hear(server, timeout):
  """The name one task sent to our port within `timeout` seconds, or None."""
  server.settimeout(timeout)
  try:
    connection, _ = server.accept()
  except OSError:  # socket.timeout included.
    return None
  with connection:
    # Closed with a reset, not a FIN: no TIME_WAIT is left on this task's own port.
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    connection.settimeout(HEAR_TIMEOUT)  # The name is a few bytes, sent at once.
    data = b''
    try:
      while chunk := connection.recv(64):
        data += chunk
    except OSError:
      return None
  return data.decode(errors='replace')


HEAR_TIMEOUT = 5.0


class _Stopped(Exception):
  pass


@contextlib.contextmanager
def _stop_signals():
  """SIGTERM and SIGINT end the wait for the cluster with one line and 128 + their number
  (in the main thread; any other cannot hold signals)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  def stop(signum, _):
    raise _Stopped(signum)
  previous = {number: signal.signal(number, stop) for number in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield
  except _Stopped as e:
    print(f'signal {e.args[0]}: stopped while waiting for the cluster', file=sys.stderr,
          flush=True)
    raise SystemExit(128 + e.args[0]) from None
  finally:
    for number, handler in previous.items():
      signal.signal(number, handler)


def configure_devices(strategy, cpu_replicas=1):
  """Sets the devices up before TensorFlow creates them.

  Every GPU gets memory growth (the trainer and the watcher share one GPU without one taking
  it all). For `mirrored` without a GPU, the CPU is split into `cpu_replicas` logical devices.

  Raises:
    DistributeError: TensorFlow had already created its devices.
  """
  try:
    for gpu in tf.config.list_physical_devices('GPU'):
      tf.config.experimental.set_memory_growth(gpu, True)
    if strategy == 'mirrored' and not tf.config.list_physical_devices('GPU'):
      cpu = tf.config.list_physical_devices('CPU')[0]
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
  except RuntimeError as e:
    raise DistributeError(f'the devices were set up before --strategy={strategy} could split '
                          f'them ({e})') from e


def make_strategy(name, cpu_replicas=1, timeout=CLUSTER_TIMEOUT):
  """The tf.distribute strategy for --strategy (None for `default`); a multi-worker start
  waits at most `timeout` seconds for its cluster (rendezvous).

  Raises:
    DistributeError: an unknown name, or --cpu_replicas given where it has no meaning.
  """
  if name not in STRATEGIES:
    raise DistributeError(f'--strategy={name} is not one of {", ".join(STRATEGIES)}')
  if cpu_replicas != 1 and (name != 'mirrored' or tf.config.list_physical_devices('GPU')):
    raise DistributeError(f'--cpu_replicas={cpu_replicas} applies to --strategy=mirrored '
                          'without a GPU only')
  if name == 'default':
    return None
  if name == 'mirrored':
    gpus = tf.config.list_logical_devices('GPU')
    devices = [d.name for d in gpus or tf.config.list_logical_devices('CPU')]
    return tf.distribute.MirroredStrategy(devices)
  text = os.environ.get(TF_CONFIG)
  worker_from_tf_config(text)  # A clear error before TensorFlow's.
  if text:
    rendezvous(text, timeout)
  return tf.distribute.MultiWorkerMirroredStrategy()


def this_worker(strategy):
  """The Worker of this process under `strategy` (the only one unless multi_worker)."""
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return worker_from_tf_config(os.environ.get(TF_CONFIG))
  return Worker()


def replica_batch_size(batch_size, num_replicas):
  """Images per replica for a global batch; refuses a batch that does not split evenly.

  Raises:
    DistributeError: batch_size is not a multiple of num_replicas.
  """
  if batch_size % num_replicas:
    raise DistributeError(f'--batch_size={batch_size} does not split evenly over the '
                          f'{num_replicas} replicas: pass a multiple of {num_replicas}')
  return batch_size // num_replicas
