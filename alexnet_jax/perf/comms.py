"""The communication report: what every partitioning strategy moves per training step.

    python -m alexnet_jax.comms --config=configs/paper.py --devices=N --out=DIR

compiles the real train step (train.train_step) of every strategy that fits N devices, reads
every collective out of the compiled HLO, attributes it to a layer (each strategy runs its
collectives under a `jax.named_scope` named after the layer), compares the bytes with the
formula from the layer table (`analytic_bytes`), times a few steps, and writes DIR/comms.json,
DIR/comms.md and DIR/comms.png. The command's flags: alexnet_jax/comms.py.

Bytes are counted per device per step, as a ring algorithm moves them over a group of g devices
holding S bytes: all-gather (g-1)/g * S of its result, reduce-scatter (g-1)/g * S of its input,
all-reduce 2 (g-1)/g * S, all-to-all (g-1)/g * S, collective-permute S. For the paper's two towers
(g = 2) an all-gather of both towers' activations moves exactly the other tower's half.
"""

import time
from typing import Optional

import jax
import jax.numpy as jnp

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.program import analysis
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.program.hlo import LAYERS, LOSS
from alexnet_jax.report.write import write_report

# --- Measuring the real train step. ---

def measure(config, parallelism: str, num_devices: int, steps: int = 3, warmup: int = 1,
            devices=None, compiler_options: Optional[dict] = None, params=None) -> dict:
  """One strategy's entry of the report: the train step built by run.build, compiled; its
  collectives, their bytes against the formula, memory, and (steps > 0) its time on a synthetic
  batch.

  `params` (host arrays, towers stacked) replaces the initialisation (the tests start every
  strategy from the same values); `compiler_options` go to XLA (the tests lower XLA:CPU's
  optimisation to compile faster).
  """
  run = run_lib.build(measure_lib.strategy_config(config, parallelism, num_devices), devices)
  state = run.state_from_params(params) if params is not None else run.init_state()
  batch = run.synthetic_batch(config.seed)
  compiled, compile_seconds = measure_lib.compile_train_step(run, state, batch, compiler_options)
  step = analysis.compiled_step(run, run.config, compiled.as_text())
  collectives = step.pop('collectives')
  timing = (measure_lib.time_steps(compiled, state, batch, steps, warmup) if steps > 0
            else {'step_seconds': None, 'mean_step_seconds': None})
  step_seconds = timing['step_seconds']
  measured = step['bytes_per_step_by_layer']
  return {
      'devices': run.strategy.num_devices, 'mesh': dict(run.mesh.shape),
      'batch_shards': run.strategy.batch_shards,
      'collectives': [c.to_json() for c in collectives],
      'model_bytes_per_step': sum(v for k, v in measured.items() if k != LOSS),
      **{k: step[k] for k in ('bytes_per_step', 'bytes_per_step_by_layer',
                              'analytic_bytes_per_step', 'analytic_bytes_per_step_by_layer',
                              'loss_metrics_bound', 'unexplained_bytes', 'explanations')},
      'compile_seconds': compile_seconds,
      'memory_per_device': measure_lib.memory(compiled, run.devices),
      'step_seconds': step_seconds,
      'mean_step_seconds': timing['mean_step_seconds'],
      'images_per_second': config.batch_size / step_seconds if step_seconds else None,
  }


