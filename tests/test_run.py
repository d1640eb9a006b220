"""core/run.py, the one builder: it executes nothing, places the state as the strategy says,
picks the kernels for the devices' platform, and the two kernel sets train the same step."""

import gc
import math

import jax
import numpy as np
import pytest

from alexnet_jax.core import kernels as kernels_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies
from configs import tiny
import reference  # the shared test helpers (tests/ is on sys.path under pytest)
import tolerance


def _config(parallelism='towers', num_devices=2, **model):
  config = reference.small_config()
  config.parallelism, config.num_devices = parallelism, num_devices
  for field, value in model.items():
    config.model[field] = value
  return config


def test_building_allocates_nothing_on_the_devices():
  """The builder traces shapes only: no array appears on any device until a state is made."""
  config = tiny.get_config()  # the two-tower network at 64 px
  gc.collect()  # earlier tests' unreachable arrays go now, not while the builder runs
  before = len(jax.live_arrays())
  run = run_lib.build(config)
  assert len(jax.live_arrays()) == before
  # What it built describes the run: 2 devices, the towers' stacked parameters split over them.
  assert run.mesh.shape == {'tower': 2} and len(run.devices) == 2
  conv1 = run.abstract_state.params['conv1']['kernel']
  assert conv1.shape == (2, 11, 11, 3, 16)
  assert conv1.sharding.spec == jax.sharding.PartitionSpec('tower')
  batch = run.abstract_batch()
  assert batch['image'].shape == (32, 64, 64, 3) and batch['label'].shape == (32,)
  ten = run.abstract_batch('ten')
  assert ten['image'].shape == (48, 10, 64, 64, 3) and ten['mask'].shape == (48,)


@pytest.mark.parametrize('name,num_devices', [('towers', 2), ('fsdp', 4), ('hybrid', 4)])
def test_state_from_params_is_placed_where_the_strategy_says(name, num_devices):
  config = _config(name, num_devices)
  run = run_lib.build(config)
  params = reference.initial_params()
  state = run.state_from_params(params)
  want = strategies.make_strategy(name, run.net, num_devices=num_devices).param_sharding(params)
  for got, spec in zip(jax.tree.leaves(state.params), jax.tree.leaves(want)):
    assert got.sharding.is_equivalent_to(spec, got.ndim)
  np.testing.assert_array_equal(np.asarray(state.params['fc6']['kernel']),
                                params['fc6']['kernel'])
  assert int(state.step) == 0


@pytest.mark.parametrize('platform,kernels', [
    ('cpu', 'cpu'), ('gpu', 'reference'), ('cuda', 'reference'), ('rocm', 'reference'),
    ('tpu', 'reference')])
def test_auto_takes_the_cpu_kernels_on_the_cpu_backend_only(platform, kernels):
  config = tiny.get_config()
  assert config.model.kernels == 'auto'
  assert run_lib.network(config, platform).kernels == kernels
  config.model.kernels = 'reference'
  assert run_lib.network(config, platform).kernels == 'reference'


def test_the_step_lowered_for_gpu_and_tpu_holds_only_the_reference_kernels():
  """The builder's choice for an accelerator, and what it puts in the program: lowered for CUDA
  and TPU from this CPU-only process, the train step has none of the CPU kernels' barriers and
  pools with reduce_window (whose gradient is XLA's select-and-scatter)."""
  config = _config()
  config.model.kernels = 'reference'  # what 'auto' resolves to on 'cuda' and 'tpu' (above)
  run = run_lib.build(config)
  traced = run.train_step.trace(run.abstract_state, run.abstract_batch())
  for platform in ('cuda', 'tpu'):
    text = traced.lower(lowering_platforms=(platform,)).as_text()
    assert 'optimization_barrier' not in text, platform
    assert 'reduce_window' in text and 'select_and_scatter' in text, platform
  cpu_run = run_lib.build(_config())  # 'auto' on this CPU: the hand-written gradients
  assert cpu_run.kernels == 'cpu'
  cpu_text = cpu_run.train_step.lower(cpu_run.abstract_state, cpu_run.abstract_batch()).as_text()
  assert 'optimization_barrier' in cpu_text


def _gradient_terms(net, config, params) -> dict[str, int]:
  """Per layer, how many products one element of its gradient sums: every image of the batch at
  every output position of the layer (its multiply-adds per image over its kernel's size)."""
  macs = model_lib.layer_macs(net, config.image_size)
  return {name: config.batch_size * macs[name] // math.prod(params[name]['kernel'].shape)
          for name in macs}


def _update_atol(before, after, terms: int) -> float:
  """How far two kernel sets' updates (after - before) of one parameter may differ in float32:
  the update is a gradient summed over `terms` products, in another order by each kernel set,
  with partial sums of the order of the largest update; adding it to the parameter rounds once
  more, to half an ulp of the new value, on each side."""
  update = np.asarray(after, np.float64) - before
  return tolerance.float32_atol(update, terms) + tolerance.float32_atol(after)


@pytest.mark.parametrize('name,num_devices', [('towers', 2), ('data', 2)])
def test_reference_and_cpu_kernels_train_the_same_step(name, num_devices):
  """One whole train step (forward, backward, update) with each kernel set from the same
  parameters and batch: the loss, every gradient and every updated parameter agree to float32
  rounding, and both match the independent one-device network's loss. The updates are compared
  with the rounding of the sums that make them (tests/tolerance.py), not with a fixed tolerance
  on the parameters: an updated parameter near zero carries the rounding of an update and a
  parameter each far larger than itself."""
  results = {}
  before = reference.initial_params()
  for kernels in kernels_lib.IMPLS:
    config = _config(name, num_devices, kernels=kernels)
    run = run_lib.build(config)
    assert run.kernels == kernels
    state = run.state_from_params(before)
    batch = run.synthetic_batch(config.seed)
    new_state, metrics = run.train_step.lower(state, batch).compile(
        reference.FAST_COMPILE)(state, batch)
    velocity = [s for s in new_state.opt_state.inner_state if hasattr(s, 'trace')][0].trace
    results[kernels] = (float(metrics['loss']), jax.tree.map(np.asarray, velocity),
                        jax.tree.map(np.asarray, new_state.params))
  terms = _gradient_terms(run.net, config, before)
  (loss_r, vel_r, par_r), (loss_c, vel_c, par_c) = results['reference'], results['cpu']
  assert loss_r == pytest.approx(loss_c, rel=1e-5)
  for layer in vel_r:
    for what in vel_r[layer]:
      assert reference.rel_err(vel_c[layer][what], vel_r[layer][what]) < 1e-4, (layer, what)
      old = np.asarray(before[layer][what], np.float64)
      np.testing.assert_allclose(
          par_c[layer][what] - old, par_r[layer][what] - old, rtol=0,
          atol=_update_atol(old, par_r[layer][what], terms[layer]), err_msg=f'{layer}.{what}')
  # The gradient is not trivially zero (the comparison above means something).
  assert max(np.abs(v).max() for v in jax.tree.leaves(vel_r)) > 0
