"""The input pipeline's speed per CPU core, against the JPEG decoding it cannot avoid.

    python -m alexnet_jax.bench_input --out=/tmp/bench_input

Training can go no faster than the host decodes JPEGs, so the pipeline's own overhead is judged
against that floor: per CPU core, in one run, on the same files,
- decode: `tf.io.decode_jpeg` of the whole image (RGB, the pipeline's INTEGER_ACCURATE IDCT);
- decode_resize: the pipeline's own `records.decode_and_resize(jpeg, 256)` (it decodes only
  the central square's window, so it is not assumed to be slower than `decode`);
- augment: the paper's training transform alone (`preprocess.train_example`: random 224 crop,
  mirror, colour noise, mean image) on already decoded 256 squares: where the rest goes;
- pipeline: images/s out of the project's real training iterator (`Input.train_batches`,
  configs/paper.py's preprocessing: the mean image and the RGB PCA of the training split, random
  crop and flip, colour noise; batches of `--batch_size`) reading the dataset's tfds records,
  after `--warmup_batches`.
- augment_device, pipeline_device_augment: the same two with config.augment_on='device'
  (core/augment.py): the host's half of the transform alone (the uint8 random crop and the
  draws: `preprocess.train_example_for_device`), and the real iterator shipping uint8 crops;
  the flip, colour noise, mean and cast then run in the jitted step, not on the host. With the
  bytes per image each iterator yields (from its element spec), and the images/s a host of N
  cores can feed either way (`feed_per_host`: N / the CPU seconds per image, a linear
  extrapolation);
- device_half_xla_cpu: the device's half (`core/augment.train_images`, jitted) on the CPU
  backend, batches of --batch_size: what 'device' costs where the device is this CPU.
Besides images/s (wall), `cpu_ms_per_image` gives each stage's CPU milliseconds per image (best
round), the host CPU time per image whatever else the machine runs.
ratio = pipeline / decode_resize; the target is >= 0.8.
Decoding less: the ImageNet-like images are also written once as the resized
dataset (alexnet_jax/data/resized_dataset.py) in both storages, and measured on the same core:
- decode_256: decoding the stored 256 x 256 JPEG squares (what training from them costs instead
  of decode_resize); pipeline_256: the training iterator reading them; pipeline_raw: the iterator
  reading the raw-pixel squares (no decoding at all);
- under "resized": per storage, the bytes stored per image and the pixels' difference from the
  normal path's (`decode_and_resize` of the originals): mean and largest absolute error, PSNR.

Two datasets: ImageNet-like JPEGs generated here (`imagenet_like_jpegs`, a tfds dataset written
once into --data_dir: dimensions and file sizes like ILSVRC-2012's, see
alexnet_jax/data/imagenet_like_dataset.py) and the project's generated `synthetic_shapes`
(--shapes_dataset), of which the first --num_images
training images are read (split `train[:N]`), so every figure of a dataset is over the same files.

"Per core": after the datasets are prepared (generation, the image check and the statistics use
every core and are not timed), every thread of the process is pinned to one CPU
(`sched_setaffinity`), and threads started later inherit it. The decode loops run in one thread
(`image_loop`: a while loop in one TF graph; TF's inter- and intra-op pools are set to one thread
before TF starts); the training iterator keeps its own options (`records.tf_data_options`: a
pool of os.cpu_count() threads), which then share the one CPU. So each rate is what one core
delivers. Each round records the process's CPU seconds over its wall seconds (`cpu_per_wall`,
<= 1 when pinned). Where pinning is not available (not Linux), nothing is pinned and
`per_core_method` says so.

Each figure is the best of --repeats rounds (the least disturbed on a shared machine, as in
bench.py); every round's rate is in the JSON. The result (`DIR/bench_input.json`):
{"per_core": {"decode", "decode_resize", "augment", "pipeline"}, "ratio", "target",
"target_met"} for the ImageNet-like set, the same per dataset under "datasets" with the measured
JPEG sizes and dimensions ("images") and the milliseconds per image of each stage ("ms_per_image":
"other" is what the pipeline costs beyond decode_resize and augment: reading, parsing,
shuffling, batching, the copy to numpy, thread hand-offs), plus the date, CPU, TF version and
load average.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from typing import Callable, Sequence

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.core import augment
from alexnet_jax.data import imagenet_like_dataset as imagenet_like
from alexnet_jax.data import pipeline
from alexnet_jax.data import preprocess
from alexnet_jax.data import records
from alexnet_jax.data import resized_dataset
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data.spec import DataSpec
from configs import paper

TARGET_RATIO = 0.8
FEED_CORES = (1, 8, 16, 32, 64)  # host sizes for feed_per_host (a linear extrapolation)


# ---------------------------------------------------------------------------------------------
# Measuring.


def pin_to_one_cpu(cpu: int = -1) -> int | None:
  """Pins every thread of this process to `cpu` (-1: the first it may run on); threads created
  later inherit it. The CPU, or None where the OS cannot pin (then nothing changed)."""
  if not hasattr(os, 'sched_setaffinity') or not os.path.isdir('/proc/self/task'):
    return None
  cpu = min(os.sched_getaffinity(0)) if cpu < 0 else cpu
  for tid in os.listdir('/proc/self/task'):
    try:
      os.sched_setaffinity(int(tid), {cpu})
    except ProcessLookupError:
      pass  # the thread ended meanwhile
  return cpu


def single_threaded_tf() -> bool:
  """One inter-op and one intra-op thread for TF's own ops (the decode loops; tf.data's pipelines
  have their own pools, set by their options). Only possible before TF's runtime starts: False
  if it had already started."""
  try:
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
  except RuntimeError:
    return False
  return True


def _rounds(run_round: Callable[[], int], repeats: int, warmup: int = 1) -> dict:
  """Images/s of `repeats` timed calls of `run_round` (each returns how many images it did),
  after `warmup` untimed ones: the best, the mean, every round's, and CPU seconds / wall seconds."""
  for _ in range(warmup):
    run_round()
  rates, per_cpu_second, cpu_per_wall = [], [], []
  for _ in range(repeats):
    wall, cpu = time.perf_counter(), time.process_time()
    images = run_round()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rates.append(images / wall)
    per_cpu_second.append(images / max(cpu, 1e-9))
    cpu_per_wall.append(round(cpu / wall, 3))
  return {'images_per_second': max(rates), 'mean_images_per_second': float(np.mean(rates)),
          'rounds': rates, 'images_per_cpu_second': per_cpu_second, 'cpu_per_wall': cpu_per_wall}


