"""The calibration (python -m alexnet_jax.calibrate) on CPU devices standing in for the GPU: its
numbers against the layer table and the profile by hand, its per-op times against the
profiler's other file, the loader's refusals, the budget, and launch/calibrate_gpu.sh's stages."""

import copy
import gzip
import json
import os
import subprocess
import sys
import time
import types
import tomllib

import pytest

from alexnet_jax.perf import calibrate  # the measuring run (its config loader imported with it,
# before any test's clock runs)
from alexnet_jax.pods import calibration as calibration_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = 'configs/tiny.py'
PROFILES = os.path.join(ROOT, 'alexnet_jax', 'profiles', 'profiles.toml')


def tiny_train_flops_by_hand() -> int:
  """configs/tiny.py's network from its layer table, both towers (per tower 16-32-48-48-32
  kernels, 128-128 neurons, 5 of the 10 classes) on 64 x 64 crops: conv1 11x11/4 gives 15 x 15,
  pool1 (3/2) 7, conv2 5x5 (padded) 7, pool2 3, conv3-conv5 3x3 (padded) 3, pool5 1 x 1."""
  conv1 = 2 * (15 * 15 * 16) * (11 * 11 * 3)
  conv2 = 2 * (7 * 7 * 32) * (5 * 5 * 16)
  conv3 = 2 * (3 * 3 * 48) * (3 * 3 * 64)  # reads both towers' conv2
  conv4 = 2 * (3 * 3 * 48) * (3 * 3 * 48)
  conv5 = 2 * (3 * 3 * 32) * (3 * 3 * 48)
  fc6 = 2 * 128 * (1 * 1 * 64)  # both towers' pool5
  fc7 = 2 * 128 * 256
  fc8 = 2 * 5 * 256
  forward = conv1 + conv2 + conv3 + conv4 + conv5 + fc6 + fc7 + fc8
  # 2 FLOPs a multiply-add; forward + input gradient + weight gradient, no input gradient of
  # conv1 (the image's).
  return 2 * (3 * forward - conv1)


def peak_by_hand(dtype: str) -> float:
  with open(PROFILES, 'rb') as f:
    h200 = tomllib.load(f)['gpu-h200']
  field = {'float32': 'fp32_matmul_flops', 'bfloat16': 'peak_bf16_flops'}[dtype]
  return float(h200[field]) / h200.get('devices_per_chip', 1)


def _environment(**changes) -> dict:
  """The tests' environment (conftest's compilation cache included) for a command that finds
  its own one CPU device; the script's run below then takes the fixture's compiled step from the
  cache."""
  env = dict(os.environ, **changes)
  env.pop('XLA_FLAGS', None)
  return env


@pytest.fixture(scope='module')
def calibrated(tmp_path_factory):
  """The command itself, in a process of its own with one CPU device."""
  out = tmp_path_factory.mktemp('calibration') / 'calibration.json'
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.calibrate', f'--configs={TINY}',
       '--dtypes=float32,bfloat16', '--batch_sizes=2', '--steps=2', '--warmup=1',
       '--trace_steps=1', '--target=gpu-h200', f'--out={out}'],
      cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert '2 of 2 runs measured' in done.stdout
  return calibration_lib.load_calibration(str(out)), out


def test_every_run_is_measured_and_its_numbers_follow_from_the_step(calibrated):
  result, out = calibrated
  assert result['kind'] == 'alexnet_jax calibration' and result['version'] == 1
  assert result['platform'] == 'cpu' and result['target'] == 'gpu-h200' and result['complete']
  assert [(r['dtype'], r['batch_size']) for r in result['runs']] == [
      ('float32', 2), ('bfloat16', 2)]
  flops = tiny_train_flops_by_hand()
  for r in result['runs']:
    assert r['status'] == 'ok' and r['error'] is None, r
    assert r['config'] == TINY and r['network'] == 'tiny'
    assert r['images_per_second'] == pytest.approx(r['batch_size'] / r['step_seconds'],
                                                   rel=1e-12)
    assert r['model_flops_per_image'] == flops
    assert r['peak_flops'] == peak_by_hand(r['dtype'])
    assert r['mfu'] == pytest.approx(flops * r['images_per_second'] / peak_by_hand(r['dtype']),
                                     rel=1e-12)
    assert r['compile_seconds'] > 0 and r['mean_step_seconds'] >= r['step_seconds']
  assert json.loads(out.read_text()) == result  # the loader hands back the file as written


