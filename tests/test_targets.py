"""The pod plan: hardware profiles, the prediction model, and (where the optional compilers of
requirements-targets.txt are installed) compiling for a TPU slice and GPU nodes this machine does
not have. Reading the compilers' programs (HLO text in the forms XLA:GPU and TPU print):
test_hlo.py.

The compile tests skip without the compilers, unless ALEXNET_REQUIRE_TARGETS=1 (CI's second
stage installs them and sets it, so there they must run)."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from alexnet_jax.runtime import quiet
from alexnet_jax.pods import costmodel
from alexnet_jax.program import hlo
from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import plan as plan_lib
from alexnet_jax.pods import targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED = os.environ.get('ALEXNET_REQUIRE_TARGETS') == '1'


def _have(package: str) -> bool:
  try:
    return importlib.util.find_spec(package) is not None
  except ModuleNotFoundError:
    return False


HAVE_TPU, HAVE_GPU = _have('libtpu'), _have('jax_plugins.xla_cuda12')


def needs(have: bool, what: str):
  if REQUIRED:
    return lambda f: f  # CI's target stage: a missing compiler fails the test
  return pytest.mark.skipif(not have, reason=f'{what} not installed (requirements-targets.txt)')


# --- Profiles: data with sources. ---

def test_every_shipped_profile_loads_with_a_source_for_every_number():
  names = list(targets.known())
  assert {'tpu-v4', 'tpu-v5e', 'tpu-v5p', 'tpu-v6e', 'gpu-a100', 'gpu-h100', 'gpu-h200',
          'gtx580'} <= set(names)
  for name in names:
    p = targets.load(name)
    for field in targets.NUMBERS + ('inside', 'between'):
      assert p.sources.get(field, '').strip(), f'{name}: {field} has no source'
    assert p.per_device('peak_bf16_flops') > 0 and p.per_device('memory_bytes') > 0
    if p.compiler == 'gpu':
      assert 'device_description_str' in p.target_config and 'core_count' in p.target_config
    else:  # every slice shape holds the chip count it is filed under
      for chips, shape in p.shapes.items():
        assert math.prod(int(x) for x in shape.split('x')) == chips, (name, chips, shape)


def test_the_paper_machine_is_compiled_as_another_target():
  p = targets.load('gtx580')
  assert p.compiled_as == 'gpu-a100' and p.compiler == 'gpu'
  assert p.numbers['memory_bytes'] == 3 * 2 ** 30
  assert p.numbers['peak_fp32_flops'] == pytest.approx(512 * 1.544e9 * 2, rel=1e-3)
  # Section 7 of the paper: 90 epochs of 1.2M images in five to six days.
  assert 90 * 1.2e6 / (6 * 86400) <= p.reported_images_per_second <= 90 * 1.2e6 / (5 * 86400)


def test_a_profile_of_ones_own_from_a_file(tmp_path):
  path = tmp_path / 'mine.toml'
  path.write_text('[my-gpu]\nname = "My GPU"\ncompile_as = "gpu-h100"\n'
                  'peak_bf16_flops = 1e15\nfp32_matmul_flops = 5e14\npeak_fp32_flops = 6e13\n'
                  'memory_bytes = 96e9\nmemory_bandwidth = 4e12\nhost_cpus_per_chip = 16\n'
                  'inside = { name = "fabric", wiring = "switch", bandwidth = 4e11, latency = 3e-6 }\n'
                  'between = { name = "net", bandwidth = 4e10, latency = 8e-6 }\n')
  p = targets.load(str(path))
  assert (p.key, p.compiler, p.compiled_as) == ('my-gpu', 'gpu', 'gpu-h100')
  assert p.numbers['memory_bytes'] == 96e9 and 'H100' in p.target_config
  bad = tmp_path / 'bad.toml'
  bad.write_text('[x]\nname = "x"\ncompile_as = "gpu-h100"\n')
  with pytest.raises(targets.TargetError, match='peak_bf16_flops: missing'):
    targets.load(str(bad))
  bad.write_text(path.read_text().replace('gpu-h100', 'gpu-h900'))
  with pytest.raises(targets.TargetError, match='compile_as'):
    targets.load(str(bad))
  with pytest.raises(targets.TargetError, match='unknown target'):
    targets.load('tpu-v9')


def test_a_profile_file_is_refused_by_field_in_one_line(tmp_path):
  good = ('[my-tpu]\nname = "My TPU"\ncompile_as = "tpu-v5e"\n'
          'peak_bf16_flops = 1e15\nfp32_matmul_flops = 5e14\npeak_fp32_flops = 6e13\n'
          'memory_bytes = 96e9\nmemory_bandwidth = 4e12\nhost_cpus_per_chip = 16\n'
          'inside = { name = "ici", wiring = "torus", ports = 4, link_bandwidth = 4.5e10, '
          'latency = 1e-6 }\nbetween = { name = "dcn", bandwidth = 3e9, latency = 1e-5 }\n')
  path = tmp_path / 'mine.toml'
  path.write_text(good)
  assert targets.load(str(path)).inside['ports'] == 4
  for old, new, words in [
      ('ports = 4', 'ports = "four"', "inside.ports: 'four' is not an integer >= 1"),
      ('ports = 4, ', '', 'inside.ports: missing; a torus link gives ports and link_bandwidth'),
      ('wiring = "torus"', 'wiring = "ring"', "inside.wiring: 'ring'; expected one of"),
      ('memory_bytes = 96e9', 'memory_bytes = -1', 'memory_bytes: -1 is not a positive number'),
      ('latency = 1e-5', 'latency = 1e-5, bandwith = 3', 'between: unknown key bandwith'),
  ]:
    assert old in good
    path.write_text(good.replace(old, new))
    with pytest.raises(targets.TargetError) as e:
      targets.load(str(path))
    assert words in str(e.value) and "profile 'my-tpu'" in str(e.value), str(e.value)
    assert '\n' not in str(e.value)


def test_topologies_for_device_counts():
  h100, v5e, v4 = targets.load('gpu-h100'), targets.load('tpu-v5e'), targets.load('tpu-v4')
  assert [targets.topology_name(h100, n) for n in (2, 8, 16, 32)] == [
      '1x1x2', '1x1x8', '1x2x8', '1x4x8']
  with pytest.raises(targets.TargetError, match='multiple of 8'):
    targets.topology_name(h100, 12)
  assert [targets.topology_name(v5e, n) for n in (2, 4, 16, 64, 256)] == [
      'v5e:2x2', 'v5e:2x2', 'v5e:4x4', 'v5e:8x8', 'v5e:16x16']
  assert targets.topology_name(v4, 16) == 'v4:2x2x2'  # two devices (TensorCores) per v4 chip
  assert targets.topology_name(v5e, 8, slices=2) == 'v5e:2x2'
  with pytest.raises(targets.TargetError, match='no slice shape'):
    targets.topology_name(v5e, 512)


def test_compile_only_command_lines():
  assert quiet.compile_only(['x', '--target=tpu-v5e'])
  assert quiet.compile_only(['x', '--target', 'gpu-h100'])
  assert not quiet.compile_only(['x', '--target='])
  assert not quiet.compile_only(['x', '--devices=2'])
  # Measuring on this machine's chips runs on them: not compile-only.
  assert not quiet.compile_only(['x', '--target=gpu-h100', '--measure_steps=3'])
  assert quiet.compile_only(['x', '--target=gpu-h100', '--measure_steps=0'])


def test_measured_beside_predicted_where_the_devices_are_here():
  """measure_beside runs the planned step on devices this process has (on a GPU or TPU
  machine, the target's own; here the simulated CPUs stand in) and puts measured images/s
  beside the predicted, as batch / the timed step."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  plan = {'batch_per_replica': 4, 'runs': [
      {'strategy': 'towers', 'devices': 2, 'predicted_images_per_second': {'with_overlap': 1.0}},
      {'strategy': 'data', 'devices': 64, 'predicted_images_per_second': {'with_overlap': 1.0}}]}
  plan_lib.measure_beside(plan, tiny.get_config(), jax.devices()[:2], steps=2, log=lambda _: None)
  towers, data = plan['runs']
  assert towers['measured_step_seconds'] > 0
  assert towers['measured_images_per_second'] == pytest.approx(4 / towers['measured_step_seconds'])
  assert towers['measured_on'] == jax.devices()[0].device_kind
  assert data['measured_images_per_second'] is None  # 64 devices are not here


