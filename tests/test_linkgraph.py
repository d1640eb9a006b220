"""A machine as a graph of shared links (pods/linkgraph.py) and the collective algorithms as
transfers over it (pods/algorithms.py), each term against a computation written out by hand."""

import pytest

from alexnet_jax.pods import algorithms
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import linkgraph
from alexnet_jax.pods import published
from alexnet_jax.pods import targets

GB = 1e9
L = 5e-6  # latency per step


def _pcie(sockets=1, switches=2, per_switch=2, device=8 * GB, uplink=8 * GB, socket=20 * GB,
          memory=25.6 * GB, p2p='switch') -> linkgraph.Graph:
  table = {'pcie': {'sockets': sockets, 'switches_per_socket': switches,
                    'devices_per_switch': per_switch, 'device_link': device,
                    'switch_uplink': uplink, 'socket_link': socket, 'host_memory': memory,
                    'peer_to_peer': p2p}}
  return linkgraph.build(table, sockets * switches * per_switch)


def _nvswitch(per_host, bandwidth, nics=None) -> linkgraph.Graph:
  table = {'nvswitch': {'bandwidth': bandwidth}}
  if nics:
    table['nics'] = {'per_host': nics[0], 'bandwidth': nics[1]}
  return linkgraph.build(table, per_host)


# --- Routing and link sharing. ---

def test_a_copy_follows_the_peer_to_peer_rule_or_stages_through_host_memory():
  g = _pcie(sockets=2, switches=1, per_switch=2, p2p='switch')
  # Devices 0, 1 under switch 0 (socket 0); 2, 3 under switch 1 (socket 1).
  assert g.route(0, 1) == [(0, 'device_up', 0), (0, 'device_down', 1)]
  staged = g.route(1, 2)  # across sockets, no peer access: up, QPI, b's memory twice, down
  assert staged == [(0, 'device_up', 1), (0, 'switch_up', 0), (0, 'socket', 0, 1),
                    (0, 'memory', 1), (0, 'memory', 1), (0, 'switch_down', 1),
                    (0, 'device_down', 2)]
  # peer_to_peer = "all": the same pair goes through both root complexes, not memory.
  direct = _pcie(sockets=2, switches=1, per_switch=2, p2p='all').route(1, 2)
  assert [link[1] for link in direct] == ['device_up', 'switch_up', 'socket', 'switch_down',
                                          'device_down']
  # "none": even two devices under one switch stage through memory.
  assert [l[1] for l in _pcie(p2p='none').route(0, 1)].count('memory') == 2


def test_transfers_that_share_a_link_share_its_capacity():
  g = _pcie(uplink=4 * GB, memory=100 * GB)  # switches {0, 1} and {2, 3}, one socket
  one = 1e8
  alone = linkgraph.step_seconds(g, [('copy', 0, 2, one)], L)
  together = linkgraph.step_seconds(g, [('copy', 0, 2, one), ('copy', 1, 3, one)], L)
  # Both cross switch 0's uplink up and switch 1's down (4 GB/s): twice the bytes there.
  assert alone == pytest.approx(one / 4e9 + L)
  assert together == pytest.approx(2 * one / 4e9 + L)
  # Opposite directions do not share: 0 -> 2 and 2 -> 0 each use their own direction.
  both_ways = linkgraph.step_seconds(g, [('copy', 0, 2, one), ('copy', 2, 0, one)], L)
  assert both_ways == pytest.approx(one / 4e9 + L)
  # Host memory counts every byte written and read: four staged copies, 8 x 1e8 bytes.
  slow_memory = _pcie(uplink=100 * GB, device=100 * GB, memory=10 * GB)
  four = [('copy', 0, 2, one), ('copy', 1, 3, one), ('copy', 2, 0, one), ('copy', 3, 1, one)]
  assert linkgraph.step_seconds(slow_memory, four, L) == pytest.approx(8 * one / 10e9 + L)


