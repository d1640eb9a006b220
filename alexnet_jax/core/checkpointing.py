"""Checkpoints: what a run saves, where, how it resumes, and how other tools read them.

Layout of `<workdir>/checkpoints/`, an orbax `CheckpointManager` directory:

    <step>/                   one checkpoint, after `step` completed steps. Saved asynchronously:
                              orbax writes `<step>.orbax-checkpoint-tmp*/` and renames it when
                              complete, so a `<step>/` directory is always whole (a run killed
                              mid-save leaves only a tmp directory, removed at the next start).
      state/                  orbax PyTree (OCDBT) of `train.TrainState`:
                                step       int32, completed steps
                                params     {layer: {'kernel', 'bias'}}, the two towers stacked on
                                           axis 0 (conv1 kernel: [2, 11, 11, 3, 48])
                                opt_state  optimizer.paper_sgd's state: hyperparams
                                           {learning_rate, momentum, weight_decay} and the momentum
                                           buffer, inner_state[2].trace, shaped like params
                                rng        the dropout key (step i uses fold_in(rng, i))
      meta/metadata           JSON: {'step', 'config' (the config that wrote it, as a dict),
                              'schedule' (schedules state), 'input' (the training stream's
                              position `step` and the fields that define the stream),
                              'metrics' (the evaluation at this step, or null)}
      _CHECKPOINT_METADATA    orbax's: save time, and {'val_error'} where an evaluation ran

Kept: the last `config.keep_checkpoints`, plus the one with the lowest validation top-1 error.
Nothing here deletes or overwrites a checkpoint except that retention policy; a checkpoint that
cannot be read, or was written by another config, is refused with a message and left as it is.

`restore_params(workdir)` reads the parameters (as NumPy) and the config of a checkpoint without
building the model or knowing the devices it was trained on.
"""

import logging as std_logging
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import fields
from alexnet_jax.runtime import paths
from alexnet_jax.core import config as config_lib
from alexnet_jax.data import spec as data_spec


def _handlers() -> dict:
  """The items of a checkpoint and how each is stored (registered up front, so that a fresh
  manager can read a checkpoint's metadata before restoring anything)."""
  return {'state': ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}


class CheckpointError(errors.Failed, RuntimeError):
  """A checkpoint cannot be written, read, or used by this config; what exists is left intact."""


def config_differences(saved: dict, current: ml_collections.ConfigDict) -> list[str]:
  """'field: checkpoint value -> this config's value' for every field that differs."""
  old = fields.flat(fields.plain(config_lib.complete(saved)))
  new = fields.flat(fields.plain(current))
  return [f'{k}: {old.get(k, "(absent)")!r} -> {new.get(k, "(absent)")!r}'
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def input_position(config: ml_collections.ConfigDict, step: int, input_shards: int) -> dict:
  """Where the training stream is: the next global batch is `step`, of the stream the fields
  data/spec.STREAM_FIELDS define (data/streams.py builds it). `input_shards`: the number the
  stream is made of (config.input_shards may say 0)."""
  return data_spec.from_config(config).stream_position(step, input_shards)


def make_meta(config: ml_collections.ConfigDict, step: int, input_shards: int, schedule: dict,
              metrics: dict | None) -> dict:
  """What a checkpoint holds beside the arrays (see the layout above)."""
  return {'step': int(step), 'config': fields.plain(config), 'schedule': schedule,
          'input': input_position(config, step, input_shards),
          'metrics': None if metrics is None else {k: float(v) for k, v in metrics.items()}}


def _shapes(tree) -> dict:
  """{'params/conv1/kernel': (shape, dtype)} for a tree of arrays, ShapeDtypeStructs or orbax
  ArrayMetadata (the key path is the same for the state and its checkpoint)."""
  def shape(leaf):
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # stored as its key data
      leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype).name

  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path, simple=True, separator='/'): shape(leaf)
          for path, leaf in leaves}


