"""Damaged JPEGs (data/image_check.py): truncated ones decoded as far as their data goes and
counted, undecodable ones named before training."""

import itertools
import logging
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from alexnet_jax.data import image_check
from alexnet_jax.data import options
from alexnet_jax.data import refusals
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from conftest import prepared_input, shapes_config, split_records


@pytest.fixture(scope='module')
def builder(shapes_builder):
  return shapes_builder


def test_every_image_is_checked_once_and_the_check_is_saved(builder):
  for split, count in (('train', 320), ('validation', 80)):
    path = image_check.image_check_path(builder, split)
    assert os.path.dirname(path) == os.fspath(builder.data_dir)
    assert os.path.isfile(path)  # written by prepare_dataset
    mtime = os.stat(path).st_mtime_ns
    check, again = image_check.load_or_scan_images(builder, split)
    assert again == path and os.stat(path).st_mtime_ns == mtime  # loaded, not checked again
    assert check.num_images == count and not check.truncated and not check.undecodable


def _damaged_copy(builder, data_dir, damage):
  """A copy of `builder`'s prepared files in `data_dir` (without its saved checks and stats) in
  which example i of split s has its JPEG replaced by damage[s][i](JPEG); the new builder."""
  target = data_dir / os.path.relpath(builder.data_dir, builder.data_dir_root)
  shutil.copytree(builder.data_dir, target, ignore=shutil.ignore_patterns('alexnet_jax_*'))
  for split, changes in damage.items():
    index = 0
    for instruction in builder.info.splits[split].file_instructions:
      assert instruction.skip == 0 and instruction.takes_all
      path = target / os.path.basename(instruction.filename)
      with tf.io.TFRecordWriter(os.fspath(path)) as writer:
        for record in tf.data.TFRecordDataset(instruction.filename).as_numpy_iterator():
          if index in changes:
            example = tf.train.Example.FromString(record)
            image = example.features.feature['image'].bytes_list.value
            image[0] = changes[index](image[0])
            record = example.SerializeToString()
          writer.write(record)
          index += 1
  return tfds.builder(builder.info.full_name.rsplit('/', 1)[0], data_dir=os.fspath(data_dir))


def _cut(jpeg):
  """Truncated: two thirds of its bytes (a third of a tiny image's is mostly its header)."""
  return jpeg[:len(jpeg) * 2 // 3]


def _not_a_jpeg(_):
  return b'<html>Please log in</html>'


def test_undecodable_jpegs_are_named_before_training(builder, tmp_path):
  damaged_dir = tmp_path / 'damaged'
  damaged = _damaged_copy(builder, damaged_dir, {'train': {5: _cut, 17: _not_a_jpeg},
                                                 'validation': {3: _not_a_jpeg}})
  config = shapes_config(damaged_dir, resize_size=72, mean_subtraction='image')
  with pytest.raises(refusals.DatasetNotReadyError) as info:
    prepared_input(config).builder
  message = str(info.value)
  assert message.splitlines()[0].startswith('2 images of synthetic_shapes cannot be decoded')
  assert 'train: train[17]; validation: validation[3]' in message and 'train[5]' not in message
  assert f'delete {damaged.data_dir}' in message
  assert not any(f.startswith('alexnet_jax_stats') for f in os.listdir(damaged.data_dir))
  # The saved check names every damaged image as tfds slices the split; the truncated one is
  # trained on, so it is counted, not refused.
  check, path = image_check.load_or_scan_images(damaged, 'train')
  assert os.path.dirname(path) == os.fspath(damaged.data_dir) and check.num_images == 320
  assert check.undecodable == ('train[17]',)
  assert [name for name, _ in check.truncated] == ['train[5]']
  assert 0.1 < check.truncated[0][1] < 0.95  # the fraction of its rows its bytes hold
  assert split_records(damaged, 'train[17:18]')[0][0] == b'<html>Please log in</html>'
  assert split_records(damaged, 'train[5:6]')[0][0] == _cut(split_records(builder, 'train[5:6]')[0][0])
  assert image_check.load_or_scan_images(damaged, 'validation')[0].undecodable == (
      'validation[3]',)


def test_truncated_jpegs_are_trained_and_evaluated_on_and_counted(builder, tmp_path, caplog):
  damaged = _damaged_copy(builder, tmp_path / 'truncated', {'train': {5: _cut, 250: _cut},
                                                            'validation': {3: _cut}})
  config = shapes_config(tmp_path / 'truncated', resize_size=72, image_size=64,
                   mean_subtraction='image', cache_decoded=True)
  with caplog.at_level(logging.WARNING):
    prepared_input(config).builder  # the stats pass decodes every training image
  assert '2 of the 320 images of synthetic_shapes train are truncated JPEGs' in caplog.text
  assert 'train[5] (' in caplog.text and 'train[250] (' in caplog.text
  assert '1 of the 80 images of synthetic_shapes validation' in caplog.text
  stats = stats_lib.load_or_compute(data_spec.from_config(config), damaged)[0]
  assert stats.num_images == 320 and np.isfinite(stats.mean_image).all()
  # An epoch of each training crop (cache_decoded decodes the whole shard first), and the
  # evaluation: every image, the truncated ones included.
  for crop in options.TRAIN_CROPS:
    config.train_crop, config.mean_subtraction = crop, 'channel'
    batches = list(itertools.islice(prepared_input(config, damaged).train_batches(), 320 // 16))
    assert all(np.isfinite(b['image']).all() for b in batches)
  batches = list(prepared_input(config, damaged).eval_batches())
  assert sum(b['mask'].sum() for b in batches) == 80
