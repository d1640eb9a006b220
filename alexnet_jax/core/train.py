"""The training loop: `train_and_evaluate(config, workdir)` is the whole job.

main.py only parses flags and calls it; the tests call it too. The run itself (network, strategy,
programs) comes from run.build; this module feeds it batches, evaluates, logs, checkpoints, and
stops cleanly (SIGTERM, a non-finite loss, a full disk) with the checkpoints it saved intact.
"""

import collections
import concurrent.futures
import time
from typing import Iterator

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from alexnet_jax.core import checkpointing
from alexnet_jax.core import config as config_lib
from alexnet_jax.core import metrics as metrics_lib
from alexnet_jax.core import optimizer as optimizer_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.core import schedules
from alexnet_jax.data import pipeline
from alexnet_jax.data import spec as data_spec
from alexnet_jax.runtime import distributed
from alexnet_jax.runtime import paths
from alexnet_jax.runtime import preemption
from alexnet_jax.runtime import prompt_exit
from alexnet_jax.runtime import workdir_lock


def prefetch_to_mesh(batches: Iterator[dict], sharding, size: int = 2,
                     constants: dict | None = None) -> Iterator[dict]:
  """Places batches on the mesh `size` steps ahead, so a step never waits for a transfer.
  `constants` (arrays already on the devices: device_constants) join every batch as they are,
  so they cross to the devices once, not once per step."""
  queue = collections.deque()

  def put(batch):
    placed = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
    return {**placed, **(constants or {})}

  for batch in batches:
    queue.append(put(batch))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def device_constants(run: run_lib.Run, data: pipeline.Input) -> dict | None:
  """With augment_on 'device': the mean and std the steps subtract and divide by
  (Input.device_constants), replicated on the run's devices; None otherwise."""
  if run.augment_on != 'device':
    return None
  return jax.device_put(data.device_constants(), run.strategy.replicated)


def evaluate(run: run_lib.Run, params, data: pipeline.Input, crops: str | None = None) -> dict:
  """Top-1 / top-5 accuracy and loss over the evaluation split, each image counted once.

  `crops`: 'center' or 'ten' (the paper's ten patches, softmax averaged, section 4.1 of
  docs/alexnet2012.md); default config.eval_crops. run.eval_step compiles once per crop mode.
  """
  config, totals = run.config, None
  group, groups = run.strategy.input_group(config.eval_batch_size)
  batches = data.eval_batches(process_index=group, process_count=groups, crops=crops,
                              augment_on=run.augment_on)
  for batch in prefetch_to_mesh(batches, run.batch_sharding,
                                constants=device_constants(run, data)):
    sums = run.eval_step(params, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals['count']), 1.0)
  return {'val_loss': totals['loss'] / count, 'val_top1': totals['top1'] / count,
          'val_top5': totals['top5'] / count, 'val_examples': totals['count']}


def final_evaluation(run: run_lib.Run, params, data: pipeline.Input) -> dict:
  """The evaluation after the last step, the numbers a run reports: with
  config.final_eval_crops ('ten': the paper's ten patches)."""
  return evaluate(run, params, data, crops=run.config.final_eval_crops)


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


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


def compile_ahead(run: run_lib.Run, init: bool
                  ) -> tuple[concurrent.futures.Future, concurrent.futures.Future]:
  """Compiles the run's programs on a background thread: the initialisation (if `init`), then
  the train step and the evaluation step of each crop mode the run uses.

  Started before the dataset is generated and the first batches decoded, work that leaves a
  core free: XLA compiles on one thread. Returns two futures: the compiled initialisation (or
  None), and the steps, which land in their jit's cache (the loop's calls find them compiled).
  Wait for the second before the first step: a step called while its program is still
  compiling would compile it a second time."""
  config = run.config

  def compile_steps():
    run.train_step.lower(run.abstract_state, run.abstract_batch()).compile()
    for crops in dict.fromkeys((config.eval_crops, config.final_eval_crops)):
      run.eval_step.lower(run.abstract_state.params, run.abstract_batch(crops)).compile()

  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='compile_ahead')
  program = run.init_program() if init else None
  initialised = executor.submit(
      lambda: program and program.lower(jax.random.key(config.seed)).compile())
  steps = executor.submit(compile_steps)
  executor.shutdown(wait=False)  # its thread ends with the work
  return initialised, steps


def _open_workdir(workdir: str) -> str:
  """The absolute workdir (a gs:// URI as it is), created and proven writable (a file, or an
  object, written and removed), or ConfigError saying so."""
  workdir = paths.absolute(workdir)
  try:
    paths.check_writable(workdir)
  except OSError as e:
    raise config_lib.workdir_error(workdir, e) from e
  return workdir


def prepare_input(data: pipeline.Input) -> pipeline.Input:
  """data.prepare(), by process 0 before the others (processes generating the same files at
  once would collide); the others then open it again and find it prepared, or prepare their own
  copy when their data dir is not shared."""
  return distributed.process_zero_first(lambda first: data.prepare(reopen=not first),
                                        'dataset prepared')


