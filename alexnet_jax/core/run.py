"""The one builder of a run: `build(config, devices)` -> `Run`.

Everything that turns a config into programs is here, once: the config check, the kernels for the
devices' platform, the network, the strategy and its mesh, the update rule, the state's shapes
and where each part lives, and the jitted train and eval steps. The training loop (train.py),
every tool (comms, bench, ablate, figures) and the tests build their runs with it, so they all
measure and test the program that trains.

Building executes nothing on the devices: it traces shapes and makes jitted functions. The
devices may be real ones, simulated CPU ones, or those of a topology description this process
cannot run on (`jax.experimental.topologies`): `run.train_step.lower(run.abstract_state,
run.abstract_batch()).compile()` then compiles for that hardware. `init_state` and
`state_from_params` are the separate calls that put a real state on real devices.
"""

import dataclasses
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.core import augment as augment_lib
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import kernels as kernels_lib
from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optimizer as optimizer_lib
from alexnet_jax.core import steps
from alexnet_jax.core import strategies


# The compiler options that overlap collectives with compute (config.overlap_collectives),
# passed as the train step's jit compiler_options: each is a field of XLA's DebugOptions (or
# libtpu's flags), checked by the compiler when it compiles (an unknown name fails). Sources and
# effects: docs/communication.md, "Overlap options".
OVERLAP_OPTIONS = {
    # XLA:GPU (openxla/xla xla/debug_options_flags.cc).
    'gpu': {'xla_gpu_enable_latency_hiding_scheduler': True,
            'xla_gpu_enable_highest_priority_async_stream': True},
    # libtpu, as MaxText sets them in LIBTPU_INIT_ARGS (benchmarks/xla_flags_library.py:
    # CF_FOR_ALL_GATHER, CF_FOR_ALL_REDUCE, DATA_PARALLEL_OVERLAP,
    # ENABLE_ASYNC_COLLECTIVE_PERMUTE).
    'tpu': {'xla_tpu_enable_async_collective_fusion': True,
            'xla_tpu_enable_async_collective_fusion_fuse_all_gather': True,
            'xla_tpu_enable_async_collective_fusion_fuse_all_reduce': True,
            'xla_tpu_enable_async_collective_fusion_multiple_steps': True,
            'xla_tpu_overlap_compute_collective_tc': True,
            'xla_enable_async_all_gather': True,
            'xla_enable_async_all_reduce': True,
            'xla_enable_async_collective_permute': True,
            'xla_tpu_enable_data_parallel_all_reduce_opt': True,
            'xla_tpu_data_parallel_opt_different_sized_ops': True},
}


def overlap_options(config: ml_collections.ConfigDict, platform: str) -> Optional[dict]:
  """The train step's compiler options for `platform` under config.overlap_collectives (None:
  the compiler's defaults; always on CPU)."""
  if not config_lib.overlap_on(config, platform):
    return None
  return dict(OVERLAP_OPTIONS[platform]) if platform in OVERLAP_OPTIONS else None


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run needs, built once from a config and a device list."""
  config: ml_collections.ConfigDict
  kernels: str  # 'reference' or 'cpu', resolved from config.model.kernels for the platform
  net: model_lib.Tower  # the one network definition every strategy partitions
  strategy: strategies.Strategy  # its mesh, shardings and partitioned forward
  tx: optax.GradientTransformation  # the paper's update rule
  abstract_state: steps.TrainState  # shapes, dtypes and shardings; nothing allocated
  train_step: Any  # jitted (state, batch) -> (state, metrics); the state is donated
  eval_step: Any  # jitted (params, batch) -> sums of loss, top-1, top-5 hits, count
  # 'host' or 'device' (config.augment_on resolved for the platform, core/augment.py). With
  # 'device' the batches the steps take are uint8 crops with their draws and the mean/std
  # (abstract_batch), and `augment` is the jitted batch -> float32 network input the steps
  # run first (the same function; tools and tests call it alone). None with 'host'.
  augment_on: str = 'host'
  augment: Any = None

  @property
  def mesh(self) -> jax.sharding.Mesh:
    return self.strategy.mesh

  @property
  def devices(self) -> list:
    return list(self.strategy.mesh.devices.flat)

  @property
  def batch_sharding(self) -> jax.sharding.NamedSharding:
    return self.strategy.batch_sharding

  @property
  def state_sharding(self) -> steps.TrainState:
    return jax.tree.map(lambda x: x.sharding, self.abstract_state)

  def abstract_batch(self, crops: Optional[str] = None) -> dict:
    """The global batch's shapes, dtypes and sharding as the input pipeline yields it: a training
    batch, or (`crops` 'center' / 'ten') an evaluation batch with its padding mask. With
    augment_on 'device': the uint8 crops (the square for 'ten'), the draws and the replicated
    mean and std (core/augment.abstract_batch), which is what the steps are compiled for."""
    c = self.config
    if self.augment_on == 'device':
      return augment_lib.abstract_batch(c, crops, self.batch_sharding, self.strategy.replicated)
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
    size = c.image_size
    if crops is None:
      return {'image': spec((c.batch_size, size, size, 3), jnp.float32),
              'label': spec((c.batch_size,), jnp.int32)}
    crop_axis = (10,) if crops == 'ten' else ()
    return {'image': spec((c.eval_batch_size, *crop_axis, size, size, 3), jnp.float32),
            'label': spec((c.eval_batch_size,), jnp.int32),
            'mask': spec((c.eval_batch_size,), jnp.float32)}

  def init_program(self):
    """The jitted initialisation, key -> state placed as `abstract_state` (one program).

    On XLA:CPU it is compiled at LLVM optimisation level 1: the eight kernels' random draws
    compile several times faster than at the default level, and the program runs once."""
    options = ({'xla_backend_optimization_level': 1}
               if self.devices[0].platform == 'cpu' else None)
    return jax.jit(lambda key: steps.initial_state(self.net, self.tx, key, self.config.image_size),
                   out_shardings=self.state_sharding, compiler_options=options)

  def init_state(self) -> steps.TrainState:
    """The initial state on the devices, from config.seed (executes)."""
    return self.init_program()(jax.random.key(self.config.seed))

  def state_from_params(self, params) -> steps.TrainState:
    """A state holding `params` (host arrays, towers stacked) placed as an initialised one,
    with zero momentum, step 0 and config.seed's dropout key (executes). The tests start every
    strategy from the same values this way."""
    shardings = self.state_sharding
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(self.tx.init, out_shardings=shardings.opt_state)(params)
    replicate = lambda x: jax.device_put(x, self.strategy.replicated)
    return steps.TrainState(
        step=replicate(np.zeros((), np.int32)), params=params, opt_state=opt_state,
        rng=replicate(jax.random.split(jax.random.key(self.config.seed))[1]))

  def synthetic_batch(self, seed: int = 0) -> dict:
    """A training batch of the config's shape (Gaussian pixels of std 50, random labels) on the
    devices: what the tools time and compile against when no dataset is needed (executes).
    With augment_on 'device': uniform uint8 pixels, random crops, flips and colours, and the
    config's constant mean_rgb as the mean."""
    rng = np.random.default_rng(seed)
    c = self.config
    if self.augment_on == 'device':
      shapes = self.abstract_batch()
      b, size = c.batch_size, c.image_size
      batch = {'image': rng.integers(0, 256, shapes['image'].shape).astype(np.uint8),
               'label': rng.integers(0, c.model.num_classes, b).astype(np.int32),
               'crop': rng.integers(0, c.resize_size - size + 1, (b, 2)).astype(np.int32),
               'flip': rng.uniform(size=b) < 0.5,
               'colour': rng.normal(size=(b, 3)).astype(np.float32) * 10,
               'mean': np.broadcast_to(np.asarray(c.mean_rgb, np.float32),
                                       shapes['mean'].shape).copy(),
               'std': np.asarray(c.std_rgb or (1.0, 1.0, 1.0), np.float32)}
      return jax.tree.map(lambda x, s: jax.device_put(x, s.sharding), batch, shapes)
    batch = {'image': rng.normal(size=(c.batch_size, c.image_size, c.image_size, 3)
                                 ).astype(np.float32) * 50,
             'label': rng.integers(0, c.model.num_classes, c.batch_size).astype(np.int32)}
    return jax.device_put(batch, self.batch_sharding)


