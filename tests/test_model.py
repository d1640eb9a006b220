"""The network of Fig. 2: sizes, LRN, init, and the two-tower split against a one-device net."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
# The independent one-device network and the shared helpers (tests/ is on sys.path under pytest).
import reference
from reference import SMALL, SMALL_SIZE, model_config, network, one_device_alexnet, rel_err

PAPER_PARAMS = 60_965_224


def numpy_lrn(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
  """The paper's formula, channel by channel, with the sum clipped at the tower's edges."""
  a = np.asarray(a, np.float64)
  num = a.shape[-1]
  out = np.empty_like(a)
  for i in range(num):
    lo, hi = max(0, i - n // 2), min(num - 1, i + n // 2)
    s = np.sum(a[..., lo:hi + 1] ** 2, axis=-1)
    out[..., i] = a[..., i] / (k + alpha * s) ** beta
  return out


@pytest.mark.parametrize('impl', ['reference', 'cpu'])
def test_lrn_matches_paper_formula_including_tower_edges(impl):
  rng = np.random.default_rng(0)
  # Large activations so the denominator differs from k**beta noticeably.
  a = rng.normal(scale=60.0, size=(2, 3, 3, 48)).astype(np.float32)
  got = np.asarray(model_lib.local_response_norm(jnp.asarray(a), impl=impl))
  want = numpy_lrn(a)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # The edge channels sum over 3 neighbours, not 5: check channel 0 by hand.
  s0 = np.sum(a[..., 0:3].astype(np.float64) ** 2, axis=-1)
  np.testing.assert_allclose(got[..., 0], a[..., 0] / (2 + 1e-4 * s0) ** 0.75, rtol=1e-5)


@pytest.mark.parametrize('size,pad', [(224, 3), (227, 0)])
def test_conv1_padding_gives_55(size, pad):
  assert model_lib.conv1_padding(size) == pad
  assert (size + pad - 11) // 4 + 1 == 55


def paper_tower():
  return network()


def test_full_paper_network_parameter_count_and_layer_shapes():
  net = paper_tower()
  params = jax.eval_shape(lambda k: model_lib.init_params(net, k, 224), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(params)) == PAPER_PARAMS
  # Per layer: (kernel shape per tower, bias) as in the paper's table.
  expected = {'conv1': (11, 11, 3, 48), 'conv2': (5, 5, 48, 128), 'conv3': (3, 3, 256, 192),
              'conv4': (3, 3, 192, 192), 'conv5': (3, 3, 192, 128), 'fc6': (9216, 2048),
              'fc7': (4096, 2048), 'fc8': (4096, 500)}
  for name, shape in expected.items():
    assert params[name]['kernel'].shape == (2,) + shape, name
    assert params[name]['bias'].shape == (2, shape[-1]), name

  # Every layer's output, both towers together, equals the table.
  concat_self = lambda x: jnp.concatenate([x, x], axis=-1)
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), params)
  _, state = jax.eval_shape(
      lambda p, x: net.apply({'params': p}, x, concat_self, capture_intermediates=True,
                               mutable=['intermediates']),
      one, jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32))
  inter = state['intermediates']
  table = {'conv1': (55, 55, 96), 'conv2': (27, 27, 256), 'conv3': (13, 13, 384),
           'conv4': (13, 13, 384), 'conv5': (13, 13, 256), 'fc6': (4096,), 'fc7': (4096,),
           'fc8': (1000,)}
  for name, shape in table.items():
    per_tower = inter[name]['__call__'][0].shape[1:]
    assert per_tower[:-1] + (2 * per_tower[-1],) == shape, name


def test_full_paper_network_runs_on_two_towers():
  """The real network at 224 on 2 devices: logits of the right shape, towers on their devices."""
  net = paper_tower()
  strategy = strategies.towers_strategy(net)
  params = jax.jit(lambda k: model_lib.init_params(net, k, 224),
                   out_shardings=strategy.param_sharding(
                       jax.eval_shape(lambda k: model_lib.init_params(net, k, 224),
                                      jax.random.key(0))))(jax.random.key(0))
  conv1 = params['conv1']['kernel']
  assert [s.data.shape for s in conv1.addressable_shards] == [(1, 11, 11, 3, 48)] * 2
  assert len({s.device for s in conv1.addressable_shards}) == 2
  images = jax.random.normal(jax.random.key(1), (2, 224, 224, 3)) * 50
  logits = jax.jit(strategy.forward)(params, images, None)
  assert logits.shape == (2, 1000)
  assert np.all(np.isfinite(np.asarray(logits)))


def test_init_follows_section_5():
  net = paper_tower()
  params = jax.jit(lambda k: model_lib.init_params(net, k, 224))(jax.random.key(0))
  for name in ('conv2', 'conv4', 'conv5', 'fc6', 'fc7'):
    np.testing.assert_array_equal(np.asarray(params[name]['bias']), 1.0)
  for name in ('conv1', 'conv3', 'fc8'):
    np.testing.assert_array_equal(np.asarray(params[name]['bias']), 0.0)
  w = np.asarray(params['fc6']['kernel'])
  assert abs(w.mean()) < 1e-4 and abs(w.std() - 0.01) < 1e-4
  # The two towers start from different draws.
  assert not np.allclose(w[0], w[1])


# --- The two-tower shard_map against the one-device network written independently
# (tests/reference.py). ---


@functools.lru_cache(maxsize=None)
def small_setup(batch=4):
  """Built once per test session: compiling an initialisation costs seconds on CPU."""
  net = network(**SMALL)
  strategy = strategies.towers_strategy(net)
  abstract = jax.eval_shape(lambda k: model_lib.init_params(net, k, SMALL_SIZE),
                            jax.random.key(0))
  params = jax.jit(lambda k: model_lib.init_params(net, k, SMALL_SIZE),
                   out_shardings=strategy.param_sharding(abstract))(jax.random.key(0))
  # Larger weights than the paper's 0.01 so every layer's signal is far from zero.
  params = jax.tree.map(lambda p: p * 10.0, params)
  images = jax.random.normal(jax.random.key(1), (batch, SMALL_SIZE, SMALL_SIZE, 3)) * 50
  return net, strategy, params, images


def test_two_towers_equal_one_device_network_without_dropout():
  _, strategy, params, images = small_setup()
  got = jax.jit(strategy.forward)(params, images, None)
  host = jax.tree.map(np.asarray, params)
  want = one_device_alexnet(host, np.asarray(images))
  assert got.shape == (4, 10)
  assert rel_err(got, want) <= 1e-5
  assert np.std(np.asarray(want)) > 1e-3  # the comparison is not between two near-zero arrays


def test_two_towers_dropout_masks_differ_and_match_one_device_network():
  _, strategy, params, images = small_setup()
  keep = model_lib.dropout_masks(jax.random.key(7), 4, (64, 64), 0.5)
  tower1, tower2 = np.split(np.asarray(keep['fc6']), 2, axis=1)
  assert (tower1 != tower2).mean() > 0.3  # different neurons get different masks
  got = jax.jit(strategy.forward)(params, images, keep)
  want = one_device_alexnet(jax.tree.map(np.asarray, params), np.asarray(images),
                            jax.tree.map(np.asarray, keep))
  assert rel_err(got, want) <= 1e-5
  # ... and dropout changed the output.
  assert rel_err(got, jax.jit(strategy.forward)(params, images, None)) > 1e-2


def test_two_towers_gradients_equal_one_device_network():
  """The backward collectives (reduce-scatter of the all-gathers) give the true gradient."""
  _, strategy, params, images = small_setup()
  labels = jnp.array([0, 3, 5, 9])
  keep = model_lib.dropout_masks(jax.random.key(7), 4, (64, 64), 0.5)

  def loss(fwd, p):
    logits = fwd(p)
    return -jnp.mean(jnp.sum(jax.nn.one_hot(labels, 10) * jax.nn.log_softmax(logits), -1))

  got = jax.jit(jax.grad(functools.partial(
      loss, lambda p: strategy.forward(p, images, keep))))(params)
  host = jax.tree.map(np.asarray, params)
  want = jax.jit(jax.grad(functools.partial(
      loss, lambda p: one_device_alexnet(p, np.asarray(images), keep))))(host)
  for name in want:
    for what in ('kernel', 'bias'):
      assert rel_err(got[name][what], want[name][what]) <= 1e-5, (name, what)
      assert np.abs(np.asarray(want[name][what])).max() > 0, (name, what)


def test_he_init_scheme_scales_by_fan_in_with_zero_biases():
  net = network(**SMALL, init_scheme='he')
  params = jax.jit(lambda k: model_lib.init_params(net, k, SMALL_SIZE))(jax.random.key(0))
  for name, fan_in in (('conv1', 11 * 11 * 3), ('conv3', 3 * 3 * 32), ('fc6', 32)):
    w = np.asarray(params[name]['kernel'])
    assert abs(w.std() - np.sqrt(2.0 / fan_in)) < 0.15 * np.sqrt(2.0 / fan_in), name
  for leaf in jax.tree.leaves({k: v['bias'] for k, v in params.items()}):
    np.testing.assert_array_equal(np.asarray(leaf), 0.0)



def test_head_zeroinit_zeroes_fc8_only_and_starts_at_loss_log_classes():
  config = model_config(head_zeroinit=True, init_scheme='he')
  config.conv_features, config.fc_features = SMALL['conv_features'], SMALL['fc_features']
  net = model_lib.make_network(config, 10)
  plain = model_lib.make_network(model_config(init_scheme='he', widths=(
      SMALL['conv_features'], SMALL['fc_features'])), 10)
  key = jax.random.key(0)
  params = model_lib.init_params(net, key, SMALL_SIZE)
  reference = model_lib.init_params(plain, key, SMALL_SIZE)
  np.testing.assert_array_equal(np.asarray(params['fc8']['kernel']), 0.0)
  assert np.abs(np.asarray(reference['fc8']['kernel'])).max() > 0
  for name in ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7'):  # same draws
    np.testing.assert_array_equal(np.asarray(params[name]['kernel']),
                                  np.asarray(reference[name]['kernel']))
  strategy = strategies.make_strategy('towers', net)
  images = jax.random.normal(jax.random.key(1), (4, SMALL_SIZE, SMALL_SIZE, 3))
  logits = strategy.forward(jax.device_put(params, strategy.param_sharding(params)), images, None)
  np.testing.assert_array_equal(np.asarray(logits), 0.0)  # softmax loss: log 10 exactly

# --- The ablation switches (alexnet_jax/paper/ablate.py): each changes exactly what it names. ---

def shapes(net, size):
  """Kernel shapes (stacked axis first) and each layer's output per image, all towers."""
  params, out = reference.layer_shapes(net, size)
  out = {name: s[:-1] + (net.num_towers * s[-1],) for name, s in out.items()}
  return {name: p['kernel'].shape for name, p in params.items()}, out


