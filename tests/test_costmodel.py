"""The cost model of the pod plan, term by term, against computations written out by hand (the
op reading of hlo.step_ops it starts from: test_hlo.py)."""

import dataclasses

import pytest

from alexnet_jax.pods import costmodel
from alexnet_jax.pods import plan as plan_lib
from alexnet_jax.pods import targets


def _profile(inside: dict, between: dict = None, **numbers) -> targets.Profile:
  base = {'peak_bf16_flops': 100e12, 'fp32_matmul_flops': 50e12, 'peak_fp32_flops': 10e12,
          'memory_bytes': 16e9, 'memory_bandwidth': 1e12, 'host_cpus_per_chip': 0}
  base.update(numbers)
  return targets.Profile(key='test', name='test', compiler='gpu', numbers=base,
                         devices_per_chip=1, inside=inside,
                         between=between or {'name': 'net', 'bandwidth': 10e9,
                                             'latency': 10e-6},
                         sources={})


SWITCH = _profile({'name': 'nv', 'wiring': 'switch', 'bandwidth': 300e9,
                   'bus_bandwidth': {'2': 200e9, '8': 150e9}, 'latency': 3e-6})
PCIE = _profile({'name': 'pcie', 'wiring': 'pcie', 'bandwidth': 6e9, 'latency': 10e-6,
                 'peer_group': 4, 'host_bandwidth': 2e9})


def _ins(kind, g, nbytes, **extra):
  return dict({'kind': kind, 'group_size': g, 'bytes_per_device': nbytes, 'crosses': 'inside',
               'extents': [], 'asynchronous': False, 'overlap_ops': 0}, **extra)


# --- Compute: each op on its roofline. ---

def test_an_op_runs_at_the_slower_of_its_flops_and_its_memory_traffic():
  conv = {'category': 'conv', 'flops': 10e9, 'bytes': 100e6}
  # 10 GFLOP at 50 TFLOP/s x 0.5 = 400 us; 100 MB at 1 TB/s = 100 us: compute-bound.
  assert costmodel.op_seconds(conv, SWITCH, 0.5, 'float32') == pytest.approx(10e9 / 25e12)
  # In bfloat16 (100 TFLOP/s): 200 us, still above 100 us.
  assert costmodel.op_seconds(conv, SWITCH, 0.5, 'bfloat16') == pytest.approx(10e9 / 50e12)
  # A small matrix product reading 1 GB: bound by memory (1 ms), whatever the efficiency.
  small = {'category': 'matmul', 'flops': 1e9, 'bytes': 1e9}
  assert costmodel.op_seconds(small, SWITCH, 0.5, 'float32') == pytest.approx(1e-3)
  # LRN, pooling, elementwise fusions: memory only.
  assert costmodel.op_seconds({'category': 'memory', 'flops': 0, 'bytes': 5e8}, SWITCH, 0.5,
                              'float32') == pytest.approx(5e-4)
  assert costmodel.op_seconds({'category': 'free', 'flops': 0, 'bytes': 0}, SWITCH, 0.5,
                              'float32') == 0.0


# --- Collectives: bus bandwidth by group size, PCIe groups, torus wraparound. ---

def test_bus_bandwidth_by_group_size_and_message_size():
  link = SWITCH.inside
  assert costmodel.bus_bandwidth(link, 2, costmodel.ALL) == 200e9
  assert costmodel.bus_bandwidth(link, 4, costmodel.ALL) == 200e9  # the largest size <= 4
  assert costmodel.bus_bandwidth(link, 8, costmodel.ALL) == 150e9
  assert costmodel.bus_bandwidth(link, 8, costmodel.FIRST) == 300e9  # the datasheet's
  # nccl-tests: busbw = algbw x 2(n-1)/n. An all-reduce of S bytes over 8: the ring moves
  # 2 x 7/8 S per device; time = that / busbw + 14 steps x latency.
  size = 64e6
  t = costmodel.collective_seconds(_ins('all-reduce', 8, 2 * 7 / 8 * size), SWITCH)
  assert t == pytest.approx(2 * 7 / 8 * size / 150e9 + 14 * 3e-6)
  algbw = size / t
  busbw = algbw * 2 * 7 / 8
  assert busbw < 150e9  # the latency keeps the measured busbw under the link's
  # A small message is dominated by the latency: its busbw is far lower.
  tiny = costmodel.collective_seconds(_ins('all-reduce', 8, 2 * 7 / 8 * 64e3), SWITCH)
  assert 64e3 / tiny * 2 * 7 / 8 < busbw / 10


def test_a_group_spanning_pcie_peer_groups_stages_through_host_memory():
  inside = costmodel.collective_seconds(_ins('all-gather', 4, 1e8, peer_groups=1), PCIE)
  assert inside == pytest.approx(1e8 / 6e9 + 3 * 10e-6)
  across = costmodel.collective_seconds(_ins('all-gather', 8, 1e8, peer_groups=2), PCIE)
  assert across == pytest.approx(1e8 / 2e9 + 7 * 10e-6)
  off = dataclasses.replace(costmodel.ALL, pcie_groups=False)
  assert costmodel.collective_seconds(_ins('all-gather', 8, 1e8, peer_groups=2), PCIE, off) == \
      pytest.approx(1e8 / 6e9 + 7 * 10e-6)


