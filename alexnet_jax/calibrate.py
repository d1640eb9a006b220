"""One device's measured train step, written down for the planner to fit its efficiency to.

    python -m alexnet_jax.calibrate --out=/tmp/calibration.json --target=gpu-h200 \
        [--configs=configs/paper.py,...] [--dtypes=float32,bfloat16] [--batch_sizes=128,256]

Measures on ONE device of this machine, for every config, dtype and batch size, the real train
step (images/s, step and compile seconds, MFU against the --target profile's peak) and, for the
first run that succeeds, per-op times from a profiler trace (alexnet_jax/perf/calibrate.py), and
writes the calibration file --out (rewritten after every run; alexnet_jax/pods/calibration.py
says what it holds) with the profiler's trace under --trace_dir; `python -m alexnet_jax.plan
--calibration=FILE` fits its efficiency to it. Refused (exit 2) before any run: bad flags, a
profile it does not know, a config file that cannot be imported.

    python -m alexnet_jax.calibrate --collectives [--configs=] --out=/tmp/calibration.json \
        [--collective_max_bytes=...] [--collective_groups=2,4,8]

--collectives also measures this machine's links (after the runs; `--configs=` with it: the
links only): all-reduce, all-gather and reduce-scatter over groups of 2, 4, ... of its devices
(real GPUs/TPUs; without them --cpu_devices simulated CPU devices), 1 KiB up, timed as
nccl-tests times them, with time, algbw and busbw by nccl-tests' definitions, into the file's
`collectives` (alexnet_jax/perf/collectives.py); the plan then uses the measured busbw for a GPU
or TPU target of the same chip (pods/calibration.py, measured_bus_bandwidth).
"""

from absl import app
from absl import flags

import jax

from alexnet_jax.core import config as config_lib
from alexnet_jax.perf import collectives as collectives_lib
from alexnet_jax.perf import calibrate as calibrate_lib
from alexnet_jax.pods import calibration as calibration_lib
from alexnet_jax.pods import published
from alexnet_jax.pods import targets
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command

FLAGS = flags.FLAGS
flags.DEFINE_string('configs', ','.join(calibrate_lib.DEFAULT_CONFIGS),
                    'Comma-separated config files.')
flags.DEFINE_string('dtypes', ','.join(calibration_lib.DTYPES), 'Comma-separated compute dtypes '
                    '(model.dtype).')
flags.DEFINE_string('batch_sizes', ','.join(map(str, calibrate_lib.DEFAULT_BATCH_SIZES)),
                    'Comma-separated batch sizes (the one device\'s whole batch).')
flags.DEFINE_string('target', 'gpu-h200', 'The hardware profile whose peak the MFU is taken '
                    'against (alexnet_jax/profiles), or a profile file.')
flags.DEFINE_string('out', None, 'The calibration file to write (JSON).')
flags.DEFINE_integer('steps', 20, 'Timed steps per run.')
flags.DEFINE_integer('warmup', 3, 'Untimed steps after compiling.')
flags.DEFINE_integer('trace_steps', 2, 'Steps traced with jax.profiler for the per-op times, on '
                     'the first run that succeeds (0: no trace).')
flags.DEFINE_string('trace_dir', '', 'Where the trace goes, a local directory (default: trace/ beside '
                    '--out, or a temporary directory when --out is on gs://).')
flags.DEFINE_float('budget_s', 420.0, 'Seconds after which no new run starts (the one in flight '
                   'finishes); the rest are recorded as skipped.')
flags.DEFINE_bool('collectives', False, 'Also measure all-reduce, all-gather and '
                  'reduce-scatter over groups of this machine\'s devices (after the runs; with '
                  '--configs= only these) into the file\'s `collectives`.')
flags.DEFINE_string('collective_kinds', ','.join(collectives_lib.KINDS), 'Comma-separated '
                    'collectives to measure.')
flags.DEFINE_string('collective_groups', '', 'Comma-separated group sizes (default: 2, 4, 8, '
                    '... up to the devices here).')
flags.DEFINE_integer('collective_min_bytes', 1024, 'The smallest message size S (bytes; S as '
                     'nccl-tests reports it: all-gather and reduce-scatter the total array).')
flags.DEFINE_integer('collective_max_bytes', 0, 'The largest message size S (bytes; 0: 1 GiB on '
                     'GPUs/TPUs capped by a quarter of device memory, 64 MiB on the CPU capped '
                     'by the available memory).')
flags.DEFINE_enum('collective_factor', '4', ['2', '4'], 'Each size is this times the last.')
flags.DEFINE_integer('collective_warmup', 5, 'Untimed iterations per size (nccl-tests: -w 5).')
flags.DEFINE_integer('collective_iters', 20, 'Timed iterations per size, issued back to back; '
                     'the time is their mean (nccl-tests: -n 20).')
