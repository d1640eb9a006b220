"""NCCL's tuning model (pods/nccl.py) against its formulas worked by hand from NVIDIA/nccl
src/graph/tuning.cc (commit 5067397c2676d5aed50042fc39e5c8ee96eb0027): a ring and a tree, each
at two sizes on either side of a protocol switch; the cost model's use of it (off by default,
on through Features.nccl_tuning); and the profiles' architecture field."""

import dataclasses

import pytest

from alexnet_jax.pods import costmodel
from alexnet_jax.pods import nccl
from alexnet_jax.pods import targets

# tuning.cc's tables, written out here (us; GB/s), the entries the cases below use.
RING_BASE = {'LL': 6.6, 'LL128': 14.0, 'Simple': 8.4}
RING_NVLINK = {'LL': 0.6, 'LL128': 1.9, 'Simple': 3.4}
TREE_BASE = {'LL': 6.8, 'LL128': 14.0, 'Simple': 8.4}
TREE_NVLINK = {'LL': 0.6, 'LL128': 1.25, 'Simple': 4.0}
TREE_NET = {'LL': 5.0, 'LL128': 8.5, 'Simple': 14.0}
LL_MAX_HOPPER_ONE_HOST = 141.0e9
LL_MAX_TWO_HOSTS = 39.0e9
H100_BUSBW = 370e9  # gpu-h100's inside bus_bandwidth


def _ring_by_hand(size: float) -> dict:
  """8 H100 on one NVSwitch host, all-reduce of `size` bytes: 2 x 7 = 14 steps."""
  moved = 2 * 7 / 8 * size
  bw = {'LL': min(LL_MAX_HOPPER_ONE_HOST, 0.5 * H100_BUSBW), 'LL128': 0.92 * H100_BUSBW,
        'Simple': H100_BUSBW}
  return {p: (RING_BASE[p] + 14 * RING_NVLINK[p]) * 1e-6 + moved / bw[p] for p in bw}


@pytest.mark.parametrize('size, fastest', [(65536, 'LL'), (2 ** 30, 'Simple')])
def test_ring_latency_and_bandwidth_by_protocol_match_the_hand_formula(size, fastest):
  hand = _ring_by_hand(size)
  moved = 2 * 7 / 8 * size
  got = nccl.options('ring', 'all-reduce', 8, 1, 'nvlink', 'hopper', moved,
                     moved / H100_BUSBW, size)
  assert set(got) == {'LL', 'LL128', 'Simple'}
  for p in hand:
    assert got[p] == pytest.approx(hand[p], rel=1e-9), p
  assert min(hand, key=hand.get) == fastest  # the protocol switch, worked by hand
  assert nccl.seconds('ring', 'all-reduce', 8, 1, 'nvlink', 'hopper', moved,
                      moved / H100_BUSBW, size) == pytest.approx(hand[fastest], rel=1e-9)


@pytest.mark.parametrize('size, log_size, fastest', [(4096, 6, 'LL'), (2 ** 28, 22, 'LL128')])
def test_tree_latency_and_bandwidth_by_protocol_match_the_hand_formula(size, log_size, fastest):
  # 2 hosts of 8 H100, all-reduce by NCCL's tree: latency 2 ((8 - 1) intra + log2(2) net);
  # busbw x 0.92, LL / 3.8 (at most llMaxBw of two hosts), LL128 x 120/128 across hosts,
  # then treeCorrectionFactor[p][log2(size / 64)]. At 256 MiB LL128 (0.92 x 120/128 x 1.0)
  # beats Simple (0.92 x 0.9).
  correction = {6: {'LL': .7, 'LL128': .8, 'Simple': .9},
                22: {'LL': 1.0, 'LL128': 1.0, 'Simple': .9}}[log_size]
  full = 100e9  # any full-rate bandwidth: the moving time at it is size x 2 x 15/16 / full
  moved = 2 * 15 / 16 * size
  bw = {'LL': min(full * 0.92 / 3.8, LL_MAX_TWO_HOSTS), 'LL128': full * 0.92 * 120 / 128,
        'Simple': full * 0.92}
  hand = {p: (TREE_BASE[p] + 2 * (7 * TREE_NVLINK[p] + 1 * TREE_NET[p])) * 1e-6
          + moved / (bw[p] * correction[p]) for p in bw}
  got = nccl.options('tree', 'all-reduce', 16, 2, 'nvlink', 'hopper', moved, moved / full, size)
  for p in hand:
    assert got[p] == pytest.approx(hand[p], rel=1e-9), p
  assert min(got, key=got.get) == fastest


def test_pcie_has_no_ll128_and_the_pci_latencies():
  # LL128 only where the ring is on NVLink (tuning.cc: typeIntra <= PATH_NVB); PCI ring
  # latencies LL 1.0 us, Simple 5.7 us per step; a 2-device all-reduce has 2 steps.
  got = nccl.options('ring', 'all-reduce', 2, 1, 'pci', 'ampere', 1e6, 1e6 / 20e9, 1e6)
  assert set(got) == {'LL', 'Simple'}
  assert got['Simple'] == pytest.approx((8.4 + 2 * 5.7) * 1e-6 + 1e6 / 20e9, rel=1e-9)
  assert got['LL'] == pytest.approx((6.6 + 2 * 1.0) * 1e-6 + 1e6 / 10e9, rel=1e-9)


def test_the_cost_model_uses_the_tables_only_when_the_feature_is_on():
  h100 = targets.load('gpu-h100')
  assert h100.nccl == 'hopper'
  assert targets.load('tpu-v5e').nccl == ''
  size = 65536
  ins = {'kind': 'all-reduce', 'group_size': 8, 'bytes_per_device': 2 * 7 / 8 * size,
         'crosses': 'inside'}
  on = dataclasses.replace(costmodel.ALL, nccl_tuning=True)
  assert costmodel.collective_seconds(ins, h100, on) == pytest.approx(
      _ring_by_hand(size)['LL'], rel=1e-9)
  # Off (the default): the profile's one latency per step, 14 steps.
  off = ins['bytes_per_device'] / H100_BUSBW + 14 * float(h100.inside['latency'])
  assert costmodel.collective_seconds(ins, h100) == pytest.approx(off, rel=1e-9)


def test_a_profile_with_an_unknown_architecture_is_refused():
  raw = dict(targets.known()['gpu-h100'], nccl='kepler')
  with pytest.raises(targets.TargetError, match='nccl'):
    targets._profile('mine', raw, targets.known())
