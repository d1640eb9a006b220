"""A calibration: one device's measured train step, its file, its trace, and the efficiency fitted
to it.

The pod plan (plan.py) predicts every step from a cost model whose one free number is the
fraction of peak FLOP/s the convolutions and matrix products reach. `python -m
alexnet_jax.calibrate` (the measuring run: perf/calibrate.py) measures the real train step on ONE
device and writes it down in the file this module reads, checks and writes; `plan
--calibration=FILE` then fits that number to it (`calibrated_efficiency`) instead of assuming it.

The fit: the file's run nearest the plan (the same compute dtype; the same network, by its model
FLOPs per image, formula.train_flops_per_image; the batch closest to the plan's) is compiled for
the target on one device (compile.py) and the efficiency solved so that the model's step equals
the measured one (costmodel.fit_efficiency).

Per-op times: the trace the profiler writes (`<host>.xplane.pb`, an XSpace protocol buffer) is
read with `jax.profiler.ProfileData`, which jaxlib ships: no TensorFlow, no tensorboard plugin. A
device's ops are its plane's kernel events (`/device:GPU:0`), attributed to HLO instructions by
the `hlo_op` stat the runtime annotates each kernel with (or by the kernel's name, which XLA
derives from the fusion's); on the CPU backend, the host plane's thunk events, which carry the
same stat. Where ProfileData is missing or reads nothing, the profiler's `<host>.trace.json.gz`
(the same events as Chrome trace JSON) is read instead. Each op's category (conv, matmul, other)
comes from the compiled program's HLO (`hlo_categories`: a convolution or matrix product, on its
own, as a library call or inside a fusion). An op's time is its events' own time (an event
nested in another on the same thread or stream, a while loop's body say, is taken out of its
parent's) summed and divided by the traced steps; ops that overlap on different streams or
threads are each counted in full, so the ops' sum can exceed the step.

The file (`load_calibration` checks it; `write` replaces it in one rename):
  {"kind": "alexnet_jax calibration", "version": 1, "date", "device_kind", "platform",
   "jax_version", "target": profile key, "runs": [{"config": path, "network": short name,
   "dtype", "batch_size", "images_per_second", "step_seconds", "compile_seconds",
   "model_flops_per_image", "mfu", "peak_flops", "status": "ok" | "error" | "skipped",
   "error": why or null, ...}], "ops": [{"name", "category", "seconds_per_step", ...}] or [],
   "trace": directory or null, ...}
A run that failed or was skipped has null measurements. Optional (calibrate --collectives, written
by perf/collectives.py; a file without it loads as before, and `runs` may then be empty):
  "collectives": [{"kind": "all-reduce" | "all-gather" | "reduce-scatter", "group_size": n >= 2,
   "device_kind", "platform", "sizes": [S bytes, ascending], "seconds": [mean t], "algbw":
   [S / t], "busbw": [algbw x 2(n-1)/n (all-reduce) or (n-1)/n], ...}], "collectives_note"
with nccl-tests' definitions (doc/PERFORMANCE.md; S of an all-gather or reduce-scatter is the
total array, n x the per-rank part). `measured_bus_bandwidth` hands the plan its busbw table where
the file's devices are the target's.
"""

import dataclasses
import glob
import gzip
import json
import os
import re
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from alexnet_jax.core import run as run_lib
from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import published
from alexnet_jax.pods import schema
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import formula
from alexnet_jax.program import hlo
from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths

KIND = 'alexnet_jax calibration'
VERSION = 1
DTYPES = ('float32', 'bfloat16')
CATEGORIES = ('conv', 'matmul', 'other')

# The fields every file and every run has; a run that did not measure holds null in the numbers.
RUN_FIELDS = ('config', 'network', 'dtype', 'batch_size', 'images_per_second', 'step_seconds',
              'compile_seconds', 'model_flops_per_image', 'mfu', 'peak_flops')
