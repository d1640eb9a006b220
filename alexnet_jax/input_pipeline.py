"""tfds -> tf.data -> numpy batches with the paper's preprocessing (sections 2 and 4.1).

One code path serves `synthetic_shapes/*` and `imagenet2012`: both have a JPEG `image` and an
integer `label`. Every image is resized so its shorter side is `resize_size` (256) and its central
256 x 256 patch kept. Training takes a random 224 x 224 patch and flips it horizontally with
probability 1/2; evaluation takes the central 224 x 224 patch. The mean RGB value is subtracted
from pixels in [0, 255]; the paper divides by nothing, so `config.std_rgb` is empty by default
(configs for the 'he' init set it to get unit-variance inputs).

The random stream is a pure function of `config.seed`: every random choice uses stateless TF ops
seeded from (config.seed, process_index, example counter), and tf.data runs deterministically, so
two runs with the same seed see the same batches. A new train_iterator starts the stream from its
beginning: a run resumed at step N must skip N batches itself to continue the same stream.

Optional, not in the base config: `config.pca_lighting_std` > 0 adds the paper's PCA colour
augmentation (alpha ~ N(0, std), std 0.1 in the paper) to training images.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from typing import Any, Iterator, Sequence

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax import shapes_dataset  # noqa: F401  (registers `synthetic_shapes` with tfds)

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')

# Eigen-decomposition of the RGB covariance of ImageNet pixels in [0, 1] (PAPER.md, "Data").
_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
_PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009),
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


def prepare_dataset(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """Returns the builder of `config.dataset`, generating/preparing its files on first use."""
  builder = tfds.builder(config.dataset, data_dir=_data_dir(config))
  if builder.is_prepared():
    return builder
  if builder.name == 'imagenet2012':
    manual_dir = _check_imagenet_manual_files(config, builder)
    if importlib.util.find_spec('importlib_resources') is None:
      # tfds 4.9.10 imports it to prepare its own datasets but does not declare it (Python 3.11).
      raise DatasetNotReadyError(
          'Preparing imagenet2012 with tensorflow-datasets needs the `importlib_resources` '
          'package: pip install importlib_resources, then re-run: ' + _current_command())
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  else:
    builder.download_and_prepare()  # synthetic_shapes: generated locally, nothing downloaded
  return builder


def num_classes(builder: tfds.core.DatasetBuilder) -> int:
  """From the dataset's metadata, so the model's head can be checked against the data."""
  return builder.info.features['label'].num_classes


def num_examples(builder: tfds.core.DatasetBuilder, split: str) -> int:
  """Size of `split` (tfds split syntax, e.g. 'train' or 'validation[:1000]')."""
  return builder.info.splits[split].num_examples


# ---------------------------------------------------------------------------------------------
# Pure per-example functions (tests call them directly).


def decode_and_resize(jpeg_bytes: tf.Tensor, resize_size: int) -> tf.Tensor:
  """JPEG -> shorter side `resize_size` (bilinear, antialiased) -> central square, uint8."""
  image = tf.io.decode_jpeg(jpeg_bytes, channels=3, dct_method='INTEGER_ACCURATE')
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  short = tf.minimum(height, width)
  # Integer rounding of side * resize_size / short, so the shorter side is exactly resize_size.
  new_height = (height * resize_size + short // 2) // short
  new_width = (width * resize_size + short // 2) // short
  image = tf.image.resize(image, [new_height, new_width], method='bilinear', antialias=True)
  top = (new_height - resize_size) // 2
  left = (new_width - resize_size) // 2
  image = image[top:top + resize_size, left:left + resize_size]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(image, [resize_size, resize_size, 3])


def random_crop_and_flip(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
  """A uniformly random `image_size` square of `image`, mirrored left-right with probability 1/2.

  `seed` is a stateless seed (shape [2] int); equal seeds give equal crops.
  """
  seeds = tf.random.experimental.stateless_split(seed, num=3)
  shape = tf.shape(image)
  top = tf.random.stateless_uniform(
      [], seed=seeds[0], minval=0, maxval=shape[0] - image_size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform(
      [], seed=seeds[1], minval=0, maxval=shape[1] - image_size + 1, dtype=tf.int32)
  image = image[top:top + image_size, left:left + image_size]
  flip = tf.random.stateless_uniform([], seed=seeds[2]) < 0.5
  image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
  """The central `image_size` square (offsets rounded down, as for the 256 patch)."""
  shape = tf.shape(image)
  top = (shape[0] - image_size) // 2
  left = (shape[1] - image_size) // 2
  image = image[top:top + image_size, left:left + image_size]
  return tf.ensure_shape(image, [image_size, image_size, image.shape[-1]])


def normalize(image: tf.Tensor, mean_rgb: Sequence[float],
              std_rgb: Sequence[float] | None = None) -> tf.Tensor:
  """float32 pixels in [0, 255] minus the per-channel mean; the paper stops there
  (`std_rgb=None`). Dividing by a std is for the 'he' init of short runs (configs/tiny.py)."""
  image = tf.cast(image, tf.float32) - tf.constant(mean_rgb, tf.float32)
  if std_rgb:
    image = image / tf.constant(std_rgb, tf.float32)
  return image


def pca_lighting(image: tf.Tensor, seed: tf.Tensor, alpha_std: float) -> tf.Tensor:
  """The paper's colour augmentation: adds sum_i p_i * alpha_i * lambda_i to every pixel.

  `image` is float in [0, 255]; the eigenvalues are for [0, 1] pixels, hence the factor 255.
  """
  alpha = tf.random.stateless_normal([3], seed=seed, stddev=alpha_std)
  eigvec = tf.constant(_PCA_EIGVEC, tf.float32)
  eigval = tf.constant(_PCA_EIGVAL, tf.float32)
  rgb = tf.linalg.matvec(eigvec, alpha * eigval) * 255.0
  return tf.cast(image, tf.float32) + rgb


# ---------------------------------------------------------------------------------------------
# Iterators.


# The map functions are plain TF (no Python control flow on tensors); skipping AutoGraph avoids
# its "could not transform" warnings with the installed gast.
_no_autograph = tf.autograph.experimental.do_not_convert


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  # A private pool sized to this machine, so tf.data neither oversubscribes nor fights JAX.
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  options.threading.max_intra_op_parallelism = 1
  return options


def _per_process(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} must be divisible by process_count {process_count}.')
  return global_batch // process_count


def _read(builder: tfds.core.DatasetBuilder, split: Any, *, shuffle: bool,
          seed: int) -> tf.data.Dataset:
  """The encoded JPEG bytes and labels of `split` (decoding is ours, after shuffling/caching)."""
  read_config = tfds.ReadConfig(
      options=_options(),
      shuffle_seed=seed,
      try_autocache=False,  # caching is config.cache_decoded's decision
  )
  return builder.as_dataset(
      split=split,
      shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config,
  )


def train_iterator(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                   process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """Infinite batches {'image': f32 [B, S, S, 3], 'label': i32 [B]}, B = this process's share."""
  _hide_gpus_from_tf()
  batch_size = _per_process(config.batch_size, process_count, 'batch_size')
  split = tfds.split_for_jax_process(
      config.train_split, process_index=process_index, process_count=process_count,
      drop_remainder=True)
  ds = _read(builder, split, shuffle=True, seed=config.seed + process_index)

  @_no_autograph
  def decode(ex: dict) -> dict:
    return {'image': decode_and_resize(ex['image'], config.resize_size),
            'label': tf.cast(ex['label'], tf.int32)}

  if config.cache_decoded:
    # Decode once; later epochs reshuffle the cached 256 x 256 uint8 images.
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE).cache().repeat()
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
  else:
    # Shuffle the (smaller) encoded bytes, then decode.
    ds = ds.repeat()
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)

  pca_std = float(config.get('pca_lighting_std', 0.0) or 0.0)
  base_seed = tf.constant([config.seed, process_index], tf.int64)

  @_no_autograph
  def augment(counter: tf.Tensor, ex: dict) -> dict:
    # One stateless seed per (config.seed, process, example counter): a pure function of them.
    seed = tf.random.experimental.stateless_fold_in(base_seed, counter)
    crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    image = random_crop_and_flip(ex['image'], crop_seed, config.image_size)
    if pca_std > 0:
      image = pca_lighting(image, colour_seed, pca_std)
    return {'image': normalize(image, config.mean_rgb, config.get('std_rgb')), 'label': ex['label']}

  ds = ds.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_options())))


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
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict]:
  """One pass: {'image', 'label', 'mask'}; the last batch is padded (mask 0) to full size.

  Every process yields the same number of batches (SPMD steps stay in lock-step), and every
  eval image is in exactly one process's batches with mask 1.
  """
  _hide_gpus_from_tf()
  shards, batch_size, num_batches = _eval_shards(config, builder, process_count)
  shard = shards[process_index]
  num_padding = num_batches * batch_size - builder.info.splits[shard].num_examples
  ds = _read(builder, shard, shuffle=False, seed=config.seed)

  @_no_autograph
  def preprocess(ex: dict) -> dict:
    image = center_crop(decode_and_resize(ex['image'], config.resize_size), config.image_size)
    return {'image': normalize(image, config.mean_rgb, config.get('std_rgb')),
            'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  padding = {'image': tf.zeros([config.image_size, config.image_size, 3], tf.float32),
             'label': tf.constant(0, tf.int32),
             'mask': tf.constant(0.0, tf.float32)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(_options())))
