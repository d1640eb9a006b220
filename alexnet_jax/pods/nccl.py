"""NCCL's own tuning model: each protocol's latency and bandwidth ceiling, and the choice by size.

NCCL picks, for every call, the algorithm and protocol its tuning model predicts fastest
(src/graph/tuning.cc, ncclTopoTuneModel and ncclTopoGetAlgoTime). That model is public data plus
formulas; this module carries its tables, copied from NVIDIA/nccl at commit
5067397c2676d5aed50042fc39e5c8ee96eb0027, src/graph/tuning.cc (ncclTunerConstantsDefaults,
treeCorrectionFactor), so that a collective's latency comes from the links its steps cross and
the protocol NCCL would run at that size instead of one assumed figure per profile:

  time(protocol) = base[algorithm][protocol]                     (us)
                   + latency(algorithm, protocol, link classes)  (us)
                   + bytes per device / busbw(protocol)
  time = min over the enabled protocols (what NCCL runs: its predicted fastest)

  ring   latency = (steps - inter) x max(intra, net overhead) + inter x net, inter = 2(hosts-1)
         for an all-reduce, hosts-1 otherwise; intra = hw[NVLINK or PCI][ring][p], net =
         hw[NET][tree if one device per host else ring][p]; the net overhead (1 us, Intel x86;
         x3 for Simple) only across hosts; an all-reduce across hosts with Simple x 1.4 (Ampere
         and later) or 1.9 (the 'plateau effect of ring').
         busbw: LL = min(llMaxBw, busbw x 0.5); LL128 = busbw x 0.92; Simple = busbw.
  tree   (all-reduce) latency = 2 ((devices per host - 1) intra + log2(hosts) net);
         busbw x 0.92, then LL x 1/3.8 (at most llMaxBw), LL128 x 7/9 on one host (120/128
         across hosts); times treeCorrectionFactor[p][log2(bytes / 64)].

busbw here is the bandwidth the project's model already gives the collective at full rate (the
link graph's moving time, or the profile's bus bandwidth). Protocols: LL128 only where every
device pair of the ring or tree is on NVLink (typeIntra <= PATH_NVB) and the devices are Volta
or later; LL and Simple always.

Left out, because the profile does not know them: the per-channel ceilings
(perChMaxRingLL128Bws, perChMaxTreeBws x the number of channels NCCL opens), the net plugin's
own latency (graphs[a]->latencyInter, 0 for a plugin that reports none), AMD hosts (llMaxBws and
the net overhead are taken for Intel x86), NVLS, CollNet and PAT.
"""

import math
from typing import Sequence

COMMIT = '5067397c2676d5aed50042fc39e5c8ee96eb0027'
SOURCE = f'NVIDIA/nccl src/graph/tuning.cc at {COMMIT}'
PROTOCOLS = ('LL', 'LL128', 'Simple')
LINK_CLASSES = ('nvlink', 'pci', 'net')
ARCHES = ('volta', 'ampere', 'hopper', 'blackwell')  # NCCL's compCapIndex: sm70, 80, 90, 100

# baseLatencies (us), [algorithm][LL, LL128, Simple].
BASE = {'tree': (6.8, 14.0, 8.4), 'ring': (6.6, 14.0, 8.4)}
# hwLatencies (us), [NVLINK / PCI / NET][algorithm][LL, LL128, Simple].
HW = {
    'nvlink': {'tree': (0.6, 1.25, 4.0), 'ring': (0.6, 1.9, 3.4)},
    'pci': {'tree': (1.0, 1.9, 4.0), 'ring': (1.0, 2.5, 5.7)},
    'net': {'tree': (5.0, 8.5, 14.0), 'ring': (2.7, 4.0, 14.0)},
}
# llMaxBws (GB/s): one host, by architecture; several hosts (Intel x86), by 2 / more hosts.
LL_MAX_ONE_HOST = {'volta': 39.0, 'ampere': 87.7, 'hopper': 141.0, 'blackwell': 282.0}
LL_MAX_HOSTS = (39.0, 20.4)
NET_OVERHEAD_US = 1.0  # getNetOverhead: Intel x86
TREE_CORRECTION = {
    'LL': (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0,
           1.0, 1.0, 1.0, 1.0),
    'LL128': (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9,
              .9, .9, 1.0, 1.0, 1.0),
    'Simple': (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7,
               .8, .9, .9, .9),
}