def image_loop(count: int, fn: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[], int]:
  """A round of `fn(i)` for i = 0 .. count - 1, one after another in one graph: a while loop's
  step costs a small fraction of a tf.data map's per-element overhead, which would otherwise be
  counted as decoding. Each image's first value is summed so that none can be skipped. The
  round returns `count`."""

  @tf.function
  def loop():
    def body(i, total):
      first = tf.reshape(fn(i), [-1])[0]
      return i + 1, total + tf.cast(first, tf.float32)
    return tf.while_loop(lambda i, _: i < count, body, (tf.constant(0), tf.constant(0.0)),
                         parallel_iterations=1)[1]

  return lambda: (loop().numpy(), count)[1]


@contextlib.contextmanager
def _quiet_tf_logger():
  logger = logging.getLogger('tensorflow')
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def read_jpegs(builder: tfds.core.DatasetBuilder, split: str) -> list[bytes]:
  """The JPEG bytes of `split`, in file order (what the iterator reads, shuffled)."""
  ds = builder.as_dataset(split=split, shuffle_files=False,
                          decoders={'image': tfds.decode.SkipDecoding()})
  return [ex['image'] for ex in tfds.as_numpy(ds)]


def jpeg_statistics(jpegs: Sequence[bytes]) -> dict:
  """Count, mean/min/max bytes and dimensions of the JPEGs (from their headers)."""
  shapes = np.array([tf.image.extract_jpeg_shape(j).numpy()[:2] for j in jpegs])
  sizes = np.array([len(j) for j in jpegs])
  pixels = shapes[:, 0] * shapes[:, 1]
  long_side, short_side = shapes.max(axis=1), shapes.min(axis=1)
  return {'count': len(jpegs), 'mean_bytes': float(sizes.mean()), 'min_bytes': int(sizes.min()),
          'max_bytes': int(sizes.max()), 'mean_height': float(shapes[:, 0].mean()),
          'mean_width': float(shapes[:, 1].mean()), 'mean_pixels': float(pixels.mean()),
          'mean_long_side': float(long_side.mean()), 'mean_short_side': float(short_side.mean()),
          'max_side': int(shapes.max()), 'min_side': int(shapes.min()),
          'portrait_fraction': float(np.mean(shapes[:, 0] > shapes[:, 1]))}