def test_the_per_op_times_are_the_traces_events(calibrated):
  result, _ = calibrated
  assert result['traced_run'] == {'config': TINY, 'dtype': 'float32', 'batch_size': 2}
  assert os.path.isdir(result['trace']) and result['trace_steps'] == 1
  ops = result['ops']
  assert ops and {o['category'] for o in ops} <= {'conv', 'matmul', 'other'}
  by_category = {c: [o for o in ops if o['category'] == c] for c in ('conv', 'matmul')}
  assert by_category['conv'] and by_category['matmul'], result['ops_note']
  assert [o['seconds_per_step'] for o in ops] == sorted((o['seconds_per_step'] for o in ops),
                                                        reverse=True)
  # The profiler's other file, plain JSON: every thunk event with its HLO op, per thread.
  with gzip.open(result['trace_files']['trace_json'], 'rt') as f:
    events = [e for e in json.load(f)['traceEvents']
              if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {})]
  threads: dict = {}
  for e in events:
    threads.setdefault((e['pid'], e['tid']), []).append(e)
  outermost_us = 0.0
  durations_us: dict = {}
  for thread in threads.values():
    end = -1.0
    for e in sorted(thread, key=lambda e: (e['ts'], -e['dur'])):
      durations_us[e['args']['hlo_op']] = durations_us.get(e['args']['hlo_op'], 0.0) + e['dur']
      if e['ts'] >= end:  # not inside an earlier event of this thread
        outermost_us += e['dur']
        end = e['ts'] + e['dur']
  # Own times add up to the time the threads spent in ops, nested events counted once.
  assert sum(o['seconds_per_step'] for o in ops) == pytest.approx(outermost_us * 1e-6, rel=1e-6)
  # An op that holds no other (a convolution, a matrix product) takes its events' whole time.
  for o in by_category['conv'] + by_category['matmul']:
    if o['name'].startswith(('conv_general_dilated', 'dot_general')):
      assert o['seconds_per_step'] == pytest.approx(durations_us[o['name']] * 1e-6, rel=1e-6)


def _minimal() -> dict:
  """A file with exactly the documented fields (what the planner's own tests write)."""
  return {'kind': 'alexnet_jax calibration', 'version': 1, 'date': '2026-12-01',
          'device_kind': 'NVIDIA H200', 'platform': 'gpu', 'jax_version': '0.11.2',
          'target': 'gpu-h200', 'ops': [], 'trace': None,
          'runs': [{'config': 'configs/paper.py', 'network': 'paper', 'dtype': 'float32',
                    'batch_size': 128, 'images_per_second': 10000.0,
                    'step_seconds': 0.0128, 'compile_seconds': 20.0,
                    'model_flops_per_image': 4.0e9, 'mfu': 0.08, 'peak_flops': 494.5e12}]}


@pytest.mark.parametrize('change, words', [
    (lambda c: c.pop('runs'), 'runs: missing'),
    (lambda c: c.update(kind='alexnet_jax bench'), 'kind: '),
    (lambda c: c.update(version=2), 'version: 2, not 1'),
    (lambda c: c['runs'][0].pop('images_per_second'), 'runs[0].images_per_second: missing'),
    (lambda c: c['runs'][0].update(dtype='float16'), 'runs[0].dtype'),
    (lambda c: c['runs'][0].update(batch_size=0), 'runs[0].batch_size'),
    (lambda c: c['runs'][0].update(mfu='high'), 'runs[0].mfu'),
    (lambda c: c.update(ops=[{'name': 'fusion', 'category': 'gemm', 'seconds_per_step': 1.0}]),
     'ops[0].category'),
])
def test_the_loader_refuses_a_wrong_file_in_one_line_naming_the_field(tmp_path, change, words):
  path = tmp_path / 'calibration.json'
  path.write_text(json.dumps(_minimal()))
  assert calibration_lib.load_calibration(str(path))['runs'][0]['batch_size'] == 128
  broken = copy.deepcopy(_minimal())
  change(broken)
  path.write_text(json.dumps(broken))
  with pytest.raises(calibration_lib.CalibrationError) as e:
    calibration_lib.load_calibration(str(path))
  assert words in str(e.value) and '\n' not in str(e.value) and str(path) in str(e.value)


def test_the_loader_refuses_what_is_not_json(tmp_path):
  path = tmp_path / 'calibration.json'
  path.write_text('{"kind": ')
  with pytest.raises(calibration_lib.CalibrationError, match='not JSON'):
    calibration_lib.load_calibration(str(path))
  with pytest.raises(calibration_lib.CalibrationError, match='cannot be read'):
    calibration_lib.load_calibration(str(tmp_path / 'missing.json'))


