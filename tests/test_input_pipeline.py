"""input_pipeline against independent computations (PIL resizing, numpy slicing)."""

import io
import logging
import os
import shutil

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import input_pipeline
from alexnet_jax.data import shapes_dataset
from conftest import pil_square, shapes_config
from configs import default

MEAN_RGB = np.array(default.get_config().mean_rgb, np.float32)


def _config(data_dir, **overrides):
  return shapes_config(data_dir, **overrides)


@pytest.fixture(scope='module')
def builder(data_dir):
  return input_pipeline.prepare_dataset(_config(data_dir))


def _split(builder, split):
  """(JPEG bytes, label) of a split in file order, read directly with tfds."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return [(ex['image'], int(ex['label'])) for ex in tfds.as_numpy(ds)]


def _stripes_jpeg(height: int, width: int) -> bytes:
  rng = np.random.default_rng(height * 1000 + width)
  y, x = np.mgrid[0:height, 0:width]
  image = ((x // 7 + y // 11) % 2)[..., None] * rng.integers(60, 200, size=3)
  image = image + rng.integers(0, 40, size=(height, width, 3))
  return shapes_dataset.encode_jpeg(image.astype(np.uint8))


def test_prepare_reuses_the_generated_dataset(builder, data_dir):
  files = sorted(os.listdir(builder.data_dir))
  mtimes = [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files]
  again = input_pipeline.prepare_dataset(_config(data_dir))
  assert again.data_dir == builder.data_dir
  assert [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files] == mtimes
  assert input_pipeline.num_classes(again) == 10
  assert input_pipeline.num_examples(again, 'train') == 320
  assert input_pipeline.num_examples(again, 'validation') == 80


@pytest.mark.parametrize('shape', [(300, 500), (500, 333), (1000, 700), (45, 78), (80, 41)])
def test_decode_and_resize_matches_pil(shape):
  jpeg = _stripes_jpeg(*shape)
  out = input_pipeline.decode_and_resize(tf.constant(jpeg), 256).numpy()
  assert out.shape == (256, 256, 3) and out.dtype == np.uint8
  reference = pil_square(jpeg, 256)
  error = np.abs(out.astype(np.float32) - reference)
  assert error.mean() < 0.5 and error.max() <= 2
  # It is the central square: the same square shifted by 3 px is much further away.
  image = Image.open(io.BytesIO(jpeg))
  w, h = image.size
  big = np.asarray(image.resize((int(w * 256 / min(w, h) + 0.5), int(h * 256 / min(w, h) + 0.5)),
                                Image.BILINEAR)).astype(np.float32)
  top, left = (big.shape[0] - 256) // 2, (big.shape[1] - 256) // 2
  dy, dx = (3, 0) if big.shape[0] > 256 else (0, 3)
  shifted = big[top + dy:top + dy + 256, left + dx:left + dx + 256]
  assert np.abs(out - shifted).mean() > 5 * error.mean() + 1


def _full_decode_resize_crop(jpeg: bytes, size: int) -> np.ndarray:
  """Reference: decode everything, tf.image.resize everything, then slice the central square."""
  image = tf.io.decode_jpeg(jpeg, channels=3, dct_method='INTEGER_ACCURATE')
  h, w = image.shape[:2]
  short = min(h, w)
  new_h, new_w = (h * size + short // 2) // short, (w * size + short // 2) // short
  image = tf.image.resize(image, [new_h, new_w], method='bilinear', antialias=True).numpy()
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return np.clip(np.round(image[top:top + size, left:left + size]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('shape,size', [((375, 500), 256), ((500, 333), 256), ((1000, 700), 256),
                                        ((480, 640), 72), ((60, 200), 256)])
def test_decoding_only_the_central_square_equals_decoding_everything(shape, size):
  jpeg = _stripes_jpeg(*shape)
  out = input_pipeline.decode_and_resize(tf.constant(jpeg), size).numpy().astype(np.int16)
  difference = np.abs(out - _full_decode_resize_crop(jpeg, size))
  assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_decode_and_resize_on_dataset_images(builder):
  for jpeg, _ in _split(builder, 'validation')[:10]:
    out = input_pipeline.decode_and_resize(tf.constant(jpeg), 256).numpy().astype(np.float32)
    error = np.abs(out - pil_square(jpeg, 256))
    assert error.mean() < 0.5 and error.max() <= 2


def _find_crop(image: np.ndarray, crop: np.ndarray):
  """(top, left, flipped) such that crop is exactly a slice of image, or None."""
  size = crop.shape[0]
  span = image.shape[0] - size + 1
  for flipped, candidate in ((False, crop), (True, crop[:, ::-1])):
    hits = np.argwhere((image[:span, :span] == candidate[0, 0]).all(-1))
    for top, left in hits:
      if np.array_equal(image[top:top + size, left:left + size], candidate):
        return int(top), int(left), flipped
  return None


def test_random_crop_and_flip_covers_every_offset():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)  # every window is unique
  crop_fn = tf.function(lambda seed: input_pipeline.random_crop_and_flip(
      tf.constant(image), seed, 224))
  tops, lefts, flips = [], [], []
  for s in range(300):
    crop = crop_fn(tf.constant([s, 7], tf.int64)).numpy()
    assert crop.shape == (224, 224, 3)
    found = _find_crop(image, crop)
    assert found is not None, f'seed {s}: not a (flipped) 224 slice of the image'
    tops.append(found[0])
    lefts.append(found[1])
    flips.append(found[2])
  assert set(tops) == set(range(33)) and set(lefts) == set(range(33))
  assert 0.4 < np.mean(flips) < 0.6
  # Stateless: the same seed gives the same crop.
  a = crop_fn(tf.constant([5, 7], tf.int64)).numpy()
  assert np.array_equal(a, crop_fn(tf.constant([5, 7], tf.int64)).numpy())


def test_center_crop_and_normalize():
  image = np.random.default_rng(1).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
  out = input_pipeline.center_crop(tf.constant(image), 224).numpy()
  assert np.array_equal(out, image[16:240, 16:240])
  normed = input_pipeline.normalize(tf.constant(image), MEAN_RGB).numpy()
  assert normed.dtype == np.float32
  np.testing.assert_allclose(normed, image.astype(np.float32) - MEAN_RGB, atol=1e-4)


@pytest.mark.parametrize('shape,size', [((256, 256), 224), ((72, 72), 64), ((40, 50), 31)])
def test_ten_crop_is_the_four_corners_the_centre_and_their_mirror_images(shape, size):
  image = np.random.default_rng(2).integers(0, 256, size=shape + (3,), dtype=np.uint8)
  out = input_pipeline.ten_crop(tf.constant(image), size).numpy()
  h, w = shape
  c_top, c_left = (h - size) // 2, (w - size) // 2
  expected = [image[:size, :size], image[:size, w - size:], image[h - size:, :size],
              image[h - size:, w - size:], image[c_top:c_top + size, c_left:c_left + size]]
  expected += [patch[:, ::-1] for patch in expected]
  assert out.shape == (10, size, size, 3)
  for got, want in zip(out, expected):
    assert np.array_equal(got, want)
  # The centre patch is the one center_crop takes.
  assert np.array_equal(out[4], input_pipeline.center_crop(tf.constant(image), size).numpy())


def _pca_noise_samples(n, alpha_std, eigval, eigvec):
  seeds = tf.random.experimental.stateless_split(tf.constant([11, 12], tf.int64), num=n)
  return tf.vectorized_map(
      lambda s: input_pipeline.pca_noise(s, alpha_std, eigval, eigvec), seeds).numpy()


@pytest.mark.parametrize('which', ['published', 'other'])
def test_pca_noise_has_the_papers_covariance(which):
  if which == 'published':
    eigval, eigvec = np.array(input_pipeline.PCA_EIGVAL), np.array(input_pipeline.PCA_EIGVEC)
  else:  # any orthonormal basis, eigenvalues of a different spread
    eigvec = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    eigval = np.array([0.05, 0.03, 0.01])
  sigma, n = 0.1, 40_000
  noise = _pca_noise_samples(n, sigma, eigval, eigvec)  # [n, 3], [0, 255] units
  expected = 255.0**2 * sum(eigval[i]**2 * sigma**2 * np.outer(eigvec[:, i], eigvec[:, i])
                            for i in range(3))
  covariance = noise.T @ noise / n  # the noise has mean 0
  # Sampling error of a covariance entry over n draws: about sqrt(2 / n) = 0.7 % of the largest.
  np.testing.assert_allclose(covariance, expected, atol=0.03 * np.abs(expected).max())
  # Along each eigenvector separately (the small ones are invisible in the absolute check).
  for i in range(3):
    variance = np.mean((noise @ eigvec[:, i])**2)
    assert abs(variance / (255.0 * eigval[i] * sigma)**2 - 1) < 0.04
  assert np.abs(noise.mean(axis=0)).max() < 4 * np.sqrt(np.diag(expected).max() / n)


def test_pca_lighting_adds_one_colour_per_image():
  image = np.full((8, 8, 3), 100.0, np.float32)
  seed = tf.constant([3, 4], tf.int64)
  out = input_pipeline.pca_lighting(tf.constant(image), seed, 0.1).numpy()
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=0.1).numpy()
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                     [-0.5836, -0.6948, 0.4203]])
  expected = 100.0 + 255.0 * eigvec @ (alpha * np.array([0.2175, 0.0188, 0.0045]))
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-3)
  assert np.array_equal(input_pipeline.pca_lighting(tf.constant(image), seed, 0.0).numpy(), image)


def _real_eval(batches):
  labels, images = [], []
  for b in batches:
    real = b['mask'] == 1
    labels.extend(b['label'][real].tolist())
    images.extend(b['image'][real])
  return labels, images


def test_eval_iterator_counts_every_image_once(builder, data_dir):
  config = _config(data_dir)
  batches = list(input_pipeline.eval_iterator(config, builder))
  assert len(batches) == 4 == input_pipeline.eval_num_batches(config, builder)  # ceil(80 / 24)
  for b in batches:
    assert b['image'].shape == (24, 224, 224, 3) and b['image'].dtype == np.float32
    assert b['label'].shape == (24,) and b['label'].dtype == np.int32
    assert b['mask'].shape == (24,) and b['mask'].dtype == np.float32
    assert set(np.unique(b['mask'])) <= {0.0, 1.0}
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 80 and masks[:80].all()  # padding only at the end
  expected = _split(builder, 'validation')
  labels, images = _real_eval(batches)
  assert labels == [label for _, label in expected]
  # First image: PIL resize, central 256, central 224, minus the mean.
  reference = pil_square(expected[0][0], 256)[16:240, 16:240] - MEAN_RGB
  assert np.abs(images[0] - reference).mean() < 0.5


def test_eval_iterator_across_processes(builder, data_dir):
  config = _config(data_dir, num_eval_examples=70)
  shards = [list(input_pipeline.eval_iterator(config, builder, process_index=i, process_count=2))
            for i in range(2)]
  assert len(shards[0]) == len(shards[1]) == 3  # 35 each, batches of 12
  assert all(b['image'].shape[0] == 12 for shard in shards for b in shard)
  labels = _real_eval(shards[0])[0] + _real_eval(shards[1])[0]
  assert labels == [label for _, label in _split(builder, 'validation')[:70]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_iterator_shapes_and_determinism(builder, data_dir):
  first = _take(input_pipeline.train_iterator(_config(data_dir), builder), 2)
  b = first[0]
  assert b['image'].shape == (16, 224, 224, 3) and b['image'].dtype == np.float32
  assert b['label'].shape == (16,) and b['label'].dtype == np.int32
  assert set(b) == {'image', 'label'}
  same = _take(input_pipeline.train_iterator(_config(data_dir), builder), 2)
  for x, y in zip(first, same):
    assert np.array_equal(x['image'], y['image']) and np.array_equal(x['label'], y['label'])
  other = next(input_pipeline.train_iterator(_config(data_dir, seed=1), builder))
  assert not np.array_equal(other['image'], b['image'])


def _same(x, y):
  return np.array_equal(x['image'], y['image']) and np.array_equal(x['label'], y['label'])


@pytest.mark.parametrize('cache_decoded', [False, True])
def test_train_stream_resumes_exactly_and_ignores_the_process_count(builder, data_dir,
                                                                    cache_decoded):
  # Small crops keep this fast; 16 per batch, 320 training images: an epoch is 20 steps.
  config = _config(data_dir, cache_decoded=cache_decoded, resize_size=40, image_size=32)
  stream = _take(input_pipeline.train_iterator(config, builder), 45)
  # Each epoch is a permutation of the training set (exact with the cache; with a buffer of 64
  # encoded images, still every image once per epoch).
  labels = np.concatenate([b['label'] for b in stream])
  all_labels = np.array([label for _, label in _split(builder, 'train')])
  for epoch in range(2):
    assert np.array_equal(np.bincount(labels[epoch * 320:(epoch + 1) * 320], minlength=10),
                          np.bincount(all_labels, minlength=10))
  assert not np.array_equal(labels[:320], labels[320:640])  # a new order every epoch
  # Starting at step k continues the uninterrupted stream, inside an epoch and across epochs.
  for k in (7, 20, 41):
    resumed = _take(input_pipeline.train_iterator(config, builder, start_step=k), 3)
    assert all(_same(x, y) for x, y in zip(resumed, stream[k:k + 3])), k

  # With input_shards fixed, two processes' rows concatenate to the one-process batch.
  config.input_shards = 2
  one = _take(input_pipeline.train_iterator(config, builder, start_step=19), 2)
  parts = [_take(input_pipeline.train_iterator(config, builder, start_step=19, process_index=p,
                                               process_count=2), 2) for p in range(2)]
  for i in range(2):
    assert parts[0][i]['image'].shape[0] == 8
    joined = {k: np.concatenate([parts[0][i][k], parts[1][i][k]]) for k in ('image', 'label')}
    assert _same(one[i], joined)
  assert not np.array_equal(parts[0][0]['image'], parts[1][0]['image'])
  # Each shard draws from its own half of the files.
  shard_labels = [np.concatenate([b['label'] for b in _take(input_pipeline.train_iterator(
      config, builder, process_index=p, process_count=2), 20)]) for p in range(2)]
  for p in range(2):
    half = all_labels[p * 160:(p + 1) * 160]
    assert np.array_equal(np.bincount(shard_labels[p], minlength=10),
                          np.bincount(half, minlength=10))


@pytest.fixture(scope='module')
def train_patches(builder):
  """The 72 x 72 patch of every training image by PIL (independent of the pipeline)."""
  examples = _split(builder, 'train')
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
  config = _config(data_dir, cache_decoded=cache_decoded, mean_subtraction=mean_subtraction,
                   stats_num_images=100, resize_size=72, image_size=64)
  mean = (input_pipeline.load_or_compute_stats(config, builder)[0].mean_image
          if mean_subtraction == 'image' else MEAN_RGB)
  # What every crop must be a window of (the mean cropped alike).
  centred = (patches - mean).astype(np.float32)
  batch = next(input_pipeline.train_iterator(config, builder))
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


def test_imagenet_without_tars_says_what_to_do_and_writes_nothing(tmp_path):
  data_dir = tmp_path / 'data'
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  (manual_dir / 'ILSVRC2012_img_val.tar').write_bytes(b'')  # one of two: still not ready
  config = _config(data_dir, dataset='imagenet2012', manual_dir=os.fspath(manual_dir))
  with pytest.raises(input_pipeline.DatasetNotReadyError) as info:
    input_pipeline.prepare_dataset(config)
  message = str(info.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert os.fspath(manual_dir) in message
  assert not data_dir.exists() or not any(data_dir.rglob('*'))

  # Default manual dir: <data_dir>/downloads/manual, named in full.
  config = _config(data_dir, dataset='imagenet2012', manual_dir='')
  with pytest.raises(input_pipeline.DatasetNotReadyError) as info:
    input_pipeline.prepare_dataset(config)
  assert os.fspath(data_dir / 'downloads' / 'manual') in str(info.value)
  assert not data_dir.exists() or not any(data_dir.rglob('*'))


# ---------------------------------------------------------------------------------------------
# Training-set statistics, the mean image, ten-crop evaluation, the random-resized crop.


def test_dataset_stats_match_numpy_and_are_cached_beside_the_dataset(builder, data_dir):
  config = _config(data_dir, resize_size=72, mean_subtraction='image', stats_num_images=100)
  stats, path = input_pipeline.load_or_compute_stats(config, builder)
  assert os.path.dirname(path) == os.fspath(builder.data_dir)
  # Reference: the first 100 training images in file order, one at a time, numpy float64.
  images = np.stack([input_pipeline.decode_and_resize(tf.constant(jpeg), 72).numpy()
                     for jpeg, _ in _split(builder, 'train[:100]')]).astype(np.float64)
  assert stats.num_images == 100 and stats.mean_image.shape == (72, 72, 3)
  np.testing.assert_allclose(stats.mean_image, images.mean(axis=0), atol=1e-3)
  np.testing.assert_allclose(stats.mean_rgb, images.mean(axis=(0, 1, 2)), atol=1e-3)
  covariance = np.cov(images.reshape(-1, 3).T / 255.0, bias=True)
  eigval, eigvec = np.linalg.eigh(covariance)
  np.testing.assert_allclose(stats.eigval, eigval[::-1], rtol=1e-4)
  np.testing.assert_allclose(stats.eigvec @ np.diag(stats.eigval) @ stats.eigvec.T, covariance,
                             atol=1e-6)
  np.testing.assert_allclose(stats.eigvec.T @ stats.eigvec, np.eye(3), atol=1e-5)
  # Later runs load the file (not rewritten); another image count is another file.
  mtime = os.stat(path).st_mtime_ns
  again, again_path = input_pipeline.load_or_compute_stats(config, builder)
  assert again_path == path and os.stat(path).st_mtime_ns == mtime
  assert np.array_equal(again.mean_image, stats.mean_image)
  config.stats_num_images = 50
  assert input_pipeline.load_or_compute_stats(config, builder)[1] != path


def test_prepare_dataset_computes_the_stats_the_config_needs(data_dir):
  config = _config(data_dir, resize_size=72, mean_subtraction='constant', pca_lighting_std=0.1,
                   pca_eigen='dataset', stats_num_images=40)
  builder = input_pipeline.prepare_dataset(config)
  path = os.path.join(builder.data_dir, 'alexnet_jax_stats-train-r72-n40.npz')
  assert os.path.isfile(path)
  transform = input_pipeline.pixel_transform(config, builder)
  stats = input_pipeline.dataset_stats.DatasetStats.load(path)
  assert np.array_equal(transform.eigval, stats.eigval)
  assert np.array_equal(transform.mean, MEAN_RGB)  # 'constant' keeps config.mean_rgb
  config.pca_eigen = 'published'
  assert np.allclose(input_pipeline.pixel_transform(config, builder).eigvec,
                     input_pipeline.PCA_EIGVEC)


def test_train_example_subtracts_the_mean_image_cropped_like_the_input():
  """image - mean image, one colour added, cropped and flipped together (the paper's order)."""
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
  mean_image = rng.uniform(50, 200, size=(40, 40, 3)).astype(np.float32)
  eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
  eigval = np.array([0.2, 0.05, 0.01], np.float32)
  transform = input_pipeline.PixelTransform(mean=mean_image, std=None, pca_std=0.1,
                                            eigval=eigval, eigvec=eigvec)
  config = default.get_config()
  config.image_size = 32
  centred = image.astype(np.float64) - mean_image
  placements = set()
  for s in range(12):
    seed = tf.constant([s, 1], tf.int64)
    out = input_pipeline.train_example(tf.constant(image), seed, config, transform).numpy()
    found = []
    for top in range(9):
      for left in range(9):
        for flipped in (False, True):
          window = centred[top:top + 32, left:left + 32]
          window = window[:, ::-1] if flipped else window
          colour = (out - window).reshape(-1, 3)
          if np.ptp(colour, axis=0).max() < 1e-3:  # one colour over the whole crop
            found.append((top, left, flipped, colour[0]))
    assert len(found) == 1, f'seed {s}: {len(found)} placements fit'
    top, left, flipped, colour = found[0]
    placements.add((top, left, flipped))
    # The colour is 255 * eigvec @ (alpha * eigval): alpha = its coordinates, N(0, 0.1) draws.
    alpha = eigvec.T @ colour / 255.0 / eigval
    assert np.all(np.abs(alpha) < 0.5) and np.abs(alpha).max() > 1e-4
  assert len(placements) > 6


def test_eval_example_subtracts_the_mean_image_cropped_like_the_input():
  """Centre crop and ten patches of (image - mean image) / std, by NumPy slicing."""
  rng = np.random.default_rng(5)
  image = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
  mean_image = rng.uniform(50, 200, size=(40, 40, 3)).astype(np.float32)
  std = np.array([50.0, 60.0, 70.0], np.float32)
  transform = input_pipeline.PixelTransform(mean=mean_image, std=std, pca_std=0.0,
                                            eigval=np.ones(3, np.float32),
                                            eigvec=np.eye(3, dtype=np.float32))
  centred = (image.astype(np.float32) - mean_image) / std
  centre = input_pipeline.eval_example(tf.constant(image), 'center', 32, transform).numpy()
  np.testing.assert_allclose(centre, centred[4:36, 4:36], rtol=1e-6, atol=1e-6)
  ten = input_pipeline.eval_example(tf.constant(image), 'ten', 32, transform).numpy()
  corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]
  want = [centred[t:t + 32, l:l + 32] for t, l in corners]
  want += [w[:, ::-1] for w in want]
  np.testing.assert_allclose(ten, np.stack(want), rtol=1e-6, atol=1e-6)

