"""What a run writes about itself while it trains: metrics.jsonl and TensorBoard events.

Written by hand on top of `tf.summary` (TensorFlow is already the input pipeline's dependency):
clu's metric writers do the same on the same calls and would add a package; see docs/performance.md
("Libraries") for what was weighed. TensorFlow is imported when process 0 makes its writer, not
with this module: the modules that build and time steps must import where TensorFlow is not
installed (tests/test_no_tensorflow.py), and this one should not be what brings it back.
"""

import functools
import json
import os

import jax

from alexnet_jax.runtime import errors


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
    self._path = os.path.join(workdir, 'metrics.jsonl')
    self._enabled = jax.process_index() == 0
    self._summary = (self._guard(lambda: _tf()[0].summary.create_file_writer(workdir))
                     if self._enabled else None)

  def _guard(self, write):
    tf, _ = _tf()
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
    tf, scalar = _tf()

    def write_both():
      with open(self._path, 'a') as f:
        f.write(json.dumps(record) + '\n')
      with self._summary.as_default(step=int(step)):
        for name, value in values.items():
          # What tensorboard's tf.summary.scalar writes, without needing tensorboard installed.
          tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=scalar)

    self._guard(write_both)

  def flush(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.flush)

  def close(self) -> None:
    if self._summary is not None:
      self._guard(self._summary.close)
      self._summary = None
