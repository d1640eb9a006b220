"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR`.

Only parses flags and calls `train.train_and_evaluate`, which the tests call too.
"""

import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config (a configs/*.py file).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where metrics, config.json and checkpoints are written.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax logs every step of every save at INFO; keep the console to the training progress.
  # (record.levelno is Python's level: absl's logging.WARNING is a verbosity, -1.)
  # Its warning at every save without an evaluation ("did not provide metrics") is expected:
  # only evaluated checkpoints compete for "best".
  logging.get_absl_handler().addFilter(
      lambda record: 'orbax' not in record.pathname or (
          record.levelno >= std_logging.WARNING
          and 'did not provide metrics' not in record.getMessage()))
  # Before JAX starts a backend: a CPU-only machine simulates the devices the strategy needs.
  from alexnet_jax import devices
  devices.simulate_cpu_devices(FLAGS.config)

  from alexnet_jax import checkpointing
  from alexnet_jax import input_pipeline
  from alexnet_jax import train
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (train.ConfigError, input_pipeline.DatasetNotReadyError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)  # nothing ran: fix the command
  except (FloatingPointError, checkpointing.CheckpointError, train.WorkdirError) as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)  # the run stopped; its checkpoints are intact
  # A SIGTERM (preemption) ends train_and_evaluate normally after saving: exit 0.


if __name__ == '__main__':
  app.run(main)
