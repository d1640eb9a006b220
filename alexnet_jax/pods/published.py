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
    profile = "..."     # a shipped hardware profile (pods/targets.py, profiles/*.toml), or the
                        # path of a profile file (TOML, one table): relative to the case file's
                        # folder, or absolute; read with targets.load, as `plan --target=FILE`
    [network]           # the network as published: widths are totals over towers
    config = "configs/....py"   # from the repository root, or absolute
    num_towers = 1
    conv_features = [64, 192, 384, 256, 256]
    fc_features = [4096, 4096]
    lrn = true
    image_size = 224
    num_classes = 1000
    dtype = "float32"           # float32, bfloat16 or float16: the compute dtype (see below)
    [run]
    strategy = "hybrid"         # core/strategies.py STRATEGIES
    batch_per_device = 128      # examples per batch shard: the global batch grows with N ...
    # global_batch = 1024       # ... or a fixed global batch, split over the batch shards
                                # (exactly one of the two; every device count divides it)
    calibrate = true            # the smallest device count fits the platform's compute efficiency
    collective_algorithm = "ring"   # how the software stack moved the data: ALGORITHMS below
    algorithm_source = "..."    # the framework's code or docs that say so (repository, path,
                                # revision), or "not verified: ..." and what is assumed
    # collective_granularity = "per_tensor"  # optional: "compiled" (default: one library call
                                # per compiled collective), "per_tensor" (one per variable) or
                                # "bucketed" (one per bucket_bytes of it; give bucket_bytes)
    [measured]
    devices = [1, 2, 4, 8]      # increasing
    images_per_second = [...]   # one per device count
    images_per_second_low = [...]   # optional: a published range, with _high
    images_per_second_high = [...]
    # any other key or table (hours, speedup, a series not replayed): kept in Case.extra

