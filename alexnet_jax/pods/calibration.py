"""One device's measured train step, written down for the planner to fit its efficiency to.

    python -m alexnet_jax.calibrate --out=/tmp/calibration.json --target=gpu-h200

The pod plan (plan.py) predicts every step from a cost model whose one free number is the
fraction of peak FLOP/s the convolutions and matrix products reach. This command measures, on
ONE device of this machine, what the real train step does, so that number can be fitted
(`plan --calibration=FILE`) instead of assumed. For every config file (`--configs`; default the
paper's two-tower network and tf_cnn_benchmarks' one-tower variant), compute dtype (float32,
which the GPU runs on TF32 tensor cores at JAX's default precision, and bfloat16) and batch size:
the train step as training builds it (run.build, parallelism 'data' on one device: the whole
network on one chip), compiled and timed with the functions bench and comms use
(program/measure.py), on a synthetic batch that stays on the device (run.synthetic_batch). So a
calibration's step is the same measurement as bench's, and the planner fits what trains.

MFU: model FLOPs per image (bench.train_flops_per_image: forward and backward of the conv and fc
layers of the layer table) x images/s / the device's peak, the peak taken from the hardware
profile `--target` names (targets.py): `fp32_matmul_flops` for float32 (the rate at JAX's default
precision), `peak_bf16_flops` for bfloat16, per device.

Every run is guarded: one that fails (out of memory, a compile error, a config this device
cannot hold) is recorded with its error and the others go on; once `--budget_s` is spent no new
run starts, and those not started are recorded as skipped. The file is rewritten after every run
(`complete` false until the end), so a process killed by a stage timeout leaves what it had.
Runs are ordered batch size first, then config, then dtype: a short budget still covers every
network and dtype at the first batch size (by default 128, the paper's).

Per-op times: for the first run that succeeds, `--trace_steps` more steps run under
`jax.profiler.trace`, and the trace the profiler writes (`<host>.xplane.pb`, an XSpace protocol
buffer) is read with `jax.profiler.ProfileData`, which jaxlib ships: no TensorFlow, no
tensorboard plugin. A device's ops are its plane's kernel events (`/device:GPU:0`), attributed to
HLO instructions by the `hlo_op` stat the runtime annotates each kernel with (or by the kernel's
name, which XLA derives from the fusion's); on the CPU backend, the host plane's thunk events,
which carry the same stat. Where ProfileData is missing or reads nothing, the profiler's
`<host>.trace.json.gz` (the same events as Chrome trace JSON) is read instead. Each op's category (conv, matmul, other)
comes from the compiled program's HLO (`hlo_categories`: a convolution or matrix product, on its
own, as a library call or inside a fusion). An op's time is its events' own time (an event
nested in another on the same thread or stream, a while loop's body say, is taken out of its
parent's) summed and divided by the traced steps; ops that overlap on different streams or
threads are each counted in full, so the ops' sum can exceed the step.

The file (`load_calibration` checks it; plan.py calls it):
  {"kind": "alexnet_jax calibration", "version": 1, "date", "device_kind", "platform",
   "jax_version", "target": profile key, "runs": [{"config": path, "network": short name,
   "dtype", "batch_size", "images_per_second", "step_seconds", "compile_seconds",
   "model_flops_per_image", "mfu", "peak_flops", "status": "ok" | "error" | "skipped",
   "error": why or null, ...}], "ops": [{"name", "category", "seconds_per_step", ...}] or [],
   "trace": directory or null, ...}
A run that failed or was skipped has null measurements.
"""

import dataclasses
import gc
import glob
import gzip
import json
import math
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from alexnet_jax.runtime import errors

KIND = 'alexnet_jax calibration'
VERSION = 1
DEFAULT_CONFIGS = ('configs/paper.py', 'configs/tf_cnn_alexnet.py')
DTYPES = ('float32', 'bfloat16')
DEFAULT_BATCH_SIZES = (128, 256, 512)
# The profile's number a dtype's MFU is taken against (profiles.toml says what each means).
PEAK_FIELDS = {'float32': 'fp32_matmul_flops', 'bfloat16': 'peak_bf16_flops'}
CATEGORIES = ('conv', 'matmul', 'other')

