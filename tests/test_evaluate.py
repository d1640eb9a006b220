"""alexnet_jax.evaluate: members and the ensemble against NumPy, any strategy, refusals."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from alexnet_jax.core import train
from alexnet_jax.paper import evaluate
from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3  # enough for three different networks; the assertions are equalities, not accuracies


def _tiny(data_dir, seed, **model):
  c = tiny.get_config()
  c.data_dir = data_dir
  c.seed = seed
  c.num_train_steps = c.eval_every_steps = c.checkpoint_every_steps = c.log_every_steps = STEPS
  c.model.update(model)
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tiny_data_dir):
  """Three tiny runs of seeds 0, 1, 2 (towers, 2 devices): (workdirs, their final evaluations)."""
  root = tmp_path_factory.mktemp('evaluate_runs')
  workdirs, finals = [], []
  for seed in range(3):
    workdir = str(root / f'seed{seed}')
    finals.append(train.train_and_evaluate(_tiny(tiny_data_dir, seed), workdir))
    workdirs.append(workdir)
  return workdirs, finals


@pytest.fixture(scope='module')
def ensemble(runs, tmp_path_factory):
  out = str(tmp_path_factory.mktemp('ensemble'))
  return evaluate.evaluate_workdirs(runs[0], out=out), out


def _top_k(probs, labels, k):
  """NumPy: the label among the k largest, a tie counted against it (steps.top_k_correct)."""
  label_prob = probs[np.arange(len(labels)), labels]
  return float(np.mean((probs >= label_prob[:, None]).sum(-1) - 1 < k))


def _check_against_numpy(result, out):
  """Every row of evaluation.json equals top-1/top-5 recomputed from the saved outputs."""
  saved = json.load(open(os.path.join(out, 'evaluation.json')))
  assert saved['members'] == json.loads(json.dumps(result['members']))
  labels = np.load(os.path.join(out, 'labels.npy'))
  assert len(labels) == saved['examples'] == 80  # synthetic_shapes/tiny validation, each once
  all_probs = []
  for member in saved['members']:
    probs = np.load(os.path.join(out, member['probs_file']))
    assert probs.shape == (80, 10)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    all_probs.append(probs.astype(np.float64))
    assert member['top1'] == _top_k(probs, labels, 1)
    assert member['top5'] == _top_k(probs, labels, 5)
    assert member['top1_error'] == pytest.approx(1 - member['top1'])
  mean = np.mean(all_probs, axis=0)
  assert saved['ensemble']['top1'] == _top_k(mean, labels, 1)
  assert saved['ensemble']['top5'] == _top_k(mean, labels, 5)
  table = open(os.path.join(out, 'evaluation.md')).read()
  assert table.count('\n| ') == len(saved['members']) + 2  # header, members, ensemble
  return all_probs, labels


def test_members_and_ensemble_equal_numpy_from_the_saved_outputs(runs, ensemble):
  result, out = ensemble
  all_probs, _ = _check_against_numpy(result, out)
  assert [m['seed'] for m in result['members']] == [0, 1, 2]
  assert not np.allclose(all_probs[0], all_probs[1])  # three different networks
  for member, final in zip(result['members'], runs[1]):
    # The same checkpoint scored by training's own evaluation (train.evaluate, centre crop).
    assert member['step'] == STEPS
    assert member['top1'] == pytest.approx(final['val_top1'], abs=1e-6)
    assert member['top5'] == pytest.approx(final['val_top5'], abs=1e-6)
    assert member['loss'] == pytest.approx(final['val_loss'], rel=1e-4)


def test_a_towers_checkpoint_evaluates_the_same_under_data_on_other_device_counts(runs, ensemble,
                                                                                  tmp_path):
  result, out = ensemble
  assert (result['members'][0]['parallelism'], result['members'][0]['num_devices']) == ('towers', 2)
  towers = np.load(os.path.join(out, result['members'][0]['probs_file']))
  for num_devices in (1, 4):
    other = evaluate.evaluate_workdirs(runs[0][:1], out=str(tmp_path / str(num_devices)),
                                       parallelism='data', num_devices=num_devices)
    member = other['members'][0]
    assert (member['parallelism'], member['num_devices']) == ('data', num_devices)
    probs = np.load(os.path.join(other['out'], member['probs_file']))
    np.testing.assert_allclose(probs, towers, atol=2e-6)
    assert 'ensemble' not in other


def _evaluate_cli(*args):
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)  # the command finds its devices by itself
  return subprocess.run([sys.executable, '-m', 'alexnet_jax.evaluate', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_the_command_averages_ten_patch_outputs(runs, tmp_path):
  out = str(tmp_path / 'ten')
  proc = _evaluate_cli(*[f'--workdir={w}' for w in runs[0][:2]], '--crops=ten', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '2 networks (softmax averaged)' in proc.stdout and 'top-5 error' in proc.stdout
  saved = json.load(open(os.path.join(out, 'evaluation.json')))
  assert saved['crops'] == 'ten'
  _check_against_numpy(saved, out)


def test_another_model_config_is_refused_naming_the_field(runs, tmp_path, tiny_data_dir):
  other = str(tmp_path / 'narrow')
  config = _tiny(tiny_data_dir, 0, fc_features=(64, 64))
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 1
  train.train_and_evaluate(config, other)
  proc = _evaluate_cli(f'--workdir={runs[0][0]}', f'--workdir={other}',
                       f'--out={tmp_path / "out"}')
  assert proc.returncode == 2, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'config.model.fc_features' in errors[0], proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / 'out')  # refused before anything was evaluated


def test_a_missing_workdir_or_checkpoint_is_refused_with_what_to_do(runs, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  proc = _evaluate_cli(f'--workdir={empty}')
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1].startswith('error: No checkpoint in')
  assert 'python -m alexnet_jax.main' in proc.stderr
  with pytest.raises(evaluate.EvaluateError, match='does not exist'):
    evaluate.evaluate_workdirs([str(tmp_path / 'nowhere')])
  with pytest.raises(evaluate.EvaluateError, match=r'No checkpoint 7 .*steps are \[3\]'):
    evaluate.evaluate_workdirs(runs[0][:1], step=7)


def test_a_strategy_that_cannot_run_here_falls_back_to_data_unless_asked_for(tiny_data_dir):
  config = _tiny(tiny_data_dir, 0)
  config.parallelism, config.num_devices = 'towers_data', 16  # this process has 8 devices
  run = evaluate.build_run(config, explicit=False)
  assert (run.config.parallelism, len(run.devices)) == ('data', 8)
  with pytest.raises(evaluate.EvaluateError, match='towers_data'):
    evaluate.build_run(config, explicit=True)
