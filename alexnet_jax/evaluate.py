"""Evaluates checkpoints without training, one network or the average of several (the paper's
Table 2):

    python -m alexnet_jax.evaluate --workdir=DIR [--workdir=DIR2 ...] [--split=validation]
        [--crops=center|ten] [--step=N] [--parallelism=data] [--num_devices=N] [--out=DIR]

writes OUT/evaluation.json, OUT/evaluation.md (the table), each network's softmax outputs and the
labels as .npy (alexnet_jax/paper/evaluate.py says how; default OUT: the first workdir's
evaluation/). Refusals exit 2 before anything is evaluated.
"""

from absl import app
from absl import flags
import jax

from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.paper import evaluate
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command

FLAGS = flags.FLAGS
flags.DEFINE_multi_string('workdir', [], 'A training workdir; repeat for an ensemble.')
flags.DEFINE_string('split', None, "The split (tfds syntax); default: the run's eval_split.")
flags.DEFINE_enum('crops', 'center', list(evaluate.CROPS), "'center' or the paper's 'ten' patches.")
flags.DEFINE_integer('step', None, 'The checkpoint step of every workdir; default: the latest.')
flags.DEFINE_string('parallelism', None, "The strategy to evaluate with; default: the "
                    "checkpoint's, or 'data' if that cannot run here.")
flags.DEFINE_integer('num_devices', 0, "Devices; 0: the strategy's default.")
flags.DEFINE_string('out', None, "Where the files go; default: the first workdir's "
                    'evaluation/.')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logs()
  if not FLAGS.workdir:
    raise evaluate.EvaluateError('Give at least one --workdir=DIR of a training run.')
  # Before JAX starts its backend: a CPU-only machine presents the devices the strategies need.
  jax.config.update('jax_num_cpu_devices', evaluate.devices_to_simulate(
      FLAGS.workdir, FLAGS.parallelism, FLAGS.num_devices))
  result = evaluate.evaluate_workdirs(FLAGS.workdir, FLAGS.out, FLAGS.split, FLAGS.crops,
                                      FLAGS.step, FLAGS.parallelism, FLAGS.num_devices)
  print(evaluate.markdown_table(result), end='')
  print(f'wrote evaluation.json, evaluation.md and the softmax outputs to {result["out"]}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
