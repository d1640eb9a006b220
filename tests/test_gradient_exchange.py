"""Reduced-precision gradient exchange (config.gradient_exchange_dtype): the compiled program sums
the batch shards' gradients in bfloat16 (float16) and nothing else in float32, its bytes are the
formula's with 2-byte gradients, the update is the float32 one within the rounding of that sum,
and the default (float32) program is the one every other test compiles."""

import functools

import jax
import numpy as np
import pytest

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import steps
from alexnet_jax.core import strategies
from alexnet_jax.perf import comms
from alexnet_jax.program import formula
import reference  # the independent one-device network (tests/ is on sys.path under pytest)
from reference import FAST_COMPILE, initial_params, small_config

U_BF16 = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
EPS32 = float(np.finfo(np.float32).eps)
GRADIENT_REDUCTIONS = ('all-reduce', 'reduce-scatter')


def _config(name, num_devices, exchange, num_towers=2, batch_size=8):
  config = small_config(batch_size, num_towers)
  config.parallelism, config.num_devices = name, num_devices
  config.gradient_exchange_dtype = exchange
  return config


@functools.lru_cache(maxsize=None)
def measured(name, num_devices, exchange, num_towers=2):
  config = _config(name, num_devices, exchange, num_towers)
  return comms.measure(config, name, num_devices, steps=0, compiler_options=FAST_COMPILE,
                       params=initial_params(num_towers))


def _table(num_towers=2):
  config = small_config(num_towers=num_towers)
  return formula.layer_table(model_lib.make_network(config.model, config.model.num_classes),
                             config.image_size)


def _gradient_collectives(entry):
  """The model layers' reductions (in data: every one carries a parameter's gradient)."""
  return [c for c in entry['collectives']
          if c['layer'] in comms.LAYERS and c['kind'] in GRADIENT_REDUCTIONS]


EXCHANGING = [('data', 2), ('data', 4), ('hybrid', 4), ('towers_data', 4), ('fsdp', 4),
              ('fsdp', 8)]


@pytest.mark.parametrize('name,num_devices', EXCHANGING)
def test_bfloat16_exchange_bytes_equal_the_formula(name, num_devices):
  """Every gradient all-reduce (data; hybrid's convs and fc8; towers_data across replicas) and
  every gradient reduce-scatter of fsdp (and the all-reduce of a leaf fsdp cannot split, fc8's
  bias on 8 devices) carries bfloat16, and no float32 copy of them is left (shard_map adds no
  psum of its own); the bytes are the formula's with 2-byte gradients, layer by layer, exactly."""
  entry = measured(name, num_devices, 'bfloat16')
  m, a = entry['bytes_per_step_by_layer'], entry['analytic_bytes_per_step_by_layer']
  want = formula.analytic_bytes(name, num_devices, 8, _table(), grad_bytes=2)
  assert a == want
  for layer in comms.LAYERS:
    assert m.get(layer, 0.0) == a[layer], layer
  assert entry['unexplained_bytes'] == 0
  assert all(v['status'] == 'equal' for v in entry['explanations']['layers'].values())
  exchanged = set()
  for c in entry['collectives']:
    if c['layer'] not in comms.LAYERS or c['kind'] not in GRADIENT_REDUCTIONS:
      continue
    parameter = not (name in ('hybrid', 'towers_data') and c['kind'] == 'reduce-scatter')
    if parameter:  # hybrid's and towers_data's reduce-scatters carry activations' gradients
      assert c['dtype'] == 'bf16', c
      exchanged.add(c['layer'])
    else:
      assert c['dtype'] == 'f32', c
  gradient_layers = {'hybrid': set(strategies.CONV_LAYERS) | {'fc8'}}.get(name, set(comms.LAYERS))
  assert exchanged == gradient_layers
  f32 = formula.analytic_bytes(name, num_devices, 8, _table())
  for layer in gradient_layers:  # half the gradient bytes
    if name == 'data':
      assert want[layer] == f32[layer] / 2, layer
    assert want[layer] < f32[layer], layer


