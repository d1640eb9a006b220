"""The per-example functions (data/preprocess.py, data/records.py) against independent
computations: PIL resizing, NumPy slicing, the covariance of samples."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from alexnet_jax.data import preprocess
from alexnet_jax.data import records
from alexnet_jax.data import spec as data_spec
from conftest import pil_square, split_records, stripes_jpeg
from configs import default

MEAN_RGB = np.array(default.get_config().mean_rgb, np.float32)


@pytest.fixture(scope='module')
def builder(shapes_builder):
  return shapes_builder


def _full_decode_resize_crop(jpeg: bytes, size: int) -> np.ndarray:
  """Reference: decode everything, tf.image.resize everything, then slice the central square."""
  image = tf.io.decode_jpeg(jpeg, channels=3, dct_method='INTEGER_ACCURATE')
  h, w = image.shape[:2]
  short = min(h, w)
  new_h, new_w = (h * size + short // 2) // short, (w * size + short // 2) // short
  image = tf.image.resize(image, [new_h, new_w], method='bilinear', antialias=True).numpy()
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return np.clip(np.round(image[top:top + size, left:left + size]), 0, 255).astype(np.uint8)


@pytest.mark.parametrize('shape', [(300, 500), (500, 333), (1000, 700), (45, 78), (80, 41)])
def test_decode_and_resize_matches_pil(shape):
  jpeg = stripes_jpeg(*shape)
  out = records.decode_and_resize(tf.constant(jpeg), 256).numpy()
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


@pytest.mark.parametrize('shape,size', [((375, 500), 256), ((500, 333), 256), ((1000, 700), 256),
                                        ((480, 640), 72), ((60, 200), 256)])
def test_decoding_only_the_central_square_equals_decoding_everything(shape, size):
  jpeg = stripes_jpeg(*shape)
  out = records.decode_and_resize(tf.constant(jpeg), size).numpy().astype(np.int16)
  difference = np.abs(out - _full_decode_resize_crop(jpeg, size))
  assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


def test_decode_and_resize_on_dataset_images(builder):
  for jpeg, _ in split_records(builder, 'validation')[:10]:
    out = records.decode_and_resize(tf.constant(jpeg), 256).numpy().astype(np.float32)
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
  crop_fn = tf.function(lambda seed: preprocess.random_crop_and_flip(
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
  out = preprocess.center_crop(tf.constant(image), 224).numpy()
  assert np.array_equal(out, image[16:240, 16:240])
  normed = preprocess.normalize(tf.constant(image), MEAN_RGB).numpy()
  assert normed.dtype == np.float32
  np.testing.assert_allclose(normed, image.astype(np.float32) - MEAN_RGB, atol=1e-4)


@pytest.mark.parametrize('shape,size', [((256, 256), 224), ((72, 72), 64), ((40, 50), 31)])
def test_ten_crop_is_the_four_corners_the_centre_and_their_mirror_images(shape, size):
  image = np.random.default_rng(2).integers(0, 256, size=shape + (3,), dtype=np.uint8)
  out = preprocess.ten_crop(tf.constant(image), size).numpy()
  h, w = shape
  c_top, c_left = (h - size) // 2, (w - size) // 2
  expected = [image[:size, :size], image[:size, w - size:], image[h - size:, :size],
              image[h - size:, w - size:], image[c_top:c_top + size, c_left:c_left + size]]
  expected += [patch[:, ::-1] for patch in expected]
  assert out.shape == (10, size, size, 3)
  for got, want in zip(out, expected):
    assert np.array_equal(got, want)
  # The centre patch is the one center_crop takes.
  assert np.array_equal(out[4], preprocess.center_crop(tf.constant(image), size).numpy())


def _pca_noise_samples(n, alpha_std, eigval, eigvec):
  seeds = tf.random.experimental.stateless_split(tf.constant([11, 12], tf.int64), num=n)
  return tf.vectorized_map(
      lambda s: preprocess.pca_noise(s, alpha_std, eigval, eigvec), seeds).numpy()


@pytest.mark.parametrize('which', ['published', 'other'])
def test_pca_noise_has_the_papers_covariance(which):
  if which == 'published':
    eigval, eigvec = np.array(preprocess.PCA_EIGVAL), np.array(preprocess.PCA_EIGVEC)
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
  out = preprocess.pca_lighting(tf.constant(image), seed, 0.1).numpy()
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=0.1).numpy()
  eigvec = np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                     [-0.5836, -0.6948, 0.4203]])
  expected = 100.0 + 255.0 * eigvec @ (alpha * np.array([0.2175, 0.0188, 0.0045]))
  np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-3)
  assert np.array_equal(preprocess.pca_lighting(tf.constant(image), seed, 0.0).numpy(), image)


def test_train_example_subtracts_the_mean_image_cropped_like_the_input():
  """image - mean image, one colour added, cropped and flipped together (the paper's order)."""
  rng = np.random.default_rng(4)
  image = rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
  mean_image = rng.uniform(50, 200, size=(40, 40, 3)).astype(np.float32)
  eigvec = np.linalg.qr(rng.normal(size=(3, 3)))[0].astype(np.float32)
  eigval = np.array([0.2, 0.05, 0.01], np.float32)
  transform = preprocess.PixelTransform(mean=mean_image, std=None, pca_std=0.1,
                                            eigval=eigval, eigvec=eigvec)
  config = default.get_config()
  config.image_size = 32
  centred = image.astype(np.float64) - mean_image
  placements = set()
  for s in range(12):
    seed = tf.constant([s, 1], tf.int64)
    out = preprocess.train_example(tf.constant(image), seed, data_spec.from_config(config),
                                   transform).numpy()
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
  transform = preprocess.PixelTransform(mean=mean_image, std=std, pca_std=0.0,
                                            eigval=np.ones(3, np.float32),
                                            eigvec=np.eye(3, dtype=np.float32))
  centred = (image.astype(np.float32) - mean_image) / std
  centre = preprocess.eval_example(tf.constant(image), 'center', 32, transform).numpy()
  np.testing.assert_allclose(centre, centred[4:36, 4:36], rtol=1e-6, atol=1e-6)
  ten = preprocess.eval_example(tf.constant(image), 'ten', 32, transform).numpy()
  corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]
  want = [centred[t:t + 32, l:l + 32] for t, l in corners]
  want += [w[:, ::-1] for w in want]
  np.testing.assert_allclose(ten, np.stack(want), rtol=1e-6, atol=1e-6)


