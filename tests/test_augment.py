"""Augmentation on the device (config.augment_on='device', core/augment.py) against the host path
and NumPy: the same images, to float rounding, for every strategy's batch sharding; the same
training and evaluation through train_and_evaluate, resumed or not."""

import jax
import numpy as np
import pytest

from alexnet_jax.core import augment
from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import train
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from configs import tiny
from conftest import FAST_COMPILE, prepared_input

# Every strategy, on more devices than its minimum where it can use them (8 simulated CPUs).
STRATEGIES = [('towers', 2), ('data', 8), ('hybrid', 4), ('towers_data', 8), ('fsdp', 4)]


def _paper_config(data_dir, parallelism='towers', num_devices=2, **overrides):
  """The paper's preprocessing (mean image, PCA colour noise, random crop and flip; no division)
  at tiny's sizes (64 crops of 72 squares), on augment_on='device'."""
  c = tiny.get_config()
  c.data_dir = data_dir
  c.mean_subtraction, c.pca_lighting_std, c.std_rgb = 'image', 0.1, ()
  c.stats_num_images = 100
  c.batch_size, c.eval_batch_size = 16, 24  # 80 validation images: the last batch is padded
  c.parallelism, c.num_devices = parallelism, num_devices
  c.augment_on = 'device'
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def builder(tiny_data_dir):
  return prepared_input(_paper_config(tiny_data_dir)).builder


def _placed(run, batch, builder):
  """A host batch placed as the training loop places it (train.prefetch_to_mesh, the constants
  put once)."""
  return next(train.prefetch_to_mesh(iter([batch]), run.batch_sharding,
                                     constants=train.device_constants(
                                         run, prepared_input(run.config, builder))))


def _numpy_train_images(batch, mean, std):
  """(crop + colour - mean's window) / std, mirrored where flipped: by NumPy slicing."""
  size = batch['image'].shape[1]
  out = []
  for image, (top, left), flip, colour in zip(batch['image'], batch['crop'], batch['flip'],
                                              batch['colour']):
    x = (image.astype(np.float64) + colour - mean[top:top + size, left:left + size]) / std
    out.append(x[:, ::-1] if flip else x)
  return np.stack(out)


@pytest.mark.parametrize('parallelism,num_devices', STRATEGIES)
def test_device_augmentation_equals_the_host_path_for_every_sharding(builder, tiny_data_dir,
                                                                     parallelism, num_devices):
  config = _paper_config(tiny_data_dir, parallelism, num_devices)
  run = run_lib.build(config)
  assert run.augment_on == 'device' and run.augment is not None
  mean = stats_lib.load_or_compute(data_spec.from_config(config), builder)[0].mean_image
  host = prepared_input(config, builder).train_batches(start_step=3, augment_on='host')
  device = prepared_input(config, builder).train_batches(start_step=3, augment_on='device')
  for _ in range(2):
    want, shipped = next(host), next(device)
    assert shipped['image'].dtype == np.uint8 and shipped['image'].shape == (16, 64, 64, 3)
    np.testing.assert_array_equal(shipped['label'], want['label'])
    placed = _placed(run, shipped, builder)
    got = run.augment(placed)
    assert got.dtype == np.float32 and got.sharding.is_equivalent_to(run.batch_sharding, 4)
    got = np.asarray(got)
    np.testing.assert_allclose(got, want['image'], rtol=0, atol=1e-4)
    np.testing.assert_allclose(got, _numpy_train_images(shipped, mean, 1.0), rtol=0, atol=1e-3)
    # The draws are random: both flips, several crops, a colour per image.
    assert 0 < shipped['flip'].sum() < 16 and len({tuple(c) for c in shipped['crop']}) > 4
    assert np.abs(shipped['colour']).max() > 0 and len(np.unique(shipped['colour'][:, 0])) == 16

  for crops, shape in (('center', (24, 64, 64, 3)), ('ten', (24, 72, 72, 3))):
    want = list(prepared_input(config, builder).eval_batches(crops=crops, augment_on='host'))
    shipped = list(prepared_input(config, builder).eval_batches(crops=crops,
                                                augment_on='device'))
    assert len(shipped) == len(want) == 4
    for w, s in zip(want, shipped):
      assert s['image'].dtype == np.uint8 and s['image'].shape == shape
      np.testing.assert_array_equal(s['mask'], w['mask'])
      np.testing.assert_array_equal(s['label'], w['label'])
      got = np.asarray(run.augment(_placed(run, s, builder)))
      real = w['mask'] > 0
      assert got.shape == w['image'].shape
      np.testing.assert_allclose(got[real], w['image'][real], rtol=0, atol=1e-4)
      if crops == 'ten' and w is want[0]:  # NumPy: the first image's ten patches
        centred = s['image'][0].astype(np.float64) - mean
        patches = [centred[:64, :64], centred[:64, 8:], centred[8:, :64], centred[8:, 8:],
                   centred[4:68, 4:68]]
        patches += [p[:, ::-1] for p in patches]
        np.testing.assert_allclose(got[0], np.stack(patches), rtol=0, atol=1e-3)