def pipeline_spec(dataset: str, data_dir: str, split: str, batch_size: int) -> DataSpec:
  """configs/paper.py's preprocessing on `split` of `dataset`, batches of `batch_size`."""
  return dataclasses.replace(
      data_spec.from_config(paper.get_config()), dataset=dataset, data_dir=data_dir,
      train_split=split, eval_split=split,  # the image check then tries only the images measured
      batch_size=batch_size)


def measure_dataset(data: pipeline.Input, repeats: int, warmup_batches: int) -> dict:
  """decode, decode_resize, augment and pipeline rates (images/s) over the training split of a
  prepared input."""
  spec, builder = data.spec, data.builder
  jpegs = read_jpegs(builder, spec.train_split)
  count, resize = len(jpegs), spec.resize_size
  # Each stage traces its own loop once; TF would warn that it retraces.
  with tf.device('/CPU:0'), _quiet_tf_logger():
    files = tf.constant(jpegs, tf.string)
    decode = _rounds(image_loop(count, lambda i: tf.io.decode_jpeg(
        files[i], channels=3, dct_method='INTEGER_ACCURATE')), repeats)
    decode_resize = _rounds(image_loop(
        count, lambda i: records.decode_and_resize(files[i], resize)), repeats)
    # The training transform alone, on the decoded squares (decoded once, untimed).
    squares = tf.stack([records.decode_and_resize(j, resize) for j in jpegs])
    transform = data.transform
    base_seed = tf.constant([spec.seed, 0], tf.int64)
    augment = _rounds(image_loop(count, lambda i: preprocess.train_example(
        squares[i], tf.random.experimental.stateless_fold_in(base_seed, tf.cast(i, tf.int64)),
        spec, transform)), repeats)

    # The host's half with augment_on='device': the crop and the draws; all of them summed so
    # none can be skipped.
    def host_half(i):
      ex = preprocess.train_example_for_device(
          squares[i], tf.random.experimental.stateless_fold_in(base_seed, tf.cast(i, tf.int64)),
          spec, transform)
      return (tf.cast(ex['image'][:1, :1], tf.float32) + ex['colour'] + tf.cast(
          ex['flip'], tf.float32) + tf.cast(tf.reduce_sum(ex['crop']), tf.float32))
    augment_device = _rounds(image_loop(count, host_half), repeats)

  batches = max(1, math.ceil(len(jpegs) / spec.batch_size))
  pipelines, shipped = {}, {}
  for name, augment_on in (('pipeline', 'host'), ('pipeline_device_augment', 'device')):
    shipped[name] = bytes_per_image(data.train_dataset(augment_on=augment_on).element_spec,
                                    spec.batch_size)
    iterator = data.train_batches(augment_on=augment_on)

    def pipeline_round():
      for _ in range(batches):
        batch = next(iterator)
      assert batch['image'].shape[0] == spec.batch_size
      return batches * spec.batch_size

    for _ in range(warmup_batches):
      next(iterator)
    pipelines[name] = _rounds(pipeline_round, repeats, warmup=0)
    del iterator  # its threads stop before the next iterator is timed
  per_core = {'decode': decode['images_per_second'],
              'decode_resize': decode_resize['images_per_second'],
              'augment': augment['images_per_second'],
              'pipeline': pipelines['pipeline']['images_per_second'],
              'augment_device': augment_device['images_per_second'],
              'pipeline_device_augment':
                  pipelines['pipeline_device_augment']['images_per_second']}
  device_half = device_half_xla_cpu(spec, repeats)
  per_core['device_half_xla_cpu'] = device_half['images_per_second']
  ms = {k: 1000.0 / v for k, v in per_core.items()}
  cpu_ms = {k: 1000.0 / max(r['images_per_cpu_second']) for k, r in {
      'decode': decode, 'decode_resize': decode_resize, 'augment': augment,
      'augment_device': augment_device, **pipelines,
      'device_half_xla_cpu': device_half}.items()}
  # From CPU time, not wall time: what N cores deliver when nothing else runs on them, however
  # busy this machine was.
  feed = {name: {str(cores): cores * 1000.0 / cpu_ms[name] for cores in FEED_CORES}
          for name in pipelines}
  ms['other'] = ms['pipeline'] - ms['decode_resize'] - ms['augment']
  ms['other_device_augment'] = (ms['pipeline_device_augment'] - ms['decode_resize']
                                - ms['augment_device'])
  return {
      'split': spec.train_split, 'images': jpeg_statistics(jpegs),
      'per_core': per_core,
      'ratio': per_core['pipeline'] / per_core['decode_resize'],
      'ratio_device_augment': per_core['pipeline_device_augment'] / per_core['decode_resize'],
      'decode_over_decode_resize': per_core['decode'] / per_core['decode_resize'],
      'ms_per_image': ms,
      'cpu_ms_per_image': cpu_ms,
      'bytes_per_image': shipped,
      'feed_per_host': feed,
      'pipeline_images_per_round': batches * spec.batch_size,
      'rounds': {'decode': decode, 'decode_resize': decode_resize, 'augment': augment,
                 'augment_device': augment_device, **pipelines,
                 'device_half_xla_cpu': device_half},
  }


