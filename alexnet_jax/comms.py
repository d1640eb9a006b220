"""The communication report: what every strategy moves per training step, here.

    python -m alexnet_jax.comms --config=configs/paper.py --devices=N --out=DIR [--time_convs=B]

compiles and times the real train step of every strategy that fits N devices (simulated on the
CPU when there are fewer) and writes DIR/comms.json, DIR/comms.md and DIR/comms.png
(alexnet_jax/perf/comms.py).

    python -m alexnet_jax.comms ... --layerwise=FILE.toml

measures a per-layer spec (alexnet_jax/core/layerwise.py; one the search wrote, say) beside the
five, as the strategy `layerwise`.

    python -m alexnet_jax.comms --target=X ...

is an alias of the pod plan: the process is replaced, before anything else is imported, by
`python -m alexnet_jax.plan` with the same arguments (alexnet_jax/plan.py; this command does not
import it), so the plan's flags and refusals apply: its --devices default is '2,8', and the flags
of this report alone (--steps, --warmup, --time_convs) are refused there.
"""

import os
import sys
from typing import Sequence


def target_given(argv: Sequence[str]) -> bool:
  """Whether a command line names a target (`--target=NAME` or `--target NAME`)."""
  return any((a.startswith('--target=') and len(a) > len('--target=')) or
             (a == '--target' and i + 1 < len(argv)) for i, a in enumerate(argv))


if __name__ == '__main__' and target_given(sys.argv[1:]):
  # The alias, before JAX (and what it prints as it loads) is imported: the plan holds that back
  # itself.
  sys.stdout.flush()
  os.execv(sys.executable, [sys.executable, '-m', 'alexnet_jax.plan', *sys.argv[1:]])

# pylint: disable=g-import-not-at-top,wrong-import-position  # after the alias, on purpose
from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import layerwise
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.perf import comms
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command
# pylint: enable=g-import-not-at-top,wrong-import-position

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=False)
flags.DEFINE_string('devices', '2', 'Devices (simulated on CPU when there are fewer).')
flags.DEFINE_string('out', None, 'Where comms.json, comms.md and comms.png go.')
flags.DEFINE_integer('steps', 3, 'Timed steps per strategy (after the warm-up).')
flags.DEFINE_integer('warmup', 1, 'Untimed steps before timing.')
flags.DEFINE_string('strategies', '', 'Comma-separated subset (default: all that fit).')
flags.DEFINE_integer('time_convs', 0, 'If > 0: also time the two ways one device can run both '
                     'towers (split vs vmapped) at this batch size.')
flags.DEFINE_string('layerwise', '', 'A per-layer spec (TOML) measured beside the strategies, '
                    'as `layerwise` (the same as --config.layerwise=FILE with layerwise added '
                    'to --strategies).')
flags.DEFINE_string('target', '', 'Given, this command is `python -m alexnet_jax.plan` with the '
                    'same arguments (the pod plan: see its flags).')
flags.mark_flags_as_required(['config', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    counts = measure_lib.device_counts(FLAGS.devices)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if len(counts) > 1:
    raise app.UsageError('several device counts need --target (a simulated CPU report is one '
                         'device count per run)')
  config = FLAGS.config
  strategies = [s for s in FLAGS.strategies.split(',') if s] or None
  if FLAGS.layerwise:
    try:
      layerwise.load(FLAGS.layerwise)  # a file that is not a spec: refused before compiling
    except layerwise.SpecError as e:
      raise command.Refused(f'--layerwise={FLAGS.layerwise}: {e}') from None
    config.layerwise = FLAGS.layerwise
    strategies = [s for s in strategies or strategies_lib.STRATEGIES if s != layerwise.NAME]
    strategies.append(layerwise.NAME)
  jax.config.update('jax_num_cpu_devices', counts[0])  # only the CPU backend uses it
  result = comms.report(config, counts[0], steps=FLAGS.steps, warmup=FLAGS.warmup,
                        strategies=strategies)
  if FLAGS.time_convs:
    result['both_towers_executor'] = comms.time_both_towers_executors(
        run_lib.network(config, jax.devices()[0].platform), FLAGS.time_convs, config.image_size)
    print('both towers on one device:', result['both_towers_executor'])
  comms.write(result, FLAGS.out)
  print(comms.markdown(result))


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
