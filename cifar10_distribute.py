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

import dataclasses
import json
import os

import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker')
STRATEGY_HELP = ('default: one device; mirrored: every GPU of this machine (or --cpu_replicas '
                 'CPU devices); multi_worker: the machines of TF_CONFIG (docs/distributed.md).')
CPU_REPLICAS_HELP = 'Logical CPU devices of --strategy=mirrored without a GPU.'
MAX_CPU_REPLICAS = 64
TF_CONFIG = 'TF_CONFIG'


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
  try:
    config = json.loads(text)
    cluster, task = config['cluster'], config['task']
    task_type, task_index = task['type'], int(task['index'])
    workers = {kind: list(addresses) for kind, addresses in cluster.items()}
  except (ValueError, KeyError, TypeError) as e:
    raise DistributeError(f'{TF_CONFIG} is not valid ({type(e).__name__}: {e}): expected '
                          '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": '
                          '"worker", "index": 0}} (docs/distributed.md)') from e
  if task_type not in workers or not 0 <= task_index < len(workers[task_type]):
    raise DistributeError(f'{TF_CONFIG} names task {task_type} {task_index}, which its cluster '
                          f'{workers} does not hold')
  num_workers = len(workers.get('worker', ())) + len(workers.get('chief', ()))
  is_chief = (task_type == 'chief' or
              (task_type == 'worker' and task_index == 0 and 'chief' not in workers))
  return Worker(task_type, task_index, num_workers, is_chief)


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


def make_strategy(name, cpu_replicas=1):
  """The tf.distribute strategy for --strategy (None for `default`).

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
  worker_from_tf_config(os.environ.get(TF_CONFIG))  # A clear error before TensorFlow's.
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
