"""Every command's exit codes (alexnet_jax/runtime/command.py): 2 and one `error:` line, no
traceback, for a config, a flag or a dataset refused before any work; 1 for a failure during it.

The commands run as users run them (`python -m alexnet_jax.X`), two at a time; the cases of all
commands are one test so that they share the two cores."""

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys

from absl import app
import pytest

from alexnet_jax.core import train
from alexnet_jax.runtime import command
from configs import tiny

import conftest

ROOT = conftest.ROOT
BAD_FIELD = '--config.nonexistent_field=1'
UNKNOWN = 'config.nonexistent_field is not a field'
# A tfds dataset that is neither in the (empty) data dir nor downloadable nor generated.
NOT_PREPARED = 'imagenet2012 is not prepared in'


def _run(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, '-m', f'alexnet_jax.{module}', *args], cwd=ROOT,
                        env=conftest.subprocess_env(), capture_output=True, text=True,
                        timeout=timeout)


def _problems(proc: subprocess.CompletedProcess, code: int, words) -> list[str]:
  """What is wrong with how a command refused or failed (empty: it did it right)."""
  said = proc.stderr
  errors = [line for line in said.splitlines() if line.startswith('error: ')]
  problems = []
  if proc.returncode != code:
    problems.append(f'exit {proc.returncode}, not {code}')
  if 'Traceback' in said:
    problems.append('a traceback')
  if len(errors) != 1:
    problems.append(f'{len(errors)} error: lines')
  message = said[said.find('error: '):] if errors else ''
  problems += [f'{w!r} not in the message' for w in words if w not in message]
  if problems:
    problems.append('stderr ends:\n' + said[-2500:])
  return problems


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A one-step tiny run, and the copy of the data dir it read (the original is removed, so a
  command that opens the run's own dataset finds it missing)."""
  root = tmp_path_factory.mktemp('commands')
  source, copy, workdir = str(root / 'tfds'), str(root / 'tfds_copy'), str(root / 'run')
  config = tiny.get_config()
  config.data_dir = source
  config.num_train_steps = config.eval_every_steps = config.checkpoint_every_steps = 1
  config.log_every_steps = 1
  config.num_eval_examples = 16
  config.eval_crops = config.final_eval_crops = 'center'
  train.train_and_evaluate(config, workdir)
  shutil.copytree(source, copy)
  shutil.rmtree(source)
  return workdir, copy, root


def test_every_command_refuses_a_bad_config_a_bad_flag_and_a_missing_dataset(tmp_path, trained):
  workdir, data_copy, _ = trained
  empty = str(tmp_path / 'empty')
  os.mkdir(empty)
  missing = ['--config.dataset=imagenet2012', f'--config.data_dir={empty}',
             f'--config.manual_dir={empty}']
  tiny_cfg = '--config=configs/tiny.py'
  ablate_cfg = '--config=configs/ablations.py:tiny'
  out = str(tmp_path / 'out')
  # figures reads the run's config.json: a copy of the run whose dataset is not there.
  figures_run = str(tmp_path / 'figures_run')
  shutil.copytree(workdir, figures_run)
  with open(os.path.join(figures_run, 'config.json')) as f:
    saved = json.load(f)
  saved.update(dataset='imagenet2012', data_dir=empty, manual_dir=empty)
  with open(os.path.join(figures_run, 'config.json'), 'w') as f:
    json.dump(saved, f)
  resumed_run = str(tmp_path / 'resumed_run')  # main rewrites what it resumes: a copy
  shutil.copytree(workdir, resumed_run)

  # (command, arguments, exit code, words of the message, a path that must not be created)
  cases = [
      # main
      ('main', [tiny_cfg, BAD_FIELD, f'--workdir={tmp_path / "m1"}'], 2, [UNKNOWN], 'm1'),
      ('main', [tiny_cfg, *missing, f'--workdir={tmp_path / "m3"}'], 2, [NOT_PREPARED], 'm3'),
      # ablate
      ('ablate', [ablate_cfg, BAD_FIELD, f'--workdir={tmp_path / "a1"}'], 2, [UNKNOWN], 'a1'),
      ('ablate', [ablate_cfg, *missing, f'--workdir={tmp_path / "a3"}', '--only=baseline'], 2,
       [NOT_PREPARED], None),
      # dataset_stats (a traceback and exit 1 before runtime/command.py)
      ('dataset_stats', [tiny_cfg, BAD_FIELD], 2, [UNKNOWN], None),
      ('dataset_stats', [tiny_cfg, *missing], 2, [NOT_PREPARED], None),
      # a value the data fields' check refuses: refused before the data dir is read or written
      ('dataset_stats', [tiny_cfg, f'--config.data_dir={tmp_path / "d1"}',
                         '--config.pca_lighting_std=-1'], 2, ['config.pca_lighting_std=-1'],
       'd1'),
      # resize_dataset (exit 1 before)
      ('resize_dataset', [tiny_cfg, BAD_FIELD], 2, [UNKNOWN], None),
      ('resize_dataset', [tiny_cfg, *missing], 2, [NOT_PREPARED], None),
      ('resize_dataset', [tiny_cfg, f'--config.data_dir={tmp_path / "r1"}',
                          '--config.pca_lighting_std=-1'], 2, ['config.pca_lighting_std=-1'],
       'r1'),
      # evaluate: a flag, and the run's dataset gone
      ('evaluate', [f'--workdir={workdir}', '--crops=five'], 2, ['--crops'], None),
      ('evaluate', [f'--workdir={workdir}', f'--out={out}'], 2, ['is not prepared'], 'out'),
      # figures
      ('figures', [f'--workdir={workdir}', '--num_predictions=0'], 2, ['num_predictions=0'],
       None),
      ('figures', [f'--workdir={figures_run}', f'--out={out}'], 2, [NOT_PREPARED], 'out'),
      # the commands that read no dataset (they time synthetic batches or compile): a config
      ('bench', [tiny_cfg, BAD_FIELD, f'--out={out}'], 2, [UNKNOWN], 'out'),
      ('comms', [tiny_cfg, BAD_FIELD, f'--out={out}'], 2, [UNKNOWN], 'out'),
      ('plan', [tiny_cfg, BAD_FIELD, '--target=tpu-v5e', f'--out={out}'], 2, [UNKNOWN], 'out'),
      ('calibrate', ['--configs=configs/nonexistent.py', f'--out={out}/c.json'], 2,
       ['configs/nonexistent.py'], 'out'),
      ('bench_input', [f'--out={out}', '--repeats=0'], 2, ['must be positive'], 'out'),
      # during the work: a resume whose checkpoint belongs to another training stream
      ('main', [tiny_cfg, f'--config.data_dir={data_copy}', f'--workdir={resumed_run}',
                '--config.num_train_steps=2', '--config.shuffle_buffer=7'], 1,
       ['config.shuffle_buffer'], None),
  ]
  with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    procs = list(pool.map(lambda case: _run(case[0], *case[1]), cases))
  failures = []
  for (name, args, code, words, created), proc in zip(cases, procs):
    problems = _problems(proc, code, words)
    if created and os.path.exists(tmp_path / created):
      problems.insert(0, f'{created} was created')
    if problems:
      failures.append(f'python -m alexnet_jax.{name} {" ".join(args)}: ' + '\n'.join(problems))
  assert not failures, '\n\n'.join(failures)


@pytest.mark.parametrize('error,code', [
    (FloatingPointError('Training diverged at step 8'), 1),
    (command.Refused('no'), 2),
    (app.UsageError('Unexpected arguments'), 2),
])
def test_call_maps_errors_to_one_line_and_an_exit_code(capfd, error, code):
  def main(argv):
    raise error
  with pytest.raises(SystemExit) as exit_:
    command.call(main, ['prog'])
  assert exit_.value.code == code
  assert capfd.readouterr().err == f'error: {error}\n'


def test_the_project_errors_exit_codes():
  """Every error class of the package derives from one of runtime/errors.py's two classes and
  exits with its code; an OSError during the work exits 1; anything else is a bug (None)."""
  from alexnet_jax.core import checkpointing, config, metrics  # pylint: disable=g-import-not-at-top
  from alexnet_jax.data.refusals import DatasetNotReadyError  # pylint: disable=g-import-not-at-top
  from alexnet_jax.paper import ablate, evaluate, figures  # pylint: disable=g-import-not-at-top
  from alexnet_jax.pods import calibration, published, targets  # pylint: disable=g-import-not-at-top
  refused = [config.ConfigError, DatasetNotReadyError, ablate.AblationError,
             calibration.CalibrationError, published.CaseError, evaluate.EvaluateError,
             figures.FiguresError, targets.TargetError, command.Refused, app.UsageError]
  failed = [checkpointing.CheckpointError, metrics.WorkdirError, FloatingPointError,
            OSError, FileNotFoundError, PermissionError]
  for cls in refused:
    assert command.exit_code(cls('x')) == 2, cls
  for cls in failed:
    assert command.exit_code(cls('x')) == 1, cls
  assert command.exit_code(ValueError('a bug')) is None
  assert command.exit_code(KeyError('a bug')) is None
