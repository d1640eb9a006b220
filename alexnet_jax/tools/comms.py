"""The communication report: what every partitioning strategy moves per training step.

    python -m alexnet_jax.comms --config=configs/paper.py --devices=N --out=DIR

compiles the real train step (train.train_step) of every strategy that fits N devices, reads
every collective out of the compiled HLO, attributes it to a layer (each strategy runs its
collectives under a `jax.named_scope` named after the layer), compares the bytes with the
formula from the layer table (`analytic_bytes`), times a few steps, and writes DIR/comms.json,
DIR/comms.md and DIR/comms.png.

Bytes are counted per device per step, as a ring algorithm moves them over a group of g devices
holding S bytes: all-gather (g-1)/g * S of its result, reduce-scatter (g-1)/g * S of its input,
all-reduce 2 (g-1)/g * S, all-to-all (g-1)/g * S, collective-permute S. For the paper's two towers
(g = 2) an all-gather of both towers' activations moves exactly the other tower's half.
"""

import dataclasses
import json
import math
import os
import re
import time
from typing import Any, Optional

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
from PIL import Image, ImageDraw

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.tools import measure as measure_lib
from alexnet_jax.tools.drawing import COLOURS, png_bytes

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16}
KINDS = ('all-gather', 'all-reduce', 'reduce-scatter', 'all-to-all', 'collective-permute')
LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')
LOSS = 'loss_metrics'  # outside the strategy's shard_map: jit's own partitioning of the loss

_INSTRUCTION = re.compile(
    r'^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<type>.+?)\s+'
    r'(?P<op>' + '|'.join(KINDS) + r')(?P<start>-start)?\((?P<args>[^)]*)\)(?P<attrs>.*)$')
_SHAPE = re.compile(r'\b(?P<dtype>' + '|'.join(DTYPE_BYTES) + r')\[(?P<dims>[\d,]*)\]')


@dataclasses.dataclass
class Collective:
  """One collective of a compiled program, with the bytes one device sends for it."""
  kind: str
  shape: list  # of its result
  dtype: str
  group_size: int
  replica_groups: str
  bytes_per_device: float
  op_name: str
  layer: str  # conv1 .. fc8, loss_metrics, or '?' when it cannot be told
  phase: str  # forward or backward
  instruction: str  # its name in the HLO
  combined: int  # how many collectives XLA combined into that instruction

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(m['dtype'], tuple(int(d) for d in m['dims'].split(',') if d))
          for m in _SHAPE.finditer(text)]


def group_size(attrs: str, num_devices: int) -> tuple[int, str]:
  """The size of the device groups a collective runs over, from any of XLA's spellings."""
  m = re.search(r'replica_groups=(\{\{[^=]*?\}\}|\{\})', attrs)
  if m:
    text = m.group(1)
    if text == '{}':
      return num_devices, text
    first = re.match(r'\{\{([\d,]*)\}', text).group(1)
    return len([d for d in first.split(',') if d]), text
  m = re.search(r'replica_groups=\[(\d+),(\d+)\]<=\[[\d,]+\](?:T\([\d,]+\))?', attrs)
  if m:  # iota: [groups, group size] <= [devices]
    return int(m.group(2)), m.group(0).split('=', 1)[1]
  m = re.search(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<names>[^}]*)\}", attrs)
  if m:  # mesh['a'=2,'b'=4] {'b'}: groups over the named axes
    sizes = {k: int(v) for k, v in re.findall(r"'([^']+)'=(\d+)", m['axes'])}
    names = re.findall(r"'([^']+)'", m['names'])
    return math.prod(sizes[n] for n in names), m.group(0).split('=', 1)[1]
  m = re.search(r'source_target_pairs=(\{[^=]*?\}\})', attrs)
  if m:
    return 2, m.group(1)
  return num_devices, ''


