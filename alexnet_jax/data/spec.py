"""What the data layer reads of a run's config, as one frozen value: `DataSpec`.

`from_config` is the only function of the data layer that reads a `ConfigDict`; everything below
it (input.py, prepare.py, image_check.py, preprocess.py, stats.py, streams.py, resized_dataset.py)
is handed this spec, so a reader sees in one place which fields the input depends on, and a
caller that wants the input with one thing changed writes `dataclasses.replace(spec, ...)`
instead of copying a whole run config.

`DataSpec.problems()` is every refusal of those fields, one line each; core/config.check reports
them with the rest of the config's problems, all at once. `STREAM_FIELDS` says which fields the
training stream is a function of (streams.py builds that stream; checkpoints record these fields
and refuse a resume that changes one).

This module imports neither TensorFlow nor tensorflow-datasets: the config check and the tools
that never read a dataset import it.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from alexnet_jax.runtime import fields
from alexnet_jax.data import options

# The spec fields the training stream is a function of (with the step): a resume that changes one
# would continue a different stream than the checkpoint's run saw (core/checkpointing.py).
STREAM_FIELDS = ('dataset', 'train_split', 'seed', 'batch_size', 'input_shards', 'cache_decoded',
                 'shuffle_buffer', 'resized')
# Stream fields added after checkpoints were written without them: the value those runs had.
STREAM_FIELDS_BEFORE = {'resized': ''}
# augment_on once resolved for a platform (core/augment.resolve turns 'auto' into one of these).
RESOLVED_AUGMENT_ON = ('host', 'device')


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The dataset, how its images become the network's input, and how the streams are cut.
  Each field has the meaning and default of the config field of the same name
  (configs/default.py)."""
  dataset: str
  data_dir: str
  manual_dir: str
  train_split: str
  eval_split: str
  num_eval_examples: int
  resize_size: int
  image_size: int
  mean_subtraction: str
  mean_rgb: tuple[float, ...]
  std_rgb: tuple[float, ...]
  pca_lighting_std: float
  pca_eigen: str
  stats_num_images: int
  train_crop: str
  rrc_area_range: tuple[float, float]
  eval_crops: str
  final_eval_crops: str
  augment_on: str  # as configured ('auto' included); the streams take it resolved
  resized: str
  resized_jpeg_quality: int
  cache_decoded: bool
  shuffle_buffer: int
  input_shards: int
  seed: int
  batch_size: int
  eval_batch_size: int

  @property
  def needs_stats(self) -> bool:
    """Whether the preprocessing reads the training set's statistics (mean, PCA)."""
    return (self.mean_subtraction in ('channel', 'image')
            or (self.pca_lighting_std > 0 and self.pca_eigen == 'dataset'))

  def source(self) -> DataSpec:
    """This spec reading the source dataset itself (`resized` off)."""
    return dataclasses.replace(self, resized='')

  def stream_position(self, step: int, input_shards: int) -> dict:
    """Where the training stream is: the next global batch is `step`, of the stream these
    fields define (streams.train_iterator(start_step=step) continues it). `input_shards`: the
    number the stream is made of (streams.input_shards; the spec may say 0)."""
    plain = {field: fields.plain(getattr(self, field)) for field in STREAM_FIELDS}
    return {**plain, 'input_shards': int(input_shards), 'step': int(step)}

  def problems(self) -> list[str]:
    """Every problem of these fields, one line each naming the field and the fix (empty: fine).
    Assumes each field holds a value of its kind and one of its choices (core/config checks that
    first)."""
    problems = []
    if self.image_size > self.resize_size:
      problems.append(f'config.image_size={self.image_size} is larger than '
                      f'config.resize_size={self.resize_size}; the crop must fit in the image.')
    if not self.pca_lighting_std >= 0:
      problems.append(f'config.pca_lighting_std={self.pca_lighting_std} must be >= 0 '
                      '(0 turns the colour noise off; the paper uses 0.1).')
    if self.train_crop == 'random_resized_crop':
      if self.mean_subtraction == 'image':
        problems.append(
            "config.train_crop='random_resized_crop' resizes a random box of the photograph, "
            "which has no place in the mean image; use --config.mean_subtraction=channel (or "
            "'constant') with it.")
      low, high = self.rrc_area_range
      if not 0 < low <= high <= 1:
        problems.append(f'config.rrc_area_range={tuple(self.rrc_area_range)} must satisfy '
                        '0 < low <= high <= 1 (fractions of the image area).')
    problems += augment_on_problems(self, self.augment_on)
    if self.resized and self.train_crop == 'random_resized_crop':
      problems.append(
          f"config.resized={self.resized!r} keeps only the central {self.resize_size} square, "
          "but train_crop='random_resized_crop' samples boxes of the whole photograph; use "
          "--config.train_crop=random_crop, or --config.resized='' to read the source.")
    if not 1 <= self.resized_jpeg_quality <= 100:
      problems.append(f'config.resized_jpeg_quality={self.resized_jpeg_quality} must be in '
                      '[1, 100] (90: the default).')
    if self.input_shards < 0:
      problems.append(f'config.input_shards={self.input_shards}: use 0 (one per process) or '
                      'a positive number of shards.')
    return problems


def shard_problems(spec: DataSpec, groups: int) -> list[str]:
  """What stops the training stream being cut for `groups` feeding groups (processes that
  read different rows): its input shards must divide among them and split the batch."""
  shards = spec.input_shards or groups
  if shards % groups or spec.batch_size % shards:
    return [f'config.input_shards={spec.input_shards} does not fit the {groups} input '
            f'group(s) (processes feeding different rows) and config.batch_size='
            f'{spec.batch_size}: use 0 (one per group) or a multiple of {groups} that divides '
            'the batch.']
  return []


def augment_on_problems(spec: DataSpec, augment_on: str) -> list[str]:
  """What `augment_on` ('device', configured or resolved) cannot do with this spec."""
  problems = []
  if augment_on == 'device':
    if spec.train_crop != 'random_crop':
      problems.append(
          f"config.augment_on='device' ships the paper's uint8 random crop, but "
          f"train_crop={spec.train_crop!r} resizes into float pixels on the host; use "
          "--config.augment_on=host (or 'auto') with it.")
    if spec.resize_size == spec.image_size and 'ten' in (spec.eval_crops, spec.final_eval_crops):
      problems.append(
          f"config.augment_on='device' cuts the ten patches on the device from the "
          f'resize_size square, which cannot be told from a centre crop when '
          f'resize_size = image_size = {spec.image_size}; use --config.augment_on=host.')
  return problems


def from_config(config: ml_collections.ConfigDict) -> DataSpec:
  """The data layer's view of a run config: the one place the data layer reads one."""
  values = {f.name: config[f.name] for f in dataclasses.fields(DataSpec)}
  for name in ('mean_rgb', 'std_rgb', 'rrc_area_range'):
    values[name] = tuple(float(v) for v in values[name])
  return DataSpec(**values)


# The choices each field may take, for core/config's check of choices.
CHOICES = {'mean_subtraction': options.MEAN_SUBTRACTIONS,
           'pca_eigen': options.PCA_EIGENS,
           'train_crop': options.TRAIN_CROPS,
           'eval_crops': options.EVAL_CROPS,
           'final_eval_crops': options.EVAL_CROPS,
           'resized': ('',) + options.STORAGES}
