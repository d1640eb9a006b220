"""Fig. 2 of the paper: one tower of AlexNet, defined once and used for both towers.

The network is two identical towers ("GPU 1" and "GPU 2") with their own parameters. A tower
computes half of every layer's kernels; conv3, fc6, fc7 and fc8 read BOTH towers' previous
layer. Those cross-tower reads are the only places the towers talk, so `Tower.__call__` takes
the read as a function, `exchange`, supplied by the partitioning strategy: an all-gather across
devices inside `shard_map` (strategies.py), or a concatenation when one device holds both.

    layer  kernels total (per tower)  kernel / stride            input from
    conv1  96 (48)                    11 x 11 x 3 / 4            the image
    conv2  256 (128)                  5 x 5 x 48 / 1, pad 2      own tower
    conv3  384 (192)                  3 x 3 x 256 / 1, pad 1     BOTH towers
    conv4  384 (192)                  3 x 3 x 192 / 1, pad 1     own tower
    conv5  256 (128)                  3 x 3 x 192 / 1, pad 1     own tower
    fc6    4096 (2048)                9216 inputs                BOTH towers
    fc7    4096 (2048)                4096 inputs                BOTH towers
    fc8    1000 (500)                 4096 inputs                BOTH towers

fc8 is split by class: each tower computes the logits of half of the classes (the paper leaves
where fc8 lives free; the parameter count is the same), so `num_classes` must be even.

The paper's design choices are fields of `Tower` (defaults: the paper's), so each can be turned
off for an ablation (alexnet_jax/paper/ablate.py): `lrn`, `pool_window` / `pool_stride`, and `towers`
(2, or 1: the paper's one-GPU net, see `one_tower_widths`).
"""

import math
from typing import Callable, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from alexnet_jax.core import kernels as kernels_lib

Array = jax.Array
Exchange = Callable[[Array], Array]

# Section 3.3: k = 2, n = 5, alpha = 1e-4, beta = 0.75 (alpha NOT divided by n).
LRN_K, LRN_N, LRN_ALPHA, LRN_BETA = 2.0, 5, 1e-4, 0.75


def local_response_norm(x: Array, k: float = LRN_K, n: int = LRN_N, alpha: float = LRN_ALPHA,
                        beta: float = LRN_BETA, *, impl: str) -> Array:
  """b_i = a_i / (k + alpha * sum_{|j - i| <= n/2} a_j^2)^beta over the channels of `x`.

  `x` holds ONE tower's channels, so the window stops at the tower's edges as on the two GPUs.
  In float32 whatever the compute dtype. `impl`: 'reference' (the formula, differentiated by
  JAX) or 'cpu' (a hand-written gradient), see kernels.py.
  """
  return kernels_lib.local_response_norm(x, k, n, alpha, beta, impl)


def max_pool(x: Array, window: int, stride: int, impl: str) -> Array:
  """Max pooling, no padding: overlapping (the paper's window 3, stride 2) or not (2, 2).
  `impl`: 'reference' (`lax.reduce_window`) or 'cpu' (a hand-written gradient), see kernels.py."""
  return kernels_lib.max_pool(x, window, stride, impl)


