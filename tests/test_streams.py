"""The training and evaluation streams (data/streams.py, through pipeline.Input) against
the records read directly with tfds and PIL."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.data import records
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from conftest import pil_square, prepared_input, shapes_config, split_records
from configs import default

MEAN_RGB = np.array(default.get_config().mean_rgb, np.float32)


@pytest.fixture(scope='module')
def builder(shapes_builder):
  return shapes_builder


def _real_eval(batches):
  labels, images = [], []
  for b in batches:
    real = b['mask'] == 1
    labels.extend(b['label'][real].tolist())
    images.extend(b['image'][real])
  return labels, images


def test_eval_iterator_counts_every_image_once(builder, data_dir):
  config = shapes_config(data_dir)
  batches = list(prepared_input(config, builder).eval_batches())
  assert len(batches) == 4 == prepared_input(config, builder).eval_num_batches()  # ceil(80 / 24)
  for b in batches:
    assert b['image'].shape == (24, 224, 224, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (24,) and b['label'].dtype == np.int32
    assert b['mask'].shape == (24,) and b['mask'].dtype == np.float32
    assert set(np.unique(b['mask'])) <= {0.0, 1.0}
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 80 and masks[:80].all()  # padding only at the end
  expected = split_records(builder, 'validation')
  labels, images = _real_eval(batches)
  assert labels == [label for _, label in expected]
  # First image: PIL resize, central 256, central 224, minus the mean.
  reference = pil_square(expected[0][0], 256)[16:240, 16:240] - MEAN_RGB
  assert np.abs(images[0] - reference).mean() < 0.5


def test_eval_iterator_across_processes(builder, data_dir):
  config = shapes_config(data_dir, num_eval_examples=70)
  shards = [list(prepared_input(config, builder).eval_batches(process_index=i, process_count=2))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3  # 35 each, batches of 12
  assert all(b['image'].shape[0] == 12 for shard in shards for b in shard)
  labels = _real_eval(shards[0])[0] + _real_eval(shards[1])[0]
  assert labels == [label for _, label in split_records(builder, 'validation')[:70]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_iterator_shapes_and_determinism(builder, data_dir):
  first = _take(prepared_input(shapes_config(data_dir), builder).train_batches(), 2)
  b = first[0]
  assert b['image'].shape == (16, 224, 224, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (16,) and b['label'].dtype == np.int32
  assert set(b) == {'image', 'label'}
  same = _take(prepared_input(shapes_config(data_dir), builder).train_batches(), 2)
  for x, y in zip(first, same):
    assert np.array_equal(x['image'], y['image']) and np.array_equal(x['label'], y['label'])
  other = next(prepared_input(shapes_config(data_dir, seed=1), builder).train_batches())
  assert not np.array_equal(other['image'], b['image'])


def _same(x, y):
  return np.array_equal(x['image'], y['image']) and np.array_equal(x['label'], y['label'])


@pytest.mark.parametrize('cache_decoded', [False, True])
def test_train_stream_resumes_exactly_and_ignores_the_process_count(builder, data_dir,
                                                                    cache_decoded):
  # Small crops keep this fast; 16 per batch, 320 training images: an epoch is 20 steps.
  config = shapes_config(data_dir, cache_decoded=cache_decoded, resize_size=40, image_size=32)
  stream = _take(prepared_input(config, builder).train_batches(), 45)
  # Each epoch is a permutation of the training set (exact with the cache; with a buffer of 64
  # encoded images, still every image once per epoch).
  labels = np.concatenate([b['label'] for b in stream])
  all_labels = np.array([label for _, label in split_records(builder, 'train')])
  for epoch in range(2):
    assert np.array_equal(np.bincount(labels[epoch * 320:(epoch + 1) * 320], minlength=10),
                          np.bincount(all_labels, minlength=10))
  assert not np.array_equal(labels[:320], labels[320:640])  # a new order every epoch
  # Starting at step k continues the uninterrupted stream, inside an epoch and across epochs.
  for k in (7, 20, 41):
    resumed = _take(prepared_input(config, builder).train_batches(start_step=k), 3)
    assert all(_same(x, y) for x, y in zip(resumed, stream[k:k + 3])), k

  # With input_shards fixed, two processes' rows concatenate to the one-process batch.
  config.input_shards = 2
  one = _take(prepared_input(config, builder).train_batches(start_step=19), 2)
  parts = [_take(prepared_input(config, builder).train_batches(start_step=19, process_index=p,
                                               process_count=2), 2) for p in range(2)]
  for i in range(2):
    assert parts[0][i]['image'].shape[0] == 8
    joined = {k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in ('image', 'label')}
    assert _same(one[i], joined)
  assert not np.array_equal(parts[0][0]['image'], parts[1][0]['image'])
  # Each shard draws from its own half of the files.
  shard_labels = [np.concatenate([b['label'] for b in _take(prepared_input(config, builder).train_batches(process_index=p, process_count=2), 20)]) for p in range(2)]
  for p in range(2):
    half = all_labels[p * 160:(p + 1) * 160]
    assert np.array_equal(np.bincount(shard_labels[p], minlength=10),
                          np.bincount(half, minlength=10))


@pytest.fixture(scope='module')
def train_patches(builder):
  """The 72 x 72 patch of every training image by PIL (independent of the pipeline)."""
  examples = split_records(builder, 'train')
  patches = np.stack([np.rint(pil_square(jpeg, 72)) for jpeg, _ in examples])
  return patches.astype(np.int16), np.array([label for _, label in examples])


@pytest.mark.parametrize('cache_decoded,mean_subtraction', [(False, 'constant'),
                                                             (True, 'constant'), (True, 'image')])
def test_train_batch_is_a_mean_subtracted_crop_of_a_training_image(builder, data_dir,
                                                                   train_patches, cache_decoded,
                                                                   mean_subtraction):
  patches, labels = train_patches
  # 64 x 64 crops of the 72 x 72 squares (9 x 9 offsets): the same code as 224 of 256, a
  # search 13 times smaller.
  config = shapes_config(data_dir, cache_decoded=cache_decoded, mean_subtraction=mean_subtraction,
                   stats_num_images=100, resize_size=72, image_size=64)
  mean = (stats_lib.load_or_compute(data_spec.from_config(config), builder)[0].mean_image
          if mean_subtraction == 'image' else MEAN_RGB)
  # What every crop must be a window of (the mean cropped alike).
  centred = (patches - mean).astype(np.float32)
  batch = next(prepared_input(config, builder).train_batches())
  placements = set()
  for k in range(4):
    image = batch['image'][k]
    best = None
    for flipped in (False, True):
      crop = image[:, ::-1] if flipped else image
      # Squared error of the crop's 8 x 8 corner against the window at each of the 9 x 9
      # offsets of every centred patch: [N, 9, 9].
      errors = np.zeros(centred.shape[:1] + (9, 9), np.float32)
      for dy in range(8):
        for dx in range(8):
          errors += np.square(centred[:, dy:dy + 9, dx:dx + 9] - crop[dy, dx]).sum(-1)
      n, top, left = np.unravel_index(np.argmin(errors), errors.shape)
      if best is None or errors[n, top, left] < best[0]:
        best = (errors[n, top, left], n, top, left, flipped)
    _, n, top, left, flipped = best
    crop = image[:, ::-1] if flipped else image
    assert np.abs(centred[n, top:top + 64, left:left + 64] - crop).mean() < 0.5
    # Adding the mean back (cropped at the same place) lands on the 0..255 grid.
    pixels = crop + (mean[top:top + 64, left:left + 64] if mean.ndim == 3 else mean)
    assert np.abs(pixels - np.rint(pixels)).max() < 1e-3
    assert pixels.min() > -0.5 and pixels.max() < 255.5
    assert labels[n] == batch['label'][k]
    placements.add((top, left, flipped))
  assert len(placements) > 1  # each example draws its own crop


def test_eval_iterator_ten_crops_every_image_once(builder, data_dir):
  config = shapes_config(data_dir, resize_size=72, image_size=64, mean_subtraction='image',
                   stats_num_images=100, eval_crops='ten')
  batches = list(prepared_input(config, builder).eval_batches())
  assert len(batches) == 4  # ceil(80 / 24)
  assert all(b['image'].shape == (24, 10, 64, 64, 3) for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 80 and masks[:80].all()
  labels, images = _real_eval(batches)
  expected = split_records(builder, 'validation')
  assert labels == [label for _, label in expected]
  mean_image = stats_lib.load_or_compute(data_spec.from_config(config), builder)[0].mean_image
  for index in (0, 79):  # first and last real images: independent slicing of (image - mean)
    centred = (records.decode_and_resize(tf.constant(expected[index][0]), 72).numpy()
               - mean_image)
    patches = [centred[:64, :64], centred[:64, 8:], centred[8:, :64], centred[8:, 8:],
               centred[4:68, 4:68]]
    patches += [p[:, ::-1] for p in patches]
    np.testing.assert_allclose(images[index], np.stack(patches), atol=1e-4)
  # The centre-crop iterator's image is the fifth patch.
  centre = list(prepared_input(config, builder).eval_batches(crops='center'))
  np.testing.assert_allclose(centre[0]['image'][0], batches[0]['image'][0, 4], atol=1e-5)


def test_train_iterator_with_the_random_resized_crop(builder, data_dir):
  config = shapes_config(data_dir, train_crop='random_resized_crop', image_size=64, batch_size=8,
                   pca_lighting_std=0.1)
  batch = next(prepared_input(config, builder).train_batches())
  assert batch['image'].shape == (8, 64, 64, 3) and batch['image'].dtype == np.float32
  again = next(prepared_input(config, builder).train_batches())
  assert np.array_equal(batch['image'], again['image'])
