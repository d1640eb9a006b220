"""The calibration's measuring run: one device's real train step, timed and traced, written to a
calibration file (pods/calibration.py: the file, its trace reader, the fit).

    python -m alexnet_jax.calibrate --out=/tmp/calibration.json --target=gpu-h200

For every config file (`Runs.configs`; by default the paper's two-tower network and
tf_cnn_benchmarks' one-tower variant), compute dtype (float32, which the GPU runs on TF32 tensor
cores at JAX's default precision, and bfloat16) and batch size: the train step as training builds
it (run.build, parallelism 'data' on one device: the whole network on one chip), compiled and
timed with the functions bench and comms use (program/measure.py), on a synthetic batch that
stays on the device (run.synthetic_batch). So a calibration's step is the same measurement as
bench's, and the planner fits what trains.

MFU: model FLOPs per image (formula.train_flops_per_image: forward and backward of the conv and fc
layers of the layer table) x images/s / the device's peak, the peak taken from the hardware
profile the target names (pods/targets.py): `fp32_matmul_flops` for float32 (the rate at JAX's
default precision), `peak_bf16_flops` for bfloat16, per device.

Every run is guarded: one that fails (out of memory, a compile error, a config this device
cannot hold) is recorded with its error and the others go on; once `budget_s` is spent no new
run starts, and those not started are recorded as skipped. The file is rewritten after every run
(`complete` false until the end), so a process killed by a stage timeout leaves what it had.
Runs are ordered batch size first, then config, then dtype: a short budget still covers every
network and dtype at the first batch size (by default 128, the paper's).

Per-op times: for the first run that succeeds, `trace_steps` more steps run under
`jax.profiler.trace`; calibration.trace_ops reads what the profiler wrote.

Links (`collectives`, calibrate --collectives): after the runs, all-reduce, all-gather and
reduce-scatter over groups of this process's devices, timed as nccl-tests times them and written
as the file's `collectives` (perf/collectives.py; its own budget).
"""

import dataclasses
import gc
import os
import tempfile
import time
from typing import Any, Callable, Optional

import jax
import ml_collections

from alexnet_jax.core import run as run_lib
from alexnet_jax.perf import collectives as collectives_lib
from alexnet_jax.pods import calibration as calibration_lib
from alexnet_jax.pods import published
from alexnet_jax.pods import targets
from alexnet_jax.program import formula
from alexnet_jax.program import measure
from alexnet_jax.runtime import paths

DEFAULT_CONFIGS = ('configs/paper.py', 'configs/tf_cnn_alexnet.py')
DEFAULT_BATCH_SIZES = (128, 256, 512)
# The profile's number a dtype's MFU is taken against (profiles.toml says what each means).
PEAK_FIELDS = {'float32': 'fp32_matmul_flops', 'bfloat16': 'peak_bf16_flops'}


@dataclasses.dataclass(frozen=True)
class Runs:
  """What one invocation measures: every (config, dtype, batch size), and how."""
  configs: tuple
  dtypes: tuple = calibration_lib.DTYPES
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
  config = measure.strategy_config(config, 'data', 1)
  config.model.dtype = dtype
  config.batch_size = batch_size
  return measure.train_step_only(config)


def _empty_run(path: str, dtype: str, batch_size: int) -> dict:
  entry = {'config': path, 'network': network_name(path), 'dtype': dtype,
           'batch_size': batch_size}
  entry.update({field: None for field in calibration_lib.RUN_NUMBERS})
  entry.update({'status': None, 'error': None})
  return entry


def measure_run(config: ml_collections.ConfigDict, device, peak_flops: float, steps: int,
                warmup: int, trace: Optional[Callable] = None) -> dict:
  """One run's measurements on `device`: the train step compiled and timed as bench does it.
  `trace(compiled, state, batch)`, if given, runs after the timing with the program still
  compiled (no second compile)."""
  run = run_lib.build(config, [device])
  state, batch = run.init_state(), run.synthetic_batch(config.seed)
  compiled, compile_seconds = measure.compile_train_step(run, state, batch)
  timing = measure.time_steps(compiled, state, batch, steps, warmup)
  step_seconds = timing['step_seconds']
  images_per_second = config.batch_size / step_seconds
  flops = formula.train_flops_per_image(run.net, config.image_size)
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


