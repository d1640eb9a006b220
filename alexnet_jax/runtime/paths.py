"""Paths that are local directories or object-storage URIs (gs://bucket/dir), one API for both.

Every file the project itself writes or reads on a user's path (a workdir, the files it caches
beside a dataset, a command's --out) is opened, listed, made and removed through here, so that
each may be `gs://bucket/dir` as TPU pod users keep them (docs/gcs.md). Local paths
keep the standard library's behaviour exactly (os, open); a URI goes through `etils.epath`, the
layer orbax and tfds use themselves, which reaches gs:// through `tf.io.gfile` when TensorFlow is
installed, or through fsspec's `gcsfs` (with `EPATH_USE_TF=false`; the tests do that to reach a
GCS emulator, which TensorFlow's GCS file system cannot be pointed at: its endpoints are fixed).

Object storage has no appends, renames of directories, or locks: `write_text` replaces an object
whole, and callers that append (metrics.jsonl) rewrite the whole file (core/metrics.py).

Errors: a URI's failures are re-raised as OSError (the backends raise their own types), so that a
caller refuses an unwritable bucket as it refuses an unwritable directory.

This module imports neither JAX nor TensorFlow (epath imports TensorFlow on a URI's first use).
"""

import contextlib
import os
import shutil

SCHEME_SEPARATOR = '://'


def is_remote(path: str) -> bool:
  """True for a URI (gs://, s3://, ...), False for a local path."""
  return SCHEME_SEPARATOR in os.fspath(path)


def _epath(path: str):
  from etils import epath  # pylint: disable=import-outside-toplevel
  return epath.Path(path)


@contextlib.contextmanager
def _as_oserror(path: str):
  """A URI backend's exception as OSError (local calls raise OSError already)."""
  try:
    yield
  except OSError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # tf.errors.OpError, gcsfs's, ...
    if type(e).__name__ in ('NotFoundError',):
      raise FileNotFoundError(2, f'{type(e).__name__}: {e}', path) from e
    raise OSError(f'{path}: {type(e).__name__}: {e}') from e


def absolute(path: str) -> str:
  """os.path.abspath for a local path; a URI as it is (without a trailing slash)."""
  path = os.fspath(path)
  return path.rstrip('/') if is_remote(path) else os.path.abspath(path)


def join(path: str, *parts: str) -> str:
  """os.path.join, for URIs too (with '/')."""
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.join(path, *parts)
  return '/'.join([path.rstrip('/')] + [p.strip('/') for p in parts])


def basename(path: str) -> str:
  """os.path.basename of the path without a trailing slash, for URIs too."""
  path = os.fspath(path)
  return path.rstrip('/').rpartition('/')[2] if is_remote(path) else os.path.basename(
      os.path.normpath(path))


def dirname(path: str) -> str:
  path = os.fspath(path)
  if not is_remote(path):
    return os.path.dirname(path)
  head, _, _ = path.rstrip('/').rpartition('/')
  return head if SCHEME_SEPARATOR in head and not head.endswith(':/') else path


def makedirs(path: str) -> None:
  """Makes the directory and its parents (exist_ok); on object storage, where directories are
  only prefixes, checks the bucket can be reached."""
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)
    return
  with _as_oserror(path):
    _epath(path).mkdir(parents=True, exist_ok=True)


def exists(path: str) -> bool:
  if not is_remote(path):
    return os.path.exists(path)
  with _as_oserror(path):
    return _epath(path).exists()


def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  with _as_oserror(path):
    return _epath(path).is_dir()


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  with _as_oserror(path):
    return _epath(path).is_file()


def listdir(path: str) -> list[str]:
  """The names in a directory (a prefix's immediate children on object storage)."""
  if not is_remote(path):
    return os.listdir(path)
  with _as_oserror(path):
    return [p.name for p in _epath(path).iterdir()]


def read_text(path: str) -> str:
  if not is_remote(path):
    with open(path) as f:
      return f.read()
  with _as_oserror(path):
    return _epath(path).read_text()


def write_text(path: str, text: str) -> None:
  """Writes the file whole, UTF-8 (an object replaced in one upload on object storage)."""
  write_bytes(path, text.encode())


def read_bytes(path: str) -> bytes:
  if not is_remote(path):
    with open(path, 'rb') as f:
      return f.read()
  with _as_oserror(path):
    return _epath(path).read_bytes()


def open_for_reading(path: str):
  """A seekable binary file object (a URI's reads are ranged requests), for readers that seek
  (tarfile's headers)."""
  if not is_remote(path):
    return open(path, 'rb')  # pylint: disable=consider-using-with
  with _as_oserror(path):
    return _epath(path).open('rb')


def write_bytes(path: str, data: bytes) -> None:
  """Writes the file whole (one upload on object storage)."""
  if not is_remote(path):
    with open(path, 'wb') as f:
      f.write(data)
    return
  with _as_oserror(path):
    _epath(path).write_bytes(data)


def replace_bytes(path: str, data: bytes) -> None:
  """Writes the file so that a reader never sees it half written: a temporary file renamed over
  it on local disk; on object storage one upload, which is atomic already."""
  if is_remote(path):
    write_bytes(path, data)
    return
  temporary = f'{path}.tmp.{os.getpid()}'
  try:
    write_bytes(temporary, data)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def replace_text(path: str, text: str) -> None:
  """replace_bytes for text (UTF-8)."""
  replace_bytes(path, text.encode())


def append_text(path: str, text: str) -> None:
  """Appends to a local file. Object storage has no appends: callers keep the content and
  write_text it whole (ValueError for a URI, so that no caller uploads a file per line)."""
  if is_remote(path):
    raise ValueError(f'{path}: object storage cannot append; rewrite the object whole.')
  with open(path, 'a') as f:
    f.write(text)


def copy_file(source: str, destination: str) -> None:
  """Copies one file (either side may be a URI), replacing the destination whole."""
  if not is_remote(source) and not is_remote(destination):
    shutil.copyfile(source, destination)
    return
  with _as_oserror(destination):
    _epath(destination).write_bytes(_epath(source).read_bytes())


def remove(path: str) -> None:
  """Removes one file (FileNotFoundError if absent)."""
  if not is_remote(path):
    os.remove(path)
    return
  with _as_oserror(path):
    if not _epath(path).exists():
      raise FileNotFoundError(2, 'No such file', path)
    _epath(path).unlink()


def rmtree(path: str) -> None:
  if not is_remote(path):
    shutil.rmtree(path)
    return
  with _as_oserror(path):
    _epath(path).rmtree()


def check_writable(directory: str) -> None:
  """Makes `directory` and proves it takes a file (created and removed), or OSError: an
  unwritable workdir or bucket is refused before any work."""
  makedirs(directory)
  if not is_remote(directory):
    import tempfile  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryFile(dir=directory):
      pass
    return
  probe = join(directory, f'.write_probe.{os.getpid()}')
  write_text(probe, '')
  remove(probe)