# The fields every file and every run has; a run that did not measure holds null in the numbers.
FILE_FIELDS = ('kind', 'version', 'date', 'device_kind', 'platform', 'jax_version', 'target',
               'runs', 'ops', 'trace')
RUN_FIELDS = ('config', 'network', 'dtype', 'batch_size', 'images_per_second', 'step_seconds',
              'compile_seconds', 'model_flops_per_image', 'mfu', 'peak_flops')
RUN_NUMBERS = RUN_FIELDS[4:]
OP_FIELDS = ('name', 'category', 'seconds_per_step')

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


def _number_or_null(value: Any) -> bool:
  return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                           and math.isfinite(value) and value >= 0)


def validate(calibration: Any, where: str = 'calibration') -> dict:
  """`calibration` if it is a calibration file's contents, else CalibrationError naming the first
  field that is wrong. Checks kinds and types only: how the numbers relate is the writer's
  business (tests/test_calibrate.py checks it), and a reader should not refuse a file over
  rounding."""
  def fail(message: str):
    raise CalibrationError(f'{where}: {message}')

  if not isinstance(calibration, dict):
    fail('not a JSON object')
  for field in FILE_FIELDS:
    if field not in calibration:
      fail(f'field "{field}" is missing')
  if calibration['kind'] != KIND:
    fail(f'"kind" is {calibration["kind"]!r}, not {KIND!r}: not a file of '
         'python -m alexnet_jax.calibrate')
  if calibration['version'] != VERSION:
    fail(f'"version" is {calibration["version"]!r}; this reader knows version {VERSION}')
  for field in ('date', 'device_kind', 'platform', 'jax_version', 'target'):
    if not isinstance(calibration[field], str):
      fail(f'"{field}" should be a string, not {calibration[field]!r}')
  if not isinstance(calibration['runs'], list):
    fail('"runs" should be a list')
  for i, run in enumerate(calibration['runs']):
    if not isinstance(run, dict):
      fail(f'runs[{i}] is not an object')
    for field in RUN_FIELDS:
      if field not in run:
        fail(f'runs[{i}].{field} is missing')
    for field in ('config', 'network', 'dtype'):
      if not isinstance(run[field], str):
        fail(f'runs[{i}].{field} should be a string, not {run[field]!r}')
    if run['dtype'] not in DTYPES:
      fail(f'runs[{i}].dtype is {run["dtype"]!r}, not one of {", ".join(DTYPES)}')
    if isinstance(run['batch_size'], bool) or not isinstance(run['batch_size'], int) or (
        run['batch_size'] < 1):
      fail(f'runs[{i}].batch_size should be a positive integer, not {run["batch_size"]!r}')
    for field in RUN_NUMBERS:
      if not _number_or_null(run[field]):
        fail(f'runs[{i}].{field} should be a finite number >= 0 or null, not {run[field]!r}')
    if run['images_per_second'] is not None and not (
        run['images_per_second'] > 0 and run['step_seconds']):
      fail(f'runs[{i}].step_seconds should be a positive number where images_per_second is')
  if not isinstance(calibration['ops'], list):
    fail('"ops" should be a list')
  for i, op in enumerate(calibration['ops']):
    if not isinstance(op, dict):
      fail(f'ops[{i}] is not an object')
    for field in OP_FIELDS:
      if field not in op:
        fail(f'ops[{i}].{field} is missing')
    if op['category'] not in CATEGORIES:
      fail(f'ops[{i}].category is {op["category"]!r}, not one of {", ".join(CATEGORIES)}')
    if not _number_or_null(op['seconds_per_step']) or op['seconds_per_step'] is None:
      fail(f'ops[{i}].seconds_per_step should be a finite number >= 0')
  if calibration['trace'] is not None and not isinstance(calibration['trace'], str):
    fail(f'"trace" should be a directory or null, not {calibration["trace"]!r}')
  return calibration


def load_calibration(path: str) -> dict:
  """The calibration file at `path`, checked (CalibrationError, one line, naming the field)."""
  try:
    with open(path) as f:
      calibration = json.load(f)
  except OSError as e:
    raise CalibrationError(f'{path}: cannot be read ({e.strerror or e})') from e
  except json.JSONDecodeError as e:
    raise CalibrationError(f'{path}: not JSON ({e.msg}, line {e.lineno})') from e
  return validate(calibration, path)