def test_eval_iterator_ten_crops_every_image_once(builder, data_dir):
  config = _config(data_dir, resize_size=72, image_size=64, mean_subtraction='image',
                   stats_num_images=100, eval_crops='ten')
  batches = list(input_pipeline.eval_iterator(config, builder))
  assert len(batches) == 4  # ceil(80 / 24)
  assert all(b['image'].shape == (24, 10, 64, 64, 3) for b in batches)
  masks = np.concatenate([b['mask'] for b in batches])
  assert masks.sum() == 80 and masks[:80].all()
  labels, images = _real_eval(batches)
  expected = _split(builder, 'validation')
  assert labels == [label for _, label in expected]
  mean_image = input_pipeline.load_or_compute_stats(config, builder)[0].mean_image
  for index in (0, 79):  # first and last real images: independent slicing of (image - mean)
    centred = (input_pipeline.decode_and_resize(tf.constant(expected[index][0]), 72).numpy()
               - mean_image)
    patches = [centred[:64, :64], centred[:64, 8:], centred[8:, :64], centred[8:, 8:],
               centred[4:68, 4:68]]
    patches += [p[:, ::-1] for p in patches]
    np.testing.assert_allclose(images[index], np.stack(patches), atol=1e-4)
  # The centre-crop iterator's image is the fifth patch.
  centre = list(input_pipeline.eval_iterator(config, builder, crops='center'))
  np.testing.assert_allclose(centre[0]['image'][0], batches[0]['image'][0, 4], atol=1e-5)


