"""`resized_squares`: a tfds dataset of another one's images already cut to the paper's square.

The paper trains on 256 x 256 images (shorter side rescaled to 256, the central square kept).
The normal path decodes every full-size JPEG and resamples it at every use; most of a training
image's CPU time goes there (docs/performance.md, "Input pipeline per core"). With
`config.resized` set, the squares are written ONCE, by the pipeline's own
`records.decode_and_resize`, into a tfds dataset beside the source, and training and
evaluation read them from there. Two storages:
- 'jpeg': the square re-encoded as JPEG at `config.resized_jpeg_quality` (90, 4:2:0 chroma:
  libjpeg-turbo's defaults as TF calls it). A few tens of KB per image: ImageNet's training set
  fits in a fraction of the disk the original tfds files take. Decoding a square is a fraction of
  decoding and resampling a full-size photograph; the pixels differ from the normal path's by
  JPEG's rounding (measured in
  docs/measurements/2026-11-26-resized-squares.md).
- 'raw': the square's uint8 pixels as they are (196,608 bytes at 256). The normal path's pixels
  exactly, with no decoding at all; the disk (about 250 GB for ImageNet's training set) and the
  read bandwidth are the price.

What is kept: every example of the splits the config reads (the base names of `train_split` and
`eval_split`), its label (the source's ClassLabel, names included) and its file name (the
source's `file_name` where it has one, ImageNet's; else `split[index]`, which tfds's slicing
reads back from the source). The example key is the source index and the file count is fixed by
the split sizes (`download_config`), so the order examples are read in, and with it the training
stream, is a function of the source only: 'jpeg' and 'raw' are read in the same order, and two
runs that differ only in the storage see the same images at the same steps.

Damaged JPEGs: the source is checked (`image_check.check_images`) before anything is written,
so an undecodable image stops the writing with the usual message, and a truncated one is written
as far as its data goes, as the normal path decodes it. The squares themselves are encoded here,
from decoded pixels, so the check is not needed on them (tfrecord's checksums catch a file damaged
on disk).

The builder's config is made from the data spec (`squares_builder`): one per source, size and
storage, named e.g. `imagenet2012-5.1.0-r256-jpeg90`, all beside each other in `<data_dir>/resized_squares/`.
Once written, the source's own files are no longer read (they may be deleted).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import shard_utils

from alexnet_jax.data import records
from alexnet_jax.data.options import STORAGES  # noqa: F401  (defined once, TF-free)
from alexnet_jax.data.spec import DataSpec

NAME = 'resized_squares'


@dataclasses.dataclass(eq=False)
class ResizedConfig(tfds.core.BuilderConfig):
  """Which dataset's images, at which size, stored how."""

  source: str = ''  # a tfds name, 'imagenet2012' or 'synthetic_shapes/default'
  source_data_dir: str = ''  # '' for tfds's default
  size: int = 256
  storage: str = 'jpeg'
  quality: int = 90
  splits: tuple[str, ...] = ('train', 'validation')
  # The source's builder where tfds cannot make it from its name (a config made at run time,
  # like bench_input's); None: tfds.builder(source).
  source_builder: Any = None


def _already_registered(name: str) -> bool:
  return name in getattr(tfds.core.registered, '_DATASET_REGISTRY', {})


def source_builder(cfg: ResizedConfig) -> tfds.core.DatasetBuilder:
  if cfg.source_builder is not None:
    return cfg.source_builder
  return tfds.builder(cfg.source, data_dir=cfg.source_data_dir or None)


