"""The data layer's one entry point: `pipeline.open(spec)` -> `Input`.

A run (and every tool, `dataset_stats` and `resize_dataset`) reaches its dataset through one
`Input`, built once:

    data = pipeline.open(spec_lib.from_config(config))   # refuses bad input; writes nothing
    data.prepare()          # files, the image check, the statistics (loaded once), the transform
    data.train_batches(start_step=...)     data.eval_batches(crops='ten')

`open` only reads metadata, so a refusal (DatasetNotReadyError: the tars to fetch, a dataset
written for other splits, ...) comes before anything is written or compiled. `prepare` generates
or converts the dataset on first use, tries every JPEG once, and computes or loads the training
set's statistics: after it, the object holds the builder, the statistics and the pixel transform,
and every stream it gives uses those, so nothing is read from disk twice.

The modules below it, each handed plain values: prepare.py (opening and preparing),
image_check.py (damaged JPEGs), preprocess.py (the per-example functions), stats.py (the mean
image and RGB PCA), streams.py (the training and evaluation streams), resized_dataset.py (the
squares written once), records.py (reading records, decoding JPEGs).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import prepare as prepare_lib
from alexnet_jax.data import preprocess
from alexnet_jax.data import stats as stats_lib
from alexnet_jax.data import streams
from alexnet_jax.data.spec import DataSpec


# The spec fields Input.replace may change: they cut the streams differently, nothing more.
_SHARED_FIELDS = {'eval_split', 'num_eval_examples', 'eval_batch_size', 'batch_size', 'eval_crops',
                  'final_eval_crops', 'augment_on', 'input_shards'}


class Input:
  """A dataset opened for one spec. Metadata (classes, example counts) is available at once;
  the batches and the device constants after `prepare` (or `use_cached_stats`)."""

  def __init__(self, spec: DataSpec, builder: tfds.core.DatasetBuilder):
    self.spec = spec
    self.builder = builder
    self.train_stats: stats_lib.DatasetStats | None = None
    self.stats_path: str | None = None  # the file train_stats was read from or saved in
    self.transform: preprocess.PixelTransform | None = None

  # --- Metadata: from the builder, no reading. ---

  @property
  def num_classes(self) -> int:
    """From the dataset's metadata, so the model's head can be checked against the data."""
    return self.builder.info.features['label'].num_classes

  def num_examples(self, split: str | None = None) -> int:
    """Size of `split` (tfds split syntax, e.g. 'train' or 'validation[:1000]'; default the
    training split)."""
    return self.builder.info.splits[split or self.spec.train_split].num_examples

  @property
  def steps_per_epoch(self) -> int:
    """Global batches in one pass over the training split (at least 1)."""
    return max(self.num_examples() // self.spec.batch_size, 1)

  def input_shards(self, process_count: int) -> int:
    """The logical shards the training stream is made of, for `process_count` feeding
    processes (streams.input_shards)."""
    return streams.input_shards(self.spec, process_count)

  # --- Preparation. ---

  def prepare(self, *, reopen: bool = False, with_stats: bool | None = None) -> Input:
    """Generates or converts the dataset on first use, checks every JPEG once, and loads (or
    computes and caches) the training-set statistics; returns self. `with_stats`: whether to
    load them (default: where the spec's preprocessing needs them). `reopen`: open the builder
    again first (another process prepared the files since it was opened)."""
    if reopen:
      self.builder = prepare_lib.open_dataset(self.spec)
    self.builder = prepare_lib.prepare_dataset(self.spec, self.builder)
    wanted = self.spec.needs_stats if with_stats is None else with_stats
    if wanted and self.train_stats is None:
      self.train_stats, self.stats_path = stats_lib.load_or_compute(self.spec, self.builder)
    self.transform = pixel_transform(self.spec, self.train_stats)
    return self

  def use_cached_stats(self) -> Input:
    """For reading a dataset a training prepared, without preparing anything: the statistics
    from the cache beside it (DatasetNotReadyError if they are not there); returns self."""
    if self.spec.needs_stats and self.train_stats is None:
      self.train_stats = stats_lib.load_cached(self.spec, self.builder)
    self.transform = pixel_transform(self.spec, self.train_stats)
    return self

  def replace(self, **changes) -> Input:
    """This input with other values of spec fields that change neither the dataset nor its
    statistics (the evaluation split and size, batch sizes, crops, shards): the same builder,
    statistics and transform, nothing read again."""
    fixed = set(changes) - _SHARED_FIELDS
    if fixed:
      raise ValueError(f'{", ".join(sorted(fixed))} change the dataset or its statistics: open '
                       'another Input (pipeline.open) for them.')
    other = Input(dataclasses.replace(self.spec, **changes), self.builder)
    other.train_stats, other.transform = self.train_stats, self.transform
    return other

  def _prepared(self) -> preprocess.PixelTransform:
    if self.transform is None:
      raise RuntimeError('Input.prepare() (or use_cached_stats()) first: the batches need the '
                         "training set's statistics.")
    return self.transform

  # --- Streams. ---

  def train_dataset(self, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1, augment_on: str = 'host') -> tf.data.Dataset:
    """This process's rows of the global training batches start_step, start_step + 1, ...
    (streams.train_dataset), as a tf.data.Dataset."""
    return streams.train_dataset(self.spec, self.builder, self._prepared(),
                                 start_step=start_step, process_index=process_index,
                                 process_count=process_count, augment_on=augment_on)

  def train_batches(self, *, start_step: int = 0, process_index: int = 0,
                    process_count: int = 1, augment_on: str = 'host') -> Iterator[dict]:
    """train_dataset's batches as numpy arrays."""
    return iter(tfds.as_numpy(self.train_dataset(
        start_step=start_step, process_index=process_index, process_count=process_count,
        augment_on=augment_on)))

  def eval_batches(self, *, crops: str | None = None, process_index: int = 0,
                   process_count: int = 1, augment_on: str = 'host') -> Iterator[dict]:
    """One pass over the evaluation split, centre or ten crops (streams.eval_iterator)."""
    return streams.eval_iterator(self.spec, self.builder, self._prepared(),
                                 process_index=process_index, process_count=process_count,
                                 crops=crops, augment_on=augment_on)

  def eval_num_batches(self, process_count: int = 1) -> int:
    """How many batches eval_batches yields (the same on every process)."""
    return streams.eval_num_batches(self.spec, self.builder, process_count=process_count)

  def device_constants(self) -> dict[str, np.ndarray]:
    """What core/augment.py subtracts and divides by with augment_on='device', shipped once per
    run (preprocess.device_constants)."""
    return preprocess.device_constants(self._prepared())


def pixel_transform(spec: DataSpec, train_stats: stats_lib.DatasetStats | None
                    ) -> preprocess.PixelTransform:
  """The spec's mean subtraction and colour noise. `train_stats`: the training set's statistics
  (stats.py), where the spec needs them (spec.needs_stats), else None."""
  if spec.needs_stats and train_stats is None:
    raise ValueError(f'mean_subtraction={spec.mean_subtraction!r} with pca_eigen='
                     f'{spec.pca_eigen!r} needs the training-set statistics.')
  mean = {'constant': lambda: np.asarray(spec.mean_rgb, np.float32),
          'channel': lambda: train_stats.mean_rgb,
          'image': lambda: train_stats.mean_image}[spec.mean_subtraction]()
  dataset_eigen = spec.pca_eigen == 'dataset' and train_stats is not None
  return preprocess.PixelTransform(
      mean=mean, std=np.asarray(spec.std_rgb, np.float32) if spec.std_rgb else None,
      pca_std=float(spec.pca_lighting_std),
      eigval=train_stats.eigval if dataset_eigen else np.asarray(preprocess.PCA_EIGVAL, np.float32),
      eigvec=train_stats.eigvec if dataset_eigen else np.asarray(preprocess.PCA_EIGVEC, np.float32))


def open(spec: DataSpec) -> Input:  # pylint: disable=redefined-builtin
  """The dataset `spec` names, opened: its metadata, or DatasetNotReadyError saying what to do.
  Writes nothing."""
  return Input(spec, prepare_lib.open_dataset(spec))
