"""Stopping for a preemption notice (SIGTERM): every process saves and stops at the same step.

A scheduler that preempts a job sends SIGTERM, waits a grace period, then sends SIGKILL. The
training loop asks `Preemption.stop_now(step, check_all)` after every step; when it answers True
the loop saves a checkpoint and ends. In a multi-process run the save is collective, so every
process must get True at the same step, although SIGTERM may reach only one of them.

Two ways to make them agree, and why this module uses JAX's own:

- JAX's preemption sync point (`multihost_utils.reached_preemption_sync_point(step)`, the one
  orbax's `CheckpointManager.should_save` and `save` consult too). `jax.distributed.initialize`
  creates a preemption sync manager whenever `jax_enable_preemption_service` is on, which is its
  default. Its notifier installs a C++ SIGTERM handler that only sets a flag (so SIGTERM no
  longer kills the process) and a thread that polls that flag once a second; on a notice it
  tells the coordination service, every process's background thread then publishes the last
  step it passed in, waits at a barrier, and sets the sync step to the largest of them + 1.
  `reached_sync_point(step)` is a mutex and a comparison (no RPC); it blocks only while that
  protocol runs, so no process can step past the sync step before it is fixed. Every process
  returns True at the same step, about a second plus one step after the first SIGTERM, whatever
  the logging interval, and there is no collective on steps without a notice.
- The hand-written agreement (what train.py did before): a Python SIGTERM handler sets a flag
  and the processes all-gather it, only at steps where they sync anyway (log, evaluation and
  save steps) because an all-gather every step would cost a host round trip per step. A notice
  therefore waits up to a logging interval before anyone stops, which can exceed the grace
  period, and it costs a collective at every logging step even when nothing happened.

The two cannot be mixed: a process has one C-level SIGTERM handler, and whichever of Python's
(`signal.signal`) and JAX's was installed last is the only one that runs. A Python handler
installed after `jax.distributed.initialize` silently disables JAX's sync point; one installed
before is never called, although `signal.getsignal` still names it. Python also does not know
JAX's handler exists (`signal.getsignal` says SIG_DFL), so "restoring the previous handler"
would put back SIG_DFL, not JAX's. Hence, with a sync manager present, this module installs no
handler at all and leaves SIGTERM to JAX from `jax.distributed.initialize` until the process
ends: a notice that arrives before the first step (compilation, restoring) is honoured at the
first step, and one that arrives after the last step is ignored (the run finishes by itself or
the scheduler's SIGKILL ends it).

JAX's protocol trusts that the last step any thread passed to `reached_preemption_sync_point`
is the step the process is at (the sync manager keeps one counter per process and sets it on
every call). orbax's `CheckpointManager` also calls it, through its `reached_preemption(step)`:
from `save` (the step being saved, the loop's own: harmless) and, on process 0, from the thread
that finalises an asynchronous save, with the saved step while the loop has moved on. If the
protocol starts in that window it publishes the old step, the sync step can fall behind the
loop, and the notice is missed (or, when only process 0 misses it, the others enter the
collective save without it). So the checkpoint manager must not ask: checkpointing.py's manager
overrides `reached_preemption` to return False, and this loop is the only caller.

Without a sync manager there is nothing of JAX's to use:
- a single-process run (`jax.distributed` not initialised: `reached_preemption_sync_point`
  always returns False there) records SIGTERM with a Python handler on the main thread, stops
  at the next step, and restores the previous handler on exit;
- a multi-process run with `jax_enable_preemption_service` turned off (JAX would raise
  RuntimeError) falls back to the Python handler plus the all-gather at `check_all` steps.
"""

import signal
import threading

from absl import logging
import jax
from jax._src import distributed as jax_distributed
from jax.experimental import multihost_utils
import numpy as np


def _sync_manager():
  """JAX's preemption sync manager, or None where jax.distributed has none (not initialised,
  or started with jax_enable_preemption_service off)."""
  state = jax_distributed.global_state
  return state.preemption_sync_manager if state.client is not None else None


class Preemption:
  """Context manager around the training loop: `stop_now(step, check_all)` after each step says
  whether to save it and stop. `mode` is 'jax' (JAX's preemption sync point), 'signal' (one
  process, a Python handler) or 'allgather' (several processes without JAX's sync manager)."""

  def __init__(self):
    self._flag = False  # SIGTERM seen by our Python handler ('signal' and 'allgather')
    self._reached = False  # a stop was decided ('jax': the sync point; the others: stop_now)
    self._previous = None
    self._installed = False
    self.mode = None

  @property
  def received(self) -> bool:
    """Whether this run is stopping for a preemption notice. With JAX's sync point, a process
    learns of a notice only at the agreed step, so this turns True there; with a Python handler,
    as soon as this process got SIGTERM."""
    return self._reached or self._flag

  def __enter__(self):
    if _sync_manager() is not None:
      self.mode = 'jax'
      python_handler = signal.getsignal(signal.SIGTERM)
      if callable(python_handler):
        logging.warning(
            'A Python SIGTERM handler (%r) is registered in a jax.distributed run: it and JAX\'s '
            'preemption notice cannot both receive SIGTERM, whichever was installed last gets '
            'it. Remove it, or a preemption will not stop the processes together.',
            python_handler)
      return self
    self.mode = 'allgather' if jax.process_count() > 1 else 'signal'
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self._flag = True

  def stop_now(self, step: int, check_all: bool) -> bool:
    """Whether to save and stop after `step`. Call it after every step, on every process, with
    the same increasing steps. `check_all`: every process syncs at this step anyway (log,
    evaluation, save); used only where JAX's sync manager is missing."""
    if self.mode == 'jax':
      stop = multihost_utils.reached_preemption_sync_point(step)
    elif self.mode == 'signal':
      stop = self._flag
    elif self.mode == 'allgather':
      stop = check_all and bool(
          np.any(multihost_utils.process_allgather(np.asarray(self._flag))))
    else:
      raise RuntimeError('Preemption.stop_now outside its `with` block.')
    self._reached = self._reached or stop
    return stop

  def __exit__(self, *exc_info):
    if self._installed:
      # None: the previous handler was not Python's; SIGTERM's start-up default is SIG_DFL.
      signal.signal(signal.SIGTERM,
                    signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False
