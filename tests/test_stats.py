"""The training-set statistics (data/stats.py) against NumPy."""

import os

import numpy as np
import pytest
import tensorflow as tf

from alexnet_jax.data import records
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from conftest import shapes_config, split_records


@pytest.fixture(scope='module')
def builder(shapes_builder):
  return shapes_builder


def test_dataset_stats_match_numpy_and_are_cached_beside_the_dataset(builder, data_dir):
  config = shapes_config(data_dir, resize_size=72, mean_subtraction='image', stats_num_images=100)
  stats, path = stats_lib.load_or_compute(data_spec.from_config(config), builder)
  assert os.path.dirname(path) == os.fspath(builder.data_dir)
  # Reference: the first 100 training images in file order, one at a time, numpy float64.
  images = np.stack([records.decode_and_resize(tf.constant(jpeg), 72).numpy()
                     for jpeg, _ in split_records(builder, 'train[:100]')]).astype(np.float64)
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
  again, again_path = stats_lib.load_or_compute(data_spec.from_config(config), builder)
  assert again_path == path and os.stat(path).st_mtime_ns == mtime
  assert np.array_equal(again.mean_image, stats.mean_image)
  config.stats_num_images = 50
  assert stats_lib.load_or_compute(data_spec.from_config(config), builder)[1] != path
