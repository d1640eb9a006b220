"""Hardware this machine does not have, as devices to compile for: profiles and topologies.

A target is a hardware profile (alexnet_jax/profiles/profiles.toml, or a TOML file of the user's):
the numbers the pod plan predicts with, each with its public source, and how to make the devices
of N chips of it for the compiler. JAX compiles ahead of time for a device topology the process
cannot run on (`jax.experimental.topologies.get_topology_desc`): a TPU slice through libtpu, GPU
nodes through the CUDA plugin and XLA's description of the GPU. Both are optional installs
(requirements-targets.txt), loaded only when a target's devices are made (runtime/quiet.py keeps
a compile-only process quiet about the chips it lacks).
"""

import dataclasses
import importlib.util
import math
import os
import re
import tomllib
from typing import Any, Optional

from jax.experimental import topologies

from alexnet_jax.pods import linkgraph
from alexnet_jax.pods import schema
from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths

PROFILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'profiles')
NUMBERS = ('peak_bf16_flops', 'fp32_matmul_flops', 'peak_fp32_flops', 'memory_bytes',
           'memory_bandwidth', 'host_cpus_per_chip')
# Numbers a profile may give, each with its source: only what needs them reads them (float16
# compute reads peak_fp16_flops, costmodel.compute_peak; a profile without it refuses float16).
OPTIONAL_NUMBERS = ('peak_fp16_flops',)
INSTALL = 'pip install -r requirements-targets.txt'


class TargetError(errors.Refused, ValueError):
  """A target that cannot be compiled for here, with what to do."""


# A profile's format as data (pods/schema.py); profiles.toml says what each field means. How the
# fields relate (a torus's ports, compile_as naming a profile with a compiler) is checked below.
_RATE = schema.number(positive=True)
_LINK = {'name': schema.string(), 'latency': schema.number(minimum=0)}
_LINK_OPTIONS = {'bandwidth': _RATE,
                 'bus_bandwidth': schema.either(  # a number, or one by group size
                     _RATE, schema.table({}, others=_RATE),
                     'a positive number or a table of them by group size')}
INSIDE = schema.table({**_LINK, 'wiring': schema.one_of('switch', 'torus', 'pcie')},
                      optional={**_LINK_OPTIONS, 'ports': schema.integer(minimum=1),
                                'link_bandwidth': _RATE,
                                'wraparound_min_extent': schema.integer(minimum=0),
                                'wraparound_full_cubes': schema.boolean(),
                                'peer_group': schema.integer(minimum=1),
                                'host_bandwidth': _RATE})
BETWEEN = schema.table({**_LINK, 'bandwidth': _RATE}, optional=_LINK_OPTIONS)
FORMAT = schema.table(
    {'name': schema.string(nonempty=True), **{field: _RATE for field in NUMBERS},
     'host_cpus_per_chip': schema.number(minimum=0),  # 0: not stated (no input ceiling)
     'inside': INSIDE, 'between': BETWEEN},
    optional={**{field: _RATE for field in OPTIONAL_NUMBERS},
              'compiler': schema.one_of('tpu', 'gpu'), 'compile_as': schema.string(),
              'topology': schema.string(), 'shapes': schema.table({}, others=schema.string()),
              'target_config': schema.string(), 'devices_per_chip': schema.integer(minimum=1),
              'devices_per_host': schema.integer(minimum=1),
              'reported_images_per_second': _RATE, 'graph': linkgraph.FORMAT,
              'sources': schema.table({}, others=schema.string())})
_WIRED = {'torus': ('ports', 'link_bandwidth'), 'switch': ('bandwidth',),
          'pcie': ('bandwidth', 'host_bandwidth')}