RUN_NUMBERS = RUN_FIELDS[4:]

# Lines of a device plane that the profiler's post-processing derives from the kernels (when a
# file holds them): counting them beside the kernels would count every op twice.
_DERIVED_LINES = ('XLA Modules', 'Steps', 'TensorFlow Ops', 'TensorFlow Name Scope',
                  'Async XLA Ops', 'Launch Stats', 'Source code')
# Kernels no HLO instruction is named after (library kernels of a custom call, say): their names.
_CONV_KERNEL = re.compile(r'conv|fprop|dgrad|wgrad', re.IGNORECASE)
_MATMUL_KERNEL = re.compile(r'gemm|dot|matmul|cublas|cutlass', re.IGNORECASE)


class CalibrationError(errors.Refused, ValueError):
  """A calibration file that cannot be used; the message is one line naming the field."""


# --- The file. ---


def _exactly(expected: Any, why: str) -> schema.Check:
  def check(value, path):
    if value != expected or type(value) is not type(expected):
      raise schema.Mismatch(path, f'{value!r}, not {expected!r}: {why}')
    return value
  return check


# The format as data (pods/schema.py). Fields beyond these are kept: a newer writer may add some.
_NUMBER_OR_NULL = schema.nullable(schema.number(minimum=0))
RUN = schema.table({'config': schema.string(), 'network': schema.string(),
                    'dtype': schema.one_of(*DTYPES), 'batch_size': schema.integer(minimum=1),
                    **{field: _NUMBER_OR_NULL for field in RUN_NUMBERS}},
                   others=schema.anything(), what='an object')
OP = schema.table({'name': schema.string(), 'category': schema.one_of(*CATEGORIES),
                   'seconds_per_step': schema.number(minimum=0)},
                  others=schema.anything(), what='an object')
_POSITIVE_LIST = schema.list_of(schema.number(positive=True), nonempty=True)
COLLECTIVE = schema.table({'kind': schema.one_of(*costmodel.MEASURED_KINDS),
                           'group_size': schema.integer(minimum=2),
                           'device_kind': schema.string(nonempty=True),
                           'platform': schema.string(nonempty=True),
                           'sizes': schema.list_of(schema.integer(minimum=1), nonempty=True),
                           'seconds': _POSITIVE_LIST, 'algbw': _POSITIVE_LIST,
                           'busbw': _POSITIVE_LIST}, others=schema.anything(), what='an object')
FORMAT = schema.table({
    'kind': _exactly(KIND, 'not a file of python -m alexnet_jax.calibrate'),
    'version': _exactly(VERSION, f'this reader knows version {VERSION}'),
    **{field: schema.string() for field in ('date', 'device_kind', 'platform', 'jax_version',
                                            'target')},
    'runs': schema.list_of(RUN), 'ops': schema.list_of(OP),
    'trace': schema.nullable(schema.string())},
    optional={'collectives': schema.list_of(COLLECTIVE)},
    others=schema.anything(), what='a JSON object')


def validate(calibration: Any, where: str = 'calibration') -> dict:
  """`calibration` if it is a calibration file's contents, else CalibrationError naming the first
  field that is wrong. Checks kinds and types only: how the numbers relate is the writer's
  business (tests/test_calibrate.py checks it), and a reader should not refuse a file over
  rounding."""
  calibration = schema.check(calibration, FORMAT, where, CalibrationError)
  for i, run in enumerate(calibration['runs']):
    if run['images_per_second'] is not None and not (
        run['images_per_second'] > 0 and run['step_seconds']):
      raise CalibrationError(f'{where}: runs[{i}].step_seconds: expected a positive number '
                             'where images_per_second is')
  seen = set()
  for i, entry in enumerate(calibration.get('collectives', [])):
    n = len(entry['sizes'])
    for name in ('seconds', 'algbw', 'busbw'):
      if len(entry[name]) != n:
        raise CalibrationError(f'{where}: collectives[{i}].{name}: {len(entry[name])} values; '
                               f'expected {n}, one per size')
    if any(a >= b for a, b in zip(entry['sizes'], entry['sizes'][1:])):
      raise CalibrationError(f'{where}: collectives[{i}].sizes: {entry["sizes"]} is not '
                             'ascending')
    key = (entry['kind'], entry['group_size'], entry['device_kind'])
    if key in seen:
      raise CalibrationError(f'{where}: collectives[{i}]: a second entry of {key[0]} over '
                             f'{key[1]} {key[2]} devices; keep one')
    seen.add(key)
  return calibration