def bytes_per_device(kind: str, result_bytes: int, g: int) -> float:
  """Ring-algorithm bytes one device sends (see the module docstring)."""
  if g <= 1:
    return 0.0
  return {'all-gather': (g - 1) / g * result_bytes,
          'reduce-scatter': (g - 1) * result_bytes,  # the input is g times the result
          'all-reduce': 2 * (g - 1) / g * result_bytes,
          'all-to-all': (g - 1) / g * result_bytes,
          'collective-permute': float(result_bytes)}[kind]


def layer_of(op_name: str) -> str:
  """The layer whose named scope a collective was traced in; LOSS outside any shard_map."""
  if 'shard_map' not in op_name:
    return LOSS
  found = [layer for layer in LAYERS if re.search(r'(^|/)' + layer + r'(/|$)', op_name)]
  return found[-1] if len(set(found)) == 1 else '?'


def split_op_names(op_name: str, count: int) -> list[str]:
  """The op names of the collectives XLA combined into one, in operand order.

  A combined op is named 'prefix/(name1:name2:...)'; anything else names all its operands.
  """
  at = 0 if op_name.startswith('(') else op_name.find('/(') + 1  # where '(' opens the list
  if count > 1 and op_name.endswith(')') and (at > 0 or op_name.startswith('(')):
    prefix, body = op_name[:max(at - 1, 0)], op_name[at + 1:-1]
    parts, depth, current = [], 0, ''
    for ch in body:
      if ch == ':' and depth == 0:
        parts.append(current)
        current = ''
        continue
      depth += (ch == '(') - (ch == ')')
      current += ch
    parts.append(current)
    if len(parts) == count:
      return [(prefix + '/' if prefix else '') + part for part in parts]
  return [op_name] * count


def parse_collectives(hlo_text: str, num_devices: int) -> list[Collective]:
  """Every collective in an HLO module's text (async pairs counted once, at their start).

  A collective XLA combined from several (a tuple all-reduce of many gradients) is listed once
  per operand, each with its own op name and layer, and `combined` = the operand count.
  """
  out = []
  for line in hlo_text.splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    shapes = _shapes(m['type'])
    if m['start'] and m['op'] != 'all-reduce':
      # (operand, result[, contexts]) tuples: the result is the second element.
      shapes = shapes[1:2] if len(shapes) > 1 else shapes
    g, groups = group_size(m['attrs'], num_devices)
    op_name = re.search(r'op_name="([^"]*)"', m['attrs'])
    op_name = op_name.group(1) if op_name else ''
    for (dtype, shape), name in zip(shapes, split_op_names(op_name, len(shapes))):
      out.append(Collective(
          kind=m['op'], shape=list(shape), dtype=dtype, group_size=g, replica_groups=groups,
          bytes_per_device=bytes_per_device(m['op'], DTYPE_BYTES[dtype] * math.prod(shape), g),
          op_name=name, layer=layer_of(name),
          phase='backward' if 'transpose(' in name else 'forward',
          instruction=m['name'], combined=len(shapes)))
  return out


def bytes_by_layer(collectives: list[Collective]) -> dict[str, float]:
  totals = {}
  for c in collectives:
    totals[c.layer] = totals.get(c.layer, 0.0) + c.bytes_per_device
  return totals


# --- The formula: what each strategy should move, from the layer table. ---

def layer_table(net, image_size: int) -> dict:
  """Per layer: parameters (both towers) and the per-tower width of the activation it reads
  from the other tower (conv3: pool2, fc6: pool5, fc7: fc6, fc8: fc7)."""
  params = jax.eval_shape(lambda k: model_lib.init_params(net, k, image_size),
                          jax.random.key(0))
  pool = lambda s: (s - 3) // 2 + 1
  conv1 = (image_size + model_lib.conv1_padding(image_size) - 11) // 4 + 1
  s2 = pool(pool(conv1))  # conv2 keeps the size (pad 2), so do conv3-conv5 (pad 1)
  s5 = pool(s2)
  c = net.conv_features
  reads = {'conv3': s2 * s2 * c[1], 'fc6': s5 * s5 * c[4], 'fc7': net.fc_features[0],
           'fc8': net.fc_features[1]}
  return {layer: {'params': sum(math.prod(a.shape) for a in params[layer].values()),
                  'reads_per_tower': reads.get(layer, 0),
                  'leaves': {w: tuple(a.shape) for w, a in params[layer].items()}}
          for layer in LAYERS}


