"""Throughput of the real train step against what the same devices can do.

    python -m alexnet_jax.bench --config=configs/paper.py --strategies=towers,data --devices=2 \
        --out=/tmp/bench

For each strategy: the jitted `train.train_step` (forward, backward, the paper's update, built by
`comms.build_train_step` exactly as `train.train_and_evaluate` builds it, parameters donated) on
one synthetic global batch that stays on the devices (no input pipeline, no host transfer). Each
timed step is waited for on its own and the fastest is reported (the mean is in bench.json), as
the matrix product's best round is: both are then the least disturbed measurement on a shared
machine. It reports images/s, compile seconds,
memory per device, the model FLOP rate and, measured in the same run on the same devices, the
FLOP rate of a large matrix product, and their ratio. The dataset is not needed.

Model FLOPs (`train_flops_per_image`): 2 FLOPs per multiply-add of every conv and fc layer of
the layer table, forward (1x) plus backward (2x: input gradient and weight gradient), except
conv1, whose input gradient (the image's) is never computed: 2x. ReLU, LRN, pooling, softmax
and the update are not counted. 4.14 GFLOP per image for the paper's network at 224.

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

XLA flags: none is set. The XLA:CPU flags tried (README, "Performance") did not make the step
faster here; pass your own through XLA_FLAGS, which the result records.
"""

import json
import math
import os
import time
from typing import Sequence

from absl import app

# Matmul sizes: large enough to reach the machine's rate, small enough to take ~0.1-1 s.
_CPU_MATMUL_SIZE = 2048
_ACCELERATOR_MATMUL_SIZE = 8192


def train_flops_per_image(tower, image_size: int) -> int:
  """Forward + backward FLOPs per training image (see the module docstring for what counts)."""
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  macs = model_lib.layer_macs(tower, image_size)
  return sum(2 * m * (2 if layer == 'conv1' else 3) for layer, m in macs.items())


def _best_seconds(fn, repeats: int, min_seconds: float = 0.3) -> float:
  """Best time per call over `repeats` rounds, each round long enough to time reliably."""
  import jax  # pylint: disable=g-import-not-at-top
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
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import strategies  # pylint: disable=g-import-not-at-top
  n = len(devices)
  mesh = strategies.make_mesh((n,), ('d',), devices)
  sharding = NamedSharding(mesh, P('d'))
  make = jax.jit(lambda k: jax.random.normal(k, (n, size, size), jnp.dtype(dtype)),
                 out_shardings=sharding)
  a, b = make(jax.random.key(0)), make(jax.random.key(1))
  product = jax.jit(jax.shard_map(lambda x, y: x @ y, mesh=mesh, in_specs=(P('d'), P('d')),
                                  out_specs=P('d')))
  seconds = _best_seconds(lambda: product(a, b), repeats)
  return n * 2.0 * size ** 3 / seconds


def _memory(compiled, devices) -> dict:
  out = {}
  try:
    mem = compiled.memory_analysis()
    fields = {f: int(getattr(mem, f'{f}_size_in_bytes', 0) or 0)
              for f in ('argument', 'output', 'temp', 'alias', 'generated_code')}
    out.update({f'{k}_bytes': v for k, v in fields.items()})
    out['peak_memory_bytes'] = fields['argument'] + fields['output'] + fields['temp'] - fields[
        'alias']
  except Exception as e:  # pylint: disable=broad-except  # not every backend reports it
    out['memory_analysis_error'] = str(e)
  stats = [d.memory_stats() for d in devices]
  if all(stats) and all('peak_bytes_in_use' in s for s in stats):
    out['device_peak_bytes_in_use'] = max(int(s['peak_bytes_in_use']) for s in stats)
    out.setdefault('peak_memory_bytes', out['device_peak_bytes_in_use'])
  return out


