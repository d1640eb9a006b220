"""A GCS emulator on 127.0.0.1 for the tests: `gcp-storage-emulator` (PyPI) in a subprocess.

It speaks the GCS JSON API, which is what tensorstore (orbax's arrays) and gcsfs (etils.epath
with EPATH_USE_TF=false: orbax's metadata and alexnet_jax/runtime/paths.py) call. TensorFlow's
own GCS file system cannot be pointed at it (its endpoints are compiled in), so a run under
`env()` reaches gs:// through those two only. The emulator ignores preconditions
(ifGenerationMatch) and returns generation 0 to tensorstore: good enough for one writer.
"""

import importlib.util
import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

AVAILABLE = importlib.util.find_spec('gcp_storage_emulator') is not None
MISSING = ('the GCS emulator package gcp-storage-emulator is not installed '
           '(pip install -r requirements.txt)')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class Emulator:
  """The emulator with one bucket, `bucket`, in memory; `env()` points a program at it."""

  def __init__(self, bucket: str = 'alexnet-test'):
    self.bucket = bucket
    self.port = _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._proc = subprocess.Popen(
        [sys.executable, '-m', 'gcp_storage_emulator', 'start', '--host', '127.0.0.1',
         '--port', str(self.port), '--in-memory', '--default-bucket', bucket, '-q'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while True:
      try:
        with urllib.request.urlopen(self.url + '/', timeout=2) as r:
          if r.read() == b'OK':
            break
      except OSError:
        if self._proc.poll() is not None or time.monotonic() > deadline:
          self.stop()
          raise RuntimeError(f'the GCS emulator did not start on {self.url}')
        time.sleep(0.1)

  def env(self) -> dict:
    """Environment variables that send tensorstore and etils.epath (via gcsfs) to it,
    anonymously."""
    return {'TENSORSTORE_GCS_HTTP_URL': self.url,
            'GOOGLE_AUTH_TOKEN_FOR_TESTING': 'anonymous',  # tensorstore: no credential lookup
            'STORAGE_EMULATOR_HOST': self.url,  # gcsfs: this endpoint, anonymous
            'EPATH_USE_TF': 'false'}  # etils.epath: gcsfs, not TensorFlow's GCS file system

  def objects(self, prefix: str = '') -> list[str]:
    """The names of the bucket's objects under `prefix`, as the emulator's JSON API lists them."""
    names, token = [], None
    while True:
      query = {'prefix': prefix, **({'pageToken': token} if token else {})}
      url = f'{self.url}/storage/v1/b/{self.bucket}/o?{urllib.parse.urlencode(query)}'
      with urllib.request.urlopen(url, timeout=30) as r:
        page = json.load(r)
      names += [item['name'] for item in page.get('items', [])]
      token = page.get('nextPageToken')
      if not token:
        return names

  def read(self, name: str) -> bytes:
    """An object's content, downloaded through the emulator's API."""
    url = (f'{self.url}/download/storage/v1/b/{self.bucket}/o/'
           f'{urllib.parse.quote(name, safe="")}?alt=media')
    with urllib.request.urlopen(url, timeout=30) as r:
      return r.read()

  def stop(self) -> None:
    if self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