def test_float16_exchange_and_one_tower_hybrid():
  """float16 works the same way; the one-tower hybrid exchanges its conv gradients only (every
  fc layer is split, nothing of it is all-reduced)."""
  entry = measured('data', 2, 'float16')
  assert {c['dtype'] for c in _gradient_collectives(entry)} == {'f16'}
  for layer in comms.LAYERS:
    assert entry['bytes_per_step_by_layer'][layer] == (
        entry['analytic_bytes_per_step_by_layer'][layer]), layer
  entry = measured('hybrid', 4, 'bfloat16', 1)
  want = formula.analytic_bytes('hybrid', 4, 8, _table(1), num_towers=1, grad_bytes=2)
  for layer in comms.LAYERS:
    assert entry['bytes_per_step_by_layer'][layer] == want[layer], layer
  reductions = {(c['layer'], c['kind'], c['dtype']) for c in entry['collectives']
                if c['layer'] in comms.LAYERS and c['kind'] in GRADIENT_REDUCTIONS}
  assert reductions == ({(layer, 'all-reduce', 'bf16') for layer in strategies.CONV_LAYERS}
                        | {(layer, 'reduce-scatter', 'f32') for layer in strategies.FC_LAYERS})


@pytest.mark.parametrize('name,num_devices', [('data', 4), ('fsdp', 8), ('towers', 2)])
def test_float32_exchange_is_the_default_program(name, num_devices):
  """The default moves float32 only, exactly the float32 formula; the bfloat16 option changes
  the dtype of the gradient reductions and nothing else: the same collectives (kind, shape,
  devices, layer), in the same order. towers exchanges no gradient: nothing changes at all."""
  default = measured(name, num_devices, 'float32')
  assert small_config().gradient_exchange_dtype == 'float32'
  assert {c['dtype'] for c in default['collectives'] if c['layer'] in comms.LAYERS} == {'f32'}
  assert not any(c['widened_to'] for c in default['collectives'])
  f32 = formula.analytic_bytes(name, num_devices, 8, _table())
  for layer in comms.LAYERS:
    assert default['bytes_per_step_by_layer'].get(layer, 0.0) == f32[layer], layer
  reduced = measured(name, num_devices, 'bfloat16')
  key = lambda c: (c['kind'], tuple(c['shape']), c['replica_groups'], c['layer'])
  model = lambda entry: [c for c in entry['collectives'] if c['layer'] in comms.LAYERS]
  assert [key(c) for c in model(default)] == [key(c) for c in model(reduced)]
  changed = {key(c) for c, d in zip(model(default), model(reduced)) if c['dtype'] != d['dtype']}
  assert all(k[0] in GRADIENT_REDUCTIONS for k in changed)
  assert bool(changed) == (name != 'towers')


# --- The update: float32's within the rounding of the bfloat16 sum. ---

@functools.lru_cache(maxsize=None)
def one_step(name, num_devices, exchange):
  """(gradients after the exchange, params before, params after, dropout masks, batch, shards):
  one real train step from the shared initial parameters; the gradient is read from the
  velocity the step leaves (v = -lr g: no weight decay, zero momentum)."""
  config = _config(name, num_devices, exchange)
  run = run_lib.build(config)
  state = run.state_from_params(initial_params())
  batch = run.synthetic_batch(config.seed)
  keep = model_lib.dropout_masks(jax.random.fold_in(state.rng, state.step), config.batch_size,
                                 (64, 64), config.model.dropout_rate)
  before = jax.tree.map(np.asarray, state.params)
  host_batch = jax.tree.map(np.asarray, batch)
  new_state, _ = run.train_step.lower(state, batch).compile(FAST_COMPILE)(state, batch)
  velocity = [s for s in new_state.opt_state.inner_state if hasattr(s, 'trace')][0].trace
  grads = jax.tree.map(lambda v: -np.asarray(v, np.float64) / config.learning_rate, velocity)
  return (grads, before, jax.tree.map(np.asarray, new_state.params),
          jax.tree.map(np.asarray, keep), host_batch, run.strategy.batch_shards,
          config.learning_rate)


def shard_gradient_magnitude(before, keep, batch, shards):
  """sum_i |g_i| per element: g_i the gradient of shard i's rows' share of the mean loss (what
  device i contributes to the sum), each from the independent one-device network."""
  images, labels = batch['image'], batch['label']
  rows = images.shape[0] // shards

  @jax.jit
  def part(params, x, y, k):
    loss = lambda p: steps.cross_entropy(reference.one_device_alexnet(p, x, k), y).sum()
    return jax.grad(loss)(params)

  total = jax.tree.map(lambda a: np.zeros(a.shape, np.float64), before)
  for i in range(shards):
    s = slice(i * rows, (i + 1) * rows)
    g = part(before, images[s], labels[s], {k: v[s] for k, v in keep.items()})
    total = jax.tree.map(lambda t, x: t + np.abs(np.asarray(x, np.float64)) / images.shape[0],
                         total, g)
  return total


