"""The pod plan: every strategy compiled for a TPU slice or GPU nodes, and its step time predicted.

    python -m alexnet_jax.comms --config=configs/paper.py --target=tpu-v5e \
        --devices=2,4,16,64,256 --out=DIR

For each device count, the real train step of every strategy that fits (run.build on the
target's devices, `jax.experimental.topologies`) is compiled by the target's own compiler without
being run; from the compiled program come its collectives (hlo.py: kind, bytes, layer, group,
whether asynchronous and what the schedule places between start and done), XLA's memory
analysis, and (TPU) XLA's FLOP count. What is *predicted* from them uses the profile's numbers
(targets.py) and this model, simple enough to check by hand (docs/communication.md):

  compute    = FLOPs per device / (peak FLOP/s x efficiency)
  collective = bytes per device / bandwidth of the link it crosses + steps x latency
               (ring: g-1 steps, all-reduce 2(g-1); torus: the sum over the axes its group spans
               of (extent - 1); the bandwidth of a torus group: one link per direction per axis)
  hidden     = for an asynchronous collective, at most the share of the step's convolutions and
               matrix products the schedule places between its start and done, of the compute
  step       = compute + collectives - hidden (with_overlap) .. compute + collectives (no_overlap)

Compiled programs are cached (keyed by the lowered program, the target and the compiler's
version), so a second plan of the same configs only lowers.

Writes DIR/plan.json, DIR/plan.md and DIR/plan.png.
"""

import concurrent.futures
import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections
from PIL import Image

from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies as strategies_lib
from alexnet_jax.tools import formula
from alexnet_jax.tools import hlo
from alexnet_jax.tools import measure as measure_lib
from alexnet_jax.tools import targets as targets_lib
from alexnet_jax.tools.drawing import line_chart, png_bytes, write_report
from alexnet_jax.tools.hlo import LAYERS, LOSS, Module, bytes_by_layer, parse_collectives

PREDICTED = 'PREDICTED, not measured'
# Per strategy and layer, the collectives the layer-table formula counts (formula.analytic_bytes).
_TOWER_READS = ('conv3', 'fc6', 'fc7', 'fc8')


def expected_kinds(parallelism: str, layer: str) -> set:
  ag_rs = {'all-gather', 'reduce-scatter'}
  if parallelism == 'towers':
    return ag_rs if layer in _TOWER_READS else set()
  if parallelism == 'towers_data':
    return (ag_rs if layer in _TOWER_READS else set()) | {'all-reduce'}
  if parallelism == 'hybrid':
    return {'all-reduce'} if layer.startswith('conv') else ag_rs | (
        {'all-reduce'} if layer == 'fc8' else set())
  return {'all-reduce'} if parallelism == 'data' else ag_rs


def default_cache_dir() -> str:
  return os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                      'alexnet_jax', 'compiled')


def compiler_version(profile: targets_lib.Profile) -> str:
  package = {'tpu': 'libtpu', 'gpu': 'jax-cuda12-plugin'}[profile.compiler]
  return f'jax {jax.__version__}, {package} {importlib.metadata.version(package)}'


def leaf_shapes(run: run_lib.Run) -> dict:
  """{layer: [(whole shape, one device's shard) per parameter]}: what a gradient collective of
  that layer carries, to attribute the collectives a compiler combined without their names."""
  return {layer: [(tuple(a.shape), tuple(a.sharding.shard_shape(a.shape)))
                  for a in leaves.values()]
          for layer, leaves in run.abstract_state.params.items()}


def replica_config(config: ml_collections.ConfigDict, parallelism: str, num_devices: int,
                   devices: Sequence, batch_per_replica: int) -> ml_collections.ConfigDict:
  """`config` for one strategy on `num_devices`, with `batch_per_replica` examples per batch
  shard (0: the config's global batch). The evaluation batch follows the training batch: the plan
  compiles the train step only, and a pod's evaluation batch must divide like it."""
  config = measure_lib.strategy_config(config, parallelism, num_devices)
  if batch_per_replica:
    net = run_lib.network(config, devices[0].platform)
    shards = strategies_lib.make_strategy(parallelism, net, devices, num_devices).batch_shards
    config.batch_size = batch_per_replica * shards
  config.eval_batch_size = config.batch_size
  return config


