"""The training and evaluation streams: tfds records -> tf.data -> numpy batches.

The training stream is a pure function of the spec and the step. It is made of
`spec.input_shards` logical shards (0: one per process), each an endless run of epochs; epoch e
of a shard is a permutation drawn from (spec.seed, shard, e), and each example's crop, flip and
colour noise come from stateless TF ops seeded with (spec.seed, shard, position in the shard).
Global batch i is the concatenation of every shard's batch i; process p reads only its own
shards' files. So `train_iterator(start_step=i)` continues exactly where an uninterrupted run was
at step i (a resume re-reads at most one epoch of one shard's JPEG bytes, without decoding them),
and the batches do not depend on how many processes read them. The spec fields the stream is a
function of are spec.STREAM_FIELDS; checkpoints record them.

The evaluation stream is one pass over the evaluation split, padded (mask 0) to whole batches,
split evenly over the processes that feed different rows.
"""

from __future__ import annotations

from typing import Any, Iterator

import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import options
from alexnet_jax.data import preprocess
from alexnet_jax.data.records import hide_gpus_from_tf, no_autograph, read_encoded, tf_data_options
from alexnet_jax.data.spec import RESOLVED_AUGMENT_ON, DataSpec, augment_on_problems, shard_problems

def _per_process(global_batch: int, process_count: int, what: str) -> int:
  if global_batch % process_count:
    raise ValueError(f'{what} {global_batch} must be divisible by process_count {process_count}.')
  return global_batch // process_count


def input_shards(spec: DataSpec, process_count: int) -> int:
  """How many logical shards the training stream is made of (`spec.input_shards`, 0 = one per
  process). The global batch sequence depends on this number, never on the process count: a run
  on 2 processes and one on 1 process with the same `input_shards` see the same batches."""
  problems = shard_problems(spec, process_count)
  if problems:
    raise ValueError(problems[0])
  return spec.input_shards or process_count


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
  parse = no_autograph(lambda record: features.deserialize_example(
      record, decoders={'image': tfds.decode.SkipDecoding()}))
  return records.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _shard_stream(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                  shard: int, num_shards: int, start: int) -> tf.data.Dataset:
  """Logical shard `shard`'s infinite stream of (position, decoded 256 x 256 image, label) from
  position `start` on: epoch after epoch, each a fresh seeded permutation of the shard. (For the
  random-resized crop the image stays JPEG bytes: `train_example` decodes its box.)

  Epoch e's order is a function of (spec.seed, shard, e) only, so resuming at position p
  starts at epoch p // n and skips p % n records (read, not decoded) of it.
  """
  split = tfds.split_for_jax_process(spec.train_split, process_index=shard,
                                     process_count=num_shards, drop_remainder=True)
  size = builder.info.splits[split].num_examples
  if size == 0:
    raise ValueError(f'{spec.train_split} of {spec.dataset} has too few examples for '
                     f'{num_shards} input shards.')
  first_epoch, offset = divmod(start, size)

  def epoch_seed(epoch):
    return (tf.constant(spec.seed, tf.int64) * 1_000_003 + shard) * 1_000_003 + epoch

  square = preprocess.square_decoder(spec)

  @no_autograph
  def decode(ex: dict) -> dict:
    # The random-resized crop decodes its own box from the JPEG bytes in `augment`.
    image = (ex['image'] if spec.train_crop == 'random_resized_crop'
             else square(ex['image']))
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32)}

  if spec.cache_decoded:
    # Decode once (file order) and keep in memory; every epoch is an exact permutation of it.
    decoded = _records(builder, split, None).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    decoded = decoded.cache()
    epochs = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        lambda e: decoded.shuffle(size, seed=epoch_seed(e)))
    epochs = epochs.skip(offset)
  else:
    # Shuffle the (smaller) encoded bytes in a buffer, skip without decoding, then decode.
    epochs = tf.data.Dataset.range(first_epoch, _FOREVER).flat_map(
        lambda e: _records(builder, split, epoch_seed(e)).shuffle(spec.shuffle_buffer,
                                                                  seed=epoch_seed(e)))
    epochs = epochs.skip(offset).map(decode, num_parallel_calls=tf.data.AUTOTUNE)
  positions = tf.data.Dataset.range(start, _FOREVER)
  return tf.data.Dataset.zip(positions, epochs)


_FOREVER = 2**62


def _check_augment_on(augment_on: str, spec: DataSpec) -> None:
  """The streams take augment_on resolved; spec.problems() refuses a config's 'device' that
  cannot work, this the same of a caller's."""
  if augment_on not in RESOLVED_AUGMENT_ON:
    raise ValueError(f'augment_on={augment_on!r}: use one of {", ".join(RESOLVED_AUGMENT_ON)} '
                     "(resolve 'auto' with core/augment.resolve).")
  problems = augment_on_problems(spec, augment_on)  # the config check's own rule
  if problems:
    raise ValueError(problems[0])


def train_iterator(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                   transform: preprocess.PixelTransform, *, start_step: int = 0,
                   process_index: int = 0, process_count: int = 1,
                   augment_on: str = 'host') -> Iterator[dict]:
  """train_dataset's batches as numpy arrays."""
  return iter(tfds.as_numpy(train_dataset(
      spec, builder, transform, start_step=start_step, process_index=process_index,
      process_count=process_count, augment_on=augment_on)))