def conv1_padding(image_size: int, kernel: int = 11, stride: int = 4) -> int:
  """Bottom/right padding that makes conv1 output ceil((S - 11) / 4) + 1 pixels, as cuda-convnet.

  A 224 crop gets 3 pixels (55 x 55 out); Caffe's 227 crop gets 0 (also 55 x 55).
  """
  out = -(-(image_size - kernel) // stride) + 1
  return (out - 1) * stride + kernel - image_size


def dropout(x: Array, keep: Optional[Array], rate: float) -> Array:
  """Inverted dropout with a mask made elsewhere (see `dropout_masks`); `keep=None` is test time.

  Scaling kept units by 1 / (1 - rate) while training gives the same expectation as the paper's
  multiplying by 0.5 at test time.
  """
  if keep is None:
    return x
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def dropout_masks(rng: Array, batch_size: int, fc_features_total: Sequence[int],
                  rate: float) -> dict[str, Array]:
  """Keep-masks for fc6 and fc7 of the WHOLE network and the WHOLE global batch.

  Each neuron's mask is a function of the seed and the neuron's global (example, unit) position
  only, so every partitioning of the network drops the same units; a strategy hands each device
  its block with `in_specs`, so the two towers (different units) get different masks.
  """
  names = ('fc6', 'fc7')
  return {
      name: jax.random.bernoulli(jax.random.fold_in(rng, i), 1.0 - rate, (batch_size, width))
      for i, (name, width) in enumerate(zip(names, fc_features_total))
  }


class Tower(nn.Module):
  """One tower of Fig. 2 (widths per tower). The network is `num_towers` of these with their own
  parameters; `make_network` builds it from a config, whose defaults (configs/default.py) are the
  paper's."""
  conv_features: Sequence[int]
  fc_features: Sequence[int]
  classes_per_tower: int
  dropout_rate: float
  dtype: jnp.dtype  # compute dtype; parameters stay float32
  # 'paper': section 5, N(0, 0.01^2) weights, bias 1 in conv2, conv4, conv5, fc6, fc7 (so ReLUs
  # start with positive input), 0 elsewhere. 'he': N(0, 2 / fan_in) weights and zero biases, for
  # narrow layers and short runs, where 0.01 lets the signal die out (see configs/tiny.py).
  init_scheme: str
  # fc8's kernel at zero (as big_vision's `head_zeroinit`), whatever the scheme: the first
  # logits are all 0 (loss log C) instead of large ones from 4096 inputs whose first updates
  # knock the net off course; the gradient reaches fc7 from the second step on.
  head_zeroinit: bool
  # The design choices the paper measures (section 3), for ablations. `num_towers`: 2, or 1 for
  # one tower whose widths `make_network` sets (see `one_tower_widths`).
  lrn: bool
  pool_window: int
  pool_stride: int
  num_towers: int
  # Which implementation of LRN, max pooling and the convolutions' gradients (kernels.py):
  # 'reference' (the paper's formulas, differentiated by JAX) or 'cpu' (hand-written gradients).
  kernels: str

  def setup(self):
    if self.init_scheme == 'paper':
      weights = nn.initializers.normal(stddev=0.01)
      positive = 1.0
    elif self.init_scheme == 'he':
      weights = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')
      positive = 0.0
    else:
      raise ValueError(f"Tower.init_scheme={self.init_scheme!r}: use 'paper' or 'he'.")

    def conv(name, features, kernel, stride, padding, bias):
      return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=padding,
                     kernel_init=weights, bias_init=nn.initializers.constant(bias),
                     dtype=self.dtype, name=name,
                     conv_general_dilated=kernels_lib.flax_conv_general_dilated(self.kernels))

    def dense(name, features, bias, kernel_init=weights):
      return nn.Dense(features, kernel_init=kernel_init,
                      bias_init=nn.initializers.constant(bias), dtype=self.dtype, name=name)

    c1, c2, c3, c4, c5 = self.conv_features
    self.conv1 = conv('conv1', c1, 11, 4, 'VALID', 0.0)  # padding applied in `conv1_conv2`
    self.conv2 = conv('conv2', c2, 5, 1, ((2, 2), (2, 2)), positive)
    self.conv3 = conv('conv3', c3, 3, 1, ((1, 1), (1, 1)), 0.0)
    self.conv4 = conv('conv4', c4, 3, 1, ((1, 1), (1, 1)), positive)
    self.conv5 = conv('conv5', c5, 3, 1, ((1, 1), (1, 1)), positive)
    self.fc6 = dense('fc6', self.fc_features[0], positive)
    self.fc7 = dense('fc7', self.fc_features[1], positive)
    self.fc8 = dense('fc8', self.classes_per_tower, 0.0,
                     nn.initializers.zeros if self.head_zeroinit else weights)

  # The stages between cross-tower reads. A strategy that holds both towers on one device
  # calls these directly; `__call__` strings them together with `exchange` between them.

  def _norm(self, x: Array) -> Array:
    return local_response_norm(x, impl=self.kernels) if self.lrn else x

  def _pool(self, x: Array) -> Array:
    return max_pool(x, self.pool_window, self.pool_stride, self.kernels)

  def conv1_conv2(self, image: Array) -> Array:
    """Own tower: conv1 (from the image) and conv2; 13 x 13 x 128 out."""
    p = conv1_padding(image.shape[-2])
    x = jnp.pad(image.astype(self.dtype), ((0, 0), (0, p), (0, p), (0, 0)))
    x = self._pool(self._norm(nn.relu(self.conv1(x))))
    return self._pool(self._norm(nn.relu(self.conv2(x))))

  def conv3_conv5(self, both: Array) -> Array:
    """conv3 reads both towers' conv2; conv4 and conv5 their own tower; pool5 (6 x 6 x 128) out."""
    x = nn.relu(self.conv3(both))
    x = nn.relu(self.conv4(x))
    x = self._pool(nn.relu(self.conv5(x)))
    return x

  def fc6_fc7(self, both: Array, keep: Optional[Array], layer: str) -> Array:
    """fc6 or fc7: reads both towers, ReLU, dropout."""
    dense = self.fc6 if layer == 'fc6' else self.fc7
    return dropout(nn.relu(dense(both)), keep, self.dropout_rate)

  def logits(self, both: Array) -> Array:
    """fc8: this tower's half of the classes, from both towers' fc7."""
    return self.fc8(both).astype(jnp.float32)

  def __call__(self, image: Array, exchange: Exchange,
               keep: Optional[Mapping[str, Array]] = None) -> Array:
    """This tower's logits. `exchange(x)` returns both towers' `x`, concatenated on the last axis.

    `keep` holds this tower's dropout masks ({'fc6': [B, fc6 units], 'fc7': ...}); None disables
    dropout (evaluation).
    """
    keep = keep or {}
    x = self.conv1_conv2(image)
    x = self.conv3_conv5(exchange(x))  # conv3: cross-tower
    x = exchange(x)  # fc6: cross-tower, pool5 of both towers (channels: tower 1 then tower 2)
    x = x.reshape(x.shape[0], -1)  # 6 x 6 x 256 = 9216 for the paper's network
    x = self.fc6_fc7(x, keep.get('fc6'), 'fc6')
    x = self.fc6_fc7(exchange(x), keep.get('fc7'), 'fc7')  # fc7: cross-tower
    return self.logits(exchange(x))  # fc8: cross-tower


