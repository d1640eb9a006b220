"""Trains AlexNet: `python -m alexnet_jax.main --config=configs/quickstart.py --workdir=DIR`.

Only parses flags, joins a multi-process run if there is one (alexnet_jax/runtime/distributed.py) and
calls `train.train_and_evaluate`, which the tests call too. It refuses a workdir another live run
holds (runtime/workdir_lock.py, exit 2) and, after a preemption, exits as soon as the checkpoint is
committed (runtime/prompt_exit.py).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

import jax

from alexnet_jax.core import checkpointing
from alexnet_jax.core import train
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command
from alexnet_jax.core import devices
from alexnet_jax.runtime import distributed
from alexnet_jax.runtime import paths
from alexnet_jax.runtime import prompt_exit

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Training config (a configs/*.py file).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where metrics, config.json and checkpoints are written.')
flags.mark_flags_as_required(['config', 'workdir'])
# Multi-process runs (launch/). On Cloud TPU, SLURM and Open MPI all three are detected.
flags.DEFINE_string('coordinator_address', None, "Process 0's HOST:PORT, the same on every "
                    'process of a multi-process run started by hand.')
flags.DEFINE_integer('num_processes', None, 'How many processes the run has.')
flags.DEFINE_integer('process_id', None, "This process's index, 0 .. num_processes - 1.")
flags.DEFINE_integer('cpu_devices', 0, 'CPU devices this process simulates when there is no '
                     'accelerator; 0: what the strategy needs, split over the processes.')
flags.DEFINE_integer('init_timeout_s', 300, 'How long processes wait for each other to start.')
flags.DEFINE_integer('heartbeat_timeout_s', 100, 'How soon a dead process stops the others.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logs()
  # Before JAX starts a backend: a CPU-only machine simulates the devices the strategy needs,
  # then the processes of a multi-process run find each other.
  devices.simulate_cpu_devices(FLAGS.config, FLAGS.num_processes or 1, FLAGS.cpu_devices)
  try:
    joined = distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id, init_timeout_s=FLAGS.init_timeout_s,
                                    heartbeat_timeout_s=FLAGS.heartbeat_timeout_s)
  except ValueError as e:
    raise command.Refused(str(e)) from e
  if jax.process_index() > 0:
    logging.set_verbosity(logging.WARNING)  # process 0 speaks for the run

  # A refused config or dataset exits 2 (nothing ran: fix the command); a divergence or a
  # checkpoint or workdir that cannot be written exits 1 (the checkpoints saved are intact):
  # runtime/command.py.
  # After a preemption, leave as soon as the checkpoint is committed (runtime/prompt_exit.py).
  prompt_exit.enable()
  try:
    result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except jax.errors.JaxRuntimeError as e:
    if not joined:
      raise
    # A collective lost its peer: another process died. Leave without the shutdown barrier
    # (which would wait for the dead process); the checkpoints already written are complete.
    message = (f'process {jax.process_index()} of {jax.process_count()} stopped: another '
               f'process of this run failed ({str(e).splitlines()[0][:300]}). Its own log says '
               f'why. Re-run the same command on every process to resume from the last '
               f'checkpoint in {paths.join(paths.absolute(FLAGS.workdir), "checkpoints")}.')
    logging.error('%s', message)
    command.write_error(message)
    os._exit(1)
  # A SIGTERM (preemption) ends train_and_evaluate normally after a checkpoint: exit 0, without
  # waiting for the input pipeline's threads.
  if 'preempted_at_step' in result:
    prompt_exit.leave(0, joined=joined)


if __name__ == '__main__':
  # Before any other thread allocates: the step's buffers stay in the heap (allocator.py).
  allocator.keep_freed_memory()
  from alexnet_jax.core import config as config_lib  # pylint: disable=g-import-not-at-top
  command.run(main, config_lib.parse_flags)