def calibrate(runs: Runs, target: str, out: str, trace_dir: str = '',
              log: Callable[[str], Any] = print, collectives: Optional[dict] = None) -> dict:
  """Every run of `runs` on this process's first device, written to `out` after each run;
  then, with `collectives` (collectives.measure's keyword arguments), the links between this
  process's devices."""
  start = time.monotonic()
  profile = targets.load(target)
  device = jax.devices()[0]
  # The profiler's trace is read back from local disk (calibration.trace_files globs it): beside
  # a local --out, or in a temporary directory when --out is on object storage.
  if not trace_dir:
    trace_dir = (tempfile.mkdtemp(prefix='alexnet_jax_trace_') if paths.is_remote(out) else
                 os.path.join(os.path.dirname(os.path.abspath(out)), 'trace'))
  trace_dir = os.path.abspath(trace_dir)
  result = {
      'kind': calibration_lib.KIND, 'version': calibration_lib.VERSION,
      'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
      'device_kind': device.device_kind, 'platform': device.platform,
      'jax_version': jax.__version__, 'target': profile.key, 'target_name': profile.name,
      'matmul_precision': str(jax.config.jax_default_matmul_precision or 'default'),
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'budget_s': runs.budget_s,
      'runs': [], 'ops': [], 'ops_note': '', 'trace': None, 'traced_run': None,
      'complete': False, 'elapsed_s': 0.0}
  configs: dict = {}
  traced = {'done': runs.trace_steps <= 0}

  def trace_after(entry: dict) -> Optional[Callable]:
    if traced['done']:
      return None

    def trace(compiled, state, batch) -> None:
      traced['done'] = True
      if time.monotonic() - start >= runs.budget_s:
        result['ops_note'] = f'no trace: the {runs.budget_s:g} s budget was spent'
        return
      since = time.time()
      try:  # the run's measurements stand whatever the profiler does
        with jax.profiler.trace(trace_dir):
          for _ in range(runs.trace_steps):
            state, metrics = compiled(state, batch)
          jax.block_until_ready((state, metrics))
      except Exception as e:  # pylint: disable=broad-except
        result['ops_note'] = f'no trace: the profiler failed ({calibration_lib.one_line(e)})'
        return
      result['trace'] = trace_dir
      result['traced_run'] = {k: entry[k] for k in ('config', 'dtype', 'batch_size')}
      result['trace_steps'] = runs.trace_steps
      result['trace_files'] = calibration_lib.trace_files(trace_dir, since)
      result['ops'], result['ops_note'] = calibration_lib.trace_ops(trace_dir, runs.trace_steps,
                                                    compiled.as_text(), since)
    return trace

  for path, dtype, batch_size in runs.runs():
    entry = _empty_run(path, dtype, batch_size)
    result['runs'].append(entry)
    label = f'{network_name(path)} {dtype} batch {batch_size}'
    if time.monotonic() - start >= runs.budget_s:
      entry['status'] = 'skipped'
      entry['error'] = f'not started: the {runs.budget_s:g} s budget was spent'
      log(f'{label}: skipped (budget)')
      continue
    try:
      if path not in configs:
        configs[path] = published.load_config_file(path)
      config = run_config(configs[path], dtype, batch_size)
      peak = profile.per_device(PEAK_FIELDS[dtype])
      log(f'{label}: compiling and measuring on {device.device_kind} ...')
      entry.update(measure_run(config, device, peak, runs.steps, runs.warmup,
                               trace_after(entry)))
      entry['status'] = 'ok'
      log(f'{label}: {entry["images_per_second"]:,.1f} images/s, step '
          f'{entry["step_seconds"] * 1e3:.2f} ms, compile {entry["compile_seconds"]:.1f} s, '
          f'MFU {entry["mfu"]:.3f}')
    except Exception as e:  # pylint: disable=broad-except  # recorded; the other runs go on
      entry.update({field: None for field in calibration_lib.RUN_NUMBERS})
      entry['status'], entry['error'] = 'error', calibration_lib.one_line(e)
      log(f'{label}: failed: {entry["error"]}')
    finally:
      gc.collect()  # the failed or finished run's buffers, before the next one allocates
    result['elapsed_s'] = time.monotonic() - start
    calibration_lib.write(out, result)
  if collectives is not None:
    result.update(collectives_lib.measure(jax.devices(), log=log, **collectives))
    result['elapsed_s'] = time.monotonic() - start
    calibration_lib.write(out, result)
  if not traced['done']:
    result['ops_note'] = 'no trace: no run was measured'
  elif runs.trace_steps <= 0:
    result['ops_note'] = 'no trace asked for (--trace_steps=0)'
  result['complete'] = True
  result['elapsed_s'] = time.monotonic() - start
  calibration_lib.write(out, calibration_lib.validate(result))
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
              for c in calibration_lib.CATEGORIES}
    run = result['traced_run']
    text += (f'\nper-op times of {network_name(run["config"])} {run["dtype"]} batch '
             f'{run["batch_size"]} (ms per step): '
             + ', '.join(f'{c} {totals[c] * 1e3:.2f}' for c in calibration_lib.CATEGORIES) + '\n')
    text += ''.join(f'  {o["seconds_per_step"] * 1e3:8.3f}  {o["category"]:6s} {o["name"]}\n'
                    for o in result['ops'][:10])
  if result.get('ops_note'):
    text += f'ops: {result["ops_note"]}\n'
  if 'collectives' in result:
    text += '\n' + collectives_lib.markdown(result['collectives'])
    text += f'collectives: {result.get("collectives_note", "")}\n'
  return text
