"""The paper's figures from a real (short) tiny run: the PNGs, the colour score, the neighbours."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest

from alexnet_jax.paper import figures
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import strategies
from conftest import prepared_input
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 10


@pytest.fixture(scope='module')
def run(tmp_path_factory, run_main, tiny_data_dir):
  """A real tiny run of `main`: 10 steps, a checkpoint, metrics with train and eval lines.
  (Its train and eval steps are test_main's, so the shared compilation cache serves both.)"""
  workdir = str(tmp_path_factory.mktemp('figures_run'))
  config = tiny.get_config()
  config.data_dir = tiny_data_dir
  config.num_train_steps = STEPS
  config.log_every_steps = 5
  proc = run_main(workdir, f'--config.num_train_steps={STEPS}',
                  '--config.log_every_steps=5', data_dir=config.data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir, config


@pytest.fixture(scope='module')
def made(run):
  """`python -m alexnet_jax.figures` on the run, in a subprocess."""
  workdir, config = run
  proc = subprocess.run(
      [sys.executable, '-m', 'alexnet_jax.figures', f'--workdir={workdir}',
       f'--data_dir={config.data_dir}', '--num_train_images=100'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'figures', 'figures.json')) as f:
    return proc, json.load(f)


def chroma_by_brightness(w):
  """colour_specificity another way: 1 - the variance of the per-pixel grey level (times 3
  channels) over the total variance, for kernels [H, W, 3, N]."""
  w = np.asarray(w, np.float64)
  grey = w.mean(axis=2, keepdims=True)
  total = ((w - w.mean(axis=(0, 1, 2), keepdims=True)) ** 2).sum(axis=(0, 1, 2))
  brightness = 3 * ((grey - grey.mean(axis=(0, 1, 2), keepdims=True)) ** 2).sum(axis=(0, 1, 2))
  return 1 - brightness / total


def test_main_writes_the_four_figures_at_their_sizes(run, made):
  workdir, _ = run
  proc, result = made
  # tiny: 16 kernels a tower, one row of 16 (4 x 11 px + 2) per tower, the score text beside
  expected = {'conv1_kernels.png': (20 + 16 * 46 + 170, 10 + 14 + 2 * (14 + 46 + 10) + 14),
              'predictions.png': (20 + 4 * 200, 20 + 14 + 2 * (14 + 128 + 4 + 5 * 14 + 10)),
              'neighbours.png': (20 + 7 * 102 + 10, 20 + 14 + 5 * (102 + 28)),
              'curves.png': (900, 840)}
  assert expected['conv1_kernels.png'] == figures.kernels_size(16)
  assert expected['predictions.png'] == figures.predictions_size(8)
  assert expected['neighbours.png'] == figures.neighbours_size(5, 6)
  for name, size in expected.items():
    with Image.open(os.path.join(workdir, 'figures', name)) as image:
      assert image.format == 'PNG' and image.size == size, name
      image.load()  # decodes the whole file
      assert len(set(image.convert('RGB').getdata())) > 50, name  # drawn, not blank
  assert 'colour specificity of conv1, tower 1' in proc.stdout


def test_figures_json_matches_the_checkpoint_and_the_towers_forward(run, made):
  workdir, config = run
  _, result = made
  assert result['step'] == STEPS
  # The colour scores, recomputed from the checkpoint read with plain orbax.
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                  item_names=('state', 'meta'))  # see checkpointing.py
  params = manager.restore(STEPS, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))['state']['params']
  kernel = np.asarray(params['conv1']['kernel']) / np.asarray(config.std_rgb)[:, None]
  for t in range(2):
    want = chroma_by_brightness(kernel[t])
    assert result['colour_specificity'][f'tower{t + 1}'] == pytest.approx(want.mean(), abs=1e-6)
    np.testing.assert_allclose(result['colour_specificity']['per_kernel'][t], want, atol=1e-4)

  # The top-5 probabilities, against the paper's two-device forward (towers strategy).
  net = model_lib.make_network(config.model, config.model.num_classes)
  strategy = strategies.make_strategy('towers', net)
  builder = prepared_input(config).builder
  batch = next(prepared_input(config, builder).eval_batches())
  params = jax.device_put(params, strategy.param_sharding(params))
  probs = np.asarray(jax.nn.softmax(jax.jit(strategy.forward)(params, batch['image'], None)))
  names = builder.info.features['label'].names
  assert len(result['predictions']) == 8
  for i, entry in enumerate(result['predictions']):
    assert entry['label'] == names[batch['label'][i]]
    top5 = np.argsort(-probs[i])[:5]
    assert [c for c, _ in entry['top5']] == [names[c] for c in top5]
    np.testing.assert_allclose([p for _, p in entry['top5']], probs[i][top5], atol=1e-5)

  neighbours = result['neighbours']
  assert neighbours['train_images_scanned'] == 100  # the flag; 3 batches of 48, one padded
  assert len(neighbours['queries']) == 5
  for query in neighbours['queries']:
    assert len(query['train_indices']) == 6 and max(query['train_indices']) < 100
    assert query['distances'] == sorted(query['distances'])