# --- The prediction model, by hand. ---

def _ins(kind, g, nbytes, crosses='inside', extents=(), asynchronous=False, overlap=0):
  return {'kind': kind, 'group_size': g, 'bytes_per_device': nbytes, 'crosses': crosses,
          'extents': list(extents), 'asynchronous': asynchronous, 'overlap_ops': overlap}


def test_collective_time_by_ring_and_torus_formulas():
  h100, v5e = targets.load('gpu-h100'), targets.load('tpu-v5e')
  mb = 1e8
  seconds = costmodel.collective_seconds
  # Inside a DGX node: NCCL's 370 GB/s bus bandwidth over NVLink, 2.5 us per step; an
  # all-reduce over 8 takes 2 x 7 steps.
  assert seconds(_ins('all-reduce', 8, mb), h100) == pytest.approx(mb / 370e9 + 14 * 2.5e-6)
  # The first model: the datasheet's 450 GB/s.
  assert seconds(_ins('all-reduce', 8, mb), h100, costmodel.FIRST) == pytest.approx(
      mb / 450e9 + 14 * 2.5e-6)
  # Between nodes: 46 GB/s per NDR NIC, 5 us per step.
  assert seconds(_ins('all-gather', 16, mb, 'between'), h100) == pytest.approx(
      mb / 46e9 + 15 * 5e-6)
  # A 4x4 v5e group spans two torus axes of 4, which have no wraparound (v5e wraps axes of
  # 16 only): one link each, 45 GB/s a link; steps (4-1)+(4-1) per round.
  assert seconds(_ins('all-reduce', 16, mb, extents=(4, 4)), v5e) == pytest.approx(
      mb / (2 * 45e9) + 2 * 6 * 1e-6)
  # Two chips on one axis of 2: one link.
  assert seconds(_ins('all-gather', 2, mb, extents=(2,)), v5e) == pytest.approx(mb / 45e9 + 1e-6)
  assert seconds(_ins('collective-permute', 2, mb), h100) == pytest.approx(mb / 370e9 + 2.5e-6)
  assert seconds(_ins('all-reduce', 1, mb), h100) == 0.0


