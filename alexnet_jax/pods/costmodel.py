"""The pod plan's cost model: a compiled step's time from its ops, its collectives and a profile.

Data plus formulas anyone can check by hand. The program (its ops in scheduled order, their
FLOPs and memory traffic, its collectives and the devices each joins) is read from the compiled
step (hlo.step_ops, hlo.parse_collectives); every number of the hardware comes from a profile
whose fields have public sources (profiles/*.toml); the one fitted number is a platform's
compute efficiency, from a measured point (fit_efficiency), and is labelled as calibrated.

  op          conv, matmul: max(FLOPs / (peak x efficiency), bytes / memory bandwidth)
              memory-bound (elementwise fusions, LRN, pooling, copies): bytes / memory bandwidth
  collective  bytes per device (ring convention, hlo.py) / bus bandwidth + steps x latency
              bus bandwidth: nccl-tests' busbw (algbw x 2(n-1)/n for an all-reduce) as
              published for the link, by group size where the source gives several; else
              the link's datasheet bandwidth. steps: g-1 (all-reduce 2(g-1)) on a ring.
              torus (TPU): the axes the group spans; an axis with a wraparound link runs a
              bidirectional ring (two links), one without (shorter than the profile's
              wraparound extent) a line, half of that.
              pcie: a group within a peer group (GPUs that reach each other directly) runs at
              the link's rate; one spanning peer groups stages through host memory, at the
              group's host link (host_bandwidth).
              measured (plan --calibration with a file's `collectives` of the target's device,
              pods/calibration.measured_bus_bandwidth): for an all-reduce, all-gather or
              reduce-scatter inside a node/slice over a group size the file measured, bytes
              per device / the busbw measured at the largest size S* <= the instruction's
              size S (nccl-tests' S = bytes per device / bus_factor), no latency term added
              (the measured time holds it): the measured time at S*, scaled by S / S*. Else,
              below the smallest size measured, or another group size or kind: the above.
  link graph  (a profile with a `graph` table, GPUs; feature link_graph) a collective becomes the
              transfers of the software stack's algorithm (Stack: the case's
              run.collective_algorithm, else what the platform's library does: NCCL 2's
              concurrent rings, and across hosts the fastest of those, its tree and
              hierarchical), routed over the machine's links, links shared by the
              transfers that cross them, the instruction's other groups' included
              (pods/linkgraph.py, pods/algorithms.py); each step one
              latency, per call (per tensor or bucket where the stack made one call each).
              Replaces the bus bandwidth and peer-group terms; a measured table still comes
              first; a TPU torus keeps the formula above.
  step        the schedule replayed on two streams: compute runs the ops in order; a
              synchronous collective blocks it; an asynchronous one runs on the collective
              stream from its start (after the collective before it) and blocks compute at
              its done. The step is when compute ends. Without overlap: the sum of all.

Every term can be switched off (Features), so the docs can show what each one changes.
"""

import dataclasses
import math
from typing import Optional, Sequence

from alexnet_jax.pods import algorithms
from alexnet_jax.pods import targets as targets_lib


@dataclasses.dataclass(frozen=True)
class Features:
  """Which terms of the model are on. All off is the plan's first model: compute = the step's
  FLOPs / (peak x efficiency), each collective over the link's datasheet bandwidth, a torus
  axis always wrapped, PCIe groups ignored, overlap by the share of heavy ops in each window."""
  per_op: bool = True  # each op on its own roofline, from the compiled program
  bus_bandwidth: bool = True  # nccl-tests' published busbw, by group size
  pcie_groups: bool = True  # peer groups and staging through host memory
  wraparound: bool = True  # TPU axes without wraparound links
  schedule_overlap: bool = True  # the compiled schedule replayed on two streams
  link_graph: bool = True  # collectives as their algorithm's transfers over the profile's graph


@dataclasses.dataclass(frozen=True)
class Stack:
  """How the software stack moved a collective's bytes (a published case's run table): the
  algorithm (algorithms.ALGORITHMS; '' = what the platform's library does by default) and one
  library call per compiled collective, per tensor, or per bucket of bucket_bytes."""
  algorithm: str = ''
  granularity: str = 'compiled'
  bucket_bytes: float = 0.0


DEFAULT_STACK = Stack()


