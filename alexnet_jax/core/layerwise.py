"""Any per-layer partitioning, read from a spec file: the strategy `layerwise`.

The five strategies of strategies.py are five points of a larger space: each of AlexNet's eight
weight layers can split its batch over some mesh axes, its two towers over a `tower` axis, its
output channels or neurons over further axes, and keep its parameters replicated or shard them
over its batch axes (as fsdp). A spec names the mesh and that choice per layer (TOML):

    [mesh]               # axis = size, major to minor; the product is the device count
    tower = 2
    block = 2
    [layers.conv1]       # every layer conv1 .. fc8 has a table; a missing key means "not split"
    batch = ["tower", "block"]
    [layers.fc6]
    tower = "tower"
    out = ["block"]
    params = "replicated"    # or "sharded": each leaf split over `batch` (fsdp)

It runs as `--config.parallelism=layerwise --config.layerwise=FILE`.

Built with `jax.shard_map` and explicit collectives, as the five are, not with sharding
annotations: the compiler's propagation picks its own collectives between two annotated
layouts (and may move a whole tower's weights rather than its activations), so the bytes of a
spec would be what the partitioner chose rather than what the spec says, and the five written
as specs could not be checked against their hand-written programs. Here every activation has a
layout, (batch axes, channel axes), the channel axis split tower-major as the towers' channels
are concatenated (model.py). Between two layers the activation is resharded explicitly: the
axes the next layer does not split by are all-gathered, then the new ones are sliced out
(slicing moves nothing). A gather over an axis the next layer uses is `all_gather`, whose
transpose reduce-scatters the per-device cotangents; over an axis it does not use (that layer
computes the same on all of them) `all_gather(..., to='invarying')`, whose transpose is a
slice. A layer's replicated parameters are marked varying over its batch axes (their gradient
is all-reduced there), sharded ones all-gathered (their gradient reduce-scattered):
strategies.exchange_gradients. What each of these moves is formula.spec_bytes.
Every collective runs under the name of the layer that reads it, so comms attributes its bytes.

Limits, refused with a sentence: an output split needs the tower axis in a two-tower net (one
device holding blocks of both towers' neurons would not hold a contiguous block of the layer's
channels); conv1 and conv2 cannot split their output channels while LRN is on (the
normalisation reads neighbouring channels). Splitting a layer's input channels (a partial sum
all-reduced after the layer) is not in this space.
"""

import dataclasses
import math
import tomllib
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies

NAME = 'layerwise'
LAYERS = strategies.LAYERS
OWN_TOWER = ('conv2', 'conv4', 'conv5')  # read their own tower only (conv1 reads the image)
PARAMS = ('replicated', 'sharded')


@dataclasses.dataclass(frozen=True)
class Split:
  """One layer's partitioning: the mesh axes it splits its batch, its towers and its outputs
  over, and whether its parameters are sharded over the batch axes."""
  batch: tuple[str, ...] = ()
  tower: str = ''
  out: tuple[str, ...] = ()
  params: str = 'replicated'

  @property
  def channels(self) -> tuple[str, ...]:
    """The axes its output channels are split over, tower-major."""
    return ((self.tower,) if self.tower else ()) + self.out

  @property
  def used(self) -> set:
    return set(self.batch) | set(self.channels)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A mesh and a Split per layer (conv1 .. fc8)."""
  mesh: tuple[tuple[str, int], ...]
  layers: tuple[tuple[str, Split], ...]

  @property
  def num_devices(self) -> int:
    return math.prod(size for _, size in self.mesh)

  @property
  def sizes(self) -> dict[str, int]:
    return dict(self.mesh)

  def split(self, layer: str) -> Split:
    return dict(self.layers)[layer]

  def shards(self, axes: tuple[str, ...]) -> int:
    return math.prod(self.sizes[a] for a in axes)

  def batch_shards(self) -> int:
    """The least batch every layer can split: the lcm of the layers' batch shards."""
    return math.lcm(*(self.shards(s.batch) for _, s in self.layers))


class SpecError(ValueError):
  """A spec the network cannot run; the message says what to change."""