def test_colour_score_ranks_grey_kernels_below_coloured_ones():
  rng = np.random.default_rng(0)
  pattern = rng.normal(size=(11, 11, 1, 32))
  grey = np.repeat(pattern, 3, axis=2) + 0.05 * rng.normal(size=(11, 11, 3, 32))
  opponent = pattern * np.array([1.0, -1.0, 0.0])[:, None]  # red against green, no brightness
  coloured = opponent + 0.3 * rng.normal(size=(11, 11, 3, 32))
  noise = rng.normal(size=(11, 11, 3, 2000))
  score = figures.colour_specificity
  assert score(grey).max() < 0.05 < 0.8 < score(coloured).min()
  assert score(np.repeat(pattern, 3, axis=2)) == pytest.approx(np.zeros(32), abs=1e-12)
  assert score(opponent) == pytest.approx(np.ones(32))
  assert score(noise).mean() == pytest.approx(2 / 3, abs=0.01)  # an untrained kernel
  np.testing.assert_allclose(score(coloured), chroma_by_brightness(coloured), rtol=1e-10)
  np.testing.assert_allclose(score(7.0 * coloured - 3.0), score(coloured), rtol=1e-10)
  assert score(np.zeros((11, 11, 3, 2))).tolist() == [0.0, 0.0]


def test_nearest_neighbour_of_an_image_in_its_own_set_is_itself(run):
  workdir, config = run
  params, step = figures.restore_params(workdir, config)
  assert step == STEPS
  builder = prepared_input(config).builder
  feature_fn = figures.make_feature_fn(config, jax.devices()[0])
  batches = lambda: figures.iterate_features(config, prepared_input(config, builder), params, feature_fn, 'validation', 80)
  val = figures.concatenate(batches())
  assert val['fc7'].shape == (80, 2 * 128) and val['image'].dtype == np.uint8
  queries = val['fc7'][::8]  # 10 of the set
  scan = figures.NeighbourScan(queries, k=3)
  for batch in batches():  # the set itself streams by as the database, in batches of 48
    scan.add(batch['fc7'], batch['image'], batch['label'])
  assert scan.seen == 80
  np.testing.assert_array_equal(scan.index[:, 0], np.arange(0, 80, 8))
  np.testing.assert_array_equal(scan.distance[:, 0], 0.0)
  np.testing.assert_array_equal(np.stack([s[0] for s in scan.images]), val['image'][::8])
  # Against brute force: every distance, sorted.
  dist = np.linalg.norm(val['fc7'][::8, None].astype(np.float64) - val['fc7'][None], axis=-1)
  np.testing.assert_allclose(scan.distance, np.sort(dist, axis=1)[:, :3], rtol=1e-6)
  assert np.sort(dist, axis=1)[:, 1].min() > 0  # distinct images, distinct features


def test_a_workdir_without_a_run_is_refused_and_nothing_written(tmp_path):
  with pytest.raises(figures.FiguresError, match='config.json'):
    figures.make_figures(str(tmp_path))
  (tmp_path / 'config.json').write_text(tiny.get_config().to_json())
  with pytest.raises(figures.FiguresError, match='No checkpoint'):
    figures.make_figures(str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ['config.json']
