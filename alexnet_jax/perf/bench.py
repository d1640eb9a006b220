"""Throughput of the real train step against what the same devices can do.

    python -m alexnet_jax.bench --config=configs/paper.py --strategies=towers,data --devices=2 \
        --out=/tmp/bench

For each strategy: the jitted train step (forward, backward, the paper's update, built by
run.build as the training loop builds it, parameters donated) on
one synthetic global batch that stays on the devices (no input pipeline, no host transfer). Each
timed step is waited for on its own and the fastest is reported (the mean is in bench.json;
program/measure.py times comms's steps the same way), as the matrix product's best round is: both
are then the least disturbed measurement on a shared machine. It reports images/s, compile seconds,
memory per device, the model FLOP rate and, measured in the same run on the same devices, the
FLOP rate of a large matrix product, and their ratio. The dataset is not needed.

Model FLOPs (`train_flops_per_image`): 2 FLOPs per multiply-add of every conv and fc layer of
the layer table, forward (1x) plus backward (2x: input gradient and weight gradient), except
conv1, whose input gradient (the image's) is never computed: 2x. ReLU, LRN, pooling, softmax
and the update are not counted (the paper's network: 4.14 GFLOP per image at 224).

The matrix-product rate "on the same devices": the train step runs on N devices at once (on a
CPU-only machine, N simulated devices sharing the machine's cores and one thread pool), so the
reference is one jitted `shard_map` in which every one of the N devices multiplies its own pair
of S x S matrices at the same time; rate = N * 2 S^3 / seconds (best of several runs). On two
simulated CPU devices that is what the cores deliver to two concurrent programs, the same
condition as the train step's. It is measured in the compute dtype (`config.model.dtype`:
float32 unless bfloat16 is asked for), so the ratio compares like with like.

Memory (`peak_memory_bytes`): per device, from XLA's analysis of the compiled step (arguments +
outputs + temporaries - donated aliases); where the backend reports live memory (GPU, TPU), the
device's `peak_bytes_in_use` after the run is recorded beside it.

XLA flags: none is set (docs/performance.md has the XLA:CPU flags that were measured); pass your
own through XLA_FLAGS, which the result records. The kernels (config.model.kernels) are recorded
too: 'auto' takes the CPU kernels on the CPU backend and the reference ones elsewhere.
"""

import math
import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.program.formula import train_flops_per_image  # moved: calibrate and plan use it

# Matmul sizes: large enough to reach the machine's rate, small enough to time quickly.
CPU_MATMUL_SIZE = 2048
ACCELERATOR_MATMUL_SIZE = 8192


