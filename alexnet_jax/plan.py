"""The pod plan: every strategy compiled for a TPU slice or GPU nodes, its step time predicted.

    python -m alexnet_jax.plan --config=configs/paper.py --target=tpu-v5e \
        --devices=2,4,16,64,256 --out=DIR [--calibration=FILE] [--bench_input=FILE]
    python -m alexnet_jax.plan --published --out=DIR     # replay the published runs
    python -m alexnet_jax.plan --collectives --out=DIR   # replay the published collectives

Writes DIR/plan.json, DIR/plan.md and DIR/plan.png (the plan: alexnet_jax/pods/plan.py, compiled
by alexnet_jax/pods/compile.py); with --published, DIR/validation.json, validation.md and
validation.png (alexnet_jax/pods/validation.py); with --collectives, DIR/collectives.json,
collectives.md and collectives.png: every published measurement of one collective
(alexnet_jax/published/collectives/*.toml) predicted by the cost model, its error per message
size (alexnet_jax/pods/collectives.py; nothing is compiled).
`python -m alexnet_jax.comms --target=...` is an alias of this command.

The efficiency is assumed (--efficiency) or fitted to a calibration file written by `python -m
alexnet_jax.calibrate` (--calibration; pods/calibration.py); the report says which. Refused (exit
2) before any work: a target it cannot compile for, a calibration, bench_input or case folder it
cannot read or use (named), bad --devices. A file that cannot be written during the work: exit 1.
"""

import os
import sys

from alexnet_jax.runtime import quiet

# A compile-only run (a target and nothing to run here, or --published) runs on the CPU and holds
# back what JAX and the compilers print as they load and compile (runtime/quiet.py): so the
# environment is set, and stderr held, before the imports below, which are after this set-up on
# purpose.
COMPILE_ONLY = __name__ == '__main__' and (quiet.compile_only(sys.argv)
                                           or '--published' in sys.argv
                                           or '--collectives' in sys.argv)
if COMPILE_ONLY:
  quiet.compile_only_environment()

with quiet.held_stderr(enabled=COMPILE_ONLY):
  # pylint: disable=g-import-not-at-top,wrong-import-position
  from absl import app
  from absl import flags
  import jax
  from ml_collections import config_flags

  from alexnet_jax.core import config as config_lib
  from alexnet_jax.pods import calibration as calibration_lib
  from alexnet_jax.pods import collectives as collectives_lib
  from alexnet_jax.pods import compile as compile_lib
  from alexnet_jax.pods import plan as plan_lib
  from alexnet_jax.pods import search as search_lib
  from alexnet_jax.pods import targets as targets_lib
  from alexnet_jax.pods import validation
  from alexnet_jax.program import measure as measure_lib
  from alexnet_jax.runtime import command
  # pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=False)
flags.DEFINE_string('target', '', 'The hardware to compile for: '
                    + ', '.join(targets_lib.known()) + ', or a profile file (TOML).')
flags.DEFINE_string('devices', '2,8', 'Comma-separated device counts.')
flags.DEFINE_string('out', None, 'Where plan.json, plan.md and plan.png go (with --published: '
                    'validation.json, validation.md and validation.png; with --collectives: '
                    'collectives.json, collectives.md and collectives.png).')
flags.DEFINE_string('strategies', '', 'Comma-separated subset (default: all that fit).')
flags.DEFINE_integer('batch_per_replica', 128, 'Images per batch shard (the global batch grows '
                     'with the shards); 0: the config\'s batch_size.')
flags.DEFINE_float('efficiency', plan_lib.ASSUMED_EFFICIENCY, 'The fraction of peak FLOP/s of '
                   'the convolutions and matrix products, assumed (see --calibration).')
flags.DEFINE_string('calibration', '', 'A calibration file (python -m alexnet_jax.calibrate) '
                    'whose measured one-device step the efficiency is fitted to, in place of '
                    '--efficiency.')
flags.DEFINE_string('bench_input', '', 'A bench_input.json (or its directory) whose per-core '
                    'pipeline rate sets the hosts\' input ceiling (default: '
                    f'{plan_lib.INPUT_PER_CORE["host"]:.0f} images/s per core augmenting on the '
                    f'host, {plan_lib.INPUT_PER_CORE["device"]:.0f} on the device, '
                    'docs/performance.md).')
flags.DEFINE_integer('measure_steps', 0, 'On a machine with GPUs or TPUs of the target\'s kind: '
                     'also run each planned step that fits them for this many timed steps, and '
                     'put the measured images/s beside the predicted.')