@pytest.fixture(scope='module')
def initial_params(tiny_data_dir):
  """One initialisation (towers stacked) that every strategy's run starts from."""
  return jax.device_get(run_lib.build(_paper_config(tiny_data_dir)).init_state().params)


# The step tests compile 4 programs per strategy (15-20 s each case on the shared 2-core machine):
# three shardings that differ most (the batch replicated over the towers; the fc layers' neurons
# split; every parameter split); data and towers_data have the image test above, and
# towers_data the two-process training test (tests/test_multihost.py).
@pytest.mark.parametrize('parallelism,num_devices', [('towers', 2), ('hybrid', 4), ('fsdp', 4)])
def test_the_steps_on_uint8_batches_equal_the_steps_on_host_batches(builder, tiny_data_dir,
                                                                    initial_params, parallelism,
                                                                    num_devices):
  """run.train_step and run.eval_step (ten patches) of a run with augment_on='device', fed the
  uint8 batches, against the same steps of a run with 'host', fed the host's float32 batches:
  the same loss, gradient norm, updated parameters and evaluation sums."""
  runs = {on: run_lib.build(_paper_config(tiny_data_dir, parallelism, num_devices,
                                          augment_on=on)) for on in ('host', 'device')}
  results = {}
  for on, run in runs.items():
    config = run.config
    constants = train.device_constants(run, prepared_input(config, builder))
    feed = lambda batches: next(train.prefetch_to_mesh(batches, run.batch_sharding,
                                                       constants=constants))
    batch = feed(prepared_input(config, builder).train_batches(start_step=5, augment_on=on))
    state = run.state_from_params(initial_params)
    state, metrics = run.train_step.lower(state, batch).compile(FAST_COMPILE)(state, batch)
    ten = feed(prepared_input(config, builder).eval_batches(crops='ten', augment_on=on))
    sums = run.eval_step.lower(state.params, ten).compile(FAST_COMPILE)(state.params, ten)
    results[on] = jax.device_get((metrics, state.params, sums))
  (host_metrics, host_params, host_sums), (metrics, new_params, sums) = (
      results['host'], results['device'])
  for key in ('loss', 'grad_norm'):
    assert metrics[key] == pytest.approx(host_metrics[key], rel=1e-5), key
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(host_params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(b).max())
  assert sums['count'] == host_sums['count'] == 24
  assert sums['top1'] == host_sums['top1'] and sums['top5'] == host_sums['top5']
  assert sums['loss'] == pytest.approx(host_sums['loss'], rel=1e-5)


def test_device_augmentation_divides_by_std_and_subtracts_a_constant_mean(builder,
                                                                          tiny_data_dir):
  """tiny's own preprocessing: constant mean_rgb, division by std_rgb, no colour noise."""
  config = tiny.get_config()
  config.data_dir, config.augment_on, config.num_devices = tiny_data_dir, 'device', 2
  run = run_lib.build(config)
  want = next(prepared_input(config, builder).train_batches(augment_on='host'))
  shipped = next(prepared_input(config, builder).train_batches(augment_on='device'))
  assert not shipped['colour'].any()  # pca_lighting_std = 0: no colour noise
  got = np.asarray(run.augment(_placed(run, shipped, builder)))
  np.testing.assert_allclose(got, want['image'], rtol=0, atol=1e-5)
  np.testing.assert_allclose(
      got, _numpy_train_images(shipped, np.broadcast_to(config.mean_rgb, (72, 72, 3)),
                               np.array(config.std_rgb)), rtol=0, atol=1e-4)


def test_device_batches_are_a_quarter_of_the_host_bytes(builder, tiny_data_dir):
  config = _paper_config(tiny_data_dir)
  specs = {on: prepared_input(config, builder).train_dataset(augment_on=on).element_spec
           for on in ('host', 'device')}
  nbytes = {on: sum(s.shape.num_elements() * s.dtype.size for s in spec.values()) / 16
            for on, spec in specs.items()}
  assert nbytes['host'] == 64 * 64 * 3 * 4 + 4
  assert nbytes['device'] == 64 * 64 * 3 + 4 + 8 + 1 + 12


