"""Config checks that refuse a run before anything is compiled or written."""

import pytest

from alexnet_jax import train
from configs import tiny


@pytest.mark.parametrize('field,value,words', [
    ('parallelism', 'pipeline', ['parallelism', 'towers']),
    ('image_size', 300, ['image_size=300', 'resize_size=72']),
    ('batch_size', 0, ['batch_size=0']),
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
