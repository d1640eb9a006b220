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

import jax
import pytest

from alexnet_jax.perf import calibrate  # the measuring run (its config loader imported with it,
# before any test's clock runs)
from alexnet_jax.perf import collectives as collectives_lib
from alexnet_jax.pods import calibration as calibration_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import plan as plan_lib
from alexnet_jax.pods import published
from alexnet_jax.pods import targets
from alexnet_jax.program import hlo

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
                                     '--steps=1 --warmup=0 --trace_steps=1 '
                                     '--collective_groups=2 --collective_max_bytes=4096 '
                                     '--collective_warmup=1 --collective_iters=2'),
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
  # The links (--collectives): over 2 of the 8 CPU devices the command simulates, 1 and 4 KiB.
  assert [(e['kind'], e['group_size'], e['sizes']) for e in result['collectives']] == [
      (k, 2, [1024, 4096]) for k in ('all-reduce', 'all-gather', 'reduce-scatter')]
  assert 'collectives measured: 6 sizes over 3 kinds x groups' in done.stdout
  assert '| all-reduce | 2 x cpu | 4,096 |' in done.stdout


# --- The links: calibrate --collectives (perf/collectives.py) and the plan's use of them. ---


def test_algbw_and_busbw_are_nccl_tests_definitions_by_hand():
  """nccl-tests, doc/PERFORMANCE.md: algbw = S / t; busbw = algbw x 2(n-1)/n (all-reduce),
  x (n-1)/n (all-gather, reduce-scatter), S of the latter two the total array (n x per rank)."""
  assert collectives_lib.algbw(1_048_576, 1e-3) == 1_048_576_000.0
  assert collectives_lib.busbw('all-reduce', 4, 1_048_576, 1e-3) == 1_048_576_000.0 * 6 / 4
  assert collectives_lib.busbw('all-gather', 8, 1_048_576, 1e-3) == 1_048_576_000.0 * 7 / 8
  assert collectives_lib.busbw('reduce-scatter', 2, 1_048_576, 2e-3) == 524_288_000.0 / 2
  # busbw x t is what one rank sends in a ring (hlo.bytes_per_device, the plan's bytes): the
  # all-reduce's buffer S, the all-gather's result S, the reduce-scatter's result S / n.
  s = 1 << 20
  for n in (2, 4, 8):
    assert hlo.bytes_per_device('all-reduce', s, n) == pytest.approx(
        s * costmodel.bus_factor('all-reduce', n), rel=1e-15)
    assert hlo.bytes_per_device('all-gather', s, n) == pytest.approx(
        s * costmodel.bus_factor('all-gather', n), rel=1e-15)
    assert hlo.bytes_per_device('reduce-scatter', s // n, n) == pytest.approx(
        s * costmodel.bus_factor('reduce-scatter', n), rel=1e-15)
  assert collectives_lib.group_sizes(8) == [2, 4, 8]
  assert collectives_lib.group_sizes(6) == [2, 4, 6] and collectives_lib.group_sizes(1) == []
  assert collectives_lib.message_sizes(1024, 1 << 20, 4) == [1024, 4096, 16384, 65536, 262144,
                                                            1 << 20]


@pytest.fixture(scope='module')
def measured_links():
  """A real measurement on 2 and 4 of the test process's 8 simulated CPU devices, tiny sizes."""
  lines = []
  found = collectives_lib.measure(jax.devices()[:4], min_bytes=1024, max_bytes=4096, factor=4,
                                  warmup=1, iters=2, log=lines.append)
  return found, lines


def test_a_measurement_on_2_and_4_cpu_devices_is_consistent_and_its_file_loads(measured_links,
                                                                               tmp_path):
  found, lines = measured_links
  entries = found['collectives']
  assert [(e['kind'], e['group_size']) for e in entries] == [
      (k, g) for g in (2, 4) for k in ('all-reduce', 'all-gather', 'reduce-scatter')]
  for e in entries:
    factor = costmodel.bus_factor(e['kind'], e['group_size'])
    assert e['platform'] == 'cpu' and e['device_kind'] and (e['warmup'], e['iters']) == (1, 2)
    assert e['sizes'] == [1024, 4096]  # whole float32s per rank of 2 and 4: as asked
    for s, t, a, b in zip(e['sizes'], e['seconds'], e['algbw'], e['busbw']):
      assert t > 0 and a == s / t and b == a * factor
  assert 'groups [2, 4]' in found['collectives_note'] and 'mean of 2' in found['collectives_note']
  assert len(lines) == 4  # one line per size and group
  path = tmp_path / 'calibration.json'
  path.write_text(json.dumps(dict(_minimal(), runs=[], **found)))
  assert calibration_lib.load_calibration(str(path))['collectives'] == entries


