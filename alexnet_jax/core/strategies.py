"""How the network is laid out on devices: the mesh and the partitioning strategies.

A strategy turns the one `Tower` definition (model.py) into a forward function

    forward(params, images, keep) -> logits

over global arrays, where `params` holds both towers stacked on a leading axis of size 2 (of
size 1 for the one-tower ablation, model.num_towers = 1, which `data`, `hybrid` and `fsdp` run),
`images` is the global batch and `keep` the global dropout masks (model.dropout_masks). Each
strategy is a `jax.shard_map` whose `in_specs`/`out_specs` and collectives are its
communication; gradients come from differentiating through it (the transpose of an all-gather is
a reduce-scatter, and a parameter replicated over a batch axis gets its gradient all-reduced).

    strategy     mesh                    parameters                 batch        talks at
    towers       tower=2                 tower t on device t        replicated   conv3 fc6 fc7 fc8
    data         data=N                  replicated                 split N      gradients
    hybrid       tower=2 x block=N/2     convs replicated, fc       convs split  fc6 fc7 fc8 and
                                         neurons split over all N   N            conv gradients
    hybrid,      block=N (N = 1: the     convs replicated, fc6 fc7  convs split  fc6 fc7 fc8 and
    one tower    paper's one GPU)        neurons, fc8 classes       N            conv gradients
                                         split N
    towers_data  data=N/2 x tower=2      tower t on tower row t     split N/2    towers + gradients
    fsdp         data=N                  every leaf split N         split N      every parameter

Every collective runs inside a `jax.named_scope` named after its layer, so the communication
report (comms.py) can tell which layer each collective in the compiled program belongs to.

Reduced-precision gradient exchange (`config.gradient_exchange_dtype`, 'float32' by default):
with 'bfloat16' or 'float16' the gradients that data parallelism sums across the batch's devices
are rounded to that dtype, summed in it, and turned back into float32; parameters, the summed
gradients, momentum and the update stay float32. It halves the bytes of the gradient all-reduce
of `data` (every layer), of `hybrid` (conv1-conv5 over all N; fc8's over `block` for two towers),
of `towers_data` (each tower's gradients across replicas) and of `fsdp`'s gradient
reduce-scatters (and the all-reduce of a leaf it cannot split). fsdp's parameter all-gathers stay
float32, and the activation exchanges (towers, hybrid's fc layers, towers_data inside a replica)
stay in the compute dtype; `towers` exchanges no gradients, so the option changes nothing there.
Where float32 leaves the all-reduce implicit (the transpose of using a replicated parameter),
`exchange_gradients` makes it explicit, in the exchange dtype.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax.core import model as model_lib

Forward = Callable[[Any, jax.Array, Any], jax.Array]
# (layer, 'kernel' | 'bias', shape of the stacked (2, ...) leaf) -> where the leaf lives.
ParamSpec = Callable[[str, str, tuple[int, ...]], P]

# The strategies themselves (names, builders, device counts, tower axes) are one table, TABLE,
# at the end of this file; STRATEGIES and TOWER_STRATEGIES are read from it.
CONV_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5')
FC_LAYERS = ('fc6', 'fc7', 'fc8')
LAYERS = CONV_LAYERS + FC_LAYERS


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A partitioning: its mesh, where parameters and batches live, and its forward function."""
  name: str
  mesh: Mesh
  param_spec: ParamSpec  # per leaf of the stacked (2, ...) parameters
  batch_spec: P  # for the leading (batch) axis of images and labels
  forward: Forward
  # The dtype batch-axis gradient sums travel in (config.gradient_exchange_dtype).
  gradient_exchange_dtype: str = 'float32'

  def param_specs(self, params) -> Any:
    """The PartitionSpec of every leaf of `params` (arrays or shape structs)."""
    return param_spec_tree(self.param_spec, params)

  def param_sharding(self, params) -> Any:
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.param_specs(params))

  def state_sharding(self, tx: optax.GradientTransformation, state: Any) -> Any:
    """Where each part of a train state (steps.TrainState, or its shapes) lives: the parameters
    as `param_spec` says, each momentum buffer beside its parameter, the step, the learning rate
    and the dropout key on every device."""
    param_sharding = self.param_sharding(state.params)
    opt_sharding = optax.tree_map_params(
        tx, lambda _, s: s, state.opt_state, param_sharding,
        transform_non_params=lambda _: self.replicated)
    return state.replace(step=self.replicated, params=param_sharding, opt_state=opt_sharding,
                         rng=self.replicated)

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.batch_spec)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  @property
  def batch_shards(self) -> int:
    """How many ways the global batch is split (it must divide every batch size)."""
    axes = self.batch_spec[0] if len(self.batch_spec) else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
    return math.prod(self.mesh.shape[a] for a in axes)

  @property
  def num_devices(self) -> int:
    return self.mesh.size

  def input_group(self, batch_size: int) -> tuple[int, int]:
    """(group, groups): this process feeds group `group` of `groups` equal sets of the global
    batch's rows. Processes whose devices hold the same rows (a batch replicated over processes,
    as in `towers` across two hosts) are one group and must read the same data.

    A process's rows need not be one contiguous block: on a TPU slice, a 1-D mesh follows the
    torus's ring, so a host's chips sit at several places along the batch. The rows are i.i.d.
    examples and evaluation sums with a mask, so which rows a group's examples fill does not
    matter; `jax.make_array_from_process_local_data` places them."""
    rows_of = {}
    for device, index in self.batch_sharding.devices_indices_map((batch_size,)).items():
      s = index[0]
      rows_of.setdefault(device.process_index, set()).add(
          (s.start or 0, batch_size if s.stop is None else s.stop))
    mine = rows_of.get(jax.process_index())
    if not mine:
      raise ValueError(f'process {jax.process_index()} has no device in the {self.name} mesh; '
                       'use every process\'s devices (config.num_devices = all devices).')
    held = lambda rows: sum(b - a for a, b in rows)
    sets = sorted({frozenset(r) for r in rows_of.values()}, key=min)
    rows = [r for rs in sets for r in rs]
    if (len({held(r) for r in sets}) != 1 or len(rows) != len(set(rows))
        or held(rows) != batch_size):
      raise ValueError(f'process {jax.process_index()} holds rows {sorted(mine)} of the batch '
                       f'under {self.name}: the processes do not hold equal, separate sets of '
                       'rows.')
    return sets.index(frozenset(mine)), len(sets)