def test_prediction_by_hand():
  h100 = targets.load('gpu-h100')
  entry = {'compiled_flops_per_device': None, 'analytic_flops_per_device': 4e12,
           'heavy_ops': 10, 'batch_size': 1024, 'devices': 8, 'augment_on': 'device',
           'memory_per_device': {'peak_memory_bytes': 90e9},
           'instructions': {'a': _ins('all-reduce', 8, 1e9, asynchronous=True, overlap=5),
                            'b': _ins('all-gather', 8, 1e8)}}
  out = plan_lib.predict(entry, h100, efficiency=0.5, dtype='bfloat16',
                         input_per_core={'host': 300.0, 'device': 400.0})
  compute = 4e12 / (989e12 * 0.5)
  a = 1e9 / 370e9 + 14 * 2.5e-6  # NCCL's bus bandwidth and the profile's latency per step
  b = 1e8 / 370e9 * 1 + 7 * 2.5e-6
  assert out['predicted_compute_seconds'] == pytest.approx(compute)
  assert out['predicted_communication_seconds'] == pytest.approx(a + b)
  # No ops listed: the share rule, half the heavy ops lie between a's start and done.
  hidden = min(a, compute * 5 / 10)
  assert out['predicted_step_seconds']['no_overlap'] == pytest.approx(compute + a + b)
  assert out['predicted_step_seconds']['with_overlap'] == pytest.approx(compute + a + b - hidden)
  assert out['predicted_images_per_second']['with_overlap'] == pytest.approx(
      1024 / (compute + a + b - hidden))
  assert out['fits'] is False and out['memory_headroom_bytes'] == pytest.approx(-10e9)
  assert out['flops_source'] == 'formula'
  assert out['input_images_per_second'] == pytest.approx(400 * 28 * 8)
  assert out['limited_by'] == ('input' if 400 * 28 * 8 < 1024 / (compute + a + b - hidden)
                               else 'chips')
  # float32 runs at the TF32 rate JAX's default precision uses.
  f32 = plan_lib.predict(entry, h100, 0.5, 'float32', None)
  assert f32['predicted_compute_seconds'] == pytest.approx(4e12 / (494.5e12 * 0.5))
  assert 'input_images_per_second' not in f32


