"""The search: every layer's partitioning on a target, an exact dynamic program over the chain,
and the winners compiled whole.

    python -m alexnet_jax.plan --search --config=configs/paper.py --target=tpu-v5e \
        --devices=2,4,8,16,64 --out=DIR

AlexNet is a chain of eight weight layers, so (as OptCNN observed) the best per-layer
partitioning is a shortest path: a node per (layer, split), costing the layer's compute and its
parameters' gradient exchange; an edge per pair of neighbouring splits, costing the resharding
between them. Both are read off the spec's collectives (formula.layer_collectives, the formula
that test_layerwise holds compiled programs to, layer by layer) and timed with the plan's cost
model (costmodel.predict_step on the target's links: the groups of each collective on the
target's own devices); compute is the layer's FLOPs per device at the profile's peak times the
efficiency. Memory per device (parameters, momentum and gradients, and the activations kept for
the backward pass) is additive over layers too, so the program keeps, per (layer, split), every
assignment that no other beats on both time and memory, and drops those past the device's
memory: exact, with memory as a constraint.

Meshes: (x=N) and every (x=a, y=N/a). Per layer, the candidates are every split of layerwise.py
over the mesh's axes that divides the layer's shapes and the batch; the others are listed with
the reason (`refused`). The best few assignments are then written as specs, compiled whole by
the target's compiler (pods/compile.py: cached, so a second search only lowers) and predicted
as the plan predicts any program; the gap between the additive cost and the whole program's
prediction is reported. The five hand-written strategies are points of the same space
(layerwise.hand_written) and are costed the same way beside them.

Every figure is PREDICTED.
"""

import itertools
import math
import os
import time
import types
from typing import Any, Callable, Optional, Sequence

import ml_collections
import numpy as np

from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import layercost
from alexnet_jax.pods import plan as plan_lib
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import formula
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.pods import search_report
from alexnet_jax.report.write import write_report

LAYERS = strategies.LAYERS
PREDICTED = plan_lib.PREDICTED
Split = layerwise.Split


