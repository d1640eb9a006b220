"""Compiling a strategy's train step for a target this machine may lack, and reading it.

    job = compile.lower(label, config, devices, profile, cache_dir, topology)
    compile.compile_all([job])          # the compiler's outputs, unless the cache has them
    entry = compile.analyse(job, profile)

The real train step (run.build on the target's devices, `jax.experimental.topologies`, or a
machine's own) is lowered here and compiled by the target's own compiler without being run; from
the compiled program come its ops in scheduled order and its collectives (program/analysis.py,
program/hlo.py: kind, bytes, layer, group, whether asynchronous), which link each collective
crosses, and XLA's memory analysis and FLOP count. The plan (plan.py), its validation against the
published runs (validation.py) and the calibration's fit (calibration.py) all compile this way.

Compiled programs are cached (keyed by the lowered program, the target, the compiler's version
and the compiler options: config.overlap_collectives, core/run.py OVERLAP_OPTIONS), so a second plan of the same configs only lowers.
"""

import concurrent.futures
import dataclasses
import gzip
import hashlib
import importlib.metadata
import json
import os
import time
from typing import Any, Optional, Sequence

import jax
import ml_collections

from alexnet_jax.core import layerwise
from alexnet_jax.core import run as run_lib
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import analysis
from alexnet_jax.program import formula
from alexnet_jax.program import measure as measure_lib
from alexnet_jax.runtime import paths


def default_cache_dir() -> str:
  return os.path.join(os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
                      'alexnet_jax', 'compiled')


def compiler_version(profile: targets_lib.Profile) -> str:
  for package in {'tpu': ('libtpu',),
                  'gpu': ('jax-cuda12-plugin', 'jax-cuda13-plugin')}[profile.compiler]:
    try:
      return f'jax {jax.__version__}, {package} {importlib.metadata.version(package)}'
    except importlib.metadata.PackageNotFoundError:
      continue
  return f'jax {jax.__version__}'


def replica_config(config: ml_collections.ConfigDict, parallelism: str, num_devices: int,
                   devices: Sequence, batch_per_replica: int) -> ml_collections.ConfigDict:
  """`config` for one strategy on `num_devices`, with `batch_per_replica` examples per batch
  shard (0: the config's global batch). The evaluation batch follows the training batch, as for
  every tool that compiles the train step only (measure.train_step_only)."""
  config = measure_lib.strategy_config(config, parallelism, num_devices)
  if batch_per_replica:
    config.batch_size = batch_per_replica * batch_shards(config, parallelism, num_devices,
                                                         devices)
  return measure_lib.train_step_only(config)


def batch_shards(config: ml_collections.ConfigDict, parallelism: str, num_devices: int,
                 devices: Sequence) -> int:
  """How many ways `parallelism` on `num_devices` of `devices` splits the global batch."""
  net = run_lib.network(config, devices[0].platform)
  return layerwise.make_strategy(parallelism, net, devices, num_devices,
                                spec_path=config.layerwise).batch_shards