def _links(groups: list, devices: Sequence, profile: targets_lib.Profile) -> dict:
  """Which link a collective's groups cross, and (TPU) the extent of each torus axis they span."""
  unit = ((lambda d: getattr(d, 'slice_index', None) or 0) if profile.compiler == 'tpu'
          else (lambda d: d.process_index))
  between = any(len({unit(devices[i]) for i in g}) > 1 for g in groups)
  extents = []
  if profile.compiler == 'tpu' and not between:
    coords = [[tuple(devices[i].coords) for i in g] for g in groups]
    for axis in range(3):
      extents.append(max(len({c[axis] for c in group}) for group in coords))
    extents = [e for e in extents if e > 1]
  return {'crosses': 'between' if between else 'inside', 'extents': extents}


def _instructions(collectives: list, devices: Sequence, profile: targets_lib.Profile) -> dict:
  out = {}
  for c in collectives:
    entry = out.setdefault(c.instruction, {
        'kind': c.kind, 'group_size': c.group_size, 'bytes_per_device': 0.0,
        'asynchronous': c.asynchronous, 'overlap_ops': c.overlap_ops, 'layers': [],
        **_links(c.groups, devices, profile)})
    entry['bytes_per_device'] += c.bytes_per_device
    if c.layer not in entry['layers']:
      entry['layers'].append(c.layer)
  return out


def _is_parameter(c, leaves: dict) -> bool:
  """Whether a collective carries a parameter (or its gradient): its shape is one of its layer's
  parameters', whole or one device's shard (size-1 dimensions aside)."""
  squeeze = lambda shape: tuple(d for d in shape if d != 1)
  return any(squeeze(c.shape) in {squeeze(s) for s in pair} for pair in leaves.get(c.layer, []))


def explain(parallelism: str, collectives: list, measured: dict, analytic: dict,
            compute_dtype: str, leaves: Optional[dict] = None) -> dict:
  """Compiled bytes against the formula, per layer, with every reason they differ: collectives
  moved in another dtype than the program's, issued more than once, decomposed or added; and,
  per instruction that carries several arrays, what the compiler combined and how its parts
  were attributed. `leaves`: leaf_shapes(run), to tell parameters from activations."""
  leaves = leaves or {}
  act_bytes = 2 if compute_dtype == 'bfloat16' else 4
  layers = {}
  for layer in LAYERS + (LOSS, '?'):
    expected = expected_kinds(parallelism, layer)
    mine = [c for c in collectives if c.layer == layer]
    m, a = measured.get(layer, 0.0), analytic.get(layer, 0.0)
    if not mine and not a:
      continue
    close = lambda x: abs(x - a) <= max(0.01 * a, 16e3)  # 1 %, or 16 kB of stray scalars
    notes = []
    if layer == LOSS:
      notes.append('added: jit partitions the loss and metrics on the sharded logits (not in '
                   'the formula; bounded by formula.loss_bytes_bound)')
    elif layer == '?':
      notes.append('unattributed: no layer in its name or its input\'s, no parameter of its '
                   'shape')
    # The same collective (kind, shape, dtype, name) issued several times: re-gathered for each
    # use instead of kept (rematerialized), which the formula, counting one, does not.
    seen = {}
    for c in mine:
      key = (c.kind, tuple(c.shape), c.dtype, c.op_name)
      seen[key] = seen.get(key, 0) + 1
    repeats = {k: v for k, v in seen.items() if v > 1 and k[0] != 'all-reduce' and k[3]}
    once = sum(c.bytes_per_device for c in mine) - sum(
        c.bytes_per_device * (seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] - 1)
        / seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] for c in mine)
    if repeats and layer not in (LOSS, '?'):
      notes.append('repeated: ' + ', '.join(f'{k[0]} of {k[2]}{list(k[1])} issued {v} times'
                                            for k, v in repeats.items())
                   + f' (the compiler gathers again for each use rather than keep the gathered '
                   f'copy; counted once: {once / 1e6:.3f} MB)')
    # Bytes as the program's dtypes would move them (parameters and gradients float32,
    # activations and their gradients the compute dtype), each collective counted once.
    program_bytes = lambda c: 4 if _is_parameter(c, leaves) else act_bytes
    floats = [c for c in mine if c.dtype in ('f32', 'bf16', 'f16')]
    as_program = sum(c.bytes_per_device * program_bytes(c) / hlo.DTYPE_BYTES[c.dtype]
                     / seen[(c.kind, tuple(c.shape), c.dtype, c.op_name)] for c in floats)
    changed = sorted({f'{c.kind} {c.dtype}' for c in floats
                      if hlo.DTYPE_BYTES[c.dtype] != program_bytes(c)})
    if changed and layer not in (LOSS, '?'):
      notes.append(f'dtype: {", ".join(changed)} where the program has '
                   f'{"bfloat16" if act_bytes == 2 else "float32"} activations and float32 '
                   'parameters (the compiler moved a conversion across the collective); in the '
                   f'program\'s dtypes{", counted once" if repeats else ""}: '
                   f'{as_program / 1e6:.3f} MB')
    extra = {c.kind for c in mine} - expected
    if extra and layer not in (LOSS, '?'):
      notes.append(f'kinds: the compiler exchanges this layer with '
                   f'{", ".join(sorted({c.kind for c in mine}))} where the formula counts '
                   f'{", ".join(sorted(expected)) or "nothing"}: '
                   f'{m / 1e6:.3f} MB against {a / 1e6:.3f} MB')
    equal = close(m)
    explained = equal or close(as_program) or (repeats and close(once)) or bool(extra)
    unnamed = measured.get('?', 0.0)
    if not explained and m < a and unnamed and layer not in (LOSS, '?'):
      notes.append(f'missing: {(a - m) / 1e6:.3f} MB of the formula\'s; the collectives the '
                   f'compiler made without a name ("?") carry {unnamed / 1e6:.3f} MB')
      explained = True
    if not explained and layer not in (LOSS, '?'):
      notes.append(f'unexplained: {m / 1e6:.3f} MB compiled against {a / 1e6:.3f} MB by formula')
    layers[layer] = {'compiled_bytes': m, 'analytic_bytes': a,
                     'status': 'equal' if equal else 'explained' if explained else 'differs',
                     'notes': notes}
  combined = {}
  for c in collectives:
    if c.combined > 1:
      e = combined.setdefault(c.instruction, {'kind': c.kind, 'arrays': c.combined,
                                              'layers': [], 'attributed_by': []})
      for field, value in (('layers', c.layer), ('attributed_by', c.attributed_by)):
        if value not in e[field]:
          e[field].append(value)
  return {'layers': layers, 'combined': combined}


