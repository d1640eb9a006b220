"""Every strategy is the same network: same loss, gradients and updated parameters, on 2, 4 and 8
simulated CPU devices, as the two towers and as an independent one-device network; and the
one-tower net (model.num_towers = 1) under hybrid, on 1, 2 and 4, as under data."""

import functools

import jax
import numpy as np
import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import steps
import reference  # the independent one-device network (tests/ is on sys.path under pytest)
from reference import FAST_COMPILE, initial_params, rel_err, small_config

CASES = [('towers', 2)] + [(name, n) for name in ('data', 'hybrid', 'towers_data', 'fsdp')
                           for n in (2, 4, 8)]


@functools.lru_cache(maxsize=None)
def one_step(name: str, num_devices: int, num_towers: int = 2):
  """(loss, params before, gradients, params after, dropout masks, batch) of one real train step.

  The gradient is read from the velocity the step leaves: v = 0.9 * 0 - lr * g.
  """
  config = small_config(num_towers=num_towers)
  config.parallelism, config.num_devices = name, num_devices
  run = run_lib.build(config)
  state = run.state_from_params(initial_params(num_towers))
  batch = run.synthetic_batch(config.seed)
  before = jax.tree.map(np.asarray, state.params)
  keep = model_lib.dropout_masks(jax.random.fold_in(state.rng, state.step), config.batch_size,
                                 (64, 64), config.model.dropout_rate)
  host_batch = jax.tree.map(np.asarray, batch)
  new_state, metrics = run.train_step.lower(state, batch).compile(FAST_COMPILE)(state, batch)
  velocity = [s for s in new_state.opt_state.inner_state if hasattr(s, 'trace')][0].trace
  grads = jax.tree.map(lambda v: -np.asarray(v) / config.learning_rate, velocity)
  return (float(metrics['loss']), before, grads, jax.tree.map(np.asarray, new_state.params),
          jax.tree.map(np.asarray, keep), host_batch)


def one_device_step(name: str, num_devices: int, num_towers: int = 2):
  """The loss and gradient of the independent one-device network (tests/reference.py), on the
  same parameters, batch and dropout masks as `one_step`."""
  _, before, _, _, keep, batch = one_step(name, num_devices, num_towers)

  def ref_loss(p):
    logits = reference.one_device_alexnet(p, batch['image'], keep)
    return steps.cross_entropy(logits, batch['label']).mean()

  return jax.jit(jax.value_and_grad(ref_loss))(before)


def test_towers_step_equals_one_device_network():
  """The reference every strategy is compared with is itself right: the loss and gradient of
  the two-tower train step are those of the one-device grouped-convolution network."""
  loss, before, grads, _, keep, batch = one_step('towers', 2)

  def ref_loss(p):
    logits = reference.one_device_alexnet(p, batch['image'], keep)
    return steps.cross_entropy(logits, batch['label']).mean()

  want_loss, want_grad = jax.jit(jax.value_and_grad(ref_loss))(before)
  assert rel_err(loss, want_loss) <= 1e-5
  for layer in want_grad:
    for what in ('kernel', 'bias'):
      assert rel_err(grads[layer][what], want_grad[layer][what]) <= 1e-5, (layer, what)
      assert np.abs(want_grad[layer][what]).max() > 0, (layer, what)


@pytest.mark.parametrize('name,num_devices', CASES[1:])
def test_strategy_equals_towers(name, num_devices):
  """Same loss, gradients and updated parameters as the paper's split, dropout on."""
  ref_loss, ref_before, ref_grads, ref_after, _, _ = one_step('towers', 2)
  loss, before, grads, after, _, _ = one_step(name, num_devices)
  assert rel_err(loss, ref_loss) <= 1e-5
  for layer in ref_before:
    for what in ('kernel', 'bias'):
      np.testing.assert_array_equal(before[layer][what], ref_before[layer][what])
      assert rel_err(grads[layer][what], ref_grads[layer][what]) <= 1e-5, (layer, what)
      assert rel_err(after[layer][what], ref_after[layer][what]) <= 1e-5, (layer, what)


ONE_TOWER_DEVICES = (1, 2, 4)