# --- Compiling for hardware this machine does not have. ---

def _comms(tmp_path, *args, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  env.pop('XLA_FLAGS', None)
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.comms', '--config=configs/tiny.py',
                         f'--out={tmp_path}', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=1200)


@needs(HAVE_GPU, 'the CUDA plugin')
def test_search_compiles_what_it_finds_whole_and_caches_it(tmp_path):
  """plan --search on the K20s (tiny config, 4 devices): the found spec is at least as fast as
  each of the five costed the same way, runs on the net, is compiled whole to the bytes of its
  formula layer by layer, and so are the five beside it; a second search only lowers them (the
  compiles are cached)."""
  from alexnet_jax.core import layerwise  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  args = ['--search', '--config=configs/tiny.py', '--target=gpu-k20-pcie', '--devices=4',
          '--batch_per_replica=8', f'--cache_dir={tmp_path / "cache"}', '--search_compile=1']
  run = lambda out: subprocess.run([sys.executable, '-m', 'alexnet_jax.plan', f'--out={out}',
                                    *args], cwd=ROOT, capture_output=True, text=True,
                                   timeout=1200, env={k: v for k, v in os.environ.items()
                                                      if k != 'XLA_FLAGS'})
  done = run(tmp_path / 'a')
  assert done.returncode == 0, done.stderr[-3000:]
  size = json.load(open(tmp_path / 'a' / 'search.json'))['sizes'][0]
  found = size['found'][0]
  assert found['additive_seconds'] <= min(size['hand_written'].values()) * (1 + 1e-9)
  config = tiny.get_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  spec = layerwise.load(str(tmp_path / 'a' / found['spec_file']))
  assert spec.num_devices == 4 and layerwise.problems(spec, net) == []
  whole = found['whole']
  for layer in hlo.LAYERS:
    assert whole['bytes_by_layer'].get(layer, 0.0) == pytest.approx(
        whole['formula_bytes_by_layer'][layer], rel=0.01), layer
  assert whole['step_seconds']['no_overlap'] > 0 and not whole['cached']
  # The five that fit 4 devices, compiled whole at the same global batch, each to its formula.
  five = size['hand_written_whole']
  assert set(five) == {'data', 'hybrid', 'towers_data', 'fsdp'}
  for name, w in five.items():
    for layer in hlo.LAYERS:
      assert w['bytes_by_layer'].get(layer, 0.0) == pytest.approx(
          w['formula_bytes_by_layer'][layer], rel=0.01), (name, layer)
    assert w['gap'] == pytest.approx(
        w['step_seconds']['no_overlap'] / size['hand_written'][name] - 1)
  fastest = min(w['step_seconds']['no_overlap'] for w in five.values())
  assert size['gain_whole'] == pytest.approx(fastest / whole['step_seconds']['no_overlap'])
  assert 'gain (whole)' in open(tmp_path / 'a' / 'search.md').read()
  assert os.path.getsize(tmp_path / 'a' / 'search.png') > 1000
  again = run(tmp_path / 'b')
  assert again.returncode == 0 and 'compiling 0 whole programs (5 cached)' in again.stdout