def from_dict(raw: dict, where: str = 'spec') -> Spec:
  """A Spec from a parsed TOML table (see the module docstring)."""
  mesh = raw.get('mesh')
  if not isinstance(mesh, dict) or not mesh or not all(
      isinstance(v, int) and v >= 1 for v in mesh.values()):
    raise SpecError(f'{where}: [mesh] must name each axis with its size, e.g. '
                    '[mesh] data = 4')
  layers = raw.get('layers', {})
  missing = [l for l in LAYERS if l not in layers]
  extra = [l for l in layers if l not in LAYERS]
  if missing or extra:
    raise SpecError(f'{where}: [layers] needs a table for each of {", ".join(LAYERS)}'
                    + (f'; missing {", ".join(missing)}' if missing else '')
                    + (f'; unknown {", ".join(extra)}' if extra else ''))
  out = []
  for layer in LAYERS:
    row = layers[layer]
    unknown = set(row) - {'batch', 'tower', 'out', 'params'}
    if unknown:
      raise SpecError(f'{where}: layers.{layer}: unknown key(s) {sorted(unknown)}; use batch, '
                      'tower, out, params')
    out.append((layer, Split(tuple(row.get('batch', ())), row.get('tower', ''),
                             tuple(row.get('out', ())), row.get('params', 'replicated'))))
  return Spec(tuple(mesh.items()), tuple(out))


def load(path: str) -> Spec:
  """The spec in the TOML file `path`; SpecError (with what to fix) if it is not one."""
  if not path:
    raise SpecError('parallelism=layerwise needs a spec file: --config.layerwise=FILE.toml '
                    '(python -m alexnet_jax.plan --search writes one)')
  try:
    with open(path, 'rb') as f:
      raw = tomllib.load(f)
  except (OSError, tomllib.TOMLDecodeError) as e:
    raise SpecError(f'config.layerwise={path!r}: cannot read a TOML spec: {e}') from e
  return from_dict(raw, where=path)


def to_toml(spec: Spec, comment: str = '') -> str:
  """The spec as the TOML `load` reads."""
  q = lambda axes: '[' + ', '.join(f'"{a}"' for a in axes) + ']'
  lines = [f'# {line}' for line in comment.splitlines()] + ['[mesh]']
  lines += [f'{a} = {n}' for a, n in spec.mesh]
  for layer, s in spec.layers:
    lines += ['', f'[layers.{layer}]', f'batch = {q(s.batch)}', f'tower = "{s.tower}"',
              f'out = {q(s.out)}', f'params = "{s.params}"']
  return '\n'.join(lines) + '\n'


def out_width(net: model_lib.Tower, layer: str) -> int:
  """The layer's output channels (neurons, classes) per tower."""
  if layer in strategies.CONV_LAYERS:
    return net.conv_features[strategies.CONV_LAYERS.index(layer)]
  return net.classes_per_tower if layer == 'fc8' else net.fc_features[int(layer[2]) - 6]


def problems(spec: Spec, net: model_lib.Tower, num_devices: Optional[int] = None) -> list[str]:
  """Why `spec` cannot run the net (empty when it can)."""
  found = []
  sizes = spec.sizes
  if num_devices is not None and spec.num_devices != num_devices:
    found.append(f'the spec\'s mesh {sizes} has {spec.num_devices} devices, not '
                 f'config.num_devices={num_devices} (use 0: the spec\'s count)')
  for layer, s in spec.layers:
    axes = list(s.batch) + list(s.channels)
    where = f'layers.{layer}'
    if any(a not in sizes for a in axes):
      found.append(f'{where}: axes {[a for a in axes if a not in sizes]} are not in the mesh '
                   f'{list(sizes)}')
      continue
    if len(axes) != len(set(axes)):
      found.append(f'{where}: an axis splits two things at once ({axes}); use each axis once')
    if s.params not in PARAMS:
      found.append(f'{where}: params={s.params!r}; use one of {PARAMS}')
    if s.params == 'sharded' and not s.batch:
      found.append(f'{where}: params="sharded" shards over the batch axes, and batch is empty')
    if s.tower and (net.num_towers != 2 or sizes[s.tower] != 2):
      found.append(f'{where}: tower="{s.tower}" needs two towers (model.num_towers=2) and an '
                   f'axis of size 2, not {sizes[s.tower]}')
    if s.out:
      k = spec.shards(s.out)
      if net.num_towers == 2 and not s.tower:
        found.append(f'{where}: out={list(s.out)} in a two-tower net needs tower="<axis>" as '
                     'well (one device would hold blocks of both towers\' channels)')
      if out_width(net, layer) % k:
        found.append(f'{where}: {out_width(net, layer)} channels per tower do not split over '
                     f'{k} devices of out={list(s.out)}')
      if layer in ('conv1', 'conv2') and net.lrn:
        found.append(f'{where}: LRN reads neighbouring channels, so {layer} cannot split its '
                     'output channels (out=[]) while model.lrn is on')
  return found