@dataclasses.dataclass
class Job:
  """One strategy on one device count: built and lowered; compiled unless the cache has it."""
  label: str
  config: ml_collections.ConfigDict
  run: run_lib.Run
  lowered: Any
  cache_path: Optional[str]
  topology: str
  compiled: Optional[dict] = None  # the compiler's outputs: hlo text, memory, flops, seconds


def lower(label: str, config: ml_collections.ConfigDict, devices: Sequence,
          profile: targets_lib.Profile, cache_dir: Optional[str], topology: str) -> Job:
  """Builds and lowers one strategy's train step (cheap), and looks up what the compiler made of
  it before (the optimized program's text, its memory analysis and FLOPs), keyed by the lowered
  program, the target and the compiler's version. The analysis is not cached: it is redone from
  the compiler's output every time."""
  run = run_lib.build(config, devices)
  lowered = run.train_step.lower(run.abstract_state, run.abstract_batch())
  key = hashlib.sha256('\n'.join([
      lowered.as_text(), profile.compiler, profile.topology, profile.target_config,
      compiler_version(profile), str([str(d) for d in run.devices])]).encode()).hexdigest()[:24]
  path = os.path.join(cache_dir, f'{key}.json.gz') if cache_dir else None
  job = Job(label, config, run, lowered, path, topology)
  if path and os.path.exists(path):
    with gzip.open(path, 'rt') as f:
      job.compiled = dict(json.load(f), cached=True)
  return job