# The compute efficiency assumed where nothing was calibrated (plan --efficiency's default, the
# validation's "before" model and its cases that do not calibrate).
ASSUMED_EFFICIENCY = 0.4

FIRST = Features(False, False, False, False, False, False)
ALL = Features()
# The model's changes in the order the docs show them (name, what it adds).
STAGES = (
    ('first model', FIRST),
    ('per-op roofline', dataclasses.replace(FIRST, per_op=True)),
    ('bus bandwidth', dataclasses.replace(FIRST, per_op=True, bus_bandwidth=True)),
    ('PCIe peer groups', dataclasses.replace(FIRST, per_op=True, bus_bandwidth=True,
                                             pcie_groups=True)),
    ('torus wraparound', dataclasses.replace(ALL, schedule_overlap=False, link_graph=False)),
    ('schedule overlap', dataclasses.replace(ALL, link_graph=False)),
    ('link graph and algorithm', ALL),
)


# The profile field that holds a compute dtype's matrix-product rate. float16 has its own: on
# Pascal (P100) it is twice float32 and there is no bfloat16; Kepler and Fermi have no float16
# arithmetic, and TPUs none at all, so a profile without the field refuses float16.
PEAK_FIELDS = {'float32': 'fp32_matmul_flops', 'bfloat16': 'peak_bf16_flops',
               'float16': 'peak_fp16_flops'}


def compute_peak(profile: targets_lib.Profile, dtype: str) -> float:
  """FLOP/s of a convolution or matrix product in the compute dtype, per device (TargetError
  where the profile lacks the dtype's field: PEAK_FIELDS)."""
  field = PEAK_FIELDS.get(str(dtype), 'fp32_matmul_flops')
  if field not in profile.numbers:
    raise targets_lib.TargetError(
        f'profile {profile.key!r}: {field}: missing; {dtype} compute is predicted from it: add '
        f'{field} (FLOP/s per chip) with its public source to the profile, or compute in '
        'float32 or bfloat16')
  return profile.per_device(field)


def op_seconds(op: dict, profile: targets_lib.Profile, efficiency: float, dtype: str) -> float:
  """One op on its roofline: the slower of its FLOPs at the calibrated rate and its memory
  traffic at the datasheet bandwidth (the efficiency applies to the FLOP rate only)."""
  memory = op['bytes'] / profile.per_device('memory_bandwidth')
  if op['category'] in ('conv', 'matmul'):
    return max(op['flops'] / (compute_peak(profile, dtype) * efficiency), memory)
  if op['category'] == 'memory':
    return memory
  return 0.0


def bus_bandwidth(link: dict, group_size: int, features: Features) -> float:
  """The bandwidth a collective over `group_size` devices sees on `link` (bytes/s, in the ring
  convention's bytes per device): the published bus bandwidth where the profile has one and the
  feature is on (a table by group size: the entry of the largest size not above it), else the
  link's datasheet bandwidth."""
  bus = link.get('bus_bandwidth')
  if not features.bus_bandwidth or bus is None:
    return float(link['bandwidth'])
  if isinstance(bus, dict):
    sizes = sorted(int(k) for k in bus)
    fits = [s for s in sizes if s <= group_size] or sizes[:1]
    return float(bus[str(fits[-1])] if str(fits[-1]) in bus else bus[fits[-1]])
  return float(bus)


# The collectives a calibration measures (perf/collectives.py), and nccl-tests' factor from
# algbw to busbw for each (NVIDIA/nccl-tests, doc/PERFORMANCE.md): busbw x t = S x factor is the
# bytes one rank sends in a ring (hlo.bytes_per_device), S as nccl-tests reports it (all-gather
# and reduce-scatter: the total array, n x the per-rank part).
MEASURED_KINDS = ('all-reduce', 'all-gather', 'reduce-scatter')


def bus_factor(kind: str, group_size: int) -> float:
  """busbw / algbw: 2(n-1)/n for an all-reduce, (n-1)/n for an all-gather or reduce-scatter."""
  n = group_size
  return {'all-reduce': 2 * (n - 1) / n, 'all-gather': (n - 1) / n,
          'reduce-scatter': (n - 1) / n}[kind]