def param_spec_tree(param_spec: ParamSpec, params) -> Any:
  """Applies a per-leaf spec function to the {layer: {kernel, bias}} parameter tree."""
  return {layer: {what: param_spec(layer, what, tuple(leaf.shape)) for what, leaf in leaves.items()}
          for layer, leaves in params.items()}


def resolve_num_devices(parallelism: str, num_devices: int = 0,
                        available: Optional[int] = None) -> int:
  """The device count a strategy runs on, the one rule for `config.num_devices`:
  `num_devices` if positive; 0: the strategy's fixed count (2 for towers), else every one of
  `available` (default: every visible device)."""
  if num_devices > 0:
    return num_devices
  info = TABLE.get(parallelism)
  if info is not None and info.exact_devices:
    return info.exact_devices
  return available if available is not None else jax.device_count()


def devices_needed(parallelism: str, num_devices: int = 0) -> int:
  """How many devices a CPU-only process presents for a strategy (`jax_num_cpu_devices`).

  It is `resolve_num_devices` on a CPU presenting the strategy's `default_devices`, so a run
  simulated with this count resolves to this count. An unknown name gets 1 (the config check
  refuses it)."""
  info = TABLE.get(parallelism)
  if info is None:
    return num_devices if num_devices > 0 else 1
  return resolve_num_devices(parallelism, num_devices, info.default_devices)


def fit_error(parallelism: str, num_devices: int, net: Optional[model_lib.Tower] = None,
              available: Optional[int] = None) -> Optional[str]:
  """Why `parallelism` cannot run on `num_devices` devices (None when it can).

  Checked before anything is compiled, so a bad config fails with a sentence, not an XLA error.
  What each strategy needs of N is its row of TABLE.
  """
  n = num_devices
  info = TABLE.get(parallelism)
  if info is None:
    return f'unknown parallelism {parallelism!r}; choose one of {", ".join(STRATEGIES)}'
  if n < 1:
    return f'{parallelism} needs at least one device, not {n}'
  if available is not None and n > available:
    return (f'{parallelism} on {n} devices needs {n} devices but only {available} are visible; on '
            f"CPU, simulate more with jax.config.update('jax_num_cpu_devices', {n}) before JAX "
            'starts')
  one_tower = net is not None and net.num_towers == 1
  if one_tower and info.one_tower and info.fit is not None:  # hybrid without its tower axis
    return info.fit(n, net)
  if net is not None and net.num_towers != 2 and info.tower_axis:
    return (f'{parallelism} puts the two towers on different devices, but model.num_towers='
            f'{net.num_towers} has no second tower; use parallelism data, fsdp or hybrid')
  if info.exact_devices and n != info.exact_devices:
    return (f'{parallelism} puts one tower on each of exactly {info.exact_devices} devices, not '
            f'{n} (use towers_data)')
  if info.tower_axis and n % 2:
    return f'{parallelism} needs an even number of devices (a tower axis of 2), not {n}'
  if info.fit is not None and net is not None:
    return info.fit(n, net)
  return None