def analyse(job: Job, profile: targets_lib.Profile) -> dict:
  """One strategy's compiled facts: collectives, bytes against the formula, memory, FLOPs."""
  config, run, out = job.config, job.run, job.compiled
  text = out['hlo']
  n = run.strategy.num_devices
  module = Module(text)  # read once: the collectives and the schedule's heavy ops
  collectives = parse_collectives(module, n, leaf_shapes(run))
  measured = bytes_by_layer(collectives)
  table = formula.layer_table(run.net, config.image_size)
  act_bytes = 2 if config.model.dtype == 'bfloat16' else 4
  analytic = formula.analytic_bytes(config.parallelism, n, config.batch_size, table,
                                    act_bytes=act_bytes)
  return {
      'strategy': config.parallelism, 'devices': n, 'topology': job.topology,
      'mesh': dict(run.mesh.shape), 'batch_size': config.batch_size,
      'augment_on': run.augment_on, 'input_path': config.resized or run.augment_on,
      'batch_shards': run.strategy.batch_shards,
      'hosts': len({d.process_index for d in run.devices}),
      'compile_seconds': out['compile_seconds'], 'cached': out.get('cached', False),
      'memory_per_device': out['memory'],
      'compiled_flops_per_device': out['flops'],
      'analytic_flops_per_device': formula.step_flops(run.net, config.image_size,
                                                      config.batch_size) / n,
      'heavy_ops': module.heavy_ops(),
      'collectives': [c.to_json() for c in collectives],
      'instructions': _instructions(collectives, run.devices, profile),
      'bytes_per_step': sum(measured.values()),
      'bytes_per_step_by_layer': measured,
      'analytic_bytes_per_step': sum(analytic.values()),
      'analytic_bytes_per_step_by_layer': analytic,
      'explanations': explain(config.parallelism, collectives, measured, analytic,
                              config.model.dtype, leaf_shapes(run)),
  }


def _compile(job: Job) -> dict:
  """Compiles a job's program and keeps what the analysis needs (and caches it)."""
  start = time.perf_counter()
  compiled = job.lowered.compile()
  seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  out = {'hlo': compiled.as_text(), 'memory': measure_lib.memory(compiled),
         'flops': float(cost['flops']) if cost and 'flops' in cost else None,
         'compile_seconds': seconds}
  if job.cache_path:
    os.makedirs(os.path.dirname(job.cache_path), exist_ok=True)
    with gzip.open(job.cache_path + '.tmp', 'wt') as f:
      json.dump(out, f)
    os.replace(job.cache_path + '.tmp', job.cache_path)
  return out


def collective_seconds(ins: dict, profile: targets_lib.Profile) -> float:
  """One instruction's time by the ring / torus formula on the link it crosses."""
  g, kind = ins['group_size'], ins['kind']
  if g <= 1 or ins['bytes_per_device'] <= 0:
    return 0.0
  rounds = 2 if kind == 'all-reduce' else 1
  if ins['crosses'] == 'between':
    link = profile.between
    bandwidth, steps = float(link['bandwidth']), rounds * (g - 1)
  elif profile.inside.get('wiring') == 'torus':
    link = profile.inside
    extents = ins['extents']
    ports = sum(2 if e > 2 else 1 for e in extents)
    if not ports:  # devices of one chip (TPU v4's two cores): through its memory
      return ins['bytes_per_device'] / profile.per_device('memory_bandwidth')
    bandwidth = ports * float(link['link_bandwidth'])
    steps = rounds * sum(e - 1 for e in extents)
  else:
    link = profile.inside
    bandwidth, steps = float(link['bandwidth']), rounds * (g - 1)
  if kind == 'collective-permute':
    steps = 1
  return ins['bytes_per_device'] / bandwidth + steps * float(link['latency'])


