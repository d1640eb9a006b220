"""Opening and preparing a dataset (data/prepare.py): reuse, and refusals that write nothing."""

import os

import pytest

from alexnet_jax.data import refusals
from conftest import prepared_input, shapes_config


@pytest.fixture(scope='module')
def builder(shapes_builder):
  return shapes_builder


def test_prepare_reuses_the_generated_dataset(builder, data_dir):
  files = sorted(os.listdir(builder.data_dir))
  mtimes = [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files]
  again = prepared_input(shapes_config(data_dir)).builder
  assert again.data_dir == builder.data_dir
  assert [os.stat(os.path.join(builder.data_dir, f)).st_mtime_ns for f in files] == mtimes
  assert again.info.features['label'].num_classes == 10
  assert again.info.splits['train'].num_examples == 320
  assert again.info.splits['validation'].num_examples == 80


def test_imagenet_without_tars_says_what_to_do_and_writes_nothing(tmp_path):
  data_dir = tmp_path / 'data'
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  (manual_dir / 'ILSVRC2012_img_val.tar').write_bytes(b'')  # one of two: still not ready
  config = shapes_config(data_dir, dataset='imagenet2012', manual_dir=os.fspath(manual_dir))
  with pytest.raises(refusals.DatasetNotReadyError) as info:
    prepared_input(config).builder
  message = str(info.value)
  assert 'ILSVRC2012_img_train.tar' in message and 'ILSVRC2012_img_val.tar' in message
  assert os.fspath(manual_dir) in message
  assert not data_dir.exists() or not any(data_dir.rglob('*'))

  # Default manual dir: <data_dir>/downloads/manual, named in full.
  config = shapes_config(data_dir, dataset='imagenet2012', manual_dir='')
  with pytest.raises(refusals.DatasetNotReadyError) as info:
    prepared_input(config).builder
  assert os.fspath(data_dir / 'downloads' / 'manual') in str(info.value)
  assert not data_dir.exists() or not any(data_dir.rglob('*'))