@dataclasses.dataclass(frozen=True)
class Profile:
  """One kind of accelerator and how its pods are wired (see profiles.toml for the fields)."""
  key: str
  name: str
  compiler: str  # 'tpu' or 'gpu': whose compiler builds the program
  numbers: dict  # the NUMBERS fields, and the OPTIONAL_NUMBERS the profile gives, per chip
  devices_per_chip: int
  inside: dict  # the link inside a node / slice: name, wiring, bandwidth or ports + link_bandwidth
  between: dict  # the link between nodes / slices: name, bandwidth, latency
  sources: dict  # field -> public source
  topology: str = ''  # TPU: libtpu's name of the chip ('v5e')
  shapes: dict = dataclasses.field(default_factory=dict)  # TPU: chips -> slice shape
  target_config: str = ''  # GPU: XLA's description of the GPU (text)
  devices_per_host: int = 8  # GPU: devices per node
  compiled_as: str = ''  # the profile whose compiler built the program, when not this one
  reported_images_per_second: Optional[float] = None
  graph: Optional[dict] = None  # the links of a host, as a graph (pods/linkgraph.py), if given

  def link_graph(self) -> Optional[linkgraph.Graph]:
    return linkgraph.build(self.graph, self.devices_per_host) if self.graph else None

  def per_device(self, field: str) -> float:
    return float(self.numbers[field]) / self.devices_per_chip

  def to_json(self) -> dict:
    out = dataclasses.asdict(self)
    out.pop('target_config')
    return out


def _table(path: str) -> dict:
  return tomllib.loads(paths.read_bytes(path).decode())


def known() -> dict:
  """The profiles this project ships, by name: every TOML file of the profiles folder
  (profiles.toml: today's TPUs and GPUs; the others: the machines of published runs)."""
  table = {}
  for name in sorted(os.listdir(PROFILES)):
    if name.endswith('.toml'):
      for key, raw in _table(os.path.join(PROFILES, name)).items():
        if key in table:
          raise TargetError(f'profile {key!r} is defined twice in {PROFILES}')
        table[key] = raw
  return table


def load(name_or_file: str) -> Profile:
  """The profile `--target` names: a shipped one, or the one table of a TOML file."""
  table = known()
  if name_or_file in table:
    key, raw = name_or_file, table[name_or_file]
  elif paths.isfile(name_or_file):
    mine = _table(name_or_file)
    if len(mine) != 1:
      raise TargetError(f'{name_or_file} holds {len(mine)} tables; a profile file holds exactly '
                        'one (see alexnet_jax/profiles/profiles.toml for the fields)')
    key, raw = next(iter(mine.items()))
  else:
    raise TargetError(f'unknown target {name_or_file!r}: choose one of {", ".join(table)}, or '
                      'give the path of a profile file (TOML, fields as in '
                      'alexnet_jax/profiles/profiles.toml)')
  return _profile(key, raw, table)


def _profile(key: str, raw: dict, table: dict) -> Profile:
  where = f'profile {key!r} (fields: alexnet_jax/profiles/profiles.toml)'
  raw = schema.check(raw, FORMAT, where, TargetError)
  needs = [f for f in _WIRED[raw['inside']['wiring']] if f not in raw['inside']]
  if needs:
    raise TargetError(f'{where}: inside.{needs[0]}: missing; a {raw["inside"]["wiring"]} '
                      f'link gives {" and ".join(_WIRED[raw["inside"]["wiring"]])}')
  compiled = raw
  devices_per_host = int(raw.get('devices_per_host', table.get(raw.get('compile_as'), {}).get(
      'devices_per_host', 8)))
  if 'graph' in raw:
    wrong = linkgraph.problem(raw['graph'], devices_per_host)
    if wrong:
      raise TargetError(f'{where}: {wrong[0]}: {wrong[1]}')
  if 'compile_as' in raw:
    if raw['compile_as'] not in table or 'compile_as' in table[raw['compile_as']]:
      raise TargetError(f'profile {key!r}: compile_as = {raw["compile_as"]!r} is not a profile '
                        f'with a compiler; choose one of '
                        f'{", ".join(k for k, v in table.items() if "compile_as" not in v)}')
    compiled = table[raw['compile_as']]
  compiler = compiled.get('compiler')
  if compiler not in ('tpu', 'gpu'):
    raise TargetError(f'profile {key!r}: compiler must be "tpu" or "gpu" (or give compile_as)')
  target_config = ''
  if compiler == 'gpu':
    with open(os.path.join(PROFILES, compiled['target_config'])) as f:
      target_config = f.read()
  return Profile(
      key=key, name=raw['name'], compiler=compiler,
      numbers={f: float(raw[f]) for f in NUMBERS + OPTIONAL_NUMBERS if f in raw},
      devices_per_chip=int(raw.get('devices_per_chip', 1)),
      inside=dict(raw['inside']), between=dict(raw['between']),
      sources=dict(raw.get('sources', {})), topology=compiled.get('topology', ''),
      shapes={int(k): v for k, v in compiled.get('shapes', {}).items()},
      target_config=target_config,
      devices_per_host=devices_per_host, graph=raw.get('graph'),
      compiled_as=raw.get('compile_as', ''),
      reported_images_per_second=raw.get('reported_images_per_second'))