def test_torus_axes_without_wraparound_use_one_link():
  v5e = targets.load('tpu-v5e')  # 45 GB/s a link, wraparound on axes of 16 only
  four = costmodel.collective_seconds(_ins('all-reduce', 16, 1e8, extents=[4, 4],
                                           slice_shape=[4, 4]), v5e)
  assert four == pytest.approx(1e8 / (2 * 45e9) + 2 * 6 * 1e-6)
  sixteen = costmodel.collective_seconds(_ins('all-reduce', 256, 1e8, extents=[16, 16],
                                              slice_shape=[16, 16]), v5e)
  assert sixteen == pytest.approx(1e8 / (4 * 45e9) + 2 * 30 * 1e-6)
  # 8x16: only the long axis wraps.
  mixed = costmodel.collective_seconds(_ins('all-gather', 128, 1e8, extents=[8, 16],
                                            slice_shape=[8, 16]), v5e)
  assert mixed == pytest.approx(1e8 / (3 * 45e9) + 22 * 1e-6)
  # v4: wraparound on a full cube only; a 2x2x4 slice has none, a 4x4x4 one has all.
  v4 = targets.load('tpu-v4')
  small = costmodel.collective_seconds(_ins('all-gather', 4, 1e8, extents=[4],
                                            slice_shape=[2, 2, 4]), v4)
  cube = costmodel.collective_seconds(_ins('all-gather', 4, 1e8, extents=[4],
                                           slice_shape=[4, 4, 4]), v4)
  assert small == pytest.approx(1e8 / 45e9 + 3e-6)
  assert cube == pytest.approx(1e8 / 90e9 + 3e-6)
  # The first model wrapped every axis longer than 2.
  assert costmodel.collective_seconds(_ins('all-gather', 4, 1e8, extents=[4],
                                           slice_shape=[2, 2, 4]), v4, costmodel.FIRST) == \
      pytest.approx(cube)


def test_latency_scale_multiplies_only_the_latency():
  t1 = costmodel.collective_seconds(_ins('all-reduce', 8, 1e6), SWITCH)
  t4 = costmodel.collective_seconds(_ins('all-reduce', 8, 1e6), SWITCH, latency_scale=4)
  assert t4 - t1 == pytest.approx(3 * 14 * 3e-6)


# --- The step: the schedule replayed on two streams. ---

def _op(name, category, **kw):
  return dict({'name': name, 'category': category, 'flops': 0.0, 'bytes': 0.0,
               'collective': [], 'waits_for': '', 'asynchronous': False}, **kw)


def test_an_asynchronous_collective_hides_behind_the_ops_between_its_start_and_done():
  ops = [_op('a', 'conv'), _op('ar', 'collective', collective=['ar'], asynchronous=True),
         _op('b', 'conv'), _op('c', 'memory'), _op('done', 'wait', waits_for='ar'),
         _op('d', 'matmul')]
  times = {'a': 1.0, 'b': 2.0, 'c': 0.5, 'd': 1.0}
  # The collective starts at 1 and runs 3: compute reaches the done at 3.5 and waits to 4.
  assert costmodel.replay(ops, times, {'ar': 3.0}) == pytest.approx(1 + 3 + 1)
  # A short one is hidden entirely: 1 + 2 + 0.5 + 1.
  assert costmodel.replay(ops, times, {'ar': 1.0}) == pytest.approx(4.5)
  # Synchronous: it blocks compute for its whole time.
  sync = [dict(o, asynchronous=False) for o in ops]
  assert costmodel.replay(sync, times, {'ar': 3.0}) == pytest.approx(1 + 3 + 2 + 0.5 + 1)


def test_two_asynchronous_collectives_share_one_stream():
  ops = [_op('x', 'collective', collective=['x'], asynchronous=True),
         _op('y', 'collective', collective=['y'], asynchronous=True),
         _op('a', 'conv'), _op('dx', 'wait', waits_for='x'), _op('dy', 'wait', waits_for='y')]
  # x runs 0..2, y 2..5 (after x); compute (1 s) waits for y's end.
  assert costmodel.replay(ops, {'a': 1.0}, {'x': 2.0, 'y': 3.0}) == pytest.approx(5.0)


def _entry():
  ops = [_op('c1', 'conv', flops=20e9, bytes=1e8),
         _op('ar', 'collective', collective=['ar'], asynchronous=True),
         _op('m', 'memory', bytes=2e9), _op('w', 'wait', waits_for='ar'),
         _op('f', 'matmul', flops=5e9, bytes=1e7)]
  return {'ops': ops, 'batch_size': 256, 'devices': 8, 'heavy_ops': 2,
          'compiled_flops_per_device': 25e9, 'analytic_flops_per_device': 25e9,
          'memory_per_device': {},
          'instructions': {'ar': _ins('all-reduce', 8, 1e9, asynchronous=True,
                                      overlap_ops=0)}}


