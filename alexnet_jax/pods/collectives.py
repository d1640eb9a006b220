"""Published measurements of ONE collective on one machine, and the cost model's replay of them.

A collective case (alexnet_jax/published/collectives/*.toml) is what someone measured of a
single all-reduce, all-gather or reduce-scatter over a group of devices, message size by message
size (nccl-tests' all_reduce_perf and its siblings, a TPU profile), with where it was published.
`python -m alexnet_jax.plan --collectives --out=DIR` predicts every measured point with
costmodel.collective_seconds and the case's hardware profile (over its link graph, with the
library's default algorithm, where the profile has a `graph` table), and writes the error per size
(collectives.json, .md, .png). It REPORTS; nothing is fitted to a case, and no profile number is
taken from one (a profile that cites a case's table says so, and the report shows it).

The format (every table and field required unless marked optional; a key the format does not
name is refused):

    title = "..."
    [source]
    cite = "..."        # repository, path and revision; issue and comment; book and section
    url = "..."
    checked = true      # whether the figures were read from the source itself here
    note = "..."        # what was derived (sizes from rounded labels, units) and what was not read
    [hardware]
    profile = "gpu-a100"    # a shipped profile (pods/targets.py, profiles/*.toml)
    link = "inside"         # the link measured: 'inside' or 'between' the host group (node, slice)
    extents = [4]           # torus (TPU) profiles only, and required there: the extent of each
                            # torus axis the group spans (their product is group_size)
    slice_shape = [8, 4]    # optional, torus only: the slice's shape (default: extents), which
                            # decides wraparound links (costmodel._axis_wraps)
    members = [0, 7]        # optional, profiles with a graph only: the devices measured (global
                            # indices of the profile's graph, group_size distinct ones, in rank
                            # order); default: costmodel.members' choice
    [collective]
    kind = "all-reduce"     # 'all-reduce', 'all-gather' or 'reduce-scatter'
    group_size = 8          # devices taking part (>= 2)
    software = "..."        # what ran it, with its version where the source states one
    algorithm = "ring"      # optional: the algorithm the software ran (algorithms.ALGORITHMS),
                            # replayed as the stack's algorithm; default: library_default
    algorithm_source = "..." # required with algorithm: what says the software ran it
    [measured]
    size_bytes = [1024, 2048, ...]  # increasing; nccl-tests' "size" (below)
    busbw = [...]                   # exactly one of: time_seconds, algbw, busbw (bytes/s),
                                    # one per size: the quantity the source gives
    [measured.check]                # optional: the source's other columns of the same rows, as
    algbw = [...]                   # printed (rounded), one per size; not replayed: they check
    busbw = [...]                   # the transcription (nccl-tests prints time, algbw, busbw)

Sizes and bandwidths follow nccl-tests (doc/PERFORMANCE.md): S is the "size" column, for an
all-reduce the buffer each rank holds, for an all-gather the total OUTPUT (sendcount x n), for a
reduce-scatter the total INPUT (recvcount x n); algbw = S / t; busbw = algbw x factor, factor =
2(n-1)/n for an all-reduce and (n-1)/n for an all-gather or a reduce-scatter.

The model's instruction (what collective_seconds reads, hlo.bytes_per_device's ring convention:
the bytes one device sends): all-reduce 2(n-1)/n x S; all-gather (n-1)/n x the gathered output
= (n-1)/n x S; reduce-scatter (n-1) x its result, the result being S / n, = (n-1)/n x S. So in
all three, bytes_per_device = factor x S, and nccl-tests' busbw = bytes_per_device / t: the
predicted busbw is bytes_per_device over the predicted time, comparable with the measured one.

A malformed file is refused (CollectiveCaseError, exit 2) in one line naming the file and the
field, through pods/schema.py as the other data files are.
"""

import dataclasses
import functools
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

from alexnet_jax.pods import algorithms
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import schema
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import hlo
from alexnet_jax.report.write import write_report
from alexnet_jax.runtime import errors

CASES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'published',
                     'collectives')