def _best_seconds(fn, repeats: int, min_seconds: float = 0.3) -> float:
  """Best time per call over `repeats` rounds, each round long enough to time reliably."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  jax.block_until_ready(fn())
  once = max(time.perf_counter() - start, 1e-6)
  calls = max(1, int(math.ceil(min_seconds / once)))
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    out = [fn() for _ in range(calls)]
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - start) / calls)
  return best


def matmul_flop_rate(devices: Sequence, size: int, dtype: str = 'float32',
                     repeats: int = 5) -> float:
  """FLOP/s of every device in `devices` multiplying its own size x size matrices at once."""
  n = len(devices)
  mesh = strategies_lib.make_mesh((n,), ('d',), devices)
  sharding = NamedSharding(mesh, P('d'))
  make = jax.jit(lambda k: jax.random.normal(k, (n, size, size), jnp.dtype(dtype)),
                 out_shardings=sharding)
  a, b = make(jax.random.key(0)), make(jax.random.key(1))
  product = jax.jit(jax.shard_map(lambda x, y: x @ y, mesh=mesh, in_specs=(P('d'), P('d')),
                                  out_specs=P('d')))
  seconds = _best_seconds(lambda: product(a, b), repeats)
  return n * 2.0 * size ** 3 / seconds


def measure(config, parallelism: str, num_devices: int, steps: int = 5, warmup: int = 2,
            matmul_size: int = 0) -> dict:
  """One strategy's entry: the train step's speed, compile time, memory, and the matmul rate."""
  run = run_lib.build(measure_lib.strategy_config(config, parallelism, num_devices))
  state, batch = run.init_state(), run.synthetic_batch(config.seed)
  compiled, compile_seconds = measure_lib.compile_train_step(run, state, batch)
  timing = measure_lib.time_steps(compiled, state, batch, steps, warmup)
  step_seconds = timing['step_seconds']
  images_per_second = config.batch_size / step_seconds
  flops = train_flops_per_image(run.net, config.image_size)
  dtype = config.model.dtype
  devices = run.devices
  size = matmul_size or (CPU_MATMUL_SIZE if devices[0].platform == 'cpu'
                         else ACCELERATOR_MATMUL_SIZE)
  matmul_rate = matmul_flop_rate(devices, size, dtype)
  model_rate = images_per_second * flops
  memory = measure_lib.memory(compiled, devices)
  if 'peak_memory_bytes' not in memory and 'device_peak_bytes_in_use' in memory:
    memory['peak_memory_bytes'] = memory['device_peak_bytes_in_use']
  return {
      'devices': len(devices), 'mesh': dict(run.mesh.shape), 'kernels': run.kernels,
      'batch_size': config.batch_size, 'image_size': config.image_size, 'dtype': dtype,
      'steps': steps, 'warmup': warmup, 'step_seconds': step_seconds,
      'mean_step_seconds': timing['mean_step_seconds'],
      'images_per_second': images_per_second,
      'compile_seconds': compile_seconds,
      'train_flops_per_image': flops,
      'model_flop_rate': model_rate,
      'matmul_size': size, 'matmul_dtype': dtype,
      'matmul_flop_rate': matmul_rate,
      'ratio': model_rate / matmul_rate,
      'final_loss': float(timing['metrics']['loss']),
      **memory,
  }


def run(config, strategies: Sequence[str], num_devices: int = 0, steps: int = 5,
        warmup: int = 2, matmul_size: int = 0, log=print) -> dict:
  """Every named strategy that can run here (the others listed under 'skipped' with why)."""
  first = jax.devices()[0]
  result = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'platform': first.platform, 'device_kind': first.device_kind,
            'cpu_count': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
            'config': {'batch_size': config.batch_size, 'image_size': config.image_size,
                       'num_classes': config.model.num_classes,
                       'dtype': config.model.dtype, 'kernels': config.model.kernels},
            'strategies': {}, 'skipped': {}}

  def measure_one(config_n):
    entry = measure(config_n, config_n.parallelism, num_devices, steps=steps, warmup=warmup,
                    matmul_size=matmul_size)
    log(f'{config_n.parallelism}: {entry["images_per_second"]:.2f} images/s, compile '
        f'{entry["compile_seconds"]:.1f} s, peak '
        f'{entry.get("peak_memory_bytes", 0) / 2**20:.0f} MiB/device, model '
        f'{entry["model_flop_rate"] / 1e9:.1f} GFLOP/s, matmul '
        f'{entry["matmul_flop_rate"] / 1e9:.1f} GFLOP/s, ratio {entry["ratio"]:.3f}')
    return entry

  result['strategies'], result['skipped'] = measure_lib.each_strategy(
      config, strategies, num_devices, measure_one, log=log)
  result['load_average_after'] = list(os.getloadavg()) if hasattr(os, 'getloadavg') else None
  return result


def markdown(result: dict) -> str:
  """The README table for one run."""
  rows = ['| strategy | devices | batch | dtype | images/s | compile s | peak MiB/device | '
          'model GFLOP/s | matmul GFLOP/s | ratio |', '|---|---|---|---|---|---|---|---|---|---|']
  for name, e in result['strategies'].items():
    rows.append(f'| {name} | {e["devices"]} | {e["batch_size"]} | {e["dtype"]} | '
                f'{e["images_per_second"]:.2f} | {e["compile_seconds"]:.1f} | '
                f'{e.get("peak_memory_bytes", 0) / 2**20:.0f} | '
                f'{e["model_flop_rate"] / 1e9:.1f} | {e["matmul_flop_rate"] / 1e9:.1f} | '
                f'{e["ratio"]:.3f} |')
  for name, why in result['skipped'].items():
    rows.append(f'| {name} | skipped: {why} | | | | | | | | |')
  return '\n'.join(rows) + '\n'
