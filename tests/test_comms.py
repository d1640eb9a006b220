"""The communication report: the measured bytes of the real train step against the formula from
the layer table (the HLO parser's own tests: test_hlo.py)."""

import functools
import json
import os

import pytest

from alexnet_jax.perf import comms
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from alexnet_jax.program import formula
import reference  # the shared test helpers (tests/ is on sys.path under pytest)


@functools.lru_cache(maxsize=None)
def measured(name, num_devices, batch_size, num_towers=2):
  config = reference.small_config(batch_size, num_towers)
  return comms.measure(config, name, num_devices, steps=0,
                       compiler_options=reference.FAST_COMPILE,
                       params=reference.initial_params(num_towers))


@pytest.mark.parametrize('name,num_devices', [('towers', 2), ('data', 2)])
@pytest.mark.parametrize('batch_size', [8, 16])
def test_measured_bytes_equal_the_formula(name, num_devices, batch_size):
  """towers: the activations crossing at conv3, fc6, fc7, fc8, forward and backward; data: the
  all-reduce of every gradient. Exactly, layer by layer, for two batch sizes."""
  entry = measured(name, num_devices, batch_size)
  m, a = entry['bytes_per_step_by_layer'], entry['analytic_bytes_per_step_by_layer']
  for layer in comms.LAYERS:
    assert m.get(layer, 0.0) == a[layer], layer
  assert entry['unexplained_bytes'] == 0
  assert 0 < m[comms.LOSS] <= entry['loss_metrics_bound']
  # By hand for the small network (8, 16, 24, 24, 16 kernels, fc 32, 32, 8 classes, 67 pixels):
  if name == 'towers':  # per tower: pool2 3x3x16, pool5 1x1x16, fc6 32, fc7 32; f32, fwd + bwd
    assert entry['model_bytes_per_step'] == 2 * 4 * batch_size * (3 * 3 * 16 + 16 + 32 + 32)
  else:  # one all-reduce of all parameters over 2 devices: 2 (2-1)/2 * 4 bytes * count
    count = sum(formula.layer_table(reference.network(
        conv_features=(8, 16, 24, 24, 16), fc_features=(32, 32), classes_per_tower=4),
        67)[layer]['params'] for layer in comms.LAYERS)
    assert entry['model_bytes_per_step'] == 4 * count


@pytest.mark.parametrize('name,num_devices', [('data', 4), ('hybrid', 4), ('towers_data', 4),
                                              ('fsdp', 4)])
def test_nothing_unexplained(name, num_devices):
  entry = measured(name, num_devices, 8)
  assert entry['unexplained_bytes'] == 0
  assert all(c['layer'] != '?' for c in entry['collectives'])
  for layer, bytes_ in entry['analytic_bytes_per_step_by_layer'].items():
    assert entry['bytes_per_step_by_layer'].get(layer, 0.0) == bytes_, layer
  assert entry['bytes_per_step_by_layer'].get(comms.LOSS, 0.0) <= entry['loss_metrics_bound']


@pytest.mark.parametrize('num_devices', [1, 2, 4])
def test_one_tower_hybrid_bytes_equal_the_formula(num_devices):
  """Krizhevsky 2014's one-tower hybrid: the conv gradients all-reduced over all N, and at fc6,
  fc7, fc8 the one tower's features of the whole batch gathered (forward) and their gradients
  scattered (backward), nothing else; exactly the formula with num_towers=1, layer by layer.
  One device (the one-GPU baseline) moves nothing."""
  n, batch = num_devices, 8
  entry = measured('hybrid', n, batch, num_towers=1)
  config = reference.small_config(batch, num_towers=1)
  table = formula.layer_table(model_lib.make_network(config.model, config.model.num_classes),
                            config.image_size)
  want = formula.analytic_bytes('hybrid', n, batch, table, num_towers=1)
  assert entry['analytic_bytes_per_step_by_layer'] == want  # the report knows it is one tower
  m = entry['bytes_per_step_by_layer']
  for layer in comms.LAYERS:
    assert m.get(layer, 0.0) == want[layer], layer
  assert entry['unexplained_bytes'] == 0
  assert m.get(comms.LOSS, 0.0) <= entry['loss_metrics_bound']
  kinds = {}
  for c in entry['collectives']:
    kinds.setdefault(c['layer'], set()).add(c['kind'])
  for layer in comms.LAYERS:
    if n == 1:
      assert layer not in kinds, layer
    elif layer.startswith('conv'):
      assert kinds[layer] == {'all-reduce'}, layer  # the replicated conv weights' gradients
    else:  # no fc gradient all-reduce: fc8 too is split by class
      assert kinds[layer] == {'all-gather', 'reduce-scatter'}, layer
  # By hand for the one-tower small network (8, 16, 24, 24, 32 kernels, fc 64, 64, 8 classes):
  # pool5 1x1x32, fc6 64, fc7 64 gathered and scattered; every conv parameter all-reduced.
  convs = sum(table[layer]['params'] for layer in strategies.CONV_LAYERS)
  assert sum(want.values()) == 2 * (n - 1) / n * 4 * (convs + batch * (32 + 64 + 64))