def predict(entry: dict, profile: targets_lib.Profile, efficiency: float, dtype: str,
            input_per_core: Optional[dict]) -> dict:
  """The predicted step of one compiled entry (see the module docstring). `input_per_core`:
  the training pipeline's images/s per CPU core, by input path: where augmentation runs ('host',
  'device'), or the 256 x 256 squares it reads ('jpeg', 'raw'; config.resized)."""
  peak = profile.per_device('peak_bf16_flops' if dtype == 'bfloat16' else 'fp32_matmul_flops')
  flops = entry['compiled_flops_per_device'] or entry['analytic_flops_per_device']
  compute = flops / (peak * efficiency)
  comm, hidden = 0.0, 0.0
  for ins in entry['instructions'].values():
    t = collective_seconds(ins, profile)
    comm += t
    if ins['asynchronous'] and entry['heavy_ops']:
      hidden += min(t, compute * ins['overlap_ops'] / entry['heavy_ops'])
  hidden = min(hidden, compute)
  steps = {'no_overlap': compute + comm, 'with_overlap': compute + comm - hidden}
  memory = entry['memory_per_device'].get('peak_memory_bytes')
  capacity = profile.per_device('memory_bytes')
  out = {
      'flops_per_device': flops,
      'flops_source': 'compiled' if entry['compiled_flops_per_device'] else 'formula',
      'memory_per_device_bytes': memory,
      'fits': None if memory is None else memory <= capacity,
      'memory_headroom_bytes': None if memory is None else capacity - memory,
      'predicted_compute_seconds': compute,
      'predicted_communication_seconds': comm,
      'predicted_hidden_seconds': hidden,
      'predicted_step_seconds': steps,
      'predicted_images_per_second': {k: entry['batch_size'] / v for k, v in steps.items()},
  }
  cpus = profile.per_device('host_cpus_per_chip')
  rate = (input_per_core or {}).get(entry.get('input_path', entry.get('augment_on', 'host')))
  if rate and cpus:
    ceiling = rate * cpus * entry['devices']
    out['input_images_per_second'] = ceiling
    out['limited_by'] = ('input' if ceiling < out['predicted_images_per_second']['with_overlap']
                         else 'chips')
  return out


def make_plan(config: ml_collections.ConfigDict, profile: targets_lib.Profile,
              device_counts: Sequence[int], *, strategies: Optional[Sequence[str]] = None,
              batch_per_replica: int = 128, efficiency: float = 0.4,
              input_per_core: Optional[dict] = None, cache_dir: Optional[str] = None,
              workers: int = 0, log: Callable[[str], Any] = print) -> dict:
  """Every strategy that fits each device count of `profile`, compiled and predicted.

  The programs are lowered one after the other and compiled by `workers` threads (0: one per
  CPU): a compiler works on one program on one core, so a plan compiles as many at a time."""
  jobs, skipped = [], {}
  for n in device_counts:
    try:
      topology = targets_lib.topology_name(profile, n)
    except targets_lib.TargetError as e:
      skipped[f'*/{n}'] = str(e)
      log(f'{n} devices: skipped ({e})')
      continue
    devices = targets_lib.devices(profile, n)
    for name in strategies or strategies_lib.STRATEGIES:
      label = f'{name}/{n}'
      try:
        config_n = replica_config(config, name, n, devices, batch_per_replica)
      except ValueError as e:
        skipped[label] = str(e)
        log(f'{label}: skipped ({e})')
        continue
      why = measure_lib.skip_reason(config_n, devices)
      if why:
        skipped[label] = why
        log(f'{label}: skipped ({why})')
        continue
      jobs.append(lower(label, config_n, devices, profile, cache_dir, topology))
  todo = [j for j in jobs if j.compiled is None]
  if todo:
    log(f'compiling {len(todo)} programs for {profile.key} ({len(jobs) - len(todo)} cached) ...')
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    for job, out in zip(todo, pool.map(_compile, todo)):
      job.compiled = out
  runs = []
  for job in jobs:
    entry = analyse(job, profile)
    entry.update(predict(entry, profile, efficiency, config.model.dtype, input_per_core))
    runs.append(entry)
    how = 'cached' if entry['cached'] else f'compiled in {entry["compile_seconds"]:.1f} s'
    log(f'{job.label}: {how}, {entry["bytes_per_step"] / 1e6:.2f} MB/step/device, predicted '
        f'{entry["predicted_images_per_second"]["with_overlap"]:,.0f} images/s ({PREDICTED})')
  return {
      'target': profile.key, 'profile': profile.to_json(),
      'compiler': compiler_version(profile), 'date': time.strftime('%Y-%m-%d %H:%M UTC',
                                                                 time.gmtime()),
      'dtype': config.model.dtype, 'image_size': config.image_size,
      'batch_per_replica': batch_per_replica, 'efficiency': efficiency,
      'input_per_core_images_per_second': input_per_core,
      'label': f'{PREDICTED}: {profile.name}, compute at {efficiency:.0%} of peak',
      'runs': runs, 'skipped': skipped, 'winners': winners(runs)}


