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
import os
import sys
import tomllib
from typing import Optional

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import schema
from alexnet_jax.pods import targets
from alexnet_jax.runtime import errors

# The repository root (configs/ lives beside alexnet_jax/, installed or not) and the shipped cases.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'published')

RANGE_FIELDS = ('images_per_second_low', 'images_per_second_high')
DTYPES = ('float32', 'bfloat16')
WIDTHS = {'conv_features': 5, 'fc_features': 2}  # AlexNet's five conv and two hidden fc layers

# The format as data (pods/schema.py); what relates one field to another is checked in `load`.
_POSITIVE = schema.integer(minimum=1)
_RATES = schema.list_of(schema.number(positive=True))
FORMAT = schema.table({
    'title': schema.string(nonempty=True),
    'source': schema.table({'cite': schema.string(), 'url': schema.string(),
                            'checked': schema.boolean(), 'note': schema.string()}),
    'hardware': schema.table({'profile': schema.string()}),
    'network': schema.table({
        'config': schema.string(), 'num_towers': schema.one_of(1, 2),
        'conv_features': schema.list_of(_POSITIVE, length=WIDTHS['conv_features']),
        'fc_features': schema.list_of(_POSITIVE, length=WIDTHS['fc_features']),
        'lrn': schema.boolean(), 'image_size': _POSITIVE, 'num_classes': _POSITIVE,
        'dtype': schema.one_of(*DTYPES)}),
    'run': schema.table({'strategy': schema.one_of(*strategies.STRATEGIES),
                         'batch_per_device': _POSITIVE, 'calibrate': schema.boolean()}),
    'measured': schema.table({'devices': schema.list_of(_POSITIVE, nonempty=True),
                              'images_per_second': _RATES},
                             optional={field: _RATES for field in RANGE_FIELDS},
                             others=schema.anything()),
})


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


def load(path: str) -> Case:
  """The case of one file, checked (CaseError, one line, for anything malformed)."""
  path = os.fspath(path)

  def fail(field: str, expected: str) -> CaseError:
    return CaseError(' '.join(f'{path}: {field}: {expected}'.split()))

  try:
    with open(path, 'rb') as f:
      raw = tomllib.load(f)
  except tomllib.TOMLDecodeError as error:
    raise fail('TOML', f'{error}; expected a TOML file') from None
  except OSError as error:
    raise fail('file', f'cannot be read ({error.strerror or error})') from None
  case = schema.check(raw, FORMAT, path, CaseError)
  hardware, network, run, measured = (case[t] for t in ('hardware', 'network', 'run', 'measured'))

  # The machine: a profile this project ships (profiles/*.toml).
  profiles = targets.known()
  if hardware['profile'] not in profiles:
    raise fail('hardware.profile', f'{hardware["profile"]!r} is not a shipped profile; '
               f'expected one of {", ".join(profiles)}')
  if not os.path.isfile(config_path(network['config'])):
    raise fail('network.config', f'{network["config"]!r}: no such file '
               f'({config_path(network["config"])}); expected a configs/*.py file')

  # What was measured: one rate per device count, within the published range if there is one.
  devices, ips = measured['devices'], measured['images_per_second']
  if any(b <= a for a, b in zip(devices, devices[1:])):
    raise fail('measured.devices', f'{devices!r}; expected increasing device counts')
  if run['calibrate'] and len(devices) < 2:
    raise fail('run.calibrate', 'true with a single device count: the fitted point would '
               'leave nothing to check; expected calibrate = false or more device counts')
  bounds = {field: measured[field] for field in RANGE_FIELDS if field in measured}
  for field, values in [('images_per_second', ips), *bounds.items()]:
    if len(values) != len(devices):
      raise fail(f'measured.{field}', f'{len(values)} values for {len(devices)} device counts; '
                 'expected one per entry of measured.devices')
  if len(bounds) == 1:
    missing = next(f for f in RANGE_FIELDS if f not in bounds)
    raise fail(f'measured.{missing}', 'missing; a published range gives both '
               f'{" and ".join(RANGE_FIELDS)}')
  low, high = (tuple(bounds[f]) if f in bounds else None for f in RANGE_FIELDS)
  if low and high:
    for n, lo, hi, mid in zip(devices, low, high, ips):
      if lo > hi:
        raise fail('measured.images_per_second_low', f'{lo:g} > high {hi:g} at {n} devices; '
                   'expected low <= high')
      if not lo <= mid <= hi:
        raise fail('measured.images_per_second', f'{mid:g} at {n} devices is outside the '
                   f'published range {lo:g}-{hi:g}; expected low <= value <= high')
  extra = {k: v for k, v in measured.items()
           if k not in ('devices', 'images_per_second') + RANGE_FIELDS}

  source = case['source']
  return Case(
      key=os.path.splitext(os.path.basename(path))[0], title=case['title'], cite=source['cite'],
      url=source['url'], checked=source['checked'], note=source['note'],
      profile=hardware['profile'], config=network['config'], network=dict(network),
      strategy=run['strategy'], batch_per_device=run['batch_per_device'],
      calibrate=run['calibrate'], devices=tuple(devices), images_per_second=tuple(ips),
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