def _hybrid_fit_error(n: int, net: model_lib.Tower) -> Optional[str]:
  """Why hybrid cannot split fc6 and fc7 by neuron (and, with one tower, fc8 by class) over n."""
  if net.num_towers == 1:
    return _one_tower_hybrid_fit_error(n, net)
  for layer, width in zip(('fc6', 'fc7'), net.fc_features):
    if width % (n // 2):
      return (f'hybrid splits {layer}\'s {width} neurons per tower over {n // 2} devices; '
              f'{width} is not divisible by {n // 2}')
  return None


def _one_tower_hybrid_fit_error(n: int, net: model_lib.Tower) -> Optional[str]:
  """Why the one-tower hybrid cannot split fc6 and fc7 by neuron and fc8 by class over n."""
  for i, (layer, width) in enumerate(zip(('fc6', 'fc7'), net.fc_features)):
    if width % n:
      return (f'hybrid splits the one-tower net\'s {width} {layer} neurons (2 x '
              f'model.fc_features[{i}]={width // 2}) over {n} devices; {width} is not divisible '
              f'by {n}: use a num_devices that divides {width}, or a model.fc_features[{i}] whose '
              f'double is a multiple of {n}')
  classes = net.classes_per_tower
  if classes % n:
    return (f'hybrid splits fc8\'s {classes} classes (model.num_classes) over {n} devices; '
            f'{classes} is not divisible by {n}: use a num_devices that divides {classes}, or a '
            f'model.num_classes that is a multiple of {n}')
  return None


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...], devices=None) -> Mesh:
  """A mesh over the first prod(shape) devices, with jit free to place what shard_map does not."""
  n = math.prod(shape)
  devices = list(devices if devices is not None else jax.devices())
  if len(devices) < n:
    raise ValueError(
        f'The mesh {dict(zip(names, shape))} needs {n} devices but only {len(devices)} are '
        f'visible ({devices[0].platform}). On CPU, simulate more with '
        f"jax.config.update('jax_num_cpu_devices', {n}) before JAX starts.")
  devices = devices[:n]
  slices = len({getattr(d, 'slice_index', None) or 0 for d in devices})
  if slices > 1:  # TPU slices joined by the data-center network: the batch axis spans them
    return Mesh(_multi_slice_devices(shape, names, devices, slices), names,
                axis_types=(jax.sharding.AxisType.Auto,) * len(shape))
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices)