collective_algorithm is one of ALGORITHMS; the cost model replays it over the machine's link
graph where the profile has one (pods/algorithms.py says what each moves, step by step):

    ring              a ring over all devices (reduce-scatter then all-gather): NCCL 1's only
                      algorithm, NCCL 2's ring (NCCL_ALGO=Ring), Horovod's ring all-reduce
    tree              a reduction up a tree and a broadcast down it (NCCL >= 2.4's double binary
                      tree; Paleo's model: 2 ceil(log2 N) transfers of the whole gradient)
    hierarchical      reduced inside groups (a node, a peer group), then across the groups, then
                      sent back, every hop device to device
    host_staged       device to device inside a peer group, through host memory between groups
                      (cuda-convnet2's eight-GPU reducer)
    parameter_server  gradients sent to the devices or processes holding the variables, the
                      updated variables fetched back (tf_cnn_benchmarks' parameter_server)
    peer_to_peer      no collective library: each device reads or writes its peers' memory
                      directly, point-to-point copies (the 2012 paper's two GTX 580s)
    nvls              NCCL's NVLink SHARP: the NVSwitch reduces and multicasts (NCCL_ALGO=NVLS)
    collnet           NCCL's CollNet: the InfiniBand switches reduce (SHARP; NCCL_ALGO=CollNet)
    library_default   the communication library picks at run time (NCCL >= 2.4 chooses ring or
                      tree by size and topology unless NCCL_ALGO is set); the source names the
                      library and its version

What the replay does with [network] (`replay_config`): the case's [network] is what was
published, its config how this project builds it. Before anything is compiled, every case's
config is built (shapes only) and compared with [network] field by field (`network_matches`);
`dtype` is the one field the replay APPLIES: the config is compiled in the case's dtype
(config.model.dtype set from the case), since a published run's compute dtype is part of the
measurement and the configs are shared between dtypes. Any other difference (a width, LRN, the
image size, towers, classes) is refused, exit 2, naming the field and both values: the config
does not build the published network.

A malformed file is refused with one line that names the file, the field and what is expected
(`CaseError`), so a wrong case never turns into a wrong number in the replay. Reading a case
imports neither TensorFlow nor a config; `network_matches` builds the config's network (shapes
only) to check it against the published one.
"""

import dataclasses
import functools
import importlib.util
import os
import sys
import tomllib
from typing import Optional

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import algorithms
from alexnet_jax.pods import schema
from alexnet_jax.pods import targets
from alexnet_jax.runtime import errors

# The repository root (configs/ lives beside alexnet_jax/, installed or not) and the shipped cases.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'published')

RANGE_FIELDS = ('images_per_second_low', 'images_per_second_high')
DTYPES = ('float32', 'bfloat16', 'float16')
BATCH_FIELDS = ('batch_per_device', 'global_batch')  # exactly one of the two
ALGORITHMS = algorithms.ALGORITHMS  # the module docstring says what each means
WIDTHS = {'conv_features': 5, 'fc_features': 2}  # AlexNet's five conv and two hidden fc layers

# The format as data (pods/schema.py); what relates one field to another is checked in `load`.
_POSITIVE = schema.integer(minimum=1)
_RATES = schema.list_of(schema.number(positive=True))
FORMAT = schema.table({
    'title': schema.string(nonempty=True),
    'source': schema.table({'cite': schema.string(), 'url': schema.string(),
                            'checked': schema.boolean(), 'note': schema.string()}),
    'hardware': schema.table({'profile': schema.string(nonempty=True)}),
    'network': schema.table({
        'config': schema.string(), 'num_towers': schema.one_of(1, 2),
        'conv_features': schema.list_of(_POSITIVE, length=WIDTHS['conv_features']),
        'fc_features': schema.list_of(_POSITIVE, length=WIDTHS['fc_features']),
        'lrn': schema.boolean(), 'image_size': _POSITIVE, 'num_classes': _POSITIVE,
        'dtype': schema.one_of(*DTYPES)}),
    'run': schema.table({'strategy': schema.one_of(*strategies.STRATEGIES),
                         'calibrate': schema.boolean(),
                         'collective_algorithm': schema.one_of(*ALGORITHMS),
                         'algorithm_source': schema.string(nonempty=True)},
                        optional={**{field: _POSITIVE for field in BATCH_FIELDS},
                                  'collective_granularity': schema.one_of(
                                      *algorithms.GRANULARITIES),
                                  'bucket_bytes': schema.number(positive=True)}),
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
  profile: str  # a shipped profile's name, or the absolute path of a profile file
  config: str  # as written in the file: from the repository root, or absolute
  network: dict  # [network] as published, `config` included
  strategy: str
  batch_per_device: Optional[int]  # None where the case gives global_batch
  calibrate: bool
  devices: tuple[int, ...]
  images_per_second: tuple[float, ...]
  low: Optional[tuple[float, ...]]
  high: Optional[tuple[float, ...]]
  extra: dict  # the other keys of [measured]
  path: str = ''  # the file read
  global_batch: Optional[int] = None  # a fixed global batch (None: batch_per_device)
  collective_algorithm: str = ''  # one of ALGORITHMS
  algorithm_source: str = ''
  profile_written: str = ''  # hardware.profile as written in the file
  collective_granularity: str = 'compiled'  # one of algorithms.GRANULARITIES
  bucket_bytes: float = 0.0  # with "bucketed"


def config_path(config: str) -> str:
  """A case's config file on disk: `config` itself if absolute, else from the repository root."""
  return config if os.path.isabs(config) else os.path.join(ROOT, config)


def load(path: str) -> Case:
  """The case of one file, checked (CaseError, one line, for anything malformed)."""
  path = os.fspath(path)

  fail = functools.partial(schema.refusal, CaseError, path)
  case = schema.load_toml(path, FORMAT, CaseError)
  hardware, network, run, measured = (case[t] for t in ('hardware', 'network', 'run', 'measured'))

  # The machine: a profile this project ships (profiles/*.toml), or a profile file.
  profile, machine = resolve_profile(hardware['profile'], path, fail)
  if network['dtype'] == 'float16' and 'peak_fp16_flops' not in machine.numbers:
    raise fail('network.dtype', f"'float16' on profile {machine.key!r}, which has no "
               'peak_fp16_flops: add peak_fp16_flops (float16 FLOP/s per chip) with its public '
               'source to the profile (pods/targets.py OPTIONAL_NUMBERS), or give the dtype the '
               'machine computed in')
  if not os.path.isfile(config_path(network['config'])):
    raise fail('network.config', f'{network["config"]!r}: no such file '
               f'({config_path(network["config"])}); expected a configs/*.py file')

  # What was measured: one rate per device count, within the published range if there is one.
  devices, ips = measured['devices'], measured['images_per_second']
  if any(b <= a for a, b in zip(devices, devices[1:])):
    raise fail('measured.devices', f'{devices!r}; expected increasing device counts')
  # The batch: per batch shard, or a fixed global batch that every device count divides.
  given = [field for field in BATCH_FIELDS if field in run]
  if len(given) != 1:
    raise fail('run.' + (given[1] if given else BATCH_FIELDS[0]),
               f'{"given with run." + given[0] if given else "missing"}; expected exactly one of '
               'run.batch_per_device (examples per batch shard: the global batch grows with the '
               'devices) and run.global_batch (a fixed global batch split over them)')
  if 'global_batch' in run:
    for n in devices:
      if run['global_batch'] % n:
        raise fail('run.global_batch', f'{run["global_batch"]} is not divisible by {n} devices '
                   '(measured.devices); expected a global batch every device count divides')
  if run['calibrate'] and len(devices) < 2:
    raise fail('run.calibrate', 'true with a single device count: the fitted point would '
               'leave nothing to check; expected calibrate = false or more device counts')
  granularity = run.get('collective_granularity', 'compiled')
  if (granularity == 'bucketed') != ('bucket_bytes' in run):
    raise fail('run.bucket_bytes', f'{"missing" if granularity == "bucketed" else "given"} with '
               f'run.collective_granularity = {granularity!r}; expected bucket_bytes (bytes per '
               'bucket) exactly when the granularity is "bucketed"')
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
      profile=profile, config=network['config'], network=dict(network),
      strategy=run['strategy'], batch_per_device=run.get('batch_per_device'),
      calibrate=run['calibrate'], devices=tuple(devices), images_per_second=tuple(ips),
      low=low, high=high, extra=extra, path=path, global_batch=run.get('global_batch'),
      collective_algorithm=run['collective_algorithm'],
      algorithm_source=run['algorithm_source'], profile_written=hardware['profile'],
      collective_granularity=granularity, bucket_bytes=float(run.get('bucket_bytes', 0.0)))


def resolve_profile(value: str, case_path: str, fail) -> tuple[str, targets.Profile]:
  """hardware.profile: (the shipped name, or the profile file's absolute path; the Profile it
  names), loaded by targets.load as `plan --target` loads it. A path is relative to the case
  file's folder unless absolute. `fail(field, expected)` makes the CaseError."""
  shipped = targets.known()
  if value in shipped:
    where = value
  else:
    where = value if os.path.isabs(value) else os.path.join(
        os.path.dirname(os.path.abspath(case_path)), value)
    if not os.path.isfile(where):
      raise fail('hardware.profile', f'{value!r} is not a shipped profile, nor a profile file '
                 f'({where}: no such file); expected one of {", ".join(shipped)}, or the path '
                 "of a profile file (relative to the case file's folder, or absolute)")
  try:
    return where, targets.load(where)
  except tomllib.TOMLDecodeError as error:
    raise fail('hardware.profile', f'{value!r} ({where}): {error}; expected a TOML profile '
               'file') from None
  except (OSError, UnicodeDecodeError) as error:
    raise fail('hardware.profile', f'{value!r} ({where}) cannot be read '
               f'({getattr(error, "strerror", None) or error})') from None
  except targets.TargetError as error:
    raise fail('hardware.profile', f'{value!r}: {error}') from None


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


def network_matches(case: Case, config=None) -> list[str]:
  """How the network the case's config builds differs from the published one (empty: it
  matches), one `field: published X, config builds Y` per field. Compared: the total widths
  over towers, LRN, image size, towers, classes, dtype; the network is built with
  model.make_network, as every run builds it, so a config whose per-tower widths are
  mistranslated (model.one_tower_widths doubles conv5 and the fc layers of a one-tower net) is
  caught here, not in a replayed number. `config`: the one to compare (default: the case's
  config file's, as written)."""
  config = load_config(case) if config is None else config
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


def replay_config(case: Case):
  """The config the replay compiles for `case` (module docstring): the case's config with the
  published dtype applied, refused (CaseError, one line naming the file, each differing field
  and both values) where anything else of [network] differs from what it builds. Builds shapes
  only: nothing is compiled."""
  config = load_config(case)
  config.model.dtype = case.network['dtype']
  # The compiler's own schedule, without XLA's collective-overlap options (core/run.py): none of
  # the published stacks (cuda-convnet, cuda-convnet2, TensorFlow 2017 without XLA) scheduled
  # through XLA, so the replay keeps the compiled program it has always read.
  config.overlap_collectives = 'false'
  differences = network_matches(case, config)
  if differences:
    raise CaseError(' '.join(
        f'{case.path or case.key}: network.{"; network.".join(differences)}; expected '
        f'{case.config} to build the published [network] (only network.dtype is applied from '
        'the case)'.split()))
  return config


def batch_per_replica(case: Case, num_devices: int, batch_shards: int) -> int:
  """Examples per batch shard at `num_devices`: run.batch_per_device, or run.global_batch over
  the strategy's `batch_shards` there (CaseError where they do not divide it)."""
  if case.global_batch is None:
    return case.batch_per_device
  if case.global_batch % batch_shards:
    raise CaseError(f'{case.path or case.key}: run.global_batch: {case.global_batch} is not '
                    f'divisible by the {batch_shards} batch shards of {case.strategy} on '
                    f'{num_devices} devices; expected a global batch they divide')
  return case.global_batch // batch_shards