def test_a_staged_copy_is_held_to_its_measured_rate():
  """Two devices under one switch without peer access, staged copies measured at 5 GB/s alone
  and 6 GB/s both directions together (p2pBandwidthLatencyTest's P2P=Disabled figures)."""
  g = _pcie(switches=1, p2p='none')
  g.table['pcie'].update(staged_copy=5 * GB, staged_copy_both=6 * GB)
  x = 1e8
  # Alone: PCIe 8 GB/s up and down, memory 2x at 25.6: the staged copy's 5 GB/s decides.
  assert linkgraph.step_seconds(g, [('copy', 0, 1, x)], L) == pytest.approx(x / 5e9 + L)
  # Both ways at once: the pair's 6 GB/s carries 2x (slower than the uplink's 2x at 8).
  both = [('copy', 0, 1, x), ('copy', 1, 0, x)]
  assert linkgraph.step_seconds(g, both, L) == pytest.approx(2 * x / 6e9 + L)
  # Without the measured rates: the links alone (the uplink carries both copies up).
  assert linkgraph.step_seconds(_pcie(switches=1, p2p='none'), both, L) == pytest.approx(
      2 * x / 8e9 + L)


def test_a_copy_between_hosts_goes_out_of_one_nic_and_into_another():
  g = _nvswitch(4, 100 * GB, nics=(2, 12.5 * GB))
  # Device 5 is host 1's local device 1: NIC 1 * 2 // 4 = 0; device 2 is host 0's NIC 1.
  assert g.route(2, 5) == [(0, 'nic_out', 1), (1, 'nic_in', 0)]
  # Two devices behind one NIC share it: 0 and 1 both send through host 0's NIC 0.
  t = linkgraph.step_seconds(g, [('copy', 0, 4, 1e8), ('copy', 1, 5, 1e8)], L)
  assert t == pytest.approx(2e8 / 12.5e9 + L)
  assert g.route(0, 3) == [(0, 'to_nvswitch', 0), (0, 'from_nvswitch', 3)]


def test_a_copy_the_graph_cannot_carry_is_refused_saying_what_to_add():
  g = _nvswitch(4, 100 * GB)
  with pytest.raises(linkgraph.GraphError, match='graph: no nics table.*add graph.nics'):
    g.route(0, 4)
  with pytest.raises(linkgraph.GraphError, match='graph: no pcie table.*add graph.pcie'):
    algorithms.seconds(g, 'parameter_server', 'all-reduce', [0, 1], 1e8, L)


def test_nvlink_pairs_copy_over_their_links_and_unlinked_pairs_relay():
  table = {'nvlink': {'link_bandwidth': 20 * GB, 'pairs': [[0, 1, 2], [1, 2, 1]]}}
  g = linkgraph.build(table, 3)
  assert g.capacity(g.route(0, 1)[0]) == 40 * GB  # two links of 20
  assert [(l[2], l[3]) for l in g.route(0, 2)] == [(0, 1), (1, 2)]  # through device 1


# --- The algorithms, each against its hand count. ---

def test_an_instructions_groups_run_at_once_and_share_the_links():
  """Two groups of two under one switch, no peer access: each group's ring stages both its
  hops through the one uplink; alone a step carries 2 chunks up it, with the other group 4."""
  g = _pcie(switches=1, per_switch=4, device=100 * GB, uplink=4 * GB, memory=1000 * GB,
            p2p='none')
  size = 1e8
  alone = algorithms.seconds(g, 'ring', 'all-gather', [0, 1], size / 2, 0.0)
  both = algorithms.seconds(g, 'ring', 'all-gather', [0, 1], size / 2, 0.0, concurrent=[[2, 3]])
  assert alone == pytest.approx(2 * (size / 2) / 4e9)
  assert both == pytest.approx(4 * (size / 2) / 4e9)


def test_a_ring_all_reduce_under_one_switch():
  g = _pcie(switches=1, per_switch=4, device=10 * GB)
  size = 4e8
  bpd = 2 * 3 / 4 * size  # the ring convention's bytes per device
  # 2(n-1) = 6 steps, each device sending S/4 to the next over its own device links.
  t = algorithms.seconds(g, 'ring', 'all-reduce', [0, 1, 2, 3], bpd, L)
  assert t == pytest.approx(6 * (size / 4 / 10e9 + L))
  gather = algorithms.seconds(g, 'ring', 'all-gather', [0, 1, 2, 3], 3 / 4 * size, L)
  assert gather == pytest.approx(3 * (size / 4 / 10e9 + L))