class ResizedSquares(tfds.core.GeneratorBasedBuilder,
                     skip_registration=_already_registered(NAME)):
  """Another dataset's images as size x size squares (see the module's docstring)."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  BUILDER_CONFIGS = [ResizedConfig(name='default')]  # `builder` makes the real ones
  code_path = epath.Path(__file__)  # as in shapes_dataset.py: no importlib_resources

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.storage == 'jpeg':
      image = tfds.features.Image(shape=(cfg.size, cfg.size, 3), encoding_format='jpeg')
    else:
      image = tfds.features.Tensor(shape=(cfg.size, cfg.size, 3), dtype=np.uint8,
                                   encoding=tfds.features.Encoding.BYTES)
    labels = source_builder(cfg).info.features['label']
    return self.dataset_info_from_configs(
        description=f'{cfg.source} resized (shorter side {cfg.size}, central square), stored '
                    f'as {describe(cfg.storage, cfg.quality)}.',
        features=tfds.features.FeaturesDict({
            'image': image,
            'label': tfds.features.ClassLabel(names=labels.names),
            'file_name': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # read from the prepared source
    source = source_builder(self.builder_config)
    return {split: self._generate_examples(source, split) for split in self.builder_config.splits}

  def _generate_examples(self, source: tfds.core.DatasetBuilder,
                         split: str) -> Iterator[tuple[int, dict]]:
    """On every core: the source's records read in parallel in any order, each decoded,
    resized and encoded in a parallel tf.data map; the key (the source index) fixes the order
    tfds writes them in."""
    cfg = self.builder_config
    features = source.info.features
    named = 'file_name' in features

    @tf.autograph.experimental.do_not_convert
    def square(index, record):
      ex = features.deserialize_example(record, decoders={'image': tfds.decode.SkipDecoding()})
      image = records.decode_and_resize(ex['image'], cfg.size)
      if cfg.storage == 'jpeg':
        image = encode_jpeg(image, cfg.quality)
      name = (ex['file_name'] if named
              else tf.strings.join([split, '[', tf.strings.as_string(index), ']']))
      return index, image, ex['label'], name

    ds = records.indexed_records(source, split).map(
        square, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    ds = ds.prefetch(64).with_options(records.tf_data_options())
    for index, image, label, name in tfds.as_numpy(ds):
      yield int(index), {'image': image, 'label': int(label), 'file_name': name.decode()}


def download_config(squares: tfds.core.DatasetBuilder) -> tfds.download.DownloadConfig:
  """How the squares are written: in as many files as tfds would pick for the raw pixels of the
  largest split (at most the smallest split's size), whatever the storage. tfds reads a split's
  files interleaved, so the order examples are read in depends on the file count, which tfds
  would otherwise derive from the bytes written: JPEG and raw squares would be read in different
  orders, and the training stream would depend on the JPEG coder."""
  cfg = squares.builder_config
  source = source_builder(cfg)
  counts = [source.info.splits[split].num_examples for split in cfg.splits]
  raw_bytes = cfg.size * cfg.size * 3 + 100  # the pixels and the record's other features
  shards = shard_utils.ShardConfig.calculate_number_shards(max(counts) * raw_bytes, max(counts))
  return tfds.download.DownloadConfig(num_shards=max(1, min(shards, min(counts))))


def describe(storage: str, quality: int) -> str:
  return f'JPEG quality {quality}' if storage == 'jpeg' else 'raw uint8 pixels'


def encode_jpeg(image: tf.Tensor, quality: int) -> tf.Tensor:
  """A uint8 square as the 'jpeg' storage holds it (libjpeg-turbo, 4:2:0 chroma, as TF's
  defaults; bench_input measures the same function)."""
  return tf.io.encode_jpeg(image, quality=quality, format='rgb')


def decode_square(image: tf.Tensor, storage: str, size: int) -> tf.Tensor:
  """A stored square (the record's bytes, as `SkipDecoding` gives them) -> uint8 [size, size, 3],
  with the decoder settings of the normal path (INTEGER_ACCURATE IDCT)."""
  if storage == 'jpeg':
    square = tf.io.decode_jpeg(image, channels=3, dct_method='INTEGER_ACCURATE')
  else:
    square = tf.reshape(tf.io.decode_raw(image, tf.uint8), [size, size, 3])
  return tf.ensure_shape(square, [size, size, 3])


def _base_split(split: str) -> str:
  """'train[:500]' -> 'train'; tfds's split syntax keeps the name in front."""
  match = re.match(r'\s*(\w+)', split)
  if not match:
    raise ValueError(f'Cannot read a split name from {split!r}.')
  return match.group(1)


def squares_builder(spec: DataSpec,
                    source: tfds.core.DatasetBuilder | None = None) -> tfds.core.DatasetBuilder:
  """The resized dataset `spec` trains from (spec.resized: 'jpeg' or 'raw'), in its data
  dir; writes nothing. Its name says the source (with its version), the size and the storage.
  `source`: spec.dataset's builder, where tfds cannot make it from the name."""
  data_dir = os.path.expanduser(spec.data_dir) if spec.data_dir else None
  given = source
  source = source or tfds.builder(spec.dataset, data_dir=data_dir)
  storage, size, quality = spec.resized, int(spec.resize_size), int(spec.resized_jpeg_quality)
  name = (f'{source.info.full_name.replace("/", "-")}-r{size}-'
          f'{f"jpeg{quality}" if storage == "jpeg" else storage}')
  cfg = ResizedConfig(
      name=name, description=f'{spec.dataset} at {size} x {size}, {describe(storage, quality)}.',
      source=spec.dataset, source_data_dir=data_dir or '', size=size, storage=storage,
      quality=quality,
      splits=tuple(dict.fromkeys(_base_split(s) for s in (spec.train_split, spec.eval_split))),
      source_builder=given)
  return ResizedSquares(config=cfg, data_dir=data_dir)


def missing_splits(squares: tfds.core.DatasetBuilder) -> list[str]:
  """Splits the config reads that a prepared resized dataset does not hold (written for a config
  that read others)."""
  return [s for s in squares.builder_config.splits if s not in squares.info.splits]
