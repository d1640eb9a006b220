"""The benchmark: its FLOP count against the paper's layer table, its command line end to end,
one-device runs (a single GPU), and the bfloat16 and float16 compute options against float32."""

import json
import math
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.runtime import command
from alexnet_jax.perf import bench
from configs import tiny
import reference  # the network helper (tests/ is on sys.path under pytest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = ('images_per_second', 'compile_seconds', 'peak_memory_bytes', 'model_flop_rate',
          'matmul_flop_rate', 'ratio')


def test_flops_of_the_paper_network_match_the_layer_table_by_hand():
  # PAPER.md's table, both towers: output H x W x C times the kernel's K x K x input channels.
  conv1 = 55 * 55 * 96 * (11 * 11 * 3)
  conv2 = 27 * 27 * 256 * (5 * 5 * 48)  # each tower reads its own 48 conv1 maps
  conv3 = 13 * 13 * 384 * (3 * 3 * 256)  # both towers' conv2
  conv4 = 13 * 13 * 384 * (3 * 3 * 192)
  conv5 = 13 * 13 * 256 * (3 * 3 * 192)
  fc6, fc7, fc8 = 9216 * 4096, 4096 * 4096, 4096 * 1000
  forward = conv1 + conv2 + conv3 + conv4 + conv5 + fc6 + fc7 + fc8
  assert forward == 724_406_816  # "about 724 million multiply-adds" (PAPER.md)
  net = reference.network()
  assert model_lib.layer_macs(net, 224) == {
      'conv1': conv1, 'conv2': conv2, 'conv3': conv3, 'conv4': conv4, 'conv5': conv5,
      'fc6': fc6, 'fc7': fc7, 'fc8': fc8}
  # Forward + backward (input and weight gradients), 2 FLOPs a multiply-add; conv1 has no input
  # gradient to compute.
  assert bench.train_flops_per_image(net, 224) == 2 * (3 * forward - conv1)
  # Caffe's 227 crop without padding gives the same network.
  assert bench.train_flops_per_image(net, 227) == 2 * (3 * forward - conv1)


def test_bench_command_writes_every_field_for_towers_and_data(tmp_path):
  out = tmp_path / 'bench'
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.bench', '--config=configs/tiny.py',
       '--config.batch_size=8', '--strategies=towers,data', '--devices=2', '--steps=2',
       '--warmup=1', '--matmul_size=256', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((out / 'bench.json').read_text())
  assert sorted(result['strategies']) == ['data', 'towers']
  flops = bench.train_flops_per_image(
      model_lib.make_network(tiny.get_config().model, 10), tiny.get_config().image_size)
  for name, entry in result['strategies'].items():
    for field in FIELDS:
      assert math.isfinite(entry[field]) and entry[field] > 0, (name, field, entry[field])
    assert entry['devices'] == 2 and entry['batch_size'] == 8, name
    assert entry['train_flops_per_image'] == flops
    assert entry['model_flop_rate'] == entry['images_per_second'] * flops
    assert entry['ratio'] == entry['model_flop_rate'] / entry['matmul_flop_rate']
    assert math.isfinite(entry['final_loss'])
  assert '| towers | 2 | 8 | float32 |' in proc.stdout  # the README table's rows


def test_data_runs_on_one_device_and_towers_is_skipped_with_the_reason():
  """What a single GPU gets: `--devices=1`."""
  config = tiny.get_config()
  config.batch_size = 4
  result = bench.run(config, ['towers', 'data'], num_devices=1, steps=1, warmup=0,
                     matmul_size=128, log=lambda *_: None)
  assert 'exactly 2 devices' in result['skipped']['towers']
  entry = result['strategies']['data']
  assert entry['devices'] == 1 and entry['mesh'] == {'data': 1}
  assert entry['images_per_second'] > 0 and entry['matmul_flop_rate'] > 0


