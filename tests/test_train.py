"""Config checks that refuse a run before anything is compiled or written."""

import pytest

from alexnet_jax import train
from configs import tiny


@pytest.mark.parametrize('field,value,words', [
    ('parallelism', 'pipeline', ['parallelism', 'towers']),
    ('image_size', 300, ['image_size=300', 'resize_size=72']),
    ('batch_size', 0, ['batch_size=0']),
    ('keep_checkpoints', 0, ['keep_checkpoints=0']),
    ('checkpoint_every_steps', -1, ['checkpoint_every_steps=-1']),
    ('profile_steps', (5, 2), ['profile_steps=(5, 2)', 'first <= last']),
])
def test_bad_config_is_refused_with_the_field_and_the_fix(field, value, words):
  config = tiny.get_config()
  config[field] = value
  with pytest.raises(train.ConfigError) as e:
    train.validate_config(config)
  for word in words:
    assert word in str(e.value)


def test_odd_class_count_is_refused():
  config = tiny.get_config()
  config.model.num_classes = 7
  with pytest.raises(train.ConfigError, match='num_classes=7.*even'):
    train.validate_config(config)


def test_tiny_config_is_accepted():
  train.validate_config(tiny.get_config())  # no exception


def test_batch_the_data_axis_cannot_split_is_refused():
  config = tiny.get_config()
  config.parallelism, config.num_devices, config.batch_size = 'data', 4, 30
  with pytest.raises(train.ConfigError, match='batch_size=30.*multiple of 4'):
    train.validate_config(config)


def test_device_count_the_strategy_cannot_use_is_refused():
  config = tiny.get_config()
  config.num_devices = 3  # towers: one tower per device, exactly 2
  with pytest.raises(train.ConfigError, match='num_devices=3'):
    train.validate_config(config)