def param_spec_of(spec: Spec, layer: str, what: str, shape: tuple[int, ...]) -> P:
  """Where a stacked (towers, ...) leaf lives: towers over the tower axis, the last (output)
  axis over `out`, and, sharded, the last free axis the batch shards divide (fsdp's rule)."""
  s = spec.split(layer)
  dims: list[Any] = [None] * len(shape)
  if s.tower:
    dims[0] = s.tower
  if s.out:
    dims[-1] = s.out
  if s.params == 'sharded':
    k = spec.shards(s.batch)
    for axis in reversed(range(len(shape))):
      if dims[axis] is None and shape[axis] % k == 0:
        dims[axis] = s.batch
        break
  return P(*[d[0] if isinstance(d, tuple) and len(d) == 1 else d for d in dims])


def _index(axes: tuple[str, ...], sizes: dict) -> jax.Array:
  """This device's block index over `axes` (major to minor), as a PartitionSpec splits."""
  i = 0
  for a in axes:
    i = i * sizes[a] + jax.lax.axis_index(a)
  return i


def gather_runs(axes: tuple[str, ...], used: set) -> list[tuple[tuple[str, ...], bool]]:
  """The gathers that undo a split over `axes` (major to minor): one per run of neighbouring
  axes the next layer uses (varying: True) or does not, the minor run first. Gathering the minor
  axes first and the major ones after leaves the blocks in the order a PartitionSpec splits, and
  moves the same bytes as one gather over all of them."""
  runs: list[tuple[tuple[str, ...], bool]] = []
  for a in reversed(axes):
    if runs and runs[-1][1] == (a in used):
      runs[-1] = ((a,) + runs[-1][0], runs[-1][1])
    else:
      runs.append(((a,), a in used))
  return runs


def reshard(x: jax.Array, have: tuple, want: tuple, used: set, sizes: dict) -> jax.Array:
  """`x` from layout `have` to `want` ((batch axes, channel axes); the batch is axis 0 and the
  channels the last axis): gather every axis past the common prefix, then slice the new ones."""
  dims = ((x.ndim - 1, have[1], want[1]), (0, have[0], want[0]))
  common = lambda h, w: next((i for i, (a, b) in enumerate(zip(h, w)) if a != b),
                             min(len(h), len(w)))
  for dim, h, w in dims:
    for rest, varying in gather_runs(tuple(h[common(h, w):]), used):
      x = jax.lax.all_gather(x, rest, axis=dim, tiled=True,
                             to='varying' if varying else 'invarying')
  for dim, h, w in dims:
    new = tuple(w[common(h, w):])
    if new:
      size = x.shape[dim] // math.prod(sizes[a] for a in new)
      x = jax.lax.dynamic_slice_in_dim(x, _index(new, sizes) * size, size, axis=dim)
  return x