KINDS = ('all-reduce', 'all-gather', 'reduce-scatter')
LINKS = ('inside', 'between')
GIVEN = ('time_seconds', 'algbw', 'busbw')  # exactly one per case: what the source gives

_POSITIVE_INTS = schema.list_of(schema.integer(minimum=1), nonempty=True)
_VALUES = schema.list_of(schema.number(positive=True), nonempty=True)
_PRINTED = schema.list_of(schema.number(minimum=0), nonempty=True)  # rounded: 0.00 is printed
FORMAT = schema.table({
    'title': schema.string(nonempty=True),
    'source': schema.table({'cite': schema.string(nonempty=True), 'url': schema.string(),
                            'checked': schema.boolean(), 'note': schema.string()}),
    'hardware': schema.table({'profile': schema.string(nonempty=True),
                              'link': schema.one_of(*LINKS)},
                             optional={'extents': _POSITIVE_INTS,
                                       'slice_shape': _POSITIVE_INTS,
                                       'members': schema.list_of(schema.integer(minimum=0),
                                                                 nonempty=True)}),
    'collective': schema.table({'kind': schema.one_of(*KINDS),
                                'group_size': schema.integer(minimum=2),
                                'software': schema.string(nonempty=True)},
                               optional={'algorithm': schema.one_of(*algorithms.ALGORITHMS),
                                         'algorithm_source': schema.string(nonempty=True)}),
    'measured': schema.table({'size_bytes': schema.list_of(schema.integer(minimum=1),
                                                           nonempty=True)},
                             optional={**{field: _VALUES for field in GIVEN},
                                       'check': schema.table({}, optional={
                                           field: _PRINTED for field in GIVEN})}),
})


class CollectiveCaseError(errors.Refused, ValueError):
  """A collective case file that cannot be replayed: one line naming the file and the field."""


@dataclasses.dataclass(frozen=True)
class CollectiveCase:
  """One published measurement of one collective (the module docstring says what each is)."""
  key: str  # the file's stem
  title: str
  cite: str
  url: str
  checked: bool
  note: str
  profile: str  # a shipped profile's name
  link: str  # 'inside' or 'between'
  kind: str
  group_size: int
  software: str
  sizes: tuple[int, ...]  # nccl-tests' S, bytes
  given: str  # one of GIVEN
  values: tuple[float, ...]  # the given quantity, one per size (seconds or bytes/s)
  extents: tuple[int, ...] = ()  # torus only
  slice_shape: tuple[int, ...] = ()  # torus only
  path: str = ''
  # the source's other columns as printed (quantity -> one value per size), not replayed
  check: dict = dataclasses.field(default_factory=dict)
  members: tuple[int, ...] = ()  # the devices measured, where the case names them
  algorithm: str = ''  # the software's algorithm, where the case names it ('' = library default)
  algorithm_source: str = ''


# --- The conversions (nccl-tests' definitions; the module docstring). ---

def bus_factor(kind: str, n: int) -> float:
  """busbw / algbw: 2(n-1)/n for an all-reduce, (n-1)/n for an all-gather or reduce-scatter."""
  return (2.0 if kind == 'all-reduce' else 1.0) * (n - 1) / n


def seconds(given: str, value: float, size: float, kind: str, n: int) -> float:
  """The time of one point from what the source gives: the time itself, or S / algbw, or
  S x factor / busbw."""
  if given == 'time_seconds':
    return float(value)
  if given == 'algbw':
    return size / value
  if given == 'busbw':
    return size * bus_factor(kind, n) / value
  raise ValueError(f'unknown quantity {given!r}; expected one of {", ".join(GIVEN)}')


def algbw(size: float, t: float) -> float:
  return size / t


def busbw(size: float, t: float, kind: str, n: int) -> float:
  return size / t * bus_factor(kind, n)


def bytes_per_device(kind: str, size: float, n: int) -> float:
  """The model's bytes per device (hlo.bytes_per_device, ring convention) of nccl-tests' size S:
  an all-reduce's buffer is S; an all-gather's result is its output, S; a reduce-scatter's
  result is one rank's share, S / n. Equal to bus_factor(kind, n) x S in all three."""
  result = size / n if kind == 'reduce-scatter' else size
  return hlo.bytes_per_device(kind, result, n)


