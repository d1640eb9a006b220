"""A collective as the transfers its algorithm makes, step by step, timed on a link graph.

Each algorithm turns one collective of S bytes (nccl-tests' size: an all-reduce's buffer, an
all-gather's output, a reduce-scatter's input; c = S / n is one device's chunk) over the devices
`members` (in rank order) into steps, each a set of concurrent transfers that linkgraph.py
routes and times (max over links of load / capacity, plus one latency). n devices, groups of g:

  ring              all-reduce: 2(n-1) steps, each device sending c to the next (reduce-scatter
                    then all-gather); all-gather, reduce-scatter: n-1 such steps. In rank order,
                    as NCCL 1 builds its one ring (src/core.cu: ranks ordered by NVML index,
                    a neighbour it cannot reach peer to peer through zero-copy host memory).
  tree              all-reduce only (else ring): NCCL's tree (NCCL >= 2.4, src/graph/connect.cc,
                    trees.cc): a chain inside each host and a double binary tree between the
                    hosts. K channels (K = min(NICs per host, devices per host) across hosts,
                    else 1), each S/K: channel k's chain in each host starts at its k-th device
                    (the head, on NIC k); every chain edge carries S/K up (reduce) and S/K down
                    (broadcast); the heads form two binary trees in heap order over the hosts
                    (the second over the hosts shifted by one), each edge S/(2K) each way. One
                    pipelined step, plus 2 depth - 1 steps of latency, depth = the chain's
                    hops + ceil(log2 hosts).
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
  library_default   a modern library (NCCL 2): its concurrent rings (channels), the message split
                    evenly over them: over NVLink pairs, as many directed rings through the
                    group as the links allow, each taking one link per hop (nvlink_rings; NCCL
                    issue 299: 4 rings on a DGX-1; issue 655: a pair's links share its
                    traffic); across hosts of several NICs, rail-aligned rings, one per local
                    rank (rail_rings); else one ring over direct links (direct_ring). For an
                    all-reduce across hosts, the fastest of those rings, the tree and
                    hierarchical (NCCL tunes ring and tree per size; nccl-tests issue 196: tree
                    on two nodes). Inside one host the rings (NCCL: 'for most intra-node cases
                    ... the ring algorithm is still the default', NVIDIA/nccl issue 301).
                    NCCL 1 (`ring`): one ring in rank order, as above.

  nvls              all-reduce inside one NVSwitch host (else ring): NVLink SHARP, the switch
                    reduces and multicasts. Each device sends S and receives S / n for the
                    reduce-scatter and S / n and S for the all-gather (NVIDIA/nccl issue 1506,
                    NVIDIA: 'size in one direction and 1/N*size in the other'; nccl-tests issue
                    238: N+1 sends and N+1 receives against the ring's 2N): one pipelined step
                    of S (n+1)/n each way through each device's port, plus 2 latencies.
  collnet           all-reduce across hosts (else hierarchical): CollNet, SHARP's reduction in the
                    InfiniBand switches: reduce-scatter inside each host (g-1 ring steps of S/g),
                    each device's S/g out of its NIC and the reduced S/g back (whatever the
                    number of hosts: the switches sum), all-gather inside; pipelined as the
                    tree: one step carrying all of it, plus 2(g-1) + 1 latencies. NVLS and CollNet need
                    hardware the graph does not describe: a stack or case names them, never
                    library_default.

A collective-permute is one step of its bytes from each device to the next; an all-to-all one
step of bytes / (n-1) between every pair.

Granularity: one call per compiled collective ("compiled"), per tensor ("per_tensor": each of
the instruction's operands its own call, each paying every step's latency: TensorFlow 1.x's
replicated mode, one NCCL call per variable), or per bucket of `bucket_bytes` of S
("bucketed"). The bytes are the compiled program's either way.
"""

import functools
import math
from typing import Sequence

from alexnet_jax.pods import linkgraph
from alexnet_jax.pods import nccl

ALGORITHMS = ('ring', 'tree', 'hierarchical', 'host_staged', 'parameter_server', 'peer_to_peer',
              'nvls', 'collnet', 'library_default')