def compiler_missing(profile: Profile) -> Optional[str]:
  """Why this machine cannot compile for `profile` (the package to install), or None."""
  packages = {'tpu': ('libtpu',),
              'gpu': ('jax_plugins.xla_cuda12', 'jax_plugins.xla_cuda13')}[profile.compiler]
  found = False
  for package in packages:
    try:
      found = found or importlib.util.find_spec(package) is not None
    except ModuleNotFoundError:
      pass
  package = ' or '.join(packages)
  if not found:
    return (f'compiling for {profile.key} needs the {profile.compiler.upper()} compiler '
            f'({package}), which is not installed: {INSTALL}')
  return None


def topology_name(profile: Profile, num_devices: int, slices: int = 1) -> str:
  """The topology holding `num_devices` devices in `slices` slices (TPU) or nodes of
  `devices_per_host` (GPU), as get_topology_desc spells it."""
  if profile.compiler == 'gpu':
    nodes = max(1, math.ceil(num_devices / profile.devices_per_host))
    per_node = min(num_devices, profile.devices_per_host)
    if nodes * per_node != num_devices:
      raise TargetError(f'{num_devices} GPUs do not fill nodes of {profile.devices_per_host}; '
                        f'ask for a multiple of {profile.devices_per_host} or fewer')
    return f'1x{nodes}x{per_node}'
  per_slice = math.ceil(num_devices / slices)
  chips = math.ceil(per_slice / profile.devices_per_chip)
  fits = sorted(c for c in profile.shapes if c >= chips)
  if not fits:
    raise TargetError(f'{profile.key} has no slice shape for {chips} chips (shapes: '
                      f'{", ".join(f"{c}: {s}" for c, s in sorted(profile.shapes.items()))})')
  return f'{profile.topology}:{profile.shapes[fits[0]]}'


def devices(profile: Profile, num_devices: int, slices: int = 1) -> list:
  """The devices of the smallest topology of `profile` that holds `num_devices` (the strategy
  takes the first `num_devices`). Compile-only: nothing runs on them."""
  why = compiler_missing(profile)
  if why:
    raise TargetError(why)
  name = topology_name(profile, num_devices, slices)
  if profile.compiler == 'gpu':
    topo = topologies.get_topology_desc(platform='cuda', topology_name='', topology=name,
                                        target_config=profile.target_config)
  else:
    kwargs: dict[str, Any] = {'num_slices': slices} if slices > 1 else {}
    topo = topologies.get_topology_desc(platform='tpu', topology_name=name, **kwargs)
  return list(topo.devices)


# --- A measured device and a profile. ---

# JAX's device kinds of TPUs, as the profiles name the chips.
_TPU_KINDS = {'tpu v5 lite': 'v5e', 'tpu v5': 'v5p', 'tpu v6 lite': 'v6e', 'tpu7x': 'v7'}


def device_model(device_kind: str) -> str:
  """The chip a device kind names, as profiles name it: 'NVIDIA H100 80GB HBM3' -> 'h100',
  'NVIDIA A100-SXM4-80GB' -> 'a100', 'TPU v5 lite' -> 'v5e', 'TPU v4' -> 'v4'; '' if none (the
  first word holding a digit)."""
  kind = device_kind.strip().lower()
  if kind in _TPU_KINDS:
    return _TPU_KINDS[kind]
  words = re.findall(r'[a-z]*\d+[a-z]*', kind)
  return words[0] if words else ''


def same_device(device_kind: str, platform: str, profile: Profile) -> str:
  """'' where devices of `device_kind` on `platform` are the profile's chip; else why not. The
  platform must be the profile's compiler's (a CPU's memory copies say nothing of NVLink or ICI)
  and the chip's model (device_model) a word of the profile's key or name."""
  if platform != profile.compiler:
    return (f'measured on {platform} devices ({device_kind}), and {profile.key} is a '
            f'{profile.compiler.upper()} target: another platform\'s links say nothing of its')
  model = device_model(device_kind)
  words = set(re.findall(r'[a-z0-9]+', f'{profile.key} {profile.name}'.lower()))
  if not model or model not in words:
    return (f'measured on {device_kind}, which is not the chip of {profile.key} '
            f'({profile.name})')
  return ''