def instruction(case: CollectiveCase, size: float) -> dict:
  """The instruction dict costmodel.collective_seconds reads, for one point of a case."""
  ins = {'kind': case.kind, 'group_size': case.group_size,
         'bytes_per_device': bytes_per_device(case.kind, size, case.group_size),
         'crosses': case.link, 'asynchronous': False}
  if case.members:
    ins['members'] = list(case.members)
  if case.extents:
    ins['extents'] = list(case.extents)
    ins['slice_shape'] = list(case.slice_shape or case.extents)
  return ins


# --- Reading the case files. ---

def load(path: str) -> CollectiveCase:
  """The case of one file, checked (CollectiveCaseError, one line, for anything malformed)."""
  path = os.fspath(path)

  fail = functools.partial(schema.refusal, CollectiveCaseError, path)
  case = schema.load_toml(path, FORMAT, CollectiveCaseError)
  hardware, collective, measured = case['hardware'], case['collective'], case['measured']

  shipped = targets_lib.known()
  if hardware['profile'] not in shipped:
    raise fail('hardware.profile', f'{hardware["profile"]!r} is not a shipped profile; '
               f'expected one of {", ".join(shipped)}')
  try:
    profile = targets_lib.load(hardware['profile'])
  except targets_lib.TargetError as error:
    raise fail('hardware.profile', f'{hardware["profile"]!r}: {error}') from None
  n = collective['group_size']
  torus = hardware['link'] == 'inside' and profile.inside.get('wiring') == 'torus'
  if torus:
    if 'extents' not in hardware:
      raise fail('hardware.extents', f'missing; profile {profile.key!r} is a torus: give the '
                 'extent of each torus axis the group spans (their product is group_size)')
    if math.prod(hardware['extents']) != n:
      raise fail('hardware.extents', f'{hardware["extents"]!r} spans '
                 f'{math.prod(hardware["extents"])} devices; expected a product equal to '
                 f'collective.group_size ({n})')
  else:
    for field in ('extents', 'slice_shape'):
      if field in hardware:
        raise fail(f'hardware.{field}', f'given for a link that is not a torus '
                   f'({profile.key!r} {hardware["link"]}); expected it only for a TPU '
                   "profile's inside link")
    if hardware['link'] == 'inside' and profile.compiler == 'gpu' and n > profile.devices_per_host:
      raise fail('collective.group_size', f'{n} devices inside one node of {profile.key!r}, '
                 f'which holds {profile.devices_per_host}; expected at most '
                 f'{profile.devices_per_host}, or hardware.link = "between"')

  members = hardware.get('members', [])
  if members:
    hosts = 1 if hardware['link'] == 'inside' else n
    if not profile.graph:
      raise fail('hardware.members', f'given for profile {profile.key!r}, which has no graph '
                 'table; expected members only where the profile describes its links')
    if len(set(members)) != n or len(members) != n:
      raise fail('hardware.members', f'{members!r}; expected collective.group_size ({n}) '
                 'distinct device indices')
    if max(members) >= hosts * profile.devices_per_host:
      raise fail('hardware.members', f'{members!r} names device {max(members)}; expected '
                 f'indices below {hosts * profile.devices_per_host} (link {hardware["link"]!r} '
                 f'of hosts of {profile.devices_per_host} devices)')
  if ('algorithm' in collective) != ('algorithm_source' in collective):
    field = 'algorithm_source' if 'algorithm' in collective else 'algorithm'
    raise fail(f'collective.{field}', 'missing; give collective.algorithm together with '
               'collective.algorithm_source (what says the software ran that algorithm)')
  sizes = measured['size_bytes']
  if any(b <= a for a, b in zip(sizes, sizes[1:])):
    raise fail('measured.size_bytes', f'{sizes!r}; expected increasing sizes')
  given = [field for field in GIVEN if field in measured]
  if len(given) != 1:
    raise fail('measured.' + (given[1] if given else GIVEN[0]),
               f'{"given with measured." + given[0] if given else "missing"}; expected exactly '
               f'one of measured.{", measured.".join(GIVEN)} (the quantity the source gives)')
  values = measured[given[0]]
  if len(values) != len(sizes):
    raise fail(f'measured.{given[0]}', f'{len(values)} values for {len(sizes)} sizes; expected '
               'one per entry of measured.size_bytes')
  check = measured.get('check', {})
  for field, printed in check.items():
    if field == given[0]:
      raise fail(f'measured.check.{field}', f'repeats measured.{field}; expected only the '
                 'quantities the source prints besides the one replayed')
    if len(printed) != len(sizes):
      raise fail(f'measured.check.{field}', f'{len(printed)} values for {len(sizes)} sizes; '
                 'expected one per entry of measured.size_bytes')
  source = case['source']
  return CollectiveCase(
      key=os.path.splitext(os.path.basename(path))[0], title=case['title'],
      cite=source['cite'], url=source['url'], checked=source['checked'], note=source['note'],
      profile=hardware['profile'], link=hardware['link'], kind=collective['kind'],
      group_size=n, software=collective['software'], sizes=tuple(sizes), given=given[0],
      values=tuple(values), extents=tuple(hardware.get('extents', ())),
      slice_shape=tuple(hardware.get('slice_shape', ())), path=path,
      check={field: tuple(v) for field, v in check.items()}, members=tuple(members),
      algorithm=collective.get('algorithm', ''),
      algorithm_source=collective.get('algorithm_source', ''))


