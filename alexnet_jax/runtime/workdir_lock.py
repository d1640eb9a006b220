"""One run per workdir: an OS lock on WORKDIR/.lock, held while a run writes there.

Two runs on one workdir (two terminals, or a requeued job whose first copy still runs) would
append every step twice to metrics.jsonl, write two sets of TensorBoard events and save into one
checkpoints/ (orbax's start-up even deletes the other run's unfinished save as leftover tmp
directories). So a run takes `flock(LOCK_EX | LOCK_NB)` on WORKDIR/.lock before it writes
anything there, and a second run is refused at once (`WorkdirBusy`, exit 2) with the holder's
host, pid, command and start time, which the holder writes into the file after locking.

The lock belongs to the open file, so it dies with the process: a run killed with `kill -9` (or
by the OOM killer) leaves a .lock file naming a dead process, which blocks nothing. The file is
never deleted (deleting it would let a third run lock a fresh file beside one still held) and a
refused run never writes to it.

On a shared file system:
- NFS (v3 through the NLM lock manager, v4 natively; Filestore): Linux emulates `flock` with a
  whole-file POSIX lock on NFS, which the server arbitrates, so runs on different hosts exclude
  each other. A mount with `nolock` or `local_lock=flock|all` keeps locks local to one client:
  runs on different hosts then do not see each other's. If a host dies (not only the process),
  the server holds its lock until the client's lease expires (NFSv4: about 90 s) or, with NFSv3,
  until that host comes back; a run started elsewhere meanwhile is refused, naming the dead
  host's process. As POSIX locks are per process on NFS, closing any descriptor of the file
  releases the lock: this module opens it once per process (a nested hold of the same path
  reuses it).
- gcsfuse: locks are only local to the host (the kernel's, per mount); runs on two hosts are not
  excluded. Runs on one host still are.

- gs:// (object storage): no lock. A workdir on gs:// is not held: two runs on it are not
  excluded, and the run says so in its log. An object created only if absent
  (`ifGenerationMatch=0`, which GCS and the tests' emulator honour) would exclude a second run,
  but nothing releases it when its holder dies: a run killed with -9, or a preempted TPU VM,
  leaves it behind, indistinguishable from a live holder (no file descriptor dies with the
  process, and the holder's host may be gone), and would refuse the resume that must follow.
  Telling them apart needs a lease the holder renews and others wait out, which is not built.

In a multi-process run (jax.distributed) only process 0 locks; `hold_for_run` tells every
process its verdict through the coordination service, so a refusal stops all of them at once
(none is left waiting in a collective for process 0). `ablate` holds its own directory for its
whole run (not with `--only`, whose jobs, one per run, share it); each training run below it
locks its own sub-workdir, a different file.

This module imports neither JAX nor TensorFlow (hold_for_run imports JAX when it is called).
"""

import datetime
import errno
import fcntl
import os
import socket
import sys
import threading
import time
from typing import Callable, Optional

from absl import logging

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths

LOCK_NAME = '.lock'


class WorkdirBusy(errors.Refused):
  """Another live run holds the workdir (exit 2); nothing was written."""


class WorkdirUnusable(errors.Refused):
  """The workdir cannot be created or its lock file opened (exit 2)."""


# path -> [fd, holds]: one descriptor per lock file and process (see the module docstring).
_held: dict[str, list] = {}
_held_guard = threading.Lock()


def describe_self() -> str:
  """What the holder writes into the lock file: host, pid, command, start time (one per line)."""
  command = ' '.join([os.path.basename(sys.executable)] + [
      a for a in (sys.orig_argv[1:] if hasattr(sys, 'orig_argv') else sys.argv)])
  started = datetime.datetime.now(datetime.timezone.utc).astimezone().isoformat(
      timespec='seconds')
  return (f'host: {socket.gethostname()}\npid: {os.getpid()}\ncommand: {command}\n'
          f'started: {started}\n')


def read_holder(path: str) -> dict:
  """The fields the holder wrote into the lock file at `path` ({} if none yet)."""
  try:
    with open(path) as f:
      text = f.read(64 * 1024)
  except OSError:
    return {}
  fields = {}
  for line in text.splitlines():
    key, sep, value = line.partition(': ')
    if sep:
      fields[key.strip()] = value.strip()
  return fields


class Lock:
  """A held lock on `path` (release() or the end of the process lets it go)."""

  def __init__(self, path: Optional[str]):
    self.path = path

  def release(self) -> None:
    if self.path is None:
      return
    path, self.path = self.path, None
    with _held_guard:
      entry = _held.get(path)
      if entry is None:
        return
      entry[1] -= 1
      if entry[1] > 0:
        return
      del _held[path]
    os.close(entry[0])  # closing the descriptor releases the lock; the file stays

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.release()


NOT_LOCKED = Lock(None)  # what processes other than 0 of a multi-process run hold


