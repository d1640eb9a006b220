"""The config a run is built from: completed from the defaults, and refused in one place.

Every default lives in configs/default.py; the other configs start from it and change what
differs. Two functions stand between a config and a run:

- `complete(saved)` turns a config read back from a checkpoint (a plain dict, possibly written
  before a field existed or was renamed) into today's config: the defaults, overlaid with what
  was saved, old names translated (`RENAMED`).
- `check(config, devices)` finds EVERY problem a config has for the devices a run is built on,
  each as one line naming the field and the fix, and raises one `ConfigError` listing them all,
  before anything is compiled or written. Refusals that need the dataset (`check_dataset`) are
  here too, so every message a user can get about a config is in this file.

`parse_flags` makes the commands' `--config.FIELD=VALUE` overrides fail with one line (an unknown
field, with the closest known one) instead of a traceback.
"""

import difflib
import math
import re
import sys
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
import ml_collections

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import fields
from alexnet_jax.core import augment as augment_lib
from alexnet_jax.core import kernels as kernels_lib
from alexnet_jax.core import layerwise
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import schedules
from alexnet_jax.core import strategies
from alexnet_jax.data import spec as data_spec
from configs import default

# Fields that were renamed: old dotted name -> (new name, {old value: new value} or None).
RENAMED = {
    'model.towers': ('model.num_towers', None),
    'model.weight_grad': ('model.kernels', {'auto': 'auto', 'offsets': 'cpu', 'xla': 'reference'}),
}

COMPUTE_DTYPES = ('float32', 'bfloat16', 'float16')
INIT_SCHEMES = ('paper', 'he')


class ConfigError(errors.Refused, ValueError):
  """A config that cannot run; raised before anything is compiled or written. The message has
  one line per problem, each naming the field and the fix."""


def defaults() -> ml_collections.ConfigDict:
  """configs/default.py's config: every field there is, with its default."""
  return default.get_config()


def complete(saved: Any) -> ml_collections.ConfigDict:
  """Today's config for one read back from a checkpoint or a config.json (a dict or ConfigDict):
  the defaults, overlaid with every saved field that still exists, renamed fields translated.
  Fields that no longer exist are dropped (they cannot change what today's code does)."""
  config = defaults()
  known = fields.flat(config)
  for field, value in fields.flat(saved).items():
    if field in RENAMED:
      field, values = RENAMED[field]
      value = values.get(value, value) if values else value
    if field in known:
      fields.set(config, field, value)
  return config


def unknown_fields(config: Any) -> list[str]:
  """Fields of `config` that configs/default.py does not have: each a problem line."""
  known = fields.flat(defaults())
  problems = []
  for field in fields.flat(config):
    if field not in known:
      problems.append(_unknown(field, known))
  return problems


