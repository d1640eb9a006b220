"""The calibration's link measurement: all-reduce, all-gather and reduce-scatter timed on this
machine's devices, reported as nccl-tests reports them, for the calibration file's `collectives`.

    python -m alexnet_jax.calibrate --collectives --configs= --out=/tmp/calibration.json

What is timed: `jax.lax.psum`, `jax.lax.all_gather(tiled=True)` and `jax.lax.psum_scatter(tiled=
True)` of float32 inside a jitted `jax.shard_map` over a 1-D mesh of the machine's first g devices
(group sizes 2, 4, 8, ... up to the devices there, and the count itself), for message sizes from
`min_bytes` to `max_bytes` in steps of `factor` (2 or 4). The real devices on a GPU or TPU
machine; on a machine without accelerators, the CPU devices the command simulates
(jax_num_cpu_devices): their "links" are the host's memory copies, which say nothing of any GPU
or TPU (the plan does not use them for one: pods/calibration.py, measured_bus_bandwidth).

Timing, as nccl-tests times (its defaults: 5 warm-up iterations, 20 timed): `warmup` untimed
calls, then `iters` calls issued back to back and waited for once; the time is the mean, the
elapsed time / iters. Each program is compiled before the warm-up (compiling is not timed); its
result is checked once per kind and group at the smallest size (each rank's input holds rank + 1).

What is reported, by nccl-tests' definitions (NVIDIA/nccl-tests, doc/PERFORMANCE.md):
  S      the size nccl-tests reports: the all-reduce's buffer; for all-gather and reduce-scatter
         the TOTAL array, n x the per-rank part ("S is the size in bytes of the total array,
         ... recvcount*sizeof(datatype)*n" for reduce-scatter, "sendcount*sizeof(datatype)*n"
         for all-gather). So an all-gather of S sends S / n from each rank and returns S to each;
         a reduce-scatter reads S on each rank and returns S / n.
  algbw  S / t
  busbw  algbw x 2(n-1)/n for all-reduce, algbw x (n-1)/n for all-gather and reduce-scatter
         (costmodel.bus_factor), n the group size.
busbw x t is then the bytes one rank sends in a ring algorithm (hlo.bytes_per_device), so the
plan's time of a collective is its ring bytes / busbw (costmodel.collective_seconds).

Sizes: S is rounded down to a whole number of float32 elements per rank (n x 4 bytes), as
nccl-tests rounds its counts; the file records the S that ran. The largest size by default
(`default_max_bytes`): 1 GiB on a GPU or TPU, capped by a quarter of the device's memory; on the
CPU 64 MiB, capped by the host's available memory / (4 x the largest group) (an all-reduce holds
an input and an output of S on every simulated device, all in the host's memory). A budget stops
new sizes once spent (the largest sizes are the ones cut: sizes run smallest first, each over
every group and kind).
"""

import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.pods import costmodel

KINDS = costmodel.MEASURED_KINDS
MIB = 1 << 20
GPU_MAX_BYTES = 1 << 30
CPU_MAX_BYTES = 64 * MIB
ELEMENT_BYTES = 4  # float32


def algbw(size_bytes: float, seconds: float) -> float:
  """nccl-tests' algorithm bandwidth: S / t (bytes/s)."""
  return size_bytes / seconds


def busbw(kind: str, group_size: int, size_bytes: float, seconds: float) -> float:
  """nccl-tests' bus bandwidth: algbw x 2(n-1)/n (all-reduce) or (n-1)/n (all-gather,
  reduce-scatter)."""
  return algbw(size_bytes, seconds) * costmodel.bus_factor(kind, group_size)


def group_sizes(num_devices: int) -> list[int]:
  """2, 4, 8, ... up to `num_devices`, and `num_devices` itself where it is no power of 2."""
  sizes = [2 ** i for i in range(1, int(math.log2(max(num_devices, 1))) + 1)]
  if num_devices >= 2 and num_devices not in sizes:
    sizes.append(num_devices)
  return sizes


