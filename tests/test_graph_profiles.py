"""The link-graph tables of the shipped profiles of the collective cases' machines: each loads,
routes every pair, cites every capacity it holds, and one transfer per machine class is timed
against the same transfer worked out by hand from the datasheet numbers written below."""

import pytest

from alexnet_jax.pods import costmodel
from alexnet_jax.pods import targets

GB = 1e9
GRAPHED = ('gpu-rtx2080ti-pcie', 'gpu-rtx4090-pcie', 'gpu-rtx4090-pcie-p2p',
           'gpu-v100-sxm2-cubemesh', 'gpu-h100-a3mega')


def _capacities(table: dict) -> list[float]:
  out = []
  for part in table.values():
    for key, value in part.items():
      if key in ('device_link', 'switch_uplink', 'socket_link', 'host_memory',
                 'link_bandwidth', 'bandwidth'):
        out.append(float(value))
  return out


@pytest.mark.parametrize('key', GRAPHED)
def test_each_graph_loads_routes_every_pair_and_cites_every_capacity(key):
  profile = targets.load(key)
  graph = profile.link_graph()
  assert graph is not None and graph.devices_per_host == profile.devices_per_host
  for a in range(profile.devices_per_host):
    for b in range(profile.devices_per_host):
      route = graph.route(a, b)
      assert (route == []) == (a == b)
      assert all(graph.capacity(link) > 0 for link in route)
  # Every capacity of the table is written, in GB/s, in the profile's source for the graph.
  source = profile.sources['graph']
  for capacity in _capacities(profile.graph):
    assert f'{capacity / GB:g} GB/s' in source, (key, capacity)
  assert 'assumed' in source or key == 'gpu-h100-a3mega'


def _ins(kind, members, bytes_per_device, crosses='inside'):
  return {'kind': kind, 'group_size': len(members), 'bytes_per_device': bytes_per_device,
          'crosses': crosses, 'extents': [], 'asynchronous': False, 'members': list(members)}


def test_pcie_without_peer_to_peer_stages_through_host_memory():
  """2 x RTX 2080 Ti under one PCIe 3.0 switch, no P2P: each ring step's two copies both go up
  the switch's one uplink, into host memory, back down, each held to the staged rate the same
  machine's p2pBandwidthLatencyTest measured (P2P=Disabled: 5.71 GB/s one way, 6.10 GB/s both
  directions together)."""
  profile = targets.load('gpu-rtx2080ti-pcie')
  graph = profile.link_graph()
  assert graph.route(0, 1) == [(0, 'device_up', 0), (0, 'switch_up', 0), (0, 'memory', 0),
                               (0, 'memory', 0), (0, 'staged', 0, 1), (0, 'staged_pair', 0, 1),
                               (0, 'switch_down', 0), (0, 'device_down', 1)]
  s = 2 ** 30  # nccl-tests' S: each GPU's buffer
  # All-reduce over 2: 2 ring steps, each GPU sending S/2; the uplink carries both: S per step
  # at 8 GT/s x 16 x 128/130 / 8 = 15.75 GB/s as PCI-SIG rounds it (host memory, 2 x S in 4
  # crossings at 140.8 GB/s, is not the bottleneck); the pair's staged copies, S per step at
  # 6.10 GB/s both ways, are slower still; 10 us per step.
  uplink = 15.75e9
  assert 8e9 * 16 * 128 / 130 / 8 == pytest.approx(uplink, rel=1e-3)
  memory = 6 * 2933e6 * 8
  assert 2 * s / memory < s / uplink < s / 6.10e9
  expected = 2 * (s / 6.10e9) + 2 * 10e-6
  ins = _ins('all-reduce', [0, 1], 2 * (2 - 1) / 2 * s)
  assert costmodel.collective_seconds(ins, profile) == pytest.approx(expected)


def test_pcie_pairs_under_one_switch_share_its_uplink_pairs_on_two_sockets_do_not():
  """RTX 4090s on PCIe 4.0 without P2P (assumed layout: two per switch, two switches per
  socket): a pair under one switch loads its uplink twice; a pair across sockets crosses the
  UPI links and the far socket's memory, but each uplink once."""
  profile = targets.load('gpu-rtx4090-pcie')
  s = 2 ** 30
  link = 31.5e9  # PCIe 4.0 x16, one way: 16 GT/s x 16 x 128/130 / 8, rounded
  assert 16e9 * 16 * 128 / 130 / 8 == pytest.approx(link, rel=1e-3)
  near = costmodel.collective_seconds(_ins('all-reduce', [0, 1], s), profile)
  far = costmodel.collective_seconds(_ins('all-reduce', [0, 7], s), profile)
  assert near == pytest.approx(2 * (s / link) + 2 * 10e-6)
  upi, memory = 3 * 11.2e9 * 2, 8 * 3200e6 * 8
  assert max(s / 2 / upi, 2 * (s / 2) / memory) < s / 2 / link
  assert far == pytest.approx(2 * (s / 2 / link) + 2 * 10e-6)


def test_a_cube_mesh_pair_copies_over_its_nvlinks_and_an_unlinked_pair_over_pcie():
  """8 x V100 SXM2 (the case's nvidia-smi topo): GPUs 0 and 3 are NV2 (two links of 25 GB/s),
  0 and 1 NV1, 0 and 4 SYS (no link: PCIe 3.0 across the sockets, staged in host memory)."""
  profile = targets.load('gpu-v100-sxm2-cubemesh')
  graph = profile.link_graph()
  assert graph.route(0, 3) == [(0, 'nvlink', 0, 3, 2)]
  b = 1e8  # bytes one GPU sends: an all-gather over a pair is one step of them each way
  assert costmodel.collective_seconds(_ins('all-gather', [0, 3], b), profile) == pytest.approx(
      b / (2 * 25e9) + 5e-6)
  assert costmodel.collective_seconds(_ins('all-gather', [0, 1], b), profile) == pytest.approx(
      b / 25e9 + 5e-6)
  assert graph.route(0, 4)[2] == (0, 'socket', 0, 1)
  pcie3 = 15.75e9
  assert costmodel.collective_seconds(_ins('all-gather', [0, 4], b), profile) == pytest.approx(
      b / pcie3 + 5e-6)


def test_across_two_a3_mega_nodes_a_ring_crosses_one_nic_a_hierarchy_all_eight():
  """16 H100 in 2 A3 Mega nodes (8 GPU NICs of 200 Gb/s per node): the ring in rank order sends
  every step's chunk through one NIC each way; the hierarchical all-reduce reduces inside each
  node over NVSwitch (450 GB/s a port) and all-reduces each local rank's 1/8 through its own NIC."""
  profile = targets.load('gpu-h100-a3mega')
  s = 2 ** 30
  nic, port, latency = 200e9 / 8, 900e9 / 2, 5e-6
  ins = _ins('all-reduce', range(16), 2 * 15 / 16 * s, crosses='between')
  ring = costmodel.collective_seconds(ins, profile, stack=costmodel.Stack('ring'))
  assert ring == pytest.approx(30 * (s / 16) / nic + 30 * latency)
  tiers = costmodel.collective_seconds(ins, profile, stack=costmodel.Stack('hierarchical'))
  inside = 7 * (s / 8) / port
  assert tiers == pytest.approx(2 * inside + 2 * (s / 16) / nic + (7 + 2 + 7) * latency)