def test_one_device_measures_no_collective_and_says_why():
  found = collectives_lib.measure(jax.devices()[:1], log=lambda _: None)
  assert found['collectives'] == [] and 'a group needs 2' in found['collectives_note']


def _with_links() -> dict:
  """_minimal() with a measured all-reduce over 8 H200s: 50 GB/s busbw at 1 MiB, 360 at 64 MiB."""
  return dict(_minimal(), collectives=[
      {'kind': 'all-reduce', 'group_size': 8, 'device_kind': 'NVIDIA H200', 'platform': 'gpu',
       'sizes': [1 << 20, 64 << 20], 'seconds': [1.75 * (1 << 20) / 50e9,
                                                 1.75 * (64 << 20) / 360e9],
       'algbw': [50e9 / 1.75, 360e9 / 1.75], 'busbw': [50e9, 360e9]}])


@pytest.mark.parametrize('change, words', [
    (lambda c: c['collectives'][0].update(kind='broadcast'), 'collectives[0].kind'),
    (lambda c: c['collectives'][0].update(group_size=1), 'collectives[0].group_size: 1'),
    (lambda c: c['collectives'][0].pop('busbw'), 'collectives[0].busbw: missing'),
    (lambda c: c['collectives'][0].update(device_kind=''), 'collectives[0].device_kind'),
    (lambda c: c['collectives'][0]['seconds'].__setitem__(1, 0.0), 'collectives[0].seconds[1]'),
    (lambda c: c['collectives'][0].update(algbw=[1e9]), 'collectives[0].algbw: 1 values'),
    (lambda c: c['collectives'][0].update(sizes=[1 << 26, 1 << 20]),
     'collectives[0].sizes: [67108864, 1048576] is not ascending'),
    (lambda c: c['collectives'].append(copy.deepcopy(c['collectives'][0])),
     'collectives[1]: a second entry of all-reduce over 8'),
    (lambda c: c.update(collectives={'all-reduce': []}), 'collectives: '),
])
def test_the_loader_refuses_a_wrong_collectives_entry_in_one_line(tmp_path, change, words):
  path = tmp_path / 'calibration.json'
  path.write_text(json.dumps(_with_links()))
  assert calibration_lib.load_calibration(str(path))['collectives'][0]['group_size'] == 8
  broken = _with_links()
  change(broken)
  path.write_text(json.dumps(broken))
  with pytest.raises(calibration_lib.CalibrationError) as e:
    calibration_lib.load_calibration(str(path))
  assert words in str(e.value) and '\n' not in str(e.value) and str(path) in str(e.value)