def measure(config, parallelism: str, num_devices: int, steps: int = 5, warmup: int = 2,
            matmul_size: int = 0) -> dict:
  """One strategy's entry: the train step's speed, compile time, memory, and the matmul rate."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.tools import comms  # pylint: disable=g-import-not-at-top
  tower, strategy, step, state, batch = comms.build_train_step(config, parallelism, num_devices)
  devices = list(strategy.mesh.devices.flat)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  # Each step timed on its own and the fastest kept, as for the matrix product: on a shared
  # machine, the least disturbed measurement of each is the one closest to the hardware.
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  step_seconds = min(times)
  loss = float(metrics['loss'])
  images_per_second = config.batch_size / step_seconds
  flops = train_flops_per_image(tower, config.image_size)
  dtype = config.model.get('dtype', 'float32')
  size = matmul_size or (_CPU_MATMUL_SIZE if devices[0].platform == 'cpu'
                         else _ACCELERATOR_MATMUL_SIZE)
  matmul_rate = matmul_flop_rate(devices, size, dtype)
  model_rate = images_per_second * flops
  return {
      'devices': len(devices), 'mesh': dict(strategy.mesh.shape),
      'batch_size': config.batch_size, 'image_size': config.image_size, 'dtype': dtype,
      'steps': steps, 'warmup': warmup, 'step_seconds': step_seconds,
      'mean_step_seconds': sum(times) / len(times),
      'images_per_second': images_per_second,
      'compile_seconds': compile_seconds,
      'train_flops_per_image': flops,
      'model_flop_rate': model_rate,
      'matmul_size': size, 'matmul_dtype': dtype,
      'matmul_flop_rate': matmul_rate,
      'ratio': model_rate / matmul_rate,
      'final_loss': loss,
      **_memory(compiled, devices),
  }


def run(config, strategies: Sequence[str], num_devices: int = 0, steps: int = 5,
        warmup: int = 2, matmul_size: int = 0, log=print) -> dict:
  """Every named strategy that can run here (the others listed under 'skipped' with why)."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import model as model_lib  # pylint: disable=g-import-not-at-top
  from alexnet_jax.core import strategies  # pylint: disable=g-import-not-at-top
  tower = model_lib.make_tower(config.model, config.model.num_classes)
  first = jax.devices()[0]
  result = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'platform': first.platform, 'device_kind': first.device_kind,
            'cpu_count': os.cpu_count(), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
            'config': {'batch_size': config.batch_size, 'image_size': config.image_size,
                       'num_classes': config.model.num_classes,
                       'dtype': config.model.get('dtype', 'float32')},
            'strategies': {}, 'skipped': {}}
  for name in strategies:
    n = strategies.resolve_num_devices(name, num_devices, jax.device_count())
    error = strategies.run_error(name, n, tower, config.batch_size, jax.device_count())
    if error:
      result['skipped'][name] = error
      log(f'{name}: skipped ({error})')
      continue
    log(f'{name}: compiling and timing on {n} {first.platform} device(s) ...')
    entry = measure(config, name, n, steps=steps, warmup=warmup, matmul_size=matmul_size)
    result['strategies'][name] = entry
    log(f'{name}: {entry["images_per_second"]:.2f} images/s, compile '
        f'{entry["compile_seconds"]:.1f} s, peak {entry.get("peak_memory_bytes", 0) / 2**20:.0f} '
        f'MiB/device, model {entry["model_flop_rate"] / 1e9:.1f} GFLOP/s, matmul '
        f'{entry["matmul_flop_rate"] / 1e9:.1f} GFLOP/s, ratio {entry["ratio"]:.3f}')
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


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  f = flags.FLAGS
  config = f.config
  strategies = [s for s in f.strategies.split(',') if s]
  from alexnet_jax.core import strategies  # pylint: disable=g-import-not-at-top
  unknown = [s for s in strategies if s not in strategies.STRATEGIES]
  if unknown:
    raise app.UsageError(f'Unknown strategies {unknown}; choose from '
                         f'{",".join(strategies.STRATEGIES)}.')
  # Before JAX starts a backend: as many simulated CPU devices as the largest strategy asks for
  # (accelerators keep their real devices).
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_num_cpu_devices', max(
      [strategies.devices_needed(s, f.devices) for s in strategies] + [1]))
  result = run(config, strategies, f.devices, steps=f.steps, warmup=f.warmup,
               matmul_size=f.matmul_size)
  os.makedirs(f.out, exist_ok=True)
  with open(os.path.join(f.out, 'bench.json'), 'w') as fh:
    json.dump(result, fh, indent=1)
  print(markdown(result))
  print(f'load average {result["load_average"]} -> {result["load_average_after"]}; wrote '
        f'{os.path.join(f.out, "bench.json")}')


def cli() -> None:
  """`python -m alexnet_jax.bench` (alexnet_jax/bench.py): defines the flags and runs `main`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=True)
  flags.DEFINE_string('strategies', 'towers,data', 'Comma-separated strategies to time.')
  flags.DEFINE_integer('devices', 0, 'Devices per strategy (0: 2 for towers, all visible for '
                       'the others; on CPU, that many are simulated).')
  flags.DEFINE_string('out', '/tmp/alexnet_bench', 'Where bench.json is written.')
  flags.DEFINE_integer('steps', 5, 'Timed steps per strategy.')
  flags.DEFINE_integer('warmup', 2, 'Untimed steps after compiling.')
  flags.DEFINE_integer('matmul_size', 0, f'S of the S x S matrix product (0: '
                       f'{_CPU_MATMUL_SIZE} on CPU, {_ACCELERATOR_MATMUL_SIZE} on accelerators).')
  flags.mark_flags_as_required(['config'])
  app.run(main)