def analytic_bytes(parallelism: str, num_devices: int, batch_size: int, table: dict,
                   dtype_bytes: int = 4) -> dict[str, float]:
  """Bytes per device per step, per layer, for float32 parameters and activations.

  B = batch, n = devices, a_L = per-tower activation a layer reads across towers, W_L its
  parameters (both towers), ar(g) = 2 (g-1)/g (ring all-reduce):
    towers       2 B a_L                             (all-gather fwd + reduce-scatter bwd, g = 2)
    towers_data  2 (2B/n) a_L + ar(n/2) W_L / 2      (towers on B/(n/2); a tower's grads over data)
    data, fsdp   ar(n) W_L                           (fsdp: all-gather W fwd + reduce-scatter bwd)
    hybrid       conv: ar(n) W_L; fc6/fc7/fc8: 2 (n-1)/n B 2 a_L (gather the whole batch's
                 features, scatter their gradients); fc8 adds ar(n/2) W_fc8 / 2
  """
  n, b, d = num_devices, batch_size, dtype_bytes
  ar = lambda g: 2 * (g - 1) / g
  out = {}
  for layer, row in table.items():
    w, a = row['params'] * d, row['reads_per_tower'] * d
    if parallelism == 'towers':
      v = 2 * b * a
    elif parallelism == 'towers_data':
      v = 2 * (b // (n // 2)) * a + ar(n // 2) * w / 2
    elif parallelism in ('data', 'fsdp'):
      v = ar(n) * w
    elif parallelism == 'hybrid':
      if layer.startswith('conv'):
        v = ar(n) * w
      else:
        v = 2 * (n - 1) / n * b * 2 * a + (ar(n // 2) * w / 2 if layer == 'fc8' else 0.0)
    else:
      raise ValueError(f'no formula for {parallelism!r}')
    out[layer] = float(v)
  return out


def loss_bytes_bound(batch_size: int, num_leaves: int = 16) -> float:
  """An upper bound on what jit adds for the loss and metrics on the sharded logits: a handful
  of per-example values (max, sums, label logit, hit) and one scalar per gradient leaf (the
  gradient norm), each all-reduced at most once: 16 per-example values and 3 per leaf."""
  return 2.0 * 4 * (16 * batch_size + 3 * num_leaves + 16)


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
  collectives = parse_collectives(compiled.as_text(), run.strategy.num_devices)
  measured = bytes_by_layer(collectives)
  table = layer_table(run.net, config.image_size)
  analytic = analytic_bytes(parallelism, run.strategy.num_devices, config.batch_size, table)
  timing = (measure_lib.time_steps(compiled, state, batch, steps, warmup) if steps > 0
            else {'step_seconds': None, 'mean_step_seconds': None})
  step_seconds = timing['step_seconds']
  model_bytes = sum(v for k, v in measured.items() if k != LOSS)
  return {
      'devices': run.strategy.num_devices, 'mesh': dict(run.mesh.shape),
      'batch_shards': run.strategy.batch_shards,
      'collectives': [c.to_json() for c in collectives],
      'bytes_per_step': sum(measured.values()),
      'bytes_per_step_by_layer': measured,
      'model_bytes_per_step': model_bytes,
      'analytic_bytes_per_step': sum(analytic.values()),
      'analytic_bytes_per_step_by_layer': analytic,
      'loss_metrics_bound': loss_bytes_bound(config.batch_size),
      'unexplained_bytes': measured.get('?', 0.0),
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


def markdown(result: dict) -> str:
  """comms.md: one line per strategy, then the per-layer breakdown."""
  lines = [f'# Communication per training step ({result["devices"]} devices, batch '
           f'{result["batch_size"]}, {result["image_size"]}x{result["image_size"]}, '
           f'{result["platform"]}: {result["device_kind"]}, {result["date"]})', '',
           'MB = 10^6 bytes sent per device per step (ring convention, see alexnet_jax/tools/comms.py).',
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


def chart(result: dict) -> bytes:
  """comms.png: per strategy a bar of MB per step stacked by layer (linear), and the step time
  beside it. Drawn with Pillow (see drawing.py)."""
  names = list(result['strategies'])
  parts = LAYERS + (LOSS,)
  width, left, top, bar_h, gap = 900, 130, 40, 24, 16
  height = top + len(names) * (bar_h + gap) + 60
  image = Image.new('RGB', (width, height), 'white')
  draw = ImageDraw.Draw(image)
  draw.text((10, 10), f'MB per device per step, {result["devices"]} devices, batch '
            f'{result["batch_size"]}  (seconds per step at right)', fill='black')
  biggest = max([e['bytes_per_step'] for e in result['strategies'].values()] + [1.0])
  plot_w = width - left - 250  # room for the MB label and the step time
  for i, name in enumerate(names):
    e = result['strategies'][name]
    y = top + i * (bar_h + gap)
    draw.text((10, y + 6), name, fill='black')
    x = left
    for j, part in enumerate(parts):
      w = plot_w * e['bytes_per_step_by_layer'].get(part, 0.0) / biggest
      draw.rectangle((x, y, x + w, y + bar_h), fill=COLOURS[j % len(COLOURS)])
      x += w
    draw.text((x + 6, y + 6), f'{e["bytes_per_step"] / 1e6:.2f} MB', fill='black')
    draw.text((width - 100, y + 6), f'{e["step_seconds"] or 0:.2f} s', fill='black')
  y = top + len(names) * (bar_h + gap) + 10
  x = 10
  for j, part in enumerate(parts):
    label = part.replace('_metrics', '')
    draw.rectangle((x, y, x + 12, y + 12), fill=COLOURS[j % len(COLOURS)])
    draw.text((x + 16, y), label, fill='black')
    x += 16 + int(draw.textlength(label)) + 14
  return png_bytes(image)


def write(result: dict, out_dir: str) -> None:
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'comms.json'), 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(out_dir, 'comms.md'), 'w') as f:
    f.write(markdown(result))
  with open(os.path.join(out_dir, 'comms.png'), 'wb') as f:
    f.write(chart(result))


def main(argv):
  del argv
  config = flags.FLAGS.config
  jax.config.update('jax_num_cpu_devices', flags.FLAGS.devices)  # only the CPU backend uses it
  strategies = [s for s in flags.FLAGS.strategies.split(',') if s] or None
  result = report(config, flags.FLAGS.devices, steps=flags.FLAGS.steps,
                  warmup=flags.FLAGS.warmup, strategies=strategies)
  if flags.FLAGS.time_convs:
    result['both_towers_executor'] = time_both_towers_executors(
        run_lib.network(config, jax.devices()[0].platform), flags.FLAGS.time_convs,
        config.image_size)
    print('both towers on one device:', result['both_towers_executor'])
  write(result, flags.FLAGS.out)
  print(markdown(result))


def cli() -> None:
  """`python -m alexnet_jax.comms` (alexnet_jax/comms.py): defines the flags and runs `main`."""
  config_flags.DEFINE_config_file('config', None, 'A configs/*.py file.', lock_config=False)
  flags.DEFINE_integer('devices', 2, 'Devices (simulated on CPU when there are fewer).')
  flags.DEFINE_string('out', None, 'Where comms.json, comms.md and comms.png go.')
  flags.DEFINE_integer('steps', 3, 'Timed steps per strategy (after the warm-up).')
  flags.DEFINE_integer('warmup', 1, 'Untimed steps before timing.')
  flags.DEFINE_string('strategies', '', 'Comma-separated subset (default: all that fit).')
  flags.DEFINE_integer('time_convs', 0, 'If > 0: also time the two ways one device can '
                       'run both towers (split vs vmapped) at this batch size.')
  flags.mark_flags_as_required(['config', 'out'])
  app.run(main, flags_parser=config_lib.parse_flags)