def test_a_config_no_strategy_can_run_is_refused_not_reported_as_skipped():
  """Exit 2's refusal (runtime/command.py), naming each strategy and its reason, when the
  config's check refuses it for every strategy asked for."""
  config = tiny.get_config()
  config.learning_rate = -1.0
  with pytest.raises(command.Refused) as info:
    bench.run(config, ['towers', 'data'], num_devices=2, steps=1, warmup=0, matmul_size=128,
              log=lambda *_: None)
  message = str(info.value)
  assert message.startswith('none of the strategies asked for can run here')
  assert 'towers: ' in message and 'data: ' in message and 'learning_rate=-1.0' in message
  assert command.exit_code(info.value) == 2


def _first_step(dtype: str, params):
  config = tiny.get_config()
  config.model.dtype = dtype
  config.batch_size = 8
  config.parallelism, config.num_devices = 'towers', 2
  run = run_lib.build(config)
  state, batch = run.state_from_params(params), run.synthetic_batch(config.seed)
  hlo = run.train_step.lower(state, batch).as_text()
  state, metrics = run.train_step(state, batch)
  return state, metrics, hlo


def test_bfloat16_compute_keeps_float32_state_and_a_close_loss():
  config = tiny.get_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  params = jax.tree.map(np.asarray, jax.jit(
      lambda k: model_lib.init_params(net, k, config.image_size))(jax.random.key(0)))
  state32, metrics32, hlo32 = _first_step('float32', params)
  state16, metrics16, hlo16 = _first_step('bfloat16', params)
  # The bfloat16 program really convolves in bfloat16; the float32 one has no bfloat16 at all.
  assert 'bf16' in hlo16 and 'bf16' not in hlo32
  for leaf in jax.tree.leaves((state16.params, state16.opt_state)):
    if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  loss32, loss16 = float(metrics32['loss']), float(metrics16['loss'])
  assert loss32 > 1.0  # ten classes at init: about log(10), not a trivial value
  assert abs(loss16 - loss32) <= 0.02 * loss32, (loss16, loss32)
  # The updates agree to bfloat16's precision, and are not zero.
  w32, w16 = (np.asarray(s.params['fc6']['kernel']) - params['fc6']['kernel']
              for s in (state32, state16))
  assert np.abs(w32).max() > 0
  assert np.linalg.norm(w16 - w32) <= 0.1 * np.linalg.norm(w32)


def test_float16_compute_keeps_float32_state_and_a_loss_within_its_rounding():
  """float16 means what bfloat16 means (activations and products in it; parameters, gradients,
  momentum, logits and the loss float32), with an 11-bit significand: unit roundoff
  u = 2**-11. Each of the 8 weighted layers rounds its input and its output to float16, a
  relative error of at most 2u each to first order, so the logits, and the loss (about linear
  in them once they are large: here about 124), differ from float32's by at most
  2 x 8 x u = 16u = 0.78 % relatively; fc6's update, from gradients that pass back through the
  same layers, by as much. (Measured on one CPU: 0.022 % and 0.067 %; bfloat16, u = 2**-8, gives
  about 8 times that, as its 3 fewer bits say.)"""
  config = tiny.get_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  params = jax.tree.map(np.asarray, jax.jit(
      lambda k: model_lib.init_params(net, k, config.image_size))(jax.random.key(0)))
  state32, metrics32, hlo32 = _first_step('float32', params)
  state16, metrics16, hlo16 = _first_step('float16', params)
  # The float16 program really computes in float16 (StableHLO's f16, not bf16).
  half = re.compile(r'(?<![a-z])f16\b|x f16>|xf16>')
  assert half.search(hlo16) and not half.search(hlo32)
  for leaf in jax.tree.leaves((state16.params, state16.opt_state)):
    if hasattr(leaf, 'dtype') and jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32, leaf.dtype
  loss32, loss16 = float(metrics32['loss']), float(metrics16['loss'])
  assert math.isfinite(loss16) and loss32 > 1.0
  bound = 2 * 8 * 2.0 ** -11
  assert abs(loss16 - loss32) <= bound * loss32, (loss16, loss32)
  w32, w16 = (np.asarray(s.params['fc6']['kernel']) - params['fc6']['kernel']
              for s in (state32, state16))
  assert np.abs(w32).max() > 0
  assert np.linalg.norm(w16 - w32) <= bound * np.linalg.norm(w32)
