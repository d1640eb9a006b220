"""The plan replayed against the published AlexNet measurements (pods/validation.py), and the
plan command's calibration.

The replay compiles each case for its GPU target (seconds a program), so it needs the CUDA plugin
of requirements-targets.txt: it skips without it, unless ALEXNET_REQUIRE_TARGETS=1 (CI's second
stage, where it must run). There it asserts that every prediction stays within the accuracy
targets, except the points docs/validation.md names as missed, which must not get worse: a change
to the model that loses accuracy fails CI.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = os.environ.get('ALEXNET_REQUIRE_TARGETS') == '1'


def _have_gpu_compiler() -> bool:
  for package in ('jax_plugins.xla_cuda12', 'jax_plugins.xla_cuda13'):
    try:
      if importlib.util.find_spec(package) is not None:
        return True
    except ModuleNotFoundError:
      pass
  return False


needs_gpu_compiler = (lambda f: f) if REQUIRED else pytest.mark.skipif(
    not _have_gpu_compiler(), reason='the CUDA plugin is not installed (requirements-targets.txt)')

# Points the model misses, as docs/validation.md says and why, (case, devices): the largest
# |error| and |scaling gap| they may reach (what the replay of 2026-12-08 gave, +0.03, or the
# target where the point meets it). Anything not listed must meet the targets; a listed point
# may improve, never fall further.
KNOWN_MISSES = {
    # One point, not calibrated by design: predicted at the assumed efficiency (+27 %); the case
    # states the efficiency it implies instead.
    ('alexnet2012', 2): (0.30, 0.08),
    # Eight K20s across two PCIe groups, cuda-convnet2's exchange staged through host memory on
    # the link graph: +11.6 % (met), scaling 0.87 against 0.78 (0.09, missed).
    ('krizhevsky2014', 8): (0.15, 0.12),
    # The DGX-1's eight P100s, NCCL 1's rank-order ring with two hops through host memory, one
    # call per tensor: +14.7 % (met), scaling 0.86 against 0.75 (0.11, missed).
    ('tf_benchmarks2017', 8): (0.15, 0.14),
}


def _plan(*args, cwd=ROOT):
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.plan', *args], cwd=cwd,
                        capture_output=True, text=True, timeout=900)


def test_a_malformed_case_file_is_refused_in_one_line_naming_the_field(tmp_path):
  """Before anything is compiled: exit 2, one line, the file and the field."""
  from alexnet_jax.pods import published  # pylint: disable=g-import-not-at-top
  good = open(os.path.join(published.CASES, 'tf_benchmarks2017.toml')).read()
  cases = tmp_path / 'cases'
  cases.mkdir()
  (cases / 'broken.toml').write_text(good.replace('batch_per_device', 'batch_per_gpu'))
  done = _plan('--published', f'--cases={cases}', f'--out={tmp_path / "out"}')
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if 'broken.toml' in line]
  assert len(errors) == 1 and 'batch_per_device' in errors[0], done.stderr[-2000:]
  assert 'Traceback' not in done.stderr
  assert not (tmp_path / 'out').exists()  # nothing written


def test_a_case_whose_config_builds_another_network_is_refused_before_compiling(tmp_path):
  """The replay checks every case's [network] against its config before anything is compiled
  (no compiler needed to see it): exit 2, one line naming the file, the field and both values;
  the dtype alone is applied, not refused."""
  from alexnet_jax.pods import published  # pylint: disable=g-import-not-at-top
  good = open(os.path.join(published.CASES, 'tf_benchmarks2017.toml')).read()
  assert 'lrn = false' in good and 'dtype = "float32"' in good
  cases = tmp_path / 'cases'
  cases.mkdir()
  (cases / 'other.toml').write_text(good.replace('lrn = false', 'lrn = true')
                                    .replace('dtype = "float32"', 'dtype = "bfloat16"'))
  done = _plan('--published', f'--cases={cases}', f'--out={tmp_path / "out"}')
  assert done.returncode == 2, done.stderr[-2000:]
  errors = [line for line in done.stderr.splitlines() if 'other.toml' in line]
  assert len(errors) == 1, done.stderr[-2000:]
  assert ('network.lrn: published True, configs/tf_cnn_alexnet.py builds False' in errors[0]
          and 'dtype: published' not in errors[0]), errors[0]
  assert 'Traceback' not in done.stderr and 'compiling' not in done.stdout
  assert not (tmp_path / 'out').exists()


def test_the_plan_command_without_a_target_says_what_to_give(tmp_path):
  done = _plan(f'--out={tmp_path}', '--config=configs/tiny.py')
  assert done.returncode == 2 and '--target' in done.stderr and 'Traceback' not in done.stderr


@pytest.fixture(scope='module')
def replayed(tmp_path_factory):
  """The shipped cases, replayed once through `python -m alexnet_jax.plan --published`."""
  out = tmp_path_factory.mktemp('validation')
  done = _plan('--published', f'--out={out}', f'--cache_dir={out / "cache"}')
  assert done.returncode == 0, done.stderr[-3000:]
  return out, json.load(open(out / 'validation.json'))


@needs_gpu_compiler
def test_every_published_case_is_replayed_and_written(replayed):
  out, result = replayed
  from alexnet_jax.pods import published  # pylint: disable=g-import-not-at-top
  keys = {c.key for c in published.load_all()}
  assert {c['key'] for c in result['cases']} == keys
  assert {'alexnet2012', 'krizhevsky2014', 'tf_benchmarks2017'} <= keys
  md = open(out / 'validation.md').read()
  for c in result['cases']:
    assert c['key'] in md
    # The software stack's collective algorithm, in the table and with its source.
    assert c['collective_algorithm'] in published.ALGORITHMS
    assert f'| {c["key"]} | {c["collective_algorithm"]} |' in md
    assert c['algorithm_source'] in md and c['dtype'] == 'float32'
    # Each prediction is published images/s against the compiled program's step, by hand.
    for stage in [c['before']] + c['stages']:
      for ips, m, err in zip(stage['predicted_images_per_second'],
                             c['published_images_per_second'], stage['errors']):
        assert err == pytest.approx(ips / m - 1)
  assert os.path.getsize(out / 'validation.png') > 1000


@needs_gpu_compiler
def test_the_calibrated_point_is_reproduced_and_the_rest_meet_the_targets(replayed):
  _, result = replayed
  for c in result['cases']:
    after = c['after']
    if c['calibrate']:
      # The fitted efficiency reproduces the smallest published point (to the bisection).
      assert after['errors'][0] == pytest.approx(0.0, abs=1e-6)
      assert after['efficiency_source'].startswith('calibrated')
    assert after['order_kept'], c['key']  # bigger machines are predicted faster, as published
    for i, n in enumerate(c['devices']):
      if after['fitted'][i]:
        continue
      error_bound, gap_bound = KNOWN_MISSES.get((c['key'], n), (result['error_target'],
                                                                 result['scaling_target']))
      assert abs(after['errors'][i]) <= error_bound + 1e-9, (c['key'], n, after['errors'][i])
      gap = after['scaling_gap'][i]
      assert gap is None or abs(gap) <= gap_bound + 1e-9, (c['key'], n, gap)


@needs_gpu_compiler
def test_the_paper_machine_states_the_efficiency_it_implies(replayed):
  """The two GTX 580s: one published point, not calibrated: predicted at the assumed
  efficiency, and the efficiency at which the model meets 227 images/s is stated."""
  _, result = replayed
  (paper,) = [c for c in result['cases'] if c['key'] == 'alexnet2012']
  assert not paper['calibrate'] and paper['after']['efficiency_source'] == 'assumed'
  implied = paper['implied_efficiency'][0]
  assert 0 < implied < 1
  # The step falls as the efficiency rises: the prediction at the assumed efficiency is above
  # the published rate exactly when the published rate implies a lower efficiency.
  over = paper['after']['predicted_images_per_second'][0] > paper['published_images_per_second'][0]
  assert over == (implied < paper['after']['efficiency'])
  md_line = f'{implied:.3f}'
  assert md_line in open(replayed[0] / 'validation.md').read()


@needs_gpu_compiler
def test_a_calibration_file_sets_the_plans_efficiency(tmp_path):
  """plan --calibration: the efficiency is fitted so that the one-device step the file
  measured is the model's; the label says calibrated, and the plan's 1-device prediction at the
  same batch is the measured rate."""
  calibration = {'kind': 'alexnet_jax calibration', 'version': 1, 'date': '2026-12-01',
                 'device_kind': 'NVIDIA H100 80GB HBM3', 'platform': 'gpu',
                 'jax_version': '0.10.2', 'target': 'gpu-h100', 'ops': [], 'trace': None,
                 'runs': [{'config': 'configs/tiny.py', 'network': 'tiny', 'dtype': 'float32',
                           'batch_size': 64, 'images_per_second': 50000.0,
                           'step_seconds': 64 / 50000.0, 'compile_seconds': 1.0,
                           'model_flops_per_image': 1.0, 'mfu': 0.1, 'peak_flops': 1.0}]}
  path = tmp_path / 'calibration.json'
  path.write_text(json.dumps(calibration))
  done = _plan('--config=configs/tiny.py', '--target=gpu-h100', '--devices=1,8',
               '--strategies=data', '--batch_per_replica=64', f'--calibration={path}',
               f'--out={tmp_path / "plan"}', f'--cache_dir={tmp_path / "cache"}')
  assert done.returncode == 0, done.stderr[-3000:]
  plan = json.load(open(tmp_path / 'plan' / 'plan.json'))
  assert plan['efficiency_source'].startswith('calibrated')
  assert 'calibrated' in plan['label']
  one = [r for r in plan['runs'] if r['devices'] == 1][0]
  assert one['predicted_images_per_second']['with_overlap'] == pytest.approx(50000.0, rel=1e-4)
  assert plan['sensitivity']['grid']


@needs_gpu_compiler
def test_the_link_graph_stage_replays_each_stacks_algorithm_over_the_machines_links(replayed):
  """The last stage (costmodel.STAGES: the link graph and the case's algorithm) against the one
  before it: at 8 GPUs, where the K20s' groups and the DGX-1's quads meet through host memory,
  both the error and the scaling gap against the published runs shrink; the 2-GPU points, inside
  one peer group or NVLink pair, stay within 1 %."""
  _, result = replayed
  assert result['stages'][-1] == 'link graph and algorithm'
  cases = {c['key']: c for c in result['cases']}
  for key in ('krizhevsky2014', 'tf_benchmarks2017'):
    c = cases[key]
    before, after = c['stages'][-2], c['stages'][-1]
    eight, two = c['devices'].index(8), c['devices'].index(2)
    assert abs(after['errors'][eight]) < abs(before['errors'][eight]), key
    assert abs(after['scaling_gap'][eight]) < abs(before['scaling_gap'][eight]), key
    assert after['predicted_images_per_second'][two] == pytest.approx(
        before['predicted_images_per_second'][two], rel=0.01), key