def _dead_here(holder: dict) -> bool:
  """Whether the holder named is a process of this host that no longer exists."""
  if holder.get('host') != socket.gethostname():
    return False
  try:
    os.kill(int(holder['pid']), 0)
  except ProcessLookupError:
    return True
  except (OSError, ValueError):
    return False
  return False


def _busy(workdir: str, path: str) -> WorkdirBusy:
  """The refusal, naming the holder from the lock file's content. A holder that has just locked
  writes its content a moment later (until then the file may still name an earlier, dead run):
  read again for up to a second while it names no live process of this host."""
  for _ in range(10):
    holder = read_holder(path)
    if holder.get('pid') and not _dead_here(holder):
      break
    time.sleep(0.1)
  if holder.get('pid'):
    who = (f'by process {holder["pid"]} on host {holder.get("host", "?")} (started '
           f'{holder.get("started", "?")}: {holder.get("command", "?")})')
  else:
    who = f'by another process (it has not written its host and pid into {path} yet)'
  pid, host = holder.get('pid', 'PID'), holder.get('host', 'its host')
  return WorkdirBusy(
      f'{workdir} is in use {who}. One run at a time may write a workdir: wait for it to '
      f'finish, or stop that process (`kill {pid}` on {host}: SIGTERM saves a checkpoint '
      'first), then run this command again to resume; or use another --workdir. Nothing was '
      'written.')


def _unusable(workdir: str, error: OSError) -> errors.Refused:
  return WorkdirUnusable(f'--workdir={workdir} cannot be written ({error.strerror or error}); '
                         'use a directory you can write to.')


def acquire(workdir: str, *,
            unusable: Callable[[str, OSError], errors.Refused] = _unusable) -> Lock:
  """Locks WORKDIR/.lock (creating the directory) or raises WorkdirBusy naming its holder.

  A path this process already holds is held again (nested; released when every hold is). `unusable(workdir, OSError)`: the
  refusal when the directory cannot be created or the file opened. A gs:// workdir is not
  locked (the module docstring): a warning, and a Lock that holds nothing."""
  if paths.is_remote(workdir):
    logging.warning('--workdir=%s is on object storage, where runs are not locked: make sure no '
                    'other run uses it (see alexnet_jax/runtime/workdir_lock.py).', workdir)
    return NOT_LOCKED
  workdir = os.path.abspath(workdir)
  path = os.path.join(workdir, LOCK_NAME)
  with _held_guard:
    entry = _held.get(path)
    if entry is not None:
      entry[1] += 1
      return Lock(path)
    try:
      os.makedirs(workdir, exist_ok=True)
      # No O_TRUNC: a refused run must not touch the holder's content.
      fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise unusable(workdir, e) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      try:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise _busy(workdir, path) from None
        raise WorkdirUnusable(
            f'Cannot lock {path} ({e.strerror or e}): the file system of --workdir={workdir} '
            'does not support locks (see alexnet_jax/runtime/workdir_lock.py). Use a local or '
            'NFS directory.') from e
      finally:
        os.close(fd)
    try:  # the holder says who it is
      os.ftruncate(fd, 0)
      os.pwrite(fd, describe_self().encode(), 0)
      os.fsync(fd)
    except OSError:
      pass  # the lock is what counts; the content is only for the message
    _held[path] = [fd, 1]
  return Lock(path)


_agreements = [0]  # a counter for the coordination service's keys (one per hold_for_run call)


def hold_for_run(workdir: str, timeout_s: int = 600,
                 unusable: Callable[[str, OSError], errors.Refused] = _unusable) -> Lock:
  """The training run's hold on `workdir`: `acquire` in a one-process run; in a multi-process
  run process 0 acquires and every process learns the outcome from the coordination service,
  so a refusal on process 0 (WorkdirBusy, or `unusable`'s) raises there and WorkdirBusy on
  every other process (no process goes on to wait for process 0 in a collective)."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_count() == 1:
    return acquire(workdir, unusable=unusable)
  from jax._src import distributed as jax_distributed  # pylint: disable=import-outside-toplevel
  client = jax_distributed.global_state.client
  _agreements[0] += 1
  key = f'alexnet_jax/workdir_lock/{_agreements[0]}'
  if jax.process_index() == 0:
    try:
      lock = acquire(workdir, unusable=unusable)
    except errors.Refused as e:
      client.key_value_set(key, 'refused ' + str(e))
      raise
    client.key_value_set(key, 'held')
    return lock
  try:
    verdict = client.blocking_key_value_get(key, timeout_s * 1000)
  except Exception as e:  # pylint: disable=broad-except  # a deadline or a lost coordinator
    raise errors.Failed(
        f'Process 0 did not say within {timeout_s} s whether it holds the workdir {workdir} '
        f'({str(e).splitlines()[0][:200]}); its log says why.') from e
  if verdict.startswith('refused '):
    raise WorkdirBusy(f'process 0 of this run refused the workdir: {verdict[len("refused "):]}')
  return NOT_LOCKED
