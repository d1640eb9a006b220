"""What the search finds trains: a spec found by pods/search.py (on the K20 PCIe profile, a tiny
net, shapes and the cost model only) runs through the real train step and computes `data`'s
loss, gradients and updated parameters on 2 and 4 CPU devices; it trains with
train.train_and_evaluate; and `comms --layerwise=FILE` measures it beside the five, its compiled
bytes equal to the spec's formula, layer by layer."""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import strategies
from alexnet_jax.core import train
from alexnet_jax.pods import search
from alexnet_jax.pods import targets as targets_lib
from alexnet_jax.program import formula
from configs import tiny
from reference import FAST_COMPILE, SMALL_SIZE, initial_params, rel_err, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def found_spec(config, n: int) -> layerwise.Spec:
  """The search's rank-1 spec for `config`'s net and batch on n K20s, over every mesh."""
  net = model_lib.make_network(config.model, config.model.num_classes)
  profile = targets_lib.load('gpu-k20-pcie')
  best = []
  for mesh in search.meshes(n):
    coster = search.Coster(profile, mesh, jax.devices()[:n], '', 0.4, 'float32')
    best += search.search_mesh(net, mesh, coster, config.batch_size, config.image_size,
                               math.inf, 4, keep=1)['best']
  spec = min(best, key=lambda f: f['additive_seconds'])['spec']
  # Not one of the five: the test is about a strategy only the search wrote.
  assert all(spec != layerwise.hand_written(name, n, net.num_towers)
             for name in strategies.STRATEGIES
             if strategies.fit_error(name, n, net) is None), search.describe(spec)
  return spec


def write(tmp_path, spec) -> str:
  path = os.path.join(tmp_path, f'found-{spec.num_devices}.toml')
  with open(path, 'w') as f:
    f.write(layerwise.to_toml(spec, 'found by the search (test)'))
  return path


def one_step(config):
  """(loss, gradients, parameters after) of one real train step (run.build) from the shared
  initialisation; the gradient read from the velocity the step leaves: v = -lr * g."""
  run = run_lib.build(config)
  state = run.state_from_params(initial_params())
  batch = run.synthetic_batch(config.seed)
  new_state, metrics = run.train_step.lower(state, batch).compile(FAST_COMPILE)(state, batch)
  velocity = [s for s in new_state.opt_state.inner_state if hasattr(s, 'trace')][0].trace
  grads = jax.tree.map(lambda v: -np.asarray(v) / config.learning_rate, velocity)
  return float(metrics['loss']), grads, jax.tree.map(np.asarray, new_state.params)


@pytest.mark.parametrize('num_devices', [2, 4])
def test_a_found_spec_takes_datas_train_step(tmp_path, num_devices):
  """The same loss, gradients and updated parameters as `data` (dropout on, same masks). Both
  add the same float32 terms in other orders; the longest sum in the step is conv1's kernel
  gradient, batch x 15 x 15 output positions, and a reordered sum of n terms moves by at most
  n * 2^-24 of its terms' magnitude (Higham's gamma_n), so that is the bound; a wrong split
  (a missing reduction, a wrong slice) is off by order 1."""
  config = small_config()
  spec = found_spec(config, num_devices)
  conv1_positions = (SMALL_SIZE - 11) // 4 + 1  # 15
  bound = config.batch_size * conv1_positions ** 2 * 2.0 ** -24
  config.num_devices = num_devices
  config.parallelism, config.layerwise = layerwise.NAME, write(tmp_path, spec)
  loss, grads, after = one_step(config)
  config.parallelism, config.layerwise = 'data', ''
  want_loss, want_grads, want_after = one_step(config)
  assert rel_err(loss, want_loss) <= bound
  for layer in strategies.LAYERS:
    for what in ('kernel', 'bias'):
      assert np.abs(want_grads[layer][what]).max() > 0
      assert rel_err(grads[layer][what], want_grads[layer][what]) <= bound, (layer, what)
      assert rel_err(after[layer][what], want_after[layer][what]) <= bound, (layer, what)


def test_a_found_spec_trains_with_train_and_evaluate(tmp_path, tiny_data_dir):
  """The training entry point itself, two steps on the tiny dataset with the found spec (the
  step it runs is the one compared with `data`'s above): every validation image is evaluated
  once and the loss is finite, near log(10) after two small steps from the 'he' init."""
  config = tiny.get_config()
  config.data_dir = tiny_data_dir
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 2
  config.log_every_steps = 2
  config.num_devices = 2
  config.parallelism = layerwise.NAME
  config.layerwise = write(tmp_path, found_spec(config, 2))
  metrics = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert metrics['val_examples'] == 80
  assert np.isfinite(metrics['val_loss']) and 0.5 < metrics['val_loss'] / math.log(10) < 2


def test_comms_measures_a_found_spec_beside_the_five(tmp_path):
  """`python -m alexnet_jax.comms --layerwise=FILE`: the spec is measured as `layerwise` next to
  the strategies asked for, and its compiled bytes are the spec's formula (formula.spec_bytes),
  layer by layer; a file that is not a spec is refused (exit 2) before anything compiles."""
  config = small_config()
  spec = found_spec(config, 2)
  path, out = write(tmp_path, spec), str(tmp_path / 'comms')
  overrides = [f'--config.{k}={v}' for k, v in (
      ('model.conv_features', '(8, 16, 24, 24, 16)'), ('model.fc_features', '(32, 32)'),
      ('model.num_classes', 8), ('image_size', SMALL_SIZE), ('batch_size', 8),
      ('eval_batch_size', 8))]
  args = [sys.executable, '-m', 'alexnet_jax.comms', '--config=configs/default.py', *overrides,
          '--devices=2', '--strategies=data', f'--out={out}', '--steps=0']
  # XLA:CPU's cheaper optimisation, as FAST_COMPILE in-process: the bytes do not depend on it.
  env = dict(os.environ, XLA_FLAGS='--xla_backend_optimization_level=0 '
             '--xla_llvm_disable_expensive_passes=true')
  done = subprocess.run(args + [f'--layerwise={path}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, check=False, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(os.path.join(out, 'comms.json')) as f:
    measured = json.load(f)['strategies']
  assert set(measured) == {'data', layerwise.NAME}
  net = model_lib.make_network(config.model, config.model.num_classes)
  want = formula.spec_bytes(spec, net, config.image_size, config.batch_size)
  got = measured[layerwise.NAME]['bytes_per_step_by_layer']
  assert sum(want.values()) > 0
  for layer in strategies.LAYERS:
    assert got.get(layer, 0.0) == pytest.approx(want[layer]), layer
  bad = subprocess.run(args + [f'--layerwise={tmp_path}/none.toml'], cwd=ROOT,
                       capture_output=True, text=True, timeout=600, check=False, env=env)
  assert bad.returncode == 2 and 'cannot read a TOML spec' in bad.stderr, bad.stderr[-2000:]
