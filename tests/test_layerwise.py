"""Per-layer partitionings from a spec (core/layerwise.py): the five hand-written strategies
written as specs compile to their hand-written bytes, layer by layer; specs that mix every kind
of split compute `data`'s loss, logits and gradients on 2 and 4 devices, and compile to the
bytes of the spec's formula; specs the net cannot run are refused with what to change."""

import functools
import os

import jax
import numpy as np
import pytest

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import steps
from alexnet_jax.core import strategies
from alexnet_jax.program import analysis, formula, hlo
from reference import FAST_COMPILE, initial_params, rel_err, small_config

S = layerwise.Split
# Every kind of split and every kind of resharding between neighbours: batch over one axis and
# over both, towers, output neurons and classes, sharded parameters, a layer computed whole on
# every device (conv4 and fc8 on 2), gathers over axes the next layer uses and over axes it
# does not, and slices of an activation that every device holds.
MIXED = {
    2: layerwise.Spec((('tower', 2),), (
        ('conv1', S(batch=('tower',))), ('conv2', S(tower='tower')),
        ('conv3', S(batch=('tower',), params='sharded')), ('conv4', S()),
        ('conv5', S(tower='tower')), ('fc6', S(batch=('tower',))),
        ('fc7', S(tower='tower')), ('fc8', S()))),
    4: layerwise.Spec((('tower', 2), ('block', 2)), (
        ('conv1', S(batch=('tower', 'block'))), ('conv2', S(batch=('block',), tower='tower')),
        ('conv3', S(batch=('tower', 'block'), params='sharded')), ('conv4', S(batch=('block',))),
        ('conv5', S(batch=('block', 'tower'))), ('fc6', S(tower='tower', out=('block',))),
        ('fc7', S(batch=('block',), params='sharded')),
        ('fc8', S(tower='tower', out=('block',))))),
}


def write(tmp_path, spec) -> str:
  path = os.path.join(tmp_path, 'spec.toml')
  with open(path, 'w') as f:
    f.write(layerwise.to_toml(spec, 'a test spec'))
  return path


@functools.lru_cache(maxsize=None)
def grad_program(parallelism: str, num_devices: int, path: str = '', num_towers: int = 2):
  """(loss, logits, gradients, compiled bytes per layer, collective kinds per layer) of the
  loss and gradient program of a strategy on small_config's net, dropout on."""
  config = small_config(num_towers=num_towers)
  net = model_lib.make_network(config.model, config.model.num_classes)
  strategy = layerwise.make_strategy(parallelism, net, num_devices=num_devices, spec_path=path)
  params = initial_params(num_towers)
  images = np.random.default_rng(1).normal(size=(8, 67, 67, 3)).astype(np.float32) * 50
  labels = np.arange(8) % config.model.num_classes
  keep = model_lib.dropout_masks(jax.random.key(7), 8, (64, 64), config.model.dropout_rate)

  def loss(p):
    logits = strategy.forward(p, images, keep)
    return steps.cross_entropy(logits, labels).mean(), logits

  placed = jax.device_put(params, strategy.param_sharding(params))
  compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(placed).compile(FAST_COMPILE)
  (value, logits), grads = compiled(placed)
  leaves = {layer: [(a.shape, a.sharding.shard_shape(a.shape)) for a in leaf.values()]
            for layer, leaf in placed.items()}
  found = hlo.parse_collectives(compiled.as_text(), strategy.num_devices, leaves)
  by_layer = hlo.bytes_by_layer(found)
  kinds = {l: {c.kind for c in found if c.layer == l} for l in strategies.LAYERS}
  return (float(value), np.asarray(logits), jax.tree.map(np.asarray, grads),
          {l: by_layer.get(l, 0.0) for l in strategies.LAYERS}, kinds)


@pytest.mark.parametrize('name,num_devices,num_towers', [
    ('towers', 2, 2), ('data', 4, 2), ('hybrid', 4, 2), ('towers_data', 4, 2), ('fsdp', 4, 2),
    ('hybrid', 2, 1)])