def one_tower_widths(conv_features: Sequence[int], fc_features: Sequence[int]
                     ) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """The paper's one-GPU net, from the two-tower net's per-tower widths.

  "Two towers against one tower with half the kernels" (section 3.2, -1.7 / -1.2 points). The
  paper's footnote: the one-GPU net keeps the two-tower net's full size in the LAST conv layer
  and the fully-connected layers after it (most parameters are in fc6, which reads conv5), so
  the two nets have about the same number of parameters, a comparison biased in the one-GPU
  net's favour (docs/alexnet2012.md, section 3.2). So conv1-conv4 have one tower's widths (half of each layer's
  kernels), conv5, fc6, fc7 both towers' widths, fc8 all the classes: 48-128-192-192-256
  kernels, 4096-4096-1000 neurons, 59,798,312 parameters at 1000 classes (two towers:
  60,965,224). No second tower, so no cross-tower layers: conv3 reads conv2's 128 maps, not 256.
  """
  c1, c2, c3, c4, c5 = conv_features
  f6, f7 = fc_features
  return (c1, c2, c3, c4, 2 * c5), (2 * f6, 2 * f7)


COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')


def make_network(model_config, num_classes: int, kernels: str = 'reference') -> Tower:
  """The network a config's `model` section describes: the Tower definition its `num_towers`
  towers share (their parameters are stacked on a leading axis). `kernels` is the resolved
  implementation ('reference' or 'cpu', see kernels.py); the run builder picks it for its devices.

  `model.num_towers` = 1 makes the one-tower net of `one_tower_widths`; its fc6 and fc7 keep the
  two-tower net's total widths, so the dropout masks (2 x config fc widths) are the same shape.
  """
  conv_features, fc_features = model_config.conv_features, model_config.fc_features
  if model_config.num_towers == 1:
    conv_features, fc_features = one_tower_widths(conv_features, fc_features)
  return Tower(conv_features=tuple(conv_features),
               fc_features=tuple(fc_features),
               classes_per_tower=num_classes // model_config.num_towers,
               dropout_rate=model_config.dropout_rate, dtype=jnp.dtype(model_config.dtype),
               init_scheme=model_config.init_scheme,
               head_zeroinit=model_config.head_zeroinit,
               lrn=model_config.lrn,
               pool_window=model_config.pool_window,
               pool_stride=model_config.pool_stride,
               num_towers=model_config.num_towers, kernels=kernels)