def measured_seconds(table: Optional[dict], kind: str, group_size: int,
                     bytes_per_device: float) -> Optional[float]:
  """A collective's time from a measured busbw table, {kind: {group size: [[S, busbw], ...]}}
  (S ascending): bytes per device / the busbw at the largest measured S <= the instruction's S;
  None where the table has no such point (no table, another kind or group size, or an S below
  the smallest measured)."""
  points = ((table or {}).get(kind) or {}).get(group_size) or []
  if not points or group_size < 2:
    return None
  size = bytes_per_device / bus_factor(kind, group_size)
  below = [busbw for s, busbw in points if s <= size * (1 + 1e-12)]
  return bytes_per_device / below[-1] if below else None


def _axis_wraps(extent: int, link: dict, slice_shape: Sequence[int]) -> bool:
  """Whether a torus axis of `extent` chips has its wraparound link: on axes of at least
  `wraparound_min_extent` chips (and, with `wraparound_full_cubes`, only where every axis of
  the slice is that long)."""
  least = int(link.get('wraparound_min_extent', 0) or 0)
  if extent < least:
    return False
  if link.get('wraparound_full_cubes') and any(e < least for e in slice_shape):
    return False
  return True


def members(ins: dict, profile: targets_lib.Profile) -> list[int]:
  """The devices of one of the instruction's groups, in rank order: as compiled where the plan
  read them; else the first group_size devices, or (a group between hosts no larger than a
  host) one device on each of group_size hosts."""
  if ins.get('members'):
    return list(ins['members'])
  g = ins['group_size']
  if ins['crosses'] == 'between' and g <= profile.devices_per_host:
    return [i * profile.devices_per_host for i in range(g)]
  return list(range(g))


def graph_seconds(ins: dict, profile: targets_lib.Profile, stack: Stack = DEFAULT_STACK,
                  latency_scale: float = 1.0) -> float:
  """One collective on the profile's link graph (the module docstring's link graph term)."""
  group = members(ins, profile)
  algorithm = stack.algorithm or 'library_default'
  link = profile.between if ins['crosses'] == 'between' else profile.inside
  size = algorithms.size_of(ins['kind'], ins['bytes_per_device'], len(group))
  calls = algorithms.granularity_calls(stack.granularity, ins.get('operands', 1), size,
                                       stack.bucket_bytes)
  return algorithms.seconds(profile.link_graph(), algorithm, ins['kind'], group,
                            ins['bytes_per_device'], float(link['latency']) * latency_scale,
                            calls, ins.get('other_groups', ()))


def collective_seconds(ins: dict, profile: targets_lib.Profile,
                       features: Features = ALL, latency_scale: float = 1.0,
                       stack: Stack = DEFAULT_STACK) -> float:
  """One collective instruction's time (see the module docstring). `ins` is a plan entry's
  instruction: kind, group_size, bytes_per_device, crosses ('inside' | 'between'), and for a
  torus the extents of the axes it spans, for PCIe the peer groups it spans. A table
  `measured_bus_bandwidth` in the profile's inside link (plan --calibration) comes first
  (measured_seconds); without one, the profile's figures."""
  g, kind = ins['group_size'], ins['kind']
  if g <= 1 or ins['bytes_per_device'] <= 0:
    return 0.0
  if ins['crosses'] == 'inside' and features.bus_bandwidth:
    measured = measured_seconds(profile.inside.get('measured_bus_bandwidth'), kind, g,
                                ins['bytes_per_device'])
    if measured is not None:
      return measured
  if features.link_graph and profile.graph and profile.inside.get('wiring') != 'torus':
    return graph_seconds(ins, profile, stack, latency_scale)
  rounds = 2 if kind == 'all-reduce' else 1
  steps = rounds * (g - 1)
  if ins['crosses'] == 'between':
    link = profile.between
    bandwidth = bus_bandwidth(link, g, features)
  elif profile.inside.get('wiring') == 'torus':
    link = profile.inside
    extents = ins.get('extents', [])
    shape = ins.get('slice_shape', extents)
    wraps = lambda e: (not features.wraparound) or _axis_wraps(e, link, shape)
    ports = sum(2 if e > 2 and wraps(e) else 1 for e in extents)
    if not ports:  # devices of one chip (TPU v4's two cores): through its memory
      return ins['bytes_per_device'] / profile.per_device('memory_bandwidth')
    bandwidth = ports * float(link['link_bandwidth'])
    steps = rounds * sum(e - 1 for e in extents)
  else:
    link = profile.inside
    bandwidth = bus_bandwidth(link, g, features)
    if (features.pcie_groups and link.get('wiring') == 'pcie'
        and ins.get('peer_groups', 1) > 1):
      bandwidth = min(bandwidth, float(link['host_bandwidth']))
  if kind == 'collective-permute':
    steps = 1
  return ins['bytes_per_device'] / bandwidth + steps * float(link['latency']) * latency_scale


