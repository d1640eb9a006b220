"""The published AlexNet measurements as data: case files and their reader.

A case file (alexnet_jax/published/*.toml, one per published run) says what was measured, on
which machine, with which network and strategy, and where it was published, so that the pod plan
can replay it (`python -m alexnet_jax.plan --published`, pods/validation.py) and state its
error against a number someone else measured. The format (every table and field required unless
marked optional):

    title = "..."
    [source]
    cite = "..."        # paper and section / table, or repository, path and revision
    url = "..."
    checked = true      # whether the figures were read from the source itself
    note = "..."        # how images/s were derived from what is published; what was not verified
    [hardware]
    profile = "..."     # a shipped hardware profile (pods/targets.py, profiles/*.toml)
    [network]           # the network as published: widths are totals over towers
    config = "configs/....py"   # from the repository root, or absolute
    num_towers = 1
    conv_features = [64, 192, 384, 256, 256]
    fc_features = [4096, 4096]
    lrn = true
    image_size = 224
    num_classes = 1000
    dtype = "float32"
    [run]
    strategy = "hybrid"         # core/strategies.py STRATEGIES
    batch_per_device = 128      # examples per batch shard
    calibrate = true            # the smallest device count fits the platform's compute efficiency
    [measured]
    devices = [1, 2, 4, 8]      # increasing
    images_per_second = [...]   # one per device count
    images_per_second_low = [...]   # optional: a published range, with _high
    images_per_second_high = [...]
    # any other key or table (hours, speedup, a series not replayed): kept in Case.extra

A malformed file is refused with one line that names the file, the field and what is expected
(`CaseError`), so a wrong case never turns into a wrong number in the replay. Reading a case
imports neither TensorFlow nor a config; `network_matches` builds the config's network (shapes
only) to check it against the published one.
"""

import dataclasses
import importlib.util
import math
import os
import sys
import tomllib
from typing import Any, Optional

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import targets
from alexnet_jax.runtime import errors

# The repository root (configs/ lives beside alexnet_jax/, installed or not) and the shipped cases.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'published')

TABLES = ('source', 'hardware', 'network', 'run', 'measured')
SOURCE_FIELDS = {'cite': str, 'url': str, 'checked': bool, 'note': str}
HARDWARE_FIELDS = {'profile': str}
NETWORK_FIELDS = {'config': str, 'num_towers': int, 'conv_features': list, 'fc_features': list,
                  'lrn': bool, 'image_size': int, 'num_classes': int, 'dtype': str}
RUN_FIELDS = {'strategy': str, 'batch_per_device': int, 'calibrate': bool}
RANGE_FIELDS = ('images_per_second_low', 'images_per_second_high')
DTYPES = ('float32', 'bfloat16')
WIDTHS = {'conv_features': 5, 'fc_features': 2}  # AlexNet's five conv and two hidden fc layers


class CaseError(errors.Refused, ValueError):
  """A case file that cannot be replayed: one line naming the file, the field and what is
  expected."""


@dataclasses.dataclass(frozen=True)
class Case:
  """One published run (see the module docstring for the fields' meaning)."""
  key: str  # the file's stem
  title: str
  cite: str
  url: str
  checked: bool
  note: str
  profile: str
  config: str  # as written in the file: from the repository root, or absolute
  network: dict  # [network] as published, `config` included
  strategy: str
  batch_per_device: int
  calibrate: bool
  devices: tuple[int, ...]
  images_per_second: tuple[float, ...]
  low: Optional[tuple[float, ...]]
  high: Optional[tuple[float, ...]]
  extra: dict  # the other keys of [measured]
  path: str = ''  # the file read


def config_path(config: str) -> str:
  """A case's config file on disk: `config` itself if absolute, else from the repository root."""
  return config if os.path.isabs(config) else os.path.join(ROOT, config)


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(kind: type) -> str:
  return {str: 'a string', bool: 'true or false', int: 'an integer', list: 'a list'}[kind]