def self_exchange(net: Tower) -> Exchange:
  """The cross-tower read where only shapes matter (or with one tower: there is no other):
  the tower's activations concatenated with themselves, once per tower."""
  return lambda x: jnp.concatenate([x] * net.num_towers, axis=-1)


def init_params(net: Tower, rng: Array, image_size: int) -> dict:
  """All towers' parameters, stacked on a leading axis of size `net.num_towers` (the paper's
  2: tower 1, tower 2).

  Each tower draws from its own key. Initialisation needs only shapes, so the cross-tower read
  is stood in for by concatenating the tower's activations with themselves.
  """
  image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  init_one = lambda key: net.init(key, image, self_exchange(net))['params']
  return jax.vmap(init_one)(jax.random.split(rng, net.num_towers))


def pool5_size(image_size: int, pool_window: int, pool_stride: int) -> int:
  """Height (= width) of pool5 for a crop of `image_size` (6 for the paper's 224)."""
  size = -(-(image_size - 11) // 4) + 1  # conv1, with `conv1_padding`
  for _ in range(3):  # pool1, pool2, pool5; conv2-conv5 keep the size (padding)
    size = (size - pool_window) // pool_stride + 1
  return size


def layer_macs(net: Tower, image_size: int) -> dict[str, int]:
  """Multiply-adds per image of each conv and fc layer, all towers, read off the model itself.

  An output value of a layer whose kernel has shape (..., fan_in, out) costs fan_in
  multiply-adds, so a layer costs (its output positions per image) x (its kernel's size); both
  come from tracing the network (shapes only), so every variant (towers, pooling) is counted as
  it is built. ReLU, LRN, pooling and softmax are not counted. The paper's network: 724,406,816
  at 224 x 224 (the paper: "about 724 million").
  """
  params = jax.eval_shape(lambda k: init_params(net, k, image_size), jax.random.key(0))
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params)
  image = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  _, state = jax.eval_shape(
      lambda p, x: net.apply({'params': p}, x, self_exchange(net),
                               capture_intermediates=True, mutable=['intermediates']),
      one, image)
  out = state['intermediates']
  positions = lambda name: math.prod(out[name]['__call__'][0].shape[1:-1])  # H x W, or 1
  return {name: net.num_towers * positions(name) * math.prod(one[name]['kernel'].shape)
          for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')}


def param_count(net: Tower, image_size: int) -> int:
  """Parameters of all towers (60,965,224 for the paper's network at 1000 classes)."""
  params = jax.eval_shape(lambda k: init_params(net, k, image_size), jax.random.key(0))
  return sum(math.prod(a.shape) for a in jax.tree.leaves(params))
