"""core/config.py: every refusal before anything is compiled or written, all of a config's problems
at once, one line for an unknown or malformed override, and old configs completed from the
defaults."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from configs import default
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('field,value,words', [
    ('parallelism', 'pipeline', ['parallelism', 'towers']),
    ('image_size', 300, ['image_size=300', 'resize_size=72']),
    ('batch_size', 0, ['batch_size=0']),
    ('keep_checkpoints', 0, ['keep_checkpoints=0']),
    ('checkpoint_every_steps', -1, ['checkpoint_every_steps=-1']),
    ('profile_steps', (5, 2), ['profile_steps=(5, 2)', 'first <= last']),
    ('eval_crops', 'five', ['eval_crops', "'ten'"]),
    ('mean_subtraction', 'median', ['mean_subtraction', "'image'"]),
    ('pca_lighting_std', -0.1, ['pca_lighting_std', '0.1']),
])
def test_bad_config_is_refused_with_the_field_and_the_fix(field, value, words):
  config = tiny.get_config()
  config[field] = value
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  for word in words:
    assert word in str(e.value)


def test_odd_class_count_is_refused():
  config = tiny.get_config()
  config.model.num_classes = 7
  with pytest.raises(config_lib.ConfigError, match='num_classes=7.*even'):
    config_lib.check(config, jax.devices())


def test_tiny_config_is_accepted():
  config_lib.check(tiny.get_config(), jax.devices())  # no exception


@pytest.mark.parametrize('parallelism', ['towers', 'towers_data'])
def test_one_tower_with_a_tower_strategy_is_refused_naming_the_fix(parallelism):
  config = tiny.get_config()
  config.model.num_towers = 1
  config.parallelism = parallelism
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  assert 'model.num_towers=1' in str(e.value) and '--config.parallelism=data' in str(e.value)
  # The strategy itself refuses too, whoever builds it.
  net = model_lib.make_network(config.model, config.model.num_classes)
  with pytest.raises(ValueError, match='no second tower'):
    strategies.make_strategy(parallelism, net, num_devices=4)


@pytest.mark.parametrize('parallelism', ['data', 'fsdp', 'hybrid'])
def test_one_tower_runs_data_parallel(parallelism):
  """data, fsdp, and hybrid as Krizhevsky 2014 ran the one-tower net (fc layers split over
  the devices: 2 of them divide the tiny config's 10 classes)."""
  config = tiny.get_config()
  config.model.num_towers = 1
  config.parallelism = parallelism
  config.num_devices = 2
  config_lib.check(config, jax.devices())  # no exception


@pytest.mark.parametrize('changes,words', [
    ({'num_towers': 3}, ['model.num_towers=3', "2: the paper's two towers"]),
    ({'pool_window': 2, 'pool_stride': 3}, ['pool_stride=3', 'stride <= window']),
    ({'dropout_rate': 1.0}, ['dropout_rate=1.0', '[0, 1)']),
    ({'kernels': 'cudnn'}, ["kernels='cudnn'", "'reference'", "'cpu'"]),
])
def test_bad_model_switch_is_refused(changes, words):
  config = tiny.get_config()
  for k, v in changes.items():
    config.model[k] = v
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  for word in words:
    assert word in str(e.value)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'float16'])
def test_each_compute_dtype_is_accepted_and_builds_its_network(dtype):
  config = tiny.get_config()
  config.model.dtype = dtype
  config_lib.check(config, jax.devices())  # no exception
  assert config_lib.COMPUTE_DTYPES == model_lib.COMPUTE_DTYPES == ('float32', 'bfloat16', 'float16')
  net = model_lib.make_network(config.model, config.model.num_classes)
  assert net.dtype == jax.numpy.dtype(dtype)


@pytest.mark.parametrize('dtype', ['float64', 'half', 'fp16', 'int8'])
def test_another_compute_dtype_is_refused_naming_the_choices(dtype):
  config = tiny.get_config()
  config.model.dtype = dtype
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  assert f"model.dtype={dtype!r}" in str(e.value)
  assert "'float32', 'bfloat16', 'float16'" in str(e.value)


