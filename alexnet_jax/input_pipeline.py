"""tfds -> tf.data -> numpy batches with the paper's preprocessing (sections 2 and 4.1).

One code path serves `synthetic_shapes/*` and `imagenet2012`: both have a JPEG `image` and an
integer `label`. Every image is resized so its shorter side is `resize_size` (256) and its central
256 x 256 patch kept. Training takes a random 224 x 224 patch and flips it horizontally with
probability 1/2; evaluation takes the central 224 x 224 patch. The mean RGB value is subtracted
from pixels in [0, 255]; the paper divides by nothing, so `config.std_rgb` is empty by default
(configs for the 'he' init set it to get unit-variance inputs).

The training stream is a pure function of the config and the step. It is made of
`config.input_shards` logical shards (0: one per process), each an endless run of epochs; epoch e
of a shard is a permutation drawn from (config.seed, shard, e), and each example's crop, flip and
colour noise come from stateless TF ops seeded with (config.seed, shard, position in the shard).
Global batch i is the concatenation of every shard's batch i; process p reads only its own shards'
files. So `train_iterator(start_step=i)` continues exactly where an uninterrupted run was at step
i (a resume re-reads at most one epoch of one shard's JPEG bytes, without decoding them), and the
batches do not depend on how many processes read them.

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


def input_shards(config: ml_collections.ConfigDict, process_count: int) -> int:
  """How many logical shards the training stream is made of (`config.input_shards`, 0 = one per
  process). The global batch sequence depends on this number, never on the process count: a run
  on 2 processes and one on 1 process with the same `input_shards` see the same batches."""
  shards = int(config.get('input_shards', 0) or 0) or process_count
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
  position `start` on: epoch after epoch, each a fresh seeded permutation of the shard.

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

  @_no_autograph
  def decode(ex: dict) -> dict:
    return {'image': decode_and_resize(ex['image'], config.resize_size),
            'label': tf.cast(ex['label'], tf.int32)}

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


def train_iterator(config: ml_collections.ConfigDict, builder: tfds.core.DatasetBuilder, *,
                   start_step: int = 0, process_index: int = 0,
                   process_count: int = 1) -> Iterator[dict]:
  """Infinite batches {'image': f32 [B, S, S, 3], 'label': i32 [B]}: this process's rows of the
  global batches start_step, start_step + 1, ...

  The global batch i is the concatenation, over the logical shards, of each shard's examples
  i * b .. (i + 1) * b - 1 (b = batch_size / input_shards), each augmented with a seed that is a
  function of (config.seed, shard, position). So the stream is a pure function of the config and
  the step: a run resumed at step i sees exactly what an uninterrupted one does, whatever the
  number of processes. Process p reads only its own shards' files.
  """
  _hide_gpus_from_tf()
  num_shards = input_shards(config, process_count)
  if config.batch_size % num_shards:
    raise ValueError(f'config.batch_size={config.batch_size} cannot be split into '
                     f'{num_shards} input shards; use a multiple of {num_shards}.')
  shard_batch = config.batch_size // num_shards
  per_process = num_shards // process_count
  pca_std = float(config.get('pca_lighting_std', 0.0) or 0.0)

  def shard_batches(shard: int) -> tf.data.Dataset:
    base_seed = tf.constant([config.seed, shard], tf.int64)

    @_no_autograph
    def augment(position: tf.Tensor, ex: dict) -> dict:
      seed = tf.random.experimental.stateless_fold_in(base_seed, position)
      crop_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
      image = random_crop_and_flip(ex['image'], crop_seed, config.image_size)
      if pca_std > 0:
        image = pca_lighting(image, colour_seed, pca_std)
      return {'image': normalize(image, config.mean_rgb, config.get('std_rgb')),
              'label': ex['label']}

    ds = _shard_stream(config, builder, shard, num_shards, start_step * shard_batch)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(shard_batch, drop_remainder=True)

  shards = [shard_batches(process_index * per_process + i) for i in range(per_process)]
  if len(shards) == 1:
    ds = shards[0]
  else:
    ds = tf.data.Dataset.zip(tuple(shards)).map(
        lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]})
  ds = ds.prefetch(tf.data.AUTOTUNE)
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