def meshes(n: int) -> list[tuple[tuple[str, int], ...]]:
  """The 1-D mesh and every 2-D mesh of n devices (both axes at least 2)."""
  out = [(('x', n),)]
  out += [(('x', a), ('y', n // a)) for a in range(2, n // 2 + 1) if n % a == 0]
  return out


def _subsequences(axes: Sequence[str]) -> list[tuple[str, ...]]:
  return [tuple(a for a, keep in zip(axes, mask) if keep)
          for mask in itertools.product((False, True), repeat=len(axes))]


def candidates(net: model_lib.Tower, mesh: tuple, layer: str, batch_size: int
               ) -> tuple[list[Split], list[str]]:
  """(the splits `layer` can take on `mesh`, the ones refused and why). Axes keep the mesh's
  order within a dimension: another order is the same split with the blocks renumbered."""
  sizes = dict(mesh)
  names = [a for a, _ in mesh]
  found, refused = [], []
  for batch in _subsequences(names):
    towers = [''] + [a for a in names if a not in batch and sizes[a] == 2 and net.num_towers == 2]
    for tower in towers:
      rest = [a for a in names if a not in batch and a != tower]
      for out in _subsequences(rest):
        for params in (('replicated', 'sharded') if batch else ('replicated',)):
          s = Split(batch, tower, out, params)
          spec = layerwise.Spec(mesh, tuple((l, s if l == layer else Split()) for l in LAYERS))
          why = [p for p in layerwise.problems(spec, net) if p.startswith(f'layers.{layer}')]
          shards = math.prod(sizes[a] for a in batch)
          if batch_size % shards:
            why.append(f'layers.{layer}: the batch of {batch_size} does not split over {shards}')
          if why:
            refused.append('; '.join(why))
          else:
            found.append(s)
  return found, refused


def layer_flops(net: model_lib.Tower, macs: dict, layer: str, s: Split, sizes: dict,
                batch_size: int) -> float:
  """FLOPs of `layer` per device per step: 2 per multiply-add, forward and backward (conv1: no
  input gradient), on this device's examples and share of the towers and outputs."""
  shards = lambda axes: math.prod(sizes[a] for a in axes)
  per_image = 2.0 * macs[layer] * (2 if layer == 'conv1' else 3)
  return per_image * batch_size / shards(s.batch) / shards(s.channels)


def layer_memory(table: dict, per_image: dict, layer: str, s: Split, sizes: dict,
                 batch_size: int, act_bytes: int) -> float:
  """Bytes per device the layer holds: its parameters, momentum and gradients in float32 (split
  over towers and outputs, and sharded over the batch axes), and its output and the output's
  gradient in the compute dtype. An estimate, additive over layers; the compiled program's own
  memory analysis is reported beside it for the winners."""
  shards = lambda axes: math.prod(sizes[a] for a in axes)
  params = sum(math.prod(shape) for shape in table[layer]['leaves'].values())
  params /= shards(s.channels)
  if s.params == 'sharded':
    params /= shards(s.batch)
  acts = batch_size * per_image[layer] / shards(s.batch) / shards(s.channels)
  return 3 * 4 * params + 2 * act_bytes * acts


class Coster:
  """Times of collectives and compute on one target and mesh, through costmodel.predict_step."""

  def __init__(self, profile: targets_lib.Profile, mesh: tuple, devices: Sequence,
               topology: str, efficiency: float, dtype: str):
    self.profile, self.efficiency, self.dtype = profile, efficiency, dtype
    names = tuple(a for a, _ in mesh)
    m = strategies.make_mesh(tuple(n for _, n in mesh), names, devices)
    index = {id(d): i for i, d in enumerate(devices)}
    self.ids = np.vectorize(lambda d: index[id(d)], otypes=[int])(m.devices)
    self.names, self.devices, self.topology = names, list(devices), topology
    self._cache: dict = {}

  def groups(self, axes: tuple) -> list[list[int]]:
    inside = [self.names.index(a) for a in axes]
    outside = [i for i in range(len(self.names)) if i not in inside]
    size = math.prod(self.ids.shape[i] for i in inside)
    return self.ids.transpose(outside + inside).reshape(-1, size).tolist()

  def seconds(self, collectives: Sequence[tuple], flops: float = 0.0) -> float:
    """The predicted seconds of these collectives (part, kind, axes, bytes) and FLOPs, one after
    the other (no overlap), as predict_step times a program that holds only them."""
    key = (tuple(collectives), flops)
    if key not in self._cache:
      found = [types.SimpleNamespace(
          instruction=f'c{i}', kind=kind, groups=self.groups(axes), bytes_per_device=size,
          group_size=len(self.groups(axes)[0]), asynchronous=False, overlap_ops=0, layer='')
               for i, (_, kind, axes, size) in enumerate(collectives)]
      instructions = compile_lib.instructions(found, self.devices, self.profile, self.topology)
      entry = {'instructions': instructions, 'ops': [], 'heavy_ops': 0,
               'compiled_flops_per_device': flops, 'analytic_flops_per_device': flops}
      step = costmodel.predict_step(entry, self.profile, self.efficiency, self.dtype)
      self._cache[key] = step['step_seconds']['no_overlap']
    return self._cache[key]


def dynamic_program(nodes: list[list[tuple[float, float]]],
                    edge: Callable[[int, int, int], float], capacity: float,
                    keep: int = 3) -> list[tuple[float, float, tuple[int, ...]]]:
  """The fastest assignments of a chain: `nodes[l][i]` = (seconds, bytes) of choice i at layer
  l, `edge(l, i, j)` the seconds from choice i at layer l - 1 to j at layer l. Per (layer,
  choice) it keeps every partial assignment no other beats on both time and memory (the Pareto
  front), so the fastest one within `capacity` bytes is exact; it returns up to `keep` of the
  fastest feasible full assignments, as (seconds, bytes, choices), fastest first."""
  fronts = [[(t, m, (i,))] if m <= capacity else [] for i, (t, m) in enumerate(nodes[0])]
  for l in range(1, len(nodes)):
    new = []
    for j, (t, m) in enumerate(nodes[l]):
      options = sorted((pt + edge(l, path[-1], j) + t, pm + m, path + (j,))
                       for front in fronts for pt, pm, path in front if pm + m <= capacity)
      kept, least = [], math.inf
      for option in options:  # by time: keep one only if it needs less memory than all faster
        if option[1] < least or len(kept) < keep:
          kept.append(option)
          least = min(least, option[1])
      new.append(kept)
    fronts = new
  return sorted(o for front in fronts for o in front)[:keep]


def search_mesh(net: model_lib.Tower, mesh: tuple, coster: Coster, batch_size: int,
                image_size: int, capacity: float, act_bytes: int, keep: int = 3,
                compiled: Optional[layercost.Compiled] = None) -> dict:
  """The best assignments on one mesh (additive predicted seconds), the candidates and refusals.
  With `compiled`, nodes and edges are timed from their compiled programs (pods/layercost.py);
  where the target's compiler refuses one, from the formula, and 'costs' says which."""
  sizes = dict(mesh)
  table = formula.layer_table(net, image_size)
  per_image = formula.activation_per_image(net, image_size)
  macs = model_lib.layer_macs(net, image_size)
  options, refused = {}, {}
  for layer in LAYERS:
    options[layer], refused[layer] = candidates(net, mesh, layer, batch_size)
  if not all(options.values()):
    return {'mesh': dict(mesh), 'best': [], 'candidates': {l: 0 for l in LAYERS},
            'refused': refused}
  collect = lambda prev, layer, s: formula.layer_collectives(
      net, image_size, batch_size, sizes, prev, layer, s, 4, act_bytes, None, table, per_image)
  nodes = [[(coster.seconds([c for c in collect(None, layer, s) if c[0] == 'params'],
                            layer_flops(net, macs, layer, s, sizes, batch_size)),
             layer_memory(table, per_image, layer, s, sizes, batch_size, act_bytes))
            for s in options[layer]] for layer in LAYERS]
  cache: dict = {}
  used = 'formula'
  if compiled is not None:
    flops = {l: [layer_flops(net, macs, l, s, sizes, batch_size) for s in options[l]]
             for l in LAYERS}
    try:
      seconds, cache = layercost.costs(compiled, options, flops)
      nodes = [[(t, m) for t, (_, m) in zip(ts, row)] for ts, row in zip(seconds, nodes)]
      used = f'compiled ({compiled.counts[0]} compiled, {compiled.counts[1]} cached)'
    except (ValueError, TypeError, RuntimeError) as e:  # the compiler's refusal: the formula
      used, cache = f'formula (a per-layer compile was refused: {str(e)[:200]})', {}

  def edge(l, i, j):
    if (l, i, j) not in cache:
      layer, prev, s = LAYERS[l], options[LAYERS[l - 1]][i], options[LAYERS[l]][j]
      cache[l, i, j] = coster.seconds([c for c in collect(prev, layer, s) if c[0] == 'reshard'])
    return cache[l, i, j]

  best = dynamic_program(nodes, edge, capacity, keep)
  out = []
  for seconds, memory, path in best:
    spec = layerwise.Spec(mesh, tuple((l, options[l][i]) for l, i in zip(LAYERS, path)))
    out.append({'spec': spec, 'additive_seconds': seconds, 'memory_estimate_bytes': memory})
  return {'mesh': dict(mesh), 'best': out, 'refused': refused, 'costs': used,
          'candidates': {l: len(options[l]) for l in LAYERS}}


def additive_seconds(spec: layerwise.Spec, net: model_lib.Tower, coster: Coster,
                     batch_size: int, image_size: int, act_bytes: int) -> float:
  """A whole spec's additive cost (nodes and edges), as the dynamic program counts it."""
  macs = model_lib.layer_macs(net, image_size)
  table = formula.layer_table(net, image_size)
  per_image = formula.activation_per_image(net, image_size)
  total, prev = 0.0, None
  for layer, s in spec.layers:
    found = formula.layer_collectives(net, image_size, batch_size, spec.sizes, prev, layer, s,
                                      4, act_bytes, None, table, per_image)
    total += coster.seconds(found, layer_flops(net, macs, layer, s, spec.sizes, batch_size))
    prev = s
  return total


def describe(spec: layerwise.Spec) -> str:
  """One line per spec, each run of layers with its split: conv1-5 b['x']; fc6-8 t[x]o['y'] (b
  batch, t towers, o output channels, S sharded parameters, r computed whole on every device)."""
  word = lambda s: ''.join(filter(None, (
      f'b{list(s.batch)}' if s.batch else '', f't[{s.tower}]' if s.tower else '',
      f'o{list(s.out)}' if s.out else '', 'S' if s.params == 'sharded' else ''))) or 'r'
  runs: list[list] = []  # [first layer, last layer, word]
  for layer, s in spec.layers:
    if runs and word(s) == runs[-1][2]:
      runs[-1][1] = layer
    else:
      runs.append([layer, layer, word(s)])
  name = lambda a, b: a if a == b else (
      f'{a}-{b[-1]}' if a.rstrip('0123456789') == b.rstrip('0123456789') else f'{a}-{b}')
  return f'mesh {dict(spec.mesh)}: ' + '; '.join(f'{name(a, b)} {w}' for a, b, w in runs)


# --- The search of one target at several device counts, and its report. ---

def _spec_json(spec: layerwise.Spec) -> dict:
  return {'mesh': dict(spec.mesh), 'layers': {l: {'batch': list(s.batch), 'tower': s.tower,
                                                   'out': list(s.out), 'params': s.params}
                                               for l, s in spec.layers}}


def search_size(config: ml_collections.ConfigDict, net: model_lib.Tower,
                profile: targets_lib.Profile, n: int, batch_size: int, efficiency: float,
                keep: int, log: Callable[[str], Any], costs: str = 'formula',
                cache_dir: Optional[str] = None) -> dict:
  """The found assignments at n devices (every mesh) and the five costed by the formula."""
  topology = targets_lib.topology_name(profile, n)
  devices = targets_lib.devices(profile, n)
  act_bytes = np.dtype(config.model.dtype).itemsize
  capacity = profile.per_device('memory_bytes')
  size = {'devices': n, 'batch_size': batch_size, 'topology': topology, 'meshes': [],
          'hand_written': {}}
  found = []
  for mesh in meshes(n):
    coster = Coster(profile, mesh, devices, topology, efficiency, config.model.dtype)
    start = time.perf_counter()
    compiled = None if costs == 'formula' else layercost.Compiled(
        net, mesh, devices, profile, topology, efficiency, config.model.dtype, batch_size,
        config.image_size, cache_dir)
    r = search_mesh(net, mesh, coster, batch_size, config.image_size, capacity, act_bytes, keep,
                    compiled)
    reasons = sorted({part.split(': ', 1)[-1] for whys in r['refused'].values()
                      for why in whys for part in why.split('; ')})
    size['meshes'].append({'mesh': r['mesh'], 'candidates': r['candidates'], 'costs': r['costs'],
                           'refused': sum(len(v) for v in r['refused'].values()),
                           'refused_reasons': reasons,
                           'seconds_to_search': time.perf_counter() - start})
    found += r['best']
  found.sort(key=lambda f: f['additive_seconds'])
  size['found'] = [{'spec': _spec_json(f['spec']), 'describe': describe(f['spec']),
                    'additive_seconds': f['additive_seconds'],
                    'memory_estimate_bytes': f['memory_estimate_bytes'], '_spec': f['spec']}
                   for f in found[:keep]]
  for name in strategies.STRATEGIES:
    if strategies.fit_error(name, n, net) is not None:
      continue
    spec = layerwise.hand_written(name, n, net.num_towers)
    if batch_size % spec.batch_shards():
      continue
    coster = Coster(profile, spec.mesh, devices, topology, efficiency, config.model.dtype)
    size['hand_written'][name] = additive_seconds(spec, net, coster, batch_size,
                                                  config.image_size, act_bytes)
  if size['found'] and size['hand_written']:
    best = min(size['hand_written'], key=size['hand_written'].get)
    size['best_hand_written'] = best
    size['gain'] = size['hand_written'][best] / size['found'][0]['additive_seconds']
    log(f'{n} devices: found {size["found"][0]["describe"]}: PREDICTED '
        f'{batch_size / size["found"][0]["additive_seconds"]:,.0f} images/s, '
        f'{size["gain"]:.2f}x {best}')
  return size


def _whole(job: compile_lib.Job, profile: targets_lib.Profile, efficiency: float, dtype: str,
           additive: float) -> dict:
  """The plan's prediction of one compiled whole program, beside its additive cost."""
  entry = compile_lib.analyse(job, profile)
  pred = plan_lib.predict(entry, profile, efficiency, dtype, None)
  whole = pred['predicted_step_seconds']
  return {'step_seconds': whole, 'memory_bytes': pred['memory_per_device_bytes'],
          'fits': pred['fits'], 'cached': entry['cached'],
          'bytes_per_step': entry['bytes_per_step'],
          'formula_bytes_per_step': entry['analytic_bytes_per_step'],
          'bytes_by_layer': entry['bytes_per_step_by_layer'],
          'formula_bytes_by_layer': entry['analytic_bytes_per_step_by_layer'],
          'gap': whole['no_overlap'] / additive - 1}


def whole_gain(size: dict) -> None:
  """The found specs against the five, each side at its fastest compiled whole program (no
  overlap): size['gain_whole'] (> 1: the search wins), with the rank and the strategy it
  compares. Nothing is set where either side has no compiled program."""
  found = [(f['whole']['step_seconds']['no_overlap'], k + 1)
           for k, f in enumerate(size['found']) if 'step_seconds' in f.get('whole', {})]
  five = [(w['step_seconds']['no_overlap'], name)
          for name, w in size.get('hand_written_whole', {}).items() if 'step_seconds' in w]
  if found and five:
    (t_found, rank), (t_five, name) = min(found), min(five)
    size.update(best_whole_rank=rank, best_hand_written_whole=name, gain_whole=t_five / t_found)


def compile_whole(config: ml_collections.ConfigDict, profile: targets_lib.Profile,
                  sizes: list, out: str, efficiency: float, cache_dir: Optional[str],
                  compile_top: int, log: Callable[[str], Any]) -> None:
  """Writes each size's found specs (out/specs/), compiles the best `compile_top` of each whole
  and the five hand-written strategies at the same global batch (all cached: a second search
  only lowers), and puts the plan's prediction of each whole program beside its additive cost:
  the gap says what the sum of the parts misses, the whole-program gain is the comparison that
  does not rest on it."""
  jobs = []  # (where the result goes, key, additive seconds, job)
  os.makedirs(os.path.join(out, 'specs'), exist_ok=True)
  for size in sizes:
    n = size['devices']
    devices = targets_lib.devices(profile, n)
    c = config.copy_and_resolve_references()
    c.batch_size = size['batch_size']
    for k, f in enumerate(size['found']):
      path = os.path.join(out, 'specs', f'{profile.key}-{n}-{k + 1}.toml')
      with open(path, 'w') as fh:
        fh.write(layerwise.to_toml(f.pop('_spec'), f'{PREDICTED}: found by the search for '
                                   f'{profile.key} at {n} devices (rank {k + 1})'))
      f['spec_file'] = os.path.relpath(path, out)
      if k >= compile_top:
        continue
      c.layerwise = path
      c_k = compile_lib.replica_config(c, layerwise.NAME, n, devices, 0)
      why = measure_lib.skip_reason(c_k, devices)
      if why:
        f['whole'] = {'skipped': why}
        continue
      jobs.append((f, 'whole', f['additive_seconds'], compile_lib.lower(
          f'layerwise/{n}/{k + 1}', c_k, devices, profile, cache_dir, size['topology'])))
    size['hand_written_whole'] = {}
    for name, additive in size['hand_written'].items():
      c_k = compile_lib.replica_config(c, name, n, devices, 0)
      why = measure_lib.skip_reason(c_k, devices)
      size['hand_written_whole'][name] = {'skipped': why} if why else {}
      if not why:
        jobs.append((size['hand_written_whole'], name, additive, compile_lib.lower(
            f'{name}/{n}', c_k, devices, profile, cache_dir, size['topology'])))
  todo = [j for *_, j in jobs if j.compiled is None]
  log(f'compiling {len(todo)} whole programs ({len(jobs) - len(todo)} cached) ...')
  compile_lib.compile_all(todo)
  for where, key, additive, job in jobs:
    where[key] = _whole(job, profile, efficiency, config.model.dtype, additive)
  for size in sizes:
    whole_gain(size)


def run_search(config: ml_collections.ConfigDict, target: str, counts: Sequence[int], *,
               out: str, batch_per_device: int = 128, efficiency: float = plan_lib.ASSUMED_EFFICIENCY,
               cache_dir: Optional[str] = None, keep: int = 3, compile_top: int = 3,
               costs: str = 'formula', log: Callable[[str], Any] = print) -> dict:
  """The search of `config` on `target` at each of `counts` devices, written to `out`
  (search.json, search.md, search.png, specs/*.toml). The global batch is `batch_per_device` x
  N for the found strategies and the five alike, so their step times compare."""
  start = time.perf_counter()
  profile = targets_lib.load(target)
  why = targets_lib.compiler_missing(profile)
  if why:
    raise targets_lib.TargetError(why)
  costmodel.compute_peak(profile, config.model.dtype)
  net = model_lib.make_network(config.model, config.model.num_classes)
  sizes = [search_size(config, net, profile, n, batch_per_device * n, efficiency, keep, log,
                       costs, cache_dir) for n in counts]
  searched = time.perf_counter() - start
  compile_whole(config, profile, sizes, out, efficiency, cache_dir, compile_top, log)
  result = {'target': profile.key, 'profile_name': profile.name,
            'label': f'{PREDICTED}: {profile.name}, compute at {efficiency:.0%} of peak (assumed)',
            'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'dtype': config.model.dtype, 'image_size': config.image_size,
            'batch_per_device': batch_per_device, 'efficiency': efficiency, 'sizes': sizes,
            'costs': costs,
            'seconds_to_search': searched, 'seconds_total': time.perf_counter() - start}
  write_report(out, 'search', result, search_report.markdown, search_report.chart,
               chart_optional=True)
  return result