def test_a_ring_through_one_root_complex_slows_as_the_devices_grow():
  """Switches of two GPUs, peer to peer only under a switch: a ring's hops between switches
  stage through the one socket's memory, which every such hop writes and reads."""
  g = _pcie(switches=4, per_switch=2, device=8 * GB, uplink=8 * GB, memory=25.6 * GB)
  busbw = {}
  for n in (2, 4, 8):
    size = 1e9
    bpd = 2 * (n - 1) / n * size
    t = algorithms.seconds(g, 'ring', 'all-reduce', list(range(n)), bpd, 0.0)
    busbw[n] = bpd / t
  # Per step each hop moves c = S / n; by hand:
  assert busbw[2] == pytest.approx(8e9)  # one switch: the device link, c / 8 GB/s
  assert busbw[4] == pytest.approx(25.6e9 / 4)  # 2 staged hops x 2c through memory: 4c
  assert busbw[8] == pytest.approx(25.6e9 / 8)  # 4 staged hops: 8c on one memory
  assert busbw[2] > busbw[4] > busbw[8]


def test_the_tree_inside_one_host_is_a_chain():
  """NCCL's tree (src/graph/connect.cc): a chain inside each node. 4 devices on an NVSwitch of
  bandwidth B: chain 0-1-2-3, every edge S up (reduce) and S down (broadcast) in one pipelined
  step; devices 1 and 2 send 2S (to both neighbours), the most of any port; the pipeline's
  depth 3: 2 x 3 - 1 latencies, plus the moving step's."""
  b, size = 100 * GB, 1e9
  g = _nvswitch(4, b)
  t = algorithms.seconds(g, 'tree', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  assert t == pytest.approx(2 * size / b + 6 * L)
  # The ring over the same switch: 6 steps of S/4: 1.5 S / B, and 6 latencies.
  ring = algorithms.seconds(g, 'ring', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  assert ring == pytest.approx(1.5 * size / b + 6 * L)
  # Inside one host the library runs its rings, at every size (not the tree).
  for s in (size, 1e3):
    assert algorithms.seconds(g, 'library_default', 'all-reduce', [0, 1, 2, 3],
                              2 * 3 / 4 * s, L) == pytest.approx(1.5 * s / b + 6 * L)


def test_the_two_level_tree_across_hosts_by_hand():
  """2 hosts of 4 devices on an NVSwitch of B = 100 GB/s, 4 NICs of 10 GB/s. 4 channels, each
  S/4: channel k's chain in each host starts at local device k (its head, on NIC k), every chain
  edge S/4 both ways; the two heads are each other's parent in one of the two trees, S/8 each
  way in each: S/4 each way through NIC k. Ports: over the 4 chains a device is head once (sends
  S/4), inside twice (2 x 2 x S/4), tail once (S/4): 1.5 S. Depth: 3 chain hops + 1 tree level:
  7 latencies and the moving step's."""
  size = 1e9
  g = _nvswitch(4, 100 * GB, nics=(4, 10 * GB))
  bpd = 2 * 7 / 8 * size
  tree = algorithms.seconds(g, 'tree', 'all-reduce', list(range(8)), bpd, L)
  assert tree == pytest.approx(max(1.5 * size / 100e9, size / 4 / 10e9) + 8 * L)
  # Hierarchical: reduce-scatter and all-gather inside (2 x 3 steps of S/4 per port), the
  # across all-reduce per local rank (2 steps of S/8 through each rail's NIC).
  hier = algorithms.seconds(g, 'hierarchical', 'all-reduce', list(range(8)), bpd, L)
  assert hier == pytest.approx(6 * size / 4 / 100e9 + 2 * size / 8 / 10e9 + 8 * L)
  # The library across hosts: the fastest of its rings, the tree and hierarchical.
  assert algorithms.seconds(g, 'library_default', 'all-reduce', list(range(8)), bpd, L) == \
      pytest.approx(tree)


def test_rail_aligned_rings_cross_hosts_on_every_nic():
  """The same 2 x 4 machine: one ring per local rank, each host's part starting one place
  earlier than the host before, so every NIC carries one crossing each way; 4 rings of S/4: each
  step a NIC carries S/32 (10 GB/s), a port at most 4 x S/32 (100 GB/s)."""
  g = _nvswitch(4, 100 * GB, nics=(4, 10 * GB))
  rings = algorithms.rail_rings(g, list(range(8)))
  assert rings[0] == (0, 1, 2, 3, 7, 4, 5, 6)
  nic = lambda d: d % 4
  for host in (0, 1):
    out = sorted(nic(a) for r in rings for a, b in zip(r, r[1:] + r[:1])
                 if a // 4 == host and b // 4 != host)
    assert out == [0, 1, 2, 3]
  size = 1e9
  t = algorithms.seconds(g, 'channels', 'all-reduce', list(range(8)), 2 * 7 / 8 * size, L)
  assert t == pytest.approx(14 * (size / 32 / 10e9 + L))
  # One ring in rank order: every step's crossings 3 -> 4 and 7 -> 0 on NIC 3: S/8 each.
  one = algorithms.seconds(g, 'ring', 'all-reduce', list(range(8)), 2 * 7 / 8 * size, L)
  assert one == pytest.approx(14 * (size / 8 / 10e9 + L))


def test_nvlink_channels_on_the_v100_cube_mesh():
  """NCCL 2 runs as many rings as the NVLinks allow, each taking one link per hop in its
  direction. The V100 cube-mesh gives each GPU 6 links (2 x NV2 + 2 x NV1): 6 directed rings
  through all 8, every link busy; the message split 6 ways: 14 steps of S / (8 x 6) at one
  link's 25 GB/s."""
  g = targets.load('gpu-v100-sxm2-cubemesh').link_graph()
  rings = algorithms.nvlink_rings(g, list(range(8)))
  assert len(rings) == 6
  links = {frozenset((a, b)): k for a, b, k in g.table['nvlink']['pairs']}
  used: dict = {}
  for r in rings:
    assert sorted(r) == list(range(8))
    for hop in zip(r, r[1:] + r[:1]):
      assert frozenset(hop) in links
      used[hop] = used.get(hop, 0) + 1
  assert all(used.get((a, b), 0) == k and used.get((b, a), 0) == k
             for pair, k in links.items() for a, b in [tuple(pair)])
  size = 1e9
  t = algorithms.seconds(g, 'library_default', 'all-reduce', list(range(8)), 2 * 7 / 8 * size, L)
  assert t == pytest.approx(14 * (size / 48 / 25e9 + L))
  # Two GPUs on a pair of 2 links: 2 rings; GPUs 0-3 and 7 have no NVLink ring: none.
  assert len(algorithms.nvlink_rings(g, [0, 3])) == 2
  assert algorithms.nvlink_rings(g, [0, 1, 2, 3, 7]) == []


def test_nvls_and_collnet_reduce_in_the_switches():
  """NVLS: 4 devices on an NVSwitch of 100 GB/s: each port carries S (4+1)/4 each way in one
  pipelined step (S out and S/4 back for the reduce-scatter, S/4 out and S back for the
  all-gather), and 2 latencies. CollNet: 2 hosts of 4 on that switch with 4 NICs of 10 GB/s:
  reduce-scatter inside (3 ring steps of S/4), each device's S/4 out of its NIC and back
  once (the InfiniBand switches sum, whatever the number of hosts), all-gather inside."""
  size = 1e9
  g = _nvswitch(4, 100 * GB)
  t = algorithms.seconds(g, 'nvls', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  assert t == pytest.approx(5 / 4 * size / 100e9 + 2 * L)
  # Fewer bytes per port than the ring's 2 x 3/4 S, so faster at this size:
  assert t < algorithms.seconds(g, 'ring', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  two = _nvswitch(4, 100 * GB, nics=(4, 10 * GB))
  t = algorithms.seconds(two, 'collnet', 'all-reduce', list(range(8)), 2 * 7 / 8 * size, L)
  # Pipelined: a port sends 2 x 3/4 S (0.015 s), a NIC S/4 (0.025 s); 2 x 3 + 1 latencies.
  assert t == pytest.approx(max(2 * 3 / 4 * size / 100e9, size / 4 / 10e9) + 7 * L)
  # Neither is the library's own choice (the graph does not say the switches can reduce): it
  # runs the two-level tree here (test_the_two_level_tree_across_hosts_by_hand).
  assert algorithms.seconds(two, 'library_default', 'all-reduce', list(range(8)),
                            2 * 7 / 8 * size, L) == pytest.approx(size / 4 / 10e9 + 8 * L)


def test_hierarchical_all_reduce_inside_then_across_then_inside():
  b_in, b_nic, size = 100 * GB, 10 * GB, 1e9
  g = _nvswitch(2, b_in, nics=(2, b_nic))  # 2 hosts x 2 devices, one NIC per device
  t = algorithms.seconds(g, 'hierarchical', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  # Reduce-scatter inside (1 step of S/2), all-reduce across per local rank (2 steps of S/4
  # through the NICs), all-gather inside (1 step of S/2).
  hand = 2 * (size / 2 / b_in + L) + 2 * (size / 4 / b_nic + L)
  assert t == pytest.approx(hand)
  # A flat ring crosses the NICs in 6 steps of S/4 (hops 1->2 and 3->0): slower here.
  ring = algorithms.seconds(g, 'ring', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  assert ring == pytest.approx(6 * (size / 4 / b_nic + L)) and ring > t


def test_host_staged_all_gather_loads_the_groups_uplink_with_each_devices_copies():
  """Two switches of two GPUs, peer to peer inside a switch (cuda-convnet2's groups): gather
  inside each group (1 step of c), every device writes its c to host memory (a switch's uplink
  carries 2c up), every device reads the other group's 2 chunks (the uplink carries 4c down)."""
  g = _pcie(device=8 * GB, uplink=8 * GB, memory=1000 * GB)
  size = 4e8
  c = size / 4
  t = algorithms.seconds(g, 'host_staged', 'all-gather', [0, 1, 2, 3], 3 / 4 * size, L)
  assert t == pytest.approx(c / 8e9 + 2 * c / 8e9 + 4 * c / 8e9 + 3 * L)
  # The mirror, a reduce-scatter, moves the same bytes the other way, plus the CPU's sum:
  # reads the 4 x 2c partials and writes 4c, 12c through memory.
  rs = algorithms.seconds(g, 'host_staged', 'reduce-scatter', [0, 1, 2, 3], 3 / 4 * size, L)
  assert rs == pytest.approx(7 * c / 8e9 + 12 * c / 1000e9 + 4 * L)
  # Inside one group there is nothing to stage: the ring.
  assert algorithms.seconds(g, 'host_staged', 'all-gather', [0, 1], 1e8, L) == \
      pytest.approx(algorithms.seconds(g, 'ring', 'all-gather', [0, 1], 1e8, L))


def test_host_staged_all_reduce_sums_the_groups_shards_on_the_cpu():
  g = _pcie(device=8 * GB, uplink=8 * GB, memory=32 * GB)
  size = 4e8
  t = algorithms.seconds(g, 'host_staged', 'all-reduce', [0, 1, 2, 3], 2 * 3 / 4 * size, L)
  # Reduce-scatter inside each pair (1 step of S/2 on device links); each device writes its
  # S/2 (an uplink carries S); the CPU reads the 2 groups' S and writes S (3S through memory);
  # each device reads S/2 back (S down an uplink); all-gather inside (1 step of S/2).
  hand = (size / 2 / 8e9 + L) + (size / 8e9 + L) + (3 * size / 32e9 + L) + \
      (size / 8e9 + L) + (size / 2 / 8e9 + L)
  assert t == pytest.approx(hand)


def test_a_parameter_server_on_the_cpu():
  g = _pcie(switches=1, per_switch=2, uplink=10 * GB, memory=40 * GB, p2p='none')
  size = 1e9
  t = algorithms.seconds(g, 'parameter_server', 'all-reduce', [0, 1], size, L)
  # Both send S up the one uplink (2S), the CPU reads 2S and writes S (3S), both read S (2S).
  assert t == pytest.approx(2 * size / 10e9 + 3 * size / 40e9 + 2 * size / 10e9 + 3 * L)


def test_peer_to_peer_copies_every_pair_at_once():
  table = {'nvlink': {'link_bandwidth': 20 * GB, 'pairs': [[0, 1, 1], [0, 2, 1], [1, 2, 1]]}}
  g = linkgraph.build(table, 3)
  size = 3e8
  t = algorithms.seconds(g, 'peer_to_peer', 'all-gather', [0, 1, 2], 2 / 3 * size, L)
  assert t == pytest.approx(size / 3 / 20e9 + L)  # each directed link carries one chunk
  ar = algorithms.seconds(g, 'peer_to_peer', 'all-reduce', [0, 1, 2], 2 * 2 / 3 * size, L)
  assert ar == pytest.approx(2 * (size / 3 / 20e9 + L))


def test_one_call_per_tensor_or_per_bucket_pays_its_latency_each_time():
  g = _pcie(switches=1, per_switch=2, device=10 * GB)
  size = 1e8
  moving = size / 2 / 10e9  # 2 steps of S/2, the bytes moved once either way
  compiled = algorithms.seconds(g, 'ring', 'all-reduce', [0, 1], size, L, calls=1)
  assert compiled == pytest.approx(2 * moving + 2 * L)
  calls = algorithms.granularity_calls('per_tensor', 16, size, 0)
  assert calls == 16
  assert algorithms.seconds(g, 'ring', 'all-reduce', [0, 1], size, L, calls) == \
      pytest.approx(2 * moving + 16 * 2 * L)
  assert algorithms.granularity_calls('bucketed', 16, size, 25e6) == 4
  assert algorithms.granularity_calls('bucketed', 16, size, 30e6) == 4  # a started bucket
  assert algorithms.granularity_calls('compiled', 16, size, 0) == 1


def test_an_nvlink_ring_is_found_where_rank_order_has_no_link():
  """The DGX-1's hybrid cube-mesh: rank order 0..7 has hops 3->4 and 7->0 without NVLink, which
  NCCL 1 stages through host memory; the library's ring search finds one over NVLink only."""
  g = targets.load('gpu-p100-dgx1').link_graph()
  order = algorithms.direct_ring(g, list(range(8)))
  assert sorted(order) == list(range(8))
  assert all(len(g.route(a, b)) == 1 and g.route(a, b)[0][1] == 'nvlink'
             for a, b in zip(order, order[1:] + order[:1]))
  size = 1e9
  bpd = 2 * 7 / 8 * size
  # NCCL 1's rank-order ring: each step's bottleneck is a staged hop's PCIe 3.0 x16 link.
  nccl1 = algorithms.seconds(g, 'ring', 'all-reduce', list(range(8)), bpd, 0.0)
  assert nccl1 == pytest.approx(14 * size / 8 / 15.75e9)
  # NCCL 2: 4 rings over the 4 NVLinks of each GPU (two disjoint Hamiltonian cycles, each
  # both ways), each hop one link: 14 steps of S / (8 x 4) at 20 GB/s.
  nccl2 = algorithms.seconds(g, 'library_default', 'all-reduce', list(range(8)), bpd, 0.0)
  assert nccl2 == pytest.approx(14 * size / 32 / 20e9)


# --- The cost model's use of it. ---

def test_the_cost_model_uses_the_graph_only_where_the_profile_has_one_and_the_term_is_on():
  dgx = targets.load('gpu-p100-dgx1')
  ins = {'kind': 'all-reduce', 'group_size': 8, 'bytes_per_device': 1.75e9, 'crosses': 'inside',
         'extents': [], 'asynchronous': False, 'overlap_ops': 0, 'operands': 4,
         'members': list(range(8))}
  ring = costmodel.Stack('ring')
  on = costmodel.collective_seconds(ins, dgx, costmodel.ALL, stack=ring)
  assert on == pytest.approx(14 * 1e9 / 8 / 15.75e9 + 14 * 5e-6)
  per_tensor = costmodel.collective_seconds(ins, dgx, stack=costmodel.Stack('ring', 'per_tensor'))
  assert per_tensor == pytest.approx(on + 3 * 14 * 5e-6)
  off = costmodel.collective_seconds(ins, dgx, costmodel.STAGES[-2][1], stack=ring)
  assert off == pytest.approx(1.75e9 / 80e9 + 14 * 5e-6)  # the bus bandwidth table, 8 GPUs
  # A profile without a graph (today's H100) keeps its formula with the term on.
  h100 = targets.load('gpu-h100')
  assert costmodel.collective_seconds(ins, h100) == pytest.approx(1.75e9 / 370e9 + 14 * 2.5e-6)


# --- The format: each refusal names its field. ---

_GOOD = ('[my-gpu]\nname = "My GPU"\ncompile_as = "gpu-h100"\ndevices_per_host = 4\n'
         'peak_bf16_flops = 1e15\nfp32_matmul_flops = 5e14\npeak_fp32_flops = 6e13\n'
         'memory_bytes = 96e9\nmemory_bandwidth = 4e12\nhost_cpus_per_chip = 16\n'
         'inside = { name = "pcie", wiring = "switch", bandwidth = 16e9, latency = 1e-5 }\n'
         'between = { name = "net", bandwidth = 4e10, latency = 8e-6 }\n'
         '[my-gpu.graph]\n'
         'pcie = { sockets = 2, switches_per_socket = 1, devices_per_switch = 2, '
         'device_link = 16e9, switch_uplink = 16e9, socket_link = 20e9, host_memory = 80e9, '
         'peer_to_peer = "switch" }\n'
         'nvlink = { link_bandwidth = 25e9, pairs = [[0, 1, 2], [2, 3, 2]] }\n'
         'nics = { per_host = 1, bandwidth = 25e9 }\n')


@pytest.mark.parametrize('old, new, words', [
    ('devices_per_switch = 2', 'devices_per_switch = 3',
     'graph.pcie: sockets x switches_per_socket x devices_per_switch = 6 devices; the profile '
     'has devices_per_host = 4'),
    ('socket_link = 20e9, ', '', 'graph.pcie.socket_link: missing; 2 sockets need'),
    ('"switch" }', '"bus" }', "graph.pcie.peer_to_peer: 'bus'; expected one of switch, socket"),
    ('[2, 3, 2]', '[2, 4, 2]', 'graph.nvlink.pairs[1]: [2, 4, 2]; expected [a, b, links]'),
    ('[2, 3, 2]', '[1, 0, 1]', 'graph.nvlink.pairs[1]: [1, 0] is listed twice'),
    ('[[0, 1, 2], [2, 3, 2]]', '[[0, 1]]', 'graph.nvlink.pairs[0]: 2 values; expected 3'),
    ('nics = { per_host = 1, bandwidth = 25e9 }', 'nics = { per_host = 1 }',
     'graph.nics.bandwidth: missing'),
    ('host_memory = 80e9', 'host_memory = 0', 'graph.pcie.host_memory: 0 is not a positive'),
    ('nics = {', 'nic = {', 'graph: unknown key nic'),
])
def test_a_graph_table_is_refused_by_field_in_one_line(tmp_path, old, new, words):
  path = tmp_path / 'mine.toml'
  path.write_text(_GOOD)
  graph = targets.load(str(path)).link_graph()
  assert graph.route(0, 1)[0][1] == 'nvlink'
  assert old in _GOOD
  path.write_text(_GOOD.replace(old, new))
  with pytest.raises(targets.TargetError) as e:
    targets.load(str(path))
  assert words in str(e.value) and "profile 'my-gpu'" in str(e.value), str(e.value)
  assert '\n' not in str(e.value)


def test_a_graph_without_links_inside_or_with_unreachable_devices_is_refused(tmp_path):
  path = tmp_path / 'mine.toml'
  no_links = _GOOD.split('pcie = {')[0] + 'nics = { per_host = 1, bandwidth = 25e9 }\n'
  path.write_text(no_links)
  with pytest.raises(targets.TargetError, match='graph: gives no links inside a host'):
    targets.load(str(path))
  islands = _GOOD.split('pcie = {')[0] + \
      'nvlink = { link_bandwidth = 25e9, pairs = [[0, 1, 2], [2, 3, 2]] }\n'
  path.write_text(islands)
  with pytest.raises(targets.TargetError, match='graph.nvlink.pairs: leave some devices'):
    targets.load(str(path))


def test_the_dgx1_case_names_one_call_per_tensor():
  case = published.load(f'{published.CASES}/tf_benchmarks2017.toml')
  assert (case.collective_algorithm, case.collective_granularity) == ('ring', 'per_tensor')
  stack = costmodel.Stack('ring', 'per_tensor')
  from alexnet_jax.pods import validation  # pylint: disable=g-import-not-at-top
  assert validation.case_stack(case) == stack


def test_a_collective_case_on_a_machine_with_a_graph_is_replayed_over_it():
  """plan --collectives: a measurement on the DGX-1 (a case another file could hold) is
  predicted over its links: NCCL 2's 4 rings over NVLink only, 14 steps of S/32 at one link."""
  from alexnet_jax.pods import collectives  # pylint: disable=g-import-not-at-top
  case = collectives.CollectiveCase(
      key='x', title='x', cite='x', url='', checked=False, note='', profile='gpu-p100-dgx1',
      link='inside', kind='all-reduce', group_size=8, software='NCCL 2', sizes=(2 ** 30,),
      given='busbw', values=(20e9,))
  point = collectives.predict_case(case, targets.load('gpu-p100-dgx1'))['points'][0]
  assert point['predicted_seconds'] == pytest.approx(14 * (2 ** 30 / 32 / 20e9 + 5e-6))