def train_dataset(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                  transform: preprocess.PixelTransform, *, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  augment_on: str = 'host') -> tf.data.Dataset:
  """Infinite batches {'image': f32 [B, S, S, 3], 'label': i32 [B]}: this process's rows of the
  global batches start_step, start_step + 1, ... With `augment_on` 'device' (resolved: see
  core/augment.resolve) the image is the uint8 crop, with the draws core/augment.py needs
  ('crop', 'flip', 'colour'; see train_example_for_device).

  The global batch i is the concatenation, over the logical shards, of each shard's examples
  i * b .. (i + 1) * b - 1 (b = batch_size / input_shards), each augmented with a seed that is a
  function of (spec.seed, shard, position). So the stream is a pure function of the spec and
  the step: a run resumed at step i sees exactly what an uninterrupted one does, whatever the
  number of processes. Process p reads only its own shards' files.
  """
  hide_gpus_from_tf()
  _check_augment_on(augment_on, spec)
  num_shards = input_shards(spec, process_count)
  shard_batch = spec.batch_size // num_shards
  per_process = num_shards // process_count

  def shard_batches(shard: int) -> tf.data.Dataset:
    base_seed = tf.constant([spec.seed, shard], tf.int64)

    @no_autograph
    def augment(position: tf.Tensor, ex: dict) -> dict:
      seed = tf.random.experimental.stateless_fold_in(base_seed, position)
      if augment_on == 'device':
        return {**preprocess.train_example_for_device(ex['image'], seed, spec, transform),
                'label': ex['label']}
      return {'image': preprocess.train_example(ex['image'], seed, spec, transform),
              'label': ex['label']}

    ds = _shard_stream(spec, builder, shard, num_shards, start_step * shard_batch)
    ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(shard_batch, drop_remainder=True)

  shards = [shard_batches(process_index * per_process + i) for i in range(per_process)]
  if len(shards) == 1:
    ds = shards[0]
  else:
    ds = tf.data.Dataset.zip(tuple(shards)).map(
        lambda *parts: {k: tf.concat([p[k] for p in parts], axis=0) for k in parts[0]})
  return ds.prefetch(tf.data.AUTOTUNE).with_options(tf_data_options())


def _eval_shards(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                 process_count: int) -> tuple[list[Any], int, int]:
  """Each process's part of the eval split, the per-process batch size and the batch count."""
  batch_size = _per_process(spec.eval_batch_size, process_count, 'eval_batch_size')
  split = spec.eval_split
  if 0 < spec.num_eval_examples < builder.info.splits[split].num_examples:
    split = f'{split}[:{spec.num_eval_examples}]'
  shards = [tfds.split_for_jax_process(split, process_index=i, process_count=process_count)
            for i in range(process_count)]
  largest = max(builder.info.splits[s].num_examples for s in shards)
  return shards, batch_size, -(-largest // batch_size)


def eval_num_batches(spec: DataSpec, builder: tfds.core.DatasetBuilder, *,
                     process_count: int = 1) -> int:
  """How many batches eval_iterator yields (the same on every process)."""
  return _eval_shards(spec, builder, process_count)[2]


def eval_iterator(spec: DataSpec, builder: tfds.core.DatasetBuilder,
                  transform: preprocess.PixelTransform, *, process_index: int = 0,
                  process_count: int = 1, crops: str | None = None,
                  augment_on: str = 'host') -> Iterator[dict]:
  """One pass: {'image', 'label', 'mask'}; the last batch is padded (mask 0) to full size.

  `crops` (default spec.eval_crops): 'center' gives images [B, S, S, 3]; 'ten' gives the
  paper's ten patches of each image, [B, 10, S, S, 3]. With `augment_on` 'device' the images
  are uint8 and not mean-subtracted: the centre crop, or for 'ten' the resize_size square
  (eval_example_for_device). Every process yields the same number of batches (SPMD steps stay in
  lock-step), and every eval image is in exactly one process's batches with mask 1.
  """
  hide_gpus_from_tf()
  _check_augment_on(augment_on, spec)
  crops = crops or spec.eval_crops
  if crops not in options.EVAL_CROPS:
    raise ValueError(f'crops={crops!r}: use one of {", ".join(options.EVAL_CROPS)}.')
  shards, batch_size, num_batches = _eval_shards(spec, builder, process_count)
  shard = shards[process_index]
  num_padding = num_batches * batch_size - builder.info.splits[shard].num_examples
  ds = read_encoded(builder, shard, shuffle=False, seed=spec.seed)
  square = preprocess.square_decoder(spec)

  @no_autograph
  def eval_input(ex: dict) -> dict:
    image = square(ex['image'])
    if augment_on == 'device':
      image = preprocess.eval_example_for_device(image, crops, spec.image_size)
    else:
      image = preprocess.eval_example(image, crops, spec.image_size, transform)
    return {'image': image, 'label': tf.cast(ex['label'], tf.int32),
            'mask': tf.constant(1.0, tf.float32)}

  ds = ds.map(eval_input, num_parallel_calls=tf.data.AUTOTUNE)
  image_shape = [spec.image_size, spec.image_size, 3]
  if augment_on == 'device':
    side = spec.resize_size if crops == 'ten' else spec.image_size
    image_padding = tf.zeros([side, side, 3], tf.uint8)
  else:
    image_padding = tf.zeros(([10] if crops == 'ten' else []) + image_shape, tf.float32)
  padding = {'image': image_padding,
             'label': tf.constant(0, tf.int32),
             'mask': tf.constant(0.0, tf.float32)}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(num_padding))
  ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(ds.with_options(tf_data_options())))
