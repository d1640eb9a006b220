"""A run that survives: SIGTERM, SIGKILL, NaN, a full disk, corrupt or foreign checkpoints.

Real subprocesses of `python -m alexnet_jax.main` on the tiny config (CPU), real orbax
checkpoints, real signals; the reference is an uninterrupted run of the same command.
"""

import glob
import hashlib
import json
import math
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import train
from configs import tiny
import tolerance  # tests/ is on sys.path under pytest

# 30 steps; a checkpoint every 5, an evaluation every 10; warm-up over 3 steps, and a plateau
# rule so impatient that the rate drops after the evaluations at 20 and 30: a resume must restore
# the schedule's state, not only the arrays. Steps 3-4 are profiled.
COMMAND = ('--config.num_train_steps=30', '--config.checkpoint_every_steps=5',
           '--config.eval_every_steps=10', '--config.log_every_steps=5',
           '--config.lr_schedule.patience=1', '--config.lr_schedule.threshold=0.5',
           '--config.lr_schedule.warmup_steps=3', '--config.profile_steps=(3, 4)')


def _config(data_dir, **overrides):
  """COMMAND as an in-process config."""
  config = tiny.get_config()
  config.data_dir = data_dir
  config.num_train_steps, config.checkpoint_every_steps = 30, 5
  config.eval_every_steps, config.log_every_steps = 10, 5
  config.lr_schedule.update(patience=1, threshold=0.5, warmup_steps=3)
  config.profile_steps = (3, 4)
  config.update(overrides)
  return config


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def _metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _meta(workdir, step):
  with open(os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')) as f:
    return json.load(f)


def _files(workdir):
  """{path: sha1} of every file under workdir: to show that nothing was changed. The lock file
  is left out: it names whichever run last held the workdir (runtime/workdir_lock.py), and a run
  refused for its checkpoint held it while it looked."""
  out = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      if root == workdir and name == '.lock':
        continue
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = hashlib.sha1(f.read()).hexdigest()
  return out


def _assert_bit_identical(params, expected):
  flat = dict(_flatten(params))
  want = dict(_flatten(expected))
  assert flat.keys() == want.keys()
  for name in want:
    assert flat[name].dtype == want[name].dtype and flat[name].shape == want[name].shape, name
    assert flat[name].tobytes() == want[name].tobytes(), f'{name} differs'


def _flatten(tree, prefix=''):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _flatten(value, f'{prefix}{key}/')
    else:
      yield f'{prefix}{key}', np.asarray(value)


def _wait_for_checkpoint(workdir, proc, after: int, timeout: float = 300) -> int:
  """Waits until a checkpoint later than `after` is complete on disk; returns its step."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.isdir(os.path.join(workdir, 'checkpoints')):
      later = [s for s in _steps(workdir) if s > after]
      if later:
        return later[0]
    assert proc.poll() is None, f'the run ended (rc {proc.returncode}) before a checkpoint > {after}'
    time.sleep(0.05)
  raise AssertionError(f'no checkpoint after {after} in {timeout} s')


@pytest.fixture(scope='module')
def reference(tmp_path_factory, tiny_data_dir, run_main):
  """The uninterrupted run of COMMAND."""
  workdir = str(tmp_path_factory.mktemp('reference'))
  proc = run_main(workdir, *COMMAND, data_dir=tiny_data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, proc


def test_preempted_then_killed_run_ends_bit_identical_to_an_uninterrupted_one(
    reference, tmp_path, tiny_data_dir, run_main):
  ref_dir, _ = reference
  workdir = str(tmp_path / 'interrupted')
  rng = random.Random()  # a random moment each time; printed on failure
  term_delay, kill_delay = rng.uniform(0, 0.5), rng.uniform(0, 1.0)
  why = f'(SIGTERM {term_delay:.2f} s after checkpoint 5, SIGKILL {kill_delay:.2f} s after the next)'

  # 1. Preemption: SIGTERM at a random moment after the first checkpoint -> exit 0, saved.
  log = str(tmp_path / 'first.log')
  proc = run_main(workdir, *COMMAND, data_dir=tiny_data_dir, log=log)
  _wait_for_checkpoint(workdir, proc, after=0)
  # The moment ends early at step 20's log line, 10 steps and an evaluation before the end: the
  # signal must find the run still training (0.5 s is ~16 of its steps on 2 idle cores; a faster
  # machine, or a late first checkpoint, would let the run finish before a plain sleep ends).
  deadline = time.monotonic() + term_delay
  while time.monotonic() < deadline and 'step 20/30' not in (tmp_path / 'first.log').read_text():
    time.sleep(0.01)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=300) == 0, open(log).read()[-3000:]
  output = open(log).read()
  assert 'SIGTERM: stopped after step' in output and 'Run the same command again' in output, why
  preempted = int(output.split('SIGTERM: stopped after step ')[1].split()[0])
  assert _steps(workdir)[-1] == preempted < 30, why

  # 2. SIGKILL at a random moment after the resumed run has saved a checkpoint of its own.
  log = str(tmp_path / 'second.log')
  proc = run_main(workdir, *COMMAND, data_dir=tiny_data_dir, log=log)
  _wait_for_checkpoint(workdir, proc, after=preempted)
  # Likewise it ends early once the last checkpoint is on disk: the kill must find the run alive.
  deadline = time.monotonic() + kill_delay
  while time.monotonic() < deadline and 30 not in _steps(workdir):
    time.sleep(0.01)
  assert proc.poll() is None, f'finished before the kill {why}'
  proc.kill()
  proc.wait(timeout=60)
  assert f'Resumed from {workdir}/checkpoints at step {preempted}' in open(log).read()

  # 3. The same command again finishes the run.
  last = run_main(workdir, *COMMAND, data_dir=tiny_data_dir)
  assert last.returncode == 0, last.stderr[-3000:]
  assert 'Resumed from' in last.stderr

  ref_config, ref_params = checkpointing.restore_params(ref_dir)
  config, params = checkpointing.restore_params(workdir)
  assert _steps(workdir)[-1] == 30 and config.to_dict() == ref_config.to_dict()
  _assert_bit_identical(params, ref_params)
  assert _meta(workdir, 30)['schedule'] == _meta(ref_dir, 30)['schedule'], why
  assert _meta(ref_dir, 30)['schedule']['drops'] == 2  # the rate did change during the run
  assert _meta(workdir, 30)['metrics'] == _meta(ref_dir, 30)['metrics'], why
  # A log line holds means over the steps since the previous one (5). The last line for each
  # step comes from the last run that reached it; where that run started at or before the
  # window, the means are the uninterrupted run's exactly.
  resumed = int(last.stderr.split('Resumed from ')[1].split(' at step ')[1].split('.')[0])
  ref = {r['step']: r for r in _metrics(ref_dir) if 'loss' in r}
  logged = {r['step']: r for r in _metrics(workdir) if 'loss' in r}
  assert sorted(logged) == sorted(ref)
  compared = 0
  for step, record in logged.items():
    start = max(s for s in (0, preempted, resumed) if s < step)
    if start <= step - 5:
      compared += 1
      for name in ('loss', 'top1', 'grad_norm', 'learning_rate'):
        assert record[name] == ref[step][name], (name, record, why)
  assert compared >= 3, why


def test_checkpoints_kept_are_the_last_three_and_the_best(reference):
  ref_dir, _ = reference
  errors = {r['step']: 1 - r['val_top1'] for r in _metrics(ref_dir) if 'val_top1' in r}
  assert sorted(errors) == [10, 20, 30]
  # Saved every 5 steps; evaluations (the candidates for best) at 10, 20, 30. The best wins a
  # tie by being the later one.
  best_is_10 = errors[10] < min(errors[20], errors[30])
  assert _steps(ref_dir) == ([10] if best_is_10 else []) + [20, 25, 30]


def test_restore_params_reads_the_config_and_numpy_params(reference):
  ref_dir, _ = reference
  config, params = checkpointing.restore_params(ref_dir, step=25)
  assert config.model.conv_features == (16, 32, 48, 48, 32) and config.num_train_steps == 30
  assert isinstance(params['conv1']['kernel'], np.ndarray)
  assert params['conv1']['kernel'].shape == (2, 11, 11, 3, 16)
  assert params['fc8']['kernel'].shape[-1] == 5  # 10 classes, half per tower
  _, later = checkpointing.restore_params(ref_dir)
  assert not np.array_equal(params['conv1']['kernel'], later['conv1']['kernel'])


def test_tensorboard_event_files_hold_the_metrics_of_metrics_jsonl(reference):
  ref_dir, _ = reference
  events = glob.glob(os.path.join(ref_dir, 'events.out.tfevents.*'))
  assert events
  scalars, plugins = {}, set()
  for path in events:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        scalars[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
        plugins.add(value.metadata.plugin_data.plugin_name)
  assert plugins <= {'scalars', ''} and 'scalars' in plugins
  records = _metrics(ref_dir)
  assert {'loss', 'top1', 'learning_rate', 'images_per_second', 'val_top1', 'val_top5'} <= {
      k for r in records for k in r}
  for record in records:
    for name, value in record.items():
      if name != 'step':
        assert scalars[(name, record['step'])] == pytest.approx(value, rel=1e-6), name


def test_profiler_trace_of_the_chosen_steps_is_written_under_the_workdir(reference):
  ref_dir, proc = reference
  traces = glob.glob(os.path.join(ref_dir, 'profile', 'plugins', 'profile', '*', '*.xplane.pb'))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 1000
  assert 'Profiled steps 3-4' in proc.stderr


def test_console_line_has_step_epoch_loss_top1_rate_speed_and_eta(reference):
  _, proc = reference
  line = next(l for l in proc.stderr.splitlines() if 'step 25/30' in l)
  for word in ('epoch 2.50', 'loss', 'top1', 'lr 0.001', 'img/s', 'ETA'):
    assert word in line, line


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, tiny_data_dir,
                                                                      run_main):
  """After 6 steps the rate jumps to 1e30: step 7's update is finite but enormous, so step 8's
  forward pass overflows. Checks happen only at step 10 (the checkpoint): the error must still
  name step 8, and nothing after step 5 may be saved."""
  workdir = str(tmp_path / 'nan')
  proc = run_main(workdir, '--config.num_train_steps=20', '--config.checkpoint_every_steps=5',
                  '--config.log_every_steps=100', '--config.eval_every_steps=100',
                  '--config.lr_schedule.kind=step', '--config.lr_schedule.boundaries=(6,)',
                  '--config.lr_schedule.factor=1e32', data_dir=tiny_data_dir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert 'error: Training diverged at step 8' in proc.stderr
  assert 'checkpoint, step 5, is intact' in proc.stderr and 'Traceback' not in proc.stderr
  assert _steps(workdir) == [5]
  _, params = checkpointing.restore_params(workdir)
  assert all(np.all(np.isfinite(p)) for _, p in _flatten(params))


def test_full_disk_fails_the_save_and_keeps_what_was_saved(reference, tmp_path, tiny_data_dir,
                                                          run_main):
  """A file-size limit (200 KiB; a checkpoint's data file is larger) makes the checkpoint write
  fail (EFBIG) as a full disk would."""
  workdir = str(tmp_path / 'full')
  shutil.copytree(reference[0], workdir)
  before = {s: checkpointing.restore_params(workdir, s)[1] for s in _steps(workdir)}
  proc = run_main(workdir, *COMMAND[1:], '--config.num_train_steps=35', data_dir=tiny_data_dir,
                  wrapper=('bash', '-c', 'ulimit -f 200 && exec "$@"', 'bash'))
  assert proc.returncode == 1, proc.stderr[-3000:]
  # The message, from where it starts on its line: orbax's background threads print their own
  # teardown noise ("Event loop is closed" tracebacks) to the same stderr at the same moment, and a
  # fragment of one (an indent, a half line) can be written just before it on the same line.
  marker = 'error: Writing checkpoint 35'
  messages = [l[l.index(marker):] for l in proc.stderr.splitlines() if marker in l]
  # On failure, show what main said, not orbax's teardown noise ("Event loop is closed").
  said = [l for l in proc.stderr.splitlines()
          if ('error' in l.lower() or 'checkpoint' in l.lower()) and 'Event loop' not in l]
  assert len(messages) == 1, '\n'.join(said[-60:])
  message = messages[0]
  assert 'File too large' in message
  assert f'(steps {sorted(before)}) are intact' in message
  assert _steps(workdir) == sorted(before)
  for step, params in before.items():
    _assert_bit_identical(checkpointing.restore_params(workdir, step)[1], params)


def test_corrupt_checkpoint_is_refused_and_left_as_it_is(reference, tmp_path, tiny_data_dir):
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(reference[0], workdir)
  data = glob.glob(os.path.join(workdir, 'checkpoints', '30', 'state', 'ocdbt.process_0', 'd',
                                '*'))
  assert data
  for path in data:  # a torn write: every data file of the latest checkpoint cut in half
    os.truncate(path, os.path.getsize(path) // 2)
  before = _files(workdir)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(_config(tiny_data_dir, num_train_steps=35), workdir)
  message = str(e.value)
  assert 'Checkpoint 30' in message and 'cannot be read' in message
  assert f'move {workdir}/checkpoints/30 out of' in message
  assert _files(workdir) == before


def test_checkpoint_of_another_model_is_refused_and_left_as_it_is(reference, tmp_path,
                                                                  tiny_data_dir):
  workdir = str(tmp_path / 'other_model')
  shutil.copytree(reference[0], workdir)
  before = _files(workdir)
  config = _config(tiny_data_dir, num_train_steps=35)
  config.model.conv_features = (16, 32, 48, 48, 64)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert 'another model config' in message and 'params/conv5/kernel' in message
  assert 'model.conv_features: [16, 32, 48, 48, 32] -> [16, 32, 48, 48, 64]' in message
  assert _files(workdir) == before  # config.json included


def test_resume_with_another_training_stream_is_refused(reference, tmp_path, tiny_data_dir):
  workdir = str(tmp_path / 'other_stream')
  shutil.copytree(reference[0], workdir)
  before = _files(workdir)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(_config(tiny_data_dir, num_train_steps=35, batch_size=16, seed=3),
                             workdir)
  message = str(e.value)
  assert 'config.batch_size (32 there, 16 here)' in message and 'config.seed (0 there' in message
  assert '--config.seed=0 --config.batch_size=32' in message
  assert _files(workdir) == before


def test_checkpoints_written_before_a_stream_field_existed_still_resume(reference, tmp_path,
                                                                        tiny_data_dir):
  """Checkpoints saved before config.resized was a stream field lack it: they were of the
  stream it now calls '' and resume with it (and refuse another value)."""
  workdir = str(tmp_path / 'old_meta')
  shutil.copytree(reference[0], workdir)
  for step in checkpointing.saved_steps(workdir):
    path = os.path.join(workdir, 'checkpoints', str(step), 'meta', 'metadata')
    with open(path) as f:
      meta = json.load(f)
    del meta['input']['resized']
    with open(path, 'w') as f:
      json.dump(meta, f)
  train.train_and_evaluate(_config(tiny_data_dir), workdir)  # finished: restores, checks, evaluates
  with pytest.raises(checkpointing.CheckpointError, match="config.resized \\('' there, 'raw' here"):
    train.train_and_evaluate(_config(tiny_data_dir, resized='raw'), workdir)


def test_unwritable_workdir_is_refused_before_any_work(tmp_path, tiny_data_dir):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  with pytest.raises(config_lib.ConfigError, match=r'--workdir=.*a_file/run cannot be written'):
    train.train_and_evaluate(_config(tiny_data_dir), str(blocker / 'run'))


# --- Resuming under another strategy and device count. ---

RESUME_STEPS = 4  # K: trained under towers, then K more under data


def _strategy_config(data_dir, parallelism, num_devices, num_train_steps, **overrides):
  """tiny on the generated data, a constant rate (the evaluation every run makes at its last
  step moves no schedule), a log line every step, a checkpoint at K."""
  config = tiny.get_config()
  config.data_dir = data_dir
  config.parallelism, config.num_devices = parallelism, num_devices
  config.num_train_steps = num_train_steps
  config.lr_schedule.kind = 'constant'
  config.log_every_steps = 1
  config.checkpoint_every_steps = RESUME_STEPS
  config.eval_every_steps = 2 * RESUME_STEPS
  config.update(overrides)
  return config


def _gradient_terms(config, params) -> dict:
  """Per layer, how many products one element of its gradient sums: every image of the batch
  at every output position (the layer's multiply-adds per image over its kernel's size)."""
  net = model_lib.make_network(config.model, config.model.num_classes)
  macs = model_lib.layer_macs(net, config.image_size)
  return {name: config.batch_size * macs[name] // math.prod(params[name]['kernel'].shape)
          for name in macs}


def test_a_towers_checkpoint_on_2_devices_resumes_under_data_on_4(tmp_path, tiny_data_dir):
  """K steps under `towers` on 2 devices, then the same workdir resumed under `data` on 4 to
  step 2K, against one uninterrupted `towers` run to 2K. In one process the training stream does
  not depend on the strategy or the device count (its fields: data/spec.STREAM_FIELDS, with
  input_shards = 1), so both runs see the same batches and dropout masks; the two strategies
  sum each gradient in another order, so the parameters at 2K agree to float32 rounding, not bit
  for bit. A resume that would change the stream (input_shards) is refused."""
  k = RESUME_STEPS
  straight, switched = str(tmp_path / 'straight'), str(tmp_path / 'switched')
  train.train_and_evaluate(_strategy_config(tiny_data_dir, 'towers', 2, 2 * k), straight)
  train.train_and_evaluate(_strategy_config(tiny_data_dir, 'towers', 2, k), switched)
  assert _steps(switched) == [k]
  _, at_k = checkpointing.restore_params(switched, k)
  _assert_bit_identical(at_k, checkpointing.restore_params(straight, k)[1])  # same program

  # The stream of another input_shards (what another process count makes of input_shards=0)
  # is refused, and nothing is changed.
  before = _files(switched)
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(_strategy_config(tiny_data_dir, 'data', 4, 2 * k, input_shards=2),
                             switched)
  assert 'config.input_shards (1 there, 2 here)' in str(e.value)
  assert _files(switched) == before

  config = _strategy_config(tiny_data_dir, 'data', 4, 2 * k)
  train.train_and_evaluate(config, switched)
  assert _steps(switched) == [k, 2 * k]
  assert (_meta(switched, k)['config']['parallelism'], _meta(switched, k)['config']['num_devices']
          ) == ('towers', 2)
  assert (_meta(switched, 2 * k)['config']['parallelism'],
          _meta(switched, 2 * k)['config']['num_devices']) == ('data', 4)
  assert _meta(switched, 2 * k)['input'] == _meta(straight, 2 * k)['input']
  logged = [r['step'] for r in _metrics(switched) if 'loss' in r]
  assert logged == list(range(1, 2 * k + 1))  # the resumed run trained K+1..2K only

  _, want = checkpointing.restore_params(straight)
  _, got = checkpointing.restore_params(switched)
  terms = _gradient_terms(config, want)
  want, got, at_k = dict(_flatten(want)), dict(_flatten(got)), dict(_flatten(at_k))
  assert want.keys() == got.keys() == at_k.keys()
  for name, expected in want.items():
    layer = name.split('/')[0]
    moved = expected.astype(np.float64) - at_k[name]
    # Each of the K resumed steps sums every gradient element over `terms[layer]` products in
    # another order under data (per-device partial sums, then an all-reduce) than under towers,
    # with partial sums no larger than the K steps' whole movement; adding each update to the
    # parameter rounds once more, to an ulp of the parameter.
    rounding = tolerance.float32_atol(expected, k)
    atol = tolerance.float32_atol(moved, k * terms[layer]) + rounding
    np.testing.assert_allclose(got[name], expected, rtol=0, atol=atol, err_msg=name)
    # ... and the resumed steps moved every tensor far beyond the rounding of its values and
    # beyond that tolerance: the comparison is between two trained states, not two copies of
    # the step-K one.
    distance = np.abs(moved).max()
    assert distance > 100 * max(atol, rounding), (name, distance, atol, rounding)
