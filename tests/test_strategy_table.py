"""The table of strategies (core/strategies.TABLE): one rule for config.num_devices, and every
row's claims (default devices, tower axis, what it needs of N) true of the strategy it builds.

No step is compiled: these tests build meshes and strategies only."""

import jax
import pytest

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import devices as devices_lib
from configs import tiny

COUNTS = (0, 1, 2, 3, 4, 6, 8)


def _config(name: str, num_devices: int, num_towers: int = 2):
  config = tiny.get_config()
  config.parallelism, config.num_devices = name, num_devices
  config.model.num_towers = num_towers
  return config


def _net(config):
  return model_lib.make_network(config.model, config.model.num_classes)


@pytest.mark.parametrize('name', strategies.STRATEGIES)
def test_the_devices_a_cpu_simulates_are_the_devices_the_run_resolves(name):
  """For every strategy, num_devices and process count: the CPU devices main.py presents
  (runtime.devices) are the ones the config check and the strategy builder then use. Before the
  table, devices_needed and resolve_num_devices each wrote the num_devices = 0 rule (2, 4 for
  towers_data; and 2 for towers, all visible otherwise)."""
  for n in COUNTS:
    for processes in (1, 2):
      config = _config(name, n)
      per_process = devices_lib.cpu_devices_per_process(config, processes)
      visible = per_process * processes
      needed = strategies.devices_needed(name, n)
      assert visible >= needed, (name, n, processes)
      resolved = strategies.resolve_num_devices(name, n, visible)
      assert resolved == needed, (name, n, processes)
      if n == 0:
        assert resolved == visible, (name, processes)
      if strategies.fit_error(name, resolved, _net(config), visible) is None:
        built = strategies.make_strategy(name, _net(config), jax.devices()[:visible], n)
        assert built.num_devices == resolved, (name, n, processes)
        # The config check resolves the same count: it does not refuse the placement.
        found = config_lib.problems(config, jax.devices()[:visible])
        assert not [p for p in found if 'cannot run' in p], found


@pytest.mark.parametrize('name', strategies.STRATEGIES)
def test_num_devices_zero_means_what_the_docs_say(name):
  """configs/default.py: '0: 2 for towers, every visible device otherwise; on CPU, main.py
  simulates N devices (2 by default, 4 for towers_data)'."""
  info = strategies.TABLE[name]
  for visible in (1, 2, 4, 8):
    want = 2 if name == 'towers' else visible
    assert strategies.resolve_num_devices(name, 0, visible) == want
    assert strategies.resolve_num_devices(name, 3, visible) == 3
  assert strategies.resolve_num_devices(name, 0) == (2 if name == 'towers'
                                                     else jax.device_count())
  assert strategies.devices_needed(name, 0) == info.default_devices
  assert strategies.devices_needed(name, 6) == 6
  assert info.default_devices == (4 if name == 'towers_data' else 2)


def test_unknown_strategy():
  assert strategies.devices_needed('pipeline', 0) == 1
  assert strategies.devices_needed('pipeline', 3) == 3
  assert 'unknown parallelism' in strategies.fit_error('pipeline', 2)
  with pytest.raises(ValueError, match='Unknown parallelism'):
    strategies.make_strategy('pipeline', _net(_config('towers', 0)))


def test_the_table_lists_every_strategy_once():
  assert strategies.STRATEGIES == ('towers', 'data', 'hybrid', 'towers_data', 'fsdp')
  assert strategies.TOWER_STRATEGIES == ('towers', 'towers_data')
  assert all(info.name == name for name, info in strategies.TABLE.items())
  assert config_lib.defaults().parallelism in strategies.TABLE


@pytest.mark.parametrize('name', strategies.STRATEGIES)
def test_each_row_says_what_its_strategy_is(name):
  """The row's tower axis, one-tower support and needs of N, against the strategy it builds."""
  info = strategies.TABLE[name]
  two, one = _net(_config(name, 0)), _net(_config(name, 0, num_towers=1))
  built = strategies.make_strategy(name, two, num_devices=info.default_devices)
  assert built.name == name and built.num_devices == info.default_devices
  assert ('tower' in built.mesh.shape) == info.tower_axis
  if info.tower_axis:
    assert built.mesh.shape['tower'] == 2
  for n in (1, 2, 3, 4, 8):
    error = strategies.fit_error(name, n, two, 8)
    if info.exact_devices:
      assert (error is None) == (n == info.exact_devices), (n, error)
    elif info.tower_axis and n % 2:
      assert 'even' in error, (n, error)
    elif info.fit is None:
      assert error is None, (n, error)
  error = strategies.fit_error(name, 2, one, 8)
  if info.one_tower:
    assert error is None, error
    assert 'tower' not in strategies.make_strategy(name, one, num_devices=2).mesh.shape
  else:
    assert 'no second tower' in error