def test_a_spent_budget_starts_no_run_and_says_so(tmp_path):
  out = tmp_path / 'calibration.json'
  runs = calibrate.Runs(configs=(TINY,), dtypes=('float32', 'bfloat16'), batch_sizes=(2,),
                        budget_s=0)
  result = calibrate.calibrate(runs, 'gpu-h200', str(out), log=lambda _: None)
  assert [r['status'] for r in result['runs']] == ['skipped', 'skipped']
  assert all('budget' in r['error'] and r['images_per_second'] is None for r in result['runs'])
  assert result['ops'] == [] and result['trace'] is None
  assert calibration_lib.load_calibration(str(out))['complete']


def test_the_budget_stops_new_runs_and_a_failed_run_does_not_stop_the_others(tmp_path,
                                                                             monkeypatch):
  """measure_run stood in for: 1 s a run on a clock of the test's own (so the verdict does not
  depend on the machine's speed), and bfloat16 at batch 1 fails as running out of memory
  would. Runs go batch size first, then dtype."""
  clock = [0.0]
  monkeypatch.setattr(calibrate, 'time', types.SimpleNamespace(
      monotonic=lambda: clock[0], time=lambda: clock[0], strftime=time.strftime,
      gmtime=time.gmtime, perf_counter=lambda: clock[0]))

  def measure_run(config, device, peak, steps, warmup, trace=None):
    if (config.model.dtype, config.batch_size) == ('bfloat16', 1):
      raise RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate\nmore')
    clock[0] += 1.0
    return {'images_per_second': 1.0, 'step_seconds': float(config.batch_size),
            'compile_seconds': 1.0, 'model_flops_per_image': 1.0, 'mfu': 1.0 / peak,
            'peak_flops': peak}

  monkeypatch.setattr(calibrate, 'measure_run', measure_run)
  out = tmp_path / 'calibration.json'
  runs = calibrate.Runs(configs=(TINY,), dtypes=('float32', 'bfloat16'),
                        batch_sizes=(1, 2, 3), trace_steps=0, budget_s=2.5)
  result = calibrate.calibrate(runs, 'gpu-h200', str(out), log=lambda _: None)
  # Starts: float32/1 at 0 s, bfloat16/1 at 1 s (fails at once), float32/2 at 1 s, bfloat16/2
  # at 2 s; float32/3 would start at 3 s, past the 2.5 s budget.
  assert [(r['dtype'], r['batch_size'], r['status']) for r in result['runs']] == [
      ('float32', 1, 'ok'), ('bfloat16', 1, 'error'), ('float32', 2, 'ok'),
      ('bfloat16', 2, 'ok'), ('float32', 3, 'skipped'), ('bfloat16', 3, 'skipped')]
  failed = result['runs'][1]
  assert failed['error'] == ('RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to '
                             'allocate')
  assert failed['images_per_second'] is None and failed['mfu'] is None
  assert all('budget' in r['error'] for r in result['runs'][4:])
  assert calibration_lib.load_calibration(str(out))['runs'] == result['runs']


def test_the_gpu_script_runs_its_stages_on_cpu(tmp_path):
  """launch/calibrate_gpu.sh, shrunk through its environment: one tiny run (compiled above, so
  taken from the tests' compilation cache) and a trace; the plan stage runs too and fails or
  succeeds without failing the script."""
  out = tmp_path / 'out'
  env = _environment(OUT=str(out), PYTHON=sys.executable, TRACE_DIR=str(tmp_path / 'trace'),
                     CALIBRATE_ARGS=(f'--configs={TINY} --dtypes=float32 --batch_sizes=2 '
                                     '--steps=1 --warmup=0 --trace_steps=1'),
                     PLAN_ARGS=f'--config={TINY}')
  done = subprocess.run(['bash', 'launch/calibrate_gpu.sh'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  result = calibration_lib.load_calibration(str(out / 'calibration.json'))
  assert [r['status'] for r in result['runs']] == ['ok'] and result['complete']
  assert result['budget_s'] == 300  # the script's own budget, not the command's default
  assert (out / 'trace.xplane.pb').stat().st_size > 0 and (out / 'trace.json.gz').exists()
  log = (out / 'log.txt').read_text()
  assert 'calibrating' in log and 'planning' in log
  assert (out / 'plan' / 'plan.json').exists() or 'the plan failed' in log
  assert 'measured runs: 1' in done.stdout and '| tiny | float32 | 2 |' in done.stdout