def report(config, num_devices: int, steps: int = 3, warmup: int = 1, strategies=None,
           log=print, compiler_options: Optional[dict] = None, params=None) -> dict:
  """Every strategy that fits `num_devices` (the rest listed with the reason)."""
  first = jax.devices()[0]
  result = {'devices': num_devices, 'batch_size': config.batch_size,
            'image_size': config.image_size, 'platform': first.platform,
            'device_kind': first.device_kind,
            'gradient_exchange_dtype': config.gradient_exchange_dtype,
            'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'strategies': {}, 'skipped': {}}

  def measure_one(config_n):
    entry = measure(config_n, config_n.parallelism, num_devices, steps=steps, warmup=warmup,
                    compiler_options=compiler_options, params=params)
    log(f'{config_n.parallelism}: {entry["bytes_per_step"] / 1e6:.3f} MB/step measured, '
        f'{entry["analytic_bytes_per_step"] / 1e6:.3f} MB/step analytic, '
        f'{entry["step_seconds"] or 0:.3f} s/step')
    return entry

  result['strategies'], result['skipped'] = measure_lib.each_strategy(
      config, strategies or strategies_lib.STRATEGIES, num_devices, measure_one, log=log)
  return result


def time_both_towers_executors(net, batch_size: int, image_size: int, repeats: int = 3,
                               seed: int = 0, compiler_options: Optional[dict] = None,
                               params=None) -> dict:
  """Seconds for conv1-conv5 forward + backward of both towers on ONE device, two ways.

  'split' is the stage-by-stage executor the strategies use (strategies.both_towers_convs:
  two plain convolution sets); 'vmapped' maps one tower over the stacked parameters, which XLA
  turns into feature_group_count=2 convolutions for conv2, conv4 and conv5. Best of `repeats`.
  """
  device = jax.devices()[0]
  if params is None:
    params = jax.jit(lambda k: model_lib.init_params(net, k, image_size))(jax.random.key(seed))
  params = jax.device_put(params, device)
  images = jax.device_put(jax.random.normal(jax.random.key(seed + 1),
                                            (batch_size, image_size, image_size, 3)), device)

  def vmapped(p, x):
    stage = lambda method: jax.vmap(
        lambda pt, y: net.apply({'params': pt}, y, method=method), in_axes=(0, None),
        out_axes=-2)  # [..., tower, channels]: tower 1's channels first once flattened
    y = stage(model_lib.Tower.conv1_conv2)(p, x)
    y = stage(model_lib.Tower.conv3_conv5)(p, y.reshape(y.shape[:3] + (-1,)))
    return y.reshape(y.shape[0], -1)

  split = lambda p, x: strategies_lib.both_towers_convs(net, p, x)
  out = {'batch_size': batch_size, 'image_size': image_size, 'device': device.device_kind}
  for name, fn in (('split', split), ('vmapped', vmapped)):
    step = jax.jit(jax.grad(lambda p, x, fn=fn: jnp.sum(fn(p, x) ** 2)))
    compiled = step.lower(params, images).compile(compiler_options=compiler_options)
    out[f'{name}_grouped_convolutions'] = compiled.as_text().count('feature_group_count=2')
    jax.block_until_ready(compiled(params, images))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(compiled(params, images))
      times.append(time.perf_counter() - start)
    out[f'{name}_seconds'] = min(times)
  reference = jax.jit(split)(params, images)
  out['max_abs_value'] = float(jnp.max(jnp.abs(reference)))
  out['max_abs_difference'] = float(jnp.max(jnp.abs(reference -
                                                    jax.jit(vmapped)(params, images))))
  out['vmapped_over_split'] = out['vmapped_seconds'] / out['split_seconds']
  return out


# --- Writing it down. ---

def _mb(x: Optional[float]) -> str:
  return '-' if x is None else f'{x / 1e6:.3f}'


def _exchange_line(result: dict) -> list[str]:
  dtype = result.get('gradient_exchange_dtype', 'float32')
  if dtype == 'float32':
    return []
  cpu = (' XLA:CPU, which has no 16-bit reduction, rounds them to 16 bits and reduces in '
         'float32 (program/hlo.py).' if result.get('platform') == 'cpu' else '')
  return [f'Gradients are summed across batch shards in {dtype} '
          f'(config.gradient_exchange_dtype), counted at 2 bytes.{cpu}']


def markdown(result: dict) -> str:
  """comms.md: one line per strategy, then the per-layer breakdown."""
  lines = [f'# Communication per training step ({result["devices"]} devices, batch '
           f'{result["batch_size"]}, {result["image_size"]}x{result["image_size"]}, '
           f'{result["platform"]}: {result["device_kind"]}, {result["date"]})', '',
           'MB = 10^6 bytes sent per device per step (ring convention, see alexnet_jax/perf/comms.py).',
           *_exchange_line(result),
           '', '| strategy | mesh | collectives | measured MB | analytic MB (model) | '
           'loss/metrics MB | s/step | images/s | compile s | temp MB/device |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for name, e in result['strategies'].items():
    mesh = ' x '.join(f'{k}={v}' for k, v in e['mesh'].items())
    temp = e['memory_per_device'].get('temp_size_in_bytes')
    ips = e['images_per_second']
    lines.append(
        f'| {name} | {mesh} | {len(e["collectives"])} | {_mb(e["bytes_per_step"])} | '
        f'{_mb(e["analytic_bytes_per_step"])} | '
        f'{_mb(e["bytes_per_step_by_layer"].get(LOSS, 0.0))} | '
        f'{e["step_seconds"] or 0:.3f} | {ips or 0:.1f} | {e["compile_seconds"]:.1f} | '
        f'{_mb(temp)} |')
  for name, why in result.get('skipped', {}).items():
    lines.append(f'| {name} | - | skipped: {why} | | | | | | | |')
  lines += ['', '## Per layer: measured / analytic MB per device per step', '',
            '| strategy | ' + ' | '.join(LAYERS) + f' | {LOSS} | unexplained |',
            '|---|' + '---|' * (len(LAYERS) + 2)]
  for name, e in result['strategies'].items():
    m, a = e['bytes_per_step_by_layer'], e['analytic_bytes_per_step_by_layer']
    cells = [f'{_mb(m.get(layer, 0.0))} / {_mb(a.get(layer, 0.0))}' for layer in LAYERS]
    lines.append(f'| {name} | ' + ' | '.join(cells) +
                 f' | {_mb(m.get(LOSS, 0.0))} | {_mb(m.get("?", 0.0))} |')
  return '\n'.join(lines) + '\n'


def chart_figure(result: dict):
  """comms.png's Figure: per strategy a bar of MB per device per step stacked by layer, read
  from this machine's compiled program (measured, not predicted), the formula's total marked on
  it; beside it the measured seconds per step (linear axes: the bars add up)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  names = list(result['strategies'])
  entries = [result['strategies'][n] for n in names]
  parts = LAYERS + (LOSS,)
  fig, (mb, seconds) = charts.figure(900, 150 + 40 * max(1, len(names)), 1, 2,
                                     width_ratios=(2.6, 1), sharey=True)
  where = ', '.join(str(result[k]) for k in ('platform', 'device_kind') if result.get(k))
  fig.suptitle(f'measured: the compiled train step on {result["devices"]} devices'
               f'{f" ({where})" if where else ""}, batch {result["batch_size"]}',
               fontsize=charts.TITLE_SIZE, x=0.01, ha='left')
  charts.stacked_bars(
      mb, 'MB per device per step, read from the compiled program (measured)', names,
      [p.replace('_metrics', '') for p in parts],
      [[e['bytes_per_step_by_layer'].get(p, 0.0) for p in parts] for e in entries],
      'MB per device per step', marks=('formula', [e['analytic_bytes_per_step'] for e in entries]),
      scale=1e6, unit='MB')
  charts.bars(seconds, 'step time (measured)', names,
              [e['step_seconds'] for e in entries], 'seconds', fmt='{:.3f} s')
  return fig


def chart(result: dict) -> bytes:
  """comms.png (chart_figure, drawn with matplotlib)."""
  from alexnet_jax.report import charts  # pylint: disable=g-import-not-at-top
  return charts.png(chart_figure(result))


def write(result: dict, out_dir: str) -> None:
  """comms.json, comms.md and comms.png."""
  write_report(out_dir, 'comms', result, markdown, chart)