def device_half_xla_cpu(spec: DataSpec, repeats: int) -> dict:
  """Rates of core/augment.train_images, jitted for one CPU device, on a batch of random uint8
  crops with the spec's shapes (a mean image of resize_size; the pixels' values do not matter
  to its speed)."""
  rng = np.random.default_rng(0)
  b, size, square = spec.batch_size, spec.image_size, spec.resize_size
  batch = jax.device_put({
      'image': rng.integers(0, 256, (b, size, size, 3)).astype(np.uint8),
      'crop': rng.integers(0, square - size + 1, (b, 2)).astype(np.int32),
      'flip': rng.uniform(size=b) < 0.5, 'colour': rng.normal(size=(b, 3)).astype(np.float32),
      'mean': rng.uniform(0, 255, (square, square, 3)).astype(np.float32),
      'std': np.ones(3, np.float32)}, jax.devices('cpu')[0])
  fn = jax.jit(augment.train_images)

  def run_round():
    for _ in range(4):
      fn(batch).block_until_ready()
    return 4 * b

  return _rounds(run_round, repeats)


def bytes_per_image(element_spec: dict, batch_size: int) -> float:
  """Bytes of one example of a batch the iterator yields (every array of the element spec)."""
  return sum(s.shape.num_elements() * s.dtype.size
             for s in tf.nest.flatten(element_spec)) / batch_size


def pixel_difference(images: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> dict:
  """How far uint8 images are from references of the same shape, over every value: mean
  absolute error and largest error (levels of 255), PSNR (dB; inf where equal)."""
  errors = np.concatenate([(a.astype(np.float64) - b).ravel() for a, b in zip(images, references)])
  mse = float(np.mean(errors ** 2))
  return {'mean_abs_error': float(np.mean(np.abs(errors))),
          'max_abs_error': float(np.max(np.abs(errors))),
          'psnr_db': float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))}


def _iterator_rounds(data: pipeline.Input, count: int, repeats: int,
                     warmup_batches: int) -> dict:
  """Images/s out of the training iterator, rounds of ceil(count / batch) batches."""
  batches = max(1, math.ceil(count / data.spec.batch_size))
  iterator = data.train_batches()

  def pipeline_round():
    for _ in range(batches):
      next(iterator)
    return batches * data.spec.batch_size

  for _ in range(warmup_batches):
    next(iterator)
  return _rounds(pipeline_round, repeats, warmup=0)


