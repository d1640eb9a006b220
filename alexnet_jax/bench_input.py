"""The input pipeline's speed per CPU core, against the JPEG decoding it cannot avoid:

    python -m alexnet_jax.bench_input --out=/tmp/bench_input

generates ImageNet-like JPEGs once, then measures on one pinned core decoding, the training
transform and the real training iterator (host and device augmentation, the resized squares) and
writes OUT/bench_input.json (alexnet_jax/perf/bench_input.py says what each figure is).
"""

import json

from absl import app
from absl import flags

from alexnet_jax.core import config as config_lib
from alexnet_jax.perf import bench_input
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command
from alexnet_jax.runtime import paths

FLAGS = flags.FLAGS
flags.DEFINE_string('out', '/tmp/alexnet_bench_input', 'Where bench_input.json is written.')
flags.DEFINE_string('data_dir', '', "tfds data dir of both datasets ('': tfds's default, "
                    '~/tensorflow_datasets or $TFDS_DATA_DIR).')
flags.DEFINE_integer('num_images', 500, 'ImageNet-like JPEGs generated, and synthetic_shapes '
                     'training images read; every round of every figure goes over them once.')
flags.DEFINE_integer('batch_size', 128, 'Batch size of the training iterator (the paper: 128).')
flags.DEFINE_integer('repeats', 5, 'Timed rounds per figure (the best is reported).')
flags.DEFINE_integer('warmup_batches', 2, 'Untimed batches of the training iterator.')
flags.DEFINE_string('shapes_dataset', 'synthetic_shapes/default', 'The generated dataset.')
flags.DEFINE_integer('cpu', -1, 'The CPU to pin to (-1: the first this process may run on).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.num_images < 1 or FLAGS.batch_size < 1 or FLAGS.repeats < 1:
    raise app.UsageError('--num_images, --batch_size and --repeats must be positive.')
  result = bench_input.run(FLAGS.data_dir, FLAGS.num_images, FLAGS.batch_size, FLAGS.repeats,
                           FLAGS.warmup_batches, FLAGS.shapes_dataset, FLAGS.cpu)
  paths.makedirs(FLAGS.out)
  path = paths.join(FLAGS.out, 'bench_input.json')
  paths.write_text(path, json.dumps(result, indent=1))
  print(f'images/s per core ({result["per_core_method"]}):')
  print(bench_input.markdown(result))
  device = result['datasets']['imagenet_like']
  print(f'ImageNet-like, augment_on=device: host CPU ms/image '
        f'{device["cpu_ms_per_image"]["pipeline"]:.3f} -> '
        f'{device["cpu_ms_per_image"]["pipeline_device_augment"]:.3f}; bytes/image shipped '
        f'{device["bytes_per_image"]["pipeline"]:,.0f} -> '
        f'{device["bytes_per_image"]["pipeline_device_augment"]:,.0f}')
  verdict = 'met' if result['target_met'] else 'NOT met'
  print(f'ImageNet-like: pipeline / decode_resize = {result["ratio"]:.3f} (target >= '
        f'{bench_input.TARGET_RATIO}: {verdict}); load average {result["load_average"]} -> '
        f'{result["load_average_after"]}; wrote {path}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
