"""A machine as a graph of shared links: which links a copy from one device to another crosses.

A profile's optional `graph` table (profiles/*.toml) describes one host of `devices_per_host`
devices with compact generators, every capacity (bytes/s, one direction) from a datasheet or a
published measurement of the hardware alone, in the profile's `sources`:

    pcie      sockets, switches_per_socket, devices_per_switch: devices are numbered switch by
              switch, socket by socket. device_link (a device to its switch), switch_uplink (a
              switch to its socket's root complex), socket_link (between two sockets; needed
              with sockets > 1), host_memory (one socket's memory: every byte written or read
              there counts), peer_to_peer: which devices read and write each other's memory
              directly over PCIe: "switch" (under one switch), "socket" (under one root complex),
              "all", or "none"; any other copy is staged through host memory.
              Optional, where a measurement of the hardware alone exists (cuda-samples
              p2pBandwidthLatencyTest with P2P disabled on that machine): staged_copy, the rate
              of one staged copy alone (its unidirectional P2P=Disabled figure), and
              staged_copy_both, two staged copies between a pair at once, both directions
              together (its bidirectional figure, which counts both directions). NCCL's
              shared-memory transport does not reach the links' rates: each staged copy from a
              to b also crosses a link of its own (staged_copy) and one the pair's two
              directions share (staged_copy_both).
    nvlink    pairs = [[a, b, links], ...] and link_bandwidth (per link): linked pairs copy over
              their links (the DGX-1's hybrid cube-mesh); a pair without one goes over PCIe, or,
              without a pcie table, relays through the fewest linked devices.
    nvswitch  bandwidth: each device's port into the switch (every pair reaches every other).
    nics      per_host, bandwidth: device i of a host sends to another host through NIC
              i x per_host // devices_per_host, each NIC one link each way.

Routing, for a copy from device a to device b (global indices; host = index // devices_per_host):
an NVLink pair over its links; else through the NVSwitch; else over PCIe: under one switch
(peer_to_peer "switch" or wider) device link up and down; under one socket ("socket" or "all")
also both switches' uplinks; across sockets ("all") also the socket link. Otherwise staged: up
to the root complex, across the socket link if b is on the other socket, written to and read
from b's socket's memory (host_memory counted twice), and down to b. Across hosts: a's NIC out,
b's NIC in (and each device's PCIe device link where there is a pcie table).

A step (algorithms.py) is a set of concurrent transfers: every link's load is the sum of the
bytes that cross it in its direction; the step takes max over links of load / capacity, plus one
latency. Transfers that share a link share its capacity: that is what slows a ring through one
root complex, or a host-staged exchange whose group shares one uplink.
"""

import collections
import dataclasses
import math
from typing import Optional, Sequence

from alexnet_jax.pods import schema
from alexnet_jax.runtime import errors

_RATE = schema.number(positive=True)
_COUNT = schema.integer(minimum=1)
PEER_TO_PEER = ('switch', 'socket', 'all', 'none')
FORMAT = schema.table({}, optional={
    'pcie': schema.table({'sockets': _COUNT, 'switches_per_socket': _COUNT,
                          'devices_per_switch': _COUNT, 'device_link': _RATE,
                          'switch_uplink': _RATE, 'host_memory': _RATE,
                          'peer_to_peer': schema.one_of(*PEER_TO_PEER)},
                         optional={'socket_link': _RATE, 'staged_copy': _RATE,
                                   'staged_copy_both': _RATE}),
    'nvlink': schema.table({'link_bandwidth': _RATE,
                            'pairs': schema.list_of(schema.list_of(schema.integer(minimum=0),
                                                                   length=3), nonempty=True)}),
    'nvswitch': schema.table({'bandwidth': _RATE}),
    'nics': schema.table({'per_host': _COUNT, 'bandwidth': _RATE}),
})


class GraphError(errors.Refused, ValueError):
  """A copy the profile's graph cannot carry (between hosts without NICs, through host memory
  without PCIe), with what to add."""