def planned_steps(config: ml_collections.ConfigDict, data: pipeline.Input) -> tuple[int, int]:
  """(steps per epoch, steps the run trains): config.num_train_steps, or num_epochs epochs."""
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else int(config.num_epochs * data.steps_per_epoch))
  return data.steps_per_epoch, num_steps


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains `config` in `workdir` (resuming from its latest checkpoint) and returns the final
  evaluation metrics (with 'preempted_at_step' if a SIGTERM ended it early).

  Stops with FloatingPointError at the first non-finite loss or gradient (nothing non-finite is
  saved), CheckpointError for checkpoints that cannot be read, written or used by this config,
  WorkdirError when metrics cannot be written; in every case the checkpoints saved are intact.
  Refuses (workdir_lock.WorkdirBusy, before writing anything there) a workdir that another live
  run holds; holds it until it returns.
  """
  run = run_lib.build(config)  # refuses a bad config: nothing is written before this
  data = pipeline.open(data_spec.from_config(config))  # may refuse: nothing is written before
  config_lib.check_dataset(config, data.num_classes)
  workdir = paths.absolute(workdir)
  # Before anything is written there: a workdir a live run holds is refused here (exit 2), on
  # every process of a multi-process run (runtime/workdir_lock.py).
  lock = workdir_lock.hold_for_run(workdir, unusable=config_lib.workdir_error)
  try:
    return _train_and_evaluate(config, workdir, run, data)
  finally:
    lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, run: run_lib.Run,
                        data: pipeline.Input) -> dict:
  """train_and_evaluate's work, with the workdir held."""
  workdir = _open_workdir(workdir)
  group, groups = run.strategy.input_group(config.batch_size)  # which rows this process reads
  stream_shards = data.input_shards(groups)

  checkpoints = checkpointing.Checkpoints(workdir, keep=config.keep_checkpoints)
  try:
    latest = checkpoints.latest_step()
    if latest is None:
      state, schedule, eval_metrics = None, schedules.initial_state(), {}
    else:  # refuses (and changes nothing) if the checkpoint is unreadable or another config's
      state, meta = checkpoints.restore(latest, run.abstract_state, config, stream_shards)
      schedule, eval_metrics = meta['schedule'], meta['metrics'] or {}
      logging.info('Resumed from %s at step %d.', checkpoints.directory, int(state.step))
    if jax.process_index() == 0:
      paths.write_text(paths.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
    if state is None:
      init_compiled, steps_compiled = compile_ahead(run, init=True)
      data = prepare_input(data)  # generated on first use, while compiling
      state = init_compiled.result()(jax.random.key(config.seed))
    else:  # the dataset exists; a finished run (the same command again) compiles nothing
      data = prepare_input(data)
      steps_compiled = None
    steps_per_epoch, num_steps = planned_steps(config, data)
    if steps_compiled is None and int(state.step) < num_steps:
      _, steps_compiled = compile_ahead(run, init=False)
  except BaseException:
    checkpoints.close()
    raise

  eval_every = config.eval_every_steps if config.eval_every_steps > 0 else steps_per_epoch
  profile = tuple(config.profile_steps)

  start_step = int(state.step)
  train_batches = prefetch_to_mesh(
      data.train_batches(start_step=start_step, process_index=group, process_count=groups,
                         augment_on=run.augment_on),
      run.batch_sharding, constants=device_constants(run, data))
  current_lr = float(optimizer_lib.learning_rate(state.opt_state))
  pending = []  # (step, metrics) since the last log line: fetched only at log/eval/save steps
  timer_start, timer_step = None, start_step
  tracing = False
  preempted_at = None
  writer = None
  logging.info('Training %s (%s) for %d steps from step %d; %d steps per epoch; augmentation '
               'on the %s.', config.dataset, config.parallelism, num_steps, start_step,
               steps_per_epoch, run.augment_on)
  try:
    writer = metrics_lib.MetricsWriter(workdir)
    with preemption.Preemption() as preempted:
      for step in range(start_step + 1, num_steps + 1):
        lr = schedules.learning_rate(config, schedule, step - 1)
        if lr != current_lr:  # only when it changes; the velocity is left as it is
          state = state.replace(opt_state=optimizer_lib.set_learning_rate(
              state.opt_state, jax.device_put(np.float32(lr), run.strategy.replicated)))
          current_lr = lr
        if profile and step == profile[0]:
          jax.profiler.start_trace(paths.join(workdir, 'profile'))
          tracing = True
        batch = next(train_batches)
        if steps_compiled is not None:  # the first step: its program is compiled (or compiling)
          steps_compiled.result()
          steps_compiled = None
        state, metrics = run.train_step(state, batch)
        pending.append((step, metrics))
        if tracing and step == profile[1]:
          jax.block_until_ready(metrics)
          jax.profiler.stop_trace()
          tracing = False
          logging.info('Profiled steps %d-%d into %s.', profile[0], step,
                       paths.join(workdir, 'profile'))
        if timer_start is None:  # the first step includes compilation: time from its end
          jax.block_until_ready(metrics)
          timer_start, timer_step = time.perf_counter(), step
          logging.info('Step %d compiled and ran.', step)

        last = step == num_steps
        log_now = step % config.log_every_steps == 0 or last
        eval_now = step % eval_every == 0 or last
        stop = preempted.stop_now(
            step, check_all=log_now or eval_now or step % config.checkpoint_every_steps == 0)
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
          eval_metrics = run_eval(run, state.params, data)
          schedule = schedules.after_evaluation(config, schedule, 1.0 - eval_metrics['val_top1'])
          timer_start += time.perf_counter() - eval_start  # images/s counts training only
          writer.write(step, **eval_metrics)
          writer.flush()
          logging.info('eval at step %d: top-1 %.4f  top-5 %.4f  loss %.4f  (%d images)', step,
                       eval_metrics['val_top1'], eval_metrics['val_top5'],
                       eval_metrics['val_loss'], eval_metrics['val_examples'])
        if save_now:
          writer.flush()  # on gs://, metrics.jsonl and the events are uploaded whole here
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
          # Destroying the batch iterator waits for its tf.data workers (seconds, a minute on a
          # loaded machine); main leaves without it (runtime/prompt_exit.py).
          prompt_exit.keep(train_batches)
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
