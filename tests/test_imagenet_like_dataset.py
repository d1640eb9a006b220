"""The ImageNet-like JPEGs (data/imagenet_like_dataset.py) against ILSVRC-2012's published sizes:
about 110 KB, mostly 500 x 375 or 500 x 333, a quarter portraits."""

import numpy as np

from alexnet_jax.data import imagenet_like_dataset
from alexnet_jax.perf import bench_input


def _check_imagenet_like(images):
  """ILSVRC-2012-like: about 110 KB, mostly 500 x 375 or 500 x 333, a few larger."""
  assert 90_000 <= images['mean_bytes'] <= 130_000, images
  assert 500 <= images['mean_long_side'] <= 560, images
  assert 340 <= images['mean_short_side'] <= 420, images
  assert images['min_side'] >= 333 and images['max_side'] <= 800, images


def test_imagenet_like_jpegs_have_ilsvrc_sizes_and_are_deterministic():
  sizes = [imagenet_like_dataset.image_size(np.random.default_rng([0, i])) for i in range(2000)]
  share = lambda *dims: np.mean([sorted(s, reverse=True) in [list(d) for d in dims]
                                 for s in sizes])
  assert 0.7 < share((500, 375)) < 0.8 and 0.1 < share((500, 333)) < 0.2
  assert 0.2 < np.mean([h > w for h, w in sizes]) < 0.3  # portraits
  jpegs = [imagenet_like_dataset.encode_jpeg(imagenet_like_dataset.render_image(np.random.default_rng([0, i])))
           for i in range(48)]
  _check_imagenet_like(bench_input.jpeg_statistics(jpegs))
  again = imagenet_like_dataset.encode_jpeg(imagenet_like_dataset.render_image(np.random.default_rng([0, 5])))
  assert again == jpegs[5]


def test_every_count_of_imagenet_like_jpegs_has_its_own_builder(tmp_path):
  for count in (16, 500, 1000):  # 500: the default count
    builder = imagenet_like_dataset.dataset_builder(count, str(tmp_path))
    assert builder.builder_config.num_images == count
    assert builder.info.full_name == f'imagenet_like_jpegs/n{count}_seed0/1.0.0'
