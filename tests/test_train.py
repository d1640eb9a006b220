"""Config checks that refuse a run before anything is compiled or written; evaluation against
a by-hand computation."""

import logging

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import input_pipeline
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optimizer as optimizer_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import train
from configs import tiny


@pytest.mark.parametrize('field,value,words', [
    ('parallelism', 'pipeline', ['parallelism', 'towers']),
    ('image_size', 300, ['image_size=300', 'resize_size=72']),
    ('batch_size', 0, ['batch_size=0']),
    ('keep_checkpoints', 0, ['keep_checkpoints=0']),
    ('checkpoint_every_steps', -1, ['checkpoint_every_steps=-1']),
    ('profile_steps', (5, 2), ['profile_steps=(5, 2)', 'first <= last']),
    ('eval_crops', 'five', ['eval_crops', "'ten'"]),
    ('mean_subtraction', 'median', ['mean_subtraction', "'image'"]),
    ('pca_lighting_std', -0.1, ['pca_lighting_std', '0.1']),
])
def test_bad_config_is_refused_with_the_field_and_the_fix(field, value, words):
  config = tiny.get_config()
  config[field] = value
  with pytest.raises(train.ConfigError) as e:
    train.validate_config(config)
  for word in words:
    assert word in str(e.value)


def test_odd_class_count_is_refused():
  config = tiny.get_config()
  config.model.num_classes = 7
  with pytest.raises(train.ConfigError, match='num_classes=7.*even'):
    train.validate_config(config)


def test_tiny_config_is_accepted():
  train.validate_config(tiny.get_config())  # no exception


@pytest.mark.parametrize('parallelism', ['towers', 'hybrid', 'towers_data'])
def test_one_tower_with_a_tower_strategy_is_refused_naming_the_fix(parallelism):
  config = tiny.get_config()
  config.model.towers = 1
  config.parallelism = parallelism
  with pytest.raises(train.ConfigError) as e:
    train.validate_config(config)
  assert 'model.towers=1' in str(e.value) and '--config.parallelism=data' in str(e.value)
  # The strategy itself refuses too, whoever builds it.
  tower = model_lib.make_tower(config.model, config.model.num_classes)
  with pytest.raises(ValueError, match='no second tower'):
    strategies.make_strategy(parallelism, tower, num_devices=4)


@pytest.mark.parametrize('parallelism', ['data', 'fsdp'])
def test_one_tower_runs_data_parallel(parallelism):
  config = tiny.get_config()
  config.model.towers = 1
  config.parallelism = parallelism
  train.validate_config(config)  # no exception


@pytest.mark.parametrize('changes,words', [
    ({'towers': 3}, ['model.towers=3', 'use 2']),
    ({'pool_window': 2, 'pool_stride': 3}, ['pool_stride=3', 'stride <= window']),
    ({'dropout_rate': 1.0}, ['dropout_rate=1.0', '[0, 1)']),
    ({'weight_grad': 'cudnn'}, ["weight_grad='cudnn'", "'offsets'", "'xla'"]),
])
def test_bad_model_switch_is_refused(changes, words):
  config = tiny.get_config()
  for k, v in changes.items():
    config.model[k] = v
  with pytest.raises(train.ConfigError) as e:
    train.validate_config(config)
  for word in words:
    assert word in str(e.value)


@pytest.mark.parametrize('window,stride,smallest', [(3, 2, 64), (2, 2, 36)])
def test_crop_too_small_for_pool5_is_refused_with_the_smallest_that_works(window, stride,
                                                                         smallest):
  """By hand: conv1 gives ceil((S - 11) / 4) + 1; three pools must leave 1 x 1. With 3 / 2
  pooling conv1 needs 15 (15 -> 7 -> 3 -> 1; 14 -> 6 -> 2 -> 0), so S >= 64; with 2 / 2 it
  needs 8 (8 -> 4 -> 2 -> 1), so S >= 36."""
  config = tiny.get_config()
  config.model.pool_window, config.model.pool_stride = window, stride
  config.image_size = smallest - 1
  with pytest.raises(train.ConfigError, match=f'image_size={smallest - 1} is too small.*use '
                     f'{smallest} or more'):
    train.validate_config(config)
  config.image_size = smallest
  train.validate_config(config)  # no exception