def load_all(folder: Optional[str] = None) -> list[CollectiveCase]:
  """Every case file (*.toml) of `folder` (default: the shipped ones), checked, sorted by key."""
  folder = folder or CASES
  if not os.path.isdir(folder):
    raise CollectiveCaseError(f'{folder}: not a folder of collective case files (*.toml)')
  names = sorted(n for n in os.listdir(folder) if n.endswith('.toml'))
  return sorted((load(os.path.join(folder, n)) for n in names), key=lambda c: c.key)


# --- The replay. ---

def predict_case(case: CollectiveCase, profile: targets_lib.Profile,
                 features: costmodel.Features = costmodel.ALL) -> dict:
  """Every point of a case: measured and predicted time and busbw, and the error of the
  predicted time (predicted / measured - 1: + is slower than measured)."""
  n, kind = case.group_size, case.kind
  points = []
  for size, value in zip(case.sizes, case.values):
    measured = seconds(case.given, value, size, kind, n)
    ins = instruction(case, size)
    predicted = costmodel.collective_seconds(ins, profile, features,
                                             stack=costmodel.Stack(algorithm=case.algorithm))
    points.append({'size_bytes': size, 'bytes_per_device': ins['bytes_per_device'],
                   'measured_seconds': measured, 'predicted_seconds': predicted,
                   'measured_busbw': busbw(size, measured, kind, n),
                   'predicted_busbw': busbw(size, predicted, kind, n),
                   'error': predicted / measured - 1})
  errors_ = [abs(p['error']) for p in points]
  return {'points': points, 'max_abs_error': max(errors_),
          'median_abs_error': sorted(errors_)[len(errors_) // 2],
          'largest_size_error': points[-1]['error']}


def replay(cases: Sequence[CollectiveCase], log: Callable[[str], Any] = print) -> dict:
  """Every case predicted with its profile by the full cost model (costmodel.ALL)."""
  out = []
  for case in cases:
    profile = targets_lib.load(case.profile)
    link = profile.between if case.link == 'between' else profile.inside
    result = predict_case(case, profile)
    out.append({
        'key': case.key, 'title': case.title, 'cite': case.cite, 'url': case.url,
        'checked': case.checked, 'note': case.note, 'profile': case.profile,
        'profile_name': profile.name, 'link': case.link, 'link_name': link.get('name', ''),
        'link_source': profile.sources.get(case.link, ''),
        'kind': case.kind, 'group_size': case.group_size, 'software': case.software,
        'members': list(case.members), 'algorithm': case.algorithm or 'library_default',
        'algorithm_source': case.algorithm_source,
        'given': case.given, 'extents': list(case.extents),
        'slice_shape': list(case.slice_shape), **result})
    log(f'{case.key}: {len(case.sizes)} sizes, largest |error| '
        f'{100 * result["max_abs_error"]:.1f} %, at the largest size '
        f'{100 * result["largest_size_error"]:+.1f} %')
  return {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()), 'cases': out}