# By hand, from the paper's table: (kernel h, w, in, out) per tower, and outputs H x W x C.
TWO_TOWERS_224 = (
    {'conv1': (2, 11, 11, 3, 48), 'conv2': (2, 5, 5, 48, 128), 'conv3': (2, 3, 3, 256, 192),
     'conv4': (2, 3, 3, 192, 192), 'conv5': (2, 3, 3, 192, 128), 'fc6': (2, 9216, 2048),
     'fc7': (2, 4096, 2048), 'fc8': (2, 4096, 500)},
    {'conv1': (55, 55, 96), 'conv2': (27, 27, 256), 'conv3': (13, 13, 384),
     'conv4': (13, 13, 384), 'conv5': (13, 13, 256), 'fc6': (4096,), 'fc7': (4096,),
     'fc8': (1000,)})
# The paper's one-GPU net: half the kernels in conv1-conv4, conv5 and the fc layers full.
ONE_TOWER_224 = (
    {'conv1': (1, 11, 11, 3, 48), 'conv2': (1, 5, 5, 48, 128), 'conv3': (1, 3, 3, 128, 192),
     'conv4': (1, 3, 3, 192, 192), 'conv5': (1, 3, 3, 192, 256), 'fc6': (1, 9216, 4096),
     'fc7': (1, 4096, 4096), 'fc8': (1, 4096, 1000)},
    {'conv1': (55, 55, 48), 'conv2': (27, 27, 128), 'conv3': (13, 13, 192),
     'conv4': (13, 13, 192), 'conv5': (13, 13, 256), 'fc6': (4096,), 'fc7': (4096,),
     'fc8': (1000,)})