def _narrow(net: model_lib.Tower, layer: str, k: int) -> model_lib.Tower:
  """The net with `layer`'s output width divided by k (a device's block of it)."""
  if k == 1:
    return net
  if layer in strategies.CONV_LAYERS:
    i = strategies.CONV_LAYERS.index(layer)
    c = list(net.conv_features)
    c[i] //= k
    return net.clone(conv_features=tuple(c))
  if layer == 'fc8':
    return net.clone(classes_per_tower=net.classes_per_tower // k)
  f = list(net.fc_features)
  f[int(layer[2]) - 6] //= k
  return net.clone(fc_features=tuple(f))


def _apply_layer(net: model_lib.Tower, layer: str, p, x: jax.Array, keep) -> jax.Array:
  """One tower's `layer` (with its activation, LRN, pooling, dropout as model.Tower does)."""
  def run(m, x):
    if layer == 'conv1':
      pad = model_lib.conv1_padding(x.shape[-2])
      x = jnp.pad(x.astype(m.dtype), ((0, 0), (0, pad), (0, pad), (0, 0)))
      return m._pool(m._norm(jax.nn.relu(m.conv1(x))))
    if layer == 'conv2':
      return m._pool(m._norm(jax.nn.relu(m.conv2(x))))
    if layer in ('conv3', 'conv4'):
      return jax.nn.relu(getattr(m, layer)(x))
    if layer == 'conv5':
      return m._pool(jax.nn.relu(m.conv5(x)))
    if layer == 'fc8':
      return m.logits(x)
    return m.fc6_fc7(x, keep, layer)
  return net.apply({'params': {layer: p}}, x, method=run)


def _sharded_axis(p: P, s: Split) -> Optional[int]:
  """The axis of a leaf's spec that its layer's batch axes shard (None: replicated over them)."""
  if s.params != 'sharded':
    return None
  return next((i for i, d in enumerate(p) if d == s.batch or (len(s.batch) == 1 and d == s.batch[0])), None)


def layer_body(net: model_lib.Tower, layer: str, s: Split, spec: Spec, params, x, keep,
               dtype: str, leaf_axes: dict) -> jax.Array:
  """`layer` on this device: the gradient exchange of its parameters, then each tower it holds."""
  if s.batch:
    params = strategies.exchange_gradients({layer: params}, s.batch, dtype,
                                           gather_axes={layer: leaf_axes})[layer]
  towers = strategies._tower_slices(params)
  local = _narrow(net, layer, spec.shards(s.out))
  if layer == 'fc6':
    x = x.reshape(x.shape[0], -1)  # pool5 of both towers, (h, w, channels) as model.Tower
  parts = (jnp.split(x, len(towers), axis=-1) if layer in OWN_TOWER and len(towers) > 1
           else [x] * len(towers))
  keeps = (jnp.split(keep, len(towers), axis=1) if keep is not None and len(towers) > 1
           else [keep] * len(towers))
  return jnp.concatenate([_apply_layer(local, layer, p, xt, k)
                          for p, xt, k in zip(towers, parts, keeps)], axis=-1)


@dataclasses.dataclass(frozen=True)
class LayerwiseStrategy(strategies.Strategy):
  """A Strategy that keeps its spec: the formula reads it, and its layers may split the batch
  differently, so every layer's split must divide a batch (`batch_shards`)."""
  spec: Optional[Spec] = None

  @property
  def batch_shards(self) -> int:
    return self.spec.batch_shards()


def build(spec: Spec, net: model_lib.Tower, devices=None,
          gradient_exchange_dtype: str = 'float32') -> strategies.Strategy:
  """The strategy a spec describes (see the module docstring); SpecError if it cannot run."""
  found = problems(spec, net)
  if found:
    raise SpecError('; '.join(found))
  names = tuple(a for a, _ in spec.mesh)
  mesh = strategies.make_mesh(tuple(n for _, n in spec.mesh), names, devices)
  sizes = spec.sizes
  param_spec = lambda layer, what, shape: param_spec_of(spec, layer, what, shape)
  splits = dict(spec.layers)

  def forward(params, images, keep):
    specs = strategies.param_spec_tree(param_spec, params)
    first, last = splits['conv1'], splits['fc8']

    def run(params, images, keep):
      x, have = images, (first.batch, ())
      for layer in LAYERS:
        s = splits[layer]
        need_channels = (s.tower,) if layer in OWN_TOWER and s.tower else ()
        with jax.named_scope(layer):
          x = reshard(x, have, (s.batch, need_channels), s.used, sizes)
          leaf_axes = {w: _sharded_axis(sp, s) for w, sp in specs[layer].items()}
          x = layer_body(net, layer, s, spec, params[layer], x,
                         None if keep is None or layer not in keep else keep[layer],
                         gradient_exchange_dtype, leaf_axes)
        have = (s.batch, s.channels)
      return x

    keep_specs = None if keep is None else {
        l: P(splits[l].batch or None, splits[l].channels or None) for l in keep}
    return jax.shard_map(run, mesh=mesh,
                         in_specs=(specs, P(first.batch or None), keep_specs),
                         out_specs=P(last.batch or None, last.channels or None)
                         )(params, images, keep)

  strategy = LayerwiseStrategy(NAME, mesh, param_spec=param_spec,
                               batch_spec=P(first_batch(spec) or None), forward=forward,
                               gradient_exchange_dtype=gradient_exchange_dtype, spec=spec)
  return strategy


def first_batch(spec: Spec):
  """The axes the images are split over: conv1's batch axes (one axis as its name)."""
  b = spec.split('conv1').batch
  return b[0] if len(b) == 1 else b


def hand_written(name: str, n: int, num_towers: int = 2) -> Spec:
  """Each of the five strategies of strategies.py written as a spec."""
  one = lambda **kw: tuple((l, Split(**kw)) for l in LAYERS)
  if name == 'towers':
    return Spec((('tower', 2),), one(tower='tower'))
  if name in ('data', 'fsdp'):
    params = 'sharded' if name == 'fsdp' else 'replicated'
    return Spec((('data', n),), one(batch=('data',), params=params))
  if name == 'towers_data':
    return Spec((('data', n // 2), ('tower', 2)), one(batch=('data',), tower='tower'))
  if name == 'hybrid' and num_towers == 1:
    convs = Split(batch=('block',))
    fcs = Split(out=('block',))
    return Spec((('block', n),), tuple((l, convs if l.startswith('conv') else fcs)
                                       for l in LAYERS))
  if name == 'hybrid':
    layers = [(l, Split(batch=('tower', 'block'))) for l in strategies.CONV_LAYERS]
    layers += [(l, Split(tower='tower', out=('block',))) for l in ('fc6', 'fc7')]
    layers += [('fc8', Split(batch=('block',), tower='tower'))]
    return Spec((('tower', 2), ('block', n // 2)), tuple(layers))
  raise SpecError(f'no spec for {name!r}')


# --- What the config's `parallelism` and `layerwise` fields build: a named strategy, or a spec. ---

def devices_needed(parallelism: str, num_devices: int = 0, spec_path: str = '') -> int:
  """strategies.devices_needed, and for `layerwise` the spec's mesh (an unreadable spec: 1, the
  config check refuses it)."""
  if parallelism != NAME:
    return strategies.devices_needed(parallelism, num_devices)
  if num_devices > 0:
    return num_devices
  try:
    return load(spec_path).num_devices
  except SpecError:
    return 1


def resolve_num_devices(parallelism: str, num_devices: int, available: int,
                        spec_path: str = '') -> int:
  """strategies.resolve_num_devices, and for `layerwise` (num_devices 0) the spec's mesh."""
  if parallelism != NAME or num_devices > 0:
    return strategies.resolve_num_devices(parallelism, num_devices, available)
  return devices_needed(parallelism, 0, spec_path)


def fit_error(parallelism: str, num_devices: int, net: model_lib.Tower, available: int,
              spec_path: str = '') -> Optional[str]:
  """strategies.fit_error, and for `layerwise` why the spec cannot run (None when it can)."""
  if parallelism != NAME:
    return strategies.fit_error(parallelism, num_devices, net, available)
  try:
    spec = load(spec_path)
  except SpecError as e:
    return str(e)
  n = num_devices or spec.num_devices
  if n > available:
    return (f'the spec\'s mesh needs {n} devices but only {available} are visible; on CPU, '
            f"simulate more with jax.config.update('jax_num_cpu_devices', {n})")
  found = problems(spec, net, n)
  return '; '.join(found) if found else None


def make_strategy(parallelism: str, net: model_lib.Tower, devices=None, num_devices: int = 0,
                  gradient_exchange_dtype: str = 'float32',
                  spec_path: str = '') -> strategies.Strategy:
  """strategies.make_strategy, and for `layerwise` the strategy of the spec at `spec_path`."""
  if parallelism != NAME:
    return strategies.make_strategy(parallelism, net, devices, num_devices,
                                    gradient_exchange_dtype)
  spec = load(spec_path)
  found = problems(spec, net, num_devices or spec.num_devices)
  if found:
    raise SpecError('; '.join(found))
  devices = list(devices if devices is not None else jax.devices())
  return build(spec, net, devices[:spec.num_devices], gradient_exchange_dtype)