def test_the_plan_uses_the_measured_busbw_for_the_same_chip_by_hand():
  """collective_seconds with the table measured_bus_bandwidth puts in the profile: the busbw at
  the largest measured S <= the instruction's S, no latency added; the profile's figure (370 GB/s
  busbw, 2.5 us a ring step inside a DGX H200) below the smallest size, for another group size
  or kind, and between nodes."""
  h200 = targets.load('gpu-h200')
  lines = []
  profile, source = calibration_lib.measured_bus_bandwidth(_with_links(), h200, lines.append)
  assert profile.inside['measured_bus_bandwidth'] == {
      'all-reduce': {8: [[1 << 20, 50e9], [64 << 20, 360e9]]}}
  assert 'measured busbw of all-reduce over [8] NVIDIA H200' in source and lines == [
      f'links: {source}']
  mib = 1 << 20

  def seconds(kind, g, size, crosses='inside', on=profile):
    ring = size * costmodel.bus_factor(kind, g)  # the plan's bytes per device
    return costmodel.collective_seconds({'kind': kind, 'group_size': g,
                                         'bytes_per_device': ring, 'crosses': crosses}, on)

  assert seconds('all-reduce', 8, 2 * mib) == pytest.approx(1.75 * 2 * mib / 50e9, rel=1e-12)
  assert seconds('all-reduce', 8, 64 * mib) == pytest.approx(1.75 * 64 * mib / 360e9, rel=1e-12)
  assert seconds('all-reduce', 8, 100 * mib) == pytest.approx(1.75 * 100 * mib / 360e9,
                                                              rel=1e-12)
  profile_8 = lambda size: 1.75 * size / 370e9 + 14 * 2.5e-6
  assert seconds('all-reduce', 8, mib // 2) == pytest.approx(profile_8(mib // 2), rel=1e-12)
  assert seconds('all-reduce', 4, 2 * mib) == pytest.approx(1.5 * 2 * mib / 370e9 + 6 * 2.5e-6,
                                                            rel=1e-12)
  assert seconds('all-gather', 8, 2 * mib) == pytest.approx(0.875 * 2 * mib / 370e9
                                                            + 7 * 2.5e-6, rel=1e-12)
  assert seconds('all-reduce', 8, 2 * mib, crosses='between') == pytest.approx(
      1.75 * 2 * mib / 46e9 + 14 * 5e-6, rel=1e-12)
  # Without a table (no calibration, or the feature off): the profile's formula, unchanged.
  assert seconds('all-reduce', 8, 2 * mib, on=h200) == pytest.approx(profile_8(2 * mib),
                                                                     rel=1e-12)


@pytest.mark.parametrize('device_kind, platform, target', [
    ('cpu', 'cpu', 'gpu-h200'),  # a CPU's memory copies: never a GPU plan's links
    ('NVIDIA H100 80GB HBM3', 'gpu', 'gpu-h200'),  # another chip
    ('NVIDIA A100-SXM4-80GB', 'gpu', 'gpu-h100'),
    ('TPU v5 lite', 'tpu', 'tpu-v5p'),
])
def test_collectives_of_another_platform_or_chip_are_ignored_with_a_line(device_kind, platform,
                                                                         target):
  calibration = _with_links()
  calibration['collectives'][0].update(device_kind=device_kind, platform=platform)
  profile = targets.load(target)
  lines = []
  same, source = calibration_lib.measured_bus_bandwidth(calibration, profile, lines.append)
  assert same is profile and 'measured_bus_bandwidth' not in same.inside
  assert len(lines) == 1 and 'ignored' in lines[0] and device_kind in lines[0]
  assert source.startswith("the profile's (the calibration's collectives ignored")


@pytest.mark.parametrize('device_kind, target', [
    ('NVIDIA H200', 'gpu-h200'), ('NVIDIA H100 80GB HBM3', 'gpu-h100'),
    ('NVIDIA A100-SXM4-80GB', 'gpu-a100'), ('TPU v5 lite', 'tpu-v5e'), ('TPU v4', 'tpu-v4')])
def test_a_device_kind_is_its_profiles_chip(device_kind, target):
  assert targets.same_device(device_kind, targets.load(target).compiler,
                                     targets.load(target)) == ''


def test_run_plan_puts_the_measured_links_in_the_profile_and_the_label(monkeypatch, tmp_path):
  """run_plan's wiring, the compiler stood in for: a collectives-only file keeps the assumed
  efficiency (no run to fit) and hands make_plan the profile with the measured table."""
  seen = {}

  def make_plan(config, profile, counts, **kwargs):
    seen.update(profile=profile, **kwargs)
    return {'label': 'PREDICTED', 'runs': []}

  # run_plan sets a compile-only process up (the environment, jax_platforms): not this one's.
  monkeypatch.setattr(plan_lib.quiet, 'compile_only_environment', lambda: None)
  monkeypatch.setattr(jax.config, 'update', lambda *args: None)
  monkeypatch.setattr(plan_lib.targets_lib, 'compiler_missing', lambda profile: None)
  monkeypatch.setattr(plan_lib, 'make_plan', make_plan)
  monkeypatch.setattr(plan_lib, 'write', lambda result, out: None)
  monkeypatch.setattr(plan_lib, 'markdown', lambda result: '')
  calibration = dict(_with_links(), runs=[])
  config = published.load_config_file(TINY)
  result = plan_lib.run_plan(config, 'gpu-h200', [8], None, out=str(tmp_path),
                             calibration=calibration)
  assert seen['efficiency'] == plan_lib.ASSUMED_EFFICIENCY
  assert seen['efficiency_source'] == 'assumed'
  assert seen['profile'].inside['measured_bus_bandwidth']['all-reduce'][8][1] == [64 << 20,
                                                                                  360e9]
  assert result['links_source'].startswith('measured busbw of all-reduce')
  assert result['label'] == f'PREDICTED; links: {result["links_source"]}'


def test_the_command_refuses_bad_collective_flags_before_any_work(tmp_path):
  out = tmp_path / 'calibration.json'
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.calibrate', '--collectives', '--configs=',
       '--collective_kinds=all-reduce,broadcast', f'--out={out}'],
      cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and '--collective_kinds=all-reduce,broadcast' in done.stderr
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.calibrate', '--configs=', f'--out={out}'],
      cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120)
  assert done.returncode == 2 and 'allowed with --collectives' in done.stderr
  assert not out.exists()
