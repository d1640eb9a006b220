"""Training and evaluation: the jitted step, the loop, metrics and checkpoints.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags and calls it,
and the tests call it too.
"""

import collections
import concurrent.futures
import json
import math
import os
import signal
import tempfile
import threading
import time
from typing import Any, Iterator

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
import optax
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.core.framework import summary_pb2

from alexnet_jax.core import checkpointing
from alexnet_jax.data import input_pipeline
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optimizer as optimizer_lib
from alexnet_jax.core import kernels
from alexnet_jax.core import strategies
from alexnet_jax.core import schedules


class ConfigError(ValueError):
  """A config that cannot run; raised before anything is compiled or written."""


class WorkdirError(RuntimeError):
  """The workdir stopped taking writes (full disk, permissions) during a run."""


@flax.struct.dataclass
class TrainState:
  """Everything the next step depends on."""
  step: jax.Array
  params: Any  # both towers stacked on a leading axis of size 2
  opt_state: Any
  rng: jax.Array  # dropout key; step i uses fold_in(rng, i)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuse a config that cannot run, naming the field and the fix, before any work."""
  if config.parallelism not in strategies.STRATEGIES:
    raise ConfigError(f'config.parallelism={config.parallelism!r} is not a strategy; use one of '
                      f'{", ".join(strategies.STRATEGIES)}.')
  _validate_model_switches(config)
  num_devices = strategies.resolve_num_devices(config.parallelism,
                                                 config.get('num_devices', 0))
  tower = model_lib.make_tower(config.model, config.model.num_classes)
  error = strategies.fit_error(config.parallelism, num_devices, tower, jax.device_count())
  if error:
    raise ConfigError(f'config.parallelism={config.parallelism!r} with config.num_devices='
                      f'{config.get("num_devices", 0)} cannot run: {error}.')
  if config.model.num_classes % config.model.get('towers', 2):
    raise ConfigError(
        f'config.model.num_classes={config.model.num_classes} is odd, but fc8 splits the classes '
        'between the two towers; use an even number of classes.')
  if config.image_size > config.resize_size:
    raise ConfigError(f'config.image_size={config.image_size} is larger than '
                      f'config.resize_size={config.resize_size}; the crop must fit in the image.')
  pooling = (config.model.get('pool_window', model_lib.POOL_WINDOW),
             config.model.get('pool_stride', model_lib.POOL_STRIDE))
  if model_lib.pool5_size(config.image_size, *pooling) < 1:
    smallest = next(s for s in range(11, 4096) if model_lib.pool5_size(s, *pooling) >= 1)
    raise ConfigError(f'config.image_size={config.image_size} is too small for the network '
                      f'(pool5 needs at least 1 x 1); use {smallest} or more.')
  _validate_loop_fields(config)
  _validate_preprocessing(config)
  strategy = strategies.make_strategy(config.parallelism, tower,
                                        num_devices=config.get('num_devices', 0))
  data_parallel = strategy.batch_shards
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    if value <= 0 or value % data_parallel:
      raise ConfigError(
          f'config.{field}={value} cannot be split over the {data_parallel} batch shard(s) of '
          f'parallelism={config.parallelism!r}; use a positive multiple of {data_parallel}.')
  try:
    _, groups = strategy.input_group(config.batch_size)
  except ValueError as e:
    raise ConfigError(f'config.parallelism={config.parallelism!r} cannot be fed: {e}') from e
  shards = config.get('input_shards', 0) or groups
  if shards % groups or config.batch_size % shards:
    raise ConfigError(
        f'config.input_shards={config.get("input_shards", 0)} does not fit the {groups} input '
        f'group(s) (processes feeding different rows) and config.batch_size={config.batch_size}: '
        f'use 0 (one per group) or a multiple of {groups} that divides the batch.')