def _links(groups: list, devices: Sequence, profile: targets_lib.Profile,
           topology: str = '') -> dict:
  """Which link a collective's groups cross; (TPU) the extent of each torus axis they span and
  the slice's shape; (PCIe) how many peer groups one group spans (devices in order, filled
  peer group by peer group)."""
  unit = ((lambda d: getattr(d, 'slice_index', None) or 0) if profile.compiler == 'tpu'
          else (lambda d: d.process_index))
  between = any(len({unit(devices[i]) for i in g}) > 1 for g in groups)
  out = {'crosses': 'between' if between else 'inside', 'extents': []}
  if profile.compiler == 'tpu' and not between:
    coords = [[tuple(devices[i].coords) for i in g] for g in groups]
    extents = [max(len({c[axis] for c in group}) for group in coords) for axis in range(3)]
    out['extents'] = [e for e in extents if e > 1]
    shape = topology.split(':')[-1] if ':' in topology else ''
    out['slice_shape'] = [int(x) for x in shape.split('x') if x] if shape else out['extents']
  peer = int(profile.inside.get('peer_group', 0) or 0)
  if peer and not between:
    out['peer_groups'] = max(len({i // peer for i in g}) for g in groups)
  return out


def _instructions(collectives: list, devices: Sequence, profile: targets_lib.Profile,
                  topology: str = '') -> dict:
  out = {}
  for c in collectives:
    entry = out.setdefault(c.instruction, {
        'kind': c.kind, 'group_size': c.group_size, 'bytes_per_device': 0.0,
        'asynchronous': c.asynchronous, 'overlap_ops': c.overlap_ops, 'layers': [],
        'operands': 0, **_links(c.groups, devices, profile, topology)})
    if c.groups and 'members' not in entry:  # each group's devices, in rank order (linkgraph)
      entry['members'] = [int(i) for i in c.groups[0]]
      entry['other_groups'] = [[int(i) for i in g] for g in c.groups[1:]]
    entry['bytes_per_device'] += c.bytes_per_device
    entry['operands'] += 1
    if c.layer not in entry['layers']:
      entry['layers'].append(c.layer)
  return out


# Public: the search (search.py) times collectives it has not compiled, as the plan's entries.
instructions = _instructions


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


def cache_path(lowered_text: str, profile: targets_lib.Profile, devices: Sequence,
               options: dict, cache_dir: Optional[str]) -> Optional[str]:
  """Where the compile of a lowered program is cached (None: no cache): keyed by the program,
  the target, the compiler's version, the devices and the compiler options."""
  if not cache_dir:
    return None
  key = hashlib.sha256('\n'.join([
      lowered_text, profile.compiler, profile.topology, profile.target_config,
      compiler_version(profile), str([str(d) for d in devices]),
      json.dumps(options, sort_keys=True)]).encode()).hexdigest()[:24]
  return paths.join(cache_dir, f'{key}.json.gz')


def lower(label: str, config: ml_collections.ConfigDict, devices: Sequence,
          profile: targets_lib.Profile, cache_dir: Optional[str], topology: str) -> Job:
  """Builds and lowers one strategy's train step (cheap), and looks up what the compiler made of
  it before (the optimized program's text, its memory analysis and FLOPs), keyed by the lowered
  program, the target and the compiler's version. The analysis is not cached: it is redone from
  the compiler's output every time."""
  run = run_lib.build(config, devices)
  lowered = run.train_step.lower(run.abstract_state, run.abstract_batch())
  # The compiler options the step is compiled with (config.overlap_collectives: run.build gives
  # them to the train step's jit, and its lowered program carries them to the compiler).
  options = run_lib.overlap_options(config, run.devices[0].platform)
  path = cache_path(lowered.as_text(), profile, run.devices, options, cache_dir)
  job = Job(label, config, run, lowered, path, topology)
  if path and paths.exists(path):
    job.compiled = dict(json.loads(gzip.decompress(paths.read_bytes(path))), cached=True)
  return job


def analyse(job: Job, profile: targets_lib.Profile) -> dict:
  """One strategy's compiled facts: ops, collectives, bytes against the formula, memory, FLOPs
  (analysis.compiled_step, as comms reads its own compiled step)."""
  config, run, out = job.config, job.run, job.compiled
  n = run.strategy.num_devices
  step = analysis.compiled_step(run, config, out['hlo'])
  collectives = step.pop('collectives')
  return {
      'strategy': config.parallelism, 'devices': n, 'topology': job.topology,
      'mesh': dict(run.mesh.shape), 'batch_size': config.batch_size,
      'augment_on': run.augment_on, 'input_path': config.resized or run.augment_on,
      'batch_shards': run.strategy.batch_shards,
      'hosts': len({d.process_index for d in run.devices}),
      'compile_seconds': out['compile_seconds'], 'cached': out.get('cached', False),
      'memory_per_device': out['memory'],
      # XLA's count where the compiler gives one (TPU), else the ops' (GPU gives none).
      'compiled_flops_per_device': out['flops'] or step['op_flops_per_device'],
      'analytic_flops_per_device': formula.step_flops(run.net, config.image_size,
                                                      config.batch_size) / n,
      'collectives': [c.to_json() for c in collectives],
      'instructions': _instructions(collectives, run.devices, profile, job.topology),
      **step,
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
    paths.makedirs(paths.dirname(job.cache_path))
    paths.replace_bytes(job.cache_path, gzip.compress(json.dumps(out).encode()))
  return out


def compile_all(jobs: Sequence[Job], workers: int = 0) -> None:
  """Compiles the jobs the cache lacks, `workers` at a time (0: one per CPU)."""
  todo = [j for j in jobs if j.compiled is None]
  with concurrent.futures.ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
    for job, out in zip(todo, pool.map(_compile, todo)):
      job.compiled = out
