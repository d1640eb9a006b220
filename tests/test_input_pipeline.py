"""input_pipeline against independent computations (PIL resizing, numpy slicing)."""

import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import input_pipeline
from alexnet_jax import shapes_dataset
from configs import default

MEAN_RGB = np.array(default.get_config().mean_rgb, np.float32)


def _config(data_dir, **overrides):
  c = default.get_config()
  c.dataset = 'synthetic_shapes/tiny'
  c.data_dir = os.fspath(data_dir)
  c.batch_size = 16
  c.eval_batch_size = 24  # does not divide the 80 validation images
  c.shuffle_buffer = 64
  c.update(overrides)
  return c


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


@pytest.fixture(scope='module')
def builder(data_dir):
  return input_pipeline.prepare_dataset(_config(data_dir))


def _split(builder, split):
  """(JPEG bytes, label) of a split in file order, read directly with tfds."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return [(ex['image'], int(ex['label'])) for ex in tfds.as_numpy(ds)]


def _pil_resize_and_crop(jpeg: bytes, size: int = 256) -> np.ndarray:
  """Reference: PIL bilinear so the shorter side is `size`, then the central square by slicing."""
  image = Image.open(io.BytesIO(jpeg)).convert('RGB')
  w, h = image.size
  short = min(w, h)
  new_w, new_h = int(w * size / short + 0.5), int(h * size / short + 0.5)
  array = np.asarray(image.resize((new_w, new_h), Image.BILINEAR)).astype(np.float32)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return array[top:top + size, left:left + size]


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
  reference = _pil_resize_and_crop(jpeg)
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


def test_decode_and_resize_on_dataset_images(builder):
  for jpeg, _ in _split(builder, 'validation')[:10]:
    out = input_pipeline.decode_and_resize(tf.constant(jpeg), 256).numpy().astype(np.float32)
    error = np.abs(out - _pil_resize_and_crop(jpeg))
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
  reference = _pil_resize_and_crop(expected[0][0])[16:240, 16:240] - MEAN_RGB
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
  """The 256 x 256 patch of every training image by PIL (independent of the pipeline)."""
  examples = _split(builder, 'train')
  patches = np.stack([np.rint(_pil_resize_and_crop(jpeg)) for jpeg, _ in examples])
  return patches.astype(np.int16), np.array([label for _, label in examples])


@pytest.mark.parametrize('cache_decoded', [False, True])
def test_train_batch_is_a_mean_subtracted_crop_of_a_training_image(builder, data_dir,
                                                                   train_patches, cache_decoded):
  patches, labels = train_patches
  config = _config(data_dir, cache_decoded=cache_decoded)
  batch = next(input_pipeline.train_iterator(config, builder))
  # Windows of 8 x 8 at all 33 x 33 offsets of every patch: [N, 33, 33, 3, 8, 8].
  windows = np.lib.stride_tricks.sliding_window_view(patches[:, :40, :40], (8, 8), axis=(1, 2))
  placements = set()
  for k in range(4):
    pixels = batch['image'][k] + MEAN_RGB  # undo the mean: must be back on the 0..255 grid
    assert np.abs(pixels - np.rint(pixels)).max() < 1e-3
    assert pixels.min() > -0.5 and pixels.max() < 255.5
    best = None
    for flipped in (False, True):
      crop = pixels[:, ::-1] if flipped else pixels
      corner = np.rint(crop[:8, :8]).astype(np.int16).transpose(2, 0, 1)  # [3, 8, 8]
      errors = np.abs(windows - corner).mean(axis=(3, 4, 5))  # [N, 33, 33]
      n, top, left = np.unravel_index(np.argmin(errors), errors.shape)
      if best is None or errors[n, top, left] < best[0]:
        best = (errors[n, top, left], n, top, left, flipped)
    _, n, top, left, flipped = best
    crop = pixels[:, ::-1] if flipped else pixels
    assert np.abs(patches[n, top:top + 224, left:left + 224] - crop).mean() < 0.5
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