def problem(graph: dict, devices_per_host: int) -> Optional[tuple[str, str]]:
  """(field, what to do) for a graph table (already checked against FORMAT) whose parts do not
  fit together or the host; None where it is whole."""
  if not any(k in graph for k in ('pcie', 'nvlink', 'nvswitch')):
    return ('graph', 'gives no links inside a host; give pcie, nvlink or nvswitch')
  pcie = graph.get('pcie')
  if pcie:
    count = pcie['sockets'] * pcie['switches_per_socket'] * pcie['devices_per_switch']
    if count != devices_per_host:
      return ('graph.pcie', f'sockets x switches_per_socket x devices_per_switch = {count} '
              f'devices; the profile has devices_per_host = {devices_per_host}: make them equal')
    if pcie['sockets'] > 1 and 'socket_link' not in pcie:
      return ('graph.pcie.socket_link', f'missing; {pcie["sockets"]} sockets need the '
              'bandwidth of the link between them (bytes/s one way)')
  if 'nvlink' in graph:
    seen = set()
    for i, (a, b, links) in enumerate(graph['nvlink']['pairs']):
      if a == b or max(a, b) >= devices_per_host or links < 1:
        return (f'graph.nvlink.pairs[{i}]', f'{[a, b, links]}; expected [a, b, links] with two '
                f'different devices below devices_per_host ({devices_per_host}) and links >= 1')
      if frozenset((a, b)) in seen:
        return (f'graph.nvlink.pairs[{i}]', f'{[a, b]} is listed twice; give each pair once '
                'with its number of links')
      seen.add(frozenset((a, b)))
    if not pcie and 'nvswitch' not in graph:
      reach = _components(devices_per_host, seen)
      if len(reach) > 1:
        return ('graph.nvlink.pairs', 'leave some devices unreachable from others and no pcie '
                'or nvswitch table carries them; link every device or add pcie')
  return None


def _components(n: int, pairs: set) -> list:
  parent = list(range(n))
  def root(i):
    while parent[i] != i:
      i = parent[i]
    return i
  for pair in pairs:
    a, b = tuple(pair)
    parent[root(a)] = root(b)
  return sorted({root(i) for i in range(n)})


@dataclasses.dataclass(frozen=True)
class Graph:
  """The links of hosts of `devices_per_host` devices (the module docstring)."""
  table: dict
  devices_per_host: int

  # --- Where a device sits. ---
  def place(self, device: int) -> tuple[int, int, int, int]:
    """(host, local index, switch, socket) of a global device index."""
    host, local = divmod(device, self.devices_per_host)
    pcie = self.table.get('pcie')
    if not pcie:
      return host, local, 0, 0
    switch = local // pcie['devices_per_switch']
    return host, local, switch, switch // pcie['switches_per_socket']

  def capacity(self, link: tuple) -> float:
    """bytes/s of one link (its key, as route spells it)."""
    kind = link[1]
    if kind == 'nvlink':
      return float(link[-1]) * self.table['nvlink']['link_bandwidth']
    if kind in ('to_nvswitch', 'from_nvswitch'):
      return self.table['nvswitch']['bandwidth']
    if kind in ('nic_out', 'nic_in'):
      return self.table['nics']['bandwidth']
    if kind == 'staged':
      return self.table['pcie']['staged_copy']
    if kind == 'staged_pair':
      return self.table['pcie']['staged_copy_both']
    field = {'device_up': 'device_link', 'device_down': 'device_link',
             'switch_up': 'switch_uplink', 'switch_down': 'switch_uplink',
             'socket': 'socket_link', 'memory': 'host_memory'}[kind]
    return self.table['pcie'][field]

  def _nvlinks(self) -> dict:
    return {frozenset((a, b)): links for a, b, links in self.table.get('nvlink', {}).get(
        'pairs', [])}

  def peers(self, a: int, b: int) -> bool:
    """Whether a and b copy to each other without host memory (NVLink, NVSwitch, or PCIe peer
    to peer as the table allows)."""
    ha, la, sa, ka = self.place(a)
    hb, lb, sb, kb = self.place(b)
    if ha != hb:
      return False
    if frozenset((la, lb)) in self._nvlinks() or 'nvswitch' in self.table:
      return True
    pcie = self.table.get('pcie')
    if not pcie:
      return True  # relayed over NVLink (problem() refuses a graph where it cannot be)
    rule = pcie['peer_to_peer']
    return (rule == 'all' or (rule == 'socket' and ka == kb)
            or (rule == 'switch' and sa == sb))

  def memory(self, device: int) -> tuple:
    """The host memory of the device's socket, as a link."""
    if 'pcie' not in self.table:
      raise GraphError('graph: no pcie table, so no path to host memory (a staged copy, a '
                       'parameter server); add graph.pcie to the profile, or name an algorithm '
                       'that copies device to device')
    host, _, _, socket = self.place(device)
    return (host, 'memory', socket)

  def _pcie_up(self, host: int, local: int, switch: int, socket: int) -> list:
    return [(host, 'device_up', local), (host, 'switch_up', switch)]

  def _pcie_down(self, host: int, local: int, switch: int, socket: int) -> list:
    return [(host, 'switch_down', switch), (host, 'device_down', local)]

  def route(self, a: int, b: int) -> list:
    """The links a copy from device a to device b crosses, in order (a link twice where it is
    crossed twice: host memory, written and read)."""
    if a == b:
      return []
    ha, la, sa, ka = pa = self.place(a)
    hb, lb, sb, kb = pb = self.place(b)
    pcie = self.table.get('pcie')
    if ha != hb:
      nics = self.table.get('nics')
      if not nics:
        raise GraphError('graph: no nics table, so no copy between hosts; add graph.nics '
                         '(per_host, bandwidth) to the profile')
      nic = lambda local: local * nics['per_host'] // self.devices_per_host
      ends = ([(ha, 'device_up', la)], [(hb, 'device_down', lb)]) if pcie else ([], [])
      return ends[0] + [(ha, 'nic_out', nic(la)), (hb, 'nic_in', nic(lb))] + ends[1]
    links = self._nvlinks()
    if frozenset((la, lb)) in links:
      return [(ha, 'nvlink', la, lb, links[frozenset((la, lb))])]
    if 'nvswitch' in self.table:
      return [(ha, 'to_nvswitch', la), (ha, 'from_nvswitch', lb)]
    if not pcie:
      return self._relay(ha, la, lb, links)
    if sa == sb and self.peers(a, b):
      return [(ha, 'device_up', la), (ha, 'device_down', lb)]
    across = [(ha, 'socket', ka, kb)] if ka != kb else []
    if self.peers(a, b):
      return self._pcie_up(*pa) + across + self._pcie_down(*pb)
    memory = (ha, 'memory', kb)
    staged = [(ha, 'staged', a, b)] if 'staged_copy' in pcie else []
    if 'staged_copy_both' in pcie:
      staged.append((ha, 'staged_pair', min(a, b), max(a, b)))
    return self._pcie_up(*pa) + across + [memory, memory] + staged + self._pcie_down(*pb)

  def to_host(self, a: int) -> list:
    """A copy from device a into its own socket's host memory (written once)."""
    memory = self.memory(a)
    return self._pcie_up(*self.place(a)) + [memory]

  def from_host(self, b: int) -> list:
    """A copy from its own socket's host memory to device b (read once)."""
    return [self.memory(b)] + self._pcie_down(*self.place(b))

  def _relay(self, host: int, la: int, lb: int, links: dict) -> list:
    """The fewest NVLink hops from la to lb (breadth first, lowest index first)."""
    before = {la: None}
    todo = collections.deque([la])
    while todo:
      i = todo.popleft()
      for j in sorted(j for pair in links if i in pair for j in pair if j != i):
        if j not in before:
          before[j] = i
          todo.append(j)
    path, j = [], lb
    while before[j] is not None:
      i = before[j]
      path.append((host, 'nvlink', i, j, links[frozenset((i, j))]))
      j = i
    return path[::-1]

  def host_of(self, device: int) -> int:
    return device // self.devices_per_host

  def peer_groups(self, members: Sequence[int]) -> list[list[int]]:
    """`members` split into groups whose devices all reach each other directly (in order)."""
    groups: list[list[int]] = []
    for m in members:
      for g in groups:
        if all(self.peers(m, other) for other in g):
          g.append(m)
          break
      else:
        groups.append([m])
    return groups