# --- Writing it down. ---

def _size(b: float) -> str:
  for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if b >= scale:
      return f'{b / scale:g} {unit}'
  return f'{b:g} B'


def _t(s: float) -> str:
  return f'{s * 1e6:,.1f} us' if s < 1e-3 else f'{s * 1e3:,.2f} ms'


def markdown(result: dict) -> str:
  """collectives.md: per case and size, measured against predicted."""
  lines = [f'# The cost model against published collectives ({result["date"]})', '',
           'Each point: the time the source gives or implies, the time costmodel.'
           'collective_seconds predicts from the case\'s profile, both as nccl-tests busbw '
           '(bytes/s), and the error of the predicted time (+: the model is slower than '
           'measured). Nothing is fitted to these cases.', '',
           '| case | profile | link | collective | size | measured | predicted | busbw measured '
           'GB/s | busbw predicted GB/s | error |', '|---|---|---|---|---|---|---|---|---|---|']
  for c in result['cases']:
    for p in c['points']:
      lines.append(f'| {c["key"]} | {c["profile"]} | {c["link"]} | {c["kind"]} x '
                   f'{c["group_size"]} | {_size(p["size_bytes"])} | {_t(p["measured_seconds"])} | '
                   f'{_t(p["predicted_seconds"])} | {p["measured_busbw"] / 1e9:,.2f} | '
                   f'{p["predicted_busbw"] / 1e9:,.2f} | {100 * p["error"]:+.1f} % |')
  lines += ['', '## Cases', '']
  for c in result['cases']:
    shape = 'x'.join(map(str, c['slice_shape'] or c['extents']))
    torus = (f'; torus axes spanned {c["extents"]} of a {shape} slice' if c['extents'] else '')
    lines += [f'### {c["title"]} ({c["key"]})', '',
              f'- Source: {c["cite"]} {c["url"]} (figures read from the source here: '
              f'{"yes" if c["checked"] else "NO"}; it gives {c["given"]}). {c["note"]}',
              f'- Machine: {c["profile_name"]} (profile `{c["profile"]}`), link {c["link"]} '
              f'({c["link_name"]}){torus}; {c["kind"]} over {c["group_size"]} devices by '
              f'{c["software"]}; replayed with algorithm {c["algorithm"]}'
              + (f' ({c["algorithm_source"]})' if c['algorithm_source'] else '')
              + (f' over devices {c["members"]}' if c['members'] else '') + '.',
              f'- The profile\'s source for this link: {c["link_source"] or "-"}',
              f'- |error|: largest {100 * c["max_abs_error"]:.1f} %, median '
              f'{100 * c["median_abs_error"]:.1f} %, at the largest size '
              f'{100 * c["largest_size_error"]:+.1f} %.', '']
  return '\n'.join(lines) + '\n'


def chart(result: dict) -> bytes:
  """collectives.png: per case, the measured and PREDICTED busbw against the message size."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  cases = list(result['cases'])
  fig, axes = charts.figure(900, 300 * max(1, len(cases)), max(1, len(cases)))
  for ax, c in zip(axes, cases):
    xs = [p['size_bytes'] for p in c['points']]
    series = [('measured (published)', xs, [p['measured_busbw'] / 1e9 for p in c['points']]),
              ('PREDICTED (cost model)', xs, [p['predicted_busbw'] / 1e9 for p in c['points']])]
    charts.lines(ax, f'{c["key"]}: {c["kind"]} x {c["group_size"]}, busbw, PREDICTED vs '
                 'measured', series, x_label='message size (bytes, nccl-tests S)',
                 y_label='busbw GB/s', log_y=True)
    ax.set_xscale('log', base=2)
  if not cases:
    axes[0].set_title('no collective cases', loc='left')
  return charts.png(fig)


def write(result: dict, out_dir: str) -> None:
  write_report(out_dir, 'collectives', result, markdown, chart)