def _validate_loop_fields(config: ml_collections.ConfigDict) -> None:
  """The schedule, the step counts and intervals, checkpoints and the profiler window."""
  error = schedules.config_error(config)
  if error:
    raise ConfigError(error)
  if config.num_train_steps <= 0 and not (0 < config.num_epochs < math.inf):
    raise ConfigError(f'config.num_train_steps={config.num_train_steps} and config.num_epochs='
                      f'{config.num_epochs} give no training; set --config.num_train_steps=N or '
                      'a positive --config.num_epochs.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    if int(config[field]) != config[field] or config[field] < 1:
      raise ConfigError(f'config.{field}={config[field]} must be a whole number, 1 or more.')
  profile = tuple(config.get('profile_steps', ()) or ())
  if profile and (len(profile) != 2 or any(int(p) != p for p in profile)
                  or not 1 <= profile[0] <= profile[1]):
    raise ConfigError(f'config.profile_steps={profile} must be () or (first, last) with '
                      '1 <= first <= last, e.g. --config.profile_steps="(10, 12)".')


def _validate_model_switches(config: ml_collections.ConfigDict) -> None:
  """The design choices of configs/default.py's `model` section that ablations turn off."""
  model = config.model
  towers = model.get('towers', 2)
  if towers not in (1, 2):
    raise ConfigError(f'config.model.towers={towers}: use 2 (the paper\'s two towers) or 1 (one '
                      'tower with half the kernels, the paper\'s one-GPU net).')
  if towers == 1 and config.parallelism in strategies.TOWER_STRATEGIES:
    raise ConfigError(
        f'config.model.towers=1 has no second tower for parallelism={config.parallelism!r} to '
        'put on another device; use --config.parallelism=data (or fsdp) with one tower.')
  window = model.get('pool_window', model_lib.POOL_WINDOW)
  stride = model.get('pool_stride', model_lib.POOL_STRIDE)
  if not 1 <= stride <= window:
    raise ConfigError(f'config.model.pool_window={window}, pool_stride={stride}: use '
                      '1 <= stride <= window (the paper: 3 and 2; non-overlapping: 2 and 2).')
  if not 0 <= model.dropout_rate < 1:
    raise ConfigError(f'config.model.dropout_rate={model.dropout_rate} must be in [0, 1) '
                      '(0 turns dropout off; the paper uses 0.5).')
  weight_grad = model.get('weight_grad', 'auto')
  if weight_grad not in kernels.WEIGHT_GRADS:
    raise ConfigError(f'config.model.weight_grad={weight_grad!r}: use one of {kernels.WEIGHT_GRADS} '
                      "('auto': per-offset products on CPU, XLA's own elsewhere).")


def _validate_preprocessing(config: ml_collections.ConfigDict) -> None:
  """The data fields of configs/default.py: known choices, and combinations that work."""
  choices = {'mean_subtraction': input_pipeline.MEAN_SUBTRACTIONS,
             'pca_eigen': input_pipeline.PCA_EIGENS,
             'train_crop': input_pipeline.TRAIN_CROPS,
             'eval_crops': input_pipeline.EVAL_CROPS,
             'final_eval_crops': input_pipeline.EVAL_CROPS}
  for field, allowed in choices.items():
    if config[field] not in allowed:
      raise ConfigError(f'config.{field}={config[field]!r} is not one of '
                        f'{", ".join(map(repr, allowed))}.')
  if not config.pca_lighting_std >= 0:
    raise ConfigError(f'config.pca_lighting_std={config.pca_lighting_std} must be >= 0 '
                      '(0 turns the colour noise off; the paper uses 0.1).')
  if config.train_crop == 'random_resized_crop':
    if config.mean_subtraction == 'image':
      raise ConfigError(
          "config.train_crop='random_resized_crop' resizes a random box of the photograph, "
          "which has no place in the mean image; use --config.mean_subtraction=channel (or "
          "'constant') with it.")
    low, high = config.rrc_area_range
    if not 0 < low <= high <= 1:
      raise ConfigError(f'config.rrc_area_range={tuple(config.rrc_area_range)} must satisfy '
                        '0 < low <= high <= 1 (fractions of the image area).')


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Softmax cross-entropy per example on the (possibly class-sharded) logits."""
  one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1)


def top_k_correct(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
  """1.0 where the label is among the k largest logits. A class tied with the label counts as
  above it: a network that outputs the same logit for every class (fc8 at zero, at step 1) is
  right 0 times, not every time."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  others_at_least = jnp.sum(logits >= label_logit, axis=-1) - 1
  return (others_at_least < k).astype(jnp.float32)


def train_step(state: TrainState, batch: dict, *, strategy: strategies.Strategy,
               tx: optax.GradientTransformation, fc_features_total: tuple[int, int],
               dropout_rate: float) -> tuple[TrainState, dict]:
  """One SGD step on one global batch: forward, backward, the paper's update."""
  images, labels = batch['image'], batch['label']
  keep = model_lib.dropout_masks(jax.random.fold_in(state.rng, state.step), images.shape[0],
                                 fc_features_total, dropout_rate)

  def loss_fn(params):
    logits = strategy.forward(params, images, keep)
    return jnp.mean(cross_entropy(logits, labels)), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  grad_norm = optax.global_norm(grads)
  metrics = {'loss': loss, 'top1': jnp.mean(top_k_correct(logits, labels, 1)),
             'learning_rate': optimizer_lib.learning_rate(state.opt_state),
             'grad_norm': grad_norm,
             # Checked on the host at log, eval and checkpoint steps only (no per-step sync).
             'finite': jnp.isfinite(loss) & jnp.isfinite(grad_norm)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, strategy: strategies.Strategy) -> dict:
  """Sums over the real (mask = 1) examples of a padded batch: loss, top-1 and top-5 hits.

  `batch['image']` is [B, S, S, 3] (one crop per image) or [B, N, S, S, 3]: N crops per image
  (the paper's ten patches), whose softmax outputs are averaged before the loss and the top-k.
  The crops go through the network one position at a time, so memory is that of one crop.
  """
  images = batch['image']
  if images.ndim == 4:
    log_probs = jax.nn.log_softmax(strategy.forward(params, images, None))
  else:
    num_crops = images.shape[1]
    crop_log_probs = jax.lax.map(
        lambda i: jax.nn.log_softmax(strategy.forward(params, images[:, i], None)),
        jnp.arange(num_crops))  # [N, B, C]
    # log of the mean of the N softmax outputs
    log_probs = jax.nn.logsumexp(crop_log_probs, axis=0) - jnp.log(float(num_crops))
  mask = batch['mask']
  k5 = min(5, log_probs.shape[-1])
  return {'loss': jnp.sum(cross_entropy(log_probs, batch['label']) * mask),
          'top1': jnp.sum(top_k_correct(log_probs, batch['label'], 1) * mask),
          'top5': jnp.sum(top_k_correct(log_probs, batch['label'], k5) * mask),
          'count': jnp.sum(mask)}


def state_sharding(strategy: strategies.Strategy, tx: optax.GradientTransformation,
                   abstract: TrainState) -> TrainState:
  """Where each part of the state lives: each tower's parameters and momentum on its devices,
  the step, the learning rate and the key on every device (also across processes)."""
  param_sharding = strategy.param_sharding(abstract.params)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, param_sharding,
      transform_non_params=lambda _: strategy.replicated)
  return TrainState(step=strategy.replicated, params=param_sharding, opt_state=opt_sharding,
                    rng=strategy.replicated)