def test_batch_the_data_axis_cannot_split_is_refused():
  config = tiny.get_config()
  config.parallelism, config.num_devices, config.batch_size = 'data', 4, 30
  with pytest.raises(train.ConfigError, match='batch_size=30.*multiple of 4'):
    train.validate_config(config)


def test_device_count_the_strategy_cannot_use_is_refused():
  config = tiny.get_config()
  config.num_devices = 3  # towers: one tower per device, exactly 2
  with pytest.raises(train.ConfigError, match='num_devices=3'):
    train.validate_config(config)


def test_random_resized_crop_with_the_mean_image_is_refused():
  config = tiny.get_config()
  config.train_crop = 'random_resized_crop'
  config.mean_subtraction = 'image'
  with pytest.raises(train.ConfigError, match='mean_subtraction=channel'):
    train.validate_config(config)
  config.mean_subtraction = 'channel'
  train.validate_config(config)  # no exception


@pytest.fixture(scope='module')
def eval_setup(tmp_path_factory):
  """The tiny config's untrained network on 2 of the 8 CPU devices, and its validation split."""
  config = tiny.get_config()
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.eval_batch_size = 24  # 80 validation images: no batch of 24 divides them
  builder = input_pipeline.prepare_dataset(config)
  tower = model_lib.make_tower(config.model, config.model.num_classes)
  strategy = strategies.make_strategy('towers', tower, num_devices=2)
  tx = optimizer_lib.paper_sgd(learning_rate=0.01)
  params = train.create_train_state(config, tower, strategy, tx, jax.random.key(3)).params
  ds = builder.as_dataset(split='validation', shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  examples = [(ex['image'], int(ex['label'])) for ex in tfds.as_numpy(ds)]
  return config, builder, tower, params, examples


def _by_hand(config, params, forward, examples, crops):
  """Numpy: the crops by slicing, the softmax of each (float64), averaged over the crops."""
  size, s = config.image_size, config.resize_size
  off, mid = s - size, (s - size) // 2
  windows = [(mid, mid)] if crops == 'center' else [(0, 0), (0, off), (off, 0), (off, off),
                                                      (mid, mid)]
  squares = np.stack([input_pipeline.decode_and_resize(tf.constant(jpeg), s).numpy()
                      for jpeg, _ in examples]).astype(np.float32)
  squares = (squares - np.array(config.mean_rgb)) / np.array(config.std_rgb)
  patches = [squares[:, t:t + size, l:l + size] for t, l in windows]
  if crops == 'ten':
    patches += [p[:, :, ::-1] for p in patches]
  probs = np.mean([_softmax(np.asarray(forward(params, p), np.float64)) for p in patches],
                  axis=0)
  labels = np.array([label for _, label in examples])
  label_prob = probs[np.arange(len(labels)), labels]
  rank = (probs > label_prob[:, None]).sum(-1)
  return {'val_top1': np.mean(rank < 1), 'val_top5': np.mean(rank < 5),
          'val_loss': -np.mean(np.log(label_prob))}


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_top_k_counts_a_tie_with_the_label_against_it():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(64, 10)).astype(np.float32)
  labels = rng.integers(0, 10, size=64)
  # Distinct logits: the label's rank by sorting (0 = the largest).
  ranks = np.argsort(np.argsort(-logits, axis=-1), axis=-1)[np.arange(64), labels]
  for k in (1, 5):
    np.testing.assert_array_equal(train.top_k_correct(logits, labels, k), ranks < k)
  # fc8 at zero: every class ties, so nothing is right at k < 10; k = 10 is always right.
  zeros, labels = np.zeros((4, 10), np.float32), np.array([0, 3, 7, 9])
  np.testing.assert_array_equal(train.top_k_correct(zeros, labels, 1), np.zeros(4))
  np.testing.assert_array_equal(train.top_k_correct(zeros, labels, 5), np.zeros(4))
  np.testing.assert_array_equal(train.top_k_correct(zeros, labels, 10), np.ones(4))
  # A tie below the label does not matter; a tie with it does.
  tied = np.array([[3.0, 1.0, 1.0, 0.0], [1.0, 3.0, 3.0, 0.0]], np.float32)
  np.testing.assert_array_equal(train.top_k_correct(tied, np.array([0, 1]), 1), [1.0, 0.0])
  np.testing.assert_array_equal(train.top_k_correct(tied, np.array([0, 1]), 2), [1.0, 1.0])