def ll_max_bw(arch: str, hosts: int) -> float:
  """llMaxBws in bytes/s: by architecture on one host, by host count across hosts."""
  if hosts <= 1:
    return LL_MAX_ONE_HOST[arch] * 1e9
  return LL_MAX_HOSTS[0 if hosts == 2 else 1] * 1e9


def protocols(arch: str, intra: str) -> tuple:
  """The protocols NCCL enables: LL128 only over NVLink on Volta or later."""
  if intra == 'nvlink' and arch in ARCHES:
    return PROTOCOLS
  return ('LL', 'Simple')


def latency_us(algorithm: str, protocol: str, kind: str, n: int, hosts: int,
               intra: str) -> float:
  """NCCL's predicted latency of one call (us): base + the steps' link latencies."""
  p = PROTOCOLS.index(protocol)
  base = BASE[algorithm][p]
  intra_lat = HW[intra][algorithm][p]
  per_host = n / hosts
  net = HW['net']['tree' if per_host == 1 else algorithm][p]
  if algorithm == 'tree':
    return base + 2 * ((per_host - 1) * intra_lat + int(math.log2(hosts)) * net)
  steps = 2 * (n - 1) if kind == 'all-reduce' else n - 1
  inter = 0 if hosts == 1 else (2 * (hosts - 1) if kind == 'all-reduce' else hosts - 1)
  if hosts > 1:
    intra_lat = max(intra_lat, NET_OVERHEAD_US * (3 if protocol == 'Simple' else 1))
  return base + (steps - inter) * intra_lat + inter * net


def busbw(algorithm: str, protocol: str, full: float, arch: str, hosts: int,
          size: float) -> float:
  """The protocol's bandwidth (bytes/s) from the collective's full-rate `full`."""
  if algorithm == 'ring':
    if protocol == 'LL':
      return min(ll_max_bw(arch, hosts), full * 0.5)
    return full * (0.92 if protocol == 'LL128' else 1.0)
  bw = full * 0.92
  if protocol == 'LL':
    bw = min(bw / 3.8, ll_max_bw(arch, hosts))
  elif protocol == 'LL128':
    bw *= 7.0 / 9.0 if hosts == 1 else 120.0 / 128.0
  log_size = int(math.log2(size // 64)) if size >= 64 else -1
  if 0 <= log_size < 23:
    bw *= TREE_CORRECTION[protocol][log_size]
  return bw


def seconds(algorithm: str, kind: str, n: int, hosts: int, intra: str, arch: str,
            bytes_per_device: float, moving: float, size: float, calls: int = 1) -> float:
  """NCCL's predicted time of the collective, min over protocols; `moving`: the seconds its
  bytes take at full rate (the project's bandwidth term), `size`: nccl-tests' S."""
  algorithm = 'tree' if algorithm == 'tree' and kind == 'all-reduce' else 'ring'
  return min(options(algorithm, kind, n, hosts, intra, arch, bytes_per_device, moving, size,
                     calls).values())


def options(algorithm: str, kind: str, n: int, hosts: int, intra: str, arch: str,
            bytes_per_device: float, moving: float, size: float, calls: int = 1) -> dict:
  """{protocol: predicted seconds} over the enabled protocols (the docstring's formula)."""
  if moving <= 0:
    full = math.inf
  else:
    full = bytes_per_device / moving
  out = {}
  for p in protocols(arch, intra):
    bw = busbw(algorithm, p, full, arch, hosts, size)
    lat = latency_us(algorithm, p, kind, n, hosts, intra)
    if algorithm == 'ring' and p == 'Simple' and hosts > 1 and kind == 'all-reduce':
      lat *= 1.9 if arch == 'volta' else 1.4
    out[p] = calls * lat * 1e-6 + (bytes_per_device / bw if bw < math.inf else 0.0)
  return out


def link_class(crossed: Sequence[str]) -> str:
  """NCCL's hardware class of an intra-host path from the link kinds it crosses: NVLink where
  every link is NVLink or NVSwitch, else PCI."""
  nv = ('nvlink', 'to_nvswitch', 'from_nvswitch')
  return 'nvlink' if crossed and all(k in nv for k in crossed) else 'pci'
