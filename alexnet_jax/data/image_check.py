"""Damaged JPEGs: every image a run reads is tried once, before training (`check_images`).

Every decode of the data layer passes try_recover_truncated=True: a JPEG cut short (an interrupted
copy) decodes as far as its data goes, and libjpeg fills the rest (each missing block repeats
the colour of the last one decoded). TF's `acceptable_fraction` is not used: with recovery TF
counts every row as read, so it rejects nothing; without recovery a crop window below the cut
fails whatever the fraction. A JPEG whose header cannot be read (not a JPEG, or cut inside its
header) cannot be decoded at all; the training stream being a pure function of the step, it
would stop every resumed run at the same step, so check_images refuses the dataset first.

The result of a split's check is saved beside the dataset's files, keyed by a fingerprint of
the files it read, so later runs do not check again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import stats
from alexnet_jax.data.records import hide_gpus_from_tf, indexed_records, no_autograph, tf_data_options
from alexnet_jax.data.refusals import (DatasetNotReadyError, IMAGENET_MANUAL_FILES, IMAGENET_MD5,
                                       current_command, imagenet_manual_dir, listing)
from alexnet_jax.data.spec import DataSpec
from alexnet_jax.runtime import paths

IMAGE_CHECK_VERSION = 1  # bump when the check changes: old cache files are then ignored
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
  return (tf.data.Dataset.from_tensors(x).map(no_autograph(fn)).ignore_errors()
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
  hide_gpus_from_tf()
  features = builder.info.features
  named = 'file_name' in features

  @no_autograph
  def check(index, record):
    ex = features.deserialize_example(record, decoders={'image': tfds.decode.SkipDecoding()})
    status, rows = _jpeg_status(ex['image'])
    return index, ex['file_name'] if named else tf.constant(''), status, rows

  num_images = builder.info.splits[split].num_examples
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
        f'{current_command()} to prepare them again.') from e
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
  return paths.join(os.fspath(builder.data_dir),
                    f'alexnet_jax_images-{stats.file_safe(split)}.json')


def load_or_scan_images(builder: tfds.core.DatasetBuilder, split: str
                        ) -> tuple[ImageCheck, str]:
  """The saved check of `split`, or a new one (scan_images) saved for later runs; and the path."""
  path = image_check_path(builder, split)
  fingerprint = _split_fingerprint(builder, split)
  try:
    saved = json.loads(paths.read_text(path))
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
    stats.write_atomically(path, lambda f: json.dump(record, f, indent=1))
  except OSError as e:
    logging.warning('Cannot save the image check in %s (%s); later runs will check again.',
                    path, e)
  return check, path


def check_images(spec: DataSpec, builder: tfds.core.DatasetBuilder
                 ) -> dict[str, ImageCheck]:
  """Every JPEG of the training and evaluation splits, tried once (saved beside the dataset).
  Logs the truncated ones (trained and evaluated on as far as their data goes) and refuses, with
  DatasetNotReadyError naming them and saying what to do, a dataset with JPEGs that cannot be
  decoded at all: before training, not at the step that would reach them."""
  checks = {split: load_or_scan_images(builder, split)
            for split in dict.fromkeys((spec.train_split, spec.eval_split))}
  for split, (check, path) in checks.items():
    if check.truncated:
      logging.warning(
          '%d of the %d images of %s %s are truncated JPEGs, decoded as far as their data goes '
          '(the rest of each filled with its last decoded colours): %s. All are listed in %s.',
          len(check.truncated), check.num_images, builder.name, split,
          listing([f'{n} ({r:.0%} of its rows)' for n, r in check.truncated], 10), path)
  bad = {split: (check, path) for split, (check, path) in checks.items() if check.undecodable}
  if bad:
    raise DatasetNotReadyError(_undecodable_message(spec, builder, bad))
  return {split: check for split, (check, _) in checks.items()}


def _undecodable_message(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                         bad: dict[str, tuple[ImageCheck, str]]) -> str:
  count = sum(len(check.undecodable) for check, _ in bad.values())
  names = '; '.join(f'{split}: {listing(list(check.undecodable), 10)}'
                    for split, (check, _) in bad.items())
  head = (f'{count} image{"s" if count > 1 else ""} of {builder.name} cannot be decoded as JPEG '
          f'(training or evaluation would stop at {"them" if count > 1 else "it"}): {names}. '
          f'All are listed in {", ".join(path for _, path in bad.values())}.')
  if builder.name != 'imagenet2012':
    return (f'{head}\nThe prepared files are damaged: delete {builder.data_dir} and re-run '
            f'{current_command()} to prepare them again.')
  manual_dir = imagenet_manual_dir(spec, builder)
  train_tar, val_tar = IMAGENET_MANUAL_FILES
  return (f'{head}\n'
          f'They come from a damaged archive in {manual_dir}: md5sum prints '
          f'{IMAGENET_MD5[train_tar]} for an intact {train_tar} and {IMAGENET_MD5[val_tar]} for '
          f'{val_tar}.\n'
          f'1. Download each archive whose md5sum differs again from https://image-net.org '
          f'into {manual_dir}.\n'
          f'2. Delete the dataset prepared from it: rm -r {builder.data_dir}\n'
          f'3. Re-run (it prepares the dataset again): {current_command()}')
