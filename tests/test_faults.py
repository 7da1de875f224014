"""Fault injection on real data: SIGKILL at random moments during training, pruning and
quantization, a disk that refuses the next checkpoint, and what each leaves behind.

Every killed run is resumed by re-running its command; the suite counts its kills (at least
10 across the three binaries) and asserts that every final checkpoint restores, that no
resume lost more than one checkpoint interval of the steps it had logged, and, the runs being
--deterministic, that the final weights of a killed-and-resumed run equal an uninterrupted
run's bit for bit. docs/reliability.md sums up the cases and what each gives.
"""

import hashlib
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import cifar10_run
import cifar10_trainer
from compress import int8
from fixtures import newest_checkpoint_values, wait_for

pytestmark = pytest.mark.subprocess  # Every test here starts the binaries.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # seconds any one process may take
RESUMED = re.compile(r'resumed from \S+ at step (\d+)')


def assert_bit_identical(got, expected):
  assert got.keys() == expected.keys()
  differ = [name for name in expected if not np.array_equal(got[name], expected[name])]
  assert not differ, f'differ from the uninterrupted run: {differ}'


def run_to_the_end(command):
  """Runs `command` to its end; returns its stdout (fails on a nonzero exit code)."""
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 0, result.stdout + result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  return result.stdout


def kill_at_random(command, log_path, started, rng, max_delay):
  """Starts `command` (its output to log_path), waits until started(log text) is true, sleeps
  a random moment of up to max_delay seconds, and kills it with SIGKILL.

  Returns:
    The log text written before the kill, or None when the process ended first (no kill).
  """
  with open(log_path, 'w') as log:
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  try:
    read = lambda: open(log_path).read()
    wait_for(lambda: started(read()), process, TIMEOUT, 'the work to start')
    time.sleep(rng.uniform(0.0, max_delay))
    if process.poll() is not None:
      return None
    process.send_signal(signal.SIGKILL)
    process.wait()
    return read()
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def kill_and_resume(command, train_dir, tmp_path, rng, kills, interval, max_delay):
  """Kills a training (or pruning) command `kills` times at random moments once it logs its
  first step, checking each time what a resume will find.

  The command must not finish within the kills (a far --max_steps): the caller then runs it
  to a step it has passed, so the uninterrupted reference need only go that far.

  Returns:
    (the step of the newest checkpoint, the last step logged before the last kill).
  """
  logged = 0
  for trial in range(kills):
    log = kill_at_random(command, tmp_path / f'kill{trial}.log',
                         lambda text: cifar10_trainer.STEP_LINE.search(text), rng,
                         max_delay)
    assert log is not None, 'the run ended before its kill: raise its --max_steps'
    logged = max(cifar10_trainer.logged_steps(log))
    newest = cifar10_run.newest_checkpoint(train_dir)  # None: killed before the first save.
    kept = cifar10_run.checkpoint_step(newest) if newest else 0
    # The newest checkpoint may be one whose save the kill cut short (the resume then falls
    # back to the one before): two intervals at most behind the last logged step.
    assert logged - kept <= 2 * interval, (logged, kept)
  return kept, logged


def assert_resumed_within_one_interval(out, logged, interval):
  resumed = [int(step) for step in RESUMED.findall(out)]
  assert len(resumed) == 1, out
  # At most one interval of logged steps lost: a kill inside a save loses that save only.
  assert logged - resumed[0] <= interval, (logged, resumed[0], out)


TRAIN_FLAGS = ['--deterministic', '--checkpoint_steps=5', '--log_frequency=1',
               '--keep_checkpoints=3']
FAR = 100_000  # a --max_steps that no run reaches before its kill


def train_command(data_dir, train_dir, max_steps, *extra):
  return [sys.executable, 'cifar10_train.py', f'--data_dir={data_dir}',
          f'--train_dir={train_dir}', f'--max_steps={max_steps}', *TRAIN_FLAGS, *extra]


def test_training_killed_4_times_resumes_to_the_uninterrupted_weights(tmp_path,
                                                                      real_data_dir):
  killed = str(tmp_path / 'killed')
  _, logged = kill_and_resume(train_command(real_data_dir, killed, FAR), killed, tmp_path,
                              random.Random(17), kills=4, interval=5, max_delay=1.5)
  steps = logged + 7  # Past every step of the killed processes.
  out = run_to_the_end(train_command(real_data_dir, killed, steps))
  assert_resumed_within_one_interval(out, logged, interval=5)
  assert cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(killed)) == steps
  reference = str(tmp_path / 'reference')
  run_to_the_end(train_command(real_data_dir, reference, steps))
  assert_bit_identical(newest_checkpoint_values(killed), newest_checkpoint_values(reference))