def test_paper_formula_volumes():
  """The paper's numbers: data parallelism all-reduces 60,965,224 parameters (244 MB on 2
  devices); the towers move a few hundred kB per image."""
  table = formula.layer_table(reference.network(), 224)
  assert sum(row['params'] for row in table.values()) == 60_965_224
  data = sum(formula.analytic_bytes('data', 2, 128, table).values())
  assert data == 4 * 60_965_224
  towers = sum(formula.analytic_bytes('towers', 2, 1, table).values())
  assert towers == 2 * 4 * (13 * 13 * 128 + 6 * 6 * 128 + 2048 + 2048)  # 226 kB per image
  assert (formula.analytic_bytes('hybrid', 4, 128, table)
          == formula.analytic_bytes('hybrid', 4, 128, table, num_towers=2))  # the default


def test_paper_one_tower_hybrid_formula():
  """The paper's one-GPU net (59,798,312 parameters) under Krizhevsky 2014's hybrid: conv
  gradients all-reduced, the whole batch's pool5 (6 x 6 x 256), fc6 and fc7 (4096 each) gathered
  and scattered over n; nothing read across towers at conv3, no fc8 gradient all-reduce."""
  net = model_lib.make_network(reference.model_config(num_towers=1), 1000)
  table = formula.layer_table(net, 224)
  assert sum(row['params'] for row in table.values()) == 59_798_312
  assert {layer: row['reads_per_tower'] for layer, row in table.items() if row['reads_per_tower']
          } == {'fc6': 6 * 6 * 256, 'fc7': 4096, 'fc8': 4096}
  convs = sum(table[layer]['params'] for layer in strategies.CONV_LAYERS)
  for n in (1, 2, 8):
    got = formula.analytic_bytes('hybrid', n, 128, table, num_towers=1)
    assert sum(got.values()) == 2 * (n - 1) / n * 4 * (convs + 128 * (9216 + 4096 + 4096))
    assert got['fc8'] == 2 * (n - 1) / n * 128 * 4 * 4096
  assert formula.analytic_bytes('data', 2, 128, table, num_towers=1)['fc8'] == (
      4 * table['fc8']['params'])
  with pytest.raises(ValueError, match='no formula'):
    formula.analytic_bytes('towers', 2, 128, table, num_towers=1)


def test_report_files(tmp_path):
  config = reference.small_config(8)
  result = comms.report(config, 2, steps=1, warmup=1, strategies=['towers', 'towers_data'],
                        log=lambda _: None, compiler_options=reference.FAST_COMPILE,
                        params=reference.initial_params())
  comms.write(result, str(tmp_path))
  data = json.load(open(os.path.join(tmp_path, 'comms.json')))
  assert {'devices', 'batch_size', 'strategies'} <= set(data)
  entry = data['strategies']['towers']
  for key in ('collectives', 'bytes_per_step', 'analytic_bytes_per_step', 'step_seconds',
              'images_per_second', 'compile_seconds', 'memory_per_device'):
    assert key in entry, key
  assert entry['step_seconds'] > 0
  md = open(os.path.join(tmp_path, 'comms.md')).read()
  assert '| towers |' in md and 'conv3' in md
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(os.path.join(tmp_path, 'comms.png')) as png:
    assert png.format == 'PNG' and png.size[0] == 900 and png.size[1] > 100
    assert len(png.getcolors(maxcolors=4096) or []) > 3  # bars in several colours, not blank