def network(config: ml_collections.ConfigDict, platform: str) -> model_lib.Tower:
  """The network of `config` with the kernels `config.model.kernels` means on `platform`."""
  kernels = kernels_lib.resolve(config.model.kernels, platform)
  return model_lib.make_network(config.model, config.model.num_classes, kernels)


def build(config: ml_collections.ConfigDict, devices: Optional[Sequence] = None) -> Run:
  """The run `config` describes on `devices` (default: every device of this process's backend).

  Raises config.ConfigError listing every problem first; compiles nothing (jit compiles at the
  first call, or when a caller lowers and compiles)."""
  devices = list(jax.devices() if devices is None else devices)
  config_lib.check(config, devices)
  kernels = kernels_lib.resolve(config.model.kernels, devices[0].platform)
  net = model_lib.make_network(config.model, config.model.num_classes, kernels)
  strategy = layerwise.make_strategy(config.parallelism, net, devices, config.num_devices,
                                     config.gradient_exchange_dtype, config.layerwise)
  tx = optimizer_lib.from_config(config)
  shapes = jax.eval_shape(
      lambda: steps.initial_state(net, tx, jax.random.key(0), config.image_size))
  shardings = strategy.state_sharding(tx, shapes)
  abstract_state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                shapes, shardings)
  # fc6 and fc7 of the whole network (one tower keeps the two-tower widths, model.py).
  fc_total = tuple(2 * f for f in config.model.fc_features)
  augment_on = augment_lib.resolve(config, devices[0].platform)
  if augment_on == 'device':  # the steps take uint8 batches and finish them first
    to_float = lambda b: augment_lib.float_batch(b, config.image_size)
    keys = lambda k: augment_lib.batch_shardings(k + augment_lib.CONSTANT_KEYS,
                                                 strategy.batch_sharding, strategy.replicated)
    train_batch, eval_batch = keys(augment_lib.TRAIN_KEYS), keys(augment_lib.EVAL_KEYS)
    augment = jax.jit(lambda b: augment_lib.images(b, config.image_size),
                      out_shardings=strategy.batch_sharding)
  else:
    to_float, augment = (lambda b: b), None
    train_batch = eval_batch = strategy.batch_sharding
  train_step = jax.jit(
      lambda s, b: steps.train_step(s, to_float(b), strategy=strategy, tx=tx,
                                    fc_features_total=fc_total,
                                    dropout_rate=config.model.dropout_rate),
      in_shardings=(shardings, train_batch),
      out_shardings=(shardings, strategy.replicated), donate_argnums=0,
      compiler_options=overlap_options(config, devices[0].platform))
  eval_step = jax.jit(lambda p, b: steps.eval_step(p, to_float(b), strategy=strategy),
                      in_shardings=(shardings.params, eval_batch),
                      out_shardings=strategy.replicated)
  return Run(config=config, kernels=kernels, net=net, strategy=strategy, tx=tx,
             abstract_state=abstract_state, train_step=train_step, eval_step=eval_step,
             augment_on=augment_on, augment=augment)
