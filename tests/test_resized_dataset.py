"""The resized dataset (config.resized) against independent computations: PIL resizing of the
source's JPEGs, the source's labels and counts, and the normal path's evaluation batches."""

import collections
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import prepare
from alexnet_jax.data import records
from alexnet_jax.data import refusals
from alexnet_jax.data import stats as stats_lib
from alexnet_jax.data import resized_dataset
from conftest import pil_square, prepared_input, shapes_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 72


def _config(data_dir, **overrides):
  return shapes_config(data_dir, **{'resize_size': SIZE, 'image_size': 64, **overrides})


@pytest.fixture(scope='module')
def source(data_dir):
  return prepared_input(_config(data_dir)).builder


@pytest.fixture(scope='module', params=['jpeg', 'raw'])
def resized(request, data_dir, source):
  """(storage, the resized builder written by prepare_dataset from `source`)."""
  del source  # prepared first, so that only the resized dataset is timed and written here
  return request.param, prepared_input(_config(data_dir, resized=request.param)).builder


def _examples(builder, split, skip_decoding=False):
  decoders = {'image': tfds.decode.SkipDecoding()} if skip_decoding else None
  ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
  return list(tfds.as_numpy(ds))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = np.mean((a.astype(np.float64) - b) ** 2)
  return float('inf') if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_resized_dataset_holds_every_source_image_as_its_square(data_dir, resized, source):
  storage, builder = resized
  assert builder.info.full_name == (f'resized_squares/synthetic_shapes-tiny-1.0.0-r{SIZE}-'
                                    f'{"jpeg90" if storage == "jpeg" else "raw"}/1.0.0')
  assert os.fspath(builder.data_dir).startswith(os.fspath(data_dir))
  assert builder.info.features['label'].num_classes == 10
  assert builder.info.features['label'].names == source.info.features['label'].names
  for split in ('train', 'validation'):
    originals = _examples(source, split, skip_decoding=True)
    squares = _examples(builder, split)
    assert len(squares) == len(originals) == source.info.splits[split].num_examples
    # Every source example once, named `split[index]` (synthetic_shapes has no file names),
    # with its label, its square within JPEG's rounding of PIL's resize of the original.
    names = [ex['file_name'].decode() for ex in squares]
    assert sorted(names) == sorted(f'{split}[{i}]' for i in range(len(originals)))
    errors, psnrs = [], []
    for ex in squares:
      original = originals[int(ex['file_name'].decode()[len(split) + 1:-1])]
      assert ex['label'] == original['label']
      assert ex['image'].shape == (SIZE, SIZE, 3) and ex['image'].dtype == np.uint8
      reference = pil_square(original['image'], SIZE)
      errors.append(np.abs(ex['image'] - reference).mean())
      psnrs.append(_psnr(ex['image'], reference))
      if storage == 'raw':  # the normal path's pixels, exactly
        np.testing.assert_array_equal(
            ex['image'],
            records.decode_and_resize(tf.constant(original['image']), SIZE).numpy())
    if storage == 'raw':
      assert np.mean(errors) < 0.5, np.mean(errors)
    else:  # JPEG 90 of sharp colour edges and +-10 levels of noise: a few levels off
      assert np.mean(errors) < 5.0 and np.mean(psnrs) > 28, (np.mean(errors), np.mean(psnrs))
      # ... and each square is its own original's: another image's is far further away.
      wrong = [np.abs(ex['image'] - pil_square(originals[0]['image'], SIZE)).mean()
               for ex in squares[1:20]]
      assert np.median(wrong) > 5 * np.mean(errors), (np.median(wrong), np.mean(errors))


def test_raw_and_jpeg_are_read_in_the_same_order(tmp_path, data_dir, source, monkeypatch):
  """tfds interleaves a split's files, and would write the bigger raw squares into more files:
  both storages are written in as many files as the raw pixels need, so the training streams
  see the same images at the same steps."""
  # Shards of 1 MB instead of 64 MB: the raw squares of the tiny set (5 MB) need several files.
  monkeypatch.setattr(resized_dataset.shard_utils.ShardConfig, 'min_shard_size', 1 << 20)
  target = tmp_path / 'tfds'
  shutil.copytree(source.data_dir, target / 'synthetic_shapes' / 'tiny' / '1.0.0')
  streams, files = {}, {}
  for storage in resized_dataset.STORAGES:
    config = _config(target, resized=storage)
    builder = prepared_input(config).builder
    files[storage] = sorted(f for f in os.listdir(builder.data_dir) if '-train.' in f)
    iterator = prepared_input(config, builder).train_batches()
    streams[storage] = [next(iterator)['label'] for _ in range(22)]  # beyond an epoch
  assert len(files['jpeg']) == len(files['raw']) == 4, files
  np.testing.assert_array_equal(streams['jpeg'], streams['raw'])


def test_a_second_prepare_writes_nothing(data_dir, resized):
  storage, builder = resized
  files = sorted(os.listdir(builder.data_dir))
  mtimes = [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files]
  again = prepared_input(_config(data_dir, resized=storage)).builder
  assert again.data_dir == builder.data_dir
  assert sorted(os.listdir(builder.data_dir)) == files
  assert [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files] == mtimes