def test_both_towers_executors_agree():
  """The timing comparison behind the stage-by-stage executor compares equal computations."""
  net = reference.network(conv_features=(8, 16, 24, 24, 16), fc_features=(32, 32),
                                       classes_per_tower=4)
  out = comms.time_both_towers_executors(net, 2, 67, repeats=1,
                                         compiler_options=reference.FAST_COMPILE,
                                         params=reference.initial_params())
  assert out['max_abs_difference'] <= 1e-5 * out['max_abs_value'] and out['max_abs_value'] > 0
  assert out['split_grouped_convolutions'] == 0 < out['vmapped_grouped_convolutions']
  assert out['split_seconds'] > 0 and out['vmapped_seconds'] > 0


# --- The command's config check, its alias, and what commands and libraries hold. ---

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _paper_one_tower():
  from configs import paper  # pylint: disable=g-import-not-at-top
  config = paper.get_config()
  config.model.num_towers = 1
  return config


def test_the_train_step_is_refused_only_for_the_fields_it_uses():
  """`comms --config=configs/paper.py --config.model.num_towers=1 --strategies=hybrid
  --devices=4`: the paper's evaluation batch (250) does not split over 4 batch shards, but comms
  and bench compile the train step only, so it is not theirs to refuse (the plan's
  replica_config adapts it the same way, measure.train_step_only); a training batch that does
  not split still is."""
  import jax  # pylint: disable=g-import-not-at-top
  from alexnet_jax.program import measure  # pylint: disable=g-import-not-at-top
  from alexnet_jax.runtime import command  # pylint: disable=g-import-not-at-top
  devices = jax.devices()[:4]
  config = _paper_one_tower()
  assert config.eval_batch_size == 250 and config.batch_size == 128
  assert measure.skip_reason(measure.strategy_config(config, 'hybrid', 4), devices) is None
  measured, skipped = measure.each_strategy(config, ['hybrid'], 4, lambda c: c.eval_batch_size,
                                            devices=devices, log=lambda _: None)
  assert measured == {'hybrid': 128} and not skipped
  config.batch_size = 130
  why = measure.skip_reason(measure.strategy_config(config, 'hybrid', 4), devices)
  assert why and 'config.batch_size=130 cannot be split over the 4 batch shard(s)' in why
  with pytest.raises(command.Refused, match='config.batch_size=130'):
    measure.each_strategy(config, ['hybrid'], 4, lambda c: None, devices=devices,
                          log=lambda _: None)


def test_comms_with_a_target_is_the_plan_command(tmp_path):
  """`comms --target=X ...` is `plan --target=X ...`: a flag only the plan defines is taken, and
  the plan's refusal of a target it does not know is the answer (exit 2, one line)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  out = tmp_path / 'out'
  done = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.comms', '--config=configs/tiny.py',
       '--target=no-such-target', '--devices=2', '--batch_per_replica=8', f'--out={out}'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert done.returncode == 2, done.stderr[-3000:]
  assert 'no-such-target' in done.stderr and 'Traceback' not in done.stderr
  assert 'batch_per_replica' not in done.stderr  # the plan's flag, parsed by the plan
  assert not out.exists()


def test_commands_import_no_command_and_libraries_define_no_flags():
  """A command (alexnet_jax/<name>.py) imports libraries only; the libraries of plan, comms and
  calibrate define no flags and no main."""
  import ast  # pylint: disable=g-import-not-at-top
  package = os.path.join(ROOT, 'alexnet_jax')
  commands = {n[:-3] for n in os.listdir(package) if n.endswith('.py') and n != '__init__.py'}
  for name in commands:
    with open(os.path.join(package, f'{name}.py')) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module == 'alexnet_jax':
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module.split('.')[1]] if node.module.startswith('alexnet_jax.') else []
      elif isinstance(node, ast.Import):
        names = [a.name.split('.')[1] for a in node.names if a.name.startswith('alexnet_jax.')]
      assert not set(names) & commands, (name, names)
  libraries = ['pods/' + n for n in os.listdir(os.path.join(package, 'pods')) if n.endswith('.py')]
  for path in libraries + ['perf/comms.py', 'perf/calibrate.py', 'report/write.py']:
    with open(os.path.join(package, path)) as f:
      text = f.read()
    assert 'flags.DEFINE' not in text and 'def main(' not in text and 'def cli(' not in text, path