def test_the_predicted_step_by_hand():
  entry = _entry()
  out = costmodel.predict_step(entry, SWITCH, 0.5, 'float32')
  c1, m, f = 20e9 / 25e12, 2e9 / 1e12, 5e9 / 25e12
  ar = 1e9 / 150e9 + 14 * 3e-6
  assert out['compute_seconds'] == pytest.approx(c1 + m + f)
  assert out['communication_seconds'] == pytest.approx(ar)
  # ar starts after c1 and runs beside m; compute waits at w for max(c1 + m, c1 + ar).
  assert out['step_seconds']['with_overlap'] == pytest.approx(c1 + max(m, ar) + f)
  assert out['step_seconds']['no_overlap'] == pytest.approx(c1 + m + f + ar)
  # The first model: the step's FLOPs at one rate, no memory term, the share rule (0 heavy ops
  # in the window: nothing hidden), the datasheet bandwidth.
  first = costmodel.predict_step(entry, SWITCH, 0.5, 'float32', costmodel.FIRST)
  assert first['compute_seconds'] == pytest.approx(25e9 / 25e12)
  assert first['step_seconds']['with_overlap'] == pytest.approx(
      25e9 / 25e12 + 1e9 / 300e9 + 14 * 3e-6)


def test_the_efficiency_fitted_to_a_measured_step_reproduces_it():
  entry = _entry()
  true = costmodel.predict_step(entry, SWITCH, 0.37, 'float32')['step_seconds']['with_overlap']
  fitted = costmodel.fit_efficiency(entry, SWITCH, 'float32', true)
  assert fitted == pytest.approx(0.37, rel=1e-6)
  # A step faster than the memory traffic alone allows: no efficiency reaches it.
  assert costmodel.fit_efficiency(entry, SWITCH, 'float32', 1e-4) is None


def test_sensitivity_names_where_the_ranking_flips():
  """Strategy A computes more and communicates less than B: at a low efficiency A's extra
  compute costs more than B's communication, so the winner changes with the efficiency."""
  base = {'devices': 8, 'batch_size': 100, 'memory_per_device': {}, 'heavy_ops': 0, 'ops': []}
  a = dict(base, strategy='a', compiled_flops_per_device=30e9, analytic_flops_per_device=30e9,
           instructions={})
  b = dict(base, strategy='b', compiled_flops_per_device=20e9, analytic_flops_per_device=20e9,
           instructions={'x': _ins('all-reduce', 8, 0.175e9)})
  # At efficiency e: A = 30e9 / (50e12 e); B = 20e9 / (50e12 e) + 0.175e9 / 150e9 + 42 us.
  # Equal where 10e9 / (50e12 e) = 1.209 ms, e = 0.165: A wins above, B below.
  runs = []
  for r in (a, b):
    r = dict(r)
    step = costmodel.predict_step(r, SWITCH, 0.2, 'float32')
    r['predicted_images_per_second'] = {k: 100 / v for k, v in step['step_seconds'].items()}
    runs.append(r)
  assert plan_lib.winners(runs) == {'8': 'a'}
  sens = plan_lib.sensitivity(runs, SWITCH, 0.2, 'float32')
  flips = {(f['efficiency_scale'], f['latency_scale']) for f in sens['flips']}
  # x0.75 (0.15) and x0.5 (0.1) fall below 0.165, at every latency scale; x1 and above do not.
  assert {e for e, _ in flips} == {0.5, 0.75}
  assert all(f['winner'] == 'b' and f['plan_winner'] == 'a' for f in sens['flips'])
  assert len(sens['grid']) == len(plan_lib.EFFICIENCY_SCALES) * len(plan_lib.LATENCY_SCALES)


def test_replay_hides_an_asynchronous_collective_behind_the_compute_between_by_hand():
  """compute a (1 s), collective c starts (3 s on its stream), compute b (2 s), c's done, compute
  d (1 s): with overlap the step ends at 1 + max(2, 3) + 1 = 5 s; synchronous, 1 + 3 + 2 + 1 = 7 s;
  the hidden time, 2 s, is the compute between start and done."""
  ops = [{'name': 'a', 'category': 'conv'},
         {'name': 'c', 'category': 'collective', 'asynchronous': True},
         {'name': 'b', 'category': 'conv'},
         {'name': 'c.done', 'category': 'wait', 'waits_for': 'c'},
         {'name': 'd', 'category': 'memory'}]
  times = {'a': 1.0, 'b': 2.0, 'd': 1.0}
  assert costmodel.replay(ops, times, {'c': 3.0}) == 5.0
  sync = [dict(o, asynchronous=False) if o['name'] == 'c' else o for o in ops]
  assert costmodel.replay(sync, times, {'c': 3.0}) == 7.0
  assert costmodel.replay(sync, times, {'c': 3.0}) - costmodel.replay(ops, times, {'c': 3.0}) == 2.0
