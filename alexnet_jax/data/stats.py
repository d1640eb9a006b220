"""Training-set pixel statistics the paper's preprocessing needs, computed once and cached.

Section 2 subtracts "the mean activity over the training set from each pixel" (the mean
256 x 256 x 3 image), and section 4.1 adds colour noise along the principal components of "the
set of RGB pixel values throughout the ImageNet training set". Both are statistics of the
images as the network sees them: decoded, shorter side `resize_size`, central square.

`compute` makes one pass over (a prefix of) the training split; `load_or_compute` caches the
result as an .npz beside the dataset's tfds files (the dataset's versioned directory, e.g.
~/tensorflow_datasets/imagenet2012/5.1.0/), keyed by split, resize size and image count, and
loads it on later runs. Ahead of training (it is also done by the first run that needs it):

    python -m alexnet_jax.dataset_stats --config=configs/paper.py [--config.data_dir=...]

The eigenvalues are those of the 3 x 3 covariance of pixel values in [0, 1], the unit of the
published values (docs/alexnet2012.md, section 4.1), so the two are directly comparable.
"""

from __future__ import annotations

import dataclasses
import io
import os
import tempfile
from typing import Any, Callable, Iterable

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import preprocess
from alexnet_jax.data import records
from alexnet_jax.data.refusals import DatasetNotReadyError
from alexnet_jax.data.spec import DataSpec
from alexnet_jax.runtime import paths

STATS_VERSION = 1  # bump when the computation changes: old cache files are then ignored


@dataclasses.dataclass(frozen=True)
class DatasetStats:
  """Pixel statistics of a training split, pixels in [0, 255] unless said otherwise."""
  mean_image: np.ndarray  # [R, R, 3] float32: the mean of every decoded R x R image
  mean_rgb: np.ndarray  # [3] float32: the mean pixel (the mean image's spatial average)
  eigval: np.ndarray  # [3] float32, descending: RGB covariance eigenvalues, pixels in [0, 1]
  eigvec: np.ndarray  # [3, 3] float32: column i is the eigenvector of eigval[i]
  num_images: int

  def save(self, path: str) -> None:
    """Atomically: concurrent processes never see half a file."""
    arrays = {k: np.asarray(v) for k, v in dataclasses.asdict(self).items()}
    write_atomically(path, lambda f: np.savez(f, version=STATS_VERSION, **arrays), binary=True)

  @classmethod
  def load(cls, path: str) -> DatasetStats:
    with np.load(io.BytesIO(paths.read_bytes(path)) if paths.is_remote(path) else path) as data:
      if int(data['version']) != STATS_VERSION:
        raise ValueError(f'{path} has stats version {int(data["version"])}, '
                         f'not {STATS_VERSION}.')
      return cls(mean_image=data['mean_image'], mean_rgb=data['mean_rgb'],
                 eigval=data['eigval'], eigvec=data['eigvec'],
                 num_images=int(data['num_images']))


def accumulate(batches: Iterable[np.ndarray]) -> DatasetStats:
  """Stats of uint8 image batches [B, R, R, 3], summed in float64 (1.2M images x 65,536
  pixels: float32 sums would lose the low digits)."""
  count = 0
  image_sum = None
  pixel_sum = np.zeros(3, np.float64)
  outer_sum = np.zeros((3, 3), np.float64)
  for batch in batches:
    batch = np.asarray(batch, np.float64) / 255.0
    count += batch.shape[0]
    batch_sum = batch.sum(axis=0)
    image_sum = batch_sum if image_sum is None else image_sum + batch_sum
    pixels = batch.reshape(-1, 3)
    pixel_sum += pixels.sum(axis=0)
    outer_sum += pixels.T @ pixels
  if not count:
    raise ValueError('No images to compute statistics from.')
  num_pixels = count * image_sum.shape[0] * image_sum.shape[1]
  mean = pixel_sum / num_pixels
  covariance = outer_sum / num_pixels - np.outer(mean, mean)
  eigval, eigvec = np.linalg.eigh(covariance)
  order = np.argsort(eigval)[::-1]
  eigval, eigvec = eigval[order], eigvec[:, order]
  # An eigenvector's sign is arbitrary; fix it so the first component is negative, as in the
  # published vectors (the noise is symmetric in alpha, so this changes no distribution).
  eigvec = eigvec * np.where(eigvec[0] > 0, -1.0, 1.0)
  return DatasetStats(mean_image=(image_sum / count * 255.0).astype(np.float32),
                      mean_rgb=(mean * 255.0).astype(np.float32),
                      eigval=np.maximum(eigval, 0.0).astype(np.float32),
                      eigvec=eigvec.astype(np.float32), num_images=count)