def measure_resized(source: pipeline.Input, resized: dict[str, pipeline.Input], repeats: int,
                    warmup_batches: int) -> dict:
  """The same images from the resized datasets (resized_dataset.py, written by `run` before
  pinning), per storage: the bytes stored per image, the decode rate of the stored squares and
  the training iterator's rate on them (images/s per core), and how far the decoded squares are
  from what the normal path computes from the originals (`decode_and_resize`)."""
  spec = source.spec
  originals = read_jpegs(source.builder, spec.train_split)
  resize, out = spec.resize_size, {}
  for storage, squares in resized.items():
    builder = squares.builder
    ds = builder.as_dataset(split=spec.train_split, shuffle_files=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
    squares_read = list(tfds.as_numpy(ds))
    stored = [r['image'] for r in squares_read]
    # file_name is 'train[i]': the i-th source image (the split is whole, so i is its index).
    sources = [originals[int(r['file_name'].decode().rsplit('[', 1)[1][:-1])] for r in squares_read]
    with tf.device('/CPU:0'), _quiet_tf_logger():
      files = tf.constant(stored, tf.string)
      decode = _rounds(image_loop(len(stored), lambda i: resized_dataset.decode_square(
          files[i], storage, resize)), repeats)
      difference = pixel_difference(
          [resized_dataset.decode_square(tf.constant(b), storage, resize).numpy() for b in stored],
          [records.decode_and_resize(tf.constant(j), resize).numpy() for j in sources])
    rates = _iterator_rounds(squares, len(stored), repeats, warmup_batches)
    out[storage] = {
        'dataset': builder.info.full_name, 'count': len(stored),
        'mean_bytes': float(np.mean([len(b) for b in stored])),
        'jpeg_quality': spec.resized_jpeg_quality if storage == 'jpeg' else None,
        'per_core': {'decode': decode['images_per_second'],
                     'pipeline': rates['images_per_second']},
        'difference_from_decode_resize': difference,
        'rounds': {'decode': decode, 'pipeline': rates}}
  return out


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return ''


def run(data_dir: str, num_images: int, batch_size: int, repeats: int, warmup_batches: int,
        shapes_dataset: str, cpu: int = -1, log=print) -> dict:
  """Prepares both datasets (all cores), pins the process to one CPU, measures both."""
  tf_single_threaded = single_threaded_tf()  # first: before any TF op starts TF's runtime
  data_dir = os.path.expanduser(data_dir) if data_dir else None
  prepared = {}
  source = imagenet_like.dataset_builder(num_images, data_dir)
  spec = pipeline_spec(source.info.full_name, data_dir or '', 'train', batch_size)
  log(f'Preparing {source.info.full_name} ({num_images} JPEGs) and its statistics.')
  # tfds cannot make this builder from its name: the Input is given it.
  prepared['imagenet_like'] = pipeline.Input(spec, source).prepare()
  write_seconds, resized = {}, {}
  for storage in resized_dataset.STORAGES:  # the same images as squares, written once
    start = time.perf_counter()
    rspec = dataclasses.replace(spec, resized=storage)
    squares = pipeline.Input(rspec, resized_dataset.squares_builder(rspec, source=source))
    resized[storage] = squares.prepare()
    write_seconds[storage] = time.perf_counter() - start
    log(f'Prepared {squares.builder.info.full_name} ({write_seconds[storage]:.1f} s, every core).')
  spec = pipeline_spec(shapes_dataset, data_dir or '', 'train', batch_size)
  shapes = pipeline.open(spec)
  log(f'Preparing {shapes_dataset} and the statistics of its first {num_images} images.')
  if not shapes.builder.is_prepared():
    shapes.builder.download_and_prepare()  # generated here, once (prepare does the same)
  count = min(num_images, shapes.num_examples('train'))
  spec = pipeline_spec(shapes_dataset, data_dir or '', f'train[:{count}]', batch_size)
  prepared['synthetic_shapes'] = pipeline.Input(spec, shapes.builder).prepare()

  pinned = pin_to_one_cpu(cpu)
  method = (f'every thread pinned to CPU {pinned} (sched_setaffinity) after preparing the '
            f'datasets; decode loops in one thread (one TF graph, inter- and intra-op threads 1), '
            f'the training iterator with its own options (a {max(1, os.cpu_count() or 1)}-thread '
            f'tf.data pool) sharing that CPU'
            if pinned is not None else
            'not pinned (no sched_setaffinity here): rates are whole-process; divide by '
            'cpu_per_wall for images/s per core')
  result = {'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
            'cpu_model': _cpu_model(), 'cpu_count': os.cpu_count(),
            'tensorflow_version': tf.__version__, 'tfds_version': tfds.__version__,
            'per_core_method': method, 'pinned_cpu': pinned,
            'tf_threads': {'inter_op': tf.config.threading.get_inter_op_parallelism_threads(),
                           'intra_op': tf.config.threading.get_intra_op_parallelism_threads(),
                           'set_before_tf_started': tf_single_threaded},
            'load_average': list(os.getloadavg()) if hasattr(os, 'getloadavg') else None,
            'num_images': num_images, 'batch_size': batch_size, 'repeats': repeats,
            'warmup_batches': warmup_batches, 'jpeg_quality': imagenet_like.JPEG_QUALITY,
            'target': TARGET_RATIO,
            'config': {k: getattr(spec, k) for k in (  # the preprocessing: configs/paper.py's
                'resize_size', 'image_size', 'mean_subtraction', 'pca_lighting_std',
                'pca_eigen', 'train_crop', 'cache_decoded', 'shuffle_buffer', 'seed')},
            'datasets': {}}
  for name, data in prepared.items():
    log(f'Measuring {data.builder.info.full_name} {data.spec.train_split} on one core.')
    result['datasets'][name] = {'dataset': data.builder.info.full_name,
                                **measure_dataset(data, repeats, warmup_batches)}
  main_figures = result['datasets']['imagenet_like']
  source = prepared['imagenet_like']
  log(f'Measuring the resized squares of {source.builder.info.full_name} on one core.')
  main_figures['resized'] = measure_resized(source, resized, repeats, warmup_batches)
  for storage, entry in main_figures['resized'].items():
    entry['prepare_seconds_all_cores'] = write_seconds[storage]
  main_figures['per_core'].update({  # the headline rows of decoding less
      'decode_256': main_figures['resized']['jpeg']['per_core']['decode'],
      'pipeline_256': main_figures['resized']['jpeg']['per_core']['pipeline'],
      'pipeline_raw': main_figures['resized']['raw']['per_core']['pipeline']})
  result['per_core'] = main_figures['per_core']
  result['ratio'] = main_figures['ratio']
  result['target_met'] = result['ratio'] >= TARGET_RATIO
  result['load_average_after'] = list(os.getloadavg()) if hasattr(os, 'getloadavg') else None
  return result


def markdown(result: dict) -> str:
  """The docs table for one run: images/s per core, ms per image, the ratio."""
  rows = ['| dataset (JPEGs) | mean KB, long x short side | decode | decode + resize | augment | '
          'pipeline | ratio | ms/image: decode+resize, augment, other |',
          '|---|---|---|---|---|---|---|---|']
  for name, d in result['datasets'].items():
    i, p, ms = d['images'], d['per_core'], d['ms_per_image']
    rows.append(f'| {name} ({i["count"]}) | {i["mean_bytes"] / 1000:.0f} KB, '
                f'{i["mean_long_side"]:.0f} x {i["mean_short_side"]:.0f} | {p["decode"]:.1f} | '
                f'{p["decode_resize"]:.1f} | {p["augment"]:.1f} | {p["pipeline"]:.1f} | '
                f'{d["ratio"]:.2f} | {ms["decode_resize"]:.2f}, {ms["augment"]:.2f}, '
                f'{ms["other"]:.2f} |')
  rows += ['', '| dataset | augment on | host half of augment | pipeline | host CPU ms/image | '
               'bytes/image shipped | images/s a 16-core host feeds |', '|---|---|---|---|---|---|---|']
  for name, d in result['datasets'].items():
    p, ms, shipped = d['per_core'], d['ms_per_image'], d['bytes_per_image']
    for on, stage, pipeline in (('host', 'augment', 'pipeline'),
                                ('device', 'augment_device', 'pipeline_device_augment')):
      rows.append(f'| {name} | {on} | {p[stage]:.1f} | {p[pipeline]:.1f} | '
                  f'{d["cpu_ms_per_image"][pipeline]:.2f} | {shipped[pipeline]:,.0f} | '
                  f'{d["feed_per_host"][pipeline]["16"]:,.0f} |')
    rows.append(f'| {name} | (device half on XLA:CPU) | {p["device_half_xla_cpu"]:.1f} | | '
                f'{d["cpu_ms_per_image"]["device_half_xla_cpu"]:.2f} | | |')
  resized = result['datasets'].get('imagenet_like', {}).get('resized')
  if resized:
    full = result['datasets']['imagenet_like']['per_core']
    rows += ['', '| imagenet_like stored as | KB/image | decode | pipeline | decode vs decode + '
             'resize | pipeline vs full-size pipeline | pixels vs decode + resize: mean abs, '
             'max, PSNR |', '|---|---|---|---|---|---|---|']
    for storage, r in resized.items():
      d, p = r['difference_from_decode_resize'], r['per_core']
      name = f'JPEG q{r["jpeg_quality"]}' if storage == 'jpeg' else 'raw uint8'
      rows.append(f'| {name} {config_size(result)} squares | {r["mean_bytes"] / 1000:.1f} | '
                  f'{p["decode"]:.0f} | {p["pipeline"]:.0f} | '
                  f'{p["decode"] / full["decode_resize"]:.1f}x | '
                  f'{p["pipeline"] / full["pipeline"]:.1f}x | {d["mean_abs_error"]:.2f}, '
                  f'{d["max_abs_error"]:.0f}, {d["psnr_db"]:.1f} dB |')
  return '\n'.join(rows) + '\n'


def config_size(result: dict) -> str:
  size = result['config']['resize_size']
  return f'{size} x {size}'
