"""tf.distribute on CPU: a step split over replicas equals the one-device step, checkpoints
move between replica counts, and two worker processes on 127.0.0.1 train, stop and resume
together (ports chosen free at test time, every process bounded in time)."""

import json
import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest

import cifar10_distribute
import cifar10_run
import cifar10_trainer
from fixtures import newest_checkpoint_values, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300  # seconds any one process may take


# --------------------------------------------------------------------------- TF_CONFIG


def test_tf_config_names_the_chief_and_counts_the_workers():
  cluster = {'worker': ['a:1', 'b:2', 'c:3']}
  first = cifar10_distribute.worker_from_tf_config(
      json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': 0}}))
  assert first == cifar10_distribute.Worker('worker', 0, 3, True)
  third = cifar10_distribute.worker_from_tf_config(
      json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': 2}}))
  assert not third.is_chief and third.num_workers == 3
  with_chief = dict(cluster, chief=['d:4'])
  worker0 = cifar10_distribute.worker_from_tf_config(
      json.dumps({'cluster': with_chief, 'task': {'type': 'worker', 'index': 0}}))
  assert not worker0.is_chief and worker0.num_workers == 4  # The `chief` task is.
  assert cifar10_distribute.worker_from_tf_config('') == cifar10_distribute.Worker()


@pytest.mark.parametrize('text,message', [
    ('{"cluster": ', 'TF_CONFIG is not valid'),
    ('{"task": {"type": "worker", "index": 0}}', 'TF_CONFIG is not valid'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 1}}',
     'names task worker 1'),
    ('{"cluster": ["a:1"], "task": {"type": "worker", "index": 0}}',
     '"cluster" is \\["a:1"\\], not an object of jobs'),
    ('{"cluster": {"worker": "a:1"}, "task": {"type": "worker", "index": 0}}',
     'job "worker" is "a:1", not a list'),
    ('{"cluster": {"worker": ["a:1", "b"]}, "task": {"type": "worker", "index": 0}}',
     'address "b" of job "worker" is not "host:port"'),
    ('{"cluster": {"worker": ["a:70000"]}, "task": {"type": "worker", "index": 0}}',
     'address "a:70000"'),
    ('{"cluster": {"worker": [1]}, "task": {"type": "worker", "index": 0}}', 'address 1 '),
    ('{"cluster": {"worker": ["a:\u00b2"]}, "task": {"type": "worker", "index": 0}}',
     'address "a:'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": ["worker"], "index": 0}}',
     '"type" is \\["worker"\\], not the name of a job'),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": "0"}}',
     '"index" is "0", not a whole number'),
])
def test_a_bad_tf_config_is_one_clear_error(text, message):
  with pytest.raises(cifar10_distribute.DistributeError, match=message):
    cifar10_distribute.worker_from_tf_config(text)


def two_worker_config(index=0):
  """TF_CONFIG of a two-worker cluster on free ports of 127.0.0.1, as task `index`."""
  cluster = {'worker': [f'127.0.0.1:{free_port()}' for _ in range(2)]}
  return json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': index}})


def test_the_rendezvous_of_two_tasks_ends_once_each_heard_the_other():
  config = json.loads(two_worker_config())
  texts = [json.dumps(dict(config, task={'type': 'worker', 'index': i})) for i in (0, 1)]
  errors = []
  def meet(text):
    try:
      cifar10_distribute.rendezvous(text, timeout=30)
    except cifar10_distribute.DistributeError as e:
      errors.append(e)
  other = threading.Thread(target=meet, args=(texts[1],))
  other.start()
  meet(texts[0])
  other.join(timeout=30)
  assert not other.is_alive() and not errors
  for address in config['cluster']['worker']:  # Both ports are free again for TensorFlow.
    with socket.socket() as s:
      s.bind(('0.0.0.0', int(address.rsplit(':', 1)[1])))


def test_a_missing_task_ends_the_rendezvous_at_its_timeout_naming_the_task():
  text = two_worker_config()
  missing = json.loads(text)['cluster']['worker'][1]
  with pytest.raises(cifar10_distribute.DistributeError,
                     match=f'within 1 s .--cluster_timeout.: no answer from worker 1 .{missing}.'):
    cifar10_distribute.rendezvous(text, timeout=1)