class _Reader:
  """Checks one parsed file; every refusal is `fail(field, expected)`."""

  def __init__(self, path: str):
    self.path = path

  def fail(self, field: str, expected: str) -> CaseError:
    message = f'{self.path}: {field}: {expected}'
    return CaseError(' '.join(message.split()))  # one line whatever the parts hold

  def table(self, raw: dict, name: str, fields: dict, extra_ok: bool = False) -> dict:
    if name not in raw:
      raise self.fail(f'[{name}]', 'missing; every case file has the tables '
                      f'{", ".join(f"[{t}]" for t in TABLES)} (see alexnet_jax/pods/published.py)')
    table = raw[name]
    if not isinstance(table, dict):
      raise self.fail(name, 'expected a table [' + name + ']')
    unknown = sorted(set(table) - set(fields))
    if unknown and not extra_ok:
      raise self.fail(f'[{name}]', f'unknown key{"s" * (len(unknown) > 1)} '
                      f'{", ".join(unknown)}; expected only {", ".join(fields)}')
    for field, kind in fields.items():
      if field not in table:
        raise self.fail(f'{name}.{field}', f'missing; expected {_type_name(kind)}')
      value = table[field]
      ok = (isinstance(value, kind) and not (kind is int and isinstance(value, bool)))
      if not ok:
        raise self.fail(f'{name}.{field}', f'{value!r} is not {_type_name(kind)}')
    return table

  def positive_int(self, value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise self.fail(field, f'{value!r} is not a positive integer')
    return value

  def numbers(self, values: Any, field: str, length: int, length_of: str) -> tuple[float, ...]:
    if not isinstance(values, list) or not all(_is_number(v) for v in values):
      raise self.fail(field, f'{values!r} is not a list of numbers')
    if len(values) != length:
      raise self.fail(field, f'{len(values)} values for {length} device counts; expected one per '
                      f'entry of {length_of}')
    if not all(v > 0 and math.isfinite(v) for v in values):
      raise self.fail(field, f'{values!r}: expected positive numbers')
    return tuple(float(v) for v in values)


def load(path: str) -> Case:
  """The case of one file, checked (CaseError, one line, for anything malformed)."""
  path = os.fspath(path)
  reader = _Reader(path)
  try:
    with open(path, 'rb') as f:
      raw = tomllib.load(f)
  except tomllib.TOMLDecodeError as error:
    raise reader.fail('TOML', f'{error}; expected a TOML file') from None
  except OSError as error:
    raise reader.fail('file', f'cannot be read ({error.strerror or error})') from None

  unknown = sorted(set(raw) - set(TABLES) - {'title'})
  if unknown:
    raise reader.fail('top level', f'unknown key{"s" * (len(unknown) > 1)} {", ".join(unknown)}; '
                      f'expected title and the tables {", ".join(f"[{t}]" for t in TABLES)}')
  if not isinstance(raw.get('title'), str) or not raw['title'].strip():
    raise reader.fail('title', 'missing or not a string; expected title = "..."')
  source = reader.table(raw, 'source', SOURCE_FIELDS)
  hardware = reader.table(raw, 'hardware', HARDWARE_FIELDS)
  network = reader.table(raw, 'network', NETWORK_FIELDS)
  run = reader.table(raw, 'run', RUN_FIELDS)
  measured = reader.table(raw, 'measured', {'devices': list, 'images_per_second': list},
                          extra_ok=True)

  # The machine: a profile this project ships (profiles/*.toml).
  profiles = targets.known()
  if hardware['profile'] not in profiles:
    raise reader.fail('hardware.profile', f'{hardware["profile"]!r} is not a shipped profile; '
                      f'expected one of {", ".join(profiles)}')

  # The network as published.
  if not os.path.isfile(config_path(network['config'])):
    raise reader.fail('network.config', f'{network["config"]!r}: no such file '
                      f'({config_path(network["config"])}); expected a configs/*.py file')
  if network['num_towers'] not in (1, 2):
    raise reader.fail('network.num_towers', f'{network["num_towers"]}; expected 1 or 2')
  for field, length in WIDTHS.items():
    widths = network[field]
    if (len(widths) != length
        or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)):
      raise reader.fail(f'network.{field}', f'{widths!r}; expected {length} positive integers '
                        '(totals over towers)')
  reader.positive_int(network['image_size'], 'network.image_size')
  reader.positive_int(network['num_classes'], 'network.num_classes')
  if network['dtype'] not in DTYPES:
    raise reader.fail('network.dtype', f'{network["dtype"]!r}; expected one of {", ".join(DTYPES)}')

  # The run.
  if run['strategy'] not in strategies.STRATEGIES:
    raise reader.fail('run.strategy', f'{run["strategy"]!r} is not a strategy; expected one of '
                      f'{", ".join(strategies.STRATEGIES)}')
  reader.positive_int(run['batch_per_device'], 'run.batch_per_device')

  # What was measured.
  devices = measured['devices']
  for n in devices:
    reader.positive_int(n, 'measured.devices')
  if not devices:
    raise reader.fail('measured.devices', 'empty; expected at least one device count')
  if any(b <= a for a, b in zip(devices, devices[1:])):
    raise reader.fail('measured.devices', f'{devices!r}; expected increasing device counts')
  if run['calibrate'] and len(devices) < 2:
    raise reader.fail('run.calibrate', 'true with a single device count: the fitted point would '
                      'leave nothing to check; expected calibrate = false or more device counts')
  ips = reader.numbers(measured['images_per_second'], 'measured.images_per_second', len(devices),
                       'measured.devices')
  bounds = {}
  for field in RANGE_FIELDS:
    if field in measured:
      bounds[field] = reader.numbers(measured[field], f'measured.{field}', len(devices),
                                     'measured.devices')
  if len(bounds) == 1:
    missing = next(f for f in RANGE_FIELDS if f not in bounds)
    raise reader.fail(f'measured.{missing}', 'missing; a published range gives both '
                      f'{" and ".join(RANGE_FIELDS)}')
  low, high = bounds.get(RANGE_FIELDS[0]), bounds.get(RANGE_FIELDS[1])
  if low and high:
    for n, lo, hi, mid in zip(devices, low, high, ips):
      if lo > hi:
        raise reader.fail('measured.images_per_second_low', f'{lo:g} > high {hi:g} at {n} '
                          'devices; expected low <= high')
      if not lo <= mid <= hi:
        raise reader.fail('measured.images_per_second', f'{mid:g} at {n} devices is outside the '
                          f'published range {lo:g}-{hi:g}; expected low <= value <= high')
  extra = {k: v for k, v in measured.items()
           if k not in ('devices', 'images_per_second') + RANGE_FIELDS}

  return Case(
      key=os.path.splitext(os.path.basename(path))[0], title=raw['title'], cite=source['cite'],
      url=source['url'], checked=source['checked'], note=source['note'],
      profile=hardware['profile'], config=network['config'], network=dict(network),
      strategy=run['strategy'], batch_per_device=run['batch_per_device'],
      calibrate=run['calibrate'], devices=tuple(devices), images_per_second=ips,
      low=low, high=high, extra=extra, path=path)