@pytest.mark.parametrize('num_devices', ONE_TOWER_DEVICES)
def test_one_tower_hybrid_logits_equal_data_and_the_one_device_network(num_devices):
  """Krizhevsky 2014's one-tower hybrid (1 device: the one-GPU baseline) computes the same
  logits, dropout on, as `data` on the same devices from the same parameters and as the
  independent one-device network; the logits come out split by class."""
  config = small_config(num_towers=1)
  net = model_lib.make_network(config.model, config.model.num_classes)
  params = initial_params(1)
  images = np.random.default_rng(1).normal(size=(8, 67, 67, 3)).astype(np.float32) * 50
  keep = model_lib.dropout_masks(jax.random.key(7), 8, (64, 64), config.model.dropout_rate)
  logits = {}
  for name in ('hybrid', 'data'):
    s = strategies.make_strategy(name, net, num_devices=num_devices)
    forward = jax.jit(s.forward).lower(jax.device_put(params, s.param_sharding(params)),
                                       images, keep).compile(FAST_COMPILE)
    logits[name] = forward(jax.device_put(params, s.param_sharding(params)), images, keep)
  want = reference.one_device_alexnet(params, images, keep)
  assert logits['hybrid'].shape == (8, 8) and np.std(np.asarray(want)) > 1e-3
  assert rel_err(logits['hybrid'], logits['data']) <= 1e-5
  assert rel_err(logits['hybrid'], want) <= 1e-5
  if num_devices > 1:
    assert logits['hybrid'].sharding.spec == strategies.P(None, 'block')  # by class


@pytest.mark.parametrize('num_devices', ONE_TOWER_DEVICES)
def test_one_tower_hybrid_step_equals_data_and_the_one_device_network(num_devices):
  """The real train step of the one-tower net: hybrid's loss, gradients and updated parameters
  are data's on the same devices, and its loss and gradients the one-device network's."""
  loss, before, grads, after, _, _ = one_step('hybrid', num_devices, 1)
  ref_loss, ref_before, ref_grads, ref_after, _, _ = one_step('data', num_devices, 1)
  want_loss, want_grad = one_device_step('hybrid', num_devices, 1)
  assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(loss, want_loss) <= 1e-5
  for layer in ref_before:
    for what in ('kernel', 'bias'):
      np.testing.assert_array_equal(before[layer][what], ref_before[layer][what])
      assert before[layer][what].shape[0] == 1  # one tower
      assert rel_err(grads[layer][what], ref_grads[layer][what]) <= 1e-5, (layer, what)
      assert rel_err(grads[layer][what], want_grad[layer][what]) <= 1e-5, (layer, what)
      assert rel_err(after[layer][what], ref_after[layer][what]) <= 1e-5, (layer, what)
      assert np.abs(want_grad[layer][what]).max() > 0, (layer, what)


def test_parameters_live_where_the_strategy_says():
  net = reference.network(**reference.SMALL)
  abstract = jax.eval_shape(lambda k: model_lib.init_params(net, k, 67), jax.random.key(0))
  hybrid = strategies.make_strategy('hybrid', net, num_devices=4)
  specs = hybrid.param_specs(abstract)
  assert specs['conv3']['kernel'] == strategies.P()
  assert specs['fc6']['kernel'] == strategies.P('tower', None, 'block')
  assert hybrid.mesh.shape == {'tower': 2, 'block': 2} and hybrid.batch_shards == 4
  fsdp = strategies.make_strategy('fsdp', net, num_devices=8)
  specs = fsdp.param_specs(abstract)
  assert specs['conv1']['kernel'] == strategies.P(None, None, None, None, 'data')  # 8 kernels
  assert specs['fc8']['bias'] == strategies.P()  # (2, 5): nothing divisible by 8
  pod = strategies.make_strategy('towers_data', net, num_devices=8)
  assert pod.mesh.shape == {'data': 4, 'tower': 2} and pod.batch_shards == 4
  one = model_lib.make_network(small_config(num_towers=1).model, 8)
  abstract = jax.eval_shape(lambda k: model_lib.init_params(one, k, 67), jax.random.key(0))
  hybrid = strategies.make_strategy('hybrid', one, num_devices=4)
  specs = hybrid.param_specs(abstract)
  assert specs['conv5']['kernel'] == strategies.P()
  assert specs['fc6']['kernel'] == strategies.P(None, None, 'block')  # neurons split 4 ways
  assert specs['fc8']['kernel'] == strategies.P(None, None, 'block')  # classes split 4 ways
  assert specs['fc8']['bias'] == strategies.P(None, 'block')
  assert hybrid.mesh.shape == {'block': 4} and hybrid.batch_shards == 4
  assert strategies.make_strategy('hybrid', one, num_devices=1).mesh.shape == {'block': 1}