def test_a_taken_port_is_refused_by_name():
  text = two_worker_config()
  own = json.loads(text)['cluster']['worker'][0]
  with socket.socket() as holder:
    holder.bind(('0.0.0.0', int(own.rsplit(':', 1)[1])))
    holder.listen()
    with pytest.raises(cifar10_distribute.DistributeError,
                       match=f'the port of this task .worker 0, {own}. cannot be opened'):
      cifar10_distribute.rendezvous(text, timeout=5)


def test_a_batch_that_does_not_split_over_the_replicas_names_both_numbers():
  assert cifar10_distribute.replica_batch_size(128, 2) == 64
  with pytest.raises(cifar10_distribute.DistributeError,
                     match='--batch_size=128 does not split evenly over the 3 replicas'):
    cifar10_distribute.replica_batch_size(128, 3)


# --------------------------------------------------------------------------- binaries


def weights(train_dir):
  """The newest checkpoint's numbers (newest_checkpoint_values without the object graph)."""
  return {name: value for name, value in newest_checkpoint_values(train_dir).items()
          if '_CHECKPOINTABLE_OBJECT_GRAPH' not in name}


def max_difference(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[name].astype(np.float64) - b[name]))) for name in a)


def train(data_dir, train_dir, max_steps, *flags, env=None):
  result = subprocess.run(
      [sys.executable, 'cifar10_train.py', f'--data_dir={data_dir}', f'--train_dir={train_dir}',
       f'--max_steps={max_steps}', *flags], cwd=ROOT, capture_output=True, text=True,
      timeout=TIMEOUT, env=env)
  assert result.returncode == 0, result.stdout + result.stderr
  return result.stdout


@pytest.mark.subprocess
def test_a_2_replica_step_equals_the_1_replica_step_and_runs_move_between_them(tmp_path,
                                                                              real_data_dir):
  one, two = tmp_path / 'one', tmp_path / 'two'
  mirrored = ('--strategy=mirrored', '--cpu_replicas=2')
  train(real_data_dir, one, 1)
  train(real_data_dir, two, 1, *mirrored)
  # The same global batch of 128, distorted alike, split 64 + 64: the weights and the EMA
  # shadows after one step equal within float32 rounding of the summed gradients.
  assert max_difference(weights(one), weights(two)) < 1e-5
  # Each run resumes with the other replica count: step 2 on one device for the 2-replica
  # run, on two replicas for the other. Both read the other's checkpoints as they are.
  assert 'at step 1' in train(real_data_dir, one, 2, *mirrored)
  assert 'at step 1' in train(real_data_dir, two, 2)
  # The first step's rounding (~1e-8) grows through the second step's gradients: 1.5e-5
  # measured.
  assert max_difference(weights(one), weights(two)) < 1e-4
  assert cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(str(one))) == 2


@pytest.mark.subprocess
def test_a_distilled_step_on_2_replicas_equals_the_1_replica_step(tmp_path, real_data_dir):
  teacher, plain, one, two = (tmp_path / name for name in ('teacher', 'plain', 'one', 'two'))
  train(real_data_dir, teacher, 1)
  train(real_data_dir, plain, 1, '--seed=1')
  distilled = (f'--teacher_dir={teacher}', '--seed=1')
  train(real_data_dir, one, 1, *distilled)
  train(real_data_dir, two, 1, *distilled, '--strategy=mirrored', '--cpu_replicas=2')
  # Each replica's teacher sees its share of the batch: the same update as on one device.
  assert max_difference(weights(one), weights(two)) < 1e-5
  assert max_difference(weights(one), weights(plain)) > 1e-4  # the teacher changed the step


