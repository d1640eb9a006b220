"""The search's costs read from compiled programs: one layer, or one resharding edge, compiled by
the target's compiler as a small program and timed with the plan's cost model.

    python -m alexnet_jax.plan --search --search_costs=compiled ...

The formula path (pods/search.py) times each node and edge from the collectives the spec's
formula says it moves, and the layer's FLOPs at the profile's peak; it misses what the compiled
program spends beside those: the memory-bound ops (pooling, LRN, the element-wise work, copies
around collectives) that the plan's cost model times from the compiled program's ops. Here a
node is the layer's forward and backward on its device's block (layerwise.layer_body under
jax.shard_map: its parameters' gradient exchange, its compute), and an edge the resharding
between two neighbours (layerwise.reshard, forward and the transpose of its backward), each
differentiated as the train step differentiates it, compiled for the target's devices, read with
the plan's analysis (hlo, ops) and timed by costmodel.predict_step (no overlap). Compiles are
cached by the lowered program as the plan's are (compile.cache_path): a second search only
lowers. Edges with the same activation shape and layouts are one program.

Dropout is not applied in the node programs (a mask multiply, memory-bound and small); the
optimizer's update is not in them (the whole program's prediction has it).
"""

import dataclasses
import gzip
import json
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import compile as compile_lib
from alexnet_jax.pods import costmodel
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import hlo
from alexnet_jax.program import ops
from alexnet_jax.runtime import paths

LAYERS = strategies.LAYERS


def input_shapes(net: model_lib.Tower, params: dict, batch_size: int, image_size: int,
                 dtype: str) -> dict:
  """Each layer's input activation (global shape), by running the chain's shapes on one device."""
  x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32)
  spec = layerwise.Spec((('x', 1),), tuple((l, layerwise.Split()) for l in LAYERS))
  out = {}
  for layer in LAYERS:
    out[layer] = x
    x = jax.eval_shape(lambda p, x, layer=layer: layerwise.layer_body(
        net, layer, layerwise.Split(), spec, p, x, None, 'float32', {}), params[layer], x)
    x = jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype) if layer != 'fc8' else x.dtype)
  return out


def _act_spec(ndim: int, batch: tuple, channels: tuple) -> P:
  one = lambda axes: (axes[0] if len(axes) == 1 else axes) if axes else None
  return P(one(batch), *[None] * (ndim - 2), one(channels))


def _as_used(y: jax.Array, used: set) -> jax.Array:
  """The activation as the next layer takes it: per device over every axis that layer uses.
  Where it was the same on all of them, its cotangent is summed over them in the backward
  pass (the transpose), a reduction the formula counts in the edge."""
  varying = jax.typeof(y).manual_axis_type.varying
  missing = tuple(sorted(a for a in used if a not in varying))
  return jax.lax.pcast(y, missing, to='varying') if missing else y


def _partial_sum(y: jax.Array) -> jax.Array:
  """This device's sum of its block, as a block of a vector over every device: the program's
  output claims no replication, and each device gets its own cotangent, as from a loss."""
  return jnp.sum(y.astype(jnp.float32)).reshape(1)


def collectives(module: hlo.Module, n: int) -> list:
  """A small program's collectives, less the harness's own: where a layer or an edge ends
  computing the same on every device, the one-per-device cotangent of its sum is all-reduced
  (the transpose of making a replicated value per-device), a float32 scalar that no train step
  moves."""
  return [c for c in hlo.parse_collectives(module, n, {}) if c.bytes_per_device > 4]


def _backward(f, argnums: tuple):
  """f's per-device sums and their gradient with respect to `argnums`, for a cotangent per
  device given as the last argument: unlike the gradient of their total, it adds no collective
  of its own, and unlike a constant one, the compiler cannot fold the backward away."""
  def run(*args_and_cotangent):
    *args, cotangent = args_and_cotangent
    y, pull = jax.vjp(lambda *picked: f(*[picked[argnums.index(i)] if i in argnums else a
                                          for i, a in enumerate(args)]),
                      *[args[i] for i in argnums])
    return y, pull(cotangent)  # the forward kept: its collectives are the step's too
  return run


@dataclasses.dataclass
class Program:
  """One small program: its lowered form, where its compile is cached, what it compiled to."""
  label: str
  lowered: object
  cache_path: Optional[str]
  analytic_flops: float
  compiled: Optional[dict] = None