def test_random_resized_crop_decodes_a_box_and_flips_half_the_time():
  jpeg = _stripes_jpeg(120, 160)
  whole = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3, dct_method='INTEGER_ACCURATE'),
                          [48, 48], method='bilinear', antialias=True).numpy()
  crop = tf.function(lambda seed, area: input_pipeline.decode_random_resized_crop(
      tf.constant(jpeg), seed, 48, area_range=area, aspect_ratio_range=(0.5, 2.0)))
  # The whole image as the box: the resized image or its mirror, about equally often.
  flips = []
  for s in range(60):
    out = crop(tf.constant([s, 0], tf.int64), (1.0, 1.0)).numpy()
    assert out.shape == (48, 48, 3)
    flipped = np.abs(out - whole[:, ::-1]).max() < 1e-3
    assert flipped or np.abs(out - whole).max() < 1e-3
    flips.append(flipped)
  assert 0.3 < np.mean(flips) < 0.7
  # Small boxes: different boxes per seed, none equal to the whole image.
  outs = [crop(tf.constant([s, 0], tf.int64), (0.1, 0.3)).numpy() for s in range(5)]
  assert all(np.abs(o - whole).mean() > 5 and np.abs(o - whole[:, ::-1]).mean() > 5 for o in outs)
  assert len({o.tobytes() for o in outs}) == 5