def _multi_slice_devices(shape: tuple[int, ...], names: tuple[str, ...], devices: list,
                         slices: int) -> Any:
  """The device array of a mesh over several slices: the batch axis ('data', else 'block', else
  the first that divides) is split across slices, so only the gradient exchange of data
  parallelism crosses the slower network; every other axis stays inside a slice."""
  order = [names.index(a) for a in ('data', 'block') if a in names] + list(range(len(names)))
  axis = next((i for i in order if shape[i] % slices == 0), None)
  if axis is None:
    raise ValueError(f'the mesh {dict(zip(names, shape))} has no axis that {slices} slices '
                     'divide; use a device count that spreads the batch over the slices')
  inside = tuple(d // slices if i == axis else d for i, d in enumerate(shape))
  across = tuple(slices if i == axis else 1 for i in range(len(shape)))
  return mesh_utils.create_hybrid_device_mesh(inside, across, devices)


# --- Pieces every strategy shares. ---

def gather_towers(x: jax.Array) -> jax.Array:
  """A cross-tower read: both towers' `x`, tower 1's channels first (an all-gather).

  Gathered on a new leading axis, then concatenated on the channels: gathering on the channel
  axis itself led XLA:CPU to store pool2 channels-major for the collective, and the max pool
  writing that layout and its gradient reading it were a large part of the step
  (docs/measurements/2026-11-22-xeon-train-step.md).
  """
  both = jax.lax.all_gather(x, 'tower', axis=0)
  return jnp.concatenate(list(both), axis=-1)


def named_exchange(exchange: model_lib.Exchange) -> model_lib.Exchange:
  """`exchange`, with its n-th call named after the layer that reads it (conv3, fc6, fc7, fc8).

  Tower.__call__ reads across towers in that order; the names label the collectives in HLO.
  """
  layers = iter(('conv3', 'fc6', 'fc7', 'fc8'))

  def named(x):
    with jax.named_scope(next(layers)):
      return exchange(x)
  return named


def body_one_tower(net: model_lib.Tower):
  """The body of a device holding ONE tower: its parameter slice, the other tower via all-gather."""

  def run(params, images, keep):
    params = jax.tree.map(lambda a: a[0], params)  # this tower's slice of the stacked axis
    return net.apply({'params': params}, images, named_exchange(gather_towers), keep)
  return run


def _tower_slices(params) -> list:
  """Each tower's parameters, from the leading (tower) axis: 2 towers, or 1 (model.num_towers)."""
  num_towers = jax.tree.leaves(params)[0].shape[0]
  return [jax.tree.map(lambda a, t=t: a[t], params) for t in range(num_towers)]


def both_towers_convs(net: model_lib.Tower, params, images: jax.Array) -> jax.Array:
  """conv1-conv5 of BOTH towers on one device: pool5 of both, flattened to [B, features].

  The two towers run as two plain sets of convolutions, stage by stage: on XLA:CPU, vmapping one
  tower over the stacked parameters (XLA makes conv2, conv4, conv5 feature_group_count=2
  convolutions) ran conv1-conv5 forward + backward several times slower (measure it with
  `python -m alexnet_jax.comms ... --time_convs=8`; figures in docs/communication.md).
  """
  apply = lambda p, *args, method: net.apply({'params': p}, *args, method=method)
  p = _tower_slices(params)
  x = jnp.concatenate([apply(pt, images, method=model_lib.Tower.conv1_conv2) for pt in p], -1)
  x = jnp.concatenate([apply(pt, x, method=model_lib.Tower.conv3_conv5) for pt in p], -1)
  return x.reshape(x.shape[0], -1)


def _split_keep(keep, layer: str, parts: int) -> list:
  if keep is None:
    return [None] * parts
  return jnp.split(keep[layer], parts, axis=1)


def both_towers_fc7(net: model_lib.Tower, params, x: jax.Array, keep) -> jax.Array:
  """fc6 and fc7 of BOTH towers on one device, from flattened pool5: fc7 of both [B, 2 x fc7]
  (with `keep=None`, the features the paper's Fig. 4 compares)."""
  p = _tower_slices(params)
  for layer in ('fc6', 'fc7'):
    x = jnp.concatenate([
        net.apply({'params': pt}, x, k, layer, method=model_lib.Tower.fc6_fc7)
        for pt, k in zip(p, _split_keep(keep, layer, len(p)))], -1)
  return x


def both_towers_logits(net: model_lib.Tower, params, fc7: jax.Array) -> jax.Array:
  """fc8 of BOTH towers on one device, from both towers' fc7: global logits [B, C]."""
  return jnp.concatenate([net.apply({'params': pt}, fc7, method=model_lib.Tower.logits)
                          for pt in _tower_slices(params)], -1)


def both_towers_fcs(net: model_lib.Tower, params, x: jax.Array, keep) -> jax.Array:
  """fc6, fc7, fc8 of BOTH towers on one device, from flattened pool5: global logits [B, C]."""
  return both_towers_logits(net, params, both_towers_fc7(net, params, x, keep))


def body_both_towers(net: model_lib.Tower):
  """The body of a device holding both towers (whole model) on its batch shard."""

  def run(params, images, keep):
    return both_towers_fcs(net, params, both_towers_convs(net, params, images), keep)
  return run


GRADIENT_EXCHANGE_DTYPES = ('float32', 'bfloat16', 'float16')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _vary_reduced(x: jax.Array, axes: tuple, dtype: str) -> jax.Array:
  """pcast(x, axes, to='varying') whose transpose sums the cotangent over `axes` in `dtype`."""
  return jax.lax.pcast(x, axes, to='varying')


def _vary_reduced_fwd(x, axes, dtype):
  return _vary_reduced(x, axes, dtype), None


def _vary_reduced_bwd(axes, dtype, _, g):
  return (jax.lax.psum(g.astype(dtype), axes).astype(g.dtype),)


_vary_reduced.defvjp(_vary_reduced_fwd, _vary_reduced_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _gather_reduced(x: jax.Array, axes: tuple, axis: int, dtype: str) -> jax.Array:
  """all_gather(x, axes, axis, tiled) whose transpose reduce-scatters the cotangent in `dtype`."""
  return jax.lax.all_gather(x, axes, axis=axis, tiled=True)


def _gather_reduced_fwd(x, axes, axis, dtype):
  return _gather_reduced(x, axes, axis, dtype), None


def _gather_reduced_bwd(axes, axis, dtype, _, g):
  return (jax.lax.psum_scatter(g.astype(dtype), axes, scatter_dimension=axis,
                               tiled=True).astype(g.dtype),)


_gather_reduced.defvjp(_gather_reduced_fwd, _gather_reduced_bwd)


def exchange_gradients(params, axes, dtype: str = 'float32', gather_axes=None) -> Any:
  """The parameters as a batch-split body uses them, layer by layer under the layer's name; the
  transpose of each use is that parameter's gradient exchange over the batch axes `axes`.

  A replicated leaf is marked varying over `axes` (its gradient is all-reduced); with
  `gather_axes` ({layer: {leaf: axis or None}}, fsdp) a leaf split on that axis is all-gathered
  first (its gradient is reduce-scattered). With `dtype` 'float32' these are plain
  `jax.lax.pcast` and `all_gather`, whose transposes shard_map derives (an implicit psum, a
  psum_scatter). With 'bfloat16' or 'float16' each is a `jax.custom_vjp` with the same forward
  whose backward casts the float32 cotangent to `dtype`, psums (or psum_scatters) it over `axes`
  and casts the sum back: the only collective of that gradient, since the custom rule returns
  a cotangent already invariant over `axes` and shard_map adds no psum of its own. Either way
  the exchange is traced under the layer's name, for the communication report.
  """
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  reduced = dtype != 'float32'

  def use(a, axis):
    if axis is not None:
      return (_gather_reduced(a, axes, axis, dtype) if reduced
              else jax.lax.all_gather(a, axes, axis=axis, tiled=True))
    return _vary_reduced(a, axes, dtype) if reduced else jax.lax.pcast(a, axes, to='varying')

  out = {}
  for layer, leaves in params.items():
    with jax.named_scope(layer):
      out[layer] = {what: use(a, (gather_axes or {}).get(layer, {}).get(what))
                    for what, a in leaves.items()}
  return out


# --- The strategies. ---

def towers_strategy(net: model_lib.Tower, devices=None, num_devices: int = 2,
                    gradient_exchange_dtype: str = 'float32') -> Strategy:
  """The paper's split: tower t's parameters on device t, the whole batch on both.

  conv1, conv2, conv4, conv5 run in their tower without communication. conv3, fc6, fc7 and fc8
  all-gather both towers' activations across `tower` (forward) and reduce-scatter their
  gradients (backward). Each tower returns the logits of its half of the classes. No gradient
  is exchanged, so `gradient_exchange_dtype` changes nothing.
  """
  mesh = make_mesh((2,), ('tower',), devices)
  forward = jax.shard_map(
      body_one_tower(net), mesh=mesh,
      in_specs=(P('tower'),  # parameters: tower t on device t
                P(),  # images: the whole batch on both towers
                P(None, 'tower')),  # dropout masks: each tower's own fc6/fc7 units
      out_specs=P(None, 'tower'))  # logits: each tower's half of the classes
  return Strategy('towers', mesh, param_spec=lambda *_: P('tower'), batch_spec=P(),
                  forward=forward, gradient_exchange_dtype=gradient_exchange_dtype)


def data_strategy(net: model_lib.Tower, devices=None, num_devices: int = 2,
                  gradient_exchange_dtype: str = 'float32') -> Strategy:
  """Pure data parallelism: the whole model on every device, the batch split N ways.

  No communication in the forward pass; the backward all-reduces every parameter's gradient
  (the transpose of using replicated parameters on a split batch), in gradient_exchange_dtype.
  """
  mesh = make_mesh((num_devices,), ('data',), devices)
  run = body_both_towers(net)
  grads = gradient_exchange_dtype
  forward = jax.shard_map(
      lambda params, images, keep: run(exchange_gradients(params, 'data', grads), images, keep),
      mesh=mesh,
      in_specs=(P(),  # parameters: replicated
                P('data'),  # images: the batch split N ways
                P('data')),  # dropout masks: each device its examples' rows
      out_specs=P('data'))  # logits: each device its examples
  return Strategy('data', mesh, param_spec=lambda *_: P(), batch_spec=P('data'),
                  forward=forward, gradient_exchange_dtype=grads)


def towers_data_strategy(net: model_lib.Tower, devices=None, num_devices: int = 4,
                         gradient_exchange_dtype: str = 'float32') -> Strategy:
  """The pod layout: a (data, tower=2) mesh; each model replica is the paper's two towers.

  Inside a replica the towers talk as in `towers` (on the replica's share of the batch);
  across replicas each tower's gradients are all-reduced over `data` (in
  gradient_exchange_dtype).
  """
  mesh = make_mesh((num_devices // 2, 2), ('data', 'tower'), devices)
  run = body_one_tower(net)
  grads = gradient_exchange_dtype
  forward = jax.shard_map(
      lambda params, images, keep: run(exchange_gradients(params, 'data', grads), images, keep),
      mesh=mesh,
      in_specs=(P('tower'),  # parameters: tower t on row t of every replica
                P('data'),  # images: split over replicas, whole on both towers of one
                P('data', 'tower')),  # dropout masks: the replica's rows, the tower's units
      out_specs=P('data', 'tower'))
  return Strategy('towers_data', mesh, param_spec=lambda *_: P('tower'), batch_spec=P('data'),
                  forward=forward, gradient_exchange_dtype=grads)


def hybrid_strategy(net: model_lib.Tower, devices=None, num_devices: int = 2,
                    gradient_exchange_dtype: str = 'float32') -> Strategy:
  """Krizhevsky 2014, "one weird trick": convolutions data-parallel, fc layers model-parallel.

  Mesh (tower=2, block=N/2); `ALL` = both axes, N devices. conv1-conv5 of both towers run on
  each device's N-th of the batch with replicated weights (their gradients are all-reduced).
  fc6 and fc7 split their neurons N ways (device (t, r) holds block r of tower t's neurons):
  before fc6 the pool5 features of the whole batch are all-gathered; before fc7 and fc8 the
  previous layer's neurons. fc8 is split by class over `tower` and by batch over `block` (its
  gradient is all-reduced over `block`). The conv and fc8 gradient all-reduces are in
  gradient_exchange_dtype. The one-tower net (model.num_towers = 1) runs
  `one_tower_hybrid_strategy`.
  """
  if net.num_towers == 1:
    return one_tower_hybrid_strategy(net, devices, num_devices, gradient_exchange_dtype)
  grads = gradient_exchange_dtype
  k = num_devices // 2
  mesh = make_mesh((2, k), ('tower', 'block'), devices)
  all_axes = ('tower', 'block')
  fc_tower = net.clone(fc_features=tuple(f // k for f in net.fc_features))

  def param_spec(layer, what, shape):
    if layer in CONV_LAYERS:
      return P()
    if layer == 'fc8':
      return P('tower')
    return P('tower', None, 'block') if what == 'kernel' else P('tower', 'block')

  def run(params, images, keep):
    convs = exchange_gradients({n: params[n] for n in CONV_LAYERS}, all_axes, grads)
    x = both_towers_convs(net, convs, images)  # [B / N, pool5 features]
    for layer in ('fc6', 'fc7'):
      with jax.named_scope(layer):  # the whole batch, all of the previous layer's features
        x = jax.lax.all_gather(x, all_axes, axis=0 if layer == 'fc6' else 1, tiled=True)
      p = jax.tree.map(lambda a: a[0], params[layer])
      x = fc_tower.apply({'params': {layer: p}}, x, None if keep is None else keep[layer], layer,
                         method=model_lib.Tower.fc6_fc7)  # [B, this device's neurons]
    with jax.named_scope('fc8'):  # the slice too: XLA:TPU sums the gradient at its transpose
      x = jax.lax.all_gather(x, all_axes, axis=1, tiled=True)  # [B, fc7 neurons]
      rows = x.shape[0] // k  # this block's share of the batch
      x = jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index('block') * rows, rows, axis=0)
    fc8 = exchange_gradients({'fc8': params['fc8']}, 'block', grads)['fc8']
    p = jax.tree.map(lambda a: a[0], fc8)
    return net.apply({'params': {'fc8': p}}, x, method=model_lib.Tower.logits)

  def forward(params, images, keep):
    return jax.shard_map(
        run, mesh=mesh,
        in_specs=(param_spec_tree(param_spec, params),
                  P(all_axes),  # images: the batch split N ways (for the convolutions)
                  P(None, all_axes)),  # dropout masks: every example, this device's neurons
        out_specs=P('block', 'tower'))(params, images, keep)  # rows by block, classes by tower
  return Strategy('hybrid', mesh, param_spec=param_spec, batch_spec=P(all_axes),
                  forward=forward, gradient_exchange_dtype=grads)


def one_tower_hybrid_strategy(net: model_lib.Tower, devices=None, num_devices: int = 1,
                              gradient_exchange_dtype: str = 'float32') -> Strategy:
  """Krizhevsky 2014 as the paper ran it: the one-tower net (model.num_towers = 1) on N devices.

  Mesh (block=N). conv1-conv5 run on each device's N-th of the batch with replicated weights
  (their gradients are all-reduced over all N, in gradient_exchange_dtype). fc6, fc7 and fc8 are
  model parallel, every one on the whole batch: device r holds block r of fc6's and fc7's
  neurons and of fc8's classes. Before fc6 the pool5 features of the whole batch are
  all-gathered; before fc7 and fc8 all of the previous layer's neurons; the backward
  reduce-scatters their gradients. No fc weight is replicated, so none has its gradient
  all-reduced; the logits come out split by class and jit partitions the loss over them. N = 1
  is the paper's one-GPU baseline: nothing to exchange.
  """
  n, grads = num_devices, gradient_exchange_dtype
  mesh = make_mesh((n,), ('block',), devices)
  block = net.clone(fc_features=tuple(f // n for f in net.fc_features),
                    classes_per_tower=net.classes_per_tower // n)  # one device's fc6, fc7, fc8

  def param_spec(layer, what, shape):
    if layer in CONV_LAYERS:
      return P()
    return P(None, None, 'block') if what == 'kernel' else P(None, 'block')  # output units

  def run(params, images, keep):
    convs = exchange_gradients({name: params[name] for name in CONV_LAYERS}, 'block', grads)
    x = both_towers_convs(net, convs, images)  # the one tower: [B / N, pool5 features]
    fc = {layer: jax.tree.map(lambda a: a[0], params[layer]) for layer in FC_LAYERS}
    for layer in ('fc6', 'fc7'):
      with jax.named_scope(layer):  # the whole batch, all of the previous layer's features
        x = jax.lax.all_gather(x, 'block', axis=0 if layer == 'fc6' else 1, tiled=True)
      x = block.apply({'params': {layer: fc[layer]}}, x, None if keep is None else keep[layer],
                      layer, method=model_lib.Tower.fc6_fc7)  # [B, this device's neurons]
    with jax.named_scope('fc8'):
      x = jax.lax.all_gather(x, 'block', axis=1, tiled=True)  # [B, fc7 neurons]
    return block.apply({'params': {'fc8': fc['fc8']}}, x,
                       method=model_lib.Tower.logits)  # [B, this device's classes]

  def forward(params, images, keep):
    return jax.shard_map(
        run, mesh=mesh,
        in_specs=(param_spec_tree(param_spec, params),  # convs replicated, fc units split N
                  P('block'),  # images: the batch split N ways (for the convolutions)
                  P(None, 'block')),  # dropout masks: every example, this device's neurons
        out_specs=P(None, 'block'))(params, images, keep)  # logits: every example, its classes
  return Strategy('hybrid', mesh, param_spec=param_spec, batch_spec=P('block'), forward=forward,
                  gradient_exchange_dtype=grads)


def fsdp_spec(num_devices: int) -> ParamSpec:
  """Shards each leaf on its last axis divisible by N (replicated if none is)."""

  def spec(layer, what, shape):
    for axis in reversed(range(len(shape))):
      if shape[axis] % num_devices == 0:
        return P(*([None] * axis + ['data']))
    return P()
  return spec


def fsdp_strategy(net: model_lib.Tower, devices=None, num_devices: int = 2,
                  gradient_exchange_dtype: str = 'float32') -> Strategy:
  """Fully sharded data parallelism: every parameter (and its momentum) split over `data`.

  Each layer's weights are all-gathered just before the layer and its gradients
  reduce-scattered (in gradient_exchange_dtype) in the backward pass; a leaf no axis of which N
  divides stays replicated and has its gradient all-reduced. The batch is split as in `data`.
  """
  mesh = make_mesh((num_devices,), ('data',), devices)
  param_spec = fsdp_spec(num_devices)
  grads = gradient_exchange_dtype

  def gather(params, specs):  # the axis each leaf is split on (None: replicated)
    split = {layer: {what: next((i for i, name in enumerate(specs[layer][what]) if name), None)
                     for what in leaves} for layer, leaves in params.items()}
    return exchange_gradients(params, 'data', grads, gather_axes=split)

  def forward(params, images, keep):
    specs = param_spec_tree(param_spec, params)  # from the global shapes

    def run(params, images, keep):
      convs = gather({n: params[n] for n in CONV_LAYERS}, specs)
      x = both_towers_convs(net, convs, images)
      return both_towers_fcs(net, gather({n: params[n] for n in FC_LAYERS}, specs), x, keep)

    return jax.shard_map(
        run, mesh=mesh,
        in_specs=(specs,  # each leaf split N ways
                  P('data'), P('data')),
        out_specs=P('data'))(params, images, keep)
  return Strategy('fsdp', mesh, param_spec=param_spec, batch_spec=P('data'), forward=forward,
                  gradient_exchange_dtype=grads)


@dataclasses.dataclass(frozen=True)
class StrategyInfo:
  """One strategy: its row of TABLE, which every list of strategies in the project reads."""
  name: str
  # (net, devices, num_devices, gradient_exchange_dtype) -> Strategy, for a device count that
  # fit_error accepts.
  build: Callable[..., Strategy]
  # num_devices = 0 on a CPU-only machine: the devices simulated (devices_needed), and so used.
  # (On accelerators 0 means every visible device, or `exact_devices`: resolve_num_devices.)
  default_devices: int
  # Its mesh has a `tower` axis of size 2 (tower t on row t): the net needs two towers and N must
  # be even, unless `one_tower` says it runs a one-tower net without that axis.
  tower_axis: bool
  # It runs model.num_towers = 1 (data and fsdp as they are; hybrid on a block=N mesh).
  one_tower: bool
  # What it needs of N beyond the tower axis: exactly this many devices (0: any count) ...
  exact_devices: int = 0
  # ... and fit(n, net) -> why the net's layers cannot be split over n (None: they can).
  fit: Optional[Callable[[int, model_lib.Tower], Optional[str]]] = None


TABLE: dict[str, StrategyInfo] = {info.name: info for info in (
    StrategyInfo('towers', towers_strategy, default_devices=2, tower_axis=True, one_tower=False,
                 exact_devices=2),
    StrategyInfo('data', data_strategy, default_devices=2, tower_axis=False, one_tower=True),
    StrategyInfo('hybrid', hybrid_strategy, default_devices=2, tower_axis=True, one_tower=True,
                 fit=_hybrid_fit_error),
    StrategyInfo('towers_data', towers_data_strategy, default_devices=4, tower_axis=True,
                 one_tower=False),
    StrategyInfo('fsdp', fsdp_strategy, default_devices=2, tower_axis=False, one_tower=True),
)}
STRATEGIES = tuple(TABLE)
# The strategies that put the two towers on different devices (a `tower` mesh axis of size 2)
# for every net: they need model.num_towers = 2. `hybrid` has a `tower` axis for two towers
# only; the one-tower net runs it on a (block=N) mesh.
TOWER_STRATEGIES = tuple(n for n, info in TABLE.items() if info.tower_axis and not info.one_tower)


def make_strategy(parallelism: str, net: model_lib.Tower, devices=None,
                  num_devices: int = 0, gradient_exchange_dtype: str = 'float32') -> Strategy:
  """The strategy a config names, on the first `num_devices` devices (0: see resolve_num_devices),
  its batch-axis gradient sums in `gradient_exchange_dtype` (config.gradient_exchange_dtype).

  Raises ValueError, before anything is traced, when the strategy cannot use that many devices.
  """
  if parallelism not in TABLE:
    raise ValueError(f'Unknown parallelism {parallelism!r}; choose one of {STRATEGIES}.')
  available = len(devices) if devices is not None else jax.device_count()
  n = resolve_num_devices(parallelism, num_devices, available)
  error = fit_error(parallelism, n, net, available)
  if error:
    raise ValueError(error[0].upper() + error[1:] + '.')
  if gradient_exchange_dtype not in GRADIENT_EXCHANGE_DTYPES:
    raise ValueError(f'Unknown gradient_exchange_dtype {gradient_exchange_dtype!r}; choose one '
                     f'of {GRADIENT_EXCHANGE_DTYPES}.')
  return TABLE[parallelism].build(net, devices, n, gradient_exchange_dtype)
