"""A collective as the transfers its algorithm makes, step by step, timed on a link graph.

Each algorithm turns one collective of S bytes (nccl-tests' size: an all-reduce's buffer, an
all-gather's output, a reduce-scatter's input; c = S / n is one device's chunk) over the devices
`members` (in rank order) into steps, each a set of concurrent transfers that linkgraph.py
routes and times (max over links of load / capacity, plus one latency). n devices, groups of g:

  ring              all-reduce: 2(n-1) steps, each device sending c to the next (reduce-scatter
                    then all-gather); all-gather, reduce-scatter: n-1 such steps. In rank order,
                    as NCCL 1 builds its one ring (src/core.cu: ranks ordered by NVML index,
                    a neighbour it cannot reach peer to peer through zero-copy host memory).
  tree              all-reduce only (else ring): NCCL's double binary tree (NCCL >= 2.4,
                    src/graph/trees.cc): two trees each carrying S/2, pipelined: every tree edge
                    carries S/2 up (reduce) and S/2 down (broadcast) in one step, plus
                    2 ceil(log2 n) - 1 steps of latency (the pipeline's depth down and up).
                    Modelled: binary trees in heap order over the ranks, the second over the
                    ranks shifted by one (NCCL shifts or mirrors it so that one tree's leaves
                    are the other's inner nodes).
  hierarchical      groups = the hosts (one host: its peer groups): all-reduce = reduce-scatter
                    inside each group (g-1 steps of S/g), all-reduce across the groups per local
                    rank (2(G-1) steps of S/(g G)), all-gather inside (g-1 steps of S/g);
                    all-gather = across (G-1 steps of c) then inside (g-1 steps of G c);
                    reduce-scatter the reverse.
  host_staged       groups = peer groups (devices that reach each other directly); one group: the
                    ring. All-reduce: reduce-scatter inside each group (g-1 steps of S/g), each
                    device writes its S/g to host memory, the CPU sums the G copies (reads G S,
                    writes S), each device reads its S/g back, all-gather inside. All-gather:
                    inside each group (g-1 steps of c), each device writes c to host memory and
                    reads every other group's chunks, (n-g) c (cuda-convnet2's eight-GPU
                    exchange: a group's uplink carries the copies of each of its devices).
                    Reduce-scatter the reverse, the CPU summing the (n-g) c partials per device.
  parameter_server  every device writes its whole S to host memory, the CPU sums the n copies
                    (reads n S, writes S), every device reads S back; all-gather: write c, read
                    (n-1) c; reduce-scatter: write S, sum, read c.
  peer_to_peer      no library: each device copies to every other directly (all-gather,
                    reduce-scatter: one step of c per pair; all-reduce: both, two steps).
  library_default   a modern library (NCCL 2): its ring over direct links where the machine has
                    one (direct_ring), and for an all-reduce the faster of that ring and the
                    tree (NCCL >= 2.4 tunes the two per size). One ring: NCCL 2's several
                    concurrent rings (channels) over distinct links are not modelled.

A collective-permute is one step of its bytes from each device to the next; an all-to-all one
step of bytes / (n-1) between every pair.

Granularity: one call per compiled collective ("compiled"), per tensor ("per_tensor": each of
the instruction's operands its own call, each paying every step's latency: TensorFlow 1.x's
replicated mode, one NCCL call per variable), or per bucket of `bucket_bytes` of S
("bucketed"). The bytes are the compiled program's either way.
"""

import math
from typing import Sequence

from alexnet_jax.pods import linkgraph

ALGORITHMS = ('ring', 'tree', 'hierarchical', 'host_staged', 'parameter_server', 'peer_to_peer',
              'library_default')
GRANULARITIES = ('compiled', 'per_tensor', 'bucketed')