def test_the_five_as_specs_compile_to_their_hand_written_bytes(tmp_path, name, num_devices,
                                                               num_towers):
  """The spec's program moves, layer by layer, the bytes of the hand-written formula
  (formula.analytic_bytes, which test_comms holds the hand-written programs to), with the
  collectives the hand-written strategy uses there (analysis.expected_kinds)."""
  spec = layerwise.hand_written(name, num_devices, num_towers)
  config = small_config(num_towers=num_towers)
  net = model_lib.make_network(config.model, config.model.num_classes)
  hand = formula.analytic_bytes(name, num_devices, config.batch_size,
                                formula.layer_table(net, config.image_size), num_towers=num_towers)
  assert formula.spec_bytes(spec, net, config.image_size, config.batch_size) == pytest.approx(hand)
  *_, got, kinds = grad_program('layerwise', num_devices, write(tmp_path, spec), num_towers)
  assert got == pytest.approx(hand) and sum(got.values()) > 0
  for layer in strategies.LAYERS:
    assert kinds[layer] <= analysis.expected_kinds(name, layer), (layer, kinds[layer])


@pytest.mark.parametrize('num_devices', [2, 4])
def test_a_mixed_spec_computes_data_and_compiles_to_its_formula(tmp_path, num_devices):
  """The same loss, logits and gradients as `data` (dropout on). Both programs sum the same
  float32 terms in different orders, so they differ by rounding: 1e-5 relative, as every
  strategy against the towers in test_strategies.py. Its bytes are the spec's formula."""
  spec = MIXED[num_devices]
  loss, logits, grads, got, _ = grad_program('layerwise', num_devices, write(tmp_path, spec))
  want_loss, want_logits, want_grads, *_ = grad_program('data', 2)
  assert rel_err(loss, want_loss) <= 1e-5 and rel_err(logits, want_logits) <= 1e-5
  for layer in strategies.LAYERS:
    for what in ('kernel', 'bias'):
      assert np.abs(want_grads[layer][what]).max() > 0
      assert rel_err(grads[layer][what], want_grads[layer][what]) <= 1e-5, (layer, what)
  config = small_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  by_spec = formula.spec_bytes(spec, net, config.image_size, config.batch_size)
  assert all(got[l] > 0 for l in strategies.LAYERS) and got == pytest.approx(by_spec)


def test_the_spec_round_trips_through_toml(tmp_path):
  for spec in (*MIXED.values(), layerwise.hand_written('hybrid', 8)):
    assert layerwise.load(write(tmp_path, spec)) == spec


def test_specs_the_net_cannot_run_are_refused_with_what_to_change(tmp_path):
  net = model_lib.make_network(small_config().model, 8)
  mesh = (('tower', 2), ('block', 2))
  every = lambda split: layerwise.Spec(mesh, tuple((l, split) for l in strategies.LAYERS))
  cases = {
      'not in the mesh': every(S(batch=('data',))),
      'an axis splits two things at once': every(S(batch=('tower',), tower='tower')),
      'needs tower=': every(S(out=('block',))),
      'LRN reads neighbouring channels': every(S(tower='tower', out=('block',))),
      'batch is empty': every(S(tower='tower', params='sharded')),
  }
  for words, spec in cases.items():
    assert any(words in p for p in layerwise.problems(spec, net)), words
  assert layerwise.problems(MIXED[4], net) == []
  assert 'has 4 devices, not config.num_devices=2' in layerwise.problems(MIXED[4], net, 2)[0]
  with pytest.raises(layerwise.SpecError, match='needs a table for each of'):
    layerwise.from_dict({'mesh': {'data': 2}, 'layers': {'conv1': {}}})
  with pytest.raises(layerwise.SpecError, match='--config.layerwise=FILE'):
    layerwise.load('')
  config = small_config()
  config.parallelism, config.layerwise = 'layerwise', os.path.join(tmp_path, 'none.toml')
  found = config_lib.problems(config, jax.devices())
  assert any('cannot read a TOML spec' in p for p in found), found
  config.layerwise, config.num_devices = write(tmp_path, MIXED[4]), 0
  assert config_lib.problems(config, jax.devices()) == []
  assert run_lib.build(config).strategy.num_devices == 4


def test_mesh_replica_groups_with_a_comma_before_the_device_ids_are_read():
  """XLA writes `mesh[...], device_ids=(...) {axes}` for a combined all-reduce of a 2-D mesh
  (hybrid's fc8 gradient over `block`); the groups are along the named axis, built by hand."""
  attrs = ("replica_groups=mesh['axis_0'=2,'axis_1'=2], device_ids=([2,2]T(1,0)) {'axis_0'}, "
           "use_global_device_ids=true")
  groups, _ = hlo.expand_groups(attrs, 4)
  ids = np.arange(4).reshape(2, 2).T  # ids[axis_0, axis_1]
  assert sorted(groups) == sorted([ids[:, j].tolist() for j in range(2)])
