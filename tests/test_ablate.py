"""`python -m alexnet_jax.ablate` on the tiny config, in real subprocesses: every variant trained
(or evaluated) once, the table against each run's own metrics and checkpoint, and resuming."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from alexnet_jax.paper import ablate
from configs import ablations
from conftest import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The paper's five claims (dropout, which has no number in the paper, is checked without
# training, in the last test: each run costs seconds of compilation on a CPU).
VARIANTS = ('lrn', 'overlap', 'one_tower', 'pca', 'tencrop')
TRAINED = ('baseline', 'lrn', 'overlap', 'one_tower', 'pca')
# Few steps and one evaluation batch per run: the test is about the runner, not the numbers.
OVERRIDES = {'num_train_steps': 4, 'log_every_steps': 2, 'eval_every_steps': 4,
             'checkpoint_every_steps': 4, 'num_eval_examples': 48}


def run_ablate(workdir, data_dir, *extra):
  cmd = [sys.executable, '-m', 'alexnet_jax.ablate', '--config=configs/ablations.py:tiny',
         f'--workdir={workdir}', f'--variants={",".join(VARIANTS)}',
         f'--config.data_dir={data_dir}'] + [f'--config.{k}={v}' for k, v in OVERRIDES.items()]
  # The test is about the runner: the tests' fast-compile flags (the numbers barely move; they
  # are not checked against the paper).
  return subprocess.run(cmd + list(extra), cwd=ROOT, env=subprocess_env(), capture_output=True,
                        text=True, timeout=900)


def same_config(data_dir, **changes) -> ml_collections.ConfigDict:
  """The config the subprocesses run (for calling the runner in this process)."""
  config = ablations.get_config('tiny')
  config.data_dir = data_dir
  for k, v in {**OVERRIDES, **changes}.items():
    config[k] = v
  return config


def last_eval(run_dir):
  with open(os.path.join(run_dir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if 'val_top1' in r][-1]


@pytest.fixture(scope='module')
def ablation(tmp_path_factory):
  """--only=lrn first (one run, no table), then the whole command (lrn is not retrained)."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  workdir = str(tmp_path_factory.mktemp('ablations'))
  only = run_ablate(workdir, data_dir, '--only=lrn')
  lrn_metrics = os.path.join(workdir, 'lrn', 'metrics.jsonl')
  after_only = (sorted(os.listdir(workdir)), open(lrn_metrics).read()
                if os.path.exists(lrn_metrics) else None)
  full = run_ablate(workdir, data_dir)
  return workdir, data_dir, only, after_only, full


def test_only_trains_one_run_and_writes_no_table(ablation):
  workdir, _, only, (names, _), _ = ablation
  assert only.returncode == 0, only.stderr[-3000:]
  assert names == ['lrn']
  assert os.path.exists(os.path.join(workdir, 'lrn', 'result.json'))
  # Every variant's parameter and FLOP count is printed before anything trains.
  for name in ('baseline',) + VARIANTS:
    assert any(line.startswith(name) and 'parameters' in line and 'GFLOP' in line
               for line in only.stdout.splitlines()), name


def test_table_has_every_variant_with_deltas_from_the_runs_themselves(ablation):
  workdir, _, _, (_, lrn_before), full = ablation
  assert full.returncode == 0, full.stderr[-3000:]
  assert 'lrn: finished before' in full.stderr
  with open(os.path.join(workdir, 'lrn', 'metrics.jsonl')) as f:
    assert f.read() == lrn_before  # not retrained
  with open(os.path.join(workdir, 'ablations.json')) as f:
    result = json.load(f)
  rows = {r['name']: r for r in result['rows']}
  assert list(rows) == ['baseline', *VARIANTS]
  assert result['eval_images'] == 48
  assert result['setup']['num_train_steps'] == 4 and result['setup']['seed'] == 0

  # Each trained run's error is its own last evaluation in metrics.jsonl.
  err = lambda acc: 100.0 * (1.0 - acc)
  for name in TRAINED:
    ev = last_eval(os.path.join(workdir, name))
    assert ev['step'] == 4 and ev['val_examples'] == 48
    assert rows[name]['top1_error'] == pytest.approx(err(ev['val_top1']))
    assert rows[name]['top5_error'] == pytest.approx(err(ev['val_top5']))
  base = rows['baseline']
  for name in TRAINED[1:]:  # with the choice - without
    assert rows[name]['delta_top1'] == pytest.approx(base['top1_error'] - rows[name]['top1_error'])
    assert rows[name]['delta_top5'] == pytest.approx(base['top5_error'] - rows[name]['top5_error'])
  # tencrop: the baseline's parameters on ten patches (the paper's choice) minus the centre.
  assert rows['tencrop']['delta_top1'] == pytest.approx(rows['tencrop']['top1_error']
                                                        - base['top1_error'])
  assert not os.path.exists(os.path.join(workdir, 'tencrop', 'checkpoints'))  # not trained
  assert (rows['lrn']['paper_delta_top1'], rows['lrn']['paper_delta_top5']) == (-1.4, -1.2)
  assert (rows['one_tower']['paper_delta_top1'], rows['one_tower']['paper_delta_top5']) == (-1.7, -1.2)
  assert (rows['tencrop']['paper_delta_top1'], rows['overlap']['paper_delta_top1']) == (-1.5, -0.4)

  # The markdown table: one line per run, printed and written.
  with open(os.path.join(workdir, 'ablations.md')) as f:
    text = f.read()
  assert text in full.stdout
  for name in ('baseline',) + VARIANTS:
    assert sum(line.startswith(f'| {name} |') for line in text.splitlines()) == 1, name