def build(table: dict, devices_per_host: int) -> Graph:
  """The Graph of a checked `graph` table (targets.py checks it against FORMAT and problem)."""
  return Graph(table=table, devices_per_host=devices_per_host)


# A step: ('copy', a, b, bytes) moves bytes from device a to device b over route(a, b);
# ('to_host', a, bytes) and ('from_host', b, bytes) between a device and its socket's memory;
# ('host_sum', device, bytes) the CPU's reading and writing of bytes in that device's socket's
# memory (a parameter server's or a staged reduction's sum).
def link_loads(graph: Graph, transfers: Sequence[tuple]) -> dict:
  """bytes per link of one step's concurrent transfers."""
  load: dict = collections.defaultdict(float)
  for t in transfers:
    if t[0] == 'copy':
      links = graph.route(t[1], t[2])
    elif t[0] == 'to_host':
      links = graph.to_host(t[1])
    elif t[0] == 'from_host':
      links = graph.from_host(t[1])
    else:  # host_sum
      links = [graph.memory(t[1])]
    for link in links:
      load[link] += t[-1]
  return load


def step_seconds(graph: Graph, transfers: Sequence[tuple], latency: float) -> float:
  """One step: max over links of load / capacity, plus one latency (a step without transfers:
  the latency alone, a pipeline's fill)."""
  load = link_loads(graph, transfers)
  return max((v / graph.capacity(k) for k, v in load.items()), default=0.0) + latency


def steps_seconds(graph: Graph, steps: Sequence[tuple], latency: float) -> float:
  """The sum of an algorithm's steps, given as (how many times, transfers)."""
  return math.fsum(count * step_seconds(graph, transfers, latency)
                   for count, transfers in steps if count > 0)
