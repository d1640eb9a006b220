"""Multi-process training for real: processes on 127.0.0.1 joined by jax.distributed, CPU
collectives over gloo, started by launch/local.sh exactly as a user would."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two epochs of tiny's 320 images, so the resumed run and the one-process run cross a reshuffle;
# the four saves after the checkpoint the first run is killed after (4) keep it running until
# the kill comes.
STEPS = 20


def _env(**extra):
  return subprocess_env(PYTHON=sys.executable, **extra)  # each process simulates its devices


def _flags(data_dir, workdir):
  return ['--config=configs/tiny.py', '--config.parallelism=towers_data',
          '--config.input_shards=2',  # the same batches for 1 process x 4 and 2 processes x 2
          f'--config.data_dir={data_dir}', f'--config.num_train_steps={STEPS}',
          '--config.checkpoint_every_steps=4', f'--config.eval_every_steps={STEPS}',
          '--config.log_every_steps=4', '--config.num_eval_examples=48', f'--workdir={workdir}']


def _params(workdir, step):
  """The saved parameters of `step` as numpy arrays (read back independently of the code)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'state')  # see checkpointing.py
  tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return ocp.PyTreeCheckpointer().restore(path, restore_args=args)['params']


def _pids_of(needle):
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmdline = f.read().replace(b'\0', b' ').decode()
    except OSError:
      continue
    if 'alexnet_jax.main' in cmdline and all(n in cmdline for n in needle):
      pids.append(int(pid))
  return pids


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def test_two_processes_survive_a_death_resume_and_match_one_process(tmp_path, data_dir):
  workdir = str(tmp_path / 'two')
  launch = ['bash', 'launch/local.sh', '2', '2', *_flags(data_dir, workdir),
            '--heartbeat_timeout_s=10']
  first = subprocess.Popen(launch, cwd=ROOT, env=_env(GRACE_S='120'), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.time() + 400
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '4')):
      assert first.poll() is None, first.communicate()[1][-3000:]
      assert time.time() < deadline, 'no checkpoint after 400 s'
      time.sleep(0.1)
    # Process 1 dies mid-run. Process 0 must notice and stop by itself, saying what happened.
    victims = _pids_of([f'--workdir={workdir}', '--process_id=1'])
    assert len(victims) == 1
    killed_at = time.time()
    os.kill(victims[0], signal.SIGKILL)
    _, stderr = first.communicate(timeout=120)
  finally:
    if first.poll() is None:
      os.killpg(first.pid, signal.SIGKILL)
  assert first.returncode != 0
  assert time.time() - killed_at < 60
  assert ('another process of this run failed' in stderr or 'heartbeat' in stderr), stderr[-3000:]
  assert 'local.sh: process 1 exited with status 137' in stderr  # SIGKILL, reported
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  assert saved and saved[-1] < STEPS

  # Re-running the same command on every process resumes and finishes.
  second = subprocess.run(launch, cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=600)
  assert second.returncode == 0, second.stderr[-3000:]
  assert f'from step {saved[-1]}' in second.stderr

  # One process driving all 4 devices, same config: the same parameters.
  single_dir = str(tmp_path / 'one')
  single = subprocess.run([sys.executable, '-m', 'alexnet_jax.main', *_flags(data_dir, single_dir)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  two, one = _params(workdir, STEPS), _params(single_dir, STEPS)
  for layer in one:
    for what in one[layer]:
      a, b = two[layer][what], one[layer][what]
      assert a.shape == b.shape
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * np.abs(b).max(),
                                 err_msg=f'{layer}/{what}')


def test_two_processes_feeding_device_augmentation_train_like_one_process(tmp_path, data_dir):
  """augment_on='device' across processes: each feeds its uint8 rows and draws, the mean image
  and std are put on every process's devices (replicated over both), and the parameters equal
  one process's feeding all the rows (the paper's preprocessing, 8 steps).

  The reference augments on the device too, so the two runs differ only in who feeds which rows:
  that the device's images are the host's is test_augment.py's, batch by batch and through
  train_and_evaluate. A host reference gives images that differ from the device's in the last
  bit (TensorFlow's arithmetic against XLA's), and so does moving every pixel of the host's
  images by one ulp: either moves conv1's kernel after one step of this config by more than
  1e-5 of its largest value, a difference in how a pixel rounds, not in what was fed."""
  steps = 8
  paper = ['--config.mean_subtraction=image', '--config.pca_lighting_std=0.1',
           '--config.stats_num_images=100', f'--config.num_train_steps={steps}',
           f'--config.eval_every_steps={steps}', f'--config.checkpoint_every_steps={steps}',
           '--config.augment_on=device']
  two_dir, one_dir = str(tmp_path / 'two'), str(tmp_path / 'one')
  two = subprocess.run(['bash', 'launch/local.sh', '2', '2', *_flags(data_dir, two_dir), *paper],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
  assert two.returncode == 0, two.stderr[-3000:]
  assert 'augmentation on the device' in two.stderr
  one = subprocess.run([sys.executable, '-m', 'alexnet_jax.main', *_flags(data_dir, one_dir),
                        *paper], cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]
  assert 'augmentation on the device' in one.stderr
  a, b = _params(two_dir, steps), _params(one_dir, steps)
  for layer in b:
    for what in b[layer]:
      np.testing.assert_allclose(a[layer][what], b[layer][what], rtol=1e-6,
                                 atol=1e-6 * np.abs(b[layer][what]).max(),
                                 err_msg=f'{layer}/{what}')


def test_a_process_that_never_arrives_stops_the_others(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  start = time.time()
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/tiny.py',
       f'--workdir={tmp_path}', f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
       '--process_id=0', '--init_timeout_s=5'],
      cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert time.time() - start < 90
  assert 'a process did not start' in proc.stderr and 'DEADLINE_EXCEEDED' in proc.stderr
  assert not os.path.exists(os.path.join(tmp_path, 'checkpoints'))


def test_local_sh_explains_its_arguments():
  proc = subprocess.run(['bash', 'launch/local.sh', '2'], cwd=ROOT, capture_output=True,
                        text=True, timeout=30)
  assert proc.returncode == 2 and 'usage: bash launch/local.sh NUM_PROCESSES' in proc.stderr
