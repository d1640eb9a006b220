"""Leaving at once after a preemption notice, once what matters is on disk.

After SIGTERM the loop saves the step, waits for the save to commit, prints `SIGTERM: stopped
after step N`, closes the checkpoint manager and the metrics writer, and returns. What a normal
interpreter exit then still waits for is the input pipeline: the training batches' tf.data
iterator (tfds.as_numpy over shuffle, parallel map, batch, prefetch), whose destructor blocks
until its worker threads have finished the elements they are producing, which is seconds on an
idle machine and a minute on a loaded one, then the teardown of TensorFlow's and XLA's thread
pools at interpreter exit. None of it is needed (the batches are a function of the config and the
step, and the resumed run rebuilds them), and a preempted VM has about 30 s before SIGKILL.

So `main` enables this module, the loop hands it the batch iterator at a preemption (`keep`:
kept referenced, so it is never destroyed), and `leave` flushes the logs, shuts down
jax.distributed (a barrier every process of the run reaches at the same step) and ends the
process with os._exit: no destructor, atexit handler or thread pool is waited for. By then the
checkpoint is committed and closed and the metrics files are closed (train.py does both before it
returns).

Only `main` enables it: a caller of train_and_evaluate in its own process (the tests, ablate)
keeps the old behaviour, where the iterator is destroyed when the function returns.

ALEXNET_JAX_EXIT_REPORT=PATH makes `leave` write what was still running when it was called, as
JSON ({"threads": [...], "kept": [...], "code": N}), for the tests: no thread but the main one
may be alive then (an orbax save or commit thread would be one).
"""

import json
import os
import sys
import threading
import time
from typing import Any, NoReturn

_state = {'enabled': False}
_kept: list = []

REPORT_ENV = 'ALEXNET_JAX_EXIT_REPORT'


def enable() -> None:
  """Called by main: a preemption ends the process through `leave`."""
  _state['enabled'] = True


def enabled() -> bool:
  return _state['enabled']


def keep(obj: Any) -> None:
  """Keeps `obj` referenced until the process ends, so its destructor never runs (when
  enabled; otherwise nothing happens and it is destroyed as usual)."""
  if _state['enabled']:
    _kept.append(obj)


def alive_threads() -> list[str]:
  """The Python threads other than the calling one that are alive, 'name (daemon)' or 'name'."""
  me = threading.current_thread()
  return [f'{t.name}{" (daemon)" if t.daemon else ""}' for t in threading.enumerate()
          if t is not me and t.is_alive()]


def leave(code: int, *, joined: bool = False, join_timeout_s: float = 10.0) -> NoReturn:
  """Ends the process now with `code`, after flushing stdout, stderr and the logs and (`joined`)
  shutting jax.distributed down. A non-daemon Python thread still alive (none is expected) gets
  up to `join_timeout_s` to finish, as a normal exit would have waited for it."""
  alive = alive_threads()
  report = os.environ.get(REPORT_ENV)
  if report:
    with open(report, 'w') as f:
      json.dump({'threads': alive, 'kept': [type(k).__name__ for k in _kept], 'code': code}, f)
  deadline = time.monotonic() + join_timeout_s
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join(max(deadline - time.monotonic(), 0))
  try:
    from absl import logging  # pylint: disable=import-outside-toplevel
    logging.flush()
  except Exception:  # pylint: disable=broad-except
    pass
  if joined:
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.shutdown()  # every process stops at the same step and meets here
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)