def test_pruning_killed_3_times_resumes_to_the_uninterrupted_weights_and_masks(tmp_path,
                                                                               real_data_dir):
  source = str(tmp_path / 'source')
  run_to_the_end(train_command(real_data_dir, source, 10))

  def prune_command(train_dir, finetune_steps):
    # The window is explicit, so that the last run's shorter --finetune_steps keeps it, and
    # the rate constant, so that it does not depend on the last step either. Checkpoint and
    # log intervals are the source's (TRAIN_FLAGS).
    return [sys.executable, 'compress/prune.py', f'--source_dir={source}',
            f'--train_dir={train_dir}', f'--finetune_steps={finetune_steps}',
            '--target_sparsity=0.75', '--begin_step=10', '--end_step=40', '--frequency=5',
            '--lr_schedule=constant', '--learning_rate=0.1', f'--data_dir={real_data_dir}',
            '--deterministic']

  killed = str(tmp_path / 'killed')
  _, logged = kill_and_resume(prune_command(killed, FAR), killed, tmp_path,
                              random.Random(23), kills=3, interval=5, max_delay=1.5)
  steps = max(logged + 7, 45)  # Past the kills and the pruning window.
  out = run_to_the_end(prune_command(killed, steps - 10))
  assert_resumed_within_one_interval(out, logged, interval=5)
  assert 'sparsity 75.00%' in out
  reference = str(tmp_path / 'reference')
  run_to_the_end(prune_command(reference, steps - 10))
  weights = newest_checkpoint_values(killed)
  assert any('masks' in name for name in weights)
  assert_bit_identical(weights, newest_checkpoint_values(reference))
  # The reports agree too: same step, sparsity and nonzeros of every layer, same file bytes.
  reports = [json.loads((tmp_path / run / 'prune_report.json').read_text())
             for run in ('killed', 'reference')]
  assert reports[0]['step'] == steps and reports[0] == reports[1]


def test_quantization_killed_3_times_leaves_no_half_file_and_reruns_whole(tmp_path,
                                                                         real_data_dir):
  run = str(tmp_path / 'run')
  run_to_the_end(train_command(real_data_dir, run, 5))
  out_dir = tmp_path / 'int8'
  command = [sys.executable, 'compress/quantize.py', f'--checkpoint_dir={run}',
             f'--out_dir={out_dir}', f'--data_dir={real_data_dir}', '--calibration_images=50',
             '--compare_images=20']
  rng = random.Random(29)
  for trial in range(3):  # From the moment its output folder exists, the work is under way.
    log = kill_at_random(command, tmp_path / f'kill{trial}.log', lambda text: out_dir.exists(),
                         rng, max_delay=5.0)
    assert log is not None, 'the quantization ended before its kill'
    model = out_dir / 'model_int8.npz'
    if model.exists():  # Written whole, or not at all.
      int8.Int8Model.load(model)
  out = run_to_the_end(command)
  assert 'same predictions: True' in out
  int8.Int8Model.load(out_dir / 'model_int8.npz')
  assert json.loads((out_dir / 'quant_report.json').read_text())['num_examples'] == 10_000


def test_a_disk_that_refuses_the_next_checkpoint_ends_in_one_error_line(tmp_path,
                                                                        real_data_dir):
  """A real write error from the kernel: the process may not grow a file past 1 MB (the
  checkpoint's data file is ~8.5 MB), as on a full disk or an exhausted quota."""
  train_dir = str(tmp_path / 'run')
  run_to_the_end(train_command(real_data_dir, train_dir, 10))

  def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

  result = subprocess.run(train_command(real_data_dir, train_dir, 20), cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=limit_file_size)
  assert result.returncode == 1, result.stdout + result.stderr
  assert 'Traceback' not in result.stderr, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: could not save the checkpoint of step 15'), result.stderr
  assert 'ckpt-10' in last
  assert cifar10_run.checkpoint_paths(train_dir)[0].endswith('ckpt-10')
  assert not [name for name in os.listdir(train_dir) if name.endswith('_temp')]
  out = run_to_the_end(train_command(real_data_dir, train_dir, 20))  # Room again: it goes on.
  assert 'at step 10' in out
  assert cifar10_run.checkpoint_step(cifar10_run.newest_checkpoint(train_dir)) == 20


# The three ways an earlier version lost data (docs/reliability.md section 7): each is run
# through the real binaries, and every file of what must survive is compared by its digest.