def _init_state(config, tower, tx, rng) -> TrainState:
  init_rng, dropout_rng = jax.random.split(rng)
  params = model_lib.init_params(tower, init_rng, config.image_size)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=dropout_rng)


def abstract_train_state(config, tower, strategy, tx, rng) -> TrainState:
  """The state's shapes, dtypes and shardings, computing nothing (a resume's restore target)."""
  shapes = jax.eval_shape(lambda k: _init_state(config, tower, tx, k), rng)
  shardings = state_sharding(strategy, tx, shapes)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      shapes, shardings)


def create_train_state(config, tower, strategy, tx, rng) -> TrainState:
  """Initialise on the mesh, in one program: each tower's parameters and momentum on its
  devices, step and dropout key replicated (also across processes)."""
  return init_program(config, tower, tx, abstract_train_state(config, tower, strategy, tx, rng)
                      )(rng)


def init_program(config, tower, tx, abstract_state: TrainState):
  """The jitted initialisation (key -> state placed as `abstract_state`).

  On CPU it is compiled with LLVM's level-1 optimisation: at the default level the random
  draws of the eight kernels took 9 s to compile (2-core Xeon), at level 1 under 2 s, and the
  program runs as fast (it runs once)."""
  shardings = jax.tree.map(lambda x: x.sharding, abstract_state)
  options = {'xla_backend_optimization_level': 1} if jax.default_backend() == 'cpu' else None
  return jax.jit(lambda k: _init_state(config, tower, tx, k), out_shardings=shardings,
                 compiler_options=options)