def test_train_iterator_with_the_random_resized_crop(builder, data_dir):
  config = _config(data_dir, train_crop='random_resized_crop', image_size=64, batch_size=8,
                   pca_lighting_std=0.1)
  batch = next(input_pipeline.train_iterator(config, builder))
  assert batch['image'].shape == (8, 64, 64, 3) and batch['image'].dtype == np.float32
  again = next(input_pipeline.train_iterator(config, builder))
  assert np.array_equal(batch['image'], again['image'])


# ---------------------------------------------------------------------------------------------
# Damaged JPEGs: truncated ones decoded as far as their data goes, undecodable ones named before
# training.


def test_a_truncated_jpeg_decodes_as_far_as_its_data_goes():
  jpeg = _stripes_jpeg(300, 400)
  cut = tf.constant(jpeg[:len(jpeg) // 3])
  with pytest.raises(tf.errors.InvalidArgumentError):  # what stopped runs before
    tf.io.decode_jpeg(cut, channels=3)
  whole = input_pipeline.decode_and_resize(tf.constant(jpeg), 256).numpy().astype(np.int16)
  out = input_pipeline.decode_and_resize(cut, 256).numpy().astype(np.int16)
  assert out.shape == (256, 256, 3)
  assert np.abs(out[:20] - whole[:20]).max() <= 1  # the rows its data holds: the image
  assert np.abs(out[-60:] - whole[-60:]).mean() > 5  # below the cut: filled
  for s in range(20):  # any box, above or below the cut
    box = input_pipeline.decode_random_resized_crop(cut, tf.constant([s, 3], tf.int64), 64)
    assert box.shape == (64, 64, 3) and np.isfinite(box.numpy()).all()


def test_every_image_is_checked_once_and_the_check_is_saved(builder):
  for split, count in (('train', 320), ('validation', 80)):
    path = input_pipeline.image_check_path(builder, split)
    assert os.path.dirname(path) == os.fspath(builder.data_dir)
    assert os.path.isfile(path)  # written by prepare_dataset
    mtime = os.stat(path).st_mtime_ns
    check, again = input_pipeline.load_or_scan_images(builder, split)
    assert again == path and os.stat(path).st_mtime_ns == mtime  # loaded, not checked again
    assert check.num_images == count and not check.truncated and not check.undecodable


def _damaged_copy(builder, data_dir, damage):
  """A copy of `builder`'s prepared files in `data_dir` (without its saved checks and stats) in
  which example i of split s has its JPEG replaced by damage[s][i](JPEG); the new builder."""
  target = data_dir / os.path.relpath(builder.data_dir, builder.data_dir_root)
  shutil.copytree(builder.data_dir, target, ignore=shutil.ignore_patterns('alexnet_jax_*'))
  for split, changes in damage.items():
    index = 0
    for instruction in builder.info.splits[split].file_instructions:
      assert instruction.skip == 0 and instruction.takes_all
      path = target / os.path.basename(instruction.filename)
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for record in tf.data.TFRecordDataset(instruction.filename).as_numpy_iterator():
          if index in changes:
            example = tf.train.Example.FromString(record)
            image = example.features.feature['image'].bytes_list.value
            image[0] = changes[index](image[0])
            record = example.SerializeToString()
          writer.write(record)
          index += 1
  return tfds.builder(builder.info.full_name.rsplit('/', 1)[0], data_dir=os.fspath(data_dir))


def _cut(jpeg):
  """Truncated: two thirds of its bytes (a third of a tiny image's is mostly its header)."""
  return jpeg[:len(jpeg) * 2 // 3]


def _not_a_jpeg(_):
  return b'<html>Please log in</html>'


def test_undecodable_jpegs_are_named_before_training(builder, tmp_path):
  damaged_dir = tmp_path / 'damaged'
  damaged = _damaged_copy(builder, damaged_dir, {'train': {5: _cut, 17: _not_a_jpeg},
                                                 'validation': {3: _not_a_jpeg}})
  config = _config(damaged_dir, resize_size=72, mean_subtraction='image')
  with pytest.raises(input_pipeline.DatasetNotReadyError) as info:
    input_pipeline.prepare_dataset(config)
  message = str(info.value)
  assert message.splitlines()[0].startswith('2 images of synthetic_shapes cannot be decoded')
  assert 'train: train[17]; validation: validation[3]' in message and 'train[5]' not in message
  assert f'delete {damaged.data_dir}' in message
  assert not any(f.startswith('alexnet_jax_stats') for f in os.listdir(damaged.data_dir))
  # The saved check names every damaged image as tfds slices the split; the truncated one is
  # trained on, so it is counted, not refused.
  check, path = input_pipeline.load_or_scan_images(damaged, 'train')
  assert os.path.dirname(path) == os.fspath(damaged.data_dir) and check.num_images == 320
  assert check.undecodable == ('train[17]',)
  assert [name for name, _ in check.truncated] == ['train[5]']
  assert 0.1 < check.truncated[0][1] < 0.95  # the fraction of its rows its bytes hold
  assert _split(damaged, 'train[17:18]')[0][0] == b'<html>Please log in</html>'
  assert _split(damaged, 'train[5:6]')[0][0] == _cut(_split(builder, 'train[5:6]')[0][0])
  assert input_pipeline.load_or_scan_images(damaged, 'validation')[0].undecodable == (
      'validation[3]',)


def test_truncated_jpegs_are_trained_and_evaluated_on_and_counted(builder, tmp_path, caplog):
  damaged = _damaged_copy(builder, tmp_path / 'truncated', {'train': {5: _cut, 250: _cut},
                                                            'validation': {3: _cut}})
  config = _config(tmp_path / 'truncated', resize_size=72, image_size=64,
                   mean_subtraction='image', cache_decoded=True)
  with caplog.at_level(logging.WARNING):
    input_pipeline.prepare_dataset(config)  # the stats pass decodes every training image
  assert '2 of the 320 images of synthetic_shapes train are truncated JPEGs' in caplog.text
  assert 'train[5] (' in caplog.text and 'train[250] (' in caplog.text
  assert '1 of the 80 images of synthetic_shapes validation' in caplog.text
  stats = input_pipeline.load_or_compute_stats(config, damaged)[0]
  assert stats.num_images == 320 and np.isfinite(stats.mean_image).all()
  # An epoch of each training crop (cache_decoded decodes the whole shard first), and the
  # evaluation: every image, the truncated ones included.
  for crop in input_pipeline.TRAIN_CROPS:
    config.train_crop, config.mean_subtraction = crop, 'channel'
    batches = _take(input_pipeline.train_iterator(config, damaged), 320 // 16)
    assert all(np.isfinite(b['image']).all() for b in batches)
  batches = list(input_pipeline.eval_iterator(config, damaged))
  assert sum(b['mask'].sum() for b in batches) == 80