GRANULARITIES = ('compiled', 'per_tensor', 'bucketed')
_SEARCH_BUDGET = 200_000  # steps of a ring search before it keeps what it found (big meshes)


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


def tree(graph: linkgraph.Graph, kind: str, members: Sequence[int], size: float) -> list:
  n = len(members)
  if kind != 'all-reduce' or n < 3:
    return ring(kind, members, size)
  hosts: dict = {}
  for m in members:
    hosts.setdefault(graph.host_of(m), []).append(m)
  groups = list(hosts.values())
  count, g = len(groups), max(len(x) for x in groups)
  nics = graph.table.get('nics', {}).get('per_host', 1)
  k = min(nics, g) if count > 1 else 1
  transfers = []
  for channel in range(k):
    heads = []
    for group in groups:
      start = channel * len(group) // k
      chain = group[start:] + group[:start]
      heads.append(chain[0])
      for a, b in zip(chain, chain[1:]):
        transfers += [('copy', b, a, size / k), ('copy', a, b, size / k)]
    for order in (heads, heads[1:] + heads[:1]):
      for i in range(1, count):
        child, parent = order[i], order[(i - 1) // 2]
        transfers += [('copy', child, parent, size / (2 * k)),
                      ('copy', parent, child, size / (2 * k))]
  depth = g - 1 + (math.ceil(math.log2(count)) if count > 1 else 0)
  return [(1, transfers), (2 * depth - 1, [])]


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


def nvls(graph: linkgraph.Graph, kind: str, members: Sequence[int], size: float) -> list:
  n = len(members)
  if (kind != 'all-reduce' or 'nvswitch' not in graph.table
      or len({graph.host_of(m) for m in members}) > 1):
    return ring(kind, members, size)
  # Each device's port: S (n+1)/n up and as much down; as copies, each to the next member.
  return [(1, _ring(members, size * (n + 1) / n)), (1, [])]


def collnet(graph: linkgraph.Graph, kind: str, members: Sequence[int], size: float) -> list:
  groups = _groups(graph, members, by_host=True)
  g = len(groups[0])
  if (kind != 'all-reduce' or len({graph.host_of(m) for m in members}) < 2
      or any(len(x) != g for x in groups)):
    return hierarchical(graph, kind, members, size)
  # Pipelined, as the tree: the reduce-scatter's and the all-gather's g-1 ring steps of S/g
  # inside and the NICs' S/g at once, plus 2(g-1) + 1 latencies.
  inside = [t for x in groups for t in _ring(x, 2 * (g - 1) * size / g)]
  out = [t for l in range(g) for t in _ring([x[l] for x in groups], size / g)]
  return [(1, inside + out), (2 * (g - 1), [])]


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
  found = _hamiltonian(members, lambda a, b: graph.peers(a, b), limit=1)
  return list(found[0]) if found else list(members)


def _hamiltonian(members: Sequence[int], linked, limit: int) -> list[tuple]:
  """Up to `limit` directed rings through every member, starting at members[0], each hop
  linked(a, b), in depth-first order over the members' rank order."""
  n, rings, order, visits = len(members), [], [members[0]], [0]
  def extend() -> bool:
    visits[0] += 1
    if visits[0] > _SEARCH_BUDGET:
      return True
    if len(order) == n:
      if linked(order[-1], order[0]):
        rings.append(tuple(order))
      return len(rings) >= limit
    for m in members:
      if m not in order and linked(order[-1], m):
        order.append(m)
        if extend():
          return True
        order.pop()
    return False
  extend()
  return rings


def nvlink_rings(graph: linkgraph.Graph, members: Sequence[int]) -> list[tuple]:
  """NCCL 2's concurrent rings (channels) over NVLink pairs: as many directed rings through
  every member as the links allow, each taking one link of each pair it crosses in its
  direction (NCCL's search, src/graph/search.cc, gives each channel a link's bandwidth; a pair
  of k links carries k channels; NVIDIA's DGX-1 V100 architecture: the cube-mesh 'can be
  thought of as three interwoven rings of single NVLink connections', six directed rings).
  [] where the members are not one host's or no ring of NVLinks passes through them all."""
  pairs = tuple(tuple(p) for p in graph.table.get('nvlink', {}).get('pairs', ()))
  host = graph.host_of(members[0])
  if (len(members) < 2 or 'nvswitch' in graph.table or not pairs
      or any(graph.host_of(m) != host for m in members)):
    return []
  local = tuple(m % graph.devices_per_host for m in members)
  offset = host * graph.devices_per_host
  return [tuple(offset + m for m in r) for r in _most_rings(pairs, local)]


@functools.lru_cache(maxsize=256)
def _most_rings(pairs: tuple, members: tuple) -> list:
  links = {frozenset((a, b)): count for a, b, count in pairs}
  left = {(a, b): links.get(frozenset((a, b)), 0) for a in members for b in members if a != b}
  if len(members) == 2:
    a, b = members
    return [(a, b)] * left[(a, b)]
  candidates = _hamiltonian(members, lambda a, b: left[(a, b)] > 0, limit=5000)
  bound = min(sum(left[(a, b)] for b in members if b != a) for a in members)
  best: list = []
  chosen: list = []
  visits = [0]
  def pick(start: int) -> bool:
    if len(chosen) > len(best):
      best[:] = chosen
    visits[0] += 1
    if len(best) >= bound or visits[0] > _SEARCH_BUDGET:  # a large mesh: the best found so far
      return True
    for i in range(start, len(candidates)):
      hops = list(zip(candidates[i], candidates[i][1:] + candidates[i][:1]))
      if all(left[h] > 0 for h in hops):
        for h in hops:
          left[h] -= 1
        chosen.append(candidates[i])
        done = pick(i)
        chosen.pop()
        for h in hops:
          left[h] += 1
        if done:
          return True
    return False
  pick(0)
  return best


def rail_rings(graph: linkgraph.Graph, members: Sequence[int]) -> list[tuple]:
  """NCCL 2's rings across hosts over every NIC (rail-aligned): one ring per local rank r of
  hosts holding g members each; each host's members in the ring start one place earlier than
  the host before, so each crossing joins two devices of the same local rank (the same rail),
  and across the g rings every device's NIC carries one crossing each way. [] for one host,
  unequal hosts, or hosts of one NIC."""
  hosts: dict = {}
  for m in members:
    hosts.setdefault(graph.host_of(m), []).append(m)
  groups = list(hosts.values())
  g = len(groups[0])
  nics = graph.table.get('nics', {}).get('per_host', 1)
  if len(groups) < 2 or g < 2 or nics < 2 or any(len(x) != g for x in groups):
    return []
  rings = []
  for r in range(g):
    ring = []
    for h, group in enumerate(groups):
      start = (r - h) % g
      ring += group[start:] + group[:start]
    rings.append(tuple(ring))
  return rings


def channels(graph: linkgraph.Graph, members: Sequence[int]) -> list[tuple]:
  """The rings NCCL 2 runs at once for `members` (the message split evenly over them): its
  rings over NVLink pairs, or rail-aligned across hosts, else one ring (direct_ring)."""
  return (nvlink_rings(graph, members) or rail_rings(graph, members)
          or [tuple(direct_ring(graph, members))])


def channel_ring(kind: str, rings: Sequence[tuple], size: float) -> list:
  """The ring algorithm over several concurrent rings, each carrying size / len(rings)."""
  n, k = len(rings[0]), len(rings)
  transfers = [t for r in rings for t in _ring(r, size / (n * k))]
  return [(2 * (n - 1) if kind == 'all-reduce' else n - 1, transfers)]


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
  if algorithm in _ON_GRAPH:
    return _ON_GRAPH[algorithm](graph, kind, members, size)
  if algorithm in _OFF_GRAPH:
    return _OFF_GRAPH[algorithm](kind, members, size)
  raise ValueError(f'unknown collective algorithm {algorithm!r}; expected one of '
                   f'{", ".join(ALGORITHMS)}')


# Each algorithm's steps: those that route by the machine's links take the graph.
_ON_GRAPH = {'tree': tree, 'hierarchical': hierarchical, 'host_staged': host_staged,
             'nvls': nvls, 'collnet': collnet}
_OFF_GRAPH = {'parameter_server': parameter_server, 'peer_to_peer': peer_to_peer,
              'ring': ring, 'library_default': ring}


def seconds(graph: linkgraph.Graph, algorithm: str, kind: str, members: Sequence[int],
            bytes_per_device: float, latency: float, calls: int = 1,
            concurrent: Sequence[Sequence[int]] = (), nccl_arch: str = '') -> float:
  """The collective's time: its steps' transfers once, every step's latency once per call
  (`calls`: its tensors or buckets, granularity_calls). `concurrent`: the instruction's other
  groups, running the same steps at the same time, their transfers sharing the links.
  library_default: over direct_ring's order, the faster of ring and tree (an all-reduce), else
  the ring. `nccl_arch` (a profile whose stack is NCCL 2): the latency of NCCL's ring and tree
  from its own tuning tables, by the link classes the steps cross and the protocol it would
  pick (pods/nccl.py); any other algorithm: each step NCCL's Simple ring latency of the class
  of the links that step crosses (not `latency`)."""
  if len(members) < 2 or bytes_per_device <= 0:
    return 0.0
  if algorithm == 'library_default':
    options = ['channels']
    if kind == 'all-reduce' and len({graph.host_of(m) for m in members}) > 1:
      options += ['tree', 'hierarchical']
    return min(seconds(graph, a, kind, members, bytes_per_device, latency, calls, concurrent,
                       nccl_arch) for a in options)
  plan = _plan(graph, algorithm, kind, members, bytes_per_device)
  for group in concurrent:
    theirs = _plan(graph, algorithm, kind, group, bytes_per_device)
    if [count for count, _ in theirs] == [count for count, _ in plan]:
      plan = [(count, mine + other) for (count, mine), (_, other) in zip(plan, theirs)]
  moving = linkgraph.steps_seconds(graph, plan, 0.0)
  if not nccl_arch:
    return moving + calls * sum(count for count, _ in plan) * latency
  hosts = len({graph.host_of(m) for m in members})
  if algorithm in ('channels', 'ring', 'tree') and kind in ('all-reduce', 'all-gather',
                                                           'reduce-scatter'):
    return nccl.seconds(algorithm, kind, len(members), hosts, intra_class(graph, plan),
                        nccl_arch, bytes_per_device, moving,
                        size_of(kind, bytes_per_device, len(members)), calls)
  simple = nccl.PROTOCOLS.index('Simple')
  return moving + calls * 1e-6 * (nccl.BASE['ring'][simple] + sum(
      count * nccl.HW[step_class(graph, transfers)]['ring'][simple] for count, transfers in plan))


def _kinds(graph: linkgraph.Graph, transfers: Sequence[tuple]) -> list:
  return [link[1] for link in linkgraph.link_loads(graph, transfers)]


def step_class(graph: linkgraph.Graph, transfers: Sequence[tuple]) -> str:
  """NCCL's hardware class of one step: 'net' where a transfer leaves its host, else the class
  of the links it crosses (nccl.link_class)."""
  kinds = _kinds(graph, transfers)
  if any(k in ('nic_out', 'nic_in') for k in kinds):
    return 'net'
  return nccl.link_class(kinds)


def intra_class(graph: linkgraph.Graph, plan: Sequence[tuple]) -> str:
  """The class of the links the collective crosses inside its hosts (NCCL's typeIntra); a
  group of one device per host: NVLink (nothing inside a host disables a protocol)."""
  inside = [t for _, transfers in plan for t in transfers
            if not (t[0] == 'copy' and graph.host_of(t[1]) != graph.host_of(t[2]))]
  return nccl.link_class(_kinds(graph, inside)) if inside else 'nvlink'


def _plan(graph: linkgraph.Graph, algorithm: str, kind: str, members: Sequence[int],
          bytes_per_device: float) -> list:
  if algorithm == 'channels' and kind in ('all-reduce', 'all-gather', 'reduce-scatter'):
    return channel_ring(kind, channels(graph, members),
                        size_of(kind, bytes_per_device, len(members)))
  if algorithm == 'channels':
    algorithm = 'ring'
  return steps(graph, algorithm, kind, members, bytes_per_device)


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