def message_sizes(min_bytes: int, max_bytes: int, factor: int) -> list[int]:
  """min_bytes, min_bytes x factor, ... while <= max_bytes."""
  sizes, size = [], min_bytes
  while size <= max_bytes:
    sizes.append(size)
    size *= factor
  return sizes


def _available_host_bytes() -> int:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


def _floor_power_of_2(x: float) -> int:
  return 1 << max(int(math.floor(math.log2(max(x, 1)))), 0)


def default_max_bytes(devices: Sequence, largest_group: int) -> tuple[int, str]:
  """(the largest S by default, why): see the module docstring."""
  if devices[0].platform == 'cpu':
    room = _available_host_bytes() / (4 * max(largest_group, 1))
    cap = min(CPU_MAX_BYTES, _floor_power_of_2(room))
    return cap, (f'CPU: {CPU_MAX_BYTES // MIB} MiB, capped by the host\'s available memory / '
                 f'(4 x {largest_group} devices) = {room / MIB:,.0f} MiB')
  try:
    limit = (devices[0].memory_stats() or {}).get('bytes_limit')
  except Exception:  # pylint: disable=broad-except  # a runtime without memory statistics
    limit = None
  if not limit:
    return GPU_MAX_BYTES, f'{devices[0].platform}: 1 GiB (no memory statistics to cap it)'
  cap = min(GPU_MAX_BYTES, _floor_power_of_2(limit / 4))
  return cap, f'{devices[0].platform}: 1 GiB, capped by a quarter of {limit / 2**30:.1f} GiB'


def _program(kind: str, mesh: Mesh, per_rank: int):
  """(make the input, the collective): jitted, over `mesh`'s one axis 'x'. `per_rank`: float32
  elements of each rank's input."""
  def fill():
    return jnp.full((per_rank,), jax.lax.axis_index('x') + 1, jnp.float32)

  def collective(x):
    if kind == 'all-reduce':
      return jax.lax.psum(x, 'x')
    if kind == 'all-gather':
      return jax.lax.all_gather(x, 'x', tiled=True)
    return jax.lax.psum_scatter(x, 'x', scatter_dimension=0, tiled=True)

  sharding = NamedSharding(mesh, P('x'))
  make = jax.jit(jax.shard_map(fill, mesh=mesh, in_specs=(), out_specs=P('x')),
                 out_shardings=sharding)
  run = jax.jit(jax.shard_map(collective, mesh=mesh, in_specs=P('x'), out_specs=P('x')),
                in_shardings=sharding, out_shardings=sharding)
  return make, run


