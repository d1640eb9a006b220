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
"""

from absl import app
from absl import flags

from alexnet_jax.core import config as config_lib
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
flags.DEFINE_string('trace_dir', '', 'Where the trace goes (default: trace/ beside --out).')
flags.DEFINE_float('budget_s', 420.0, 'Seconds after which no new run starts (the one in flight '
                   'finishes); the rest are recorded as skipped.')
flags.mark_flags_as_required(['out'])


def _list(text: str) -> tuple:
  return tuple(s.strip() for s in text.split(',') if s.strip())


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
  if not runs.configs:
    raise app.UsageError('--configs is empty')
  if runs.steps < 1 or runs.warmup < 0 or runs.trace_steps < 0:
    raise app.UsageError('--steps must be 1 or more, --warmup and --trace_steps 0 or more')
  try:
    targets.load(FLAGS.target)
  except targets.TargetError as e:
    raise app.UsageError(str(e)) from e
  for path in runs.configs:  # a config file that cannot be imported: refused (exit 2) first
    published.load_config_file(path)
  result = calibrate_lib.calibrate(runs, FLAGS.target, FLAGS.out, FLAGS.trace_dir)
  print(calibrate_lib.markdown(result))
  measured = sum(r['status'] == 'ok' for r in result['runs'])
  print(f'{measured} of {len(result["runs"])} runs measured in {result["elapsed_s"]:.0f} s; '
        f'wrote {FLAGS.out}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
