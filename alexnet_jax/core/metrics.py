"""What a run writes about itself while it trains: metrics.jsonl and TensorBoard events.

Written by hand on top of `tf.summary` (TensorFlow is already the input pipeline's dependency):
clu's metric writers do the same on the same calls and would add a package; see docs/performance.md
("Libraries") for what was weighed. TensorFlow is imported when process 0 makes its writer, not
with this module: the modules that build and time steps must import where TensorFlow is not
installed (tests/test_no_tensorflow.py), and this one should not be what brings it back.

On object storage (a gs:// workdir, runtime/paths.py), which has no appends, both are kept here
and uploaded whole at every flush (each evaluation, each checkpoint, the end): metrics.jsonl is
rewritten whole, and the event files are written by tf.summary into a local staging directory and
copied up. One object per file keeps the readers (figures, evaluate, TensorBoard) unchanged; a
file a run rewrites at its checkpoints costs an upload of a few KB to a few MB each time, far
less than the checkpoint itself. A run killed between flushes loses the lines since the last
one; its resume trains and logs those steps again (local disk: the same lines appear twice, the
later one counting).
"""

import functools
import json
import os
import shutil
import tempfile

import jax

from alexnet_jax.runtime import errors
from alexnet_jax.runtime import paths


class WorkdirError(errors.Failed, RuntimeError):
  """The workdir stopped taking writes (full disk, permissions) during a run."""


@functools.cache
def _tf():
  """TensorFlow and the metadata tensorboard's tf.summary.scalar writes, imported once, on the
  first summary (see the module docstring for why not at import)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
  scalar = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
  return tf, scalar


class MetricsWriter:
  """metrics.jsonl (one JSON object per line, each with `step`) and TensorBoard event files
  (`tensorboard --logdir WORKDIR`, the same names and values) in the workdir; process 0 only.

  A resumed run appends: steps after the checkpoint it resumed from appear again (the later
  line is the one that counts)."""

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._path = paths.join(workdir, 'metrics.jsonl')
    self._enabled = jax.process_index() == 0
    # On object storage: the whole metrics.jsonl (None: not read yet) and the local directory
    # tf.summary writes into, both uploaded at every flush.
    self._remote = paths.is_remote(workdir)
    self._lines, self._staging = None, None
    if self._enabled and self._remote:
      self._staging = tempfile.mkdtemp(prefix='alexnet_jax_events_')
      self._lines = self._guard(self._read_remote)
    self._summary = (self._guard(lambda: _tf()[0].summary.create_file_writer(
        self._staging or workdir)) if self._enabled else None)

  def _read_remote(self) -> list[str]:
    """The lines a run before this one wrote (a resumed run appends to them)."""
    try:
      text = paths.read_text(self._path)
    except FileNotFoundError:
      return []
    return text.splitlines(keepends=True)

  def _guard(self, write):
    tf, _ = _tf()
    try:
      return write()
    except (OSError, tf.errors.OpError) as e:
      raise WorkdirError(
          f'Cannot write metrics in {self._workdir}: {e}. Free space (or fix the '
          'permissions) and run the same command again; saved checkpoints are intact.') from e
    except Exception as e:  # pylint: disable=broad-except  # a URI backend's own errors
      if not self._remote:
        raise
      raise WorkdirError(
          f'Cannot write metrics in {self._workdir}: {type(e).__name__}: {e}. Fix the bucket '
          "(permissions, quota) and run the same command again; saved checkpoints are intact.") from e

  def write(self, step: int, **values) -> None:
    if not self._enabled:
      return
    record = {'step': int(step), **{k: float(v) for k, v in values.items()}}
    tf, scalar = _tf()

    def write_both():
      if self._remote:
        self._lines.append(json.dumps(record) + '\n')  # uploaded at the next flush
      else:
        paths.append_text(self._path, json.dumps(record) + '\n')
      with self._summary.as_default(step=int(step)):
        for name, value in values.items():
          # What tensorboard's tf.summary.scalar writes, without needing tensorboard installed.
          tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=scalar)

    self._guard(write_both)

  def flush(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.flush)
      if self._remote:
        self._guard(self._upload)

  def _upload(self) -> None:
    """metrics.jsonl and the event files, each replaced whole on object storage."""
    paths.write_text(self._path, ''.join(self._lines))
    for name in sorted(os.listdir(self._staging)):
      paths.copy_file(os.path.join(self._staging, name), paths.join(self._workdir, name))

  def close(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.close)
      if self._remote:
        self._guard(self._upload)
        shutil.rmtree(self._staging, ignore_errors=True)
      self._summary = None