def tree_digests(folder):
  """{path under folder: sha256 of its bytes} of every file under folder (links not followed)."""
  digests = {}
  for root, _, names in os.walk(folder):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        digests[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return digests


def refused(command, match):
  """Runs command, which must end in exit 1 with one error line matching `match` last."""
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
  assert re.search(match, result.stderr.strip().splitlines()[-1]), result.stderr


@pytest.fixture(scope='module')
def folder_of_runs(tmp_path_factory, real_data_dir):
  """A folder of runs holding one trained run, 'run' (5 steps)."""
  folder = tmp_path_factory.mktemp('runs')
  run_to_the_end(train_command(real_data_dir, str(folder / 'run'), 5))
  return folder


def export_command(run, export_dir, *extra):
  return [sys.executable, 'cifar10_export.py', f'--checkpoint_dir={run}',
          f'--export_dir={export_dir}', '--verify_images=0', *extra]


def test_an_export_over_its_run_or_the_folder_of_runs_deletes_nothing(folder_of_runs):
  run = folder_of_runs / 'run'
  (folder_of_runs / 'export.json').write_text('{}')  # Even with an export's report on top.
  before = tree_digests(folder_of_runs)
  for target in (run, folder_of_runs):
    refused(export_command(run, target, '--overwrite'), 'is not an earlier export')
  assert tree_digests(folder_of_runs) == before
  (folder_of_runs / 'export.json').unlink()


def test_a_lock_that_links_to_another_file_is_refused_and_nothing_changes(folder_of_runs,
                                                                         tmp_path,
                                                                         real_data_dir):
  run = folder_of_runs / 'run'
  victim = tmp_path / 'precious.txt'
  victim.write_text('keep me\n')
  lock = run / cifar10_run.LOCK_FILE
  lock.unlink(missing_ok=True)
  try:
    for link, match in ((lock.symlink_to, 'is a symbolic link'),
                        (lock.hardlink_to, 'not a lock file of its own')):
      link(victim)
      before = tree_digests(run), tree_digests(tmp_path)
      refused(train_command(real_data_dir, str(run), 10), match)
      assert (tree_digests(run), tree_digests(tmp_path)) == before
      lock.unlink()
  finally:
    lock.unlink(missing_ok=True)


def test_two_exports_into_one_new_folder_leave_one_whole_export(folder_of_runs, tmp_path):
  run, out = folder_of_runs / 'run', tmp_path / 'out'
  before = tree_digests(run)
  logs = [tmp_path / f'export{i}.log' for i in range(2)]
  processes = []
  for log in logs:
    with open(log, 'w') as f:
      processes.append(subprocess.Popen(export_command(run, out), cwd=ROOT, stdout=f,
                                        stderr=subprocess.STDOUT))
    time.sleep(1)  # A second apart, neither with --overwrite.
  codes = [p.wait(timeout=TIMEOUT) for p in processes]
  texts = [log.read_text() for log in logs]
  assert sorted(codes) == [0, 1], texts
  loser = texts[codes.index(1)].strip().splitlines()[-1]
  assert re.search('in use by another process|exists: pass --overwrite|appeared while', loser)
  report = json.loads((out / 'export.json').read_text())  # The winner's, whole.
  after = tree_digests(out)
  assert report['step'] == 5 and 'model_float.tflite' in after
  refused(export_command(run, out), 'exists: pass --overwrite')  # And later, still refused.
  assert tree_digests(out) == after and tree_digests(run) == before
  assert not [name for name in os.listdir(tmp_path) if '.partial-' in name or 'lock' in name]


def children(pid):
  """PIDs of the live children of process pid (Linux's /proc)."""
  try:
    with open(f'/proc/{pid}/task/{pid}/children') as f:
      return [int(child) for child in f.read().split()]
  except OSError:
    return []


def alive(pid):
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().split(') ')[-1][0] != 'Z'
  except OSError:
    return False


def test_an_export_killed_while_it_checks_leaves_no_process_and_its_leftovers_go(folder_of_runs,
                                                                               tmp_path,
                                                                               real_data_dir):
  """SIGKILL while the SavedModel is checked in its own process: that process ends with the
  export (it asked for a signal at its parent's death), and the next export into the same
  folder removes the half-written out.partial-* and finishes."""
  run, out = folder_of_runs / 'run', tmp_path / 'out'
  command = export_command(run, out, f'--data_dir={real_data_dir}', '--verify_images=50')
  with open(tmp_path / 'killed.log', 'w') as log:
    export = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  try:
    wait_for(lambda: children(export.pid), export, TIMEOUT, 'the checking process')
    checker = children(export.pid)[0]
  finally:
    export.kill()
    export.wait()
  deadline = time.monotonic() + 10
  while alive(checker) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert not alive(checker), f'the checking process {checker} outlived the killed export'
  assert [name for name in os.listdir(tmp_path) if name.startswith('out.partial-')]
  assert not out.exists()
  run_to_the_end(command)
  assert sorted(os.listdir(tmp_path)) == ['killed.log', 'out']
  assert json.loads((out / 'export.json').read_text())['step'] == 5
