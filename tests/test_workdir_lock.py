"""One run per workdir, for real: a second `main` (one process, or a two-process run) on a
workdir a live run holds is refused with exit 2 before it writes anything; a run killed with
SIGKILL leaves nothing that blocks the same command from resuming (runtime/workdir_lock.py).

The first run is stopped (SIGSTOP) while the second is tried, so its files cannot change under
the comparison, and every wait is for a file or a line, never for a time."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax.runtime import workdir_lock
from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = ('--config.num_train_steps=30', '--config.checkpoint_every_steps=5',
           '--config.log_every_steps=5', '--config.eval_every_steps=30',
           '--config.num_eval_examples=48')


def _snapshot(workdir) -> dict:
  """Every file and directory below `workdir`: (size, mtime) of files, None of directories."""
  seen = {}
  for top, dirs, files in os.walk(workdir):
    for name in dirs:
      seen[os.path.relpath(os.path.join(top, name), workdir)] = None
    for name in files:
      stat = os.stat(os.path.join(top, name))
      seen[os.path.relpath(os.path.join(top, name), workdir)] = (stat.st_size, stat.st_mtime_ns)
  return seen


def _wait_for(condition, proc, what, timeout=300):
  deadline = time.monotonic() + timeout
  while not condition():
    assert proc.poll() is None, f'the run ended (rc {proc.returncode}) before {what}'
    assert time.monotonic() < deadline, f'no {what} after {timeout} s'
    time.sleep(0.05)


def _holder(workdir) -> dict:
  return workdir_lock.read_holder(os.path.join(workdir, workdir_lock.LOCK_NAME))


def _error_lines(stderr):
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def test_a_second_main_is_refused_and_a_killed_one_blocks_nothing(tmp_path, tiny_data_dir,
                                                                  run_main):
  workdir = str(tmp_path / 'run')
  first = run_main(workdir, *COMMAND, data_dir=tiny_data_dir, log=str(tmp_path / 'first.log'))
  try:
    # Its lock (taken before anything is written) and its first checkpoint.
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '5')), first,
              'checkpoint 5')
    assert _holder(workdir)['pid'] == str(first.pid)
    first.send_signal(signal.SIGSTOP)  # alive and holding, its files still
    before = _snapshot(workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      lines = len(f.readlines())

    second = run_main(workdir, *COMMAND, data_dir=tiny_data_dir, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = _error_lines(second.stderr)
    assert len(errors) == 1, second.stderr[-3000:]
    assert f'in use by process {first.pid} on host {socket.gethostname()}' in errors[0]
    assert 'wait for it to finish, or stop that process' in errors[0]
    assert 'compiled' not in second.stderr and 'Training ' not in second.stderr
    assert _snapshot(workdir) == before  # no config.json, metrics, events or checkpoint
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      assert len(f.readlines()) == lines

    # SIGKILL: the lock dies with the process; the file that names it stays and blocks nothing.
    first.kill()
    first.wait(timeout=60)
  finally:
    if first.poll() is None:
      first.kill()
      first.wait()
  assert first.returncode == -signal.SIGKILL
  assert _holder(workdir)['pid'] == str(first.pid)
  saved = sorted(int(s) for s in os.listdir(os.path.join(workdir, 'checkpoints')) if s.isdigit())
  third = run_main(workdir, *COMMAND, data_dir=tiny_data_dir)
  assert third.returncode == 0, third.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step {saved[-1]}' in third.stderr
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '30'))
  assert _holder(workdir)['pid'] != str(first.pid)  # the last run wrote its own name


def test_nested_and_repeated_holds_in_one_process(tmp_path):
  """ablate holds its directory and trains runs below it, each holding its own: different
  files. The same path held twice by one process is held once more, not refused."""
  outer = workdir_lock.acquire(str(tmp_path))
  inner = workdir_lock.acquire(str(tmp_path / 'baseline'))
  again = workdir_lock.acquire(str(tmp_path))
  probe = ('import sys; from alexnet_jax.runtime import workdir_lock\n'
           'try:\n  workdir_lock.acquire(sys.argv[1])\nexcept workdir_lock.WorkdirBusy as e:\n'
           '  print(e); sys.exit(2)\nprint("held")')
  try_other = lambda path: subprocess.run([sys.executable, '-c', probe, path], cwd=ROOT,
                                          capture_output=True, text=True, timeout=60)
  again.release()
  refused = try_other(str(tmp_path))
  assert refused.returncode == 2 and f'process {os.getpid()}' in refused.stdout
  inner.release()
  assert try_other(str(tmp_path / 'baseline')).stdout.strip() == 'held'
  outer.release()
  assert try_other(str(tmp_path)).stdout.strip() == 'held'


def test_ablate_is_refused_on_a_held_directory(tmp_path):
  from alexnet_jax.paper import ablate  # pylint: disable=import-outside-toplevel
  from configs import ablations  # pylint: disable=import-outside-toplevel
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys; from alexnet_jax.runtime import workdir_lock\n'
       'workdir_lock.acquire(sys.argv[1]); print("held", flush=True); sys.stdin.read()',
       str(tmp_path)], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirBusy, match=f'process {holder.pid} on host'):
      ablate.run(ablations.get_config('tiny'), ['lrn'], str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ['.lock']  # no run directory, no table
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)


def _pids_of(workdir):
  pids = {}
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmdline = f.read().decode().split('\0')
    except OSError:
      continue
    if 'alexnet_jax.main' in cmdline and f'--workdir={workdir}' in cmdline:
      pids[int(next(a for a in cmdline if a.startswith('--process_id=')).split('=')[1])] = int(pid)
  return pids


def test_a_second_two_process_run_is_refused_on_every_process(tmp_path, tiny_data_dir):
  """2 x 2: a two-process run holds the workdir (its process 0 does); a second two-process run
  on it stops on both processes with exit 2, naming the holder, and writes nothing."""
  workdir = str(tmp_path / 'two')
  flags = ['--config=configs/tiny.py', '--config.parallelism=towers_data',
           '--config.input_shards=2', f'--config.data_dir={tiny_data_dir}',
           '--config.num_train_steps=100000', '--config.checkpoint_every_steps=4',
           '--config.log_every_steps=4', '--config.eval_every_steps=100000',
           '--config.num_eval_examples=48', f'--workdir={workdir}', '--init_timeout_s=120']
  env = subprocess_env(PYTHON=sys.executable)
  launch = ['bash', 'launch/local.sh', '2', '2', *flags]
  first = subprocess.Popen(launch, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=open(tmp_path / 'first.log', 'w'), start_new_session=True)
  try:
    _wait_for(lambda: os.path.isdir(os.path.join(workdir, 'checkpoints', '4')), first,
              'checkpoint 4', timeout=400)
    pids = _pids_of(workdir)
    assert sorted(pids) == [0, 1] and _holder(workdir)['pid'] == str(pids[0])
    for pid in pids.values():
      os.kill(pid, signal.SIGSTOP)
    before = _snapshot(workdir)

    # Its process 1 writes its log elsewhere: local.sh's default is WORKDIR/logs.
    second = subprocess.run(launch, cwd=ROOT, env={**env, 'LOG_DIR': str(tmp_path / 'logs2')},
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr[-3000:]
    errors = _error_lines(second.stderr)
    assert len(errors) == 1, second.stderr[-3000:]
    assert f'in use by process {pids[0]} on host {socket.gethostname()}' in errors[0]
    other = (tmp_path / 'logs2' / 'process_1.log').read_text()
    assert 'error: process 0 of this run refused the workdir' in other, other[-3000:]
    assert 'did not stop within' not in second.stderr  # both stopped by themselves
    assert _snapshot(workdir) == before
  finally:
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