def measure_beside(plan: dict, config: ml_collections.ConfigDict, devices: Sequence,
                   steps: int = 3, warmup: int = 1, log: Callable[[str], Any] = print) -> None:
  """Runs each planned step that `devices` can hold (a real GPU or TPU of the target, in this
  process) and puts the measured step beside the predicted one: the same program bench times,
  built by run.build and timed by measure.time_steps on a synthetic batch."""
  for r in plan['runs']:
    if r['devices'] > len(devices):
      r['measured_step_seconds'] = r['measured_images_per_second'] = None
      continue
    config_n = replica_config(config, r['strategy'], r['devices'], devices,
                              plan['batch_per_replica'])
    run = run_lib.build(config_n, devices)
    state, batch = run.init_state(), run.synthetic_batch(config.seed)
    compiled, _ = measure_lib.compile_train_step(run, state, batch)
    step = measure_lib.time_steps(compiled, state, batch, steps, warmup)['step_seconds']
    r['measured_step_seconds'] = step
    r['measured_images_per_second'] = config_n.batch_size / step
    r['measured_on'] = devices[0].device_kind
    log(f'{r["strategy"]}/{r["devices"]}: measured {r["measured_images_per_second"]:,.0f} '
        f'images/s on {devices[0].device_kind}, predicted '
        f'{r["predicted_images_per_second"]["with_overlap"]:,.0f}')


def winners(runs: Sequence[dict]) -> dict:
  """The strategy with the most predicted images/s (with overlap) at each device count."""
  best = {}
  for r in runs:
    ips = r['predicted_images_per_second']['with_overlap']
    if r.get('fits') is False:
      continue
    if r['devices'] not in best or ips > best[r['devices']][1]:
      best[r['devices']] = (r['strategy'], ips)
  return {str(n): s for n, (s, _) in sorted(best.items())}


# --- Writing it down. ---

def _mb(x: Optional[float]) -> str:
  return '-' if x is None else f'{x / 1e6:,.1f}'


