"""Joining a multi-process run: JAX's own multi-controller runtime, started before any JAX work.

Every process runs the same program (`python -m alexnet_jax.main ...`); `jax.distributed`
connects them through a coordinator (process 0), after which `jax.devices()` lists every
process's devices and one mesh spans them all. Three ways in:

- explicit: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each process
  (what launch/local.sh passes; CPU processes then run their collectives over gloo);
- detected: on Cloud TPU pods, SLURM (`srun`) and Open MPI, `jax.distributed.initialize()` finds
  the coordinator, count and id by itself;
- neither: a single-process run, nothing to join.

A process that never arrives makes the others stop after `init_timeout_s`; one that dies later
makes the others stop after `heartbeat_timeout_s` (or at once, when a collective loses its
peer). Both are JAX's coordination service; main.py turns the Python-visible failures into a
message that says what to do.
"""

import os
from typing import Callable, Optional, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils

T = TypeVar('T')


def _cluster_detected() -> Optional[str]:
  """The launcher whose environment names this process's peers, if several were started."""
  if int(os.environ.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_JOB_ID' in os.environ:
    return 'SLURM'
  if int(os.environ.get('OMPI_COMM_WORLD_SIZE', '1') or 1) > 1:
    return 'Open MPI'
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if ',' in hosts or os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return 'Cloud TPU'
  return None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, init_timeout_s: int = 300,
               heartbeat_timeout_s: int = 100) -> bool:
  """Joins the run's other processes when there are any; returns whether it did.

  Must run before JAX starts a backend (after `jax_num_cpu_devices` is set, if it is).
  """
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  detected = None if explicit else _cluster_detected()
  if not explicit and detected is None:
    return False
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError('A multi-process run started by hand needs all three of --coordinator_address'
                     '=HOST:PORT (process 0\'s address), --num_processes=N and --process_id=I '
                     '(0..N-1, distinct); launch/local.sh shows how.')
  # CPU processes exchange collectives over gloo (accelerators use their own: NCCL, ICI).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  where = f'coordinator {coordinator_address}' if explicit else f'{detected} environment'
  logging.info('Joining a multi-process run (%s, process %s of %s); waiting up to %d s for every '
               'process to arrive. If this process then stops with DEADLINE_EXCEEDED '
               '(RegisterTask), a process did not start: start all of them with the same '
               'coordinator address and process count.', where,
               'auto' if process_id is None else process_id,
               'auto' if num_processes is None else num_processes, init_timeout_s)
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=init_timeout_s,
                             heartbeat_timeout_seconds=heartbeat_timeout_s)
  logging.info('Process %d of %d joined: %d local device(s), %d in all.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def process_zero_first(prepare: Callable[[bool], T], what: str) -> T:
  """`prepare(True)` on process 0 (and in a one-process run), then `prepare(False)` on the others
  once process 0 has finished: for work that writes shared files (generating or converting a
  dataset), which processes doing at once would collide on. The flag says whether the caller may
  reuse what it opened before (the others must look afresh at what process 0 wrote)."""
  if jax.process_count() == 1:
    return prepare(True)
  result = prepare(True) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices(f'alexnet_jax: {what} by process 0')
  return prepare(False) if jax.process_index() != 0 else result