flags.DEFINE_string('cache_dir', compile_lib.default_cache_dir(), 'Where compiled programs\' '
                    'outputs are kept ("" keeps none).')
flags.DEFINE_bool('compare_overlap', False, 'Also compile every step without the overlap '
                  'options (config.overlap_collectives, core/run.py OVERLAP_OPTIONS) and put its '
                  'asynchronous collectives, hidden time and predicted step beside the plan\'s.')
flags.DEFINE_bool('published', False, 'Replay every published run (alexnet_jax/published/*.toml) '
                  'through the project\'s compiled programs and write the error of each '
                  'prediction.')
flags.DEFINE_bool('collectives', False, 'Replay every published measurement of one collective '
                  '(alexnet_jax/published/collectives/*.toml) with the cost model and write the '
                  'error per message size (collectives.json, .md, .png).')
flags.DEFINE_bool('search', False, 'Search every layer\'s partitioning (pods/search.py) at each '
                  'of --devices on --target, compile the best whole, and write search.json, '
                  'search.md, search.png and specs/*.toml (--config.parallelism=layerwise '
                  '--config.layerwise=FILE trains one).')
flags.DEFINE_enum('search_costs', 'formula', ['formula', 'compiled'], 'With --search: time '
                  'each layer and resharding edge from the formula\'s collectives, or compile '
                  'each as a small program (cached) and time it with the plan (pods/layercost.py).')
flags.DEFINE_integer('search_keep', 3, 'With --search: the best assignments kept per size.')
flags.DEFINE_integer('search_compile', 3, 'With --search: how many of them to compile whole '
                     '(the five are compiled whole beside them).')
flags.DEFINE_string('cases', '', 'With --published or --collectives: a folder of case files '
                    'instead of the shipped ones.')
flags.mark_flags_as_required(['out'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.published and FLAGS.collectives:
    raise app.UsageError('give one of --published and --collectives')
  if FLAGS.collectives:
    cases = collectives_lib.load_all(FLAGS.cases or None)  # exit 2 before any work
    result = collectives_lib.replay(cases)
    collectives_lib.write(result, FLAGS.out)
    print(collectives_lib.markdown(result))
    return
  if FLAGS.published:
    cases = validation.load_cases(FLAGS.cases or None)  # CaseError (exit 2) before any work
    quiet.compile_only_environment()
    jax.config.update('jax_platforms', 'cpu')
    result = validation.replay(cases, cache_dir=FLAGS.cache_dir or None)
    validation.write(result, FLAGS.out)
    print(validation.markdown(result))
    return
  if not FLAGS.config or not FLAGS.target:
    raise app.UsageError('give --config and --target (or --published to replay the published '
                         'runs)')
  try:
    counts = measure_lib.device_counts(FLAGS.devices)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if FLAGS.search:
    quiet.compile_only_environment()
    jax.config.update('jax_platforms', 'cpu')
    bpr = FLAGS.batch_per_replica or FLAGS.config.batch_size
    search_lib.run_search(FLAGS.config, FLAGS.target, counts, out=FLAGS.out,
                          batch_per_device=bpr, efficiency=FLAGS.efficiency,
                          cache_dir=FLAGS.cache_dir or None, keep=FLAGS.search_keep,
                          compile_top=FLAGS.search_compile, costs=FLAGS.search_costs)
    print(open(os.path.join(FLAGS.out, 'search.md')).read())
    return
  strategies = [s for s in FLAGS.strategies.split(',') if s] or None
  # The files the command line names are read before any work: one that cannot be read or used
  # is refused (exit 2), naming it.
  calibration = (calibration_lib.load_calibration(FLAGS.calibration) if FLAGS.calibration
                 else None)
  input_rates = plan_lib.input_per_core(FLAGS.bench_input)
  plan_lib.run_plan(FLAGS.config, FLAGS.target, counts, strategies, out=FLAGS.out,
                    batch_per_replica=FLAGS.batch_per_replica, efficiency=FLAGS.efficiency,
                    calibration=calibration, input_rates=input_rates,
                    measure_steps=FLAGS.measure_steps, cache_dir=FLAGS.cache_dir,
                    compare_overlap=FLAGS.compare_overlap)


if __name__ == '__main__':
  with quiet.held_stderr(enabled=COMPILE_ONLY):
    command.run(main, config_lib.parse_flags)
