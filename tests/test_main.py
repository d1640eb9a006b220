"""`python -m alexnet_jax.main` end to end, in real subprocesses, on the tiny config."""

import json
import os

import numpy as np
import orbax.checkpoint as ocp
import pytest

def read_metrics(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope='module')
def data_dir(tiny_data_dir):
  return tiny_data_dir


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory, data_dir, run_main):
  workdir = str(tmp_path_factory.mktemp('tiny_run'))
  proc = run_main(workdir, data_dir=data_dir)
  return workdir, proc


def test_main_trains_tiny_config_end_to_end(tiny_run):
  workdir, proc = tiny_run
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.load(open(os.path.join(workdir, 'config.json')))
  assert config['parallelism'] == 'towers' and config['dataset'] == 'synthetic_shapes/tiny'

  records = read_metrics(workdir)
  assert all('step' in r for r in records)
  train = [r for r in records if 'loss' in r]
  evals = [r for r in records if 'val_top1' in r]
  assert [r['step'] for r in evals] == [60, 120]
  for r in evals:
    assert 0.0 <= r['val_top1'] <= r['val_top5'] <= 1.0
    assert r['val_examples'] == 80  # every validation image once
  assert train[-1]['step'] == 120
  # The loss falls: the last logged quarter is below the first.
  losses = [r['loss'] for r in train]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
  assert evals[-1]['val_top1'] > 0.15  # above chance (0.1) on 10 classes

  # Progress on the console: step, loss, images/s, ETA.
  assert 'img/s' in proc.stderr and 'ETA' in proc.stderr and 'loss' in proc.stderr


def test_checkpoint_is_a_real_orbax_checkpoint_of_the_final_state(tiny_run):
  workdir, _ = tiny_run
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                  item_names=('state', 'meta'))
  assert manager.latest_step() == 120
  restored = manager.restore(120, args=ocp.args.Composite(state=ocp.args.StandardRestore(),
                                                          meta=ocp.args.JsonRestore()))
  state, meta = restored['state'], restored['meta']
  assert int(state['step']) == 120
  kernel = np.asarray(state['params']['conv1']['kernel'])
  assert kernel.shape == (2, 11, 11, 3, 16)  # both towers, stacked
  assert np.all(np.isfinite(kernel))
  trace = state['opt_state']['inner_state'][2]['trace']['conv1']['kernel']
  assert np.abs(np.asarray(trace)).max() > 0  # the momentum buffer is saved too
  # Beside the arrays: the config, the schedule, the input position and the final evaluation.
  assert meta['step'] == 120 and meta['input']['step'] == 120
  assert meta['config']['model']['conv_features'] == [16, 32, 48, 48, 32]
  evals = [r for r in read_metrics(workdir) if 'val_top1' in r]
  assert meta['metrics']['val_top1'] == evals[-1]['val_top1']


def test_odd_class_count_is_refused_before_anything_is_written(tmp_path, data_dir, run_main):
  workdir = tmp_path / 'odd'
  proc = run_main(str(workdir), '--config.model.num_classes=9', data_dir=data_dir)
  assert proc.returncode == 2
  assert 'num_classes=9' in proc.stderr and 'even' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_paper_config_without_imagenet_says_which_files_to_put_where(tmp_path, run_main):
  workdir = tmp_path / 'paper'
  manual = tmp_path / 'manual'
  proc = run_main(str(workdir), f'--config.manual_dir={manual}', config='configs/paper.py',
                  data_dir=str(tmp_path / 'tfds'))
  assert proc.returncode == 2
  assert 'ILSVRC2012_img_train.tar' in proc.stderr and 'ILSVRC2012_img_val.tar' in proc.stderr
  assert str(manual) in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()


def test_data_parallel_run_logs_the_same_losses_as_the_towers_run(tmp_path, data_dir, tiny_run,
                                                                  run_main):
  """Same seed, same batches, same dropout units: the partitioning must not change training.
  The towers run is the module's tiny run (same config); its first two log windows (steps 1-10,
  11-20) are the data run's."""
  workdir = str(tmp_path / 'data')
  proc = run_main(workdir, '--config.parallelism=data', '--config.num_train_steps=20',
                  data_dir=data_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  data = [(r['step'], r['loss']) for r in read_metrics(workdir) if 'loss' in r]
  towers = [(r['step'], r['loss']) for r in read_metrics(tiny_run[0]) if 'loss' in r][:len(data)]
  assert [s for s, _ in data] == [s for s, _ in towers] == [10, 20]
  np.testing.assert_allclose([l for _, l in data], [l for _, l in towers], rtol=1e-4)


def test_batch_the_data_axis_cannot_split_is_refused_before_anything_is_written(tmp_path,
                                                                               data_dir, run_main):
  workdir = tmp_path / 'bad_batch'
  proc = run_main(str(workdir), '--config.parallelism=data', '--config.batch_size=33',
                  data_dir=data_dir)
  assert proc.returncode == 2
  assert 'batch_size=33' in proc.stderr and 'multiple of 2' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not workdir.exists()
