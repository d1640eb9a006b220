"""Preemption for real: a SIGTERM to this process, and a SIGTERM to one of two processes joined
by jax.distributed on 127.0.0.1 (CPU collectives over gloo) that must stop at the same step."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from alexnet_jax.runtime.preemption import Preemption

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of the run: steps of about 20 ms (sleep), stop_now after each, and at the stop a
# collective (the all-gather of the stop step), which hangs or disagrees unless both stopped
# together, as a checkpoint save would.
_WORKER = r'''
import sys, time
port, process_id, service = sys.argv[1], int(sys.argv[2]), sys.argv[3] == 'on'
import jax
jax.config.update('jax_cpu_collectives_implementation', 'gloo')
jax.config.update('jax_enable_preemption_service', service)
jax.distributed.initialize(f'127.0.0.1:{port}', 2, process_id, initialization_timeout=60,
                           heartbeat_timeout_seconds=30)
import numpy as np
from jax.experimental import multihost_utils
from alexnet_jax.runtime.preemption import Preemption
stopped = None
with Preemption() as preemption:
  print('MODE', preemption.mode, flush=True)
  for step in range(1, 3001):
    time.sleep(0.02)
    print('STEP', step, flush=True)
    # JAX's sync point needs no step where all sync anyway: check_all only for the fallback.
    if preemption.stop_now(step, check_all=not service and step % 10 == 0):
      stopped = step
      break
gathered = multihost_utils.process_allgather(np.int32(-1 if stopped is None else stopped))
print('STOPPED', stopped, 'GATHERED', ','.join(map(str, gathered.tolist())), 'RECEIVED',
      preemption.received, flush=True)
'''


def test_one_process_stops_at_the_next_step_and_restores_the_handler():
  calls = []
  before = lambda signum, frame: calls.append(signum)
  original = signal.signal(signal.SIGTERM, before)
  try:
    preemption = Preemption()
    with pytest.raises(RuntimeError):
      preemption.stop_now(0, check_all=True)
    with preemption:
      assert preemption.mode == 'signal'
      assert not preemption.stop_now(1, check_all=True) and not preemption.received
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.time() + 10
      while not preemption.received:  # Python runs the handler between bytecodes
        assert time.time() < deadline, 'the SIGTERM never reached the handler'
        time.sleep(0.001)
      assert preemption.stop_now(2, check_all=False)  # not only at steps that sync
    assert signal.getsignal(signal.SIGTERM) is before
    assert not calls  # the handler in place during the loop took the signal, not the previous
    os.kill(os.getpid(), signal.SIGTERM)  # and the previous one is back
    deadline = time.time() + 10
    while not calls:
      assert time.time() < deadline, 'the previous handler was not restored'
      time.sleep(0.001)
  finally:
    signal.signal(signal.SIGTERM, original)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _lines(path, prefix):
  with open(path) as f:
    return [line.split() for line in f if line.startswith(prefix)]


@pytest.mark.parametrize('service,victim', [('on', 1), ('on', 0), ('off', 1)])
def test_two_processes_stop_at_the_same_step_when_one_gets_sigterm(tmp_path, service, victim):
  """'on': JAX's preemption sync point (the default); 'off': jax_enable_preemption_service off,
  the all-gather fallback. `victim`: the only process that gets SIGTERM (0: the coordinator)."""
  script = tmp_path / 'worker.py'
  script.write_text(_WORKER)
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  env.pop('XLA_FLAGS', None)
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, 'w') as f:
        procs.append(subprocess.Popen([sys.executable, str(script), str(port), str(i), service],
                                      cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT))
    deadline = time.time() + 60
    while len(_lines(logs[victim], 'STEP')) < 20:  # both joined and are stepping
      for p, log in zip(procs, logs):
        assert p.poll() is None, log.read_text()[-3000:]
      assert time.time() < deadline, logs[victim].read_text()[-3000:]
      time.sleep(0.05)
    procs[victim].send_signal(signal.SIGTERM)  # only one process gets the notice
    signalled_after = int(_lines(logs[victim], 'STEP')[-1][1])
    for p in procs:
      p.wait(timeout=60)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  outputs = [log.read_text() for log in logs]
  for p, output in zip(procs, outputs):
    assert p.returncode == 0, output[-3000:]
  modes = [_lines(log, 'MODE')[0][1] for log in logs]
  assert modes == (['jax', 'jax'] if service == 'on' else ['allgather', 'allgather'])
  stops = [_lines(log, 'STOPPED')[0] for log in logs]
  steps = [int(s[1]) if s[1] != 'None' else None for s in stops]
  assert steps[0] is not None and steps[0] == steps[1], outputs
  assert all(s[3] == f'{steps[0]},{steps[0]}' and s[5] == 'True' for s in stops), stops
  assert steps[0] >= signalled_after
  if service == 'off':
    assert steps[0] % 10 == 0  # the fallback agrees only at steps that sync anyway


def test_main_leaves_at_once_after_the_sigterm_line_with_its_checkpoint_committed(
    tmp_path, tiny_data_dir, run_main):
  """After `SIGTERM: stopped after step N` main waits for nothing: the exit hook (runtime/
  prompt_exit.py) finds no thread but the main one alive (no orbax save or commit in flight),
  the batch iterator, whose destructor would wait for its tf.data workers, is left behind, and
  checkpoint N is complete; the same command resumes from it and finishes."""
  from alexnet_jax.core import checkpointing  # pylint: disable=import-outside-toplevel
  from alexnet_jax.runtime import prompt_exit  # pylint: disable=import-outside-toplevel
  workdir, log, report = str(tmp_path / 'run'), str(tmp_path / 'first.log'), tmp_path / 'exit.json'
  command = ('--config.num_train_steps=200', '--config.checkpoint_every_steps=100',
             '--config.log_every_steps=5', '--config.eval_every_steps=200',
             '--config.num_eval_examples=48')
  os.environ[prompt_exit.REPORT_ENV] = str(report)  # run_main passes this environment on
  try:
    proc = run_main(workdir, *command, data_dir=tiny_data_dir, log=log)
  finally:
    del os.environ[prompt_exit.REPORT_ENV]
  try:
    deadline = time.monotonic() + 300
    while 'compiled and ran' not in open(log).read():  # training, its first step done
      assert proc.poll() is None, open(log).read()[-3000:]
      assert time.monotonic() < deadline, open(log).read()[-3000:]
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, open(log).read()[-3000:]
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  output = open(log).read()
  stopped = int(output.split('SIGTERM: stopped after step ')[1].split()[0])
  assert stopped < 200
  exit_report = json.loads(report.read_text())
  # No thread a normal exit would wait for (daemon ones, such as tqdm's monitor after the
  # dataset was generated, it would not either).
  assert [t for t in exit_report['threads'] if not t.endswith('(daemon)')] == [], exit_report
  assert exit_report['kept'] == ['generator'] and exit_report['code'] == 0, exit_report
  assert checkpointing.saved_steps(workdir) == [stopped]  # committed: renamed from its tmp dir
  assert not [n for n in os.listdir(os.path.join(workdir, 'checkpoints')) if 'tmp' in n]
  _, params = checkpointing.restore_params(workdir)  # readable
  assert params

  resumed = run_main(workdir, *command, data_dir=tiny_data_dir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from {workdir}/checkpoints at step {stopped}' in resumed.stderr
  assert checkpointing.saved_steps(workdir)[-1] == 200