def test_random_resized_crop_decodes_a_box_and_flips_half_the_time():
  jpeg = stripes_jpeg(120, 160)
  whole = tf.image.resize(tf.io.decode_jpeg(jpeg, channels=3, dct_method='INTEGER_ACCURATE'),
                          [48, 48], method='bilinear', antialias=True).numpy()
  crop = tf.function(lambda seed, area: preprocess.decode_random_resized_crop(
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


def test_a_truncated_jpeg_decodes_as_far_as_its_data_goes():
  jpeg = stripes_jpeg(300, 400)
  cut = tf.constant(jpeg[:len(jpeg) // 3])
  with pytest.raises(tf.errors.InvalidArgumentError):  # what stopped runs before
    tf.io.decode_jpeg(cut, channels=3)
  whole = records.decode_and_resize(tf.constant(jpeg), 256).numpy().astype(np.int16)
  out = records.decode_and_resize(cut, 256).numpy().astype(np.int16)
  assert out.shape == (256, 256, 3)
  assert np.abs(out[:20] - whole[:20]).max() <= 1  # the rows its data holds: the image
  assert np.abs(out[-60:] - whole[-60:]).mean() > 5  # below the cut: filled
  for s in range(20):  # any box, above or below the cut
    box = preprocess.decode_random_resized_crop(cut, tf.constant([s, 3], tf.int64), 64)
    assert box.shape == (64, 64, 3) and np.isfinite(box.numpy()).all()