def replay(ops: Sequence[dict], op_time: dict, collective_time: dict) -> float:
  """The step's end on two streams (module docstring). `op_time`: seconds per op name;
  `collective_time`: seconds per collective op name (the start, or the synchronous op)."""
  compute, stream, ends = 0.0, 0.0, {}
  for op in ops:
    if op['category'] == 'collective':
      t = collective_time.get(op['name'], 0.0)
      if op['asynchronous']:
        begin = max(compute, stream)
        ends[op['name']] = stream = begin + t
      else:
        compute = stream = max(compute, stream) + t
    elif op['category'] == 'wait':
      compute = max(compute, ends.get(op['waits_for'], 0.0))
    else:
      compute += op_time.get(op['name'], 0.0)
  return compute


def predict_step(entry: dict, profile: targets_lib.Profile, efficiency: float, dtype: str,
                 features: Features = ALL, latency_scale: float = 1.0,
                 stack: Stack = DEFAULT_STACK) -> dict:
  """The predicted step of one compiled plan entry: compute, communication, what the schedule
  hides, the step with and without overlap (seconds)."""
  peak = compute_peak(profile, dtype)
  ops = entry.get('ops') or []
  times = {name: collective_seconds(ins, profile, features, latency_scale, stack)
           for name, ins in entry['instructions'].items()}
  comm = sum(times.values())
  if features.per_op and ops:
    op_time = {op['name']: op_seconds(op, profile, efficiency, dtype) for op in ops}
    compute = sum(op_time.values())
  else:
    flops = entry['compiled_flops_per_device'] or entry['analytic_flops_per_device']
    compute = flops / (peak * efficiency)
    op_time = None
  if features.schedule_overlap and ops and op_time is not None:
    per_op = {}
    for op in ops:
      if op['category'] == 'collective':
        per_op[op['name']] = sum(times.get(c, 0.0) for c in op['collective'])
    with_overlap = replay(ops, op_time, per_op)
    # Collectives the schedule does not show (none expected) are added in full.
    shown = {c for op in ops if op['category'] == 'collective' for c in op['collective']}
    with_overlap += sum(t for name, t in times.items() if name not in shown)
  else:
    # The first model's overlap: an asynchronous collective hides behind at most the share of
    # the step's heavy ops that the schedule places between its start and done.
    hidden = 0.0
    for name, ins in entry['instructions'].items():
      if ins['asynchronous'] and entry.get('heavy_ops'):
        hidden += min(times[name], compute * ins['overlap_ops'] / entry['heavy_ops'])
    with_overlap = compute + comm - min(hidden, compute)
  no_overlap = compute + comm
  return {'compute_seconds': compute, 'communication_seconds': comm,
          'hidden_seconds': no_overlap - with_overlap,
          'step_seconds': {'no_overlap': no_overlap, 'with_overlap': with_overlap}}


def fit_efficiency(entry: dict, profile: targets_lib.Profile, dtype: str, step_seconds: float,
                   features: Features = ALL, stack: Stack = DEFAULT_STACK) -> Optional[float]:
  """The compute efficiency at which the model's step equals a measured one (bisection on a
  log scale: the step falls as the efficiency rises). None when no efficiency in (1e-4, 10)
  reaches it (the step is bound by memory traffic or communication alone)."""
  step = lambda e: predict_step(entry, profile, e, dtype, features, stack=stack)['step_seconds'][
      'with_overlap']
  lo, hi = 1e-4, 10.0
  if not step(hi) <= step_seconds <= step(lo):
    return None
  for _ in range(80):
    mid = math.sqrt(lo * hi)
    if step(mid) > step_seconds:
      lo = mid
    else:
      hi = mid
  return math.sqrt(lo * hi)