@pytest.mark.subprocess
def test_a_batch_that_does_not_split_is_refused_in_one_line(tmp_path, real_data_dir):
  result = subprocess.run(
      [sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
       f'--train_dir={tmp_path}', '--strategy=mirrored', '--cpu_replicas=3', '--max_steps=1'],
      cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --batch_size=128 does not split evenly over the 3 replicas: pass a multiple of 3')
  assert 'Traceback' not in result.stderr


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_workers(data_dir, train_dir, tmp_path, max_steps, *flags):
  """Two worker processes of one multi-worker run on 127.0.0.1; their logs in tmp_path."""
  cluster = {'worker': [f'127.0.0.1:{free_port()}' for _ in range(2)]}
  scratch = tmp_path / 'worker_tmp'
  scratch.mkdir(exist_ok=True)
  workers = []
  for index in range(2):
    env = dict(os.environ, TMPDIR=str(scratch), TF_CONFIG=json.dumps(
        {'cluster': cluster, 'task': {'type': 'worker', 'index': index}}))
    log = open(tmp_path / f'worker{index}.log', 'w')
    workers.append(subprocess.Popen(
        [sys.executable, 'cifar10_train.py', f'--data_dir={data_dir}',
         f'--train_dir={train_dir}', f'--max_steps={max_steps}', '--strategy=multi_worker',
         '--log_frequency=1', *flags], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    log.close()
  return workers


def finish(workers, tmp_path):
  """Waits for both workers; returns their logs."""
  try:
    for worker in workers:
      worker.wait(timeout=TIMEOUT)
  finally:
    for worker in workers:
      if worker.poll() is None:
        worker.kill()
        worker.wait()
  return [(tmp_path / f'worker{i}.log').read_text() for i in range(2)]


def start_alone(data_dir, train_dir, *flags):
  """Worker 0 of a two-worker cluster whose worker 1 never starts; (process, TF_CONFIG)."""
  text = two_worker_config()
  process = subprocess.Popen(
      [sys.executable, 'cifar10_train.py', f'--data_dir={data_dir}', f'--train_dir={train_dir}',
       '--max_steps=5', '--strategy=multi_worker', *flags], cwd=ROOT,
      env=dict(os.environ, TF_CONFIG=text), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)
  return process, text


@pytest.mark.subprocess
def test_a_worker_whose_peer_never_starts_stops_in_one_line_at_its_timeout(tmp_path,
                                                                          real_data_dir):
  process, text = start_alone(real_data_dir, tmp_path / 'run', '--cluster_timeout=3')
  out, err = process.communicate(timeout=TIMEOUT)  # TimeoutExpired: the hang is back.
  missing = json.loads(text)['cluster']['worker'][1]
  assert process.returncode == 1 and 'Traceback' not in err, err
  assert err.strip().splitlines()[-1] == (
      'error: the cluster of TF_CONFIG did not come together within 3 s (--cluster_timeout): '
      f'no answer from worker 1 ({missing}); start every task it lists')
  assert not (tmp_path / 'run').exists()  # Nothing written.


@pytest.mark.subprocess
def test_a_worker_whose_port_is_taken_stops_in_one_line_naming_it(tmp_path, real_data_dir):
  text = two_worker_config()
  own = json.loads(text)['cluster']['worker'][0]
  with socket.socket() as holder:
    holder.bind(('0.0.0.0', int(own.rsplit(':', 1)[1])))
    holder.listen()
    process = subprocess.run(
        [sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
         f'--train_dir={tmp_path / "run"}', '--max_steps=5', '--strategy=multi_worker'],
        cwd=ROOT, env=dict(os.environ, TF_CONFIG=text), capture_output=True, text=True,
        timeout=TIMEOUT)
  assert process.returncode == 1 and 'Traceback' not in process.stderr, process.stderr
  assert process.stderr.strip().splitlines()[-1].startswith(
      f'error: TF_CONFIG: the port of this task (worker 0, {own}) cannot be opened')
  assert not (tmp_path / 'run').exists()


@pytest.mark.subprocess
def test_sigterm_ends_a_worker_waiting_for_its_cluster_within_5_s(tmp_path, real_data_dir):
  process, text = start_alone(real_data_dir, tmp_path / 'run')  # Default timeout: minutes.
  own = json.loads(text)['cluster']['worker'][0].rsplit(':', 1)[1]
  def listening():  # Its rendezvous port answers (an empty name, which it ignores).
    try:
      socket.create_connection(('127.0.0.1', int(own)), timeout=1).close()
      return True
    except OSError:
      return False
  try:
    wait_for(listening, process, TIMEOUT, 'the wait for the cluster')
    process.send_signal(15)
    out, err = process.communicate(timeout=5)
  finally:
    if process.poll() is None:
      process.kill()
      process.communicate()
  assert process.returncode == 143, err
  assert err.strip().splitlines()[-1] == 'signal 15: stopped while waiting for the cluster'


@pytest.mark.subprocess
def test_two_workers_train_together_and_the_run_resumes_on_one_device(tmp_path, real_data_dir):
  run = tmp_path / 'run'
  workers = start_workers(real_data_dir, run, tmp_path, 6, '--checkpoint_steps=3')
  logs = finish(workers, tmp_path)
  assert [w.returncode for w in workers] == [0, 0], logs
  # Both took the same steps with the same global loss.
  losses = [[line.group(3) for line in cifar10_trainer.STEP_LINE.finditer(log)] for log in logs]
  assert len(losses[0]) == 6 and losses[0] == losses[1]
  # Only the chief wrote into the run folder; the other's scratch folders are gone.
  assert f'saved {run}/ckpt-6' in logs[0] and f'saved {run}' not in logs[1]
  assert sorted(p.name for p in run.glob('ckpt-*.index')) == ['ckpt-3.index', 'ckpt-6.index']
  assert cifar10_run.read_config(str(run)).strategy == 'multi_worker'
  assert not list((tmp_path / 'worker_tmp').iterdir())
  out = train(real_data_dir, run, 8)  # One device, the same checkpoints.
  assert f'resumed from {run}/ckpt-6 at step 6' in out


@pytest.mark.subprocess
def test_a_killed_chief_stops_the_other_worker_in_one_line_and_both_resume(tmp_path,
                                                                          real_data_dir):
  """The chief, worker 0, killed: it holds the cluster's coordination service as well (a
  killed worker 1 stopped the chief the same way, 1.1 s after, by hand)."""
  victim = 0
  run = tmp_path / 'run'
  flags = ('--checkpoint_steps=5',)
  workers = start_workers(real_data_dir, run, tmp_path, 10_000, *flags)
  try:
    wait_for(lambda: cifar10_run.newest_checkpoint(str(run)) is not None, workers[0], TIMEOUT,
             'the first checkpoint')
    workers[victim].kill()  # SIGKILL: the other learns it from the cluster's heartbeats.
    survivor = workers[1 - victim]
    survivor.wait(timeout=120)  # No hang: TimeoutExpired fails the test after 120 s.
  finally:
    logs = finish(workers, tmp_path)
  assert survivor.returncode == 1, logs
  last = logs[1 - victim].strip().splitlines()[-1]
  assert last.startswith('error: another worker of the cluster stopped'), logs[1 - victim]
  assert 'Traceback' not in logs[1 - victim]
  kept = cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(str(run)))
  again = start_workers(real_data_dir, run, tmp_path, kept + 3, *flags)
  logs = finish(again, tmp_path)
  assert [w.returncode for w in again] == [0, 0], logs
  assert f'at step {kept}' in logs[0] and f'at step {kept}' in logs[1]
  assert cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(str(run))) == kept + 3


@pytest.mark.subprocess
def test_a_bad_tf_config_is_one_error_line_from_the_binary(tmp_path, real_data_dir):
  env = dict(os.environ, TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:1"]}}')
  result = subprocess.run(
      [sys.executable, 'cifar10_train.py', f'--data_dir={real_data_dir}',
       f'--train_dir={tmp_path}', '--strategy=multi_worker'], cwd=ROOT, capture_output=True,
      text=True, timeout=TIMEOUT, env=env)
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith('error: TF_CONFIG is not valid')


@pytest.mark.subprocess
def test_a_batchnorm_model_trains_and_prunes_on_two_replicas_and_resumes_on_one(
    tmp_path, real_data_dir):
  source, pruned, recipe = tmp_path / 'source', tmp_path / 'pruned', ('--model=budget0',
                                                                       '--recipe=fast32')
  train(real_data_dir, source, 2, *recipe, '--strategy=mirrored', '--cpu_replicas=2')
  values = weights(source)
  moving = [name for name in values if '/moving_mean/' in name or '/moving_variance/' in name]
  velocities = [name for name in values if name.startswith('velocities/')]
  # budget0: 6 BatchNorms; 20 trainable variables (6 conv kernels, 6 gammas and 6 betas, the
  # logits' kernel and bias), each with its velocity.
  assert len(moving) == 2 * 6 and len(velocities) == 20
  assert all(np.isfinite(value).all() for value in values.values())
  # Each replica moved its statistics towards its own half-batch's; the saved value is their
  # mean, away from the initial 0 (means) and 1 (variances).
  assert all(np.abs(values[name] - (1.0 if 'variance' in name else 0.0)).max() > 1e-3
             for name in moving)
  assert 'at step 2' in train(real_data_dir, source, 3, *recipe)  # On one device.
  result = subprocess.run(
      [sys.executable, 'compress/prune.py', f'--source_dir={source}', f'--train_dir={pruned}',
       f'--data_dir={real_data_dir}', '--finetune_steps=6', '--target_sparsity=0.5',
       '--frequency=1', '--strategy=mirrored', '--cpu_replicas=2'], cwd=ROOT,
      capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stdout + result.stderr
  report = json.loads((pruned / 'prune_report.json').read_text())
  assert report['step'] == 9 and report['sparsity'] == pytest.approx(0.5, abs=1e-3)
