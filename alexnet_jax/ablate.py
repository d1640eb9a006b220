"""The paper's design claims as ablations, trained and tabulated:

    python -m alexnet_jax.ablate --config=configs/ablations.py \
        --variants=lrn,overlap,one_tower,pca,tencrop --workdir=DIR [--only=NAME]

trains the baseline and one run per variant (one switch off, all else equal) under DIR/<name>,
then writes DIR/ablations.md and DIR/ablations.json (alexnet_jax/paper/ablate.py: the variants,
the paper's deltas, resuming). `--only=NAME` trains that one run and exits.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import devices
from alexnet_jax.paper import ablate
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'The baseline config (configs/ablations.py: the paper\'s switches; '
    'configs/ablations.py:tiny for small images).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Where each run (DIR/<name>) and the table are written.')
flags.DEFINE_list('variants', list(ablate.DEFAULT_VARIANTS), f'Among {", ".join(ablate.VARIANTS)}.')
flags.DEFINE_string('only', '', 'Train only this run (baseline or a variant) and exit.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logs()
  devices.simulate_cpu_devices(FLAGS.config)  # before JAX starts a backend; every run uses them
  # Refusals (AblationError, a config or dataset) exit 2; a run that fails exits 1 (command.py).
  result = ablate.run(FLAGS.config, FLAGS.variants, FLAGS.workdir, FLAGS.only)
  if result is not None:
    print(ablate.markdown(result), flush=True)


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