class Compiled:
  """Lowers, compiles (cached) and times the node and edge programs of one mesh on a target."""

  def __init__(self, net: model_lib.Tower, mesh: tuple, devices: Sequence,
               profile: targets_lib.Profile, topology: str, efficiency: float, dtype: str,
               batch_size: int, image_size: int, cache_dir: Optional[str]):
    self.net, self.mesh, self.devices = net, mesh, list(devices)
    self.profile, self.topology, self.efficiency, self.dtype = profile, topology, efficiency, dtype
    self.cache_dir = cache_dir
    self.names = tuple(a for a, _ in mesh)
    self.jmesh = strategies.make_mesh(tuple(n for _, n in mesh), self.names, self.devices)
    self.params = jax.eval_shape(lambda k: model_lib.init_params(net, k, image_size),
                                 jax.random.key(0))
    self.inputs = input_shapes(net, self.params, batch_size, image_size, dtype)
    self.programs: dict = {}
    self.counts = (0, 0)  # (programs compiled, found in the cache) by the last costs()

  def _lower(self, key: tuple, label: str, fn, args: tuple, flops: float) -> Program:
    if key not in self.programs:
      cotangent = self._placed(jax.ShapeDtypeStruct((len(self.devices),), jnp.float32),
                               P(self.names))
      lowered = jax.jit(fn).lower(*args, cotangent)
      path = compile_lib.cache_path(lowered.as_text(), self.profile, self.devices, {},
                                    self.cache_dir)
      program = Program(label, lowered, path, flops)
      if path and paths.exists(path):
        program.compiled = dict(json.loads(gzip.decompress(paths.read_bytes(path))), cached=True)
      self.programs[key] = program
    return self.programs[key]

  def _placed(self, shape, spec: P):
    return jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                sharding=NamedSharding(self.jmesh, spec))

  def node(self, layer: str, s: layerwise.Split, flops: float) -> Program:
    """`layer` at split `s`: forward and backward of its block, its gradient exchange."""
    spec = layerwise.Spec(self.mesh, tuple((l, s if l == layer else layerwise.Split())
                                           for l in LAYERS))
    x = self.inputs[layer]
    channels = (s.tower,) if layer in layerwise.OWN_TOWER and s.tower else ()
    # The input as the train step hands it over: per device (varying) over every axis the layer
    # uses, so its cotangent is not reduced here; that reduction is the edge's (the transpose
    # of its gather). Axes it uses but does not split the input by get a copy per device.
    extra = tuple(a for a in self.names if a in s.used and a not in s.batch + channels)
    copies = math.prod(dict(self.mesh)[a] for a in extra)
    x = jax.ShapeDtypeStruct((x.shape[0] * copies,) + x.shape[1:], x.dtype)
    x_spec = _act_spec(x.ndim, s.batch + extra, channels)
    p_specs = {w: layerwise.param_spec_of(spec, layer, w, tuple(v.shape))
               for w, v in self.params[layer].items()}
    leaf_axes = {w: layerwise._sharded_axis(sp, s) for w, sp in p_specs.items()}  # pylint: disable=protected-access

    def body(p, x):
      return _partial_sum(layerwise.layer_body(self.net, layer, s, spec, p, x, None, 'float32',
                                               leaf_axes))

    def loss(p, x):
      return jax.shard_map(body, mesh=self.jmesh, in_specs=(p_specs, x_spec),
                           out_specs=P(self.names))(p, x)

    argnums = (0,) if layer == 'conv1' else (0, 1)
    args = ({w: self._placed(v, p_specs[w]) for w, v in self.params[layer].items()},
            self._placed(x, x_spec))
    return self._lower(('node', layer, s), f'{layer} {s}', _backward(loss, argnums), args,
                       flops)

  def edge(self, layer: str, prev: layerwise.Split, s: layerwise.Split) -> Program:
    """The resharding of `layer`'s input from `prev`'s output layout to the one `s` reads."""
    x = self.inputs[layer]
    have = (prev.batch, prev.channels)
    want = (s.batch, (s.tower,) if layer in layerwise.OWN_TOWER and s.tower else ())
    key = ('edge', x.shape, have, want, frozenset(s.used))
    sizes = dict(self.mesh)

    def loss(x):
      return jax.shard_map(
          lambda x: _partial_sum(_as_used(layerwise.reshard(x, have, want, s.used, sizes),
                                          s.used)),
          mesh=self.jmesh, in_specs=_act_spec(x.ndim, *have), out_specs=P(self.names))(x)

    return self._lower(key, f'{layer} {have}->{want}', _backward(loss, (0,)),
                       (self._placed(x, _act_spec(x.ndim, *have)),), 0.0)

  def compile_all(self) -> tuple[int, int]:
    """Compiles the programs the cache lacks; (compiled now, cached)."""
    todo = [p for p in self.programs.values() if p.compiled is None]
    jobs = [compile_lib.Job(p.label, None, None, p.lowered, p.cache_path, self.topology)
            for p in todo]
    compile_lib.compile_all(jobs)
    for p, j in zip(todo, jobs):
      p.compiled = j.compiled
    return len(todo), len(self.programs) - len(todo)

  def seconds(self, program: Program) -> float:
    """The plan's prediction of one compiled program (no overlap)."""
    out = program.compiled
    module = hlo.Module(out['hlo'])
    found = collectives(module, len(self.devices))
    step_ops = ops.step_ops(module, found)
    op_flops = sum(o.flops for o in step_ops if o.category in ('conv', 'matmul'))
    entry = {'instructions': compile_lib.instructions(found, self.devices, self.profile,
                                                      self.topology),
             'ops': [o.to_json() for o in step_ops], 'heavy_ops': module.heavy_ops(),
             'compiled_flops_per_device': out['flops'] or op_flops or program.analytic_flops,
             'analytic_flops_per_device': program.analytic_flops}
    step = costmodel.predict_step(entry, self.profile, self.efficiency, self.dtype)
    return float(step['step_seconds']['no_overlap'])


def costs(c: Compiled, options: dict, flops: dict) -> tuple[list, dict]:
  """(nodes seconds per layer and choice, {(l, i, j): edge seconds}) from compiled programs,
  `options[layer]` the candidate splits, `flops[layer][i]` their analytic FLOPs per device."""
  nodes = [[c.node(l, s, flops[l][i]) for i, s in enumerate(options[l])] for l in LAYERS]
  edges = {(k, i, j): c.edge(LAYERS[k], a, b)
           for k in range(1, len(LAYERS))
           for i, a in enumerate(options[LAYERS[k - 1]])
           for j, b in enumerate(options[LAYERS[k]])}
  fresh, cached = c.compile_all()
  c.counts = (fresh, cached)
  return ([[c.seconds(p) for p in row] for row in nodes],
          {k: c.seconds(p) for k, p in edges.items()})