def _write(path: str, result: dict) -> None:
  """Replaces the file in one rename: a reader (or a kill) never sees half of it."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  temporary = f'{path}.partial'
  with open(temporary, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(temporary, path)


# --- The trace. ---


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
  from alexnet_jax.program import hlo  # pylint: disable=import-outside-toplevel
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
    paths = [p for p in glob.glob(os.path.join(trace_dir, '**', pattern), recursive=True)
             if os.path.getmtime(p) >= since - 1]
    found[key] = max(paths, key=os.path.getmtime) if paths else None
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
        errors.append(f'{path} could not be read: {_one_line(e)}')
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


# --- The runs. ---


@dataclasses.dataclass(frozen=True)
class Plan:
  """What one invocation measures."""
  configs: tuple
  dtypes: tuple = DTYPES
  batch_sizes: tuple = DEFAULT_BATCH_SIZES
  steps: int = 20
  warmup: int = 3
  trace_steps: int = 2
  budget_s: float = 420.0

  def runs(self) -> list[tuple[str, str, int]]:
    """(config, dtype, batch size), batch size first (see the module docstring for why)."""
    return [(c, d, b) for b in self.batch_sizes for c in self.configs for d in self.dtypes]


def network_name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def run_config(config: ml_collections.ConfigDict, dtype: str,
               batch_size: int) -> ml_collections.ConfigDict:
  """`config` as one device trains it: parallelism 'data' on 1 device, `dtype` and `batch_size`."""
  from alexnet_jax.program import measure  # pylint: disable=import-outside-toplevel
  config = measure.strategy_config(config, 'data', 1)
  config.model.dtype = dtype
  config.batch_size = batch_size
  return config


def _empty_run(path: str, dtype: str, batch_size: int) -> dict:
  entry = {'config': path, 'network': network_name(path), 'dtype': dtype,
           'batch_size': batch_size}
  entry.update({field: None for field in RUN_NUMBERS})
  entry.update({'status': None, 'error': None})
  return entry


def _one_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:500]


def measure_run(config: ml_collections.ConfigDict, device, peak_flops: float, steps: int,
                warmup: int, trace: Optional[Callable] = None) -> dict:
  """One run's measurements on `device`: the train step compiled and timed as bench does it.
  `trace(compiled, state, batch)`, if given, runs after the timing with the program still
  compiled (no second compile)."""
  from alexnet_jax.core import run as run_lib  # pylint: disable=import-outside-toplevel
  from alexnet_jax.perf import bench  # pylint: disable=import-outside-toplevel
  from alexnet_jax.program import measure  # pylint: disable=import-outside-toplevel
  run = run_lib.build(config, [device])
  state, batch = run.init_state(), run.synthetic_batch(config.seed)
  compiled, compile_seconds = measure.compile_train_step(run, state, batch)
  timing = measure.time_steps(compiled, state, batch, steps, warmup)
  step_seconds = timing['step_seconds']
  images_per_second = config.batch_size / step_seconds
  flops = bench.train_flops_per_image(run.net, config.image_size)
  entry = {'images_per_second': images_per_second, 'step_seconds': step_seconds,
           'mean_step_seconds': timing['mean_step_seconds'],
           'compile_seconds': compile_seconds, 'model_flops_per_image': flops,
           'mfu': flops * images_per_second / peak_flops, 'peak_flops': peak_flops,
           'image_size': config.image_size, 'kernels': run.kernels,
           'augment_on': run.augment_on, 'steps': steps, 'warmup': warmup,
           'final_loss': float(timing['metrics']['loss']),
           **measure.memory(compiled, [device])}
  if trace is not None:
    trace(compiled, timing['state'], batch)
  return entry


def calibrate(plan: Plan, target: str, out: str, trace_dir: str = '',
              log: Callable[[str], Any] = print) -> dict:
  """Every run of `plan` on this process's first device, written to `out` after each run."""
  from alexnet_jax.pods import targets  # pylint: disable=import-outside-toplevel
  start = time.monotonic()
  profile = targets.load(target)
  device = jax.devices()[0]
  trace_dir = os.path.abspath(trace_dir or os.path.join(os.path.dirname(os.path.abspath(out)),
                                                        'trace'))
  result = {
      'kind': KIND, 'version': VERSION,
      'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
      'device_kind': device.device_kind, 'platform': device.platform,
      'jax_version': jax.__version__, 'target': profile.key, 'target_name': profile.name,
      'matmul_precision': str(jax.config.jax_default_matmul_precision or 'default'),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'budget_s': plan.budget_s,
      'runs': [], 'ops': [], 'ops_note': '', 'trace': None, 'traced_run': None,
      'complete': False, 'elapsed_s': 0.0}
  configs: dict = {}
  traced = {'done': plan.trace_steps <= 0}

  def trace_after(entry: dict) -> Optional[Callable]:
    if traced['done']:
      return None

    def trace(compiled, state, batch) -> None:
      traced['done'] = True
      if time.monotonic() - start >= plan.budget_s:
        result['ops_note'] = f'no trace: the {plan.budget_s:g} s budget was spent'
        return
      since = time.time()
      try:  # the run's measurements stand whatever the profiler does
        with jax.profiler.trace(trace_dir):
          for _ in range(plan.trace_steps):
            state, metrics = compiled(state, batch)
          jax.block_until_ready((state, metrics))
      except Exception as e:  # pylint: disable=broad-except
        result['ops_note'] = f'no trace: the profiler failed ({_one_line(e)})'
        return
      result['trace'] = trace_dir
      result['traced_run'] = {k: entry[k] for k in ('config', 'dtype', 'batch_size')}
      result['trace_steps'] = plan.trace_steps
      result['trace_files'] = trace_files(trace_dir, since)
      result['ops'], result['ops_note'] = trace_ops(trace_dir, plan.trace_steps,
                                                    compiled.as_text(), since)
    return trace

  for path, dtype, batch_size in plan.runs():
    entry = _empty_run(path, dtype, batch_size)
    result['runs'].append(entry)
    label = f'{network_name(path)} {dtype} batch {batch_size}'
    if time.monotonic() - start >= plan.budget_s:
      entry['status'] = 'skipped'
      entry['error'] = f'not started: the {plan.budget_s:g} s budget was spent'
      log(f'{label}: skipped (budget)')
      continue
    try:
      if path not in configs:
        from alexnet_jax.pods import plan as plan_lib  # pylint: disable=import-outside-toplevel
        configs[path] = plan_lib.load_config_file(path)
      config = run_config(configs[path], dtype, batch_size)
      peak = profile.per_device(PEAK_FIELDS[dtype])
      log(f'{label}: compiling and measuring on {device.device_kind} ...')
      entry.update(measure_run(config, device, peak, plan.steps, plan.warmup,
                               trace_after(entry)))
      entry['status'] = 'ok'
      log(f'{label}: {entry["images_per_second"]:,.1f} images/s, step '
          f'{entry["step_seconds"] * 1e3:.2f} ms, compile {entry["compile_seconds"]:.1f} s, '
          f'MFU {entry["mfu"]:.3f}')
    except Exception as e:  # pylint: disable=broad-except  # recorded; the other runs go on
      entry.update({field: None for field in RUN_NUMBERS})
      entry['status'], entry['error'] = 'error', _one_line(e)
      log(f'{label}: failed: {entry["error"]}')
    finally:
      gc.collect()  # the failed or finished run's buffers, before the next one allocates
    result['elapsed_s'] = time.monotonic() - start
    _write(out, result)
  if not traced['done']:
    result['ops_note'] = 'no trace: no run was measured'
  elif plan.trace_steps <= 0:
    result['ops_note'] = 'no trace asked for (--trace_steps=0)'
  result['complete'] = True
  result['elapsed_s'] = time.monotonic() - start
  _write(out, validate(result))
  return result