def size_of(kind: str, bytes_per_device: float, n: int) -> float:
  """nccl-tests' S of the ring convention's bytes per device (hlo.bytes_per_device)."""
  if kind == 'all-reduce':
    return bytes_per_device * n / (2 * (n - 1))
  if kind in ('all-gather', 'reduce-scatter'):
    return bytes_per_device * n / (n - 1)
  return bytes_per_device


def _ring(members: Sequence[int], chunk: float) -> list:
  n = len(members)
  return [('copy', members[i], members[(i + 1) % n], chunk) for i in range(n)] if n > 1 else []


def ring(kind: str, members: Sequence[int], size: float) -> list:
  n = len(members)
  return [(2 * (n - 1) if kind == 'all-reduce' else n - 1, _ring(members, size / n))]


def tree(kind: str, members: Sequence[int], size: float) -> list:
  n = len(members)
  if kind != 'all-reduce' or n < 3:
    return ring(kind, members, size)
  transfers = []
  for order in (list(members), list(members[1:]) + [members[0]]):
    for i in range(1, n):
      child, parent = order[i], order[(i - 1) // 2]
      transfers += [('copy', child, parent, size / 2), ('copy', parent, child, size / 2)]
  return [(1, transfers), (2 * math.ceil(math.log2(n)) - 1, [])]


def _groups(graph: linkgraph.Graph, members: Sequence[int], by_host: bool) -> list:
  if by_host:
    hosts: dict = {}
    for m in members:
      hosts.setdefault(graph.host_of(m), []).append(m)
    if len(hosts) > 1:
      return list(hosts.values())
  return graph.peer_groups(members)


def hierarchical(graph: linkgraph.Graph, kind: str, members: Sequence[int], size: float) -> list:
  groups = _groups(graph, members, by_host=True)
  g, count = len(groups[0]), len(groups)
  if count == 1 or any(len(x) != g for x in groups):
    return ring(kind, members, size)
  inside = lambda chunk: [t for x in groups for t in _ring(x, chunk)]
  across = lambda chunk: [t for l in range(g) for t in _ring([x[l] for x in groups], chunk)]
  if kind == 'all-reduce':
    return [(g - 1, inside(size / g)), (2 * (count - 1), across(size / (g * count))),
            (g - 1, inside(size / g))]
  c = size / len(members)
  return [(count - 1, across(c)), (g - 1, inside(count * c))]  # either order: the same loads


def host_staged(graph: linkgraph.Graph, kind: str, members: Sequence[int], size: float) -> list:
  groups = _groups(graph, members, by_host=False)
  if len(groups) == 1:
    return ring(kind, members, size)
  n, first = len(members), members[0]
  inside = lambda chunk: [t for grp in groups for t in _ring(grp, chunk)]
  group_of = {m: len(grp) for grp in groups for m in grp}
  if kind == 'all-reduce':
    shard = {m: size / group_of[m] for m in members}
    longest = max(group_of.values())
    return [(longest - 1, inside(size / longest)),
            (1, [('to_host', m, shard[m]) for m in members]),
            (1, [('host_sum', first, (len(groups) + 1) * size)]),
            (1, [('from_host', m, shard[m]) for m in members]),
            (longest - 1, inside(size / longest))]
  c = size / n
  longest = max(group_of.values())
  others = {m: (n - group_of[m]) * c for m in members}
  if kind == 'all-gather':
    return [(longest - 1, inside(c)), (1, [('to_host', m, c) for m in members]),
            (1, [('from_host', m, others[m]) for m in members])]
  return [(1, [('to_host', m, others[m]) for m in members]),
          (1, [('host_sum', first, sum(others.values()) + n * c)]),
          (1, [('from_host', m, c) for m in members]), (longest - 1, inside(c))]


def parameter_server(kind: str, members: Sequence[int], size: float) -> list:
  n, first, c = len(members), members[0], size / len(members)
  if kind == 'all-gather':
    return [(1, [('to_host', m, c) for m in members]),
            (1, [('from_host', m, (n - 1) * c) for m in members])]
  back = size if kind == 'all-reduce' else c
  return [(1, [('to_host', m, size) for m in members]), (1, [('host_sum', first, (n + 1) * size)]),
          (1, [('from_host', m, back) for m in members])]


def peer_to_peer(kind: str, members: Sequence[int], size: float) -> list:
  c = size / len(members)
  pairs = [('copy', a, b, c) for a in members for b in members if a != b]
  return [(2 if kind == 'all-reduce' else 1, pairs)]


def direct_ring(graph: linkgraph.Graph, members: Sequence[int]) -> list[int]:
  """`members` reordered into a ring whose every hop is a direct link (NVLink, NVSwitch, PCIe
  peer to peer), the first such in rank order (depth first); rank order where none exists or
  the group is larger than a host (NCCL 2 searches its rings over the machine's topology,
  src/graph/search.cc; NCCL 1 does not)."""
  n = len(members)
  if n < 3 or n > graph.devices_per_host:
    return list(members)
  order = [members[0]]
  def extend() -> bool:
    if len(order) == n:
      return graph.peers(order[-1], order[0])
    for m in members:
      if m not in order and graph.peers(order[-1], m):
        order.append(m)
        if extend():
          return True
        order.pop()
    return False
  return order if extend() else list(members)


def steps(graph: linkgraph.Graph, algorithm: str, kind: str, members: Sequence[int],
          bytes_per_device: float) -> list:
  """The collective's steps, [(how many times, transfers), ...] (the module docstring)."""
  n = len(members)
  if kind == 'collective-permute':
    return [(1, _ring(members, bytes_per_device))]
  if kind == 'all-to-all':
    return [(1, [('copy', a, b, bytes_per_device / (n - 1))
                 for a in members for b in members if a != b])]
  size = size_of(kind, bytes_per_device, n)
  if algorithm == 'tree':
    return tree(kind, members, size)
  if algorithm == 'hierarchical':
    return hierarchical(graph, kind, members, size)
  if algorithm == 'host_staged':
    return host_staged(graph, kind, members, size)
  if algorithm == 'parameter_server':
    return parameter_server(kind, members, size)
  if algorithm == 'peer_to_peer':
    return peer_to_peer(kind, members, size)
  if algorithm in ('ring', 'library_default'):
    return ring(kind, members, size)
  raise ValueError(f'unknown collective algorithm {algorithm!r}; expected one of '
                   f'{", ".join(ALGORITHMS)}')


def seconds(graph: linkgraph.Graph, algorithm: str, kind: str, members: Sequence[int],
            bytes_per_device: float, latency: float, calls: int = 1) -> float:
  """The collective's time: its steps' transfers once, every step's latency once per call
  (`calls`: its tensors or buckets, granularity_calls). library_default: over direct_ring's
  order, the faster of ring and tree (an all-reduce), else the ring."""
  if len(members) < 2 or bytes_per_device <= 0:
    return 0.0
  if algorithm == 'library_default':
    ring_order = direct_ring(graph, members)
    return min(seconds(graph, a, kind, ring_order, bytes_per_device, latency, calls)
               for a in (('ring', 'tree') if kind == 'all-reduce' else ('ring',)))
  plan = steps(graph, algorithm, kind, members, bytes_per_device)
  moving = linkgraph.steps_seconds(graph, plan, 0.0)
  return moving + calls * sum(count for count, _ in plan) * latency


def granularity_calls(granularity: str, operands: int, size: float, bucket_bytes: float) -> int:
  """How many library calls one compiled collective makes: 1 ("compiled"), one per operand
  ("per_tensor"), or one per started bucket of bucket_bytes ("bucketed")."""
  if granularity == 'per_tensor':
    return max(1, operands)
  if granularity == 'bucketed':
    if bucket_bytes <= 0:
      raise ValueError('bucketed granularity needs bucket_bytes > 0')
    return max(1, math.ceil(size / bucket_bytes))
  return 1