def prefetch_to_mesh(batches: Iterator[dict], sharding, size: int = 2) -> Iterator[dict]:
  """Places batches on the mesh `size` steps ahead, so a step never waits for a transfer."""
  queue = collections.deque()

  def put(batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))


class MetricsWriter:
  """metrics.jsonl (one JSON object per line, each with `step`) and TensorBoard event files
  (`tensorboard --logdir WORKDIR`, the same names and values) in the workdir; process 0 only.

  A resumed run appends: steps after the checkpoint it resumed from appear again (the later
  line is the one that counts)."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._enabled = jax.process_index() == 0
    self._summary = (self._guard(lambda: tf.summary.create_file_writer(workdir))
                     if self._enabled else None)

  def _guard(self, write):
    try:
      return write()
    except (OSError, tf.errors.OpError) as e:
      raise WorkdirError(
          f'Cannot write metrics in {os.path.dirname(self._path)}: {e}. Free space (or fix the '
          'permissions) and run the same command again; saved checkpoints are intact.') from e

  def write(self, step: int, **values) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}

    def write_both():
      with open(self._path, 'a') as f:
        f.write(json.dumps(record) + '\n')
      with self._summary.as_default(step=int(step)):
        for name, value in values.items():
          # What tensorboard's tf.summary.scalar writes, without needing tensorboard installed.
          tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=_SCALAR)

    self._guard(write_both)

  def flush(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.flush)

  def close(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.close)
      self._summary = None


def evaluate(params, eval_fn, config, builder, strategy, crops: str | None = None) -> dict:
  """Top-1 / top-5 accuracy and loss over the evaluation split, each image counted once.

  `crops`: 'center' or 'ten' (the paper's ten patches, softmax averaged); default
  config.eval_crops. `eval_fn` is the jitted eval_step (it compiles once per crop mode).
  """
  totals = None
  group, groups = strategy.input_group(config.eval_batch_size)
  batches = input_pipeline.eval_iterator(config, builder, process_index=group,
                                         process_count=groups, crops=crops)
  for batch in prefetch_to_mesh(batches, strategy.batch_sharding):
    sums = eval_fn(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'val_loss': totals['loss'] / count, 'val_top1': totals['top1'] / count,
          'val_top5': totals['top5'] / count, 'val_examples': totals['count']}


def final_evaluation(params, eval_fn, config, builder, strategy) -> dict:
  """The evaluation after the last step, the numbers a run reports: with
  config.final_eval_crops ('ten': the paper's ten patches)."""
  return evaluate(params, eval_fn, config, builder, strategy, crops=config.final_eval_crops)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


class _Sigterm:
  """Records a SIGTERM (preemption notice) while training; the loop reads it between steps."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.received = True

  def stop_now(self, check_all: bool) -> bool:
    """Whether to save and stop after this step. One process: as soon as it got SIGTERM. Several:
    all must stop at the same step (the save is collective), so they agree, by an all-gather,
    at steps where every process syncs anyway (`check_all`: log, evaluation, save steps)."""
    if jax.process_count() == 1:
      return self.received
    if not check_all:
      return False
    return bool(np.any(multihost_utils.process_allgather(np.asarray(self.received))))

  def __exit__(self, *exc_info):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(records: list, checkpoints: checkpointing.Checkpoints) -> None:
  """FloatingPointError naming the first step whose loss or gradient norm is NaN or infinite
  (`records`: (step, host metrics) of steps not yet saved), after the last save has landed."""
  for step, metrics in records:
    if not metrics['finite']:
      checkpoints.wait()
      latest = checkpoints.latest_step()
      last_good = (f'the last good checkpoint, step {latest}, is intact in '
                   f'{checkpoints.directory}' if latest is not None else 'no checkpoint was saved')
      raise FloatingPointError(
          f'Training diverged at step {step}: loss {float(metrics["loss"])}, gradient norm '
          f'{float(metrics["grad_norm"])}. Stopped without saving it; {last_good}. Lower '
          'config.learning_rate (or add config.lr_schedule.warmup_steps) before resuming.')


def prepare_dataset_once(config: ml_collections.ConfigDict,
                         builder: tfds.core.DatasetBuilder | None = None):
  """input_pipeline.prepare_dataset by process 0 first, then by the others (which then find it
  prepared, or prepare their own copy when their data dir is not shared): processes generating
  the same files at once would collide. `builder`: input_pipeline.open_dataset's, if opened."""
  if jax.process_count() == 1:
    return input_pipeline.prepare_dataset(config, builder)
  if jax.process_index() == 0:
    builder = input_pipeline.prepare_dataset(config, builder)
  multihost_utils.sync_global_devices('alexnet_jax: dataset prepared by process 0')
  if jax.process_index() != 0:  # a fresh builder: one opened before process 0 prepared is stale
    builder = input_pipeline.prepare_dataset(config)
  return builder


def planned_steps(config: ml_collections.ConfigDict, builder) -> tuple[int, int]:
  """(steps per epoch, steps the run trains): config.num_train_steps, or num_epochs epochs."""
  steps_per_epoch = max(input_pipeline.num_examples(builder, config.train_split)
                        // config.batch_size, 1)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  return steps_per_epoch, num_steps


def abstract_batch(config: ml_collections.ConfigDict, strategy: strategies.Strategy, *,
                   crops: str | None = None) -> dict:
  """The global batch's shapes, dtypes and sharding, as the input pipeline yields them: a
  training batch, or (`crops` 'center' / 'ten') an evaluation batch."""
  size = config.image_size
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=strategy.batch_sharding)
  if crops is None:
    return {'image': spec((config.batch_size, size, size, 3), jnp.float32),
            'label': spec((config.batch_size,), jnp.int32)}
  crop_axis = (10,) if crops == 'ten' else ()
  batch = config.eval_batch_size
  return {'image': spec((batch, *crop_axis, size, size, 3), jnp.float32),
          'label': spec((batch,), jnp.int32), 'mask': spec((batch,), jnp.float32)}


def compile_ahead(config: ml_collections.ConfigDict, strategy: strategies.Strategy,
                  abstract_state: TrainState, step_fn, eval_fn, init_fn
                  ) -> tuple[concurrent.futures.Future, concurrent.futures.Future]:
  """Compiles the run's programs on a background thread: the initialisation (`init_fn`; None
  when resuming), then the train step and the evaluation step of each crop mode the run uses.

  Started before the dataset is generated and the first batches decoded, work that leaves a
  core free: XLA compiles on one thread. Returns two futures: the compiled initialisation (or
  None), and the steps, which land in their jit's cache (the loop's calls find them compiled).
  Wait for the second before the first step: a step called while its program is still
  compiling would compile it a second time."""
  def compile_steps():
    step_fn.lower(abstract_state, abstract_batch(config, strategy)).compile()
    for crops in dict.fromkeys((config.eval_crops, config.final_eval_crops)):
      eval_fn.lower(abstract_state.params, abstract_batch(config, strategy, crops=crops)).compile()

  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='compile_ahead')
  init = executor.submit(lambda: init_fn and init_fn.lower(jax.random.key(0)).compile())
  steps = executor.submit(compile_steps)
  executor.shutdown(wait=False)  # its thread ends with the work
  return init, steps


def _open_workdir(workdir: str) -> str:
  """The absolute workdir, created and proven writable, or ConfigError saying so."""
  workdir = os.path.abspath(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f'--workdir={workdir} cannot be written ({e.strerror or e}); use a '
                      'directory you can write to.') from e
  return workdir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final
  evaluation metrics (with 'preempted_at_step' if a SIGTERM ended it early).

  Stops with FloatingPointError at the first non-finite loss or gradient (nothing non-finite is
  saved), CheckpointError for checkpoints that cannot be read, written or used by this config,
  WorkdirError when metrics cannot be written; in every case the checkpoints saved are intact.
  """
  validate_config(config)
  builder = input_pipeline.open_dataset(config)  # may refuse: nothing is written before this
  dataset_classes = input_pipeline.num_classes(builder)
  if config.model.num_classes != dataset_classes:
    raise ConfigError(
        f'config.model.num_classes={config.model.num_classes} but {config.dataset} has '
        f'{dataset_classes} classes; set --config.model.num_classes={dataset_classes}.')
  workdir = _open_workdir(workdir)

  tower = model_lib.make_tower(config.model, config.model.num_classes)
  strategy = strategies.make_strategy(config.parallelism, tower,
                                        num_devices=config.get('num_devices', 0))
  tx = optimizer_lib.from_config(config)
  group, groups = strategy.input_group(config.batch_size)  # which rows this process reads
  stream_shards = input_pipeline.input_shards(config, groups)
  rng = jax.random.key(config.seed)
  abstract_state = abstract_train_state(config, tower, strategy, tx, rng)
  shardings = jax.tree.map(lambda x: x.sharding, abstract_state)

  fc_total = tuple(2 * f for f in config.model.fc_features)
  step_fn = jax.jit(
      lambda s, b: train_step(s, b, strategy=strategy, tx=tx, fc_features_total=fc_total,
                              dropout_rate=config.model.dropout_rate),
      in_shardings=(shardings, strategy.batch_sharding),
      out_shardings=(shardings, strategy.replicated), donate_argnums=0)
  eval_fn = jax.jit(lambda p, b: eval_step(p, b, strategy=strategy),
                    in_shardings=(shardings.params, strategy.batch_sharding),
                    out_shardings=strategy.replicated)

  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  try:
    latest = checkpoints.latest_step()
    if latest is None:
      state, schedule, eval_metrics = None, schedules.initial_state(), {}
    else:  # refuses (and changes nothing) if the checkpoint is unreadable or another config's
      state, meta = checkpoints.restore(latest, abstract_state, config, stream_shards)
      schedule, eval_metrics = meta['schedule'], meta['metrics'] or {}
      logging.info('Resumed from %s at step %d.', checkpoints.directory, int(state.step))
    if jax.process_index() == 0:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config.to_json_best_effort(indent=2))
    if state is None:
      init_compiled, steps_compiled = compile_ahead(
          config, strategy, abstract_state, step_fn, eval_fn,
          init_program(config, tower, tx, abstract_state))
      builder = prepare_dataset_once(config, builder)  # generated on first use, while compiling
      state = init_compiled.result()(rng)
    else:  # the dataset exists; a finished run (the same command again) compiles nothing
      builder = prepare_dataset_once(config, builder)
      steps_compiled = None
    steps_per_epoch, num_steps = planned_steps(config, builder)
    if steps_compiled is None and int(state.step) < num_steps:
      _, steps_compiled = compile_ahead(config, strategy, abstract_state, step_fn, eval_fn, None)
  except BaseException:
    checkpoints.close()
    raise

  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  profile = tuple(config.get('profile_steps', ()) or ())

  start_step = int(state.step)
  train_batches = prefetch_to_mesh(
      input_pipeline.train_iterator(config, builder, start_step=start_step,
                                    process_index=group, process_count=groups),
      strategy.batch_sharding)
  current_lr = float(optimizer_lib.learning_rate(state.opt_state))
  pending = []  # (step, metrics) since the last log line: fetched only at log/eval/save steps
  timer_start, timer_step = None, start_step
  tracing = False
  preempted_at = None
  writer = None
  logging.info('Training %s (%s) for %d steps from step %d; %d steps per epoch.',
               config.dataset, config.parallelism, num_steps, start_step, steps_per_epoch)
  try:
    writer = MetricsWriter(workdir)
    with _Sigterm() as sigterm:
      for step in range(start_step + 1, num_steps + 1):
        lr = schedules.learning_rate(config, schedule, step - 1)
        if lr != current_lr:  # only when it changes; the velocity is left as it is
          state = state.replace(opt_state=optimizer_lib.set_learning_rate(
              state.opt_state, jax.device_put(np.float32(lr), strategy.replicated)))
          current_lr = lr
        if profile and step == profile[0]:
          jax.profiler.start_trace(os.path.join(workdir, 'profile'))
          tracing = True
        batch = next(train_batches)
        if steps_compiled is not None:  # the first step: its program is compiled (or compiling)
          steps_compiled.result()
          steps_compiled = None
        state, metrics = step_fn(state, batch)
        pending.append((step, metrics))
        if tracing and step == profile[1]:
          jax.block_until_ready(metrics)
          jax.profiler.stop_trace()
          tracing = False
          logging.info('Profiled steps %d-%d into %s.', profile[0], step,
                       os.path.join(workdir, 'profile'))
        if timer_start is None:  # the first step includes compilation: time from its end
          jax.block_until_ready(metrics)
          timer_start, timer_step = time.perf_counter(), step
          logging.info('Step %d compiled and ran.', step)

        last = step == num_steps
        log_now = step % config.log_every_steps == 0 or last
        eval_now = step % eval_every == 0 or last
        stop = sigterm.stop_now(
            check_all=log_now or eval_now or step % config.checkpoint_every_steps == 0)
        save_now = step % config.checkpoint_every_steps == 0 or last or stop
        if log_now or eval_now or save_now:
          pending = jax.device_get(pending)
          _check_finite(pending, checkpoints)
        if log_now:
          values = {k: float(np.mean([m[k] for _, m in pending]))
                    for k in pending[0][1] if k != 'finite'}
          speed, timed = {}, ''
          if step > timer_step:  # steps timed since the compiled one
            ips = (step - timer_step) * config.batch_size / max(
                time.perf_counter() - timer_start, 1e-9)
            eta = (num_steps - step) * config.batch_size / ips
            speed = {'images_per_second': ips}
            timed = f'  {ips:.1f} img/s  ETA {_format_duration(eta)}'
          writer.write(step, epoch=step / steps_per_epoch, **speed, **values)
          logging.info('step %d/%d  epoch %.2f  loss %.4f  top1 %.3f  lr %.3g%s', step, num_steps,
                       step / steps_per_epoch, values['loss'], values['top1'],
                       values['learning_rate'], timed)
          pending = []
        if eval_now:
          eval_start = time.perf_counter()
          run_eval = final_evaluation if last else evaluate
          eval_metrics = run_eval(state.params, eval_fn, config, builder, strategy)
          schedule = schedules.after_evaluation(config, schedule, 1.0 - eval_metrics['val_top1'])
          timer_start += time.perf_counter() - eval_start  # images/s counts training only
          writer.write(step, **eval_metrics)
          writer.flush()
          logging.info('eval at step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d images)', step,
                       eval_metrics['val_top1'], eval_metrics['val_top5'],
                       eval_metrics['val_loss'], eval_metrics['val_examples'])
        if save_now:
          # "Best" compares evaluations made the same way: a final one with other crops does
          # not compete (the last checkpoint is kept anyway).
          comparable = eval_now and not (last and config.final_eval_crops != config.eval_crops)
          checkpoints.save(
              step, state,
              checkpointing.make_meta(config, step, stream_shards, schedule,
                                      eval_metrics if eval_now else None),
              val_error=1.0 - eval_metrics['val_top1'] if comparable else None)
        if stop and not last:
          checkpoints.wait()
          preempted_at = step
          logging.warning('SIGTERM: stopped after step %d and saved it in %s. Run the same '
                          'command again to resume.', step, checkpoints.directory)
          break
  except BaseException as error:
    if jax.process_count() > 1 and isinstance(error, jax.errors.JaxRuntimeError):
      raise  # a peer process is gone: waiting for a (collective) save would wait for it
    # The error is what the user must see; cleaning up must not replace it.
    for cleanup in ((jax.profiler.stop_trace,) if tracing else ()) + (
        checkpoints.close,) + ((writer.close,) if writer else ()):
      try:
        cleanup()  # checkpoints.close waits for the save in flight: the last good one lands
      except Exception as e:  # pylint: disable=broad-except
        logging.error('While stopping after %s: %s', type(error).__name__, e)
    raise
  if tracing:
    jax.profiler.stop_trace()
  checkpoints.close()
  writer.close()
  if start_step >= num_steps:
    result = (f' Its evaluation: top-1 {eval_metrics["val_top1"]:.4f}  top-5 '
              f'{eval_metrics["val_top5"]:.4f}.' if 'val_top1' in eval_metrics else '')
    logging.info("Nothing to train: the checkpoint is at step %d of the run's %d.%s", start_step,
                 num_steps, result)
  if preempted_at is not None:
    return {**eval_metrics, 'preempted_at_step': preempted_at}
  return eval_metrics
