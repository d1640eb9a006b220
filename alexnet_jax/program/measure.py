"""What the tools measure, measured one way: compile, memory analysis, timing a step, skipping.

comms and bench both compile the real train step of a strategy (run.build), read XLA's memory
analysis of the compiled program, time steps, and skip the strategies a device count cannot
hold; they do it with these functions, so their numbers for the same step agree.

Timing: each step is waited for on its own and the fastest is the step time (the mean is
recorded beside it). On a shared machine the fastest is the least disturbed measurement, the same
rule the matrix-product reference of bench uses.
"""

import time
from typing import Any, Callable, Optional, Sequence

import jax
import ml_collections

from alexnet_jax.core import config as config_lib
from alexnet_jax.core import run as run_lib
from alexnet_jax.runtime import command

MEMORY_FIELDS = ('argument', 'output', 'temp', 'alias', 'generated_code')


def strategy_config(config: ml_collections.ConfigDict, parallelism: str,
                    num_devices: int) -> ml_collections.ConfigDict:
  """`config` with the strategy and device count a tool asks for, its evaluation batch following
  the training batch (train_step_only)."""
  config = config.copy_and_resolve_references()
  config.parallelism, config.num_devices = parallelism, num_devices
  return train_step_only(config)


def train_step_only(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` (changed in place, and returned) for a tool that compiles the train step only
  (comms, bench, calibrate, plan): the evaluation batch follows the training batch, so the config
  check refuses only the fields the step uses. A pod's evaluation batch must divide over the
  batch shards like the training batch; `--config.eval_batch_size=250` on 4 shards is a training
  run's concern, not a train step's. Call it again after changing `batch_size`."""
  config.eval_batch_size = config.batch_size
  return config


def device_counts(text: str) -> list[int]:
  """'2,8,32' -> [2, 8, 32] (a tool's --devices); ValueError with what to type otherwise."""
  try:
    counts = [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    counts = []
  if not counts or min(counts) < 1:
    raise ValueError(f'--devices={text}: give device counts, e.g. --devices=2 or '
                     '--devices=2,8,32')
  return counts


def skip_reason(config: ml_collections.ConfigDict, devices: Sequence) -> Optional[str]:
  """Why `config` cannot run on `devices` (config.problems, joined), or None."""
  found = config_lib.problems(config, devices)
  return '; '.join(found) if found else None


def compile_train_step(run: run_lib.Run, state=None, batch=None,
                       compiler_options: Optional[dict] = None) -> tuple[Any, float]:
  """(the compiled train step, seconds to lower and compile it). Lowered against the abstract
  state and batch unless real ones are given, so it compiles for devices this process cannot run
  on as well."""
  state = run.abstract_state if state is None else state
  batch = run.abstract_batch() if batch is None else batch
  start = time.perf_counter()
  compiled = run.train_step.lower(state, batch).compile(compiler_options=compiler_options)
  return compiled, time.perf_counter() - start


def memory(compiled, devices: Sequence = ()) -> dict:
  """Per device, from XLA's analysis of the compiled program: {argument, output, temp, alias,
  generated_code}_bytes and peak_memory_bytes = argument + output + temp - alias (donated
  buffers are counted once). Where the backend reports live memory (GPU, TPU) after a run, the
  devices' largest `peak_bytes_in_use` is added."""
  out = {}
  try:
    analysis = compiled.memory_analysis()
    fields = {f: int(getattr(analysis, f'{f}_size_in_bytes', 0) or 0) for f in MEMORY_FIELDS}
    out.update({f'{k}_bytes': v for k, v in fields.items()})
    out['peak_memory_bytes'] = (fields['argument'] + fields['output'] + fields['temp']
                                - fields['alias'])
  except Exception as e:  # pylint: disable=broad-except  # not every backend reports it
    out['memory_analysis_error'] = str(e)
  stats = [d.memory_stats() for d in devices]
  if stats and all(stats) and all('peak_bytes_in_use' in s for s in stats):
    out['device_peak_bytes_in_use'] = max(int(s['peak_bytes_in_use']) for s in stats)
  return out


def time_steps(compiled, state, batch, steps: int, warmup: int) -> dict:
  """Runs `warmup` untimed then `steps` timed steps, each waited for on its own. Returns
  {'step_seconds' (fastest), 'mean_step_seconds', 'times', 'state', 'metrics'}; with steps = 0
  only the warm-up runs and the times are None."""
  metrics = None
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - start)
  return {'step_seconds': min(times) if times else None,
          'mean_step_seconds': sum(times) / len(times) if times else None,
          'times': times, 'state': state, 'metrics': metrics}


def each_strategy(config: ml_collections.ConfigDict, names: Sequence[str], num_devices: int,
                  measure_one: Callable[[ml_collections.ConfigDict], dict],
                  devices: Optional[Sequence] = None, log: Callable[[str], Any] = print
                  ) -> tuple[dict, dict]:
  """({name: measure_one(its config)}, {name: why skipped}) for every strategy in `names` on
  `num_devices` of `devices` (0: what the strategy uses by default). command.Refused (exit 2)
  when none can run: a config the check refuses for every strategy is refused, not reported."""
  devices = list(jax.devices() if devices is None else devices)
  measured, skipped = {}, {}
  for name in names:
    config_n = strategy_config(config, name, num_devices)
    why = skip_reason(config_n, devices)
    if why:
      skipped[name] = why
      log(f'{name}: skipped ({why})')
      continue
    log(f'{name}: compiling and measuring on {devices[0].platform} ...')
    measured[name] = measure_one(config_n)
  if skipped and not measured:  # a config refused whatever the strategy: the command's refusal
    raise command.Refused('none of the strategies asked for can run here: ' + '; '.join(
        f'{name}: {why}' for name, why in skipped.items()))
  return measured, skipped