def _unknown(field: str, known: dict) -> str:
  close = difflib.get_close_matches(field, list(known) + list(RENAMED), n=1)
  hint = ''
  if close and close[0] in RENAMED:
    hint = f' (renamed: use config.{RENAMED[close[0]][0]})'
  elif close:
    hint = f' (did you mean config.{close[0]}?)'
  return (f'config.{field} is not a field{hint}; every field and its default is in '
          'configs/default.py.')


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing for the commands (app.run's `flags_parser`), with a one-line error for a
  `--config.FIELD=VALUE` that names no field or holds a malformed value."""
  known = fields.flat(defaults())
  for arg in argv[1:]:
    match = re.match(r'--config\.([\w.]+)=?', arg)
    if match and match.group(1) not in known:
      _exit_with(_unknown(match.group(1), known))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit_with(str(e))
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by a config override
    _exit_with(f'a --config override cannot be applied: {e}')
  return []  # not reached


def _exit_with(message: str) -> None:
  print(f'error: {message}', file=sys.stderr, flush=True)
  sys.exit(2)


# --- The checks. Each returns a list of problem lines (empty: fine). ---


# Fields whose values are of several kinds (a Python bool is taken for 'true'/'false' where a
# config is built in code and not locked), checked by _choices alone.
_CHECKED_ALONE = ('overlap_collectives',)
OVERLAP_CHOICES = ('auto', 'true', 'false')


def _types(config: ml_collections.ConfigDict) -> list[str]:
  """Every field holds a value of its default's kind (a number, a string, a tuple, ...)."""
  problems, known = [], fields.flat(defaults())
  for field, value in fields.flat(config).items():
    expected = known.get(field)
    if expected is None or field in _CHECKED_ALONE:
      continue
    numbers = (int, float)
    ok = (isinstance(value, numbers) and not isinstance(value, bool)
          if isinstance(expected, numbers) and not isinstance(expected, bool)
          else isinstance(value, (tuple, list)) if isinstance(expected, (tuple, list))
          else isinstance(value, type(expected)))
    if isinstance(expected, int) and not isinstance(expected, bool) and isinstance(value, float):
      ok = value == int(value)
    if not ok:
      problems.append(f'config.{field}={value!r} should be {type(expected).__name__} like its '
                      f'default ({expected!r}).')
  return problems


def _choices(config: ml_collections.ConfigDict) -> list[str]:
  choices = {'parallelism': strategies.STRATEGIES + (layerwise.NAME,),
             'gradient_exchange_dtype': strategies.GRADIENT_EXCHANGE_DTYPES,
             **data_spec.CHOICES,
             'augment_on': augment_lib.AUGMENT_ON,
             'model.dtype': COMPUTE_DTYPES,
             'model.init_scheme': INIT_SCHEMES,
             'model.kernels': kernels_lib.KERNEL_CHOICES,
             'model.num_towers': (2, 1),
             'lr_schedule.kind': schedules.KINDS}
  flat = fields.flat(config)
  explain = {'model.num_towers': " (2: the paper's two towers; 1: one tower with half the "
                                 "kernels, the paper's one-GPU net)",
             'model.kernels': " ('auto': the CPU kernels on the CPU backend, the paper's "
                              "formulas elsewhere)",
             'gradient_exchange_dtype': ' (the dtype data-parallel gradients are summed across '
                                        'devices in)'}
  found = [f'config.{field}={flat[field]!r} is not one of {", ".join(map(repr, allowed))}'
           f'{explain.get(field, "")}.'
           for field, allowed in choices.items() if flat[field] not in allowed]
  overlap = flat.get('overlap_collectives', 'auto')
  if not (isinstance(overlap, bool) or (isinstance(overlap, str)
                                        and overlap.lower() in ('auto', 'true', 'false'))):
    found.append(f'config.overlap_collectives={overlap!r} is not one of '
                 f'{", ".join(map(repr, OVERLAP_CHOICES))} (compile the train step with the '
                 'collective-overlap options of core/run.py: on GPUs and TPUs with auto).')
  return found


def overlap_on(config: ml_collections.ConfigDict, platform: str) -> bool:
  """Whether config.overlap_collectives turns the overlap options on for `platform`."""
  value = config.overlap_collectives
  if isinstance(value, str):
    value = {'auto': platform in ('gpu', 'tpu'), 'true': True, 'false': False}[value.lower()]
  return bool(value)


def _model(config: ml_collections.ConfigDict) -> list[str]:
  model, problems = config.model, []
  if model.num_towers == 1 and config.parallelism in strategies.TOWER_STRATEGIES:
    problems.append(
        f'config.model.num_towers=1 has no second tower for parallelism={config.parallelism!r} '
        'to put on another device; use --config.parallelism=data (or fsdp, or hybrid) with one '
        'tower.')
  if model.num_classes % model.num_towers:
    problems.append(
        f'config.model.num_classes={model.num_classes} is odd, but fc8 splits the classes '
        'between the two towers; use an even number of classes.')
  window, stride = model.pool_window, model.pool_stride
  if not 1 <= stride <= window:
    problems.append(f'config.model.pool_window={window}, pool_stride={stride}: use '
                    '1 <= stride <= window (the paper: 3 and 2; non-overlapping: 2 and 2).')
  elif model_lib.pool5_size(config.image_size, window, stride) < 1:
    smallest = next(s for s in range(11, 4096) if model_lib.pool5_size(s, window, stride) >= 1)
    problems.append(f'config.image_size={config.image_size} is too small for the network '
                    f'(pool5 needs at least 1 x 1); use {smallest} or more.')
  if not 0 <= model.dropout_rate < 1:
    problems.append(f'config.model.dropout_rate={model.dropout_rate} must be in [0, 1) '
                    '(0 turns dropout off; the paper uses 0.5).')
  if len(model.conv_features) != 5 or len(model.fc_features) != 2 or min(
      tuple(model.conv_features) + tuple(model.fc_features)) < 1:
    problems.append(f'config.model.conv_features={tuple(model.conv_features)} and fc_features='
                    f'{tuple(model.fc_features)} must be 5 and 2 positive widths per tower.')
  return problems


def _data(config: ml_collections.ConfigDict) -> list[str]:
  """The data layer's own refusals of the fields it reads (data/spec.py)."""
  return data_spec.from_config(config).problems()


def _loop(config: ml_collections.ConfigDict) -> list[str]:
  """The schedule, the step counts and intervals, checkpoints and the profiler window."""
  problems = [p for p in [schedule_error(config)] if p]
  if config.num_train_steps <= 0 and not (0 < config.num_epochs < math.inf):
    problems.append(f'config.num_train_steps={config.num_train_steps} and config.num_epochs='
                    f'{config.num_epochs} give no training; set --config.num_train_steps=N or '
                    'a positive --config.num_epochs.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if int(config[field]) != config[field] or config[field] < 1:
      problems.append(f'config.{field}={config[field]} must be a whole number, 1 or more.')
  profile = tuple(config.profile_steps)
  if profile and (len(profile) != 2 or any(int(p) != p for p in profile)
                  or not 1 <= profile[0] <= profile[1]):
    problems.append(f'config.profile_steps={profile} must be () or (first, last) with '
                    '1 <= first <= last, e.g. --config.profile_steps="(10, 12)".')
  return problems


def schedule_error(config: ml_collections.ConfigDict) -> Optional[str]:
  """What is wrong with config.learning_rate and config.lr_schedule, or None."""
  s = config.lr_schedule
  if not (config.learning_rate > 0 and math.isfinite(config.learning_rate)):
    return f'config.learning_rate={config.learning_rate} must be a positive number.'
  if not (s.factor > 0 and math.isfinite(s.factor)):
    return f'config.lr_schedule.factor={s.factor} must be a positive number (0.1 in the paper).'
  if s.kind == 'plateau':
    if s.factor >= 1:
      return (f'config.lr_schedule.factor={s.factor} does not lower the rate; the plateau rule '
              'needs a factor below 1 (0.1 in the paper).')
    if int(s.patience) != s.patience or s.patience < 1:
      return (f'config.lr_schedule.patience={s.patience} must be a whole number of evaluations, '
              '1 or more.')
    if s.threshold < 0:
      return f'config.lr_schedule.threshold={s.threshold} must be 0 or more (an error fraction).'
    if int(s.max_drops) != s.max_drops or s.max_drops < 0:
      return f'config.lr_schedule.max_drops={s.max_drops} must be a whole number, 0 or more.'
  if s.kind == 'step':
    bounds = list(s.boundaries)
    if (not bounds or any(int(b) != b or b < 1 for b in bounds)
        or bounds != sorted(set(bounds))):
      return (f'config.lr_schedule.boundaries={tuple(bounds)} must be increasing step counts, '
              '1 or more, e.g. --config.lr_schedule.boundaries="(30000, 60000)".')
  if int(s.warmup_steps) != s.warmup_steps or s.warmup_steps < 0:
    return f'config.lr_schedule.warmup_steps={s.warmup_steps} must be a whole number, 0 or more.'
  return None


def _placement(config: ml_collections.ConfigDict, devices: Sequence) -> list[str]:
  """The strategy on these devices, and the batches it must split."""
  n = layerwise.resolve_num_devices(config.parallelism, config.num_devices, len(devices),
                                    config.layerwise)
  net = model_lib.make_network(config.model, config.model.num_classes)
  error = layerwise.fit_error(config.parallelism, n, net, len(devices), config.layerwise)
  if error:
    return [f'config.parallelism={config.parallelism!r} with config.num_devices='
            f'{config.num_devices} cannot run: {error}.']
  strategy = layerwise.make_strategy(config.parallelism, net, devices[:n],
                                     spec_path=config.layerwise)
  problems = []
  shards = strategy.batch_shards
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value <= 0 or value % shards:
      problems.append(
          f'config.{field}={value} cannot be split over the {shards} batch shard(s) of '
          f'parallelism={config.parallelism!r}; use a positive multiple of {shards}.')
  if problems:
    return problems
  try:
    _, groups = strategy.input_group(config.batch_size)
  except ValueError as e:
    return [f'config.parallelism={config.parallelism!r} cannot be fed: {e}']
  problems += data_spec.shard_problems(data_spec.from_config(config), groups)
  return problems


def problems(config: ml_collections.ConfigDict, devices: Sequence) -> list[str]:
  """Every problem of `config` for a run on `devices`, one line each (empty: it can run)."""
  found = unknown_fields(config) + _types(config)
  if found:  # the checks below read fields by name and type
    return found
  found = _choices(config)
  if found:
    return found
  found = _model(config) + _data(config) + _loop(config)
  if not found:
    found = _placement(config, devices)
  return found


def check_data(config: ml_collections.ConfigDict) -> None:
  """ConfigError listing every problem of the fields the input pipeline reads: for the commands
  that prepare data without building a run (resize_dataset)."""
  found = unknown_fields(config) + _types(config)
  found = found or _choices(config) or _data(config)
  if found:
    raise ConfigError(_message(found))


def check(config: ml_collections.ConfigDict, devices: Sequence) -> None:
  """ConfigError listing every problem of `config` for a run on `devices`, or nothing."""
  found = problems(config, devices)
  if found:
    raise ConfigError(_message(found))


def _message(found: list[str]) -> str:
  if len(found) == 1:
    return found[0]
  return f'the config has {len(found)} problems:\n' + '\n'.join(f'  - {p}' for p in found)


def check_dataset(config: ml_collections.ConfigDict, dataset_classes: int) -> None:
  """ConfigError if the network's classes are not the dataset's."""
  if config.model.num_classes != dataset_classes:
    raise ConfigError(
        f'config.model.num_classes={config.model.num_classes} but {config.dataset} has '
        f'{dataset_classes} classes; set --config.model.num_classes={dataset_classes}.')


def workdir_error(workdir: str, error: OSError) -> ConfigError:
  """The refusal of a workdir that cannot be written."""
  return ConfigError(f'--workdir={workdir} cannot be written ({error.strerror or error}); use a '
                     'directory you can write to.')


def command_config(config: Optional[ml_collections.ConfigDict],
                   argv: Sequence[str]) -> ml_collections.ConfigDict:
  """The --config of a command that takes one config and no arguments (dataset_stats,
  resize_dataset): a usage error without it or with stray arguments."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if config is None:
    raise app.UsageError('--config=configs/<name>.py is required.')
  return config