def _check(kind: str, g: int, out) -> None:
  """Each rank's input holds rank + 1: the result every rank should hold."""
  got = np.asarray(jax.device_get(out)).reshape(g, -1)
  total = g * (g + 1) / 2
  if kind == 'all-gather':
    expected = np.repeat(np.arange(1, g + 1, dtype=np.float32), got.shape[1] // g)
    ok = all(np.array_equal(row, expected) for row in got)
  else:
    ok = bool(np.all(got == total))
  if not ok:
    raise AssertionError(f'{kind} over {g} devices returned wrong values')


def time_one(kind: str, devices: Sequence, size_bytes: int, warmup: int, iters: int,
             check: bool = False) -> tuple[int, float]:
  """(S that ran, mean seconds) of one collective of nccl-tests' size S over `devices`."""
  g = len(devices)
  per_rank_s = size_bytes // (g * ELEMENT_BYTES)  # elements of S / n
  if per_rank_s < 1:
    raise ValueError(f'{size_bytes} bytes are less than one float32 per rank of {g}')
  size = per_rank_s * g * ELEMENT_BYTES
  # Each rank's input: S (all-reduce, reduce-scatter) or S / n (all-gather).
  per_rank = per_rank_s if kind == 'all-gather' else per_rank_s * g
  mesh = Mesh(np.array(devices), ('x',))
  make, run = _program(kind, mesh, per_rank)
  x = make()
  compiled = run.lower(x).compile()
  out = compiled(x)
  if check:
    _check(kind, g, out)
  for _ in range(warmup):
    out = compiled(x)
  jax.block_until_ready(out)
  del out
  start = time.perf_counter()
  for _ in range(iters):
    out = compiled(x)
  jax.block_until_ready(out)
  seconds = (time.perf_counter() - start) / iters
  return size, seconds


def measure(devices: Sequence, kinds: Sequence[str] = KINDS,
            groups: Optional[Sequence[int]] = None, min_bytes: int = 1024,
            max_bytes: int = 0, factor: int = 4, warmup: int = 5, iters: int = 20,
            budget_s: float = 120.0, log: Callable[[str], Any] = print) -> dict:
  """{'collectives': [one entry per kind and group], 'collectives_note': what ran and what did
  not}. Sizes run smallest first, each over every group and kind; once `budget_s` is spent no
  new size starts. max_bytes 0: default_max_bytes."""
  start = time.monotonic()
  devices = list(devices)
  groups = [g for g in (groups or group_sizes(len(devices))) if 2 <= g <= len(devices)]
  if not groups:
    return {'collectives': [], 'collectives_note': (
        f'no collective measured: {len(devices)} {devices[0].platform} device(s) here, a group '
        'needs 2')}
  why = f'--collective_max_bytes={max_bytes}'
  if not max_bytes:
    max_bytes, why = default_max_bytes(devices, max(groups))
  sizes = message_sizes(min_bytes, max_bytes, factor)
  entries = {(k, g): {'kind': k, 'group_size': g, 'device_kind': devices[0].device_kind,
                      'platform': devices[0].platform, 'dtype': 'float32',
                      'warmup': warmup, 'iters': iters, 'sizes': [], 'seconds': [],
                      'algbw': [], 'busbw': []}
             for g in groups for k in kinds}
  skipped, failed = [], []
  for size in sizes:
    if time.monotonic() - start >= budget_s:
      skipped.append(size)
      continue
    for g in groups:
      done = []
      for kind in kinds:
        entry = entries[(kind, g)]
        try:
          ran, seconds = time_one(kind, devices[:g], size, warmup, iters,
                                  check=not entry['sizes'])
        except Exception as e:  # pylint: disable=broad-except  # recorded; the others go on
          failed.append(f'{kind}/{g}/{size}: {type(e).__name__}: '
                        f'{(str(e).splitlines() or [""])[0][:200]}')
          log(f'{kind} over {g} devices, {size:,} bytes: failed ({failed[-1]})')
          continue
        entry['sizes'].append(ran)
        entry['seconds'].append(seconds)
        entry['algbw'].append(algbw(ran, seconds))
        entry['busbw'].append(busbw(kind, g, ran, seconds))
        done.append(f'{kind} {entry["busbw"][-1] / 1e9:.3f}')
      log(f'{size:>13,} bytes over {g} {devices[0].platform} devices: busbw GB/s '
          f'{", ".join(done) or "-"}')
  note = (f'{", ".join(kinds)} over groups {groups} of {devices[0].device_kind} '
          f'({devices[0].platform}), {sizes[0] if sizes else min_bytes:,} to {max_bytes:,} bytes '
          f'(x{factor}; largest: {why}), warm-up {warmup}, mean of {iters}')
  if skipped:
    note += f'; not started ({budget_s:g} s budget spent): {", ".join(map(str, skipped))} bytes'
  if failed:
    note += f'; failed: {"; ".join(failed)}'
  return {'collectives': [e for e in entries.values() if e['sizes']],
          'collectives_note': note, 'collectives_seconds': time.monotonic() - start}


def markdown(entries: Sequence[dict]) -> str:
  """The measured collectives, one row per kind, group and size (nccl-tests' columns)."""
  if not entries:
    return ''
  rows = ['| collective | devices | size (B) | time (us) | algbw (GB/s) | busbw (GB/s) |',
          '|---|---|---|---|---|---|']
  for e in entries:
    for s, t, a, b in zip(e['sizes'], e['seconds'], e['algbw'], e['busbw']):
      rows.append(f'| {e["kind"]} | {e["group_size"]} x {e["device_kind"]} | {s:,} | '
                  f'{t * 1e6:,.1f} | {a / 1e9:.3f} | {b / 1e9:.3f} |')
  return '\n'.join(rows) + '\n'
