"""What several test modules share, in a module of its own (no `test_` prefix: pytest collects
nothing here, and no test module imports another): the paper's network built from
configs/default.py, a one-device AlexNet written independently of core/model.py, and the small
network's config, initial parameters and compiler options every strategy test uses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax.core import model as model_lib
from configs import default

# XLA:CPU compiles these small programs 3x faster with LLVM's optimisation off; the numbers and
# the collectives are the same programs' (the strategy, comms and run tests pass the same
# options, and so share the compilation cache).
FAST_COMPILE = {'xla_backend_optimization_level': 0, 'xla_llvm_disable_expensive_passes': True}


def network(**fields) -> model_lib.Tower:
  """The paper's network (configs/default.py's model section, 1000 classes, the reference
  kernels) with `fields` of its Tower changed."""
  config = default.get_config().model
  return model_lib.make_network(config, config.num_classes).clone(**fields)


def model_config(widths=None, **switches):
  """configs/default.py's model section (the paper's), with the switches changed."""
  c = default.get_config().model
  if widths is not None:
    c.conv_features, c.fc_features = widths
  for k, v in switches.items():
    c[k] = v
  return c


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# --- A one-device network written independently, for the two-tower shard_map and the others. ---

SMALL = dict(conv_features=(8, 16, 24, 24, 16), fc_features=(32, 32), classes_per_tower=5)
SMALL_SIZE = 67  # conv1 -> 15, pool -> 7, pool -> 3, pool5 -> 1


def pool(x, window=3, stride=2):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                               (1, stride, stride, 1), 'VALID')


def conv(x, w, b, stride, pad, groups=1):
  y = jax.lax.conv_general_dilated(x, w, (stride, stride), pad, feature_group_count=groups,
                                   dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                   precision=jax.lax.Precision.HIGHEST)
  return y + b


def lrn_by_group(x, groups=2):
  """LRN on each tower's channels separately (channel loop, like test_model's numpy_lrn, in
  jnp)."""
  halves = jnp.split(x, groups, axis=-1)
  out = []
  for h in halves:
    sq = h ** 2
    c = h.shape[-1]
    s = jnp.stack([jnp.sum(sq[..., max(0, i - 2):min(c, i + 3)], axis=-1) for i in range(c)], -1)
    out.append(h / (2.0 + 1e-4 * s) ** 0.75)
  return jnp.concatenate(out, -1)


@functools.partial(jax.jit, static_argnames=('rate', 'lrn', 'window', 'stride'))
def one_device_alexnet(stacked, x, keep=None, rate=0.5, lrn=True, window=3, stride=2):
  """AlexNet as one network with grouped convolutions (Caffe's group=2), from the stacked
  two-tower parameters: tower 1's kernels are the first half of every layer. With parameters
  stacked on an axis of 1 (model.num_towers = 1): one group, the plain one-tower network. `lrn`,
  `window`, `stride`: the ablation switches, written independently of model.py."""
  groups = stacked['conv1']['kernel'].shape[0]
  cat = lambda name, what: jnp.concatenate(list(stacked[name][what]), -1)
  relu = jax.nn.relu
  norm = (lambda y: lrn_by_group(y, groups)) if lrn else (lambda y: y)
  mp = lambda y: pool(y, window, stride)
  pad = model_lib.conv1_padding(x.shape[1])
  x = mp(norm(relu(conv(x, cat('conv1', 'kernel'), cat('conv1', 'bias'), 4,
                        ((0, pad), (0, pad))))))
  x = mp(norm(relu(conv(x, cat('conv2', 'kernel'), cat('conv2', 'bias'), 1,
                        ((2, 2), (2, 2)), groups=groups))))
  x = relu(conv(x, cat('conv3', 'kernel'), cat('conv3', 'bias'), 1, ((1, 1), (1, 1))))
  x = relu(conv(x, cat('conv4', 'kernel'), cat('conv4', 'bias'), 1, ((1, 1), (1, 1)), groups))
  x = mp(relu(conv(x, cat('conv5', 'kernel'), cat('conv5', 'bias'), 1, ((1, 1), (1, 1)),
                   groups)))
  x = x.reshape(x.shape[0], -1)
  hp = jax.lax.Precision.HIGHEST
  for name in ('fc6', 'fc7'):
    x = relu(jnp.dot(x, cat(name, 'kernel'), precision=hp) + cat(name, 'bias'))
    if keep is not None:
      x = x * keep[name] / (1 - rate)
  return jnp.dot(x, cat('fc8', 'kernel'), precision=hp) + cat('fc8', 'bias')


# --- The small network every strategy is run on (test_strategies, test_comms, test_run). ---

def small_config(batch_size: int = 8, num_towers: int = 2):
  """SMALL with 8 classes (so fc8 splits over towers, or over 1, 2, 4 and 8 devices in one
  tower's hybrid), dropout on, and no weight decay, so the first step's velocity is exactly
  -learning_rate * gradient. `num_towers` = 1: the one-tower net of those widths."""
  c = default.get_config()
  c.model.num_towers = num_towers
  c.model.conv_features = SMALL['conv_features']
  c.model.fc_features = SMALL['fc_features']
  c.model.num_classes = 8
  c.image_size = SMALL_SIZE
  c.batch_size = c.eval_batch_size = batch_size
  c.weight_decay = 0.0
  return c


@functools.lru_cache(maxsize=None)
def initial_params(num_towers: int = 2):
  """One initialisation for every strategy, with larger weights than the paper's 0.01 so every
  layer's signal is far from zero."""
  config = small_config(num_towers=num_towers)
  net = model_lib.make_network(config.model, config.model.num_classes)
  params = jax.jit(lambda k: model_lib.init_params(net, k, config.image_size))(
      jax.random.key(config.seed))
  return jax.tree.map(lambda p: np.asarray(p) * 10.0, params)


def layer_shapes(net, size: int):
  """Shapes only, nothing computed: the parameters (towers stacked on the first axis) and each
  weight layer's output per image and tower."""
  params = jax.eval_shape(lambda k: model_lib.init_params(net, k, size), jax.random.key(0))
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params)
  _, state = jax.eval_shape(
      lambda p, x: net.apply({'params': p}, x, model_lib.self_exchange(net),
                               capture_intermediates=True, mutable=['intermediates']),
      one, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  outputs = {name: v['__call__'][0].shape[1:] for name, v in state['intermediates'].items()
             if name in params}
  return params, outputs