@pytest.mark.parametrize('parallelism,crops', [('towers', 'ten'), ('data', 'ten')])
def test_evaluate_counts_every_image_once_and_averages_the_ten_softmaxes(eval_setup, parallelism,
                                                                        crops):
  config, builder, tower, params, examples = eval_setup
  strategy = strategies.make_strategy(parallelism, tower, num_devices=2)
  params = jax.device_put(params, strategy.param_sharding(params))
  eval_fn = jax.jit(lambda p, b: train.eval_step(p, b, strategy=strategy))
  metrics = train.evaluate(params, eval_fn, config, builder, strategy, crops=crops)
  assert metrics['val_examples'] == 80
  forward = jax.jit(lambda p, x: strategy.forward(p, x, None))
  expected = _by_hand(config, params, forward, examples, crops)
  # Top-k: counts of images, exactly; the loss to float32 precision.
  assert metrics['val_top1'] * 80 == pytest.approx(expected['val_top1'] * 80, abs=1e-3)
  assert metrics['val_top5'] * 80 == pytest.approx(expected['val_top5'] * 80, abs=1e-3)
  assert metrics['val_loss'] == pytest.approx(expected['val_loss'], rel=1e-4)
  if crops == 'ten':  # not the centre crop's numbers: the ten patches were averaged
    centre = _by_hand(config, params, forward, examples, 'center')
    assert abs(centre['val_loss'] - metrics['val_loss']) > 1e-4


def test_programs_compile_once_on_the_background_thread(tmp_path, tiny_data_dir):
  """train_and_evaluate compiles initialisation, train step and both evaluation crop modes on
  its compile_ahead thread while the dataset is prepared; the loop finds them compiled (a
  second lowering of a step would mean a second compilation). The same call again, on the
  finished run, compiles none of them."""
  config = tiny.get_config()
  config.data_dir = tiny_data_dir
  config.num_train_steps = config.log_every_steps = 4
  config.eval_every_steps = config.checkpoint_every_steps = 2
  config.final_eval_crops = 'ten'
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger('jax._src.interpreters.pxla')
  logger.addHandler(handler)
  jax.config.update('jax_log_compiles', True)  # global: a context would be this thread's only
  try:
    metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
    first_run = list(records)
    records.clear()
    again = train.train_and_evaluate(config, str(tmp_path / 'run'))  # finished: the same command
  finally:
    jax.config.update('jax_log_compiles', False)
    logger.removeHandler(handler)
  assert metrics['val_examples'] == 80
  size = config.image_size
  programs = {'initialisation': 'types (ShapedArray(key<fry>[]),)',
              'train step': f'float32[{config.batch_size},{size},{size},3]',
              'eval step': f'float32[{config.eval_batch_size},{size},{size},3]',
              'ten-crop eval step': f'float32[{config.eval_batch_size},10,{size},{size},3]'}
  def threads(records, text):
    return [r.threadName for r in records
            if r.getMessage().startswith('Compiling') and text in r.getMessage()]
  for name, signature in programs.items():
    assert threads(first_run, signature) == ['compile_ahead_0'], name
    assert threads(records, signature) == [], f'the finished run compiled its {name} again'
  # It reports the evaluation its last checkpoint holds: the first run's final one.
  assert again == metrics
