"""Throughput of the real train step against what the same devices can do:

    python -m alexnet_jax.bench --config=configs/paper.py --strategies=towers,data --devices=2 \
        --out=/tmp/bench

writes OUT/bench.json and prints, per strategy, images/s, compile seconds, memory per device, the
model FLOP rate and the FLOP rate of a matrix product on the same devices, and their ratio
(alexnet_jax/perf/bench.py says how each is measured). The dataset is not needed.
"""

import json

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.perf import bench
from alexnet_jax.runtime import allocator
from alexnet_jax.runtime import command
from alexnet_jax.runtime import paths

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
flags.DEFINE_string('strategies', 'towers,data', 'Comma-separated strategies to time.')
flags.DEFINE_integer('devices', 0, 'Devices per strategy (0: 2 for towers, all visible for '
                     'the others; on CPU, that many are simulated).')
flags.DEFINE_string('out', '/tmp/alexnet_bench', 'Where bench.json is written.')
flags.DEFINE_integer('steps', 5, 'Timed steps per strategy.')
flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
flags.DEFINE_integer('matmul_size', 0, f'S of the S x S matrix product (0: '
                     f'{bench.CPU_MATMUL_SIZE} on CPU, {bench.ACCELERATOR_MATMUL_SIZE} on '
                     'accelerators).')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  names = [s for s in FLAGS.strategies.split(',') if s]
  unknown = [s for s in names if s not in strategies_lib.STRATEGIES]
  if unknown:
    raise app.UsageError(f'Unknown strategies {unknown}; choose from '
                         f'{",".join(strategies_lib.STRATEGIES)}.')
  # Before JAX starts a backend: as many simulated CPU devices as the largest strategy asks for
  # (accelerators keep their real devices).
  jax.config.update('jax_num_cpu_devices', max(
      [strategies_lib.devices_needed(s, FLAGS.devices) for s in names] + [1]))
  result = bench.run(FLAGS.config, names, FLAGS.devices, steps=FLAGS.steps,
                     warmup=FLAGS.warmup, matmul_size=FLAGS.matmul_size)
  paths.makedirs(FLAGS.out)
  paths.write_text(paths.join(FLAGS.out, 'bench.json'), json.dumps(result, indent=1))
  print(bench.markdown(result))
  print(f'load average {result["load_average"]} -> {result["load_average_after"]}; wrote '
        f'{paths.join(FLAGS.out, "bench.json")}')


if __name__ == '__main__':
  allocator.keep_freed_memory()  # before other threads allocate (alexnet_jax/runtime/allocator.py)
  command.run(main, config_lib.parse_flags)