def markdown(result: dict) -> str:
  """The runs as a table, then the ten longest ops and their categories' totals."""
  rows = ['| network | dtype | batch | images/s | step ms | compile s | MFU | status |',
          '|---|---|---|---|---|---|---|---|']
  for r in result['runs']:
    if r['status'] == 'ok':
      rows.append(f'| {r["network"]} | {r["dtype"]} | {r["batch_size"]} | '
                  f'{r["images_per_second"]:,.1f} | {r["step_seconds"] * 1e3:.2f} | '
                  f'{r["compile_seconds"]:.1f} | {r["mfu"]:.3f} | ok |')
    else:
      rows.append(f'| {r["network"]} | {r["dtype"]} | {r["batch_size"]} | | | | | '
                  f'{r["status"]}: {r["error"]} |')
  text = '\n'.join(rows) + '\n'
  if result['ops']:
    totals = {c: sum(o['seconds_per_step'] for o in result['ops'] if o['category'] == c)
              for c in CATEGORIES}
    run = result['traced_run']
    text += (f'\nper-op times of {network_name(run["config"])} {run["dtype"]} batch '
             f'{run["batch_size"]} (ms per step): '
             + ', '.join(f'{c} {totals[c] * 1e3:.2f}' for c in CATEGORIES) + '\n')
    text += ''.join(f'  {o["seconds_per_step"] * 1e3:8.3f}  {o["category"]:6s} {o["name"]}\n'
                    for o in result['ops'][:10])
  if result.get('ops_note'):
    text += f'ops: {result["ops_note"]}\n'
  return text