class _Manager(ocp.CheckpointManager):
  """orbax's manager, minus its own calls to JAX's preemption sync point: the training loop is
  the one caller (runtime/preemption.py), with the step it is at. orbax calls it again from the
  thread that finishes an asynchronous save, with that save's older step, which would move the
  processes' agreed stopping step into the past (and a missed notice would leave the others
  waiting in a collective save). Every save here is asked for explicitly, so nothing else
  changes."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpoints:
  """The run's checkpoints: asynchronous saves that never hold a NaN, and checked restores."""

  def __init__(self, workdir: str, keep: int):
    self.directory = paths.join(workdir, 'checkpoints')
    error = lambda metrics: metrics['val_error']
    best = ocp.checkpoint_managers.BestN(get_metric_fn=error, reverse=True, n=1,
                                         keep_checkpoints_without_metrics=False)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
            [ocp.checkpoint_managers.LatestN(keep), best]),
        best_fn=error, best_mode='min',  # only so that orbax records the metrics of a save
        create=True, cleanup_tmp_directories=True)
    try:
      _remove_uncommitted(self.directory)
      self._manager = _Manager(self.directory, item_handlers=_handlers(), options=options)
    except Exception as e:  # a permission, a full disk, unreadable orbax metadata
      raise CheckpointError(f'Cannot open the checkpoint directory {self.directory}: {e}. '
                            'Fix it or use another --workdir.') from e
    self._in_flight = None  # step of the save still being written

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, meta: dict, val_error: float | None = None) -> None:
    """Starts writing `state` and `meta` as checkpoint `step` and returns; the previous save
    must have succeeded (else CheckpointError)."""
    self.wait()
    try:
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
          metrics=None if val_error is None else {'val_error': float(val_error)})
    except Exception as e:
      raise self._save_error(step, e) from e
    self._in_flight = step

  def wait(self) -> None:
    """Blocks until the save in flight is on disk; CheckpointError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(self._in_flight, e) from e
    finally:
      self._in_flight = None

  def steps_on_disk(self) -> list[int]:
    """The complete checkpoints in the directory (the manager's own list may already leave out
    one that a save in flight will retire)."""
    return saved_steps(paths.dirname(self.directory))

  def _save_error(self, step, error) -> CheckpointError:
    saved = [s for s in self.steps_on_disk() if s != step]
    return CheckpointError(
        f'Writing checkpoint {step} to {self.directory} failed: {error}. Is the disk full or '
        f'the directory read-only? The checkpoints already saved (steps {saved}) are intact; free '
        'space (or fix the permissions) and run the same command again to resume from the latest.')

  def close(self) -> None:
    """Waits for the save in flight (CheckpointError if it failed) and releases the manager."""
    try:
      self.wait()
    finally:
      self._manager.close()

  def read_meta(self, step: int) -> dict:
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      meta = meta['meta']
      if not isinstance(meta, dict) or 'config' not in meta:
        raise ValueError(f'meta is {type(meta).__name__} without a config')
    except Exception as e:
      raise self._unreadable(step, e) from e
    return meta

  def _unreadable(self, step: int, error) -> CheckpointError:
    path = paths.join(self.directory, str(step))
    others = [s for s in self.steps_on_disk() if s != step]
    return CheckpointError(
        f'Checkpoint {step} at {path} cannot be read ({type(error).__name__}: {error}). It is left '
        'as it is. To resume from an earlier checkpoint '
        f'({others if others else "there is none"}), move {path} out of {self.directory}; or '
        'start afresh with another --workdir.')

  def restore(self, step: int, abstract_state, config: ml_collections.ConfigDict,
              input_shards: int) -> tuple[Any, dict]:
    """Checkpoint `step` as (state placed like `abstract_state`, meta), after checking that it
    holds this config's shapes and training stream (CheckpointError naming what differs)."""
    path = paths.join(self.directory, str(step))
    meta = self.read_meta(step)
    try:
      saved = _shapes(self._manager.item_metadata(step)['state'].tree)
    except Exception as e:
      raise self._unreadable(step, e) from e
    wanted = _shapes(abstract_state)
    mismatched = [f'{k}: {saved.get(k, "absent")} there, {wanted.get(k, "absent")} here'
                  for k in sorted(set(saved) | set(wanted), key=lambda k: (k[:7] != 'params/', k))
                  if saved.get(k) != wanted.get(k)]
    if mismatched:
      more = f'; and {len(mismatched) - 3} more' if len(mismatched) > 3 else ''
      differences = '; '.join(config_differences(meta['config'], config)) or 'none'
      raise CheckpointError(
          f'Checkpoint {step} at {path} was written by another model config: its arrays do not '
          f'fit this one ({"; ".join(mismatched[:3])}{more}). Config fields that differ '
          f'(there -> here): {differences}. Use the config that wrote it, or another --workdir '
          'to start afresh. Nothing was changed.')
    position = input_position(config, step, input_shards)
    saved_position = meta.get('input') or {}
    saved_position = {**data_spec.STREAM_FIELDS_BEFORE, **saved_position}
    changed = [(k, saved_position.get(k), v) for k, v in position.items()
               if k != 'step' and saved_position.get(k) != v]
    if changed:
      raise CheckpointError(
          f'Checkpoint {step} at {path} continues a training stream defined by other values of '
          f'{", ".join(f"config.{k} ({old!r} there, {new!r} here)" for k, old, new in changed)}. '
          'Resuming would not continue the run it belongs to: set them back ('
          f'{" ".join(f"--config.{k}={old}" for k, old, _ in changed)}), or use another '
          '--workdir to start afresh. Nothing was changed.')
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:
      raise self._unreadable(step, e) from e
    return restored['state'], meta