def test_each_run_trained_what_its_switch_names(ablation):
  """From each run's config.json and real checkpoint: the one field changed, and the parameter
  count in the table is what was trained (counted by hand for tiny's widths)."""
  workdir = ablation[0]
  configs = {}
  for name in TRAINED:
    with open(os.path.join(workdir, name, 'config.json')) as f:
      configs[name] = json.load(f)
  base = configs['baseline']
  assert (base['model']['lrn'], base['model']['pool_window'], base['model']['num_towers'],
          base['pca_lighting_std'], base['model']['dropout_rate'],
          base['parallelism']) == (True, 3, 2, 0.1, 0.5, 'towers')

  def flat(d, p=''):
    return ({k: v for key, sub in d.items() for k, v in flat(sub, f'{p}{key}.').items()}
            if isinstance(d, dict) else {p[:-1]: d})
  diff = lambda name: {k: v for k, v in flat(configs[name]).items() if flat(base)[k] != v}
  assert diff('lrn') == {'model.lrn': False}
  assert diff('overlap') == {'model.pool_window': 2}  # stride is 2 in both
  assert diff('one_tower') == {'model.num_towers': 1, 'parallelism': 'data', 'num_devices': 2}
  assert diff('pca') == {'pca_lighting_std': 0.0}

  with open(os.path.join(workdir, 'ablations.json')) as f:
    rows = {r['name']: r for r in json.load(f)['rows']}
  # tiny: conv 16-32-48-48-32 per tower, fc 128-128, 10 classes, 64 px: pool5 is 1 x 1.
  two = 2 * ((11 * 11 * 3 * 16 + 16) + (5 * 5 * 16 * 32 + 32) + (3 * 3 * 64 * 48 + 48)
             + (3 * 3 * 48 * 48 + 48) + (3 * 3 * 48 * 32 + 32) + (64 * 128 + 128)
             + (256 * 128 + 128) + (256 * 5 + 5))
  one = ((11 * 11 * 3 * 16 + 16) + (5 * 5 * 16 * 32 + 32) + (3 * 3 * 32 * 48 + 48)
         + (3 * 3 * 48 * 48 + 48) + (3 * 3 * 48 * 64 + 64) + (64 * 256 + 256)
         + (256 * 256 + 256) + (256 * 10 + 10))
  assert (rows['baseline']['params'], rows['one_tower']['params']) == (two, one)
  for name, want in (('baseline', two), ('one_tower', one)):
    # Read back with orbax directly (the 'state' item, see checkpointing.py), not the code.
    path = os.path.join(workdir, name, 'checkpoints', '4', 'state')
    tree = ocp.PyTreeCheckpointer().metadata(path).item_metadata.tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    params = ocp.PyTreeCheckpointer().restore(path, restore_args=args)['params']
    assert sum(np.asarray(a).size for a in jax.tree.leaves(params)) == want, name
    assert np.asarray(params['conv5']['kernel']).shape == (
        (2, 3, 3, 48, 32) if name == 'baseline' else (1, 3, 3, 48, 64))


def test_rerun_trains_nothing_and_a_changed_budget_is_refused(ablation):
  workdir, data_dir, _, _, _ = ablation
  before = {n: open(os.path.join(workdir, n, 'metrics.jsonl')).read()
            for n in ('baseline', 'one_tower')}
  result = ablate.run(same_config(data_dir), VARIANTS, workdir)  # everything finished
  assert [r['name'] for r in result['rows']] == ['baseline', *VARIANTS]
  for n, text in before.items():
    assert open(os.path.join(workdir, n, 'metrics.jsonl')).read() == text
  with pytest.raises(ablate.AblationError, match='num_train_steps: 4 there, 7 now'):
    ablate.run(same_config(data_dir, num_train_steps=7), VARIANTS, workdir)


def test_dropout_variant_turns_off_dropout_only():
  configs = ablate.configs_for(ablations.get_config('tiny'), ['dropout'])
  assert list(configs) == ['baseline', 'dropout']
  assert configs['baseline'].model.dropout_rate == 0.5
  changed = configs['baseline'].copy_and_resolve_references()
  changed.model.dropout_rate = 0.0
  assert configs['dropout'].to_dict() == changed.to_dict()


def test_variant_equal_to_the_baseline_and_unknown_names_are_refused(tmp_path):
  config = ablations.get_config('tiny')
  config.pca_lighting_std = 0.0  # tiny's own setting: the pca variant would change nothing
  with pytest.raises(ablate.AblationError, match='pca_lighting_std=0.0.*would equal'):
    ablate.run(config, ['pca'], str(tmp_path / 'a'))
  with pytest.raises(ablate.AblationError, match="Unknown variant 'bn'"):
    ablate.run(ablations.get_config('tiny'), ['bn'], str(tmp_path / 'b'))
  assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()
