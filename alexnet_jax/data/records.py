"""Reading a tfds dataset's records and decoding its JPEGs: what the input pipeline and the
writer of the resized squares (resized_dataset.py) share, in a module below both so that neither
imports the other."""

import os
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds


def decode_and_resize(jpeg_bytes: tf.Tensor, resize_size: int) -> tf.Tensor:
  """JPEG -> shorter side `resize_size` (bilinear, antialiased) -> central square, uint8.

  Decodes only the part of the JPEG the central square needs (`decode_and_crop_jpeg`, plus a
  margin for the resampling kernel) and resamples it with the scale and offset of resizing the
  whole image: the same pixels as resizing everything then cropping (up to float rounding, 1 level
  on about 1 pixel in 10^4), without decoding the discarded sides of a landscape photograph.
  A truncated JPEG is decoded as far as its data goes, the rest filled (see check_images).
  """
  shape = tf.image.extract_jpeg_shape(jpeg_bytes)
  size = shape[:2]  # [height, width]
  short = tf.reduce_min(size)
  # Integer rounding of side * resize_size / short, so the shorter side is exactly resize_size.
  new_size = (size * resize_size + short // 2) // short
  scale = tf.cast(new_size, tf.float32) / tf.cast(size, tf.float32)
  start = (new_size - resize_size) // 2  # the central square, in resized coordinates
  # The source window: the square's footprint plus the triangle kernel's reach (1/scale source
  # pixels when shrinking) and a few pixels against JPEG block edges.
  margin = tf.cast(tf.math.ceil(1.0 / tf.minimum(scale, 1.0)), tf.int32) + 8
  low = tf.maximum(
      tf.cast(tf.math.floor(tf.cast(start, tf.float32) / scale), tf.int32) - margin, 0)
  high = tf.minimum(
      tf.cast(tf.math.ceil(tf.cast(start + resize_size, tf.float32) / scale), tf.int32) + margin,
      size)
  window = tf.image.decode_and_crop_jpeg(jpeg_bytes, tf.concat([low, high - low], 0), channels=3,
                                         dct_method='INTEGER_ACCURATE', try_recover_truncated=True)
  # What tf.image.resize(..., 'bilinear', antialias=True) runs, shifted to the window.
  image = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(window, tf.float32)[None], size=[resize_size, resize_size], scale=scale,
      translation=tf.cast(low, tf.float32) * scale - tf.cast(start, tf.float32),
      kernel_type='triangle', antialias=True)[0]
  image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
  return tf.ensure_shape(image, [resize_size, resize_size, 3])


def indexed_records(builder: tfds.core.DatasetBuilder, split: str) -> tf.data.Dataset:
  """(index in `split`, serialized record) of every example of `split`, read in parallel in no
  particular order: the index says which one it is."""
  instructions = builder.info.splits[split].file_instructions
  offsets = np.cumsum([0] + [i.take for i in instructions])[:-1]
  files = tf.data.Dataset.from_tensor_slices((
      [i.filename for i in instructions],
      tf.constant([i.skip for i in instructions], tf.int64),
      tf.constant([i.take for i in instructions], tf.int64),
      tf.constant(offsets, tf.int64)))
  return files.interleave(
      lambda f, skip, take, offset: tf.data.Dataset.zip(
          tf.data.Dataset.range(offset, offset + take),
          tf.data.TFRecordDataset(f).skip(skip).take(take)),
      cycle_length=min(16, len(instructions)), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=False)


def tf_data_options() -> tf.data.Options:
  """Deterministic tf.data with a private pool sized to this machine."""
  options = tf.data.Options()
  options.deterministic = True
  # A private pool sized to this machine, so tf.data neither oversubscribes nor fights JAX.
  options.threading.private_threadpool_size = max(1, os.cpu_count() or 1)
  options.threading.max_intra_op_parallelism = 1
  return options


# The map functions are plain TF (no Python control flow on tensors); skipping AutoGraph avoids
# its "could not transform" warnings with the installed gast.
no_autograph = tf.autograph.experimental.do_not_convert


def hide_gpus_from_tf() -> None:
  """JAX owns the accelerators; TF (used for input only) must not allocate GPU memory."""
  try:
    tf.config.set_visible_devices([], 'GPU')
  except (RuntimeError, ValueError):
    pass  # TF's runtime is already initialised (then it is too late, and was done before)


hide_gpus_from_tf()  # at import: it only works before TF creates its devices


def read_encoded(builder: tfds.core.DatasetBuilder, split: Any, *, shuffle: bool,
                 seed: int) -> tf.data.Dataset:
  """The encoded JPEG bytes and labels of `split` (decoding is ours, after shuffling/caching)."""
  read_config = tfds.ReadConfig(
      options=tf_data_options(),
      shuffle_seed=seed,
      try_autocache=False,  # caching is spec.cache_decoded's decision
  )
  return builder.as_dataset(
      split=split,
      shuffle_files=shuffle,
      decoders={'image': tfds.decode.SkipDecoding()},
      read_config=read_config,
  )
