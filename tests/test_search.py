"""The search (pods/search.py): its dynamic program is exact against brute force, under a memory
limit; its node and edge costs add up to a whole spec's cost; the candidates are the splits that
divide; and on Krizhevsky 2014's K20 machine it finds his hybrid (data-parallel convolutions,
model-parallel fully connected layers). Shapes and the cost model only: nothing is compiled."""

import itertools
import math

import jax
import numpy as np
import pytest

from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.pods import search
from alexnet_jax.pods import targets as targets_lib
from configs import paper
from reference import small_config


def brute_force(nodes, edge, capacity):
  """Every assignment of the chain, by enumeration: (seconds, bytes, choices), fastest first."""
  out = []
  for path in itertools.product(*[range(len(n)) for n in nodes]):
    t = sum(nodes[l][i][0] for l, i in enumerate(path))
    t += sum(edge(l, path[l - 1], path[l]) for l in range(1, len(path)))
    m = sum(nodes[l][i][1] for l, i in enumerate(path))
    if m <= capacity:
      out.append((t, m, path))
  return sorted(out)


@pytest.mark.parametrize('seed', range(6))
def test_the_dynamic_program_finds_what_brute_force_finds_under_a_memory_limit(seed):
  rng = np.random.default_rng(seed)
  layers, choices = 5, 4
  nodes = [[(float(rng.uniform(1, 10)), float(rng.uniform(1, 10))) for _ in range(choices)]
           for _ in range(layers)]
  edges = rng.uniform(0, 5, size=(layers, choices, choices))
  edge = lambda l, i, j: float(edges[l, i, j])
  everything = brute_force(nodes, edge, math.inf)
  # A limit that rules out the fastest assignment: the constrained optimum differs.
  capacity = everything[0][1] - 1e-9
  for limit in (math.inf, capacity):
    want = brute_force(nodes, edge, limit)
    got = search.dynamic_program(nodes, edge, limit, keep=3)
    assert got[0][2] == want[0][2] and got[0][0] == pytest.approx(want[0][0])
    assert all(m <= limit for _, m, _ in got)
  assert search.dynamic_program(nodes, edge, capacity)[0][2] != everything[0][2]
  assert search.dynamic_program(nodes, edge, 0.0) == []  # nothing fits


def k20_coster(mesh, n):
  profile = targets_lib.load('gpu-k20-pcie')
  return search.Coster(profile, mesh, jax.devices()[:n], '', 0.4, 'float32')


def test_nodes_and_edges_add_up_to_the_whole_spec_and_the_candidates_divide():
  config = small_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  mesh = (('x', 2), ('y', 2))
  coster = k20_coster(mesh, 4)
  found = search.search_mesh(net, mesh, coster, 8, config.image_size, math.inf, 4, keep=2)
  best = found['best'][0]
  # The additive cost the program reports is the spec's cost summed in one pass.
  assert best['additive_seconds'] == pytest.approx(search.additive_seconds(
      best['spec'], net, coster, 8, config.image_size, 4))
  # And no hand-written strategy on this mesh, costed the same way, beats it.
  S = layerwise.Split
  convs_fcs = lambda conv, fc, fc8: layerwise.Spec(mesh, tuple(
      (l, conv if l.startswith('conv') else fc8 if l == 'fc8' else fc) for l in strategies.LAYERS))
  five = {'data': convs_fcs(S(('x', 'y')), S(('x', 'y')), S(('x', 'y'))),
          'hybrid': convs_fcs(S(('x', 'y')), S(tower='x', out=('y',)), S(('y',), 'x')),
          'towers_data': convs_fcs(S(('x',), 'y'), S(('x',), 'y'), S(('x',), 'y'))}
  for name, spec in five.items():
    assert not layerwise.problems(spec, net)
    assert best['additive_seconds'] <= search.additive_seconds(
        spec, net, coster, 8, config.image_size, 4) * (1 + 1e-9), name
  # 15 of the 2 x 2 mesh's splits for conv3 (no LRN there), fewer for conv1 (LRN: no out).
  assert found['candidates']['conv3'] > found['candidates']['conv1'] > 0
  # Splits the net cannot run are refused with why: both towers' outputs split on one device,
  # and conv1's channels split under LRN.
  assert 'needs tower=' in ' '.join(found['refused']['fc8'])
  assert 'LRN reads neighbouring channels' in ' '.join(found['refused']['conv1'])
  # A batch of 6 does not split over 4: no candidate splits it over both axes.
  only, _ = search.candidates(net, mesh, 'conv3', 6)
  assert only and all(math.prod(dict(mesh)[a] for a in s.batch) in (1, 2) for s in only)


def test_on_krizhevskys_k20s_it_finds_his_hybrid():
  """Krizhevsky 2014 on 8 K20s over PCIe: convolutions data-parallel (their weights are small,
  their activations large), fully connected layers model-parallel (fc6-fc8 hold 96% of the
  weights, while the activations they read are 9216 + 4096 + 4096 per image)."""
  config = paper.get_config()
  net = model_lib.make_network(config.model, config.model.num_classes)
  best = None
  for mesh in search.meshes(8):
    found = search.search_mesh(net, mesh, k20_coster(mesh, 8), 128 * 8, config.image_size,
                               5e9, 4, keep=1)
    if found['best'] and (best is None or found['best'][0]['additive_seconds']
                          < best['additive_seconds']):
      best = found['best'][0]
  splits = dict(best['spec'].layers)
  for layer in strategies.CONV_LAYERS:
    assert splits[layer].batch and not splits[layer].channels, (layer, splits[layer])
  for layer in ('fc6', 'fc7'):
    assert splits[layer].channels, (layer, splits[layer])