def _list(text: str) -> tuple:
  return tuple(s.strip() for s in text.split(',') if s.strip())


def main(argv: Sequence[str]) -> None:
  from absl import app  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  dtypes = _list(f.dtypes)
  if not dtypes or any(d not in DTYPES for d in dtypes):
    raise app.UsageError(f'--dtypes={f.dtypes}: choose from {",".join(DTYPES)}')
  try:
    batch_sizes = tuple(int(b) for b in _list(f.batch_sizes))
  except ValueError:
    batch_sizes = ()
  if not batch_sizes or min(batch_sizes) < 1:
    raise app.UsageError(f'--batch_sizes={f.batch_sizes}: give positive integers, e.g. 128,256')
  plan = Plan(configs=_list(f.configs), dtypes=dtypes, batch_sizes=batch_sizes, steps=f.steps,
              warmup=f.warmup, trace_steps=f.trace_steps, budget_s=f.budget_s)
  if not plan.configs:
    raise app.UsageError('--configs is empty')
  if plan.steps < 1 or plan.warmup < 0 or plan.trace_steps < 0:
    raise app.UsageError('--steps must be 1 or more, --warmup and --trace_steps 0 or more')
  from alexnet_jax.pods import targets  # pylint: disable=import-outside-toplevel
  try:
    targets.load(f.target)
  except targets.TargetError as e:
    raise app.UsageError(str(e)) from e
  from alexnet_jax.pods import published  # pylint: disable=import-outside-toplevel
  for path in plan.configs:  # a config file that cannot be imported: refused (exit 2) first
    published.load_config_file(path)
  result = calibrate(plan, f.target, f.out, f.trace_dir)
  print(markdown(result))
  measured = sum(r['status'] == 'ok' for r in result['runs'])
  print(f'{measured} of {len(result["runs"])} runs measured in {result["elapsed_s"]:.0f} s; '
        f'wrote {f.out}')


def cli() -> None:
  """`python -m alexnet_jax.calibrate` (alexnet_jax/calibrate.py): the flags, then `main`."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string('configs', ','.join(DEFAULT_CONFIGS), 'Comma-separated config files.')
  flags.DEFINE_string('dtypes', ','.join(DTYPES), 'Comma-separated compute dtypes '
                      '(model.dtype).')
  flags.DEFINE_string('batch_sizes', ','.join(map(str, DEFAULT_BATCH_SIZES)),
                      'Comma-separated batch sizes (the one device\'s whole batch).')
  flags.DEFINE_string('target', 'gpu-h200', 'The hardware profile whose peak the MFU is taken '
                      'against (alexnet_jax/profiles), or a profile file.')
  flags.DEFINE_string('out', None, 'The calibration file to write (JSON).')
  flags.DEFINE_integer('steps', 20, 'Timed steps per run.')
  flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
  flags.DEFINE_integer('trace_steps', 2, 'Steps traced with jax.profiler for the per-op times, '
                       'on the first run that succeeds (0: no trace).')
  flags.DEFINE_string('trace_dir', '', 'Where the trace goes (default: trace/ beside --out).')
  flags.DEFINE_float('budget_s', 420.0, 'Seconds after which no new run starts (the one in '
                     'flight finishes); the rest are recorded as skipped.')
  flags.mark_flags_as_required(['out'])
  from alexnet_jax.runtime import command  # pylint: disable=import-outside-toplevel
  from alexnet_jax.core import config as config_lib  # pylint: disable=g-import-not-at-top
  command.run(main, config_lib.parse_flags)
