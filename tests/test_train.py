"""The training loop: evaluation against a by-hand computation, and compiling each program once."""

import logging

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import records
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import steps
from alexnet_jax.core import train
from conftest import prepared_input
from configs import tiny


@pytest.fixture(scope='module')
def eval_setup(tmp_path_factory):
  """The tiny config's untrained network on 2 of the 8 CPU devices, and its validation split."""
  config = tiny.get_config()
  config.data_dir = str(tmp_path_factory.mktemp('tfds'))
  config.eval_batch_size = 24  # 80 validation images: no batch of 24 divides them
  builder = prepared_input(config).builder
  config.seed = 3
  params = jax.device_get(run_lib.build(config).init_state().params)
  ds = builder.as_dataset(split='validation', shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  examples = [(ex['image'], int(ex['label'])) for ex in tfds.as_numpy(ds)]
  return config, builder, params, examples


def _by_hand(config, params, forward, examples, crops):
  """Numpy: the crops by slicing, the softmax of each (float64), averaged over the crops."""
  size, s = config.image_size, config.resize_size
  off, mid = s - size, (s - size) // 2
  windows = [(mid, mid)] if crops == 'center' else [(0, 0), (0, off), (off, 0), (off, off),
                                                      (mid, mid)]
  squares = np.stack([records.decode_and_resize(tf.constant(jpeg), s).numpy()
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
    np.testing.assert_array_equal(steps.top_k_correct(logits, labels, k), ranks < k)
  # fc8 at zero: every class ties, so nothing is right at k < 10; k = 10 is always right.
  zeros, labels = np.zeros((4, 10), np.float32), np.array([0, 3, 7, 9])
  np.testing.assert_array_equal(steps.top_k_correct(zeros, labels, 1), np.zeros(4))
  np.testing.assert_array_equal(steps.top_k_correct(zeros, labels, 5), np.zeros(4))
  np.testing.assert_array_equal(steps.top_k_correct(zeros, labels, 10), np.ones(4))
  # A tie below the label does not matter; a tie with it does.
  tied = np.array([[3.0, 1.0, 1.0, 0.0], [1.0, 3.0, 3.0, 0.0]], np.float32)
  np.testing.assert_array_equal(steps.top_k_correct(tied, np.array([0, 1]), 1), [1.0, 0.0])
  np.testing.assert_array_equal(steps.top_k_correct(tied, np.array([0, 1]), 2), [1.0, 1.0])


@pytest.mark.parametrize('parallelism,crops', [('towers', 'ten'), ('data', 'ten')])
def test_evaluate_counts_every_image_once_and_averages_the_ten_softmaxes(eval_setup, parallelism,
                                                                        crops):
  config, builder, params, examples = eval_setup
  config = config.copy_and_resolve_references()
  config.parallelism, config.num_devices = parallelism, 2
  run = run_lib.build(config)
  params = jax.device_put(params, run.state_sharding.params)
  metrics = train.evaluate(run, params, prepared_input(config, builder), crops=crops)
  assert metrics['val_examples'] == 80
  forward = jax.jit(lambda p, x: run.strategy.forward(p, x, None))
  expected = _by_hand(config, params, forward, examples, crops)
  # Top-k: counts of images, exactly; the loss to float32 precision.
  assert metrics['val_top1'] * 80 == pytest.approx(expected['val_top1'] * 80, abs=1e-3)
  assert metrics['val_top5'] * 80 == pytest.approx(expected['val_top5'] * 80, abs=1e-3)
  assert metrics['val_loss'] == pytest.approx(expected['val_loss'], rel=1e-4)
  if crops == 'ten':  # not the centre crop's numbers: the ten patches were averaged
    centre = _by_hand(config, params, forward, examples, 'center')
    assert abs(centre['val_loss'] - metrics['val_loss']) > 1e-4


@pytest.mark.parametrize('augment_on', ['host', 'device'])
def test_programs_compile_once_on_the_background_thread(tmp_path, tiny_data_dir, augment_on):
  """train_and_evaluate compiles initialisation, train step and both evaluation crop modes on
  its compile_ahead thread while the dataset is prepared; the loop finds them compiled (a
  second lowering of a step would mean a second compilation). The same call again, on the
  finished run, compiles none of them. With augment_on='device' the steps take uint8 batches
  (run.abstract_batch describes them as the loop places them)."""
  config = tiny.get_config()
  config.data_dir = tiny_data_dir
  config.augment_on = augment_on
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
  size, square = config.image_size, config.resize_size
  programs = {'initialisation': 'types (ShapedArray(key<fry>[]),)',
              'train step': f'float32[{config.batch_size},{size},{size},3]',
              'eval step': f'float32[{config.eval_batch_size},{size},{size},3]',
              'ten-crop eval step': f'float32[{config.eval_batch_size},10,{size},{size},3]'}
  if augment_on == 'device':
    programs.update({
        'train step': f'uint8[{config.batch_size},{size},{size},3]',
        'eval step': f'uint8[{config.eval_batch_size},{size},{size},3]',
        'ten-crop eval step': f'uint8[{config.eval_batch_size},{square},{square},3]'})
  def threads(records, text):
    return [r.threadName for r in records
            if r.getMessage().startswith('Compiling') and text in r.getMessage()]
  for name, signature in programs.items():
    assert threads(first_run, signature) == ['compile_ahead_0'], name
    assert threads(records, signature) == [], f'the finished run compiled its {name} again'
  # It reports the evaluation its last checkpoint holds: the first run's final one.
  assert again == metrics