def markdown(plan: dict) -> str:
  """plan.md: the predicted scaling table, the winners, the compiled bytes against the formula
  with every difference explained, and the profile with its sources."""
  p = plan['profile']
  per_shard = plan['batch_per_replica'] or "the config's"
  lines = [
      f'# Pod plan: {p["name"]} ({plan["target"]}), {plan["date"]}', '',
      f'**{plan["label"]}.** Compiled by {plan["compiler"]}'
      + (f' for {p["compiled_as"]} (no compiler here targets this machine: the program, its '
         'collectives and FLOPs are that target\'s)' if p['compiled_as'] else '') + '; '
      f'{plan["dtype"]}, {plan["image_size"]}x{plan["image_size"]}, '
      f'{per_shard} images per batch shard, augmentation on the '
      f'{plan["runs"][0]["augment_on"] if plan["runs"] else "-"}. Bytes are per '
      'device per step (ring convention); the step time is the range between no overlap and '
      'the overlap the compiled schedule allows.', '',
      '| strategy | devices | hosts | batch | MB/step compiled | MB/step formula | memory GB '
      '(fits) | GFLOP/device | compute ms | comm ms | step ms (overlap..none) | images/s '
      '(predicted) | input images/s | limit | compile s |',
      '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for r in plan['runs']:
    s = r['predicted_step_seconds']
    mem = r['memory_per_device_bytes']
    lines.append(
        f'| {r["strategy"]} | {r["devices"]} | {r["hosts"]} | {r["batch_size"]} | '
        f'{_mb(r["bytes_per_step"])} | {_mb(r["analytic_bytes_per_step"])} | '
        f'{"-" if mem is None else f"{mem / 1e9:.2f}"} '
        f'({"-" if r["fits"] is None else "yes" if r["fits"] else "NO"}) | '
        f'{r["flops_per_device"] / 1e9:,.1f} | {r["predicted_compute_seconds"] * 1e3:.2f} | '
        f'{r["predicted_communication_seconds"] * 1e3:.2f} | '
        f'{s["with_overlap"] * 1e3:.2f}..{s["no_overlap"] * 1e3:.2f} | '
        f'{r["predicted_images_per_second"]["with_overlap"]:,.0f} | '
        f'{r.get("input_images_per_second", 0):,.0f} | {r.get("limited_by", "-")} | '
        f'{"cached" if r["cached"] else round(r["compile_seconds"], 1)} |')
  for label, why in plan['skipped'].items():
    lines.append(f'| {label} | skipped: {why} |' + ' |' * 13)
  if p.get('reported_images_per_second'):
    lines += ['', f'Measured on this hardware and reported by its source: '
              f'{p["reported_images_per_second"]:,.0f} images/s '
              f'({p["sources"].get("reported_images_per_second", "")}).']
  measured = [r for r in plan['runs'] if r.get('measured_images_per_second')]
  if measured:
    lines += ['', '**Measured on ' + measured[0]['measured_on'] + '** beside predicted: ' + ', '.join(
        f'{r["strategy"]}/{r["devices"]} {r["measured_images_per_second"]:,.0f} images/s '
        f'(predicted {r["predicted_images_per_second"]["with_overlap"]:,.0f})' for r in measured)]
  lines += ['', '**Winner at each size** (predicted images/s with overlap, among those that fit): '
            + ', '.join(f'{n} devices: {s}' for n, s in plan['winners'].items()), '',
            '## Compiled bytes against the formula, per layer', '',
            'MB per device per step, compiled / formula; every layer that differs, and every '
            'collective the compiler combined or added, is named below the table.', '',
            '| strategy | devices | ' + ' | '.join(LAYERS) + f' | {LOSS} |',
            '|---|---|' + '---|' * (len(LAYERS) + 1)]
  for r in plan['runs']:
    e = r['explanations']['layers']
    cells = [f'{_mb(e[l]["compiled_bytes"])} / {_mb(e[l]["analytic_bytes"])}' if l in e else '-'
             for l in LAYERS + (LOSS,)]
    lines.append(f'| {r["strategy"]} | {r["devices"]} | ' + ' | '.join(cells) + ' |')
  lines += ['']
  for r in plan['runs']:
    e = r['explanations']
    notes = [f'{layer}: {"; ".join(x["notes"])}' for layer, x in e['layers'].items()
             if x['notes']]
    notes += [f'combined: {c["kind"]} {name} carries {c["arrays"]} arrays of '
              f'{", ".join(c["layers"])} (attributed by {" and ".join(c["attributed_by"])})'
              for name, c in e['combined'].items()]
    if notes:
      lines.append(f'- **{r["strategy"]} / {r["devices"]}**: ' + ' | '.join(notes))
  lines += ['', '## Profile', '', '| field | value | source |', '|---|---|---|']
  for field, value in list(p['numbers'].items()) + [('inside', p['inside']),
                                                    ('between', p['between'])]:
    lines.append(f'| {field} | {value} | {p["sources"].get(field, "-")} |')
  return '\n'.join(lines) + '\n'


def chart(plan: dict) -> bytes:
  """plan.png: predicted images/s per device against log2(devices) per strategy (with overlap),
  with the hosts' input ceiling per device (flat lines scale perfectly); below, communication's
  share of the step (no overlap)."""
  image = Image.new('RGB', (900, 760), 'white')
  by = {}
  for r in plan['runs']:
    by.setdefault(r['strategy'], []).append(r)
  series, shares = [], []
  for name, rs in by.items():
    rs = sorted(rs, key=lambda r: r['devices'])
    xs = [math.log2(r['devices']) for r in rs]
    series.append((name, xs, [r['predicted_images_per_second']['with_overlap'] / r['devices']
                              for r in rs]))
    shares.append((name, xs, [100 * r['predicted_communication_seconds'] /
                              r['predicted_step_seconds']['no_overlap'] for r in rs]))
  ceiling = sorted({(r['devices'], r['input_images_per_second'] / r['devices'])
                    for r in plan['runs'] if 'input_images_per_second' in r})
  if ceiling:
    series.append(('host input', [math.log2(n) for n, _ in ceiling], [c for _, c in ceiling]))
  line_chart(image, (10, 10, 890, 420), f'{plan["label"]}: images/s per device', series,
             x_label='log2(devices)', markers=True)
  line_chart(image, (10, 430, 890, 750), 'communication, % of the step without overlap '
             '(predicted)', shares, x_label='log2(devices)', markers=True)
  return png_bytes(image)


def write(plan: dict, out_dir: str) -> None:
  write_report(out_dir, 'plan', plan, markdown(plan), chart(plan))