@needs(HAVE_GPU, 'the CUDA plugin')
def test_search_costs_compiled_per_layer_move_the_formulas_bytes_and_are_cached(tmp_path):
  """--search_costs=compiled on the K20s (tiny config, 2 devices): every layer candidate's
  program moves the bytes of its gradient exchange in the spec's formula, every resharding
  edge's program those of the resharding (formula.layer_collectives, which test_layerwise holds
  whole programs to); the search over them reports it used them; a second search of the same
  target compiles nothing. Run in a fresh interpreter: the CUDA plugin registers its topology
  only in a process whose JAX has not started a backend, as the plan command's has not."""
  if os.environ.get('ALEXNET_INNER_TEST') != '1':
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
         f'{os.path.abspath(__file__)}::{sys._getframe().f_code.co_name}',
         '--basetemp', str(tmp_path / 'inner')],
        cwd=ROOT, env=dict(os.environ, ALEXNET_INNER_TEST='1'), capture_output=True, text=True)
    assert done.returncode == 0 and '1 passed' in done.stdout, done.stdout[-4000:]
    return
  _search_costs_compiled(tmp_path)


def _search_costs_compiled(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.pods import layercost, search  # pylint: disable=g-import-not-at-top
  from alexnet_jax.program import formula  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  quiet.compile_only_environment()
  jax.config.update('jax_platforms', 'cpu')  # as the plan: the CUDA plugin only compiles
  config = tiny.get_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  profile = targets.load('gpu-k20-pcie')
  costmodel.compute_peak(profile, 'float32')
  devices, mesh, batch = targets.devices(profile, 2), (('x', 2),), 16
  topology = targets.topology_name(profile, 2)
  make = lambda: layercost.Compiled(net, mesh, devices, profile, topology, 0.4, 'float32', batch,
                                    config.image_size, str(tmp_path / 'cache'))
  options = {l: search.candidates(net, mesh, l, batch)[0] for l in search.LAYERS}
  zeros = {l: [0.0] * len(options[l]) for l in search.LAYERS}
  compiled = make()
  nodes, edges = layercost.costs(compiled, options, zeros)
  assert compiled.counts[1] == 0 and compiled.counts[0] > 0
  moved = lambda program: sum(c.bytes_per_device for c in layercost.collectives(
      hlo.Module(program.compiled['hlo']), 2))
  want = lambda prev, layer, s, part: sum(b for p, _, _, b in formula.layer_collectives(
      net, config.image_size, batch, dict(mesh), prev, layer, s, 4, 4) if p == part)
  exchanged = 0.0
  for layer in search.LAYERS:
    for s in options[layer]:
      exchanged += want(None, layer, s, 'params')
      assert moved(compiled.node(layer, s, 0.0)) == pytest.approx(
          want(None, layer, s, 'params'), rel=0.01), (layer, s)
  bad = []
  for k in range(1, len(search.LAYERS)):
    layer, before = search.LAYERS[k], search.LAYERS[k - 1]
    for a in options[before]:
      for b in options[layer]:
        got, w = moved(compiled.edge(layer, a, b)), want(a, layer, b, 'reshard')
        if got != pytest.approx(w, rel=0.01):
          bad.append((layer, search.describe(search.layerwise.Spec(mesh, ((before, a), (layer, b)))), got, w))
  assert not bad, '\n'.join(map(str, bad))
  assert exchanged > 0 and all(t > 0 for row in nodes for t in row)
  found = search.search_mesh(net, mesh, search.Coster(profile, mesh, devices, topology, 0.4,
                                                      'float32'),
                             batch, config.image_size, math.inf, 4, keep=1, compiled=make())
  assert found['costs'] == f'compiled (0 compiled, {compiled.counts[0]} cached)'
  assert found['best']


@pytest.mark.skipif(HAVE_TPU or HAVE_GPU or REQUIRED, reason='the compilers are installed')
def test_without_the_compilers_a_target_says_what_to_install(tmp_path):
  done = _comms(tmp_path, '--target=tpu-v5e', '--devices=4')
  assert done.returncode != 0
  assert 'pip install -r requirements-targets.txt' in done.stderr
  assert 'Traceback' not in done.stderr


@needs(HAVE_GPU, 'the CUDA plugin')
def test_gpu_nodes_compiled_quietly_and_cached(tmp_path):
  cache = tmp_path / 'cache'
  args = ['--target=gpu-h100', '--devices=8,16', '--strategies=data,towers',
          f'--cache_dir={cache}', '--batch_per_replica=16']
  done = _comms(tmp_path / 'a', *args)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr == ''  # the plugin's and TensorFlow's start-up lines are held back
  plan = json.load(open(tmp_path / 'a' / 'plan.json'))
  assert plan['target'] == 'gpu-h100' and plan['profile']['numbers']['memory_bytes'] == 80e9
  runs = {(r['strategy'], r['devices']): r for r in plan['runs']}
  assert set(runs) == {('data', 8), ('data', 16)}
  assert set(plan['skipped']) == {'towers/8', 'towers/16'}
  for (name, n), r in runs.items():
    for key in ('bytes_per_step', 'analytic_bytes_per_step', 'memory_per_device_bytes', 'fits',
                'flops_per_device', 'predicted_step_seconds', 'predicted_images_per_second'):
      assert key in r
    assert r['batch_size'] == 16 * n
    # Every layer's gradient bytes, read from the combined all-reduce, equal the formula.
    for layer in hlo.LAYERS:
      x = r['explanations']['layers'][layer]
      assert x['compiled_bytes'] == pytest.approx(x['analytic_bytes'], rel=0.01), (n, layer, x)
    assert 0 < r['memory_per_device_bytes'] < 80e9 and r['fits']
  # One node: NVLink only; two nodes: the gradient all-reduce crosses the network.
  crossing = lambda r: {i['crosses'] for i in r['instructions'].values() if i['group_size'] > 1}
  assert crossing(runs[('data', 8)]) == {'inside'}
  assert 'between' in crossing(runs[('data', 16)])
  assert (runs[('data', 8)]['predicted_communication_seconds']
          < runs[('data', 16)]['predicted_communication_seconds'])
  again = _comms(tmp_path / 'b', *args)
  assert again.returncode == 0 and again.stdout.count(': cached,') == 2
  assert json.load(open(tmp_path / 'b' / 'plan.json'))['runs'][0]['bytes_per_step'] == \
      runs[('data', 8)]['bytes_per_step']
  assert os.path.getsize(tmp_path / 'a' / 'plan.png') > 1000
  assert '| data | 16 |' in open(tmp_path / 'a' / 'plan.md').read()


@needs(HAVE_TPU, 'libtpu')
def test_tpu_slice_compiled_with_the_compilers_flops_and_towers_bytes(tmp_path):
  done = _comms(tmp_path, '--target=tpu-v5e', '--devices=2,4', '--strategies=towers,data',
                '--cache_dir=', '--batch_per_replica=8')
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stderr == ''  # libtpu told it only compiles: no worker-name complaints
  plan = json.load(open(tmp_path / 'plan.json'))
  runs = {(r['strategy'], r['devices']): r for r in plan['runs']}
  assert set(runs) == {('towers', 2), ('data', 2), ('data', 4)}
  assert 'towers/4' in plan['skipped']
  for r in runs.values():
    # XLA's FLOP count for the TPU program against the layer-table formula (which leaves out
    # LRN, pooling and the update): the same order, within a factor 2.
    assert r['flops_source'] == 'compiled'
    assert 0.5 < r['compiled_flops_per_device'] / r['analytic_flops_per_device'] < 2.0
    assert r['memory_per_device_bytes'] > 0
    for layer, x in r['explanations']['layers'].items():
      if layer in hlo.LAYERS and x['status'] == 'differs':
        assert x['notes'], (r['strategy'], layer, x)  # every difference is named
  towers = runs[('towers', 2)]['explanations']['layers']
  assert set(towers) >= {'conv3', 'fc6', 'fc7', 'fc8'}


@needs(HAVE_TPU, 'libtpu')
def test_tpu_fsdp_and_hybrid_exchange_each_array_once_as_their_formulas_count(tmp_path):
  """fsdp and hybrid compiled for a v5e 2x2: each parameter (fsdp) or activation (hybrid's fc
  layers) gathered once and its gradient summed once, read from the program against the layer
  table; so each layer's bytes, counted as the formula counts them (float32, a reduce-scatter
  where the formula has one), equal the formula. What libtpu does otherwise is named: it
  gathers in bfloat16 (the default-precision products read bfloat16) and sums some gradients
  with an all-reduce (twice a reduce-scatter's bytes) where a reduce-scatter would do."""
  done = _comms(tmp_path, '--target=tpu-v5e', '--devices=4', '--strategies=fsdp,hybrid',
                '--cache_dir=', '--batch_per_replica=8')
  assert done.returncode == 0, done.stderr[-3000:]
  _assert_each_array_exchanged_once(json.load(open(tmp_path / 'plan.json')))


def _assert_each_array_exchanged_once(plan: dict) -> None:
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.program import formula  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  table = formula.layer_table(model_lib.make_network(config.model, config.model.num_classes),
                              config.image_size)
  runs = {r['strategy']: r for r in plan['runs']}
  assert set(runs) == {'fsdp', 'hybrid'}
  for name, run in runs.items():
    n, batch = run['devices'], run['batch_size']
    for layer in hlo.LAYERS:
      mine = [c for c in run['collectives'] if c['layer'] == layer]
      # Elements a collective carries: its result's, a reduce-scatter's input's (g results).
      size = lambda c: math.prod(c['shape']) * (
          c['group_size'] if c['kind'] == 'reduce-scatter' else 1)
      leaves = table[layer]['leaves'].values()
      if name == 'fsdp':  # a leaf with an axis n divides is split (gathered); others are not
        moved = sum(math.prod(s) for s in leaves if any(d % n == 0 for d in s))
        all_reduced = [math.prod(s) for s in leaves if all(d % n for d in s)]
      elif layer.startswith('conv'):  # hybrid's convolutions: data parallel
        moved, all_reduced = 0, [math.prod(s) for s in leaves]
      else:  # hybrid fc: the whole batch's features of both towers; fc8's weights over block
        moved = batch * 2 * table[layer]['reads_per_tower']
        all_reduced = [math.prod(s) // 2 for s in leaves] if layer == 'fc8' else []
      gathered = sum(size(c) for c in mine if c['kind'] == 'all-gather')
      summed = sum(size(c) for c in mine if c['kind'] != 'all-gather')
      assert gathered == moved, (name, layer, gathered, moved)  # forward: each once
      assert summed == moved + sum(all_reduced), (name, layer, summed, moved)  # backward: once
      # Counted as the formula counts (float32; an all-reduce standing for a reduce-scatter
      # moves what the reduce-scatter would): the formula's bytes.
      as_formula = sum(
          (2 if c['kind'] == 'all-reduce' and size(c) in all_reduced else 1)
          * (c['group_size'] - 1) / c['group_size'] * size(c) * 4 for c in mine)
      assert as_formula == pytest.approx(run['analytic_bytes_per_step_by_layer'][layer],
                                         rel=1e-6), (name, layer)
      x = run['explanations']['layers'][layer]
      assert not any(note.split(':')[0] in ('repeated', 'unexplained', 'missing')
                     for note in x['notes']), (name, layer, x)


@needs(HAVE_TPU, 'libtpu')
def test_data_and_fsdp_build_on_a_multi_host_slice():
  """On v5e:4x4 (4 hosts) a 1-D mesh follows the torus ring, so a host's rows are not one
  block of the batch; the config check accepts equal separate sets of rows."""
  from alexnet_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.program import measure  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  quiet.compile_only_environment()
  devices = targets.devices(targets.load('tpu-v5e'), 16)
  assert len({d.process_index for d in devices}) == 4
  for name in ('data', 'fsdp'):
    config = measure.strategy_config(tiny.get_config(), name, 16)
    config.batch_size = config.eval_batch_size = 64
    run = run_lib.build(config, devices)
    group, groups = run.strategy.input_group(64)
    assert (group, groups) == (0, 4)  # this process is host 0 of 4, a quarter of the rows


@needs(HAVE_TPU, 'libtpu')
def test_a_batch_axis_spans_two_slices():
  """Two v5e slices: the mesh puts the batch axis across them (jax.make_mesh refuses several
  slices), and the compiled program exchanges the gradients between them over the data-center
  network (Megascale rendezvous), while every collective of its own spans one slice."""
  from alexnet_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  quiet.compile_only_environment()
  devices = targets.devices(targets.load('tpu-v5e'), 8, slices=2)
  config = compile_lib.replica_config(tiny.get_config(), 'data', 8, devices, 4)
  run = run_lib.build(config, devices)
  slice_of = [d.slice_index for d in run.devices]
  assert sorted(slice_of) == [0] * 4 + [1] * 4
  text = run.train_step.lower(run.abstract_state, run.abstract_batch()).compile().as_text()
  assert 'MegascaleRendezvousKeyName' in text
  assert all(c.group_size <= 4 for c in hlo.parse_collectives(text, 8))


# --- Overlap options (config.overlap_collectives, core/run.py OVERLAP_OPTIONS). ---

def test_overlap_switch_is_checked_and_leaves_the_cpu_step_unchanged():
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import config as config_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:2]
  config = tiny.get_config()
  config.overlap_collectives = 'sometimes'
  with pytest.raises(config_lib.ConfigError, match='overlap_collectives'):
    run_lib.build(config, devices)
  assert config_lib.overlap_on(tiny.get_config(), 'tpu')
  assert not config_lib.overlap_on(tiny.get_config(), 'cpu')
  texts = []
  for value in ('auto', 'true', 'false'):
    config = tiny.get_config()
    config.overlap_collectives = value
    run = run_lib.build(config, devices)
    assert run_lib.overlap_options(config, 'cpu') is None  # no options on CPU, ever
    text = run.train_step.lower(run.abstract_state, run.abstract_batch()).compile().as_text()
    module = hlo.Module(text)  # the ops and their types, in order (names and metadata vary)
    texts.append([(i.op, i.type) for names in module.order.values()
                  for i in map(module.instructions.get, names)])
  assert texts[0] == texts[1] == texts[2]


def _overlap_step(target, strategy, n, overlap):
  from alexnet_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  quiet.compile_only_environment()
  devices = targets.devices(targets.load(target), n)
  config = compile_lib.replica_config(tiny.get_config(), strategy, n, devices, 4)
  config.overlap_collectives = overlap
  run = run_lib.build(config, devices)
  return run.train_step.lower(run.abstract_state, run.abstract_batch()).compile().as_text()


@needs(HAVE_TPU, 'libtpu')
def test_tpu_overlap_options_accepted_and_async_collectives_read():
  """libtpu checks every compile option's name (an unknown one fails the compile), so one compile
  with all of them accepts each. The fsdp step's all-gathers are asynchronous collective fusions
  (async-collective-start ... -done fusions) with convolutions between start and done, read by
  hlo.py; the replay hides time behind them."""
  text = _overlap_step('tpu-v5e', 'fsdp', 4, 'true')
  collectives = hlo.parse_collectives(text, 4)
  windows = [c for c in collectives if c.asynchronous]
  assert windows and all(c.kind == 'all-gather' for c in windows)
  assert any(c.overlap_ops > 0 for c in windows)
  from alexnet_jax.program import ops as ops_lib  # pylint: disable=g-import-not-at-top
  module = hlo.Module(text)
  steps = ops_lib.step_ops(module, collectives)
  starts = [o.name for o in steps if o.category == 'collective' and o.asynchronous]
  waits = {o.waits_for for o in steps if o.category == 'wait'}
  assert starts and set(starts) <= waits


@needs(HAVE_GPU, 'the CUDA plugin')
def test_gpu_overlap_options_accepted():
  """XLA:GPU checks every compile option's name: the fsdp step compiles with all of them and
  keeps asynchronous collectives (start/done pairs, not is_sync) (in a process of its
  own, as the plan runs: the CUDA plugin's topology after libtpu's in one process fails)."""
  code = ('import sys; sys.path.insert(0, "."); from tests import test_targets as t; '
          'from alexnet_jax.program import hlo; '
          'text = t._overlap_step("gpu-h100", "fsdp", 8, "true"); '
          'print(any(c.asynchronous for c in hlo.parse_collectives(text, 8)))')
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  done = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == 'True'