@pytest.mark.parametrize('parallelism,num_devices', [('towers', 2), ('hybrid', 4)])
def test_device_batches_are_described_for_ahead_of_time_compilation(tiny_data_dir, parallelism,
                                                                    num_devices):
  """abstract_batch and the tools' synthetic_batch: uint8 crops and draws sharded like the batch,
  the mean image and std replicated."""
  run = run_lib.build(_paper_config(tiny_data_dir, parallelism, num_devices))
  train_batch, ten = run.abstract_batch(), run.abstract_batch('ten')
  want = {'image': ((16, 64, 64, 3), np.uint8), 'label': ((16,), np.int32),
          'crop': ((16, 2), np.int32), 'flip': ((16,), np.bool_),
          'colour': ((16, 3), np.float32), 'mean': ((72, 72, 3), np.float32),
          'std': ((3,), np.float32)}
  assert {k: (v.shape, v.dtype) for k, v in train_batch.items()} == want
  assert ten['image'].shape == (24, 72, 72, 3) and ten['image'].dtype == np.uint8
  assert run.abstract_batch('center')['image'].shape == (24, 64, 64, 3)
  synthetic = run.synthetic_batch(0)
  for key, spec in train_batch.items():
    assert synthetic[key].shape == spec.shape and synthetic[key].dtype == spec.dtype, key
    assert synthetic[key].sharding == spec.sharding, key
    replicated = key in ('mean', 'std')
    assert spec.sharding.is_fully_replicated == (replicated or parallelism == 'towers'), key


def test_augment_on_is_resolved_and_refused_in_one_line(tiny_data_dir):
  config = tiny.get_config()
  assert config.augment_on == 'auto'
  assert augment.resolve(config, 'cpu') == 'host'
  assert augment.resolve(config, 'gpu') == augment.resolve(config, 'tpu') == 'device'
  config.train_crop, config.mean_subtraction = 'random_resized_crop', 'channel'
  assert augment.resolve(config, 'gpu') == 'host'
  devices = jax.devices()[:2]
  config.augment_on = 'device'
  with pytest.raises(config_lib.ConfigError, match=r"^config.augment_on='device' ships the "
                     r"paper's uint8 random crop, but train_crop='random_resized_crop'.*"
                     r"--config.augment_on=host \(or 'auto'\) with it\.$"):
    config_lib.check(config, devices)
  config = tiny.get_config()
  config.augment_on = 'chip'
  with pytest.raises(config_lib.ConfigError, match=r"^config.augment_on='chip' is not one of "
                     r"'host', 'device', 'auto'\.$"):
    config_lib.check(config, devices)
  config.augment_on, config.resize_size, config.final_eval_crops = 'device', 64, 'ten'
  with pytest.raises(config_lib.ConfigError, match='cannot be told from a centre crop'):
    config_lib.check(config, devices)
  config.augment_on = 'auto'
  assert augment.resolve(config, 'gpu') == 'host'


def test_training_on_device_augmentation_matches_the_host_and_resumes(tmp_path, tiny_data_dir):
  """train_and_evaluate with the paper's preprocessing, 4 steps on towers: on the host; and on the
  device, stopped after 2 steps and resumed (the ahead-of-time compilation of the uint8 steps,
  the constants fed with every batch, the stream from the checkpoint's step). The same
  parameters and the same ten-crop evaluation."""
  def config(on, steps):
    c = _paper_config(tiny_data_dir, augment_on=on, num_train_steps=steps,
                      final_eval_crops='ten', num_eval_examples=48)
    c.checkpoint_every_steps = c.eval_every_steps = c.log_every_steps = 2
    return c
  host = train.train_and_evaluate(config('host', 4), str(tmp_path / 'host'))
  train.train_and_evaluate(config('device', 2), str(tmp_path / 'device'))
  device = train.train_and_evaluate(config('device', 4), str(tmp_path / 'device'))
  assert device['val_examples'] == host['val_examples'] == 48
  for key in ('val_top1', 'val_top5'):
    assert device[key] == pytest.approx(host[key], abs=1e-6)
  assert device['val_loss'] == pytest.approx(host['val_loss'], rel=1e-4)
  _, p_host = checkpointing.restore_params(str(tmp_path / 'host'))
  _, p_device = checkpointing.restore_params(str(tmp_path / 'device'))
  for a, b in zip(jax.tree.leaves(p_host), jax.tree.leaves(p_device)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * np.abs(a).max())