def _remove_uncommitted(directory: str) -> None:
  """On object storage, the `<step>/` of saves a killed run left unfinished (no
  `commit_success.txt`): what orbax's tmp-directory cleanup does on local disk, where such a save
  is a `*.orbax-checkpoint-tmp*` directory. Left there, the next save of that step would write
  into its half-written OCDBT database. Process 0 only; local disk: nothing (orbax does it)."""
  if not paths.is_remote(directory) or jax.process_index() != 0 or not paths.isdir(directory):
    return
  for name in paths.listdir(directory):
    step = paths.join(directory, name)
    if name.isdigit() and not paths.exists(paths.join(step, 'commit_success.txt')):
      logging.warning('Removing %s, a checkpoint an interrupted run left unfinished.', step)
      paths.rmtree(step)


def saved_steps(workdir: str) -> list[int]:
  """The complete checkpoints in `workdir` (none if it has no checkpoints directory).

  Local disk: orbax renames a finished save's tmp directory to `<step>/`, so every `<step>/` is
  whole. Object storage has no renames: orbax writes `<step>/` in place and its
  `commit_success.txt` last, so only those with it count there."""
  directory = paths.join(workdir, 'checkpoints')
  if not paths.isdir(directory):
    return []
  steps = [n for n in paths.listdir(directory) if n.isdigit()]
  if paths.is_remote(directory):
    steps = [n for n in steps
             if paths.exists(paths.join(directory, n, 'commit_success.txt'))]
  return sorted(int(n) for n in steps)


def restore_params(workdir: str, step: int | None = None
                   ) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, params) of checkpoint `step` (default: the latest) in `workdir`: the config that
  wrote it (completed from today's defaults, config.complete) and its parameters as NumPy arrays (towers stacked on axis 0), on any machine."""
  directory = paths.join(paths.absolute(workdir), 'checkpoints')
  if not paths.isdir(directory):
    raise CheckpointError(f'No checkpoints in {workdir}: {directory} does not exist.')
  manager = ocp.CheckpointManager(directory, item_handlers=_handlers(),
                                  options=ocp.CheckpointManagerOptions(read_only=True,
                                                                       create=False))
  try:
    step = manager.latest_step() if step is None else step
    if step is None or step not in manager.all_steps():
      raise CheckpointError(f'No checkpoint {"" if step is None else step} in {directory} '
                            f'(steps: {list(manager.all_steps())}).')
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
      tree = manager.item_metadata(step)['state'].tree
      abstract = {'params': jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype),
                                         tree['params'])}
      as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
      with ocp.PyTreeCheckpointer() as reader:
        restored = reader.restore(paths.join(directory, str(step), 'state'),
                                  args=ocp.args.PyTreeRestore(item=abstract,
                                                              restore_args=as_numpy,
                                                              partial_restore=True))
    except CheckpointError:
      raise
    except Exception as e:
      raise CheckpointError(f'Checkpoint {step} in {directory} cannot be read '
                            f'({type(e).__name__}: {e}).') from e
  finally:
    manager.close()
  return config_lib.complete(meta['config']), restored['params']


def quiet_orbax_logs() -> None:
  """Keeps orbax's INFO lines (every stage of every save) off the console of main and figures.

  A filter on the absl logger (its handler delegates records without consulting its own
  filters); records carry the standard library's levels, not absl's verbosities. Orbax's
  warning at every save without an evaluation ("did not provide metrics") is expected: only
  evaluated checkpoints compete for the best one kept.
  """
  logging.get_absl_logger().addFilter(
      lambda record: '/orbax/' not in record.pathname or (
          record.levelno >= std_logging.WARNING
          and 'did not provide metrics' not in record.getMessage()))