def hand_params(kernels):
  return sum(k[0] * (math.prod(k[1:]) + k[-1]) for k in kernels.values())


def hand_macs(kernels, outputs):
  """H x W x C_out x (kernel h x w x C_in) per layer: the paper's "multiply-adds"."""
  return sum(math.prod(outputs[n]) * math.prod(k[1:-1]) for n, k in kernels.items())


@pytest.mark.parametrize('switches,expected,params,macs', [
    ({}, TWO_TOWERS_224, PAPER_PARAMS, 724_406_816),
    ({'lrn': False}, TWO_TOWERS_224, PAPER_PARAMS, 724_406_816),
    ({'pool_window': 2, 'pool_stride': 2}, TWO_TOWERS_224, PAPER_PARAMS, 724_406_816),
    ({'num_towers': 1}, ONE_TOWER_224, 59_798_312, 391_514_384),
])
def test_switch_changes_exactly_the_layers_it_names_at_224(switches, expected, params, macs):
  """LRN and 2 x 2 pooling keep every shape at 224 (55 -> 27 -> 13 -> 6 either way, as the
  paper says: "equivalent dimensions"); one tower halves conv1-conv4 only."""
  net = model_lib.make_network(model_config(**switches), 1000)
  kernels, outputs = shapes(net, 224)
  assert (kernels, outputs) == expected
  assert hand_params(expected[0]) == params == model_lib.param_count(net, 224)
  assert hand_macs(*expected) == macs == sum(model_lib.layer_macs(net, 224).values())


