"""How the network is laid out on devices: the mesh and the partitioning strategies.

A strategy turns the one `Tower` definition (model.py) into a forward function

    forward(params, images, keep) -> logits

over global arrays, where `params` holds both towers stacked on a leading axis of size 2,
`images` is the global batch and `keep` the global dropout masks (model.dropout_masks). Each
strategy is a `jax.shard_map` whose `in_specs`/`out_specs` and collectives are its
communication; gradients come from differentiating through it (the transpose of an all-gather is
a reduce-scatter, so the backward pass moves the same volume the other way).
"""

import dataclasses
from typing import Any, Callable

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from alexnet_jax import model as model_lib

Forward = Callable[[Any, jax.Array, Any], jax.Array]
STRATEGIES = ('towers',)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A partitioning: its mesh, where parameters and batches live, and its forward function."""
  name: str
  mesh: Mesh
  param_spec: P  # for every leaf of the stacked (2, ...) parameters
  batch_spec: P  # for the leading (batch) axis of images and labels
  forward: Forward

  def param_sharding(self, params) -> Any:
    return jax.tree.map(lambda _: NamedSharding(self.mesh, self.param_spec), params)

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, self.batch_spec)

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())


def devices_needed(parallelism: str) -> int:
  """How many devices a strategy needs (the CPU backend is made to simulate that many)."""
  return {'towers': 2}.get(parallelism, 1)  # an unknown name is refused by the config check


def make_mesh(shape: tuple[int, ...], names: tuple[str, ...], devices=None) -> Mesh:
  """A mesh over the first prod(shape) devices, with jit free to place what shard_map does not."""
  n = 1
  for s in shape:
    n *= s
  devices = list(devices if devices is not None else jax.devices())
  if len(devices) < n:
    raise ValueError(
        f'The mesh {dict(zip(names, shape))} needs {n} devices but only {len(devices)} are '
        f'visible ({devices[0].platform}). On CPU, simulate more with '
        f"jax.config.update('jax_num_cpu_devices', {n}) before JAX starts.")
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape),
                       devices=devices[:n])


def gather_towers(x: jax.Array) -> jax.Array:
  """A cross-tower read: both towers' `x`, tower 1's channels first (an all-gather)."""
  return jax.lax.all_gather(x, 'tower', axis=x.ndim - 1, tiled=True)


def towers(tower: model_lib.Tower, devices=None) -> Strategy:
  """The paper's split: tower t's parameters on device t, the whole batch on both.

  conv1, conv2, conv4, conv5 run in their tower without communication. conv3, fc6, fc7 and fc8
  all-gather both towers' activations across `tower` (forward) and reduce-scatter their
  gradients (backward). Each tower returns the logits of its half of the classes.
  """
  mesh = make_mesh((2,), ('tower',), devices)

  def per_tower(params, images, keep):
    params = jax.tree.map(lambda a: a[0], params)  # this tower's slice of the stacked axis
    return tower.apply({'params': params}, images, gather_towers, keep)

  forward = jax.shard_map(
      per_tower, mesh=mesh,
      in_specs=(P('tower'),  # parameters: tower t on device t
                P(),  # images: the whole batch on both towers
                P(None, 'tower')),  # dropout masks: each tower's own fc6/fc7 units
      out_specs=P(None, 'tower'))  # logits: each tower's half of the classes
  return Strategy('towers', mesh, param_spec=P('tower'), batch_spec=P(), forward=forward)


def make_strategy(parallelism: str, tower: model_lib.Tower, devices=None) -> Strategy:
  """The strategy a config names."""
  builders = {'towers': towers}
  if parallelism not in builders:
    raise ValueError(f'Unknown parallelism {parallelism!r}; choose one of {STRATEGIES}.')
  return builders[parallelism](tower, devices)