def _image_multiset(batches):
  """The evaluation's (label, image bytes) of every real (mask 1) row, counted."""
  out = collections.Counter()
  for batch in batches:
    for image, label, mask in zip(batch['image'], batch['label'], batch['mask']):
      if mask:
        out[(int(label), np.round(image, 3).tobytes())] += 1
  return out


def test_evaluation_on_the_resized_data_counts_every_image_once(data_dir, resized, source):
  storage, builder = resized
  config = _config(data_dir, resized=storage)
  batches = list(prepared_input(config, builder).eval_batches())
  assert len(batches) == prepared_input(config, builder).eval_num_batches() == 4  # 80 in 24s
  assert sum(b['mask'].sum() for b in batches) == 80
  labels = sorted(int(l) for b in batches for l, m in zip(b['label'], b['mask']) if m)
  assert labels == sorted(int(ex['label']) for ex in _examples(source, 'validation', True))
  if storage == 'raw':  # the same images as the normal path's evaluation, in another order
    normal = list(prepared_input(_config(data_dir), source).eval_batches())
    assert _image_multiset(batches) == _image_multiset(normal)
  # Across two processes: each image in exactly one of them.
  parts = [list(prepared_input(config, builder).eval_batches(process_index=p, process_count=2))
           for p in range(2)]
  assert len(parts[0]) == len(parts[1])
  assert sum(b['mask'].sum() for part in parts for b in part) == 80


def test_training_stream_from_the_resized_data_is_a_function_of_the_step(data_dir, resized):
  storage, builder = resized
  config = _config(data_dir, resized=storage, mean_subtraction='image', pca_lighting_std=0.1)
  first = prepared_input(config, builder).train_batches()
  batches = [next(first) for _ in range(25)]  # more than an epoch of 320
  assert batches[0]['image'].shape == (16, 64, 64, 3) and batches[0]['image'].dtype == np.float32
  resumed = prepared_input(config, builder).train_batches(start_step=21)
  for step in range(21, 25):
    again = next(resumed)
    np.testing.assert_array_equal(again['image'], batches[step]['image'])
    np.testing.assert_array_equal(again['label'], batches[step]['label'])
  # Two processes, each its shards: the same global batches.
  config.input_shards = 2
  whole = next(prepared_input(config, builder).train_batches(start_step=3))
  halves = [next(prepared_input(config, builder).train_batches(start_step=3, process_index=p,
                                               process_count=2)) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h['image'] for h in halves]), whole['image'])
  # The mean image is the resized data's own, cached beside it.
  stats_path = stats_lib.load_or_compute(data_spec.from_config(config), builder)[1]
  assert os.path.dirname(stats_path) == os.fspath(builder.data_dir)


def test_the_config_refuses_what_the_resized_data_cannot_do(data_dir):
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.check_data(_config(data_dir, resized='jpeg', train_crop='random_resized_crop',
                                  mean_subtraction='channel'))
  assert 'random_resized_crop' in str(info.value) and "--config.resized=''" in str(info.value)
  with pytest.raises(config_lib.ConfigError, match="'png' is not one of '', 'jpeg', 'raw'"):
    config_lib.check_data(_config(data_dir, resized='png'))
  with pytest.raises(config_lib.ConfigError, match='resized_jpeg_quality=0 must be in'):
    config_lib.check_data(_config(data_dir, resized='jpeg', resized_jpeg_quality=0))


def test_a_resized_dataset_without_a_split_the_config_reads_is_refused(data_dir, resized):
  storage, _ = resized
  config = _config(data_dir, resized=storage, eval_split='test')
  with pytest.raises(refusals.DatasetNotReadyError, match='not test. Delete that directory'):
    prepare.open_dataset(data_spec.from_config(config))


def test_resize_dataset_command_then_main_trains_from_it(tmp_path, run_main):
  data_dir = tmp_path / 'tfds'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.resize_dataset', '--config=configs/tiny.py',
       f'--config.data_dir={data_dir}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'train 320, validation 80 images' in proc.stdout
  assert 'train from it with --config.resized=jpeg' in proc.stdout
  written = data_dir / 'resized_squares' / 'synthetic_shapes-tiny-1.0.0-r72-jpeg90' / '1.0.0'
  mtimes = {f: os.stat(written / f).st_mtime_ns for f in os.listdir(written)}
  run = run_main(tmp_path / 'work', '--config.resized=jpeg', '--config.num_train_steps=4',
                 '--config.eval_every_steps=4', data_dir=data_dir)
  assert run.returncode == 0, run.stderr[-3000:]
  assert {f: os.stat(written / f).st_mtime_ns for f in os.listdir(written)} == mtimes
  # A resume that switches the storage would continue another stream: refused.
  switched = run_main(tmp_path / 'work', '--config.resized=raw', '--config.num_train_steps=6',
                      '--config.eval_every_steps=4', data_dir=data_dir)
  assert switched.returncode == 1, switched.stderr[-3000:]
  assert "config.resized ('jpeg' there, 'raw' here)" in switched.stderr
  bad = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.resize_dataset', '--config=configs/tiny.py',
       f'--config.data_dir={data_dir}', '--config.resized=png'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and 'Traceback' not in bad.stderr
  assert "error: config.resized='png' is not one of" in bad.stderr