@pytest.mark.parametrize('window,stride,smallest', [(3, 2, 64), (2, 2, 36)])
def test_crop_too_small_for_pool5_is_refused_with_the_smallest_that_works(window, stride,
                                                                         smallest):
  """By hand: conv1 gives ceil((S - 11) / 4) + 1; three pools must leave 1 x 1. With 3 / 2
  pooling conv1 needs 15 (15 -> 7 -> 3 -> 1; 14 -> 6 -> 2 -> 0), so S >= 64; with 2 / 2 it
  needs 8 (8 -> 4 -> 2 -> 1), so S >= 36."""
  config = tiny.get_config()
  config.model.pool_window, config.model.pool_stride = window, stride
  config.image_size = smallest - 1
  with pytest.raises(config_lib.ConfigError, match=f'image_size={smallest - 1} is too small.*use '
                     f'{smallest} or more'):
    config_lib.check(config, jax.devices())
  config.image_size = smallest
  config_lib.check(config, jax.devices())  # no exception


def test_batch_the_data_axis_cannot_split_is_refused():
  config = tiny.get_config()
  config.parallelism, config.num_devices, config.batch_size = 'data', 4, 30
  with pytest.raises(config_lib.ConfigError, match='batch_size=30.*multiple of 4'):
    config_lib.check(config, jax.devices())


def test_device_count_the_strategy_cannot_use_is_refused():
  config = tiny.get_config()
  config.num_devices = 3  # towers: one tower per device, exactly 2
  with pytest.raises(config_lib.ConfigError, match='num_devices=3'):
    config_lib.check(config, jax.devices())


def test_random_resized_crop_with_the_mean_image_is_refused():
  config = tiny.get_config()
  config.train_crop = 'random_resized_crop'
  config.mean_subtraction = 'image'
  with pytest.raises(config_lib.ConfigError, match='mean_subtraction=channel'):
    config_lib.check(config, jax.devices())
  config.mean_subtraction = 'channel'
  config_lib.check(config, jax.devices())  # no exception


def test_every_problem_is_reported_at_once_each_naming_its_field():
  config = tiny.get_config()
  config.image_size = 300  # larger than resize_size
  config.keep_checkpoints = 0
  config.model.dropout_rate = 1.5
  config.pca_lighting_std = -1.0
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, jax.devices())
  message = str(e.value)
  assert message.startswith('the config has 4 problems:')
  for field in ('image_size=300', 'keep_checkpoints=0', 'dropout_rate=1.5',
                'pca_lighting_std=-1.0'):
    assert sum(field in line for line in message.splitlines()) == 1, field


def test_a_field_configs_default_does_not_have_is_refused_with_the_closest_one():
  config = tiny.get_config()
  config.model.lnr = False  # a typo of lrn
  found = config_lib.problems(config, jax.devices())
  assert found == ['config.model.lnr is not a field (did you mean config.model.lrn?); every '
                   'field and its default is in configs/default.py.']


def _command(*overrides):
  return subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.main', '--config=configs/tiny.py',
       '--workdir=/nonexistent/never_written', *overrides],
      cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('override,words', [
    ('--config.nonexistent=3', ['config.nonexistent is not a field']),
    ('--config.model.towers=1', ['config.model.towers is not a field',
                                 'renamed: use config.model.num_towers']),
    ('--config.batch_size=abc', ['--config.batch_size=abc', 'abc']),
])
def test_an_unknown_or_malformed_override_gets_one_line_not_a_traceback(override, words):
  proc = _command(override)
  assert proc.returncode != 0
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  error_lines = [line for line in lines if line.startswith('error:')]
  assert len(error_lines) == 1, proc.stderr
  assert 'Traceback' not in proc.stderr
  for word in words:
    assert word in error_lines[0], (word, error_lines[0])


def test_an_old_config_is_completed_from_the_defaults_with_renamed_fields_translated():
  saved = json.loads(default.get_config().to_json_best_effort())
  del saved['model']['num_towers'], saved['model']['kernels'], saved['eval_crops']
  saved['model']['towers'] = 1
  saved['model']['weight_grad'] = 'offsets'
  saved['batch_size'] = 64
  saved['a_field_since_removed'] = 'x'
  config = config_lib.complete(saved)
  assert config.model.num_towers == 1  # renamed
  assert config.model.kernels == 'cpu'  # renamed, and its value translated
  assert config.batch_size == 64  # kept
  assert config.eval_crops == default.get_config().eval_crops  # missing: the default
  assert 'a_field_since_removed' not in config
  assert config_lib.unknown_fields(config) == []


def test_no_module_supplies_a_config_default_of_its_own():
  """Every default is in configs/default.py: no `config.get(field, default)` in the package."""
  root = pathlib.Path(ROOT) / 'alexnet_jax'
  offenders = [f'{path}:{number}' for path in root.rglob('*.py')
               for number, line in enumerate(path.read_text().splitlines(), 1)
               if 'config.get(' in line or 'model.get(' in line]
  assert offenders == []