def load_all(folder: str = CASES) -> list[Case]:
  """Every case file (*.toml) of `folder`, checked, sorted by key."""
  if not os.path.isdir(folder):
    raise CaseError(f'{folder}: not a folder of case files (*.toml)')
  names = sorted(n for n in os.listdir(folder) if n.endswith('.toml'))
  return sorted((load(os.path.join(folder, n)) for n in names), key=lambda c: c.key)


def load_config_file(path: str, name: str = ''):
  """get_config() of a config file (from the repository root, or absolute), imported from its
  path: no absl flags involved. A config imports `configs.default`, so the repository root must
  be importable. The one loader of config files by path (cases, plan --calibration)."""
  if importlib.util.find_spec('configs') is None and ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  full = config_path(path)
  spec = (importlib.util.spec_from_file_location(
      name or 'config_' + os.path.splitext(os.path.basename(full))[0], full)
      if os.path.isfile(full) else None)
  if spec is None or spec.loader is None:
    raise CaseError(f'{path}: {full} cannot be imported')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def load_config(case: Case):
  """The case's config (its get_config())."""
  try:
    return load_config_file(case.config, f'published_config_{case.key}')
  except CaseError as e:
    raise CaseError(f'{case.path or case.key}: network.config: {e}') from None


def network_matches(case: Case) -> list[str]:
  """How the network the case's config builds differs from the published one (empty: it
  matches). Compared: the total widths over towers, LRN, image size, towers, classes, dtype;
  the network is built with model.make_network, as every run builds it, so a config whose
  per-tower widths are mistranslated (model.one_tower_widths doubles conv5 and the fc layers of
  a one-tower net) is caught here, not in a replayed number."""
  config = load_config(case)
  net = model_lib.make_network(config.model, config.model.num_classes)
  towers = net.num_towers
  built = {
      'num_towers': towers,
      'conv_features': [towers * w for w in net.conv_features],
      'fc_features': [towers * w for w in net.fc_features],
      'lrn': bool(net.lrn),
      'image_size': int(config.image_size),
      'num_classes': towers * net.classes_per_tower,
      'dtype': str(config.model.dtype),
  }
  return [f'{field}: published {case.network[field]!r}, {case.config} builds {value!r}'
          for field, value in built.items() if case.network[field] != value]
