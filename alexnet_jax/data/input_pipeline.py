"""tfds -> tf.data -> numpy batches with the paper's preprocessing (sections 2 and 4.1).

One code path serves `synthetic_shapes/*` and `imagenet2012`: both have a JPEG `image` and an
integer `label`. Every image is resized so its shorter side is `resize_size` (256) and its central
256 x 256 patch kept (decoding only the part of the JPEG that patch needs). From there:
- mean subtraction (`config.mean_subtraction`): a constant `mean_rgb`, the training set's mean
  pixel, or its mean 256 x 256 image (the paper), subtracted before cropping so the mean is
  cropped with the image; then an optional division by `std_rgb` (not the paper's);
- training: the paper's colour noise along the RGB principal components
  (`pca_lighting_std`, 0.1 in the paper; eigenvectors published or computed from the training
  set), a random 224 x 224 patch and its mirror image with probability 1/2; or, as an option,
  the modern random-resized crop (`train_crop='random_resized_crop'`);
- evaluation: the central 224 x 224 patch, or the paper's ten patches ([B, 10, S, S, 3]).
With augment_on='device' (core/augment.py) the host stops at the uint8 crop (or, for the ten
patches, the square) and ships the crop's random draws instead of applying them: the jitted step
flips, adds the colour noise, subtracts the mean and casts, with the same numbers.
Statistics of the training set (mean image, RGB PCA) are computed once and cached beside the
dataset (`load_or_compute_stats`; the arithmetic and file format are in stats.py). Before them,
every JPEG of the training and evaluation splits is tried once (`check_images`, saved likewise):
truncated ones are decoded as far as their data goes and counted; ones that cannot be decoded at
all are named in a DatasetNotReadyError before training. With `config.resized`, the squares are
read from a dataset they were written into once (resized_dataset.py): only decoded, not resized.

The training stream is a pure function of the config and the step. It is made of
`config.input_shards` logical shards (0: one per process), each an endless run of epochs; epoch e
of a shard is a permutation drawn from (config.seed, shard, e), and each example's crop, flip and
colour noise come from stateless TF ops seeded with (config.seed, shard, position in the shard).
Global batch i is the concatenation of every shard's batch i; process p reads only its own shards'
files. So `train_iterator(start_step=i)` continues exactly where an uninterrupted run was at step
i (a resume re-reads at most one epoch of one shard's JPEG bytes, without decoding them), and the
batches do not depend on how many processes read them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import re
import shlex
import sys
import tarfile
import time
from typing import Any, Callable, Iterator, Sequence

from absl import logging
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import resized_dataset
# The config's choices, defined once in options.py (TF-free, for the config check).
from alexnet_jax.data.options import (  # noqa: F401
    EVAL_CROPS, MEAN_SUBTRACTIONS, PCA_EIGENS, TRAIN_CROPS)
from alexnet_jax.data.records import decode_and_resize, indexed_records, tf_data_options
from alexnet_jax.data import stats as dataset_stats
from alexnet_jax.data import shapes_dataset  # noqa: F401  (registers `synthetic_shapes` with tfds)

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')
_VAL_NAME = re.compile(r'ILSVRC2012_val_(\d{8})\.JPEG')

# Eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] (docs/alexnet2012.md, section 4.1):
# the published values, used when config.pca_eigen = 'published'.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
               (-0.5808, -0.0045, -0.8140),
              (-0.5836, -0.6948, 0.4203))  # columns are the eigenvectors


class DatasetNotReadyError(Exception):
  """The dataset needs files that only a person can provide (ImageNet's tars)."""


def _hide_gpus_from_tf() -> None:
  """JAX owns the accelerators; TF (used for input only) must not allocate GPU memory."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass  # TF's runtime is already initialised (then it is too late, and was done before)


_hide_gpus_from_tf()  # at import: it only works before TF creates its devices


# ---------------------------------------------------------------------------------------------
# Preparing the dataset.


def _data_dir(config: ml_collections.ConfigDict) -> str | None:
  return os.path.expanduser(config.data_dir) if config.data_dir else None


def _imagenet_manual_dir(config: ml_collections.ConfigDict,
                         builder: tfds.core.DatasetBuilder) -> str:
  """Where tfds will read the tars from (tfds's default: <data_dir>/downloads/manual)."""
  if config.manual_dir:
    return os.path.abspath(os.path.expanduser(config.manual_dir))
  return os.path.abspath(os.fspath(builder.data_dir_root / 'downloads' / 'manual'))


def _current_command() -> str:
  """This process's command line, as a person would re-type it (`python -m pkg.mod ...`)."""
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  if spec is not None and spec.name and not spec.name.startswith(('pytest', 'ipykernel')):
    return shlex.join(['python', '-m', spec.name.removesuffix('.__main__'), *sys.argv[1:]])
  if sys.argv and sys.argv[0]:
    return shlex.join(['python', *sys.argv])
  return '<the command you ran>'


def _check_imagenet_manual_files(config: ml_collections.ConfigDict,
                                 builder: tfds.core.DatasetBuilder) -> str:
  """Raises DatasetNotReadyError, before tfds writes anything, if a tar is missing."""
  manual_dir = _imagenet_manual_dir(config, builder)
  missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.isfile(os.path.join(manual_dir, f))]
  if missing:
    raise DatasetNotReadyError(
        f'{builder.name} is not prepared in {builder.data_dir_root} and cannot be downloaded '
        f'automatically.\n'
        f'Missing: {", ".join(missing)}\n'
        f'1. Download {" and ".join(IMAGENET_MANUAL_FILES)} from https://image-net.org '
        f'(ILSVRC2012, needs an account).\n'
        f'2. Put both files in this directory (set config.manual_dir to use another one):\n'
        f'     {manual_dir}\n'
        f'3. Re-run the same command (it converts the tars into tfds files once: hours, and '
        f'about 150 GB of disk beside the tars; later runs reuse them):\n'
        f'     {_current_command()}\n'
        f'   or prepare it separately with: tfds build imagenet2012 '
        f'--data_dir={builder.data_dir_root} --manual_dir={manual_dir}')
  return manual_dir


def _tar_names(path: str) -> list[str]:
  """Member names of a tar (headers only: seeks past the data, seconds even for 150 GB)."""
  try:
    with tarfile.open(path, mode='r:') as tar:
      return [m.name for m in tar.getmembers() if m.isfile()]
  except tarfile.TarError as e:
    raise DatasetNotReadyError(f'{path} is not a readable tar archive ({e}); download it again '
                               'from https://image-net.org.') from e


def _listing(names: Sequence[str], limit: int = 5) -> str:
  shown = ', '.join(names[:limit])
  return shown + (f' (and {len(names) - limit} more)' if len(names) > limit else '')


def _check_imagenet_archives(manual_dir: str, builder: tfds.core.DatasetBuilder) -> None:
  """Refuses, before hours of conversion, tars that tfds's imagenet2012 would fail on late or
  silently mislabel: tfds takes each training class from a member's name (`<synset>.tar`) and
  gives the i-th validation image in sorted name order the i-th label of its list of 50,000."""
  synsets = set(builder.info.features['label'].names)
  train_path = os.path.join(manual_dir, IMAGENET_MANUAL_FILES[0])
  train_names = _tar_names(train_path)
  bad = [n for n in train_names if not (n.endswith('.tar') and n[:-4] in synsets)]
  if bad or not train_names:
    raise DatasetNotReadyError(
        f'{train_path} should hold one tar per class named by its WordNet id, e.g. '
        f'n01440764.tar (the 1000 ILSVRC-2012 synsets), each holding that class\'s JPEGs '
        f'(n01440764_10026.JPEG, ...). ' +
        (f'Not ILSVRC-2012 class archives: {_listing(bad)}.' if bad else 'It holds no files.'))
  val_path = os.path.join(manual_dir, IMAGENET_MANUAL_FILES[1])
  val_names = _tar_names(val_path)
  numbers, bad = [], []
  for name in val_names:
    match = _VAL_NAME.fullmatch(name)
    if match:
      numbers.append(int(match.group(1)))
    else:
      bad.append(name)
  if bad or not val_names:
    raise DatasetNotReadyError(
        f'{val_path} should hold the validation JPEGs at its top level, named '
        f'ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG. ' +
        (f'Other files: {_listing(bad)}.' if bad else 'It holds no files.'))
  if sorted(numbers) != list(range(1, len(numbers) + 1)):
    missing = sorted(set(range(1, max(numbers) + 1)) - set(numbers))
    raise DatasetNotReadyError(
        f'{val_path} holds {len(numbers)} validation images but not ILSVRC2012_val_00000001 to '
        f'_{len(numbers):08d}: missing {_listing([f"{n:08d}" for n in missing])}. tfds labels '
        f'the i-th image in name order with the i-th of the 50,000 validation labels, so a gap '
        f'would mislabel every later image; use the complete ILSVRC2012_img_val.tar.')
  if len(set(n[:-4] for n in train_names)) < len(synsets) or len(numbers) < 50_000:
    logging.warning('%s holds %d of the %d classes and %s %d of the 50,000 validation images: '
                    'a partial ImageNet.', train_path, len(train_names), len(synsets), val_path,
                    len(numbers))


def open_dataset(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The builder of `config.dataset` (its metadata: classes, splits), writing nothing; refuses
  (DatasetNotReadyError, saying which files to put where) a dataset that is not prepared and
  cannot be prepared here, so that a run stops before it writes or compiles anything.
  With `config.resized`, the builder of the resized squares (resized_dataset.py); the source is
  opened (and may refuse) only while they are not written yet."""
  if config.resized:
    resized = resized_dataset.builder(config)
    if not resized.is_prepared():
      open_dataset(resized_dataset.source_config(config))
    elif resized_dataset.missing_splits(resized):
      raise DatasetNotReadyError(
          f'{resized.info.full_name} in {resized.data_dir} holds the splits '
          f'{", ".join(resized.info.splits)}, not {", ".join(resized_dataset.missing_splits(resized))}'
          f'. Delete that directory and re-run {_current_command()} to write it with them.')
    return resized
  builder = tfds.builder(config.dataset, data_dir=_data_dir(config))
  if not builder.is_prepared() and builder.name == 'imagenet2012':
    manual_dir = _check_imagenet_manual_files(config, builder)
    _check_imagenet_archives(manual_dir, builder)
    if importlib.util.find_spec('importlib_resources') is None:
      # tfds 4.9.10 imports it to prepare its own datasets but does not declare it (Python 3.11).
      raise DatasetNotReadyError(
          'Preparing imagenet2012 with tensorflow-datasets needs the `importlib_resources` '
          'package: pip install importlib_resources, then re-run: ' + _current_command())
  return builder


def prepare_dataset(config: ml_collections.ConfigDict,
                    builder: tfds.core.DatasetBuilder | None = None
                    ) -> tfds.core.DatasetBuilder:
  """Returns the builder of `config.dataset` (`builder`: open_dataset's, if already opened),
  generating/preparing its files on first use, checking once that every JPEG of its training and
  evaluation splits decodes (check_images: DatasetNotReadyError names those that do not), and
  computing the training-set statistics the config asks for (mean image, RGB PCA) if they are
  not cached yet."""
  builder = builder or open_dataset(config)
  if config.resized:  # written once from the prepared and checked source (resized_dataset.py)
    if not builder.is_prepared():
      source_config = resized_dataset.source_config(config)
      source = resized_dataset.source_builder(builder.builder_config)  # open_dataset checked it
      _prepare_files(source_config, source)
      logging.info('Writing %s from %s into %s (once).', builder.info.full_name,
                   source.info.full_name, builder.data_dir)
      builder.download_and_prepare(download_config=resized_dataset.download_config(builder))
  else:
    _prepare_files(config, builder)
  if _needs_stats(config):
    load_or_compute_stats(config, builder)
  return builder


def _prepare_files(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> None:
  """The dataset's files, generated or converted on first use, and every JPEG checked once."""
  if not builder.is_prepared():
    if builder.name == 'imagenet2012':  # open_dataset has checked the manual files
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=_imagenet_manual_dir(config, builder)))
    else:
      builder.download_and_prepare()  # synthetic_shapes: generated locally, nothing downloaded
  check_images(config, builder)  # refuses undecodable JPEGs before the stats pass meets them


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  """From the dataset's metadata, so the model's head can be checked against the data."""
  return builder.info.features['label'].num_classes


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Size of `split` (tfds split syntax, e.g. 'train' or 'validation[:1000]')."""
  return builder.info.splits[split].num_examples


def planned_steps(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
                  ) -> tuple[int, int]:
  """(steps per epoch, steps the run trains): config.num_train_steps, or num_epochs epochs."""
  steps_per_epoch = max(num_examples(builder, config.train_split) // config.batch_size, 1)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  return steps_per_epoch, num_steps


# ---------------------------------------------------------------------------------------------
# Pure per-example functions (tests call them directly).


def square_decoder(config: ml_collections.ConfigDict) -> Callable[[tf.Tensor], tf.Tensor]:
  """record image -> the uint8 resize_size square: `decode_and_resize` of the JPEG, or, from a
  resized dataset (config.resized), only the decoding its storage needs."""
  if config.resized:
    return lambda image: resized_dataset.decode_square(image, config.resized, config.resize_size)
  return lambda jpeg: decode_and_resize(jpeg, config.resize_size)


def decode_random_resized_crop(jpeg_bytes: tf.Tensor, seed: tf.Tensor, image_size: int,
                               area_range: Sequence[float] = (0.08, 1.0),
                               aspect_ratio_range: Sequence[float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """The modern "Inception" crop (not the paper's): a random box of `area_range` of the image
  and `aspect_ratio_range`, decoded alone and resized to `image_size` square; then a flip with
  probability 1/2. float32 in [0, 255]. `seed`: a stateless seed, shape [2]."""
  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  shape = tf.image.extract_jpeg_shape(jpeg_bytes)
  begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=box_seed,
      min_object_covered=0.0, aspect_ratio_range=tuple(aspect_ratio_range),
      area_range=tuple(area_range), max_attempts=10, use_image_if_no_bounding_boxes=True)
  window = tf.concat([begin[:2], box_size[:2]], 0)
  image = tf.image.decode_and_crop_jpeg(jpeg_bytes, window, channels=3,
                                        dct_method='INTEGER_ACCURATE', try_recover_truncated=True)
  image = tf.image.resize(image, [image_size, image_size], method='bilinear', antialias=True)
  image = _flip(image, flip_seed)
  return tf.ensure_shape(image, [image_size, image_size, 3])


def _flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Mirrored left-right with probability 1/2."""
  flip = tf.random.stateless_uniform([], seed=seed) < 0.5
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def random_crop_and_flip(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """A uniformly random `image_size` square of `image`, mirrored left-right with probability 1/2.

  `seed` is a stateless seed (shape [2] int); equal seeds give equal crops.
  """
  top, left, flip = crop_draws(seed, tf.shape(image), image_size)
  image = image[top:top + image_size, left:left + image_size]
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def crop_draws(seed: tf.Tensor, shape: tf.Tensor, image_size: int
               ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """(top, left, flip) of random_crop_and_flip for an image of `shape`: one function for both
  places the draws are made (the host path and the draws shipped with augment_on='device'),
  so the two modes crop and mirror every example alike."""
  seeds = tf.random.experimental.stateless_split(seed, num=3)
  top = tf.random.stateless_uniform(
      [], seed=seeds[0], minval=0, maxval=shape[0] - image_size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform(
      [], seed=seeds[1], minval=0, maxval=shape[1] - image_size + 1, dtype=tf.int32)
  return top, left, tf.random.stateless_uniform([], seed=seeds[2]) < 0.5


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The central `image_size` square (offsets rounded down, as for the 256 patch)."""
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def ten_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The paper's test patches [10, S, S, C]: top-left, top-right, bottom-left, bottom-right and
  centre `image_size` squares of `image`, then the same five mirrored left-right."""
  shape = tf.shape(image)
  bottom, right = shape[0] - image_size, shape[1] - image_size
  corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
  crops = tf.stack([image[t:t + image_size, l:l + image_size] for t, l in corners])
  crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
  return tf.ensure_shape(crops, [10, image_size, image_size, image.shape[-1]])


def normalize(image: tf.Tensor, mean: Any, std_rgb: Sequence[float] | None = None) -> tf.Tensor:
  """float32 pixels in [0, 255] minus the mean: per channel ([3]) or the mean image (cropped
  like `image`). The paper stops there (`std_rgb=None`); dividing by a std is for the 'he' init
  of short runs (configs/tiny.py)."""
  image = tf.cast(image, tf.float32) - tf.cast(mean, tf.float32)
  if std_rgb is not None and len(std_rgb):
    image = image / tf.constant(std_rgb, tf.float32)
  return image


def pca_noise(seed: tf.Tensor, alpha_std: float, eigval: Any = PCA_EIGVAL,
              eigvec: Any = PCA_EIGVEC) -> tf.Tensor:
  """sum_i p_i * alpha_i * lambda_i, alpha_i ~ N(0, alpha_std), in [0, 255] pixel units [3].

  `eigval`/`eigvec` (columns) are for pixels in [0, 1], hence the factor 255.
  """
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=alpha_std)
  rgb = tf.linalg.matvec(tf.constant(eigvec, tf.float32), alpha * tf.constant(eigval, tf.float32))
  return rgb * 255.0


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, alpha_std: float, eigval: Any = PCA_EIGVAL,
                 eigvec: Any = PCA_EIGVEC) -> tf.Tensor:
  """The paper's colour augmentation: the same `pca_noise` added to every pixel of `image`
  (float, [0, 255]). Defaults: the paper's published ImageNet values (docs/alexnet2012.md, section 4.1)."""
  return tf.cast(image, tf.float32) + pca_noise(seed, alpha_std, eigval, eigvec)


# ---------------------------------------------------------------------------------------------
# Training-set statistics (mean image, RGB PCA): computed once, cached beside the dataset.


def _needs_stats(config: ml_collections.ConfigDict) -> bool:
  return (config.mean_subtraction in ('channel', 'image')
          or (config.pca_lighting_std > 0 and config.pca_eigen == 'dataset'))


def _stats_split(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder) -> str:
  """The training split, or its first `stats_num_images` examples if it has more."""
  if 0 < config.stats_num_images < num_examples(builder, config.train_split):
    return f'{config.train_split}[:{config.stats_num_images}]'
  return config.train_split


def compute_stats(config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> dataset_stats.DatasetStats:
  """One pass over the first `config.stats_num_images` training images (all if <= 0; tfds
  shuffled the examples when it wrote the files, so a prefix is a random sample), decoded exactly
  as for training: shorter side `resize_size`, central square."""
  _hide_gpus_from_tf()
  ds = _read(builder, _stats_split(config, builder), shuffle=False, seed=config.seed)
  decode = square_decoder(config)
  ds = ds.map(_no_autograph(lambda ex: decode(ex['image'])), num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(64).prefetch(tf.data.AUTOTUNE).with_options(tf_data_options())
  return dataset_stats.accumulate(tfds.as_numpy(ds))


def load_or_compute_stats(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
                          ) -> tuple[stats.DatasetStats, str]:
  """The cached stats for (train split, resize_size, stats_num_images), computed and saved on
  first use. Returns them and the cache file's path."""
  path = dataset_stats.cache_path(os.fspath(builder.data_dir), config.train_split,
                                  config.resize_size, config.stats_num_images)
  if os.path.isfile(path):
    try:
      return dataset_stats.DatasetStats.load(path), path
    except (ValueError, KeyError, OSError) as e:
      logging.warning('Recomputing the dataset statistics: cannot use %s (%s).', path, e)
  logging.info('Computing the training-set mean image and RGB PCA over %s of %s (once; cached '
               'in %s).', _stats_split(config, builder), builder.name, path)
  stats = compute_stats(config, builder)
  stats.save(path)
  return stats, path


# ---------------------------------------------------------------------------------------------
# Damaged JPEGs: every image a run reads is tried once, before training (check_images).
#
# Every decode in this file passes try_recover_truncated=True: a JPEG cut short (an interrupted
# copy) decodes as far as its data goes, and libjpeg fills the rest (each missing block repeats
# the colour of the last one decoded). TF's `acceptable_fraction` is not used: with recovery TF
# counts every row as read, so it rejects nothing; without recovery a crop window below the cut
# fails whatever the fraction. A JPEG whose header cannot be read (not a JPEG, or cut inside its
# header) cannot be decoded at all; the training stream being a pure function of the step, it
# would stop every resumed run at the same step, so check_images refuses the dataset first.

IMAGE_CHECK_VERSION = 1  # bump when the check changes: old cache files are then ignored
# What `md5sum` prints for the archives image-net.org serves.
IMAGENET_MD5 = {'ILSVRC2012_img_train.tar': '1d675b47d978889d74fa0da5fadfb00e',
                'ILSVRC2012_img_val.tar': '29b22e2961454d5413ddabcf34fc5622'}
_INTACT, _TRUNCATED, _UNDECODABLE = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class ImageCheck:
  """What trying every JPEG of a split once found. Images are named by the dataset's
  `file_name` feature (ImageNet's records carry it) or else as `split[index]`, tfds's slicing
  (builder.as_dataset(split=f'{split}[{index}:{index + 1}]') reads it)."""
  split: str
  num_images: int
  truncated: tuple[tuple[str, float], ...]  # (name, fraction of its rows its data holds)
  undecodable: tuple[str, ...]
  seconds: float  # how long the pass took


def _attempt(fn, x, fallback):
  """fn(x) in a tf.data function, or `fallback` where fn raises: fn runs in a one-element dataset
  whose error is dropped (ignore_errors), so a failed decode is a value, not the pass's end."""
  return (tf.data.Dataset.from_tensors(x).map(_no_autograph(fn)).ignore_errors()
          .concatenate(tf.data.Dataset.from_tensors(fallback)).take(1).get_single_element())


def _decodes(jpeg: tf.Tensor, recover: bool) -> tf.Tensor:
  """True, or an error: the ops the pipeline decodes with (the header, then every pixel)."""
  shape = tf.image.extract_jpeg_shape(jpeg)
  image = tf.image.decode_and_crop_jpeg(jpeg, tf.stack([0, 0, shape[0], shape[1]]), channels=3,
                                        try_recover_truncated=recover)
  return tf.reduce_all(tf.shape(image)[:2] == shape[:2])


def _rows_present(jpeg: tf.Tensor) -> tf.Tensor:
  """About which fraction of a truncated JPEG's rows its data holds: decoded without recovery but
  with acceptable_fraction=0, TF returns the rows it could read and zeros below them."""
  image = tf.io.decode_jpeg(jpeg, channels=3, acceptable_fraction=0.0)
  height = tf.shape(image)[0]
  nonzero = tf.cast(tf.reduce_max(image, axis=[1, 2]) > 0, tf.int32)
  return (tf.cast(tf.reduce_max(tf.range(1, height + 1) * nonzero), tf.float32)
          / tf.cast(height, tf.float32))


def _jpeg_status(jpeg: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """(_INTACT, _TRUNCATED or _UNDECODABLE, fraction of rows present) of one JPEG. An intact one
  is decoded once; only a damaged one is tried again with recovery."""
  intact = _attempt(lambda b: _decodes(b, recover=False), jpeg, False)

  def damaged():
    readable = _attempt(lambda b: _decodes(b, recover=True), jpeg, False)
    return (tf.where(readable, _TRUNCATED, _UNDECODABLE),
            tf.where(readable, _attempt(_rows_present, jpeg, 0.0), 0.0))

  return tf.cond(intact, lambda: (tf.constant(_INTACT), tf.constant(1.0)), damaged)


def scan_images(builder: tfds.core.DatasetBuilder, split: str) -> ImageCheck:
  """Tries every JPEG of `split` with the pipeline's decoding ops, in one parallel pass that
  records failures instead of stopping at them. DatasetNotReadyError if the dataset's own files
  cannot be read."""
  _hide_gpus_from_tf()
  features = builder.info.features
  named = 'file_name' in features

  @_no_autograph
  def check(index, record):
    ex = features.deserialize_example(record, decoders={'image': tfds.decode.SkipDecoding()})
    status, rows = _jpeg_status(ex['image'])
    return index, ex['file_name'] if named else tf.constant(''), status, rows

  num_images = num_examples(builder, split)
  ds = indexed_records(builder, split).map(check, num_parallel_calls=tf.data.AUTOTUNE,
                                            deterministic=False)
  ds = ds.batch(1024).prefetch(tf.data.AUTOTUNE).with_options(tf_data_options())
  start = last_log = time.perf_counter()
  done, damaged = 0, []
  try:
    for index, name, status, rows in tfds.as_numpy(ds):
      done += len(index)
      for k in np.flatnonzero(status != _INTACT):
        label = name[k].decode() if named else f'{split}[{index[k]}]'
        damaged.append((int(index[k]), label, int(status[k]), float(rows[k])))
      if time.perf_counter() - last_log > 60:
        last_log = time.perf_counter()
        logging.info('Checked %d of the %d images of %s %s (%.0f images/s).', done, num_images,
                     builder.name, split, done / (last_log - start))
  except tf.errors.OpError as e:
    raise DatasetNotReadyError(
        f'The prepared files of {builder.name} in {builder.data_dir} cannot be read '
        f'({e.message.splitlines()[0][:300]}). Delete that directory and re-run '
        f'{_current_command()} to prepare them again.') from e
  damaged.sort()
  return ImageCheck(
      split=split, num_images=done,
      truncated=tuple((n, round(r, 3)) for _, n, s, r in damaged if s == _TRUNCATED),
      undecodable=tuple(n for _, n, s, _ in damaged if s == _UNDECODABLE),
      seconds=round(time.perf_counter() - start, 3))


def _split_fingerprint(builder: tfds.core.DatasetBuilder, split: str) -> str:
  """Of the files `split` is read from (names, sizes, ranges): a saved check is for these."""
  files = [(os.path.basename(i.filename), tf.io.gfile.stat(i.filename).length, i.skip, i.take)
           for i in builder.info.splits[split].file_instructions]
  return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def image_check_path(builder: tfds.core.DatasetBuilder, split: str) -> str:
  """Where the check of `split` is saved: beside the dataset's files, like its statistics."""
  return os.path.join(os.fspath(builder.data_dir),
                      f'alexnet_jax_images-{dataset_stats.file_safe(split)}.json')


def load_or_scan_images(builder: tfds.core.DatasetBuilder, split: str
                        ) -> tuple[ImageCheck, str]:
  """The saved check of `split`, or a new one (scan_images) saved for later runs; and the path."""
  path = image_check_path(builder, split)
  fingerprint = _split_fingerprint(builder, split)
  try:
    with open(path) as f:
      saved = json.load(f)
    if (saved['version'], saved['fingerprint']) == (IMAGE_CHECK_VERSION, fingerprint):
      return ImageCheck(split=saved['split'], num_images=saved['num_images'],
                        truncated=tuple((n, r) for n, r in saved['truncated']),
                        undecodable=tuple(saved['undecodable']), seconds=saved['seconds']), path
  except FileNotFoundError:
    pass
  except (OSError, ValueError, KeyError, TypeError) as e:
    logging.warning('Checking the images again: cannot use %s (%s).', path, e)
  logging.info('Checking that every image of %s %s decodes (once; saved in %s).', builder.name,
               split, path)
  check = scan_images(builder, split)
  logging.info('Checked the %d images of %s %s in %.1f s: %d truncated, %d undecodable.',
               check.num_images, builder.name, split, check.seconds, len(check.truncated),
               len(check.undecodable))
  record = {'version': IMAGE_CHECK_VERSION, 'fingerprint': fingerprint,
            **dataclasses.asdict(check)}
  try:
    dataset_stats.write_atomically(path, lambda f: json.dump(record, f, indent=1))
  except OSError as e:
    logging.warning('Cannot save the image check in %s (%s); later runs will check again.',
                    path, e)
  return check, path


def check_images(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder
                 ) -> dict[str, ImageCheck]:
  """Every JPEG of the training and evaluation splits, tried once (saved beside the dataset).
  Logs the truncated ones (trained and evaluated on as far as their data goes) and refuses, with
  DatasetNotReadyError naming them and saying what to do, a dataset with JPEGs that cannot be
  decoded at all: before training, not at the step that would reach them."""
  checks = {split: load_or_scan_images(builder, split)
            for split in dict.fromkeys((config.train_split, config.eval_split))}
  for split, (check, path) in checks.items():
    if check.truncated:
      logging.warning(
          '%d of the %d images of %s %s are truncated JPEGs, decoded as far as their data goes '
          '(the rest of each filled with its last decoded colours): %s. All are listed in %s.',
          len(check.truncated), check.num_images, builder.name, split,
          _listing([f'{n} ({r:.0%} of its rows)' for n, r in check.truncated], 10), path)
  bad = {split: (check, path) for split, (check, path) in checks.items() if check.undecodable}
  if bad:
    raise DatasetNotReadyError(_undecodable_message(config, builder, bad))
  return {split: check for split, (check, _) in checks.items()}


def _undecodable_message(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                         bad: dict[str, tuple[ImageCheck, str]]) -> str:
  count = sum(len(check.undecodable) for check, _ in bad.values())
  names = '; '.join(f'{split}: {_listing(list(check.undecodable), 10)}'
                    for split, (check, _) in bad.items())
  head = (f'{count} image{"s" if count > 1 else ""} of {builder.name} cannot be decoded as JPEG '
          f'(training or evaluation would stop at {"them" if count > 1 else "it"}): {names}. '
          f'All are listed in {", ".join(path for _, path in bad.values())}.')
  if builder.name != 'imagenet2012':
    return (f'{head}\nThe prepared files are damaged: delete {builder.data_dir} and re-run '
            f'{_current_command()} to prepare them again.')
  manual_dir = _imagenet_manual_dir(config, builder)
  train_tar, val_tar = IMAGENET_MANUAL_FILES
  return (f'{head}\n'
          f'They come from a damaged archive in {manual_dir}: md5sum prints '
          f'{IMAGENET_MD5[train_tar]} for an intact {train_tar} and {IMAGENET_MD5[val_tar]} for '
          f'{val_tar}.\n'
          f'1. Download each archive whose md5sum differs again from https://image-net.org '
          f'into {manual_dir}.\n'
          f'2. Delete the dataset prepared from it: rm -r {builder.data_dir}\n'
          f'3. Re-run (it prepares the dataset again): {_current_command()}')


@dataclasses.dataclass(frozen=True)
class PixelTransform:
  """What the per-example functions subtract, divide by and add, resolved from the config and
  (where it asks for them) the training-set statistics."""
  mean: np.ndarray  # [3], or the mean image [resize_size, resize_size, 3]; [0, 255] pixels
  std: np.ndarray | None  # [3] or None (the paper: no division)
  pca_std: float  # alpha ~ N(0, pca_std); 0: no colour noise
  eigval: np.ndarray  # [3], for [0, 1] pixels
  eigvec: np.ndarray  # [3, 3], columns


def pixel_transform(config: ml_collections.ConfigDict,
                    builder: tfds.core.DatasetBuilder) -> PixelTransform:
  """The config's mean subtraction and colour noise, loading the statistics they need."""
  stats = load_or_compute_stats(config, builder)[0] if _needs_stats(config) else None
  mean = {'constant': lambda: np.asarray(config.mean_rgb, np.float32),
          'channel': lambda: stats.mean_rgb,
          'image': lambda: stats.mean_image}[config.mean_subtraction]()
  dataset_eigen = config.pca_eigen == 'dataset' and stats is not None
  return PixelTransform(
      mean=mean, std=np.asarray(config.std_rgb, np.float32) if config.std_rgb else None,
      pca_std=float(config.pca_lighting_std),
      eigval=stats.eigval if dataset_eigen else np.asarray(PCA_EIGVAL, np.float32),
      eigvec=stats.eigvec if dataset_eigen else np.asarray(PCA_EIGVEC, np.float32))


def train_example(image_or_jpeg: tf.Tensor, seed: tf.Tensor, config: ml_collections.ConfigDict,
                  transform: PixelTransform) -> tf.Tensor:
  """One training image, float32 [S, S, 3]. `config.train_crop`:
  'random_crop' (the paper): the decoded resize_size square (uint8) -> a random image_size
    crop, flipped with probability 1/2 -> colour noise -> minus the mean (image, cropped and
    flipped alike);
  'random_resized_crop': JPEG bytes -> a random box decoded and resized -> flip -> colour noise
    -> minus the per-channel mean (config.mean_subtraction 'image' is refused for it).
  Cropping first gives the numbers of normalising the whole square then cropping (every later
  step is per pixel) on 224^2 pixels instead of 256^2, and moves uint8s, not floats."""
  crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  mean = transform.mean
  if config.train_crop == 'random_resized_crop':
    image = decode_random_resized_crop(image_or_jpeg, crop_seed, config.image_size,
                                       area_range=config.rrc_area_range)
  else:
    crop = lambda x: random_crop_and_flip(x, crop_seed, config.image_size)
    image, mean = crop(image_or_jpeg), _cropped_mean(mean, crop)
  if transform.pca_std > 0:
    image = pca_lighting(image, colour_seed, transform.pca_std, transform.eigval,
                         transform.eigvec)
  return normalize(image, mean, transform.std)


def eval_example(image: tf.Tensor, crops: str, image_size: int,
                 transform: PixelTransform) -> tf.Tensor:
  """A decoded resize_size square -> the central crop [S, S, 3] ('center') or the paper's ten
  patches [10, S, S, 3] ('ten') -> minus the mean (image, cropped alike)."""
  mean = transform.mean
  if crops == 'ten':  # the square once, not ten overlapping patches
    return ten_crop(normalize(image, mean, transform.std), image_size)
  crop = lambda x: center_crop(x, image_size)
  return normalize(crop(image), _cropped_mean(mean, crop), transform.std)


def train_example_for_device(image: tf.Tensor, seed: tf.Tensor, config: ml_collections.ConfigDict,
                             transform: PixelTransform) -> dict:
  """The host's half of train_example with augment_on='device' (the paper's random crop only):
  the uint8 crop, unflipped, and the draws train_example makes from the same `seed` (crop
  offsets, flip bit, colour noise in pixel units), for core/augment.train_images to finish."""
  crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
  size = config.image_size
  top, left, flip = crop_draws(crop_seed, tf.shape(image), size)
  crop = tf.ensure_shape(image[top:top + size, left:left + size], [size, size, 3])
  colour = (pca_noise(colour_seed, transform.pca_std, transform.eigval, transform.eigvec)
            if transform.pca_std > 0 else tf.zeros([3], tf.float32))
  return {'image': crop, 'crop': tf.stack([top, left]), 'flip': flip, 'colour': colour}


def eval_example_for_device(image: tf.Tensor, crops: str, image_size: int) -> tf.Tensor:
  """The host's half of eval_example with augment_on='device': the uint8 centre crop, or for
  the ten patches the whole square (core/augment.eval_images cuts them)."""
  return image if crops == 'ten' else center_crop(image, image_size)


def device_constants(transform: PixelTransform) -> dict:
  """What core/augment.py subtracts and divides by, shipped once per run: {'mean': [R, R, 3] or
  [3], 'std': [3] (ones where the config divides by nothing: x / 1 is x)}, float32."""
  std = transform.std if transform.std is not None else np.ones(3, np.float32)
  return {'mean': np.asarray(transform.mean, np.float32), 'std': np.asarray(std, np.float32)}


def _cropped_mean(mean: np.ndarray, crop) -> Any:
  """The mean to subtract from `crop(image)`: the mean image cropped alike, or the [3] mean."""
  return crop(tf.constant(mean)) if mean.ndim == 3 else mean


# ---------------------------------------------------------------------------------------------
# Iterators.


# The map functions are plain TF (no Python control flow on tensors); skipping AutoGraph avoids
# its "could not transform" warnings with the installed gast.
_no_autograph = tf.autograph.experimental.do_not_convert


def _per_process(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} must be divisible by process_count {process_count}.')
  return global_batch // process_count


def _read(builder: tfds.core.DatasetBuilder, split: Any, *, shuffle: bool,
          seed: int) -> tf.data.Dataset:
  """The encoded JPEG bytes and labels of `split` (decoding is ours, after shuffling/caching)."""
  read_config = tfds.ReadConfig(
      options=tf_data_options(),
      shuffle_seed=seed,
      try_autocache=False,  # caching is config.cache_decoded's decision
  )
  return builder.as_dataset(
      split=split,
      shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config,
  )


def input_shards(config: ml_collections.ConfigDict, process_count: int) -> int:
  """How many logical shards the training stream is made of (`config.input_shards`, 0 = one per
  process). The global batch sequence depends on this number, never on the process count: a run
  on 2 processes and one on 1 process with the same `input_shards` see the same batches."""
  shards = config.input_shards or process_count
  if shards % process_count:
    raise ValueError(f'config.input_shards={shards} cannot be divided among {process_count} '
                     f'processes; use a multiple of {process_count} (or 0: one per process).')
  return shards


def _records(builder: tfds.core.DatasetBuilder, split: Any,
             seed: tf.Tensor | None) -> tf.data.Dataset:
  """One pass over `split`'s {'image': JPEG bytes, 'label'} records, read straight from its files.

  With a `seed`, the files are visited in a seeded random order (interleaved, deterministic);
  without one, in file order. Reading the files ourselves (not `builder.as_dataset`) lets the file
  order of every epoch be a tensor function of the epoch, so an epoch is reached without reading
  the ones before it.
  """
  if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
    raise ValueError(f'{builder.name} is stored as {builder.info.file_format.value}; the training '
                     'stream reads tfrecord files. Prepare the dataset with the default format.')
  instructions = builder.info.splits[split].file_instructions
  files = tf.data.Dataset.from_tensor_slices((
      [i.filename for i in instructions],
      tf.constant([i.skip for i in instructions], tf.int64),
      tf.constant([i.take for i in instructions], tf.int64)))
  if seed is not None:
    files = files.shuffle(len(instructions), seed=seed)
  records = files.interleave(
      lambda f, skip, take: tf.data.TFRecordDataset(f).skip(skip).take(take),
      cycle_length=min(16, len(instructions)), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  features = builder.info.features
  parse = _no_autograph(lambda record: features.deserialize_example(
      record, decoders={'image': tfds.decode.SkipDecoding()}))
  return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _shard_stream(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                  shard: int, num_shards: int, start: int) -> tf.data.Dataset:
  """Logical shard `shard`'s infinite stream of (position, decoded 256 x 256 image, label) from
  position `start` on: epoch after epoch, each a fresh seeded permutation of the shard. (For the
  random-resized crop the image stays JPEG bytes: `train_example` decodes its box.)

  Epoch e's order is a function of (config.seed, shard, e) only, so resuming at position p
  starts at epoch p // n and skips p % n records (read, not decoded) of it.
  """
  split = tfds.split_for_jax_process(config.train_split, process_index=shard,
                                     process_count=num_shards, drop_remainder=True)
  size = builder.info.splits[split].num_examples
  if size == 0:
    raise ValueError(f'{config.train_split} of {config.dataset} has too few examples for '
                     f'{num_shards} input shards.')
  first_epoch, offset = divmod(start, size)

  def epoch_seed(epoch):
    return (tf.constant(config.seed, tf.int64) * 1_000_003 + shard) * 1_000_003 + epoch

  square = square_decoder(config)

  @_no_autograph
  def decode(ex: dict) -> dict:
    # The random-resized crop decodes its own box from the JPEG bytes in `augment`.
    image = (ex['image'] if config.train_crop == 'random_resized_crop'
             else square(ex['image']))
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  if config.cache_decoded:
    # Decode once (file order) and keep in memory; every epoch is an exact permutation of it.
    decoded = _records(builder, split, None).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    decoded = decoded.cache()
    epochs = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        lambda e: decoded.shuffle(size, seed=epoch_seed(e)))
    epochs = epochs.skip(offset)
  else:
    # Shuffle the (smaller) encoded bytes in a buffer, skip without decoding, then decode.
    epochs = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        lambda e: _records(builder, split, epoch_seed(e)).shuffle(config.shuffle_buffer,
                                                                  seed=epoch_seed(e)))
    epochs = epochs.skip(offset).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  positions = tf.data.Dataset.range(start, _FOREVER)
  return tf.data.Dataset.zip(positions, epochs)


_FOREVER = 2**62
AUGMENT_ON = ('host', 'device')  # resolved values (core/augment.resolve turns 'auto' into one)


def _check_augment_on(augment_on: str, config: ml_collections.ConfigDict) -> None:
  if augment_on not in AUGMENT_ON:
    raise ValueError(f'augment_on={augment_on!r}: use one of {", ".join(AUGMENT_ON)} (resolve '
                     "'auto' with core/augment.resolve).")
  if augment_on == 'device' and config.train_crop != 'random_crop':
    raise ValueError(f"augment_on='device' ships the paper's uint8 random crop; "
                     f'train_crop={config.train_crop!r} resizes into float pixels on the host.')


def train_iterator(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                   start_step: int = 0, process_index: int = 0, process_count: int = 1,
                   augment_on: str = 'host') -> Iterator[dict]:
  """train_dataset's batches as numpy arrays."""
  return iter(tfds.as_numpy(train_dataset(
      config, builder, start_step=start_step, process_index=process_index,
      process_count=process_count, augment_on=augment_on)))


def train_dataset(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  augment_on: str = 'host') -> tf.data.Dataset:
  """Infinite batches {'image': f32 [B, S, S, 3], 'label': i32 [B]}: this process's rows of the
  global batches start_step, start_step + 1, ... With `augment_on` 'device' (resolved: see
  core/augment.resolve) the image is the uint8 crop, with the draws core/augment.py needs
  ('crop', 'flip', 'colour'; see train_example_for_device).

  The global batch i is the concatenation, over the logical shards, of each shard's examples
  i * b .. (i + 1) * b - 1 (b = batch_size / input_shards), each augmented with a seed that is a
  function of (config.seed, shard, position). So the stream is a pure function of the config and
  the step: a run resumed at step i sees exactly what an uninterrupted one does, whatever the
  number of processes. Process p reads only its own shards' files.
  """
  _hide_gpus_from_tf()
  _check_augment_on(augment_on, config)
  num_shards = input_shards(config, process_count)
  if config.batch_size % num_shards:
    raise ValueError(f'config.batch_size={config.batch_size} cannot be split into '
                     f'{num_shards} input shards; use a multiple of {num_shards}.')
  shard_batch = config.batch_size // num_shards
  per_process = num_shards // process_count
  transform = pixel_transform(config, builder)

  def shard_batches(shard: int) -> tf.data.Dataset:
    base_seed = tf.constant([config.seed, shard], tf.int64)

    @_no_autograph
    def augment(position: tf.Tensor, ex: dict) -> dict:
      seed = tf.random.experimental.stateless_fold_in(base_seed, position)
      if augment_on == 'device':
        return {**train_example_for_device(ex['image'], seed, config, transform),
                'label': ex['label']}
      return {'image': train_example(ex['image'], seed, config, transform), 'label': ex['label']}

    ds = _shard_stream(config, builder, shard, num_shards, start_step * shard_batch)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(shard_batch, drop_remainder=True)

  shards = [shard_batches(process_index * per_process + i) for i in range(per_process)]
  if len(shards) == 1:
    ds = shards[0]
  else:
    ds = tf.data.Dataset.zip(tuple(shards)).map(
        lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]})
  return ds.prefetch(tf.data.AUTOTUNE).with_options(tf_data_options())


def _eval_shards(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder,
                 process_count: int) -> tuple[list[Any], int, int]:
  """Each process's part of the eval split, the per-process batch size and the batch count."""
  batch_size = _per_process(config.eval_batch_size, process_count, 'eval_batch_size')
  split = config.eval_split
  if 0 < config.num_eval_examples < num_examples(builder, split):
    split = f'{split}[:{config.num_eval_examples}]'
  shards = [tfds.split_for_jax_process(split, process_index=i, process_count=process_count)
            for i in range(process_count)]
  largest = max(builder.info.splits[s].num_examples for s in shards)
  return shards, batch_size, -(-largest // batch_size)


def eval_num_batches(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                     process_count: int = 1) -> int:
  """How many batches eval_iterator yields (the same on every process)."""
  return _eval_shards(config, builder, process_count)[2]


def eval_iterator(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                  process_index: int = 0, process_count: int = 1,
                  crops: str | None = None, augment_on: str = 'host') -> Iterator[dict]:
  """One pass: {'image', 'label', 'mask'}; the last batch is padded (mask 0) to full size.

  `crops` (default config.eval_crops): 'center' gives images [B, S, S, 3]; 'ten' gives the
  paper's ten patches of each image, [B, 10, S, S, 3]. With `augment_on` 'device' the images
  are uint8 and not mean-subtracted: the centre crop, or for 'ten' the resize_size square
  (eval_example_for_device). Every process yields the same number of batches (SPMD steps stay in
  lock-step), and every eval image is in exactly one process's batches with mask 1.
  """
  _hide_gpus_from_tf()
  _check_augment_on(augment_on, config)
  crops = crops or config.eval_crops
  if crops not in EVAL_CROPS:
    raise ValueError(f'crops={crops!r}: use one of {", ".join(EVAL_CROPS)}.')
  shards, batch_size, num_batches = _eval_shards(config, builder, process_count)
  shard = shards[process_index]
  num_padding = num_batches * batch_size - builder.info.splits[shard].num_examples
  transform = pixel_transform(config, builder)
  ds = _read(builder, shard, shuffle=False, seed=config.seed)
  square = square_decoder(config)

  @_no_autograph
  def preprocess(ex: dict) -> dict:
    image = square(ex['image'])
    image = (eval_example_for_device(image, crops, config.image_size) if augment_on == 'device'
             else eval_example(image, crops, config.image_size, transform))
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  image_shape = [config.image_size, config.image_size, 3]
  if augment_on == 'device':
    side = config.resize_size if crops == 'ten' else config.image_size
    image_padding = tf.zeros([side, side, 3], tf.uint8)
  else:
    image_padding = tf.zeros(([10] if crops == 'ten' else []) + image_shape, tf.float32)
  padding = {'image': image_padding,
             'label': tf.constant(0, tf.int32),
             'mask': tf.constant(0.0, tf.float32)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(tf_data_options())))