def cache_path(dataset_dir: str, split: str, resize_size: int, num_images: int) -> str:
  """Where the stats of `split` live, beside the dataset's own files."""
  count = 'all' if num_images <= 0 else str(num_images)
  return paths.join(dataset_dir,
                    f'alexnet_jax_stats-{file_safe(split)}-r{resize_size}-n{count}.npz')


def file_safe(split: str) -> str:
  """A tfds split name ('train[:1000]') as part of a file name."""
  return split.replace('/', '_').replace(':', '-').replace('[', '_').replace(']', '')


def write_atomically(path: str, write: Callable[[Any], None], binary: bool = False) -> None:
  """`write(file)` into a file beside `path`, renamed to `path` once complete: the files cached
  beside a dataset are read by concurrent processes, which must never see half of one. On object
  storage (a gs:// data dir) the file is built in memory and uploaded as one object, which readers
  see whole or not at all."""
  if paths.is_remote(path):
    buffer = io.BytesIO() if binary else io.StringIO()
    write(buffer)
    content = buffer.getvalue()
    paths.makedirs(paths.dirname(path))
    paths.write_bytes(path, content if binary else content.encode())
    return
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix='.tmp_', suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, 'wb' if binary else 'w') as f:
      write(f)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _stats_split(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> str:
  """The training split, or its first `stats_num_images` examples if it has more."""
  if 0 < spec.stats_num_images < builder.info.splits[spec.train_split].num_examples:
    return f'{spec.train_split}[:{spec.stats_num_images}]'
  return spec.train_split


def compute(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> DatasetStats:
  """One pass over the first `spec.stats_num_images` training images (all if <= 0; tfds
  shuffled the examples when it wrote the files, so a prefix is a random sample), decoded exactly
  as for training: shorter side `resize_size`, central square."""
  records.hide_gpus_from_tf()
  ds = records.read_encoded(builder, _stats_split(spec, builder), shuffle=False, seed=spec.seed)
  decode = preprocess.square_decoder(spec)
  ds = ds.map(records.no_autograph(lambda ex: decode(ex['image'])),
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(64).prefetch(tf.data.AUTOTUNE).with_options(records.tf_data_options())
  return accumulate(tfds.as_numpy(ds))


def load_or_compute(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> tuple[DatasetStats, str]:
  """The cached stats for (train split, resize_size, stats_num_images), computed and saved on
  first use. Returns them and the cache file's path."""
  path = spec_cache_path(spec, builder)
  if paths.isfile(path):
    try:
      return DatasetStats.load(path), path
    except (ValueError, KeyError, OSError) as e:
      logging.warning('Recomputing the dataset statistics: cannot use %s (%s).', path, e)
  logging.info('Computing the training-set mean image and RGB PCA over %s of %s (once; cached '
               'in %s).', _stats_split(spec, builder), builder.name, path)
  computed = compute(spec, builder)
  computed.save(path)
  return computed, path


def spec_cache_path(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> str:
  """Where the statistics `spec` needs are cached for the dataset `builder` holds."""
  return cache_path(os.fspath(builder.data_dir), spec.train_split, spec.resize_size,
                    spec.stats_num_images)


def load_cached(spec: DataSpec, builder: tfds.core.DatasetBuilder) -> DatasetStats:
  """The statistics a training run of `spec` cached, or DatasetNotReadyError saying how to make
  them: for the commands that read a dataset without preparing it (evaluate)."""
  path = spec_cache_path(spec, builder)
  try:
    return DatasetStats.load(path)
  except (ValueError, KeyError, OSError) as e:
    raise DatasetNotReadyError(
        f'The training-set statistics this config subtracts are not cached in {path} ({e}). '
        'Run python -m alexnet_jax.dataset_stats with the same --config first (training '
        'writes them too).') from e