@pytest.mark.parametrize('name,num_devices,match', [
    ('towers', 4, 'exactly 2'), ('hybrid', 3, 'even'), ('towers_data', 5, 'even'),
    ('data', 16, 'only 8 are visible'), ('pipeline', 2, 'nknown parallelism')])
def test_device_count_a_strategy_cannot_use_is_refused(name, num_devices, match):
  net = reference.network(**reference.SMALL)
  with pytest.raises(ValueError, match=match):
    strategies.make_strategy(name, net, num_devices=num_devices)


def test_hybrid_refuses_fc_widths_it_cannot_split():
  net = reference.network(conv_features=(8, 16, 24, 24, 16), fc_features=(30, 32))
  assert 'not divisible' in strategies.fit_error('hybrid', 8, net)
  assert strategies.fit_error('hybrid', 4, net) is None


def test_one_tower_hybrid_refuses_widths_and_classes_it_cannot_split():
  """fc6 and fc7 split by neuron and fc8 by class over all N: each must divide by N; odd N
  is fine (no tower axis)."""
  widths = ((8, 16, 24, 24, 16), (15, 18))  # the one tower: fc6 30, fc7 36 neurons
  one = model_lib.make_network(reference.model_config(widths, num_towers=1), 12)
  assert one.fc_features == (30, 36) and one.classes_per_tower == 12
  for n in (1, 2, 3):
    assert strategies.fit_error('hybrid', n, one) is None, n
  error = strategies.fit_error('hybrid', 4, one)
  assert "30 fc6 neurons" in error and 'model.fc_features[0]=15' in error
  assert 'not divisible by 4' in error and 'num_devices' in error
  error = strategies.fit_error('hybrid', 5, one)
  assert '36 fc7 neurons' in error and 'model.fc_features[1]=18' in error
  assert 'not divisible by 5' in error
  one = model_lib.make_network(reference.model_config(widths, num_towers=1), 10)
  error = strategies.fit_error('hybrid', 3, one)
  assert "fc8's 10 classes" in error and 'model.num_classes' in error
  with pytest.raises(ValueError, match='not divisible by 4'):
    strategies.make_strategy('hybrid', one, num_devices=4)
  config = small_config(num_towers=1)
  config.parallelism, config.num_devices = 'hybrid', 3
  with pytest.raises(config_lib.ConfigError, match='fc6 neurons.*not divisible by 3'):
    config_lib.check(config, jax.devices())
  config.num_devices = 4
  config_lib.check(config, jax.devices())  # fits: 64, 64 neurons and 8 classes over 4
  for parallelism in ('towers', 'towers_data'):  # these still need the second tower
    assert 'no second tower' in strategies.fit_error(parallelism, 4, one)


def test_config_errors_come_before_compiling():
  config = small_config()
  config.parallelism, config.num_devices = 'data', 4
  config.batch_size = 6
  with pytest.raises(config_lib.ConfigError, match='multiple of 4'):
    config_lib.check(config, jax.devices())
  config.batch_size, config.parallelism = 8, 'towers'
  with pytest.raises(config_lib.ConfigError, match='exactly 2'):
    config_lib.check(config, jax.devices())
  config.parallelism = 'hybrid'
  config_lib.check(config, jax.devices())  # fits
  config.batch_size, config.parallelism = 6, 'data'
  with pytest.raises(config_lib.ConfigError, match='batch_size=6'):
    run_lib.build(config)  # the builder checks first, before tracing anything


def test_batch_shards_and_devices_needed():
  config = small_config()
  for name, n, shards in [('towers', 0, 1), ('data', 4, 4), ('hybrid', 8, 8),
                          ('towers_data', 8, 4), ('fsdp', 2, 2)]:
    config.parallelism, config.num_devices = name, n
    net = model_lib.make_network(config.model, config.model.num_classes)
    strategy = strategies.make_strategy(name, net, num_devices=n)
    assert strategy.batch_shards == shards, name
    assert strategy.input_group(16) == (0, 1)  # one process feeds every row
  assert strategies.devices_needed('towers') == 2
  assert strategies.devices_needed('towers_data') == 4
  assert strategies.devices_needed('data', 8) == 8
