"""The data layer's entry point (data/pipeline.py) and its spec (data/spec.py)."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from alexnet_jax.core import config as config_lib
from alexnet_jax.data import pipeline
from alexnet_jax.data import preprocess
from alexnet_jax.data import spec as data_spec
from alexnet_jax.data import stats as stats_lib
from alexnet_jax.data import streams
from conftest import pil_square, prepared_input, shapes_config, split_records
from configs import default

MEAN_RGB = np.array(default.get_config().mean_rgb, np.float32)


def test_prepare_dataset_computes_the_stats_the_config_needs(data_dir):
  config = shapes_config(data_dir, resize_size=72, mean_subtraction='constant',
                         pca_lighting_std=0.1, pca_eigen='dataset', stats_num_images=40)
  builder = prepared_input(config).builder
  path = os.path.join(builder.data_dir, 'alexnet_jax_stats-train-r72-n40.npz')
  assert os.path.isfile(path)
  transform = prepared_input(config, builder).transform
  stats = stats_lib.DatasetStats.load(path)
  assert np.array_equal(transform.eigval, stats.eigval)
  assert np.array_equal(transform.mean, MEAN_RGB)  # 'constant' keeps config.mean_rgb
  config.pca_eigen = 'published'
  assert np.allclose(prepared_input(config, builder).transform.eigvec,
                     preprocess.PCA_EIGVEC)


# ---------------------------------------------------------------------------------------------
# The spec: what the data layer reads of a config, read in one place.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_spec_holds_the_configs_values_of_its_fields():
  config = default.get_config()
  config.dataset, config.seed, config.mean_rgb, config.resized = 'imagenet2012', 7, (1, 2, 3), 'raw'
  spec = data_spec.from_config(config)
  for field in dataclasses.fields(spec):
    value = getattr(spec, field.name)
    want = config[field.name]
    assert (tuple(value) == tuple(want)) if isinstance(want, tuple) else value == want, field.name
  assert spec.mean_rgb == (1.0, 2.0, 3.0)
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.seed = 1  # type: ignore[misc]


def test_the_data_layer_reads_a_run_config_in_one_function():
  readers = []
  directory = os.path.join(ROOT, 'alexnet_jax', 'data')
  for name in sorted(os.listdir(directory)):
    if name.endswith('.py'):
      with open(os.path.join(directory, name)) as f:
        readers += [(name, line.strip()) for line in f
                    if 'config: ml_collections.ConfigDict' in line]
  assert readers == [('spec.py', 'def from_config(config: ml_collections.ConfigDict) -> DataSpec:')]


def test_the_specs_refusals_are_reported_with_every_other_problem_of_the_config():
  config = default.get_config()
  config.image_size, config.resize_size = 300, 256  # the data layer's
  config.resized_jpeg_quality = 0  # the data layer's
  config.model.dropout_rate = 1.5  # the model's
  spec_problems = data_spec.from_config(config).problems()
  assert len(spec_problems) == 2
  with pytest.raises(config_lib.ConfigError) as info:
    config_lib.check(config, jax.devices()[:2])
  message = str(info.value)
  assert message.startswith('the config has 3 problems')
  assert all(p in message for p in spec_problems) and 'dropout_rate' in message


def test_the_stream_refuses_shards_with_the_config_checks_words():
  config = default.get_config()
  config.batch_size, config.input_shards = 12, 8
  spec = data_spec.from_config(config)
  problem, = data_spec.shard_problems(spec, 2)
  assert 'config.input_shards=8' in problem and 'config.batch_size=12' in problem
  with pytest.raises(ValueError) as info:
    streams.input_shards(spec, 2)
  assert str(info.value) == problem
  assert data_spec.shard_problems(spec, 4) == [problem.replace('the 2 input', 'the 4 input')
                                               .replace('multiple of 2', 'multiple of 4')]
  assert not data_spec.shard_problems(dataclasses.replace(spec, batch_size=16), 2)


# ---------------------------------------------------------------------------------------------
# The Input: opened (writing nothing), then prepared once.


def test_opening_writes_nothing_and_gives_the_metadata(tmp_path):
  data_dir = tmp_path / 'tfds'
  data = pipeline.open(data_spec.from_config(shapes_config(data_dir)))
  assert data.num_classes == 10  # synthetic_shapes/tiny: from its metadata
  assert not data_dir.exists() or not any(data_dir.rglob('*'))
  with pytest.raises(RuntimeError, match='prepare'):
    data.eval_batches()


def test_the_statistics_are_read_once_and_the_streams_use_them(data_dir, shapes_builder):
  config = shapes_config(data_dir, resize_size=72, image_size=64, mean_subtraction='image',
                         stats_num_images=60)
  data = prepared_input(config, shapes_builder)
  path = data.stats_path
  assert os.path.isfile(path) and data.train_stats.num_images == 60
  os.remove(path)  # the batches must come from what prepare() loaded, not from the file
  batch = next(data.eval_batches(crops='center'))
  train = next(data.train_batches())
  assert not os.path.exists(path)
  # The first validation image, independently: PIL's square minus the mean image, centre crop.
  jpeg, _ = split_records(shapes_builder, 'validation')[0]
  want = pil_square(jpeg, 72)[4:68, 4:68] - data.train_stats.mean_image[4:68, 4:68]
  assert np.abs(batch['image'][0] - want).mean() < 0.5
  assert train['image'].shape == (16, 64, 64, 3)
  # Another evaluation split shares them; a field that changes the dataset is refused.
  other = data.replace(eval_split='train', num_eval_examples=16)
  assert other.train_stats is data.train_stats and other.eval_num_batches() == 1
  with pytest.raises(ValueError, match='resize_size'):
    data.replace(resize_size=64)


def test_the_streams_refuse_device_augmentation_with_the_config_checks_words():
  config = default.get_config()
  config.train_crop, config.augment_on = 'random_resized_crop', 'device'
  spec = data_spec.from_config(config)
  problem, = data_spec.augment_on_problems(spec, 'device')
  assert 'train_crop=' in problem and "config.augment_on='device'" in problem
  with pytest.raises(ValueError) as info:  # refused before the dataset is read
    streams.train_dataset(spec, None, None, augment_on='device')
  assert str(info.value) == problem
  assert not data_spec.augment_on_problems(dataclasses.replace(spec, train_crop='random_crop'),
                                           'device')