def test_non_overlapping_pooling_changes_only_the_pooled_sizes_where_they_differ():
  """At 231 (conv1 -> 56 x 56, no padding) 2 x 2 / 2 pooling gives 28 -> 14 -> 7 where 3 x 3 / 2
  gives 27 -> 13 -> 6: the spatial sizes after each pool change, and so does fc6's fan-in
  (7 x 7 x 256 = 12544); no kernel width or other layer does."""
  base = shapes(model_lib.make_network(model_config(), 1000), 231)
  two = shapes(model_lib.make_network(model_config(pool_window=2, pool_stride=2), 1000), 231)
  assert base[1]['conv1'] == two[1]['conv1'] == (56, 56, 96)
  assert [base[1][n][:2] for n in ('conv2', 'conv3', 'conv5')] == [(27, 27), (13, 13), (13, 13)]
  assert [two[1][n][:2] for n in ('conv2', 'conv3', 'conv5')] == [(28, 28), (14, 14), (14, 14)]
  assert base[0]['fc6'] == (2, 9216, 2048) and two[0]['fc6'] == (2, 12544, 2048)
  assert {n: k for n, k in base[0].items() if n != 'fc6'} == {
      n: k for n, k in two[0].items() if n != 'fc6'}
  net = model_lib.make_network(model_config(pool_window=2, pool_stride=2), 1000)
  assert model_lib.param_count(net, 231) == PAPER_PARAMS + 2 * (12544 - 9216) * 2048
  assert model_lib.pool5_size(231, 2, 2) == 7 and model_lib.pool5_size(231, 3, 2) == 6


def _switched_setup(**switches):
  """The SMALL network with `switches`, its strategy (two towers: `towers`; one: `data`, both
  on 2 devices) and host parameters of its shapes, N(0, 0.1^2) (no initialiser to compile)."""
  net = model_lib.make_network(model_config((SMALL['conv_features'], SMALL['fc_features']),
                                            **switches), 10)
  strategy = (strategies.data_strategy(net, num_devices=2) if net.num_towers == 1
              else strategies.towers_strategy(net))
  abstract = jax.eval_shape(lambda k: model_lib.init_params(net, k, SMALL_SIZE),
                            jax.random.key(0))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: rng.normal(scale=0.1, size=a.shape).astype(np.float32),
                        abstract)
  images = np.random.default_rng(1).normal(size=(4, SMALL_SIZE, SMALL_SIZE, 3)) * 50
  return net, strategy, params, images.astype(np.float32)


@pytest.mark.parametrize('switches,reference', [
    ({'lrn': False}, {'lrn': False}),
    ({'pool_window': 2, 'pool_stride': 2}, {'window': 2, 'stride': 2}),
    ({'num_towers': 1}, {}),
])
def test_switched_network_equals_the_independent_one_device_network(switches, reference):
  """Forward with dropout against `one_device_alexnet` given the same switch; and the switch
  changes the output (the reference without it differs)."""
  net, strategy, params, images = _switched_setup(**switches)
  fc_total = tuple(net.num_towers * f for f in net.fc_features)
  assert fc_total == (64, 64)  # one tower keeps fc6 and fc7 at both towers' width
  keep = model_lib.dropout_masks(jax.random.key(7), 4, fc_total, 0.5)
  got = jax.jit(strategy.forward)(jax.device_put(params, strategy.param_sharding(params)),
                                  images, keep)
  want = one_device_alexnet(params, images, keep, **reference)
  assert got.shape == (4, 10)
  assert rel_err(got, want) <= 1e-5
  assert np.std(np.asarray(want)) > 1e-3  # not two near-zero arrays
  if reference:  # a two-tower switch: the paper's setting gives another output
    assert rel_err(one_device_alexnet(params, images, keep), want) > 1e-3


def test_lrn_off_leaves_everything_before_the_lrn_unchanged():
  """Same parameters and image: conv1 (the only layer before the first LRN) is bit-identical
  with and without LRN; conv2, which reads the normalised (or not) maps, differs."""
  _, _, params, images = _switched_setup()
  one = jax.tree.map(lambda a: a[0], params)
  outs = {}
  for lrn in (True, False):
    net = model_lib.make_network(model_config((SMALL['conv_features'], SMALL['fc_features']),
                                              lrn=lrn), 10)
    _, state = jax.jit(lambda p, x, t=net: t.apply(
        {'params': p}, x, model_lib.self_exchange(t), capture_intermediates=True,
        mutable=['intermediates']))(one, images)
    outs[lrn] = {n: np.asarray(v['__call__'][0]) for n, v in state['intermediates'].items()
                 if n.startswith(('conv', 'fc'))}
  np.testing.assert_array_equal(outs[True]['conv1'], outs[False]['conv1'])
  assert rel_err(outs[False]['conv2'], outs[True]['conv2']) > 1e-3
