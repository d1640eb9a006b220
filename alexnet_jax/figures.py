"""The paper's figures from any training run: Fig. 3, Fig. 4 and the training curves.

    python -m alexnet_jax.figures --workdir=DIR [--out=DIR/figures]

writes conv1_kernels.png, predictions.png, neighbours.png, curves.png and figures.json
(alexnet_jax/paper/figures.py says what each shows and how it is computed).
"""

from absl import app
from absl import flags

from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.paper import figures
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command
from alexnet_jax.runtime import paths

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'A training workdir (config.json, metrics.jsonl, '
                    'checkpoints/).')
flags.DEFINE_string('out', None, 'Where the figures go (default: WORKDIR/figures).')
flags.DEFINE_string('data_dir', None, "The tfds data dir, if not the run's config.data_dir.")
flags.DEFINE_integer('num_predictions', 8, 'Validation images in predictions.png.')
flags.DEFINE_integer('num_queries', 5, 'Validation images (rows) in neighbours.png.')
flags.DEFINE_integer('num_neighbours', 6, 'Nearest training images shown per query.')
flags.DEFINE_integer('num_train_images', 1000, 'Training images scanned for neighbours (the '
                     'first N of the split; each costs one forward pass).')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  checkpointing.quiet_orbax_logs()
  result = figures.make_figures(FLAGS.workdir, FLAGS.out, FLAGS.data_dir, FLAGS.num_predictions,
                                FLAGS.num_queries, FLAGS.num_neighbours, FLAGS.num_train_images)
  scores = result['colour_specificity']
  out = FLAGS.out or paths.join(paths.absolute(FLAGS.workdir), 'figures')
  print(f'step {result["step"]}: colour specificity of conv1, tower 1 {scores["tower1"]:.3f}, '
        f'tower 2 {scores["tower2"]:.3f}')
  print(f'wrote {", ".join(figures.FIGURES)} and figures.json to {out}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