def load_calibration(path: str) -> dict:
  """The calibration file at `path`, checked (CalibrationError, one line, naming the field)."""
  try:
    calibration = json.loads(paths.read_text(path))
  except OSError as e:
    raise CalibrationError(f'{path}: cannot be read ({e.strerror or e})') from e
  except json.JSONDecodeError as e:
    raise CalibrationError(f'{path}: not JSON ({e.msg}, line {e.lineno})') from e
  return validate(calibration, path)


def write(path: str, result: dict) -> None:
  """Replaces the file in one rename (one upload on object storage): a reader (or a kill) never
  sees half of it."""
  paths.makedirs(paths.dirname(paths.absolute(path)))
  paths.replace_text(path, json.dumps(result, indent=1))


# --- The trace. ---


def one_line(error: BaseException) -> str:
  """An error as the file records it: its class and the first line of its message."""
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:500]


def _hlo_module_name(hlo_text: str) -> str:
  m = re.match(r'\s*HloModule\s+([\w.\-]+)', hlo_text)
  return m.group(1) if m else ''


_CONV_TARGET = re.compile(r'conv', re.IGNORECASE)
_MATMUL_TARGET = re.compile(r'gemm|matmul|cublas|dot', re.IGNORECASE)


def hlo_categories(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (category, layer)} for every instruction of a compiled program's text.
  conv: a convolution, a library convolution (cuDNN's custom calls) or a fusion holding one;
  matmul: likewise for a dot or a GEMM call; other: the rest (a while loop's own time too: the
  ops of its body are events of their own). The layer is the first of conv1..fc8 its source
  name (op_name) names, or ''. Names are also listed as XLA spells them in kernel names ('.'
  and '-' as '_')."""
  module = hlo.Module(hlo_text)
  memo: dict = {}

  def category(name: str, depth: int = 0) -> str:
    if name in memo:
      return memo[name]
    ins = module.instructions[name]
    kind = 'other'
    if ins.op == 'convolution':
      kind = 'conv'
    elif ins.op == 'dot':
      kind = 'matmul'
    elif ins.op == 'custom-call':
      target = re.search(r'custom_call_target="([^"]*)"', ins.attrs)
      target = target.group(1) if target else ''
      kind = ('conv' if _CONV_TARGET.search(target)
              else 'matmul' if _MATMUL_TARGET.search(target) else 'other')
    elif ins.op in ('fusion', 'call', 'async-start') and depth < 8:
      inner = {category(n, depth + 1) for n in module.order.get(module.called(ins) or '', [])}
      kind = 'conv' if 'conv' in inner else 'matmul' if 'matmul' in inner else 'other'
    memo[name] = kind
    return kind

  def layer(name: str) -> str:
    ins = module.instructions[name]
    texts = [ins.attrs] + [module.instructions[n].attrs
                           for n in module.order.get(module.called(ins) or '', [])]
    for text in texts:
      source = re.search(r'op_name="([^"]*)"', text)
      if source:
        found = [l for l in hlo.LAYERS if re.search(r'(^|/|\()' + l + r'(/|$)', source.group(1))]
        if found:
          return found[-1]
    return ''

  out = {}
  for name in module.instructions:
    out[name] = (category(name), layer(name))
  for name in list(out):
    out.setdefault(re.sub(r'[.\-]', '_', name), out[name])
  return out


def _category(name: str, known: dict) -> tuple[str, str]:
  if name in known:
    return known[name]
  if _CONV_KERNEL.search(name):
    return 'conv', ''
  if _MATMUL_KERNEL.search(name):
    return 'matmul', ''
  return 'other', ''


def self_times(timelines: Sequence[Sequence[tuple[str, float, float]]]) -> dict[str, float]:
  """{op name: nanoseconds} from timelines (a thread's or a stream's) of (name, start, duration)
  events: each event's own time, without the events nested inside it on the same timeline (a
  while loop's body runs inside the loop's event: counting both would count the body twice)."""
  totals: dict = {}
  for events in timelines:
    stack: list = []  # [end, name, self time] of the events open at this point
    for name, begin, duration in sorted(events, key=lambda e: (e[1], -e[2])):
      while stack and stack[-1][0] <= begin:
        _, done, own = stack.pop()
        totals[done] = totals.get(done, 0.0) + own
      if stack:
        stack[-1][2] -= duration
      stack.append([begin + duration, name, duration])
    for _, done, own in stack:
      totals[done] = totals.get(done, 0.0) + own
  return totals


def _events_from_xplane(path: str, module: str) -> tuple[dict, str]:
  """({op name: own nanoseconds}, what was read) from an .xplane.pb."""
  data = jax.profiler.ProfileData.from_file(path)
  planes = list(data.planes)
  devices = [p for p in planes if p.name.startswith('/device:')]

  def timeline(events, need_hlo_op: bool) -> list:
    out = []
    for event in events:
      stats = dict(event.stats)
      if need_hlo_op and 'hlo_op' not in stats:
        continue
      if module and stats.get('hlo_module') not in (None, module):
        continue
      out.append((str(stats.get('hlo_op') or event.name), float(event.start_ns),
                  float(event.duration_ns)))
    return out

  timelines = []
  for plane in devices:
    lines = list(plane.lines)
    ops_line = [l for l in lines if l.name == 'XLA Ops']
    for line in ops_line or [l for l in lines if l.name not in _DERIVED_LINES]:
      timelines.append(timeline(line.events, need_hlo_op=False))
  if any(timelines):
    return self_times(timelines), (f'kernel events of {", ".join(p.name for p in devices)} '
                                   f'in {path}')
  timelines = [timeline(line.events, need_hlo_op=True)  # the CPU backend: the host's threads
               for plane in planes if plane.name.startswith('/host:') for line in plane.lines]
  return self_times(timelines), f'host thread events with an hlo_op stat in {path}'


def _events_from_trace_json(path: str, module: str) -> tuple[dict, str]:
  """The same totals from the profiler's Chrome-trace JSON (`<host>.trace.json.gz`)."""
  with gzip.open(path, 'rt') as f:
    trace = json.load(f)
  events = trace.get('traceEvents', []) if isinstance(trace, dict) else trace
  process_names = {e.get('pid'): e.get('args', {}).get('name', '') for e in events
                   if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  device_pids = {pid for pid, name in process_names.items() if name.startswith('/device:')}
  for source in ('device', 'host'):
    timelines: dict = {}
    for e in events:
      args = e.get('args', {})
      if e.get('ph') != 'X' or (source == 'device') != (e.get('pid') in device_pids):
        continue
      if (source == 'host' and 'hlo_op' not in args) or (
          module and args.get('hlo_module') not in (None, module)):
        continue
      timelines.setdefault((e.get('pid'), e.get('tid')), []).append(
          (str(args.get('hlo_op') or e.get('name')), float(e.get('ts', 0.0)) * 1e3,
           float(e.get('dur', 0.0)) * 1e3))  # microseconds -> ns
    if timelines:
      return self_times(list(timelines.values())), f'{source} events of {path}'
  return {}, f'no op events in {path}'


def trace_files(trace_dir: str, since: float = 0.0) -> dict:
  """{'xplane': path or None, 'trace_json': path or None}: the newest the profiler wrote under
  `trace_dir` (each session writes plugins/profile/<date>/<host>.*), modified at or after
  `since`."""
  found = {}
  for key, pattern in (('xplane', '*.xplane.pb'), ('trace_json', '*.trace.json.gz')):
    files = [p for p in glob.glob(os.path.join(trace_dir, '**', pattern), recursive=True)
             if os.path.getmtime(p) >= since - 1]
    found[key] = max(files, key=os.path.getmtime) if files else None
  return found


def trace_ops(trace_dir: str, steps: int, hlo_text: str = '',
              since: float = 0.0) -> tuple[list[dict], str]:
  """(ops, note): every op of the traced steps with its category and seconds per step, the
  longest first; the note says what was read, or why nothing was. `hlo_text` (the compiled
  program's) names the categories and keeps only that module's events."""
  files = trace_files(trace_dir, since)
  module = _hlo_module_name(hlo_text)
  totals, note = {}, ''
  errors = []
  readers = []
  if files['xplane'] and getattr(jax.profiler, 'ProfileData', None) is not None:
    readers.append((_events_from_xplane, files['xplane']))
  elif files['xplane']:
    errors.append('this jaxlib has no jax.profiler.ProfileData to read the .xplane.pb')
  if files['trace_json']:
    readers.append((_events_from_trace_json, files['trace_json']))
  # The step's module only; if no event names it (a runtime that spells the module otherwise),
  # every op event of the traced steps.
  for only in dict.fromkeys([module, '']):
    for read, path in readers:
      try:
        totals, note = read(path, only)
      except Exception as e:  # pylint: disable=broad-except  # a format this reader cannot read
        errors.append(f'{path} could not be read: {one_line(e)}')
      if totals:
        break
    if totals:
      if only != module:
        note += f' (no event named the module {module}: all modules\' events counted)'
      break
  if not totals:
    why = '; '.join(errors) or f'the profiler wrote no readable trace under {trace_dir}'
    return [], (f'no per-op times: {why}. The trace is kept for xprof/tensorboard; XLA\'s '
                'cost analysis is no substitute for measured times.')
  try:
    known = hlo_categories(hlo_text) if hlo_text else {}
  except Exception as e:  # pylint: disable=broad-except  # categories by name alone
    known, note = {}, f'{note}; categories by kernel name only (the HLO was not read: {e})'
  ops = []
  for name, ns in sorted(totals.items(), key=lambda item: -item[1]):
    category, layer = _category(name, known)
    ops.append({'name': name, 'category': category, 'layer': layer,
                'seconds_per_step': ns * 1e-9 / max(steps, 1)})
  return ops, note


# --- The fit. ---


def calibrated_efficiency(calibration: dict, config: ml_collections.ConfigDict,
                          profile: targets_lib.Profile, cache_dir: Optional[str],
                          log: Callable[[str], Any] = print) -> tuple[float, str]:
  """The compute efficiency fitted to a calibration file's measured one-device step.

  The run of the file nearest the plan (the same compute dtype; the same network's config where
  the file has it; the batch closest to the plan's) is compiled for the target on one device
  and the model's efficiency solved so that its predicted step equals the measured one
  (costmodel.fit_efficiency): the same model then predicts every other size."""
  runs = [r for r in calibration['runs'] if r.get('images_per_second')
          and r.get('dtype') == config.model.dtype]
  if not runs:
    raise targets_lib.TargetError(
        f'the calibration file has no measured run in {config.model.dtype}; run '
        f'python -m alexnet_jax.calibrate with that dtype')
  # The same network: its model FLOPs per image (formula.train_flops_per_image) are the plan's.
  devices = targets_lib.devices(profile, 1)
  mine = formula.train_flops_per_image(run_lib.network(config, devices[0].platform),
                                       config.image_size)
  same = lambda r: abs(float(r.get('model_flops_per_image') or 0) - mine) <= 1e-6 * mine
  runs.sort(key=lambda r: (not same(r), abs(r['batch_size'] - config.batch_size),
                           r.get('config', '')))
  run = runs[0]
  measured_config = config
  if not same(run):  # fit on the network that was measured: its own config file
    measured_config = published.load_config_file(run['config'])
    measured_config.model.dtype = config.model.dtype
    log(f'the calibration file has no run of this network; the efficiency is fitted on '
        f'{run["config"]}, which it measured')
  config_1 = compile_lib.replica_config(measured_config, 'data', 1, devices, 0)
  config_1.batch_size = config_1.eval_batch_size = int(run['batch_size'])
  job = compile_lib.lower('calibration/1', config_1, devices, profile, cache_dir,
                          targets_lib.topology_name(profile, 1))
  compile_lib.compile_all([job])
  entry = compile_lib.analyse(job, profile)
  step = run['batch_size'] / run['images_per_second']
  efficiency = costmodel.fit_efficiency(entry, profile, config.model.dtype, step)
  if efficiency is None:
    raise targets_lib.TargetError(
        f'no compute efficiency makes the model reach the calibration\'s measured '
        f'{run["images_per_second"]:,.0f} images/s (batch {run["batch_size"]}): the model '
        'bounds that step by memory traffic alone; check the file\'s device and target')
  source = (f'calibrated: {efficiency:.3f} fitted to {run["images_per_second"]:,.0f} images/s '
            f'measured on {calibration.get("device_kind", "?")}, batch {run["batch_size"]}, '
            f'{calibration.get("date", "")}')
  log(source)
  return efficiency, source


# --- The links. ---

def measured_bus_bandwidth(calibration: dict, profile: targets_lib.Profile,
                           log: Callable[[str], Any] = print
                           ) -> tuple[targets_lib.Profile, str]:
  """(the profile, with the file's measured busbw as `measured_bus_bandwidth` of its inside link
  where the file's collectives were measured on the profile's chip; a line saying so). The
  table, {kind: {group size: [[S, busbw], ...]}}, is read by costmodel.collective_seconds: for
  a collective inside a node/slice over a group size measured, the busbw at the largest
  measured S <= its S (no interpolation), else the profile's figure. Collectives of another
  platform or chip are IGNORED, with the line logged and recorded in the plan, not refused: the
  file's one-device run may still be wanted, and a CPU machine's file (the tests', the launch
  script's CPU run) must leave a GPU plan as the profile has it."""
  entries = calibration.get('collectives') or []
  if not entries:
    return profile, ''
  table: dict = {}
  ignored, used = set(), set()
  for entry in entries:
    why = targets_lib.same_device(entry['device_kind'], entry['platform'], profile)
    if why:
      ignored.add(why)
      continue
    used.add(entry['device_kind'])
    table.setdefault(entry['kind'], {})[entry['group_size']] = [
        [int(s), float(b)] for s, b in zip(entry['sizes'], entry['busbw'])]
  if ignored:
    log(f'the calibration\'s collectives are ignored: {"; ".join(sorted(ignored))}; the plan '
        f'keeps the profile\'s bus bandwidth')
  if not table:
    return profile, ('the profile\'s (the calibration\'s collectives ignored: '
                     f'{"; ".join(sorted(ignored))})')
  groups = sorted({g for by_group in table.values() for g in by_group})
  kinds = sorted(table)
  line = (f'measured busbw of {", ".join(kinds)} over {groups} '
          f'{", ".join(sorted(used))} ({calibration.get("date", "")}) for '
          f'{profile.inside.get("name", "the inside link")}; the profile\'s elsewhere')
  log(f'links: {line}')
  inside = dict(profile.inside, measured_bus_bandwidth=table)
  return dataclasses.replace(profile, inside=inside), line