def rounding_bound(terms: int) -> float:
  """|sum in 16 bits - sum in float32| <= bound * sum_i |g_i|, elementwise, for a sum of `terms`
  float32 partials: each partial rounded to bfloat16 (relative error u = 2^-8 each: terms u), and
  each of a ring's terms - 1 additions rounded in bfloat16 (at most u of a partial sum, itself at
  most sum_i |g_i| (1 + u)^terms: (terms - 1) u (1 + u)^terms); then the sum turned back into
  float32 exactly. XLA:CPU, which widens the reduction to float32 and rounds the sum once,
  stays within 2 u of it. Plus float32's own rounding of the sum and of the partials that the
  two programs may compute in another order (64 eps32)."""
  u = U_BF16
  return terms * u + (terms - 1) * u * (1 + u) ** terms + 64 * EPS32


@pytest.mark.parametrize('name,num_devices', [('data', 4), ('hybrid', 4), ('towers_data', 4),
                                              ('fsdp', 4)])
def test_bfloat16_update_is_float32_within_the_rounding_of_the_sum(name, num_devices):
  """The gradient after the exchange, and the updated parameters, equal float32's elementwise
  within rounding_bound(shards) * sum_i |g_i| (times the learning rate for the parameters),
  with sum_i |g_i| from each shard's rows on the one-device network; and the rounding is there
  (the bfloat16 gradients differ from float32's)."""
  g32, before, after32, keep, batch, shards, lr = one_step(name, num_devices, 'float32')
  g16, before16, after16, _, batch16, shards16, _ = one_step(name, num_devices, 'bfloat16')
  assert shards == shards16 and np.array_equal(batch['image'], batch16['image'])
  magnitude = shard_gradient_magnitude(before, keep, batch, shards)
  bound = rounding_bound(shards)
  worst, differs = 0.0, False
  for layer in before:
    for what in ('kernel', 'bias'):
      np.testing.assert_array_equal(before16[layer][what], before[layer][what])
      err = np.abs(g16[layer][what] - g32[layer][what])
      limit = bound * magnitude[layer][what]
      assert np.all(err <= limit), (layer, what, float(np.max(err - limit)))
      worst = max(worst, float(np.max(err / np.maximum(limit, 1e-30))))
      differs |= bool(np.any(err > 0))
      step = np.abs(after16[layer][what].astype(np.float64) - after32[layer][what])
      ulp = EPS32 * np.abs(before[layer][what].astype(np.float64))  # the update's own rounding
      assert np.all(step <= lr * limit + 2 * ulp), (layer, what)
  assert differs and 0 < worst <= 1


# --- The config field and the formula. ---

def test_unknown_exchange_dtype_is_refused_with_the_others():
  config = _config('data', 2, 'float8')
  config.batch_size = -1
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  assert "config.gradient_exchange_dtype='float8' is not one of 'float32', 'bfloat16', " \
         "'float16'" in str(e.value)
  net = reference.network(**reference.SMALL)
  with pytest.raises(ValueError, match='gradient_exchange_dtype'):
    strategies.make_strategy('data', net, num_devices=2, gradient_exchange_dtype='int8')


def test_paper_formula_with_bfloat16_gradients():
  """The paper's 60,965,224 parameters: data parallelism on 2 devices all-reduces 122 MB of
  bfloat16 gradients instead of 244 MB; towers moves the same activations either way; fsdp
  gathers float32 parameters and reduce-scatters bfloat16 gradients: 3/4 of float32's bytes
  (on 2 devices, where it splits every leaf on its tower axis)."""
  table = formula.layer_table(reference.network(), 224)
  total = lambda name, n, **kw: sum(formula.analytic_bytes(name, n, 128, table, **kw).values())
  assert total('data', 2, grad_bytes=2) == 2 * 60_965_224
  assert total('towers', 2, grad_bytes=2) == total('towers', 2)
  assert total('fsdp', 2, grad_bytes=2) == 0.75 * total('fsdp', 2) == 3 * 60_965_224
  assert total('fsdp', 8, grad_bytes=4) == total('fsdp', 8)