flags.DEFINE_float('collective_budget_s', 120.0, 'Seconds after which no new message size '
                   'starts.')
flags.DEFINE_integer('cpu_devices', 8, 'With --collectives on a machine without accelerators: '
                     'the CPU devices to simulate (jax_num_cpu_devices).')
flags.mark_flags_as_required(['out'])


def _list(text: str) -> tuple:
  return tuple(s.strip() for s in text.split(',') if s.strip())


def _collectives() -> dict:
  """collectives.measure's settings from the flags (UsageError naming a bad one)."""
  kinds = _list(FLAGS.collective_kinds)
  if not kinds or any(k not in collectives_lib.KINDS for k in kinds):
    raise app.UsageError(f'--collective_kinds={FLAGS.collective_kinds}: choose from '
                         f'{",".join(collectives_lib.KINDS)}')
  try:
    groups = [int(g) for g in _list(FLAGS.collective_groups)]
  except ValueError:
    groups = [0]
  if any(g < 2 for g in groups):
    raise app.UsageError(f'--collective_groups={FLAGS.collective_groups}: give group sizes of 2 '
                         'or more, e.g. 2,4,8')
  if FLAGS.collective_min_bytes < 4 or FLAGS.collective_max_bytes < 0 or (
      FLAGS.collective_max_bytes and FLAGS.collective_max_bytes < FLAGS.collective_min_bytes):
    raise app.UsageError('--collective_min_bytes must be 4 or more and --collective_max_bytes 0 '
                         '(automatic) or at least --collective_min_bytes')
  if FLAGS.collective_iters < 1 or FLAGS.collective_warmup < 0 or FLAGS.cpu_devices < 1:
    raise app.UsageError('--collective_iters and --cpu_devices must be 1 or more, '
                         '--collective_warmup 0 or more')
  return {'kinds': kinds, 'groups': groups or None, 'min_bytes': FLAGS.collective_min_bytes,
          'max_bytes': FLAGS.collective_max_bytes, 'factor': int(FLAGS.collective_factor),
          'warmup': FLAGS.collective_warmup, 'iters': FLAGS.collective_iters,
          'budget_s': FLAGS.collective_budget_s}


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  dtypes = _list(FLAGS.dtypes)
  if not dtypes or any(d not in calibration_lib.DTYPES for d in dtypes):
    raise app.UsageError(f'--dtypes={FLAGS.dtypes}: choose from '
                         f'{",".join(calibration_lib.DTYPES)}')
  try:
    batch_sizes = tuple(int(b) for b in _list(FLAGS.batch_sizes))
  except ValueError:
    batch_sizes = ()
  if not batch_sizes or min(batch_sizes) < 1:
    raise app.UsageError(f'--batch_sizes={FLAGS.batch_sizes}: give positive integers, e.g. '
                         '128,256')
  runs = calibrate_lib.Runs(configs=_list(FLAGS.configs), dtypes=dtypes,
                            batch_sizes=batch_sizes, steps=FLAGS.steps, warmup=FLAGS.warmup,
                            trace_steps=FLAGS.trace_steps, budget_s=FLAGS.budget_s)
  if not runs.configs and not FLAGS.collectives:
    raise app.UsageError('--configs is empty (allowed with --collectives: the links only)')
  collectives = _collectives() if FLAGS.collectives else None
  if runs.steps < 1 or runs.warmup < 0 or runs.trace_steps < 0:
    raise app.UsageError('--steps must be 1 or more, --warmup and --trace_steps 0 or more')
  try:
    targets.load(FLAGS.target)
  except targets.TargetError as e:
    raise app.UsageError(str(e)) from e
  for path in runs.configs:  # a config file that cannot be imported: refused (exit 2) first
    published.load_config_file(path)
  if collectives is not None:  # before JAX starts a backend; only the CPU backend reads it
    jax.config.update('jax_num_cpu_devices', FLAGS.cpu_devices)
  result = calibrate_lib.calibrate(runs, FLAGS.target, FLAGS.out, FLAGS.trace_dir,
                                   collectives=collectives)
  print(calibrate_lib.markdown(result))
  measured = sum(r['status'] == 'ok' for r in result['runs'])
  links = ''
  if collectives is not None:
    points = sum(len(e['sizes']) for e in result['collectives'])
    links = f', {points} collective sizes over {len(result["collectives"])} kinds x groups'
  print(f'{measured} of {len(result["runs"])} runs{links} measured in '
        f'{result["elapsed_s"]:.0f} s; wrote {FLAGS.out}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
