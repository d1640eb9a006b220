"""Training and evaluation: the jitted step, the loop, metrics and checkpoints.

`train_and_evaluate(config, workdir)` is the whole job; `main.py` only parses flags and calls it,
and the tests call it too.
"""

import collections
import json
import os
import time
from typing import Any, Iterator

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from alexnet_jax import input_pipeline
from alexnet_jax import model as model_lib
from alexnet_jax import optimizer as optimizer_lib
from alexnet_jax import partitioning


class ConfigError(ValueError):
  """A config that cannot run; raised before anything is compiled or written."""


@flax.struct.dataclass
class TrainState:
  """Everything the next step depends on."""
  step: jax.Array
  params: Any  # both towers stacked on a leading axis of size 2
  opt_state: Any
  rng: jax.Array  # dropout key; step i uses fold_in(rng, i)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuse a config that cannot run, naming the field and the fix, before any work."""
  if config.parallelism not in partitioning.STRATEGIES:
    raise ConfigError(f'config.parallelism={config.parallelism!r} is not a strategy; use one of '
                      f'{", ".join(partitioning.STRATEGIES)}.')
  _validate_model_switches(config)
  num_devices = partitioning.resolve_num_devices(config.parallelism,
                                                 config.get('num_devices', 0))
  tower = model_lib.make_tower(config.model, config.model.num_classes)
  error = partitioning.fit_error(config.parallelism, num_devices, tower, jax.device_count())
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
  _validate_preprocessing(config)
  strategy = partitioning.make_strategy(config.parallelism, tower,
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


def _validate_model_switches(config: ml_collections.ConfigDict) -> None:
  """The design choices of configs/default.py's `model` section that ablations turn off."""
  model = config.model
  towers = model.get('towers', 2)
  if towers not in (1, 2):
    raise ConfigError(f'config.model.towers={towers}: use 2 (the paper\'s two towers) or 1 (one '
                      'tower with half the kernels, the paper\'s one-GPU net).')
  if towers == 1 and config.parallelism in partitioning.TOWER_STRATEGIES:
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
  """1.0 where the label is among the k largest logits."""
  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
  return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def train_step(state: TrainState, batch: dict, *, strategy: partitioning.Strategy,
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
  metrics = {'loss': loss, 'top1': jnp.mean(top_k_correct(logits, labels, 1)),
             'learning_rate': optimizer_lib.learning_rate(state.opt_state),
             'grad_norm': optax.global_norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: dict, *, strategy: partitioning.Strategy) -> dict:
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


def create_train_state(config, tower, strategy, tx, rng) -> TrainState:
  """Initialise on the mesh, in one program: each tower's parameters and momentum on its
  devices, step and dropout key replicated (also across processes)."""
  def init(rng):
    init_rng, dropout_rng = jax.random.split(rng)
    params = model_lib.init_params(tower, init_rng, config.image_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=dropout_rng)

  abstract = jax.eval_shape(init, rng)
  param_sharding = strategy.param_sharding(abstract.params)
  opt_sharding = optax.tree_map_params(
      tx, lambda _, s: s, abstract.opt_state, param_sharding,
      transform_non_params=lambda _: strategy.replicated)
  shardings = TrainState(step=strategy.replicated, params=param_sharding,
                         opt_state=opt_sharding, rng=strategy.replicated)
  return jax.jit(init, out_shardings=shardings)(rng)


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


class MetricsWriter:
  """metrics.jsonl in the workdir, one JSON object per line, each with `step` (process 0)."""

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._enabled = jax.process_index() == 0

  def write(self, step: int, **values) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')


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


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final
  evaluation metrics."""
  validate_config(config)
  builder = input_pipeline.prepare_dataset(config)  # may refuse: nothing is written before this
  dataset_classes = input_pipeline.num_classes(builder)
  if config.model.num_classes != dataset_classes:
    raise ConfigError(
        f'config.model.num_classes={config.model.num_classes} but {config.dataset} has '
        f'{dataset_classes} classes; set --config.model.num_classes={dataset_classes}.')

  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  tower = model_lib.make_tower(config.model, config.model.num_classes)
  strategy = partitioning.make_strategy(config.parallelism, tower,
                                      num_devices=config.get('num_devices', 0))
  tx = optimizer_lib.paper_sgd(learning_rate=config.learning_rate, momentum=config.momentum,
                               weight_decay=config.weight_decay)
  state = create_train_state(config, tower, strategy, tx, jax.random.key(config.seed))
  state_sharding = jax.tree.map(lambda x: x.sharding, state)

  checkpoints = ocp.CheckpointManager(
      os.path.join(workdir, 'checkpoints'),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.get('keep_checkpoints', 3),
                                           create=True))
  if checkpoints.latest_step() is not None:
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
    state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(abstract))
    logging.info('Resumed from %s at step %d.', checkpoints.directory, int(state.step))

  steps_per_epoch = max(input_pipeline.num_examples(builder, config.train_split)
                        // config.batch_size, 1)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * steps_per_epoch))
  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  fc_total = tuple(2 * f for f in config.model.fc_features)

  step_fn = jax.jit(
      lambda s, b: train_step(s, b, strategy=strategy, tx=tx, fc_features_total=fc_total,
                              dropout_rate=config.model.dropout_rate),
      in_shardings=(state_sharding, strategy.batch_sharding),
      out_shardings=(state_sharding, strategy.replicated), donate_argnums=0)
  eval_fn = jax.jit(lambda p, b: eval_step(p, b, strategy=strategy),
                    in_shardings=(state_sharding.params, strategy.batch_sharding),
                    out_shardings=strategy.replicated)

  writer = MetricsWriter(workdir)
  group, groups = strategy.input_group(config.batch_size)  # which rows this process reads
  train_batches = prefetch_to_mesh(
      input_pipeline.train_iterator(config, builder, start_step=int(state.step),
                                    process_index=group, process_count=groups),
      strategy.batch_sharding)

  start_step = int(state.step)
  pending = []  # device metrics since the last log line: no host sync between log steps
  timer_start, timer_step = None, start_step
  eval_metrics = {}
  logging.info('Training %s (%s) for %d steps from step %d; %d steps per epoch.',
               config.dataset, config.parallelism, num_steps, start_step, steps_per_epoch)
  for step in range(start_step + 1, num_steps + 1):
    state, metrics = step_fn(state, next(train_batches))
    pending.append(metrics)
    if timer_start is None:  # the first step includes compilation: time from its end
      jax.block_until_ready(metrics)
      timer_start, timer_step = time.perf_counter(), step
      pending = []
      logging.info('Step %d compiled and ran.', step)
    if step % config.log_every_steps == 0 or step == num_steps:
      if pending:
        values = {k: float(np.mean([m[k] for m in jax.device_get(pending)]))
                  for k in pending[0]}
        if not np.isfinite(values['loss']):
          raise FloatingPointError(f'Loss is {values["loss"]} at step {step}; stopping. The '
                                   f'last good checkpoint is in {checkpoints.directory}.')
        elapsed = time.perf_counter() - timer_start
        ips = (step - timer_step) * config.batch_size / max(elapsed, 1e-9)
        eta = (num_steps - step) * config.batch_size / max(ips, 1e-9)
        writer.write(step, epoch=step / steps_per_epoch, images_per_second=ips, **values)
        logging.info('step %d/%d  epoch %.2f  loss %.4f  top1 %.3f  lr %.2g  %.1f img/s  ETA %s',
                     step, num_steps, step / steps_per_epoch, values['loss'], values['top1'],
                     values['learning_rate'], ips, _format_duration(eta))
        pending = []
    if step % eval_every == 0 or step == num_steps:
      eval_start = time.perf_counter()
      eval_metrics = evaluate(state.params, eval_fn, config, builder, strategy)
      timer_start += time.perf_counter() - eval_start  # images/s counts training only
      writer.write(step, **eval_metrics)
      logging.info('eval at step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d images)', step,
                   eval_metrics['val_top1'], eval_metrics['val_top5'], eval_metrics['val_loss'],
                   eval_metrics['val_examples'])
    if step % config.checkpoint_every_steps == 0 or step == num_steps:
      checkpoints.save(step, args=ocp.args.StandardSave(state))
  checkpoints.wait_until_finished()
  checkpoints.close()
  return eval_metrics
